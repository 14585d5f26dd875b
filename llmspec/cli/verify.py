"""``llmspec verify``: re-check an artifact's files and its graphs' properties."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llmspec.cli.arguments import positive
from llmspec.errors import EXIT_BAD_INPUT, EXIT_OK
from llmspec.inspect.verify import DEFAULT_EXAMPLES, verify


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``llmspec verify`` arguments (the handler is :func:`run`)."""
    parser.add_argument("artifact", metavar="ARTIFACT", help="an artifact directory")
    parser.add_argument(
        "--examples",
        type=positive,
        default=DEFAULT_EXAMPLES,
        metavar="N",
        help=f"hypothesis examples per property (default {DEFAULT_EXAMPLES})",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda", "auto"],
        default="cpu",
        help="where to run the graphs (default cpu; auto: CUDA when ONNX Runtime has it)",
    )
    parser.add_argument(
        "--key",
        metavar="PUBLIC_KEY",
        help="also require the artifact's signature by this Ed25519 public key (a PEM file, "
        "public.pem of llmspec keygen); a missing or wrong signature fails",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: Any) -> int:
    """``llmspec verify``: print the report; 0 when everything passed, 1 otherwise."""
    quiet = bool(getattr(args, "json", False))
    say = None if quiet else (lambda line: print(f"llmspec verify: {line}", file=sys.stderr))
    report = verify(
        args.artifact,
        examples=getattr(args, "examples", DEFAULT_EXAMPLES),
        device=getattr(args, "device", "cpu"),
        progress=say,
        key=getattr(args, "key", None),
    )
    if quiet:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.render())
    if report.error:
        print(f"llmspec verify: {report.error}", file=sys.stderr)
    return EXIT_OK if report.passed else EXIT_BAD_INPUT
