"""``llmspec codegen``: the generated PyTorch source of a spec."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llmspec.errors import EXIT_OK
from llmspec.files import write_atomic
from llmspec.spec.loading import load_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC")
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")


def run(args: argparse.Namespace) -> int:
    return codegen(args.spec, args.output)


def codegen(spec_path: str | os.PathLike[str], output: str | None) -> int:
    """``llmspec codegen SPEC [-o FILE]``: print the generated source, or write it to FILE
    atomically. Returns the exit status; a bad spec raises :class:`SpecError` (the CLI
    reports it and exits 1)."""
    from llmspec.builder import generate_source

    spec = load_spec(Path(spec_path))
    source = generate_source(spec)  # a RenderError: main reports it
    if output is None:
        sys.stdout.write(source)
        return EXIT_OK
    write_atomic(output, source)  # an OutputError (what failed, where, what to do): main
    print(f"wrote {output} ({spec.name})", file=sys.stderr)
    return EXIT_OK
