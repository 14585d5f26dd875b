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
import hashlib
import io
import json
import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from llmspec.errors import LlmspecError
from llmspec.files import publishing, remove_stale, write_atomic, writing
from llmspec.spec.loading import dump_spec, load_spec, spec_sha256
from llmspec.spec.sections import FileTokenizer, ModelSpec
from llmspec.trainer.objectives import (
    Collator,
    Features,
    TokenIds,
    make_collator,
    target_count,
)
from runtime.reading import UnreadableFile, check_regular, iter_lines

SPEC_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "spec.yaml", "weights.safetensors", "tokenizer.json"
RUN_FILE, METRICS_FILE, PLOT_FILE = "run.json", "metrics.jsonl", "loss.png"
CHECKPOINTS, OPTIMIZER_FILE, STATE_FILE = "checkpoints", "optimizer.pt", "state.json"

BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
MIN_LR_RATIO = 0.1  # the cosine decays to this fraction of lr
EVAL_FRACTION, EVAL_MAX_CHUNKS = 0.05, 64
KEEP_CHECKPOINTS = 2
EVAL_STREAM = 2**31  # the seed component that tells evaluation generators from training ones

STRATEGIES = ("ddp", "fsdp")


class TrainError(ValueError, LlmspecError):
    """A training run that cannot start or continue: the message says why and what to do."""


# ----------------------------------------------------------------------------------------
# Settings


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


def _settings(given: dict[str, Any], saved: Settings | None) -> Settings:
    """The run's settings: the saved ones when resuming (an explicit different value is an
    error), otherwise the given ones over the defaults."""
    explicit = {k: v for k, v in given.items() if v is not None}
    if saved is None:
        return replace(Settings(), **explicit)
    differ = [
        f"{k.replace('_', '-')} {v} (the run has {getattr(saved, k)})"
        for k, v in explicit.items()
        if v != getattr(saved, k)
    ]
    if differ:
        raise TrainError(
            "--resume continues a run with its own settings; given: "
            + ", ".join(differ)
            + ". Omit them, or start a new run from this one's weights (pass RUN_DIR as the "
            "spec)"
        )
    return saved


# ----------------------------------------------------------------------------------------
# Processes


@dataclass
class Cluster:
    """This process's place in the job: rank, world size, device, and the strategy."""

    rank: int = 0
    world: int = 1
    device: Any = "cpu"
    strategy: str | None = None
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, strategy: str | None) -> Cluster:
        import torch

        world = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        if strategy is None:
            if world > 1:
                raise TrainError(
                    f"running as {world} processes (torchrun) needs --strategy ddp or fsdp; "
                    "without it each process would train its own copy"
                )
            return cls(device=torch.device("cuda" if cuda else "cpu"))
        if strategy not in STRATEGIES:
            raise TrainError(f"unknown strategy {strategy!r}; choose ddp or fsdp")
        import torch.distributed as dist

        owns = False
        if cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            backend = "nccl" if cuda else "gloo"
            if "RANK" in os.environ:
                dist.init_process_group(backend)
            else:  # one process without torchrun: a group of one
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            owns = True
        device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), device, strategy, owns)

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over all processes (float64)."""
        if self.strategy is None:
            return values
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def all_ok(self, ok: bool) -> bool:
        """Whether every process is ok (so that all raise together instead of hanging)."""
        return self.all_sum([0.0 if ok else 1.0])[0] == 0.0

    def _collective_device(self) -> Any:
        import torch

        return self.device if getattr(self.device, "type", "cpu") == "cuda" else torch.device("cpu")

    def barrier(self) -> None:
        """Wait until every process gets here (nothing without a strategy)."""
        if self.strategy is not None:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------
# Source, tokenizer and data


@dataclass
class Source:
    """What a run starts from: a spec, its tokenizer, and (from a run or model directory) the
    weights to continue from."""

    spec: ModelSpec
    tokenizer: Any
    weights: Path | None = None


def _run_spec(spec: ModelSpec) -> ModelSpec:
    """The spec as a run directory stores it: a trained or given tokenizer becomes the
    directory's tokenizer.json."""
    if spec.vocabulary.tokenizer.type == "byte-level":
        return spec
    vocabulary = spec.vocabulary.model_copy(
        update={"tokenizer": FileTokenizer(type="file", path=TOKENIZER_FILE)}
    )
    return spec.model_copy(update={"vocabulary": vocabulary})


def load_source(spec_or_dir: ModelSpec | str | os.PathLike[str]) -> Source:
    """The spec, tokenizer and initial weights of a spec file, a spec object, or a directory
    holding spec.yaml (a run, or ``llmspec import-hf`` output; weights.safetensors optional)."""
    from llmspec.tokenizer import load_for_spec

    if isinstance(spec_or_dir, ModelSpec):
        return Source(spec_or_dir, load_for_spec(spec_or_dir, Path.cwd()))
    path = Path(spec_or_dir)
    if path.is_dir():
        spec_path = path / SPEC_FILE
        if not spec_path.is_file():
            raise TrainError(f"{path}: a directory to train from must hold {SPEC_FILE}")
        spec = load_spec(spec_path)
        weights = path / WEIGHTS_FILE
        return Source(spec, load_for_spec(spec, path), weights if weights.is_file() else None)
    if not path.is_file():
        raise TrainError(f"{path}: no such spec file or run directory")
    spec = load_spec(path)
    return Source(spec, load_for_spec(spec, path.parent))


def _corpus(data: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, str]]:
    """(file, name to record) of each file of ``data`` (see :func:`corpus_files`). The name is
    the file's own, or for a file found in a directory the directory's name and the path below
    it: a run records where its data came from without the building machine's folders."""
    files: list[tuple[Path, str]] = []
    missing = []
    for item in data:
        path = Path(item)
        if path.is_file():
            files.append((path, path.name))
        elif path.is_dir():
            top = path.name or path.resolve().name
            files += sorted(
                (p, (Path(top) / p.relative_to(path)).as_posix())
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.exists():  # a FIFO, a socket, a device: never read (one could block)
            try:
                check_regular(path)
            except UnreadableFile as err:
                raise TrainError(f"data {err}") from None
        else:
            missing.append(str(path))
    if missing:
        raise TrainError(f"data not found: {', '.join(missing)}")
    if not files:
        raise TrainError("no data: give --data with at least one text file")
    return files


def corpus_files(data: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files of ``data``: files as given, directories expanded to every non-hidden file
    under them in name order."""
    return [path for path, _ in _corpus(data)]


# A document is encoded this much text at a time: encoding a whole large file at once holds
# about a hundred bytes per token in the tokenizer's result (a 1 GiB file: ~100 GiB).
ENCODE_CHUNK = 1 << 18  # characters
ENCODE_CHUNK_MAX = 1 << 20  # past this, a piece is cut even where the cut is not clean


def _document_pieces(path: Path) -> Iterator[str]:
    """The text of ``path`` in pieces of at least :data:`ENCODE_CHUNK` characters (the last
    one shorter), read in bounded lines. Pieces end with a line end followed by a character
    that is not white space, where byte-level BPE pre-tokenization splits anyway, so a file's
    tokens are those of encoding it whole; only a stretch of :data:`ENCODE_CHUNK_MAX`
    characters without such a place is cut elsewhere. Raises UnicodeDecodeError for a file
    that is not UTF-8 and :class:`UnreadableFile` for one that is not a regular file."""
    buffer: list[str] = []
    size = 0
    for line in iter_lines(path, ENCODE_CHUNK, keepends=True, errors="strict"):
        clean = bool(buffer) and buffer[-1].endswith("\n") and not line[:1].isspace()
        if size >= ENCODE_CHUNK_MAX or (size >= ENCODE_CHUNK and clean):
            yield "".join(buffer)
            buffer, size = [], 0
        buffer.append(line)
        size += len(line)
    if buffer:
        yield "".join(buffer)


def token_stream(files: Sequence[Path], tokenizer: Any, ids: TokenIds, causal: bool) -> np.ndarray:
    """The documents' tokens joined into one int32 stream (see the module docstring)."""
    head = [ids.bos] if causal and ids.bos is not None and ids.bos != ids.eos else []
    tail = [ids.eos] if ids.eos is not None else []
    pieces: list[np.ndarray] = []
    for path in files:
        document: list[np.ndarray] = []
        try:
            for text in _document_pieces(path):
                document.append(np.asarray(tokenizer.encode(text).ids, dtype=np.int32))
        except UnicodeDecodeError:
            continue  # not text
        except UnreadableFile as err:
            raise TrainError(f"data {err}") from None
        except OSError as err:
            raise TrainError(f"{path}: cannot read: {err.strerror or err}") from None
        if not document:
            continue
        pieces += [np.asarray(head, dtype=np.int32), *document, np.asarray(tail, dtype=np.int32)]
    if not pieces:
        raise TrainError("the data has no text (files empty or not UTF-8)")
    return np.concatenate(pieces)


@dataclass(frozen=True)
class Dataset:
    """The stream cut into chunks, split into training and held-out chunks."""

    stream: np.ndarray
    starts: np.ndarray  # chunk k is stream[starts[k] : starts[k] + length] (clipped)
    length: int
    train: np.ndarray  # chunk indices
    held_out: np.ndarray

    @classmethod
    def make(cls, stream: np.ndarray, length: int, seed: int) -> Dataset:
        starts = np.arange(0, len(stream), length)
        if len(starts) > 1 and len(stream) - starts[-1] < 2:
            starts = starts[:-1]  # a one-token tail teaches nothing
        order = np.random.default_rng([seed, EVAL_STREAM]).permutation(len(starts))
        n_eval = (
            0
            if len(starts) < 2
            else min(EVAL_MAX_CHUNKS, max(1, round(EVAL_FRACTION * len(starts))))
        )
        return cls(stream, starts, length, np.sort(order[n_eval:]), np.sort(order[:n_eval]))

    def chunk(self, index: int) -> np.ndarray:
        start = int(self.starts[index])
        return self.stream[start : start + self.length].astype(np.int64)

    def train_chunk(self, position: int, seed: int, cache: dict[int, np.ndarray]) -> np.ndarray:
        """The chunk at ``position`` of the endless sequence of seeded epochs."""
        n = len(self.train)
        epoch = position // n
        if epoch not in cache:
            cache.clear()
            cache[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        return self.chunk(int(self.train[cache[epoch][position % n]]))


def batch_examples(
    dataset: Dataset,
    collator: Collator,
    settings: Settings,
    step: int,
    rank: int,
    world: int,
    cache: dict[int, np.ndarray],
) -> Features:
    """This process's share of step ``step``'s global batch, collated."""
    share = settings.batch_size // world
    first = step * settings.batch_size + rank * share
    features = []
    for j in range(first, first + share):
        tokens = dataset.train_chunk(j, settings.seed, cache)
        rng = np.random.default_rng([settings.seed, step, j])
        features.append(collator.example(tokens, rng))
    return collator.pad(features)


def eval_batches(
    dataset: Dataset, collator: Collator, settings: Settings, size: int
) -> list[Features]:
    """The held-out chunks, collated once with fixed generators, ``size`` per batch."""
    out = []
    chunks = [int(i) for i in dataset.held_out]
    for first in range(0, len(chunks), size):
        features = [
            collator.example(
                dataset.chunk(i), np.random.default_rng([settings.seed, EVAL_STREAM, i])
            )
            for i in chunks[first : first + size]
        ]
        out.append(collator.pad(features))
    return out


# ----------------------------------------------------------------------------------------
# Model, optimizer, precision


def _wrap(model: Any, spec: ModelSpec, cluster: Cluster) -> Any:
    """The model under the cluster's strategy (DDP or FSDP2), or as it is."""
    if cluster.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [cluster.device.index] if cluster.device.type == "cuda" else None
        # BERT's pooler is not part of the masked-LM loss: its parameters get no gradient.
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=spec.head.pooler
        )
    if cluster.strategy == "fsdp":
        from torch import nn
        from torch.distributed.fsdp import fully_shard

        # The generated layers return views and never modify them in place.
        warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view")
        for name, module in model.named_modules():
            if name.endswith("layers") and isinstance(module, nn.ModuleList):
                for layer in module:
                    if not hasattr(layer, "cross_attn"):
                        fully_shard(layer)
        fully_shard(model)
    return model


def _optimizer(model: Any, settings: Settings, steps: int) -> tuple[Any, Any]:
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


def _precision(spec: ModelSpec, device: Any) -> Precision:
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


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank, 1]).generate_state(1)[0])


# ----------------------------------------------------------------------------------------
# Run directory: checkpoints, metrics, plot


def checkpoint_dirs(run: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first (staging directories are hidden)."""
    root = run / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step-")))


def _state_dicts(model: Any, optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The full model and optimizer state dicts, on the CPU of rank 0 (empty elsewhere).
    Every process must call this: FSDP gathers the shards."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (
        get_model_state_dict(model, options=options),
        get_optimizer_state_dict(model, optimizer, options=options),
    )


def _weights_bytes(weights: dict[str, Any]) -> bytes:
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
        (staged / WEIGHTS_FILE).write_bytes(_weights_bytes(weights))
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


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.1f}{unit}" if unit else f"{n:.0f}"
        n /= 1000
    return f"{n:.1f}T"


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


class _Run:
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
        from llmspec.inspect.estimate import build_bytes, train_bytes

        source = load_source(spec_or_dir)
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
        run_spec = _run_spec(source.spec)
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
            settings = _settings(given, Settings(**record["settings"]))
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
            settings = _settings(given, None).resolved(source.spec)
        problems = settings.problems(source.spec)
        if settings.batch_size % self.cluster.world:
            problems.append(
                f"batch_size {settings.batch_size} must be a multiple of the "
                f"{self.cluster.world} processes"
            )
        if problems:
            raise TrainError("; ".join(problems))
        files = _corpus(data)
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
        precision = _precision(spec, cluster.device)
        if precision.note:
            progress.note(precision.note)

        torch.manual_seed(settings.seed)
        weights = checkpoint / WEIGHTS_FILE if checkpoint else source.weights
        model = build(spec, dtype="fp32", weights=weights).to(cluster.device)
        model.train()
        wrapped = _wrap(model, spec, cluster)
        optimizer, scheduler = _optimizer(model, settings, settings.steps)
        start, state = 0, {"tokens": 0, "elapsed_s": 0.0}
        if checkpoint is not None:
            start, state = self._load_checkpoint(
                checkpoint, wrapped, optimizer, scheduler, precision
            )
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
                    last_eval = self._evaluate(wrapped, evals, precision, causal)
                    if last_eval is not None:
                        held_out = {"step": done, "eval_loss": last_eval}
                        self._main_writes(self._record, metrics, held_out)
                rate = state["tokens"] / state["elapsed_s"] if state["elapsed_s"] else 0.0
                shown_eval = f" | eval {last_eval:.3f}" if last_eval is not None else ""
                progress.update(
                    done,
                    f"step {done}/{settings.steps} | loss {loss:.3f}{shown_eval} | lr {lr:.2e} | "
                    f"{_human(rate)} tok/s",
                )
                if done % settings.checkpoint_every == 0 or done == settings.steps:
                    model_state, optimizer_state = _state_dicts(wrapped, optimizer)  # collective
                    checkpoint_at = (self.dir, done, model_state, optimizer_state, scheduler)
                    self._main_writes(save_checkpoint, *checkpoint_at, precision, state)
                    self._main_writes(self._plot, spec)
                    self._together()
            final, _ = _state_dicts(wrapped, optimizer)
            self._main_writes(write_atomic, self.dir / WEIGHTS_FILE, _weights_bytes(final))
            self._main_writes(self._plot, spec)
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

    def _record(self, metrics: Any, record: dict[str, Any]) -> None:
        """Append one record to metrics.jsonl (rank 0; ``metrics`` is None elsewhere)."""
        if metrics is not None:
            with writing(self.dir / METRICS_FILE):
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()

    def _load_checkpoint(
        self, checkpoint: Path, model: Any, optimizer: Any, scheduler: Any, precision: Precision
    ) -> tuple[int, dict[str, Any]]:
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

        from llmspec.trainer.objectives import to_torch

        cluster = self.cluster
        torch.manual_seed(_step_seed(settings.seed, step, cluster.rank))
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

    def _evaluate(
        self, wrapped: Any, batches: list[Features], precision: Precision, causal: bool
    ) -> float | None:
        """The held-out loss: every process evaluates every held-out batch (FSDP needs all
        processes in each forward), so no reduction is needed."""
        import torch

        from llmspec.trainer.objectives import to_torch

        if not batches:
            return None
        wrapped.eval()
        loss_sum, count_sum = 0.0, 0
        with torch.no_grad():
            for batch in batches:
                count = target_count(batch, causal)
                if not count:
                    continue
                with precision.autocast():
                    output = wrapped(**to_torch(batch, self.cluster.device))
                loss_sum += float(output.loss) * count
                count_sum += count
        wrapped.train()
        return loss_sum / count_sum if count_sum else None

    def _plot(self, spec: ModelSpec) -> None:
        records = read_metrics(self.dir / METRICS_FILE)
        write_atomic(
            self.dir / PLOT_FILE, plot_losses(records, f"{spec.name}: {spec.objective.type}")
        )


__all__ = [
    "Settings",
    "TrainError",
    "lr_factor",
    "plot_losses",
    "train",
]
