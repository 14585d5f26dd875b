"""``llmspec tokenizer``: build a spec's tokenizer into tokenizer.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmspec.errors import EXIT_OK
from llmspec.files import write_atomic
from llmspec.spec.loading import load_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC")
    parser.add_argument("-o", "--output", required=True, metavar="FILE")


def run(args: argparse.Namespace) -> int:
    from llmspec.tokenizer import load_for_spec

    path = Path(args.spec)
    spec = load_spec(path)
    tokenizer = load_for_spec(spec, path.parent)  # a TokenizerMismatch: main reports it
    write_atomic(args.output, tokenizer.to_str(pretty=True))
    print(f"wrote {args.output} ({spec.vocabulary.tokenizer.type}, {spec.vocabulary.size} ids)")
    return EXIT_OK
