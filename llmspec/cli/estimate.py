"""``llmspec estimate``: parameters, memory and FLOPs of a spec (no torch)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmspec.cli.arguments import positive, positive_fraction
from llmspec.errors import EXIT_BAD_INPUT, EXIT_OK
from llmspec.estimates.compute import DEFAULT_MFU, DEVICES
from llmspec.estimates.memory import fit_warnings
from llmspec.estimates.report import estimate, plot_memory
from llmspec.files import write_atomic
from llmspec.spec.loading import load_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC")
    parser.add_argument("--batch-size", type=positive, default=1, metavar="B")
    parser.add_argument(
        "--seq-len", type=positive, default=None, metavar="S", help="default: context length"
    )
    parser.add_argument(
        "--gpus", type=positive, default=1, metavar="N", help="devices for sharding and timing"
    )
    parser.add_argument(
        "--tokens",
        type=_token_count,
        metavar="T",
        help="training tokens for FLOPs and time (1e9, 2.5B); default: compute-optimal, 20/param",
    )
    parser.add_argument(
        "--device",
        choices=list(DEVICES),
        help="device for the training time (peak dense bf16/fp16 FLOP/s): "
        + ", ".join(f"{d.name} {d.peak_flops / 1e12:g}T" for d in DEVICES.values()),
    )
    parser.add_argument(
        "--mfu",
        type=positive_fraction,
        default=DEFAULT_MFU,
        metavar="U",
        help=f"model FLOPs utilization in (0, 1] (default {DEFAULT_MFU})",
    )
    parser.add_argument(
        "--plot", metavar="FILE", help="draw memory per device vs device count (1-64) as a PNG"
    )
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")


def run(args: argparse.Namespace) -> int:

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
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(result.render())
    for warning in fit_warnings(spec):
        print(f"llmspec estimate: {warning}", file=sys.stderr)
    return EXIT_OK


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
