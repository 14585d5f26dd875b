"""Evaluating an artifact on a text corpus with its objective: ``llmspec eval`` and
:func:`evaluate`::

    from llmspec.inspect.evaluate import evaluate

    report = evaluate("artifacts/tiny-gpt", ["valid.txt"], batch_size=8, seq_len=128)
    print(report.loss, report.perplexity)

What it computes, per objective, over every label that is not -100 (target tokens):

* **causal-lm**: mean next-token cross-entropy (nats per token; the logits at position t scored
  against the token at t + 1), the perplexity ``exp(loss)`` and the next-token accuracy;
* **masked-lm**: mean cross-entropy over the masked positions and the masked-token accuracy
  (argmax equals the original token);
* **span-corruption / denoising**: mean cross-entropy of the decoder's targets (teacher forced),
  the perplexity ``exp(loss)`` of the targets and the token accuracy.

Perplexity is not reported for masked-lm (a masked model scores a few positions given both
sides, which is not a likelihood of the text).

How: the data are read, tokenized and chunked exactly as ``llmspec train`` does
(:func:`llmspec.trainer.data.corpus_files`, :func:`~llmspec.trainer.data.token_stream`,
:class:`~llmspec.trainer.data.Dataset`), with the artifact's own tokenizer and spec. Every chunk of
the corpus is evaluated (the corpus is taken to be held out as a whole), in stream order, at most
``batches`` batches of ``batch_size``; each chunk is corrupted by the objective's collator with
a generator seeded by ``(seed, chunk)`` as the trainer's held-out evaluation does, so a run's
evaluation and ``llmspec eval`` see the same kind of batches and the same seed gives the same
batches. The logits come from the artifact's graphs on ONNX Runtime (one full-sequence pass, an
empty KV cache; the encoder-decoder's encoder once per batch), the loss from them in numpy
(float64 log-softmax). The overall loss is the token-weighted mean of the batches' losses, which
is what the PyTorch model's ``forward(..., labels=...)`` gives batch by batch (a test checks
it).

Needs only the runtime's packages (onnxruntime, numpy, tokenizers) and the base install: no
torch.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

import runtime
from llmspec.errors import LlmspecError
from llmspec.spec.loading import load_spec
from llmspec.spec.sections import ModelSpec
from llmspec.trainer.data import Dataset, corpus_files, eval_batches, token_stream
from llmspec.trainer.objectives import IGNORE, Features, TokenIds, make_collator
from llmspec.trainer.settings import Settings
from runtime import artifact as fmt

DEFAULT_BATCH_SIZE = 8


class EvalError(ValueError, LlmspecError):
    """An evaluation that cannot run (settings that do not fit the artifact, data with nothing
    to score); the message says why and what to do."""


@dataclass(frozen=True)
class EvalReport:
    """The result of :func:`evaluate`."""

    artifact: str
    name: str
    architecture: str
    objective: str
    device: str
    loss: float  # mean cross-entropy per target token, nats
    perplexity: float | None  # exp(loss); None for masked-lm
    accuracy: float  # argmax == label over the target tokens
    tokens: int  # target tokens scored
    sequences: int
    batches: int
    batch_size: int
    seq_len: int
    seed: int
    seconds: float
    batch_losses: list[float | None] = field(default_factory=list)  # each batch's mean loss
    batch_tokens: list[int] = field(default_factory=list)  # each batch's target tokens

    @property
    def accuracy_name(self) -> str:
        return "masked-token accuracy" if self.objective == "masked-lm" else "token accuracy"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        lines = [
            f"{self.name} ({self.objective}) on {self.device}: {self.batches} batches, "
            f"{self.sequences} sequences of <= {self.seq_len} tokens, {self.tokens} target "
            f"tokens (seed {self.seed}, {self.seconds:.2f} s)",
            f"  loss        {self.loss:.4f} nats/token",
        ]
        if self.perplexity is not None:
            lines.append(f"  perplexity  {self.perplexity:.4f}")
        lines.append(f"  accuracy    {self.accuracy:.4f} ({self.accuracy_name})")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Data


def make_batches(
    spec: ModelSpec,
    tokenizer: Any,
    data: Sequence[str | os.PathLike[str]],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seq_len: int | None = None,
    batches: int | None = None,
    seed: int = 0,
) -> list[Features]:
    """The evaluation batches of ``data`` for ``spec``'s objective (see the module docstring):
    numpy arrays named after the model's forward arguments, ``labels`` included. Raises
    :class:`llmspec.trainer.settings.TrainError` for missing or empty data, :class:`EvalError` for
    settings out of range."""
    seq_len = spec.context_length if seq_len is None else seq_len
    problems = []
    if batch_size < 1:
        problems.append(f"batch_size must be at least 1, got {batch_size}")
    if seq_len < 1:
        problems.append(f"seq_len must be at least 1, got {seq_len}")
    elif seq_len > spec.context_length:
        problems.append(
            f"seq_len {seq_len} exceeds the model's context_length {spec.context_length}; "
            "lower --seq-len"
        )
    if batches is not None and batches < 1:
        problems.append(f"batches must be at least 1, got {batches}")
    if seed < 0:
        problems.append(f"seed must not be negative, got {seed}")
    if problems:
        raise EvalError("; ".join(problems))
    causal = spec.objective.type == "causal-lm"
    ids = TokenIds.from_tokenizer(spec, tokenizer)
    collator = make_collator(spec, ids, seq_len)
    stream = token_stream(corpus_files(data), tokenizer, ids, causal)
    dataset = Dataset.make(stream, collator.raw_length, seed)
    chunks = np.arange(len(dataset.starts))
    if batches is not None:
        chunks = chunks[: batches * batch_size]
    dataset = replace(dataset, train=chunks[:0], held_out=chunks)
    return eval_batches(dataset, collator, Settings(seed=seed), batch_size)


# ----------------------------------------------------------------------------------------
# Logits on ONNX Runtime


def batch_logits(model: Any, batch: Features) -> np.ndarray:
    """The logits ``[batch, seq, vocab]`` (float32) of a collated batch, from ``model``'s
    graphs (a model from ``runtime.load``, fed through its :mod:`runtime.graphs` feeder): the
    decoder-only graph over the whole sequence, the encoder-only graph, or the encoder then the
    decoder (teacher forced)."""

    architecture = model.manifest.architecture
    input_ids = np.ascontiguousarray(batch["input_ids"], dtype=np.int64)
    attention_mask = np.ascontiguousarray(batch["attention_mask"], dtype=np.int64)
    feeder = model.feeder
    if architecture == "decoder-only":
        logits, _ = feeder.run(input_ids, attention_mask, position_ids=batch.get("position_ids"))
    elif architecture == "encoder-only":
        logits = feeder.run(input_ids, attention_mask, host=(fmt.LOGITS,))[fmt.LOGITS]
    else:
        encoded = feeder.encode(input_ids, attention_mask)
        targets = np.ascontiguousarray(batch["decoder_input_ids"], dtype=np.int64)
        logits, _ = feeder.decode(targets, encoded, batch.get("decoder_attention_mask"))
    return np.asarray(logits, dtype=np.float32)


def score(logits: np.ndarray, labels: np.ndarray, causal: bool) -> tuple[float, int, int]:
    """(summed cross-entropy in nats, target tokens, correct argmax predictions) of
    ``logits`` ``[batch, seq, vocab]`` against ``labels`` ``[batch, seq]`` (-100: ignored);
    ``causal``: position t is scored against label t + 1."""
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    chosen = labels != IGNORE
    targets = labels[chosen]
    if targets.size == 0:
        return 0.0, 0, 0
    rows = np.asarray(logits[chosen], dtype=np.float64)  # (N, vocab)
    shifted = rows - rows.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = log_probs[np.arange(len(targets)), targets]
    correct = int((rows.argmax(axis=-1) == targets).sum())
    return float(-picked.sum()), int(targets.size), correct


# ----------------------------------------------------------------------------------------
# The evaluation


def evaluate(
    artifact: str | os.PathLike[str],
    data: Sequence[str | os.PathLike[str]],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seq_len: int | None = None,
    batches: int | None = None,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
) -> EvalReport:
    """Evaluate the artifact directory ``artifact`` on the text files (or directories of them)
    ``data`` with its objective (see the module docstring).

    Args:
        batch_size: sequences per batch.
        seq_len: tokens per sequence (default: the model's context length).
        batches: evaluate at most this many batches (default: the whole corpus).
        seed: the seed of the objective's corruption (masking, noise spans).
        device, threads: as :func:`runtime.load`.

    Raises ``runtime.ArtifactError`` for an artifact that is not valid,
    :class:`llmspec.trainer.settings.TrainError` for missing or empty data, :class:`EvalError` for
    settings out of range or data with nothing to score, and the objective's and tokenizer's
    ValueErrors."""

    started = time.perf_counter()
    model = runtime.load(Path(artifact), device=device, threads=threads)
    spec = load_spec(Path(artifact) / fmt.SPEC)
    if spec.architecture != model.manifest.architecture:
        raise runtime.ArtifactError(
            f"{Path(artifact) / fmt.SPEC}: a {spec.architecture} spec, but the manifest says "
            f"{model.manifest.architecture}; export the artifact again"
        )
    seq_len = spec.context_length if seq_len is None else seq_len
    collated = make_batches(
        spec,
        model.tokenizer,
        data,
        batch_size=batch_size,
        seq_len=seq_len,
        batches=batches,
        seed=seed,
    )
    causal = spec.objective.type == "causal-lm"
    total_nll, total_tokens, total_correct, sequences = 0.0, 0, 0, 0
    batch_losses: list[float | None] = []
    batch_tokens: list[int] = []
    for batch in collated:
        nll, count, correct = score(batch_logits(model, batch), batch["labels"], causal)
        sequences += len(batch["input_ids"])
        total_nll += nll
        total_tokens += count
        total_correct += correct
        batch_losses.append(nll / count if count else None)
        batch_tokens.append(count)
    if not total_tokens:
        raise EvalError(
            "the data has no tokens to score (too short for the objective); give more text"
        )
    loss = total_nll / total_tokens
    return EvalReport(
        artifact=str(artifact),
        name=model.manifest.name,
        architecture=model.manifest.architecture,
        objective=spec.objective.type,
        device=model.device,
        loss=loss,
        perplexity=None if spec.objective.type == "masked-lm" else _exp(loss),
        accuracy=total_correct / total_tokens,
        tokens=total_tokens,
        sequences=sequences,
        batches=len(collated),
        batch_size=batch_size,
        seq_len=seq_len,
        seed=seed,
        seconds=time.perf_counter() - started,
        batch_losses=batch_losses,
        batch_tokens=batch_tokens,
    )


def _exp(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


__all__ = [
    "EvalError",
    "EvalReport",
    "batch_logits",
    "evaluate",
    "make_batches",
    "score",
]
