"""``llmspec eval``: the objective's loss (and perplexity, accuracy) of an artifact on a corpus."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import runtime
from llmspec.cli.arguments import add_data_argument, add_device_arguments, non_negative, positive
from llmspec.errors import EXIT_BAD_INPUT, EXIT_OK
from llmspec.inspect.evaluate import DEFAULT_BATCH_SIZE, evaluate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``llmspec eval`` arguments."""
    parser.add_argument("artifact", metavar="ARTIFACT", help="an artifact directory")
    add_data_argument(parser)
    parser.add_argument(
        "--batch-size",
        type=positive,
        default=DEFAULT_BATCH_SIZE,
        metavar="B",
        help=f"sequences per batch (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--seq-len",
        type=positive,
        metavar="S",
        help="tokens per sequence (default: context length)",
    )
    parser.add_argument(
        "--batches", type=positive, metavar="N", help="at most N batches (default: all the data)"
    )
    parser.add_argument(
        "--seed", type=non_negative, default=0, metavar="S", help="seed of the masking (default 0)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``llmspec eval``: the exit status (1, with one line on stderr, for bad input)."""

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", runtime.DeviceFallbackWarning)
            report = evaluate(
                args.artifact,
                args.data,
                batch_size=args.batch_size,
                seq_len=args.seq_len,
                batches=args.batches,
                seed=args.seed,
                device=args.device,
                threads=args.threads,
            )
    except ValueError as err:  # ours go to main; any other ValueError is bad input too
        print(f"llmspec eval: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for warning in caught:
        print(f"llmspec eval: warning: {warning.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.render())
    return EXIT_OK
