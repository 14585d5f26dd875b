"""``llmspec sign``: an Ed25519 signature of an artifact's manifest (runtime.signing)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from llmspec.errors import EXIT_BAD_INPUT, EXIT_OK
from llmspec.exporter.signing import sign_artifact
from runtime import artifact as fmt
from runtime.signing import fingerprint, private_key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifact", metavar="ARTIFACT", help="an artifact directory")
    parser.add_argument(
        "--key",
        required=True,
        metavar="PRIVATE_KEY",
        help="an Ed25519 private key, PEM (private.pem of llmspec keygen)",
    )


def run(args: Any) -> int:
    """``llmspec sign``: 0 when signed, 1 for a bad artifact or key."""

    try:
        key = private_key(args.key)
        target = sign_artifact(args.artifact, key)
    except OSError as err:
        print(f"llmspec sign: cannot write {fmt.SIGNATURE} ({err})", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {target} (key {fingerprint(key)})")
    return EXIT_OK
