"""``llmspec import-hf``: a local Hugging Face model directory to spec.yaml + weights."""

from __future__ import annotations

import argparse
import sys

from llmspec.errors import EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("hf_dir", metavar="HF_DIR")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")


def run(args: argparse.Namespace) -> int:
    """``llmspec import-hf``: 0 on success, 1 (with a one-line error on stderr) on bad input."""
    from llmspec.importers.hf.importer import import_hf

    target = import_hf(args.hf_dir, args.output, force=args.force)
    written = sorted(p.name for p in target.iterdir())
    print(f"wrote {target} ({', '.join(written)})", file=sys.stderr)
    return EXIT_OK
