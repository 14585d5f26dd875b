"""Training a spec's model with its objective, on one process or under torchrun.

``llmspec train SPEC_OR_DIR --data PATH... -o RUN_DIR`` and :func:`train`::

    import llmspec

    run = llmspec.train("specs/tiny-decoder.yaml", ["corpus.txt"], "runs/tiny", steps=300)

What a run does:

* **Data.** The ``--data`` files (directories: every file under them, in name order; files
  that are not UTF-8 text are skipped) are tokenized with the spec's tokenizer (a BPE spec
  trains its BPE first) and joined into one token stream, each document (file) followed by eos
  (and, for causal-lm, preceded by bos when that is a token of its own). The stream is cut into
  chunks as long as the objective's collator takes (:mod:`llmspec.trainer.objectives`): causal-lm
  chunks are packed ``seq_len``-token sequences; the other objectives' chunks are shorter by
  what they add. A seeded 5 % of the chunks (at least 1, at most 64) is held out for the
  evaluation loss.
* **Order.** The training chunks are visited epoch by epoch, each epoch a permutation seeded by
  ``(seed, epoch)``; step ``s`` takes the global examples ``s * batch_size ...``, and example
  ``j`` of step ``s`` is corrupted with a generator seeded by ``(seed, step, j)``; dropout is
  seeded by ``(seed, step, rank)`` at every step. So the data position and every random state
  are functions of the step: a checkpoint needs only the step to continue exactly, and a run
  continues on any number of processes.
* **Optimization.** AdamW (betas 0.9/0.95, weight decay 0.1 on matrices and embeddings, none
  on norms and biases), a linear warmup then a cosine decay to a tenth of ``lr``, gradients
  clipped to norm 1. The master weights are fp32; a bf16 spec trains under bf16 autocast, an
  fp16 spec under fp16 autocast with a gradient scaler on CUDA (on CPU, where fp16 autocast is
  not supported, in fp32, with a note). ``batch_size`` is the *global* batch: under torchrun each
  of N processes takes ``batch_size / N`` of it, and the loss of each process is weighted by its
  share of the batch's target tokens, so N processes compute the gradient of one process.
* **Distribution.** ``--strategy ddp`` (DistributedDataParallel) or ``fsdp`` (FSDP2's
  ``fully_shard`` on each self-attention layer and on the whole model; decoder layers with
  cross-attention stay in the root unit, because ``encode`` computes their cross keys and values
  outside their forward). The backend is NCCL on GPUs and gloo on CPUs. Under torchrun without a
  strategy, training refuses to start rather than train N independent copies.
* **Progress.** One line on stderr (rank 0) with step, loss, learning rate, tokens/s and the
  last evaluation loss; ``metrics.jsonl`` gets every step and every evaluation.

The run directory (usable by ``llmspec export RUN_DIR`` and as the input of another run)::

    spec.yaml             the spec (a BPE or file tokenizer becomes ``{type: file, path:
                          tokenizer.json}``, so the directory stands alone)
    tokenizer.json        the tokenizer trained or used
    weights.safetensors   the final weights, fp32, named as the module's state_dict
    run.json              the settings and a digest of the token stream
    metrics.jsonl         {"step", "loss", "lr", "tokens", "tokens_per_s"} per step,
                          {"step", "eval_loss"} per evaluation
    loss.png              the loss curves
    checkpoints/step-NNNNNNNN/
        weights.safetensors   the weights at that step
        optimizer.pt          AdamW's state (full, keyed by parameter name), the scheduler's and
                              the gradient scaler's, read back with ``weights_only=True``
        state.json            step, tokens seen, elapsed time

Each checkpoint is written into a hidden staging directory and published by one rename
(:mod:`llmspec.files`), so a kill leaves the previous checkpoints intact and no partial one
under a final name (the next run in the directory removes what a killed one left); the last two
are kept. A full disk or a read-only folder ends the run with
:class:`llmspec.files.OutputError` naming the file or checkpoint, the checkpoints written
before it intact. ``--resume`` continues from the newest checkpoint
with the run's own settings, spec, tokenizer and data (which must not have changed).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from llmspec.estimates.memory import build_bytes, train_bytes
from llmspec.files import remove_stale, write_atomic, writing
from llmspec.spec.loading import dump_spec, load_spec, spec_sha256
from llmspec.spec.sections import ModelSpec
from llmspec.trainer.checkpoints import (
    CHECKPOINTS,
    METRICS_FILE,
    PLOT_FILE,
    RUN_FILE,
    SPEC_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    RunWriter,
    Source,
    checkpoint_dirs,
    load_checkpoint,
    run_source,
    save_checkpoint,
    state_dicts,
    stored_spec,
    weights_bytes,
)
from llmspec.trainer.cluster import Cluster, wrap_model
from llmspec.trainer.data import (
    Dataset,
    batch_examples,
    eval_batches,
    named_corpus_files,
    token_stream,
)
from llmspec.trainer.objectives import (
    Collator,
    Features,
    TokenIds,
    make_collator,
    target_count,
    to_torch,
)
from llmspec.trainer.optimization import GRAD_CLIP, Precision, make_optimizer, precision_for
from llmspec.trainer.progress import Progress, human_number, read_metrics
from llmspec.trainer.settings import Settings, TrainError, run_settings, step_seed

# ----------------------------------------------------------------------------------------
# The run


def train(
    spec_or_dir: ModelSpec | str | os.PathLike[str],
    data: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    steps: int | None = None,
    batch_size: int | None = None,
    seq_len: int | None = None,
    lr: float | None = None,
    warmup: int | None = None,
    eval_every: int | None = None,
    checkpoint_every: int | None = None,
    seed: int | None = None,
    resume: bool = False,
    strategy: str | None = None,
    progress: bool = True,
) -> Path:
    """Train a spec's model with its objective; return the run directory.

    Args:
        spec_or_dir: a spec file or :class:`ModelSpec`, or a directory with spec.yaml (and
            weights.safetensors to continue from: a finished run, or import-hf output).
        data: text files or directories of them.
        out_dir: the run directory; it must not exist yet, unless ``resume``.
        steps: optimizer steps (default 1000).
        batch_size: sequences per step over all processes (default 8).
        seq_len: tokens per sequence (default: the spec's context_length).
        lr: the peak learning rate (default 3e-4).
        warmup: warmup steps (default: a tenth of the steps, at most 100).
        eval_every, checkpoint_every: in steps (default 100 each); the last step always
            evaluates and checkpoints.
        seed: seeds initialization, data order, corruption and dropout (default 0).
        resume: continue the run in ``out_dir`` from its newest checkpoint, with its settings.
            Settings given as well must equal the run's.
        strategy: None (one process), "ddp" or "fsdp" (under torchrun, or as a group of one).
        progress: print the progress line on stderr.

    Raises :class:`TrainError` (and :class:`llmspec.SpecError`, :class:`ObjectiveError`,
    :class:`llmspec.tokenizer.TokenizerMismatch`, :class:`llmspec.builder.WeightsError`) for
    inputs that cannot be trained, before any step runs.
    """
    given = {
        "steps": steps,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "lr": lr,
        "warmup": warmup,
        "eval_every": eval_every,
        "checkpoint_every": checkpoint_every,
        "seed": seed,
    }
    cluster = Cluster.start(strategy)
    try:
        run = _Run(cluster, Path(out_dir), progress and cluster.main).run(
            spec_or_dir, data, given, resume
        )
        # Every process done with its collectives before any tears the group down: gloo
        # aborts a process ("terminate called without an active exception") whose group goes
        # while another's work is still in flight.
        cluster.barrier()
        return run
    finally:
        cluster.close()


@dataclass
class _Setup:
    """Everything a run needs before its model exists."""

    source: Source
    settings: Settings
    checkpoint: Path | None  # the checkpoint to continue from
    record: dict[str, Any]  # run.json
    collator: Collator
    dataset: Dataset
    causal: bool


class _Run(RunWriter):
    # Preparing -----------------------------------------------------------------------

    def _prepare(
        self,
        spec_or_dir: ModelSpec | str | os.PathLike[str],
        data: Sequence[str | os.PathLike[str]],
        given: dict[str, Any],
        resume: bool,
    ) -> tuple[Source, Settings, Path | None, dict[str, Any], list[Path]]:
        """(source, settings, checkpoint to continue from, run record, data files) for this
        run."""
        from llmspec.builder import check_memory

        source = run_source(spec_or_dir)
        # Refuse a model that cannot fit before reading the data: it is built in fp32 on the
        # CPU, then trained (weights, gradients, Adam) on the run's device.
        shards = self.cluster.world if self.cluster.strategy == "fsdp" else 1
        check_memory(source.spec, build_bytes(source.spec), "building it in fp32", "cpu")
        check_memory(
            source.spec,
            train_bytes(source.spec, shards),
            "training it (weights, gradients and Adam states)",
            self.cluster.device,
        )
        run_spec = stored_spec(source.spec)
        record_path = self.dir / RUN_FILE
        record: dict[str, Any] = {}
        checkpoint = None
        if resume and record_path.is_file():
            record = json.loads(record_path.read_text(encoding="utf-8"))
            saved_spec = load_spec(self.dir / SPEC_FILE)
            if spec_sha256(saved_spec) != spec_sha256(run_spec):
                raise TrainError(
                    f"{self.dir} was trained from a different spec than {spec_or_dir}; resume "
                    "with the spec the run started from"
                )
            settings = run_settings(given, Settings(**record["settings"]), Settings())
            from llmspec.tokenizer import load_for_spec

            source = Source(saved_spec, load_for_spec(saved_spec, self.dir), source.weights)
            found = checkpoint_dirs(self.dir)
            checkpoint = found[-1] if found else None
        else:
            if self.dir.exists() and not self.dir.is_dir():
                raise TrainError(
                    f"{self.dir} exists and is not a directory; choose a new run directory"
                )
            if self.dir.exists() and any(self.dir.iterdir()):
                hint = "pass --resume to continue it" if (self.dir / RUN_FILE).is_file() else ""
                raise TrainError(
                    f"{self.dir} exists and is not empty; " + (hint or "choose a new run directory")
                )
            settings = run_settings(given, None, Settings()).resolved(source.spec)
        problems = settings.problems(source.spec)
        if settings.batch_size % self.cluster.world:
            problems.append(
                f"batch_size {settings.batch_size} must be a multiple of the "
                f"{self.cluster.world} processes"
            )
        if problems:
            raise TrainError("; ".join(problems))
        files = named_corpus_files(data)
        record = {
            "spec": spec_sha256(run_spec),
            "settings": asdict(settings),
            "data": [name for _, name in files],
            **{k: v for k, v in record.items() if k in ("stream_sha256",)},
        }
        return replace(source, spec=run_spec), settings, checkpoint, record, [f for f, _ in files]

    def _setup(
        self,
        spec_or_dir: ModelSpec | str | os.PathLike[str],
        data: Sequence[str | os.PathLike[str]],
        given: dict[str, Any],
        resume: bool,
    ) -> _Setup:
        source, settings, checkpoint, record, files = self._prepare(
            spec_or_dir, data, given, resume
        )
        spec = source.spec
        causal = spec.objective.type == "causal-lm"
        ids = TokenIds.from_tokenizer(spec, source.tokenizer)
        collator = make_collator(spec, ids, settings.seq_len)
        stream = token_stream(files, source.tokenizer, ids, causal)
        digest = hashlib.sha256(stream.tobytes()).hexdigest()
        if record.get("stream_sha256", digest) != digest:
            raise TrainError(
                "the data changed since the run started (its tokens differ); resume with the "
                "same files, or start a new run"
            )
        record["stream_sha256"] = digest
        dataset = Dataset.make(stream, collator.raw_length, settings.seed)
        return _Setup(source, settings, checkpoint, record, collator, dataset, causal)

    def run(
        self,
        spec_or_dir: ModelSpec | str | os.PathLike[str],
        data: Sequence[str | os.PathLike[str]],
        given: dict[str, Any],
        resume: bool,
    ) -> Path:
        failure: Exception | None = None
        try:
            setup = self._setup(spec_or_dir, data, given, resume)
        except Exception as err:  # raised below, once every process knows
            failure = err
        # A process that cannot start must not leave the others waiting in a collective.
        if not self.cluster.all_ok(failure is None):
            raise failure or TrainError("another process could not start the run; see its error")
        return self._train(setup)

    def _train(self, setup: _Setup) -> Path:
        import torch

        from llmspec.builder import build

        cluster = self.cluster
        source, settings, checkpoint = setup.source, setup.settings, setup.checkpoint
        spec, collator, dataset, causal = source.spec, setup.collator, setup.dataset, setup.causal
        self._write_run_files(spec, source.tokenizer, setup.record)

        progress = Progress(self.show, settings.steps)
        precision = precision_for(spec, cluster.device)
        if precision.note:
            progress.note(precision.note)

        torch.manual_seed(settings.seed)
        weights = checkpoint / WEIGHTS_FILE if checkpoint else source.weights
        model = build(spec, dtype="fp32", weights=weights).to(cluster.device)
        model.train()
        wrapped = wrap_model(model, spec, cluster)
        optimizer, scheduler = make_optimizer(model, settings, settings.steps)
        start, state = 0, {"tokens": 0, "elapsed_s": 0.0}
        if checkpoint is not None:
            start, state = load_checkpoint(checkpoint, wrapped, optimizer, scheduler, precision)
            progress.note(f"resuming {self.dir} at step {start} of {settings.steps}")
        metrics = self._open_metrics(start)
        evals = eval_batches(
            dataset, collator, settings, max(1, settings.batch_size // cluster.world)
        )
        last_eval = next(
            (
                r["eval_loss"]
                for r in reversed(read_metrics(self.dir / METRICS_FILE))
                if "eval_loss" in r
            ),
            None,
        )
        cache: dict[int, np.ndarray] = {}
        try:
            for step in range(start, settings.steps):
                self._together()  # one number: whether process 0's last writes failed
                lr = scheduler.get_last_lr()[0]  # the rate this step uses
                began = time.perf_counter()
                batch = batch_examples(
                    dataset, collator, settings, step, cluster.rank, cluster.world, cache
                )
                loss, tokens = self._step(
                    wrapped, model, optimizer, scheduler, precision, batch, causal, step, settings
                )
                elapsed = time.perf_counter() - began
                state["tokens"] += tokens
                state["elapsed_s"] += elapsed
                done = step + 1
                record_line = {
                    "step": done,
                    "loss": loss,
                    "lr": lr,
                    "tokens": state["tokens"],
                    "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
                }
                if not math.isfinite(loss):
                    raise TrainError(
                        f"the loss became {loss} at step {done}; lower --lr or check the data"
                    )
                self._main_writes(self._record, metrics, record_line)
                if done % settings.eval_every == 0 or done == settings.steps:
                    last_eval = self._evaluate(
                        wrapped, evals, precision, functools.partial(target_count, causal=causal)
                    )
                    if last_eval is not None:
                        held_out = {"step": done, "eval_loss": last_eval}
                        self._main_writes(self._record, metrics, held_out)
                rate = state["tokens"] / state["elapsed_s"] if state["elapsed_s"] else 0.0
                shown_eval = f" | eval {last_eval:.3f}" if last_eval is not None else ""
                progress.update(
                    done,
                    f"step {done}/{settings.steps} | loss {loss:.3f}{shown_eval} | lr {lr:.2e} | "
                    f"{human_number(rate)} tok/s",
                )
                if done % settings.checkpoint_every == 0 or done == settings.steps:
                    model_state, optimizer_state = state_dicts(wrapped, optimizer)  # collective
                    checkpoint_at = (self.dir, done, model_state, optimizer_state, scheduler)
                    self._main_writes(save_checkpoint, *checkpoint_at, precision, state)
                    self._main_writes(self._plot, f"{spec.name}: {spec.objective.type}")
                    self._together()
            final, _ = state_dicts(wrapped, optimizer)
            self._main_writes(write_atomic, self.dir / WEIGHTS_FILE, weights_bytes(final))
            self._main_writes(self._plot, f"{spec.name}: {spec.objective.type}")
            self._together()
        finally:
            if metrics is not None:
                # Every record was flushed; closing fails only after a failed flush, which has
                # raised already and must not be replaced by this one.
                with contextlib.suppress(OSError):
                    metrics.close()
            progress.close()
        if cluster.main and self.show:
            print(
                f"trained {spec.name} for {settings.steps} steps: {self.dir} "
                f"(loss curve {self.dir / PLOT_FILE})",
                file=sys.stderr,
            )
        return self.dir

    def _write_run_files(self, spec: ModelSpec, tokenizer: Any, record: dict[str, Any]) -> None:
        def write() -> None:
            with writing(self.dir):
                self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.dir / SPEC_FILE, dump_spec(spec))
            write_atomic(self.dir / TOKENIZER_FILE, tokenizer.to_str())
            write_atomic(self.dir / RUN_FILE, json.dumps(record, indent=2) + "\n")
            root = self.dir / CHECKPOINTS
            with writing(root):
                root.mkdir(exist_ok=True)
            remove_stale(root, None, ".partial")  # checkpoints a kill interrupted

        self._main_writes(write)
        self._together()

    # Stepping --------------------------------------------------------------------------

    def _step(
        self,
        wrapped: Any,
        model: Any,
        optimizer: Any,
        scheduler: Any,
        precision: Precision,
        batch: Features,
        causal: bool,
        step: int,
        settings: Settings,
    ) -> tuple[float, int]:
        """One optimizer step; (the global batch's loss, the tokens all processes read)."""
        import torch

        cluster = self.cluster
        torch.manual_seed(step_seed(settings.seed, step, cluster.rank, 1))
        count = target_count(batch, causal)
        tokens = sum(int(v.sum()) for k, v in batch.items() if k.endswith("attention_mask"))
        total, all_tokens = cluster.all_sum([float(count), float(tokens)])
        inputs = to_torch(batch, cluster.device)
        with precision.autocast():
            output = wrapped(**inputs)
        # Each process's mean is weighted by its share of the targets, so that the average the
        # strategies take over processes is the mean over the whole batch.
        weight = count * cluster.world / total if total else 0.0
        loss = output.loss if count else output.logits.sum() * 0.0
        scaled = loss * weight
        if precision.scaler is not None:
            precision.scaler.scale(scaled).backward()
            precision.scaler.unscale_(optimizer)
        else:
            scaled.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        if precision.scaler is not None:
            precision.scaler.step(optimizer)
            precision.scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        (loss_sum,) = cluster.all_sum([float(loss.detach()) * count])
        return (loss_sum / total if total else 0.0), int(all_tokens)


__all__ = ["train"]
