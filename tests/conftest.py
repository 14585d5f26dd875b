"""Shared test configuration.

Hypothesis profiles: "ci" is small and derandomized (the same examples on every run, so a red
build is reproducible); "dev" explores more. ``HYPOTHESIS_PROFILE`` picks one; otherwise "ci"
when the ``CI`` environment variable is set, else "dev".
"""

import os

from hypothesis import settings

settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
