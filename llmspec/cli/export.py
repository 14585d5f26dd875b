"""``llmspec export``: a spec or model directory to a verified ONNX artifact."""

from __future__ import annotations

import argparse
import sys

from llmspec.cli.arguments import positive_fraction
from llmspec.errors import EXIT_BAD_INPUT, EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SPEC_OR_DIR")
    parser.add_argument("-o", "--output", required=True, metavar="ARTIFACT")
    parser.add_argument("--weights", metavar="W", help="a safetensors file to export instead")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="default: the spec's")
    parser.add_argument("--quantize", choices=["none", "int8", "int4"], help="default: the spec's")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing artifact, atomically; if ARTIFACT is a symbolic link to one "
        "(current -> v1), the directory it points to is replaced and the link kept",
    )
    parser.add_argument(
        "--tolerance",
        type=positive_fraction,
        metavar="REL",
        help="the parity gate's tolerance, relative to the logit scale, instead of the "
        "precision's (fp32 1e-4, fp16 0.02, bf16 0.06, int8 0.15, int4 0.3); top-1 must "
        "still agree; recorded in the manifest",
    )


def run(args: argparse.Namespace) -> int:
    """``llmspec export``: returns the exit status (1 on a bad input or a failed gate)."""
    from llmspec.exporter.pipeline import export

    try:
        export(
            args.source,
            args.output,
            weights=args.weights,
            precision=args.precision,
            quantize=args.quantize,
            force=args.force,
            tolerance=args.tolerance,
        )
    except FileExistsError as err:  # an output in the way; ExportError etc. go to main
        print(f"llmspec export: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK
