"""How a run reports: the progress line on stderr, metrics.jsonl read back, the loss plot."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The complete records of a metrics.jsonl (a line cut by a kill is left out)."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "step" in record:
                records.append(record)
    return records


def plot_losses(records: Sequence[dict[str, Any]], title: str) -> bytes:
    """The loss curves as a PNG: training loss per step (and its running mean), evaluation
    loss at each evaluation."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    held = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.subplots()
    if train:
        steps, losses = zip(*train, strict=True)
        window = len(losses) // 50  # a running mean once there are enough steps to smooth
        if window > 1:
            axes.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=1, label="train")
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            label = f"train (mean of {window} steps)"
            axes.plot(steps[window - 1 :], smooth, color="tab:blue", label=label)
        else:
            axes.plot(steps, losses, color="tab:blue", label="train")
    if held:
        steps, losses = zip(*held, strict=True)
        axes.plot(steps, losses, "o-", color="tab:orange", label="held-out")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("step")
    axes.set_ylabel("loss (cross-entropy, nats)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


class Progress:
    """One status line on stderr: rewritten in place on a terminal, printed now and then
    otherwise."""

    def __init__(self, enabled: bool, steps: int) -> None:
        self.enabled = enabled
        self.steps = steps
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.every = max(1, steps // 20)

    def update(self, step: int, text: str, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if force or now - self.last > 0.2 or step == self.steps:
                print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)
                self.last = now
        elif force or step % self.every == 0 or step == self.steps:
            print(text, file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if self.enabled:
            print(("\n" if self.tty and self.last else "") + text, file=sys.stderr, flush=True)
            self.last = 0.0

    def close(self) -> None:
        if self.enabled and self.tty and self.last:
            print(file=sys.stderr, flush=True)


def human_number(n: float) -> str:
    """``n`` in three digits or so, with a k, M, G or T suffix (``12.3k``)."""
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{n:.0f}"
        n /= 1000
    return f"{n:.1f}T"
