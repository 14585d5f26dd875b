"""How the weights are updated: AdamW with its warmup and cosine schedule, gradient
clipping, and mixed precision (autocast, and fp16's gradient scaler)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmspec.spec.sections import ModelSpec
from llmspec.trainer.settings import Settings

BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
MIN_LR_RATIO = 0.1  # the cosine decays to this fraction of lr


def make_optimizer(model: Any, settings: Settings, steps: int) -> tuple[Any, Any]:
    """(AdamW over ``model``'s parameters, weight decay on matrices and embeddings only; its
    schedule, :func:`lr_factor` over ``steps``)."""
    import torch

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=settings.lr,
        betas=BETAS,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, settings.warmup, steps)
    )
    return optimizer, scheduler


def lr_factor(step: int, warmup: int, steps: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based) as a fraction of the peak: a
    linear warmup over ``warmup`` steps, then a cosine decay to MIN_LR_RATIO at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Precision:
    """How the forward runs: an autocast context (or none) and a gradient scaler (fp16)."""

    autocast: Callable[[], contextlib.AbstractContextManager[Any]]
    scaler: Any = None
    note: str | None = None


def precision_for(spec: ModelSpec, device: Any) -> Precision:
    """How ``spec``'s dtype trains on ``device``: fp32 as it is, bf16 under autocast, fp16 under
    autocast with a gradient scaler on CUDA (elsewhere in fp32, with a note)."""
    import torch

    dtype = spec.precision.dtype
    if dtype == "fp32":
        return Precision(contextlib.nullcontext)
    if dtype == "bf16":
        return Precision(lambda: torch.autocast(device.type, dtype=torch.bfloat16))
    if device.type != "cuda":
        return Precision(
            contextlib.nullcontext,
            note="note: fp16 autocast needs CUDA; training in fp32 on this CPU",
        )
    return Precision(
        lambda: torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    )
