"""``llmspec attention``: draw a model's attention weights on a text as heat maps."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmspec.errors import EXIT_BAD_INPUT, EXIT_OK
from llmspec.files import write_atomic
from llmspec.inspect.attention_maps import KINDS, STACKS, render_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", metavar="SPEC_OR_DIR", help="a spec file, model/run directory or artifact"
    )
    parser.add_argument("--text", required=True, help="the (encoder's) input text")
    parser.add_argument(
        "--target",
        default="",
        help="encoder-decoder: the decoder's input after decoder_start (default: none)",
    )
    parser.add_argument("--layer", type=int, metavar="L", help="one layer (default: all)")
    parser.add_argument("--head", type=int, metavar="H", help="one head (default: all)")
    parser.add_argument(
        "--stack",
        choices=STACKS,
        help="default: the model's only stack; encoder-decoder: decoder for cross, else encoder",
    )
    parser.add_argument(
        "--kind", choices=KINDS, help="default: self; cross for an encoder-decoder without --stack"
    )
    parser.add_argument("-o", "--output", required=True, metavar="PNG")


def run(args: argparse.Namespace) -> int:

    try:
        png, summary = render_command(args)
    except ImportError as err:
        print(
            f"llmspec attention: drawing needs matplotlib ({err}); "
            "install it with: pip install 'llmspec[compile]'",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    write_atomic(args.output, png)
    print(f"wrote {Path(args.output)} ({summary})", file=sys.stderr)
    return EXIT_OK
