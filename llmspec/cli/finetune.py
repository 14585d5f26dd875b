"""``llmspec finetune``: instruction fine-tuning with LoRA adapters (see
:mod:`llmspec.trainer.finetune`)."""

from __future__ import annotations

import argparse
import math

from llmspec.cli.arguments import non_negative, positive
from llmspec.errors import EXIT_OK
from llmspec.trainer.cluster import STRATEGIES
from llmspec.trainer.finetune import FinetuneSettings, finetune


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``llmspec finetune`` arguments."""

    def rate(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
        return value

    parser.add_argument(
        "model",
        metavar="SPEC_OR_RUN_OR_IMPORTED",
        help="a spec file, a run directory (llmspec train / finetune) or an llmspec import-hf "
        "directory: a decoder-only or encoder-decoder model",
    )
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="JSONL",
        help='instruction files (a directory: its *.jsonl files): one {"prompt", "response"} '
        'or {"messages": [...]} per line',
    )
    parser.add_argument(
        "--eval-data",
        nargs="+",
        metavar="JSONL",
        help="held-out instruction files (default: 5%% of --data's examples, at most 64)",
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="RUN_DIR", help="the run directory"
    )
    parser.add_argument(
        "--lora",
        metavar="SETTINGS",
        help="the adapter: r=16,alpha=32,dropout=0.05,targets=q_proj,v_proj (default r=8, "
        "alpha=16, dropout 0, targets q_proj,v_proj; targets are the model's linear layers)",
    )
    d = FinetuneSettings()
    parser.add_argument(
        "--steps", type=positive, metavar="N", help=f"optimizer steps (default {d.steps})"
    )
    parser.add_argument(
        "--batch-size",
        type=positive,
        metavar="B",
        help=f"examples per optimizer step, over all processes (default {d.batch_size})",
    )
    parser.add_argument(
        "--accumulate",
        type=positive,
        metavar="K",
        help="gradient accumulation: micro-batches per step on each process (default 1)",
    )
    parser.add_argument(
        "--seq-len",
        type=positive,
        metavar="S",
        help="the longest example in tokens; longer ones are cut (default: context_length)",
    )
    parser.add_argument(
        "--lr", type=rate, metavar="LR", help=f"peak learning rate (default {d.lr})"
    )
    parser.add_argument(
        "--warmup",
        type=non_negative,
        metavar="N",
        help="warmup steps (default: a tenth of the steps, at most 100)",
    )
    parser.add_argument(
        "--eval-every",
        type=positive,
        metavar="N",
        help=f"steps between evaluations (default {d.eval_every})",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=positive,
        metavar="N",
        help=f"steps between checkpoints (default {d.checkpoint_every})",
    )
    parser.add_argument(
        "--seed", type=non_negative, metavar="S", help=f"the run's seed (default {d.seed})"
    )
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        default=None,
        help="activation checkpointing: recompute each layer in the backward pass",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        default=None,
        help="run the forward under bf16 autocast (CPU or CUDA; weights stay fp32)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue RUN_DIR from its newest checkpoint"
    )
    parser.add_argument(
        "--strategy", choices=STRATEGIES, help="data parallelism under torchrun: ddp or fsdp"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run(args: argparse.Namespace) -> int:
    """``llmspec finetune``: run :func:`finetune` with the parsed arguments."""
    finetune(
        args.model,
        args.data,
        args.output,
        lora=args.lora,
        eval_data=args.eval_data,
        steps=args.steps,
        batch_size=args.batch_size,
        accumulate=args.accumulate,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup=args.warmup,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        checkpointing=args.checkpointing,
        bf16=args.bf16,
        resume=args.resume,
        strategy=args.strategy,
        progress=not args.quiet,
    )
    return EXIT_OK
