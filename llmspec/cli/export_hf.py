"""``llmspec export-hf``: a spec, run or import directory to a Hugging Face model directory."""

from __future__ import annotations

import argparse
import sys

from llmspec.errors import EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SPEC_OR_RUN")
    parser.add_argument("-o", "--output", required=True, metavar="HF_DIR")
    parser.add_argument("--force", action="store_true", help="replace HF_DIR if it exists")
    parser.add_argument(
        "--family",
        metavar="MODEL_TYPE",
        help="the Hugging Face family to write (e.g. phi3 for a Llama-like spec with Phi-3's "
        "fused weights); default: the one the spec's architecture, positions and knobs name",
    )


def run(args: argparse.Namespace) -> int:
    """``llmspec export-hf``: 0 on success, 1 (with a one-line error on stderr) on bad input."""
    from llmspec.importers.hf.export import export_hf

    exported = export_hf(args.source, args.output, force=args.force, family=args.family)
    for note in exported.notes:
        print(f"llmspec export-hf: not in generation_config.json: {note}", file=sys.stderr)
    print(
        f"wrote {exported.path} ({exported.architecture}: {', '.join(exported.files)})",
        file=sys.stderr,
    )
    return EXIT_OK
