"""``llmspec keygen``: an Ed25519 key pair for ``llmspec sign`` and ``verify --key``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llmspec.errors import EXIT_BAD_INPUT, EXIT_OK
from llmspec.exporter.signing import PRIVATE_KEY, PUBLIC_KEY, write_key_pair


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DIR",
        help=f"where to write {PRIVATE_KEY} (0600; keep it secret) and {PUBLIC_KEY}",
    )


def run(args: Any) -> int:
    """``llmspec keygen``: 0 when written, 1 when the keys exist or cannot be written."""
    try:
        private, public = write_key_pair(args.output)
    except OSError as err:  # FileExistsError included; a SigningError goes to main
        print(f"llmspec keygen: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {private} (secret: sign with it) and {public} (give it to whoever loads)")
    return EXIT_OK
