"""A run's settings (run.json's ``settings``, fixed for the run's lifetime) and
:class:`TrainError`, the error of a run that cannot start or continue."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from llmspec.errors import LlmspecError
from llmspec.spec.sections import ModelSpec


class TrainError(ValueError, LlmspecError):
    """A training run that cannot start or continue: the message says why and what to do."""


@dataclass(frozen=True)
class Settings:
    """What a run is trained with; stored in run.json, and fixed for the run's lifetime."""

    steps: int = 1000
    batch_size: int = 8  # global: sequences per optimizer step over all processes
    seq_len: int = 0  # 0: the spec's context_length
    lr: float = 3e-4
    warmup: int = -1  # -1: a tenth of the steps, at most 100
    eval_every: int = 100
    checkpoint_every: int = 100
    seed: int = 0

    def resolved(self, spec: ModelSpec) -> Settings:
        seq_len = self.seq_len or spec.context_length
        warmup = self.warmup if self.warmup >= 0 else min(100, self.steps // 10)
        return replace(self, seq_len=seq_len, warmup=warmup)

    def problems(self, spec: ModelSpec) -> list[str]:
        out = []
        for name in ("steps", "batch_size", "seq_len", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            out.append(f"lr must be a positive number, got {self.lr}")
        for name in ("warmup", "seed"):
            if getattr(self, name) < 0:
                out.append(f"{name} must not be negative, got {getattr(self, name)}")
        if self.seq_len > spec.context_length:
            out.append(
                f"seq_len {self.seq_len} exceeds the spec's context_length "
                f"{spec.context_length}; lower --seq-len"
            )
        return out


if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SettingsT = TypeVar("SettingsT", bound="DataclassInstance")


def run_settings(
    given: dict[str, Any],
    saved: SettingsT | None,
    default: SettingsT,
    start_over: str = "pass RUN_DIR as the spec",
) -> SettingsT:
    """The run's settings: the saved ones when resuming (an explicit different value is an
    error), otherwise the given ones over ``default`` (pre-training's :class:`Settings` or
    fine-tuning's). ``start_over`` says how to begin a new run from this one instead."""
    explicit = {k: v for k, v in given.items() if v is not None}
    if saved is None:
        return replace(default, **explicit)
    differ = [
        f"{k.replace('_', '-')} {v} (the run has {getattr(saved, k)})"
        for k, v in explicit.items()
        if v != getattr(saved, k)
    ]
    if differ:
        raise TrainError(
            "--resume continues a run with its own settings; given: "
            + ", ".join(differ)
            + f". Omit them, or start a new run from this one's weights ({start_over})"
        )
    return saved


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """The seed of dropout at step ``step`` on process ``rank``; ``stream`` keeps pre-training
    (1) and fine-tuning (2) apart."""
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1)[0])
