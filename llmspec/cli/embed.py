"""``llmspec embed``: embed texts with an encoder artifact."""

from __future__ import annotations

import argparse
import json

from llmspec.cli.arguments import add_device_arguments
from llmspec.cli.inference import load
from llmspec.errors import EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", metavar="ARTIFACT")
    parser.add_argument("texts", nargs="+", metavar="TEXT")
    parser.add_argument(
        "--pooling",
        choices=["mean", "cls"],
        default="mean",
        help="mean of the real tokens' states (default) or the first ([CLS]) token's",
    )
    parser.add_argument("--normalize", action="store_true", help="scale each vector to norm 1")
    parser.add_argument("--json", action="store_true", help="print the vectors as JSON")
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``llmspec embed``."""
    model = load("embed", args, ("encoder-only",))
    vectors = model.embed(args.texts, pooling=args.pooling, normalize=args.normalize)
    if args.json:
        data = {
            "pooling": args.pooling,
            "normalized": args.normalize,
            "dimension": int(vectors.shape[1]),
            "embeddings": [[float(x) for x in row] for row in vectors],
        }
        print(json.dumps(data))
        return EXIT_OK
    for row in vectors:
        print(" ".join(f"{x:.6g}" for x in row))
    return EXIT_OK
