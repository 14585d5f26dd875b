"""``llmspec fill-mask``: predict the masked token with an encoder artifact."""

from __future__ import annotations

import argparse
import json

from llmspec.cli.arguments import add_device_arguments, positive
from llmspec.cli.inference import load
from llmspec.errors import EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", metavar="ARTIFACT")
    parser.add_argument("text", metavar="TEXT", help="a text with one mask token, e.g. [MASK]")
    parser.add_argument("--top-k", type=positive, default=5, metavar="K", help="default 5")
    parser.add_argument("--json", action="store_true", help="print the candidates as JSON")
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """``llmspec fill-mask``."""
    model = load("fill-mask", args, ("encoder-only",))
    candidates = model.fill_mask(args.text, top_k=args.top_k)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "token_id": c.token_id,
                        "token": c.token,
                        "text": c.text,
                        "probability": c.probability,
                    }
                    for c in candidates
                ],
                indent=2,
            )
        )
        return EXIT_OK
    for c in candidates:
        print(f"{c.probability:.4f}\t{c.token_id}\t{c.token!r}\t{c.text}")
    return EXIT_OK
