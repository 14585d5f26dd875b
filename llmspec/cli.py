"""The ``llmspec`` command line: one command, one verb per job.

Exit status: 0 success, 1 the input was bad (a spec, an artifact, a prompt), 2 usage.
Verbs whose output is data take ``--json``. Heavy packages (torch, transformers) are imported
only by the verbs that need them, so validating and estimating work from the base install.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llmspec.arguments import positive, positive_fraction
from llmspec.errors import SpecError

EXIT_OK, EXIT_BAD_INPUT, EXIT_USAGE = 0, 1, 2


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def cmd_validate(args: argparse.Namespace) -> int:
    from llmspec.loader import load_spec

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
        _print_json(results)
    return status


def cmd_schema(args: argparse.Namespace) -> int:
    from llmspec.files import write_atomic
    from llmspec.schema import json_schema_text

    text = json_schema_text()
    if args.output:
        write_atomic(args.output, text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_estimate(args: argparse.Namespace) -> int:
    from llmspec.estimate import estimate, fit_warnings, plot_memory
    from llmspec.files import write_atomic
    from llmspec.loader import load_spec

    spec = load_spec(Path(args.spec))
    try:
        result = estimate(
            spec,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            gpus=args.gpus,
            tokens=args.tokens,
            device=args.device,
            mfu=args.mfu,
        )
    except ValueError as err:
        print(f"llmspec estimate: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.plot:
        try:
            png = plot_memory(
                spec, batch_size=args.batch_size, seq_len=args.seq_len, device=args.device
            )
        except ImportError as err:
            print(
                f"llmspec estimate: --plot needs matplotlib ({err}); "
                "install it with: pip install 'llmspec[compile]'",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        write_atomic(args.plot, png)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        _print_json(result.to_json())
    else:
        print(result.render())
    for warning in fit_warnings(spec):
        print(f"llmspec estimate: {warning}", file=sys.stderr)
    return EXIT_OK


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from llmspec.files import write_atomic
    from llmspec.loader import load_spec
    from llmspec.tokenizer import TokenizerMismatch, load_for_spec

    path = Path(args.spec)
    spec = load_spec(path)
    try:
        tokenizer = load_for_spec(spec, path.parent)
    except TokenizerMismatch as err:
        print(f"llmspec tokenizer: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    write_atomic(args.output, tokenizer.to_str(pretty=True))
    print(f"wrote {args.output} ({spec.vocabulary.tokenizer.type}, {spec.vocabulary.size} ids)")
    return EXIT_OK


def cmd_codegen(args: argparse.Namespace) -> int:
    from llmspec.builder import codegen_command

    return codegen_command(args.spec, args.output)


def cmd_export(args: argparse.Namespace) -> int:
    from llmspec.exporter import export_command

    return export_command(args)


def cmd_verify(args: argparse.Namespace) -> int:
    from llmspec.verify import verify_command

    return verify_command(args)


def cmd_sign(args: argparse.Namespace) -> int:
    from llmspec.sign import sign_command

    return sign_command(args)


def cmd_keygen(args: argparse.Namespace) -> int:
    from llmspec.sign import keygen_command

    return keygen_command(args)


def cmd_train(args: argparse.Namespace) -> int:
    from llmspec.trainer import train_command

    return train_command(args)


def cmd_import_hf(args: argparse.Namespace) -> int:
    from llmspec.hf_import import import_hf_command

    return import_hf_command(args.hf_dir, args.output, args.force)


def cmd_generate(args: argparse.Namespace) -> int:
    from llmspec.inference import generate_command

    return generate_command(args)


def cmd_fill_mask(args: argparse.Namespace) -> int:
    from llmspec.inference import fill_mask_command

    return fill_mask_command(args)


def cmd_embed(args: argparse.Namespace) -> int:
    from llmspec.inference import embed_command

    return embed_command(args)


def cmd_eval(args: argparse.Namespace) -> int:
    from llmspec.evaluate import eval_command

    return eval_command(args)


def cmd_attention(args: argparse.Namespace) -> int:
    from llmspec.attention import attention_command

    return attention_command(args)


def _token_count(text: str) -> int:
    """A token count: ``1000000``, ``1e9`` or with a decimal suffix, ``300M``, ``2.5B``, ``1T``."""
    scale = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}.get(text[-1:].upper(), 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a token count such as 1000000, 1e9 or 2.5B, got {text!r}"
        ) from None
    if not value >= 1 or value != int(value):  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    from llmspec import __version__

    parser = argparse.ArgumentParser(
        prog="llmspec",
        description="A declarative, spec-driven model compiler for transformer language models.",
        epilog="Exit status: 0 success, 1 bad input (spec, artifact, prompt), 2 usage.",
    )
    parser.add_argument("--version", action="version", version=f"llmspec {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, handler: Callable[[argparse.Namespace], int], help: str) -> Any:
        sub = verbs.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=handler)
        return sub

    p = verb("validate", cmd_validate, "check specs; report every problem with its place")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = verb("schema", cmd_schema, "print the JSON Schema of the spec language")
    p.add_argument("-o", "--output", metavar="FILE", help="write it to FILE instead")

    p = verb("estimate", cmd_estimate, "parameters, memory and FLOPs of a spec (no torch)")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--batch-size", type=positive, default=1, metavar="B")
    p.add_argument(
        "--seq-len", type=positive, default=None, metavar="S", help="default: context length"
    )
    p.add_argument(
        "--gpus", type=positive, default=1, metavar="N", help="devices for sharding and timing"
    )
    p.add_argument(
        "--tokens",
        type=_token_count,
        metavar="T",
        help="training tokens for FLOPs and time (1e9, 2.5B); default: compute-optimal, 20/param",
    )
    from llmspec.estimate import DEFAULT_MFU, DEVICES

    p.add_argument(
        "--device",
        choices=list(DEVICES),
        help="device for the training time (peak dense bf16/fp16 FLOP/s): "
        + ", ".join(f"{d.name} {d.peak_flops / 1e12:g}T" for d in DEVICES.values()),
    )
    p.add_argument(
        "--mfu",
        type=positive_fraction,
        default=DEFAULT_MFU,
        metavar="U",
        help=f"model FLOPs utilization in (0, 1] (default {DEFAULT_MFU})",
    )
    p.add_argument(
        "--plot", metavar="FILE", help="draw memory per device vs device count (1-64) as a PNG"
    )
    p.add_argument("--json", action="store_true", help="print the estimate as JSON")

    p = verb(
        "tokenizer",
        cmd_tokenizer,
        "build the spec's tokenizer (training its BPE on the spec's corpus) into tokenizer.json",
    )
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("-o", "--output", required=True, metavar="FILE")

    p = verb("codegen", cmd_codegen, "generate the PyTorch source of a spec")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")

    p = verb("export", cmd_export, "export a spec or model directory to a verified ONNX artifact")
    p.add_argument("source", metavar="SPEC_OR_DIR")
    p.add_argument("-o", "--output", required=True, metavar="ARTIFACT")
    p.add_argument("--weights", metavar="W", help="a safetensors file to export instead")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="default: the spec's")
    p.add_argument("--quantize", choices=["none", "int8", "int4"], help="default: the spec's")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace an existing artifact, atomically; if ARTIFACT is a symbolic link to one "
        "(current -> v1), the directory it points to is replaced and the link kept",
    )
    p.add_argument(
        "--tolerance",
        type=positive_fraction,
        metavar="REL",
        help="the parity gate's tolerance, relative to the logit scale, instead of the "
        "precision's (fp32 1e-4, fp16 0.02, bf16 0.06, int8 0.15, int4 0.3); top-1 must "
        "still agree; recorded in the manifest",
    )

    from llmspec.inference import (
        add_embed_arguments,
        add_fill_mask_arguments,
        add_generate_arguments,
    )

    p = verb("generate", cmd_generate, "generate text with an artifact (decoder or enc-dec)")
    add_generate_arguments(p)

    p = verb("fill-mask", cmd_fill_mask, "predict the masked token with an encoder artifact")
    add_fill_mask_arguments(p)

    p = verb("embed", cmd_embed, "embed texts with an encoder artifact")
    add_embed_arguments(p)

    p = verb("eval", cmd_eval, "the objective's loss (and perplexity, accuracy) on a corpus")
    from llmspec.evaluate import add_eval_arguments

    add_eval_arguments(p)

    p = verb("attention", cmd_attention, "draw a model's attention weights on a text as heat maps")
    from llmspec.attention import add_attention_arguments

    add_attention_arguments(p)

    p = verb("verify", cmd_verify, "re-check an artifact's files and its graphs' properties")
    from llmspec.verify import add_verify_arguments

    add_verify_arguments(p)

    from llmspec.sign import add_keygen_arguments, add_sign_arguments

    p = verb("sign", cmd_sign, "sign an artifact's manifest (and so every file) with Ed25519")
    add_sign_arguments(p)

    p = verb("keygen", cmd_keygen, "make an Ed25519 key pair for llmspec sign and verify --key")
    add_keygen_arguments(p)

    p = verb("train", cmd_train, "train a spec (or a run directory) with its objective")
    from llmspec.trainer import add_train_arguments

    add_train_arguments(p)

    p = verb(
        "import-hf",
        cmd_import_hf,
        "convert a local Hugging Face model directory into spec.yaml + weights.safetensors",
    )
    p.add_argument("hf_dir", metavar="HF_DIR")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except SpecError as err:
        print(err, file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return EXIT_OK
    except OSError as err:  # an output that cannot be written, or the system refused a file
        print(f"llmspec {args.verb}: {_os_error(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _os_error(err: OSError) -> str:
    """One line for an ``OSError``: an :class:`~llmspec.files.OutputError` says what failed,
    where and what to do; any other names its file and cause."""
    from llmspec.files import OutputError

    if isinstance(err, OutputError) or not err.strerror:
        return str(err)
    where = f"{err.filename}: " if err.filename is not None else ""
    return f"{where}{err.strerror}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
