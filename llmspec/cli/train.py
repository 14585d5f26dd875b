"""``llmspec train``: train a spec (or continue a run) with its objective."""

from __future__ import annotations

import argparse
import math

from llmspec.cli.arguments import add_data_argument, non_negative, positive
from llmspec.errors import EXIT_OK
from llmspec.trainer.cluster import STRATEGIES
from llmspec.trainer.loop import train
from llmspec.trainer.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``llmspec train`` arguments."""

    def rate(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
        return value

    parser.add_argument(
        "spec",
        metavar="SPEC_OR_DIR",
        help="a spec file, or a run or model directory to continue from",
    )
    add_data_argument(parser)
    parser.add_argument(
        "-o", "--output", required=True, metavar="RUN_DIR", help="the run directory"
    )
    d = Settings()
    parser.add_argument(
        "--steps", type=positive, metavar="N", help=f"optimizer steps (default {d.steps})"
    )
    parser.add_argument(
        "--batch-size",
        type=positive,
        metavar="B",
        help=f"sequences per step, over all processes (default {d.batch_size})",
    )
    parser.add_argument(
        "--seq-len",
        type=positive,
        metavar="S",
        help="tokens per sequence (default: the spec's context_length)",
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
        "--resume", action="store_true", help="continue RUN_DIR from its newest checkpoint"
    )
    parser.add_argument(
        "--strategy", choices=STRATEGIES, help="data parallelism under torchrun: ddp or fsdp"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def run(args: argparse.Namespace) -> int:
    """``llmspec train``: run :func:`train` with the parsed arguments; the exit status."""
    train(
        args.spec,
        args.data,
        args.output,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup=args.warmup,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        resume=args.resume,
        strategy=args.strategy,
        progress=not args.quiet,
    )
    return EXIT_OK
