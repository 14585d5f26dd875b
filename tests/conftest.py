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


import pytest  # noqa: E402

SPECS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "specs")


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory):
    """Export a tiny example spec once per test session: ``tiny_artifact("tiny-gpt", "fp32")``
    returns the artifact's path. Exports take seconds each, so tests share them; tests that
    modify an artifact must copy it first."""
    made = {}

    def make(name: str, precision: str = "fp32"):
        key = (name, precision)
        if key not in made:
            from llmspec.exporter.pipeline import export

            quantized = precision in ("int8", "int4")
            made[key] = export(
                os.path.join(SPECS, f"{name}.yaml"),
                tmp_path_factory.mktemp("artifacts") / f"{name}-{precision}",
                precision=None if quantized else precision,
                quantize=precision if quantized else None,
                progress=lambda line: None,
            )
        return made[key]

    return make
