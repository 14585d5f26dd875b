"""``llmspec validate``: check specs; report every problem with its place."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmspec.errors import EXIT_BAD_INPUT, EXIT_OK, SpecError
from llmspec.spec.loading import load_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs", nargs="+", metavar="SPEC")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def run(args: argparse.Namespace) -> int:

    results = []
    status = EXIT_OK
    for path in args.specs:
        try:
            spec = load_spec(Path(path))
        except SpecError as err:
            status = EXIT_BAD_INPUT
            results.append(
                {
                    "path": path,
                    "valid": False,
                    "problems": [
                        {
                            "line": p.line,
                            "column": p.column,
                            "field": ".".join(map(str, p.path)),
                            "message": p.message,
                            "text": str(p),
                        }
                        for p in err.problems
                    ],
                }
            )
            if not args.json:
                print(err, file=sys.stderr)
        else:
            results.append({"path": path, "valid": True, "name": spec.name})
            if not args.json:
                print(f"{path}: ok ({spec.name}, {spec.architecture}, {spec.objective.type})")
    if args.json:
        print(json.dumps(results, indent=2))
    return status
