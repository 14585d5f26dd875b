"""``python -m llmspec`` runs the command line (and is what torchrun launches)."""

import sys

from llmspec.cli import main

sys.exit(main())
