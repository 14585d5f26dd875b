"""``llmspec schema``: the JSON Schema of the spec language."""

from __future__ import annotations

import argparse
import sys

from llmspec.errors import EXIT_OK
from llmspec.files import write_atomic
from llmspec.spec.schema import json_schema_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="FILE", help="write it to FILE instead")


def run(args: argparse.Namespace) -> int:

    text = json_schema_text()
    if args.output:
        write_atomic(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK
