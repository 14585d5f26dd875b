"""``llmspec estimate``: parameters, memory and FLOPs of a spec (no torch)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmspec.cli.arguments import positive, positive_fraction
from llmspec.errors import EXIT_BAD_INPUT, EXIT_OK
from llmspec.estimates.compute import DEFAULT_MFU, DEVICES
from llmspec.estimates.finetune import FinetuneMemory, lora_memory
from llmspec.estimates.memory import fit_warnings
from llmspec.estimates.report import estimate, plot_memory
from llmspec.estimates.units import human_bytes, human_count
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
    parser.add_argument(
        "--finetune",
        choices=["lora"],
        help="also the memory of one fine-tuning step (llmspec finetune) at --batch-size and "
        "--seq-len: frozen weights, the adapter with its gradients and AdamW states, activations",
    )
    parser.add_argument(
        "--lora-rank", type=positive, default=8, metavar="R", help="LoRA rank (default 8)"
    )
    parser.add_argument(
        "--lora-targets",
        default="q_proj,v_proj",
        metavar="NAMES",
        help="the linear layers with adapters, comma-separated (default q_proj,v_proj)",
    )
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="with --finetune: activation checkpointing (finetune --checkpointing)",
    )


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
    tuning = None
    if args.finetune:
        targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
        try:
            tuning = lora_memory(
                spec,
                batch_size=args.batch_size,
                seq_len=args.seq_len or spec.context_length,
                rank=args.lora_rank,
                targets=targets,
                checkpointing=args.checkpointing,
            )
        except ValueError as err:
            print(f"llmspec estimate: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.json:
        data = result.to_json()
        if tuning is not None:
            data["finetune"] = tuning.to_json()
        print(json.dumps(data, indent=2))
    else:
        print(result.render())
        if tuning is not None:
            print(_render_finetune(tuning, args.batch_size, args.seq_len or spec.context_length))
    for warning in fit_warnings(spec):
        print(f"llmspec estimate: {warning}", file=sys.stderr)
    return EXIT_OK


def _render_finetune(t: FinetuneMemory, batch_size: int, seq_len: int) -> str:
    """The fine-tuning block of the text report."""
    how = ", activation checkpointing" if t.checkpointing else ""
    return "\n".join(
        [
            "",
            f"LoRA fine-tuning step (r={t.rank}, targets {','.join(t.targets)}: "
            f"{t.targeted_layers} layers; batch {batch_size} x {seq_len}{how})",
            f"  frozen weights (fp32)  {human_bytes(t.frozen_weights):>10}",
            f"  adapter + grads + Adam {human_bytes(t.adapter_states):>10}  "
            f"({human_count(t.adapter_parameters)} adapter parameters)",
            f"  activations            {human_bytes(t.activations):>10}",
            f"  total                  {human_bytes(t.total):>10}",
        ]
    )


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
