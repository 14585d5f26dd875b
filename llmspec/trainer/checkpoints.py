"""The run directory: its file names, what a run starts from (a spec, a run or a model
directory), its checkpoints, written atomically and read back to resume, and how the processes
of a run write it (:class:`RunWriter`)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmspec.files import publishing, write_atomic, writing
from llmspec.sources import NoSpecInDirectory, resolve_source
from llmspec.spec.sections import FileTokenizer, ModelSpec
from llmspec.trainer.cluster import Cluster
from llmspec.trainer.objectives import Features, to_torch
from llmspec.trainer.optimization import Precision
from llmspec.trainer.progress import plot_losses, read_metrics
from llmspec.trainer.settings import TrainError
from runtime import artifact as fmt

# The files a run directory shares with an artifact and import-hf output, named in runtime.artifact.
SPEC_FILE, WEIGHTS_FILE, TOKENIZER_FILE = fmt.SPEC, fmt.WEIGHTS, fmt.TOKENIZER
RUN_FILE, METRICS_FILE, PLOT_FILE = "run.json", "metrics.jsonl", "loss.png"
CHECKPOINTS, OPTIMIZER_FILE, STATE_FILE = "checkpoints", "optimizer.pt", "state.json"
KEEP_CHECKPOINTS = 2


@dataclass
class Source:
    """What a run starts from: a spec, its tokenizer, and (from a run or model directory) the
    weights to continue from."""

    spec: ModelSpec
    tokenizer: Any
    weights: Path | None = None


def stored_spec(spec: ModelSpec) -> ModelSpec:
    """The spec as a run directory stores it: a trained or given tokenizer becomes the
    directory's tokenizer.json."""
    if spec.vocabulary.tokenizer.type == "byte-level":
        return spec
    vocabulary = spec.vocabulary.model_copy(
        update={"tokenizer": FileTokenizer(type="file", path=TOKENIZER_FILE)}
    )
    return spec.model_copy(update={"vocabulary": vocabulary})


def run_source(spec_or_dir: ModelSpec | str | os.PathLike[str]) -> Source:
    """The spec, tokenizer and initial weights of a spec file, a spec object, or a directory
    holding spec.yaml (a run, or ``llmspec import-hf`` output; weights.safetensors optional)."""
    from llmspec.tokenizer import load_for_spec

    if not isinstance(spec_or_dir, ModelSpec):
        path = Path(spec_or_dir)
        if not path.is_dir() and not path.is_file():
            raise TrainError(f"{path}: no such spec file or run directory")
    try:
        source = resolve_source(spec_or_dir)
    except NoSpecInDirectory as err:
        raise TrainError(
            f"{err.directory}: a directory to train from must hold {SPEC_FILE}"
        ) from None
    # the spec's own tokenizer (a run directory's spec names its tokenizer.json)
    return Source(source.spec, load_for_spec(source.spec, source.directory), source.weights)


def checkpoint_dirs(run: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first (staging directories are hidden)."""
    root = run / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def state_dicts(
    model: Any, optimizer: Any, trainable_only: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The full model and optimizer state dicts, on the CPU of rank 0 (empty elsewhere);
    ``trainable_only``: the model's without its frozen parameters (a LoRA run's adapter).
    Every process must call this: FSDP gathers the shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only
    )
    return (
        get_model_state_dict(model, options=options),
        get_optimizer_state_dict(model, optimizer, options=options),
    )


def weights_bytes(weights: dict[str, Any]) -> bytes:
    """``weights`` as a safetensors file's bytes."""
    from safetensors.torch import save

    return save({name: t.detach().contiguous() for name, t in weights.items()})


def save_checkpoint(
    run: Path,
    step: int,
    weights: dict[str, Any],
    optimizer_state: dict[str, Any],
    scheduler: Any,
    precision: Precision,
    state: dict[str, Any],
) -> None:
    """Write checkpoint ``step`` atomically (process 0, with the state dicts every process
    gathered), keeping the newest KEEP_CHECKPOINTS."""
    import torch

    target = run / CHECKPOINTS / f"step-{step:08d}"
    with publishing(target, replace=True) as staged:
        (staged / WEIGHTS_FILE).write_bytes(weights_bytes(weights))
        extra = {"optimizer": optimizer_state, "scheduler": scheduler.state_dict()}
        if precision.scaler is not None:
            extra["scaler"] = precision.scaler.state_dict()
        # Through a handle: torch.save to a path reports a full disk as a RuntimeError
        # without the cause; a handle's write raises the OSError.
        with (staged / OPTIMIZER_FILE).open("wb") as handle:
            torch.save(extra, handle)
        (staged / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
    for old in checkpoint_dirs(run)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    checkpoint: Path, model: Any, optimizer: Any, scheduler: Any, precision: Precision
) -> tuple[int, dict[str, Any]]:
    """Load ``checkpoint``'s optimizer, scheduler and gradient scaler states (every process
    reads the full states); (the checkpoint's step, its state.json without the step)."""
    import torch
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    saved = torch.load(checkpoint / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    set_optimizer_state_dict(
        model, optimizer, saved["optimizer"], options=StateDictOptions(full_state_dict=True)
    )
    scheduler.load_state_dict(saved["scheduler"])
    if precision.scaler is not None and "scaler" in saved:
        precision.scaler.load_state_dict(saved["scaler"])
    state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    return int(state.pop("step")), state


class RunWriter:
    """Writing a run directory from one or several processes: process 0 writes, and a failed
    write reaches every process at the next collective; metrics.jsonl. The base of pre-training's
    and fine-tuning's runs."""

    def __init__(self, cluster: Cluster, run: Path, progress: bool) -> None:
        self.cluster = cluster
        self.dir = run
        self.show = progress
        self.failure: Exception | None = None  # process 0's failed write, not yet raised

    def _main_writes(self, write: Callable[..., object], *args: Any) -> None:
        """Run ``write(*args)`` on process 0 only. A failure is raised at once in a single process;
        with others it is kept for :meth:`_together`, so that they do not wait in a collective
        for a process that has left (and die with a traceback of their own)."""
        if not self.cluster.main:
            return
        try:
            write(*args)
        except Exception as err:
            if self.cluster.strategy is None:
                raise
            self.failure = self.failure or err

    def _together(self) -> None:
        """Raise process 0's failed write on every process (a collective: all must call it)."""
        if not self.cluster.all_ok(self.failure is None):
            raise self.failure or TrainError(
                "process 0 could not write the run directory; see its error"
            )

    def _open_metrics(self, start: int) -> Any:
        """metrics.jsonl opened for appending, holding only the records up to ``start`` (the
        steps after the checkpoint are trained again)."""
        path = self.dir / METRICS_FILE
        opened: list[Any] = []

        def reopen() -> None:
            kept = [r for r in read_metrics(path) if r["step"] <= start]
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
            with writing(path):
                opened.append(path.open("a", encoding="utf-8"))

        self._main_writes(reopen)
        return opened[0] if opened else None

    def _evaluate(
        self,
        wrapped: Any,
        batches: Sequence[Features],
        precision: Precision,
        count: Callable[[Features], int],
    ) -> float | None:
        """The mean loss over the held-out batches' targets (``count(batch)`` of them per batch;
        the model's loss is the mean over those). Every process evaluates every batch (FSDP
        needs all processes in each forward), so no reduction is needed."""
        import torch

        if not batches:
            return None
        wrapped.eval()
        loss_sum, count_sum = 0.0, 0
        with torch.no_grad():
            for batch in batches:
                targets = count(batch)
                if not targets:
                    continue
                with precision.autocast():
                    output = wrapped(**to_torch(batch, self.cluster.device))
                loss_sum += float(output.loss) * targets
                count_sum += targets
        wrapped.train()
        return loss_sum / count_sum if count_sum else None

    def _plot(self, title: str) -> None:
        """loss.png from metrics.jsonl."""
        records = read_metrics(self.dir / METRICS_FILE)
        write_atomic(self.dir / PLOT_FILE, plot_losses(records, title))

    def _record(self, metrics: Any, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (rank 0; ``metrics`` is None elsewhere)."""
        if metrics is not None:
            with writing(self.dir / METRICS_FILE):
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
