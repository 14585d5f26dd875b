"""The ``llmspec`` command line: one command, one verb per job.

Every verb is a module of this package exporting ``add_arguments(parser)`` and
``run(args) -> int``; :data:`VERBS` is the one table from verb name to module. Exit status
(:mod:`runtime.errors`): 0 success, 1 the input was bad (a spec, an artifact, a prompt), 2
usage. Verbs whose output is data take ``--json``. Heavy packages (torch, transformers) are
imported only when a verb runs, so validating and estimating work from the base install.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from llmspec import __version__
from llmspec.errors import EXIT_BAD_INPUT, EXIT_OK, SpecError, bad_input_errors
from llmspec.files import OutputError

# verb -> (its module in llmspec.cli, its help), in the order ``llmspec --help`` lists them
VERBS: dict[str, tuple[str, str]] = {
    "validate": ("validate", "check specs; report every problem with its place"),
    "schema": ("schema", "print the JSON Schema of the spec language"),
    "estimate": ("estimate", "parameters, memory and FLOPs of a spec (no torch)"),
    "tokenizer": (
        "tokenizer",
        "build the spec's tokenizer (training its BPE on the spec's corpus) into tokenizer.json",
    ),
    "codegen": ("codegen", "generate the PyTorch source of a spec"),
    "export": ("export", "export a spec or model directory to a verified ONNX artifact"),
    "generate": ("generate", "generate text with an artifact (decoder or enc-dec)"),
    "fill-mask": ("fill_mask", "predict the masked token with an encoder artifact"),
    "embed": ("embed", "embed texts with an encoder artifact"),
    "eval": ("eval", "the objective's loss (and perplexity, accuracy) on a corpus"),
    "attention": ("attention", "draw a model's attention weights on a text as heat maps"),
    "verify": ("verify", "re-check an artifact's files and its graphs' properties"),
    "sign": ("sign", "sign an artifact's manifest (and so every file) with Ed25519"),
    "keygen": ("keygen", "make an Ed25519 key pair for llmspec sign and verify --key"),
    "train": ("train", "train a spec (or a run directory) with its objective"),
    "finetune": (
        "finetune",
        "fine-tune a model on instruction data (JSONL) with LoRA adapters",
    ),
    "import-hf": (
        "import_hf",
        "convert a local Hugging Face model directory into spec.yaml + weights.safetensors",
    ),
    "export-hf": (
        "export_hf",
        "write a spec, run or import as a Hugging Face model directory (transformers loads it)",
    ),
    "serve": (
        "serve",
        "serve an artifact over an OpenAI-compatible HTTP API (needs llmspec[serve])",
    ),
}


def verb_module(verb: str) -> ModuleType:
    """The module of ``verb`` (a key of :data:`VERBS`)."""
    return importlib.import_module(f"llmspec.cli.{VERBS[verb][0]}")


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(
        prog="llmspec",
        description="A declarative, spec-driven model compiler for transformer language models.",
        epilog="Exit status: 0 success, 1 bad input (spec, artifact, prompt), 2 usage.",
    )
    parser.add_argument("--version", action="version", version=f"llmspec {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, (_, help) in VERBS.items():
        module = verb_module(name)
        sub = verbs.add_parser(name, help=help, description=help)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except bad_input_errors() as err:  # the one place bad input is reported
        _report(args.verb, err)
        return getattr(err, "exit_code", EXIT_BAD_INPUT)
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return EXIT_OK
    except OSError as err:  # the system refused a file
        _report(args.verb, err)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _report(verb: str, err: Exception) -> None:
    """One report on stderr: ``llmspec VERB: message`` (a spec's problems, which name their
    file, as they are); under torchrun only rank 0 reports, as every rank sees the same input."""
    if os.environ.get("RANK", "0") != "0":
        return
    if isinstance(err, SpecError):
        print(err, file=sys.stderr)
    elif isinstance(err, OSError):
        print(f"llmspec {verb}: {_os_error(err)}", file=sys.stderr)
    else:
        print(f"llmspec {verb}: {err}", file=sys.stderr)


def _os_error(err: OSError) -> str:
    """One line for an ``OSError``: an :class:`~llmspec.files.OutputError` says what failed,
    where and what to do; any other names its file and cause."""

    if isinstance(err, OutputError) or not err.strerror:
        return str(err)
    where = f"{err.filename}: " if err.filename is not None else ""
    return f"{where}{err.strerror}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
