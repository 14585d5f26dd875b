"""Continuous batching: concurrent requests share the model's steps.

An :class:`Engine` owns one generative model (decoder-only or encoder-decoder) and one thread
that runs it. Requests are :meth:`Engine.submit` ted from any thread; each gets a
:class:`Ticket` that yields its :class:`EngineEvent` s (one per generated token, the last one
with a finish reason) or hands them to a callback. The loop, one iteration at a time:

1. **Admit**: while no group is being prefilled and the batch has room (``max_batch`` rows),
   the waiting requests (up to the room left) become the next *prefill group*.
2. **Prefill one chunk** of that group: a decoder-only group's left-padded prompts run at once
   when they fit in ``prefill_chunk_tokens`` columns (:data:`PREFILL_CHUNK_TOKENS`), else row by
   row in chunks of that many tokens (:meth:`runtime.graphs.DecoderGraph.prefill_chunks`), one
   run per iteration, so a long prompt delays the running streams by one chunk's time per
   token instead of its whole prefill (an encoder-decoder group runs its encoder and its
   decoder's first step at once). When the group's prompts are done, each row's first token is
   chosen and the group **joins** the running batch.
3. **Decode one step** of the running batch: one token for every row, whatever request it
   belongs to. Rows that finish (a stop token, a stop string, ``max_new_tokens``, a cancelled
   ticket) **leave** the batch at this step boundary; their place is free for the next admit.

Every row keeps its own decoding state (:class:`runtime.sampling.DecodingState`: its chain, its
seeded generator, its processors' states, a grammar's included), so a request gets the same
tokens whatever else runs beside it: greedy rows exactly what ``model.generate`` gives for the
prompt alone, and seeded sampling the same draws as ``generate(prompt, seed=...)`` alone.

The batch's KV cache is a :class:`runtime.graphs.KVCache`: one buffer per layer and kind,
``[rows, kv_heads, max_length, head_dim]``, written in place by every step, whose first
``width`` columns hold every row's tokens at the right end (left padding, as the one-call
loop's prompts): a joining group is padded on the left to the batch's width (or the batch to
the group's), a leaving row is dropped, and columns that no remaining row uses are trimmed from
the left, so the width stays the longest running row's. Positions come from each row's count
of real tokens, so padding never shifts them (the graphs' relative and ALiBi biases depend on
column distances, which left padding keeps for each row's contiguous tokens). An
encoder-decoder batch also holds the cross-attention keys/values, right padded to the longest
source with the encoder mask. Joining and leaving copy the cache into new buffers (through the
host under CUDA): a cost per join or leave, not per step; a step only writes its new column.

Not here: beam search (it reorders its own rows; ``model.generate`` runs it), and memory
planning beyond ``max_batch`` (the cache of ``max_batch`` rows at the context window must fit).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from runtime.decoding import DecodingError
from runtime.errors import LlmspecError, RuntimeInputError
from runtime.generation import RowText
from runtime.graphs import Cache, Encoded, KVCache, left_padded, padded, right_padded
from runtime.logits import token_logprobs
from runtime.memory import machine_memory
from runtime.results import TokenLogprob
from runtime.sampling import DecodingState, SamplerChain

if TYPE_CHECKING:
    from runtime.model import GenerativeModel

EngineFinish = Literal["eos", "stop", "length", "cancelled", "error"]

# A prefill chunk: at most this many prompt tokens over the group per iteration (the one-call
# loop's chunk, runtime.steppers.PREFILL_CHUNK_TOKENS, measured there).
PREFILL_CHUNK_TOKENS = 256
# OpenAI's bound on top_logprobs.
MAX_TOP_LOGPROBS = 20


class EngineError(RuntimeError, LlmspecError):
    """The engine cannot take a request: it is closed."""


class QueueFull(EngineError):
    """``max_queue`` requests are already waiting; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class EngineRequest:
    """One generation: a prompt's token ids (see :meth:`Engine.encode`), its budget, its own
    chain (a :class:`SamplerChain`, a constraint included) and options.

    ``logprobs``: None for none; ``k`` in [0, :data:`MAX_TOP_LOGPROBS`] for each token's
    log-probability and its ``k`` most likely alternatives (see
    :class:`runtime.results.TokenLogprob`: the model's raw distribution)."""

    prompt: list[int]
    max_new_tokens: int
    sampler: SamplerChain
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None


@dataclass(frozen=True)
class EngineEvent:
    """One step of one request: the token chosen (None on an event without one: a request with
    ``max_new_tokens`` 0, a cancelled or failed one), the text it adds (see
    :class:`runtime.results.StreamEvent`: stop strings never leak), and on the request's last
    event its finish reason (``"error"`` with ``error`` the message)."""

    token: int | None
    text: str
    finish_reason: EngineFinish | None = None
    logprob: TokenLogprob | None = None
    error: str | None = None


@dataclass(frozen=True)
class EngineStats:
    """What the engine is doing: requests waiting, rows in the batch (prefilling and
    decoding), and counts since it started."""

    queued: int
    running: int
    prefilling: int
    steps: int
    tokens: int
    finished: int


class Ticket:
    """A submitted request: iterate for its events (blocking), or read them from the callback
    given to :meth:`Engine.submit`; :meth:`cancel` frees its batch row at the next step."""

    def __init__(
        self, request: EngineRequest, on_event: Callable[[EngineEvent], None] | None
    ) -> None:
        self.request = request
        self._on_event = on_event
        self._events: queue.SimpleQueue[EngineEvent] | None = (
            None if on_event is not None else queue.SimpleQueue()
        )
        self.cancelled = False
        self.done = threading.Event()
        self.submitted = time.perf_counter()

    def _emit(self, event: EngineEvent) -> None:
        if event.finish_reason is not None:
            self.done.set()
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # the consumer is gone or broken: stop making its tokens
                self.cancelled = True
        else:
            assert self._events is not None
            self._events.put(event)

    def cancel(self) -> None:
        """Stop this request: it leaves the queue or the batch at the engine's next step, and
        its last event has finish reason ``"cancelled"``."""
        self.cancelled = True

    def __iter__(self) -> Iterator[EngineEvent]:
        if self._events is None:
            raise RuntimeError("this ticket's events go to its callback")
        while True:
            event = self._events.get()
            yield event
            if event.finish_reason is not None:
                return


@dataclass
class _Row:
    """A request in the batch: its ticket, decoding state, text and count of new tokens."""

    ticket: Ticket
    state: DecodingState
    text: RowText
    generated: int = 0
    done: bool = False


@dataclass
class _Batch:
    """Rows that run together: their KV cache, masks, and for each the token to feed next.

    ``position`` is how many prompt columns of a decoder-only group have been prefilled
    (``None`` once the group decodes)."""

    rows: list[_Row]
    cache: KVCache | None
    mask: np.ndarray  # [rows, width]: 1 where the cache column is a real token of the row
    next_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    # An encoder-decoder batch: the cross-attention keys/values and the encoder mask
    cross: Cache | None = None
    source_mask: np.ndarray | None = None
    # A group in prefill: its padded prompts (the source of an encoder-decoder) and, for a
    # decoder-only group, its prefill's runs (DecoderGraph.prefill_chunks)
    ids: np.ndarray | None = None
    prefill: Iterator[tuple[np.ndarray, KVCache] | None] | None = None


class Engine:
    """Serves one generative model to concurrent requests with continuous batching (see the
    module docstring). Thread-safe; one thread runs the model.

    Args:
        model: a :class:`runtime.model.DecoderModel` or :class:`runtime.model.Seq2SeqModel`.
        max_batch: rows that decode together at most (the KV cache of that many rows at the
            context window must fit in memory).
        max_queue: requests that may wait for a row; beyond it :meth:`submit` raises
            :class:`QueueFull` (a server answers 429).
        prefill_chunk_tokens: prompt tokens (over a group) per prefill iteration.
    """

    def __init__(
        self,
        model: GenerativeModel,
        max_batch: int = 16,
        max_queue: int = 64,
        prefill_chunk_tokens: int = PREFILL_CHUNK_TOKENS,
    ) -> None:
        from runtime.model import DecoderModel, Seq2SeqModel

        if not isinstance(model, DecoderModel | Seq2SeqModel):
            raise RuntimeInputError(
                f"continuous batching serves generative models; {type(model).__name__} "
                "is not one (an encoder-only model embeds and fills masks: call it directly)"
            )
        for name, value, least in (
            ("max_batch", max_batch, 1),
            ("max_queue", max_queue, 0),
            ("prefill_chunk_tokens", prefill_chunk_tokens, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise RuntimeInputError(f"{name} must be a whole number >= {least}, got {value!r}")
        _check_memory(model, max_batch)
        self.model = model
        self.seq2seq = isinstance(model, Seq2SeqModel)
        self.feeder: Any = model.feeder
        self.graph = self.feeder.graph  # the decoder graph: where the cache lives
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.chunk_tokens = prefill_chunk_tokens
        self._hidden = model._hidden_ids()
        self._lock = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._running: _Batch | None = None
        self._group: _Batch | None = None
        self._closing = False
        self._drain = True
        self._steps = self._tokens = self._finished = 0
        self._step_seconds = 0.05  # a running mean, for Retry-After
        self._thread = threading.Thread(target=self._loop, name="llmspec-engine", daemon=True)
        self._thread.start()

    # -- what callers use

    def encode(self, text: str, special: bool = True) -> list[int]:
        """A prompt's token ids as the model takes them: with the tokenizer's special tokens
        (bos; an encoder-decoder model's framing) when ``special``; without them for text
        that already has them (a rendered chat template writes its own bos)."""
        if special:
            ids = self.model._prompt_tokens(text, "prompt")
        else:
            ids = self.model.tokenizer.ids(text, what="prompt", add_special_tokens=False)
        return self.model._checked_ids(ids, "prompt")

    def check(self, prompt: list[int], max_new_tokens: int) -> None:
        """Raise :class:`RuntimeInputError` unless ``prompt`` (token ids) and ``max_new_tokens``
        fit the model (ids in the vocabulary, lengths within the context window)."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise RuntimeInputError(
                f"max_new_tokens must be a whole number, got {max_new_tokens!r}"
            )
        if max_new_tokens < 0:
            raise RuntimeInputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        ids = self.model._checked_ids(prompt, "prompt")
        self.model._check_lengths([ids], max_new_tokens)

    def submit(
        self, request: EngineRequest, on_event: Callable[[EngineEvent], None] | None = None
    ) -> Ticket:
        """Queue ``request``; its events go to ``on_event`` (called from the engine's thread:
        keep it short, e.g. ``loop.call_soon_threadsafe``) or, without one, to the ticket's
        iterator. Raises :class:`RuntimeInputError` for a bad request, :class:`QueueFull` when
        ``max_queue`` requests wait, :class:`EngineError` once the engine is closing."""
        self.check(request.prompt, request.max_new_tokens)
        if not isinstance(request.sampler, SamplerChain):
            raise RuntimeInputError(
                f"sampler must be a runtime.sampling.SamplerChain, got "
                f"{type(request.sampler).__name__}"
            )
        top = request.logprobs
        if top is not None and (
            isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS
        ):
            raise RuntimeInputError(
                f"logprobs must be None or a whole number from 0 to {MAX_TOP_LOGPROBS}, got {top!r}"
            )
        seed = request.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise RuntimeInputError(f"seed must be a whole number >= 0 or None, got {seed!r}")
        for text in request.stop:
            if not isinstance(text, str) or not text:
                raise RuntimeInputError(f"stop strings must be non-empty strings, got {text!r}")
        ticket = Ticket(request, on_event)
        with self._lock:
            if self._closing:
                raise EngineError("the engine is shutting down and takes no new requests")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(
                    f"{len(self._waiting)} requests are waiting (max_queue {self.max_queue}); "
                    "retry later",
                    retry_after=self._retry_after(),
                )
            if request.max_new_tokens == 0:
                ticket._emit(EngineEvent(None, "", "length"))
                return ticket
            self._waiting.append(ticket)
            self._lock.notify_all()
        return ticket

    @property
    def stats(self) -> EngineStats:
        with self._lock:
            running = len(self._running.rows) if self._running is not None else 0
            prefilling = len(self._group.rows) if self._group is not None else 0
            return EngineStats(
                queued=len(self._waiting),
                running=running,
                prefilling=prefilling,
                steps=self._steps,
                tokens=self._tokens,
                finished=self._finished,
            )

    def close(self, drain: bool = True, timeout: float | None = None) -> bool:
        """Take no new requests; with ``drain``, finish every accepted one (queued included),
        else cancel them. Waits up to ``timeout`` seconds (None: until done) for the thread to
        end; returns whether it did."""
        with self._lock:
            self._closing = True
            self._drain = drain
            self._lock.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(drain=False)

    # -- the loop

    def _retry_after(self) -> float:
        """Seconds until a queued request is likely to get a row: a rough guess from the
        queue's length and the recent step time (at least 1, as Retry-After is whole seconds)."""
        per_request = self._step_seconds * 64
        return float(max(1, math.ceil(len(self._waiting) * per_request / self.max_batch)))

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._work():
                    if self._closing:
                        return
                    self._lock.wait()
                if self._closing and not self._drain:
                    self._cancel_all()
                    return
                self._drop_cancelled_waiting()
                self._admit()
            try:
                if self._group is not None:
                    self._prefill_chunk()
                if self._running is not None:
                    started = time.perf_counter()
                    self._decode_step()
                    self._step_seconds = 0.9 * self._step_seconds + 0.1 * (
                        time.perf_counter() - started
                    )
            except Exception as err:  # a graph failed: fail the rows it ran, keep serving
                self._fail_all(err)

    def _work(self) -> bool:
        return bool(self._waiting) or self._group is not None or self._running is not None

    def _drop_cancelled_waiting(self) -> None:
        for ticket in [t for t in self._waiting if t.cancelled]:
            self._waiting.remove(ticket)
            ticket._emit(EngineEvent(None, "", "cancelled"))

    def _admit(self) -> None:
        if self._group is not None or not self._waiting:
            return
        room = self.max_batch - (len(self._running.rows) if self._running is not None else 0)
        if room <= 0:
            return
        tickets = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        self._group = self._start_group(tickets)

    def _start_group(self, tickets: list[Ticket]) -> _Batch:
        model = self.model
        prompts = [t.request.prompt for t in tickets]
        prefixes = model._prefixes(prompts)
        rows = [
            _Row(
                ticket,
                DecodingState([prefix], model.vocab_size, seed=t.request.seed, pad_id=model.pad_id),
                RowText(model._decode_raw, t.request.stop, self._hidden),
            )
            for ticket, t, prefix in zip(tickets, tickets, prefixes, strict=True)
        ]
        if self.seq2seq:
            source, source_mask = right_padded(prompts, model.pad_id)
            return _Batch(
                rows, None, np.zeros((len(rows), 0), np.int64), ids=source, source_mask=source_mask
            )
        ids, mask = left_padded(prompts, model.pad_id)
        room = ids.shape[1] + max(t.request.max_new_tokens for t in tickets)
        group = _Batch(rows, None, mask, ids=ids)
        group.prefill = self.feeder.prefill_chunks(ids, mask, self.chunk_tokens, room)
        return group

    def _prefill_chunk(self) -> None:
        group = self._group
        assert group is not None and group.ids is not None
        if self.seq2seq:
            assert group.source_mask is not None
            encoded = self.feeder.encode(group.ids, group.source_mask)
            rows = len(group.rows)
            start = np.full((rows, 1), self.model.special_tokens["decoder_start"], np.int64)
            mask = np.ones((rows, 1), dtype=np.int64)
            room = 1 + max(row.ticket.request.max_new_tokens for row in group.rows)
            logits, cache = self.feeder.decode(start, encoded, mask, keep=1, max_length=room)
            group.cache, group.mask, group.cross = cache, mask, encoded.cross
            logits = logits[:, -1, :]
        else:
            assert group.prefill is not None
            result = next(group.prefill)
            if result is None:
                return
            logits, group.cache = result
            group.prefill = None
        group.ids = None
        tokens = self._select(group, logits)
        with self._lock:
            self._group = None
            if self._retire(group, tokens):
                self._running = self._join(self._running, group)

    def _decode_step(self) -> None:
        batch = self._running
        assert batch is not None
        if self.seq2seq:
            assert batch.cross is not None and batch.source_mask is not None
            encoded = Encoded(mask=batch.source_mask, cross=batch.cross, outputs={})
            assert batch.cache is not None
            logits, batch.mask, batch.cache = self.feeder.step(
                batch.next_tokens, encoded, batch.mask, batch.cache, padded=True
            )
        else:
            assert batch.cache is not None
            logits, batch.mask, batch.cache = self.feeder.step(
                batch.next_tokens, batch.mask, batch.cache
            )
        tokens = self._select(batch, logits)
        with self._lock:
            self._steps += 1
            if not self._retire(batch, tokens):
                self._running = None

    def _select(self, batch: _Batch, logits: np.ndarray) -> np.ndarray:
        """Each row's next token from its own chain; emits the rows' events (not the last of
        a finishing row, which :meth:`_retire` sends with its reason)."""
        tokens = np.zeros(len(batch.rows), dtype=np.int64)
        for index, row in enumerate(batch.rows):
            request = row.ticket.request
            if row.ticket.cancelled:
                row.done = True
                row.ticket._emit(EngineEvent(None, row.text.release(True), "cancelled"))
                continue
            scores = logits[index : index + 1]
            try:
                # select may change its logits in place: a copy only when logprobs read them
                keep = request.logprobs is not None
                choice = request.sampler.select(scores.copy() if keep else scores, row.state)
                token = int(choice[0])
                row.state.append(np.array([token], dtype=np.int64))
            except DecodingError as err:
                row.done = True
                row.ticket._emit(EngineEvent(None, "", "error", error=str(err)))
                continue
            logprob: TokenLogprob | None = None
            if request.logprobs is not None:
                logprob = token_logprobs(scores, np.array([token]), request.logprobs)[0]
            tokens[index] = token
            row.generated += 1
            reason: EngineFinish | None = None
            if token in self.model.stop_ids:
                reason = "eos"
            else:
                row.text.push(token)
                if row.text.stopped:
                    reason = "stop"
            if reason is None and row.generated >= request.max_new_tokens:
                reason = "length"
            if reason is not None:
                row.text.flush()
                row.done = True
            row.ticket._emit(
                EngineEvent(token, row.text.release(reason is not None), reason, logprob)
            )
            self._tokens += 1
            if reason is not None:
                self._finished += 1
        return tokens

    def _retire(self, batch: _Batch, tokens: np.ndarray) -> bool:
        """Drop the batch's finished rows (and the cache columns no row uses any more); set
        the next tokens of the rest. Returns whether any row is left."""
        keep = np.array([not row.done for row in batch.rows], dtype=bool)
        if not keep.any():
            return False
        batch.next_tokens = tokens[keep]
        if keep.all():
            return True
        rows = np.flatnonzero(keep)
        batch.rows = [batch.rows[i] for i in rows.tolist()]
        used = batch.mask[rows].any(axis=0)
        first = int(np.argmax(used))  # the first column any remaining row uses
        batch.mask = np.ascontiguousarray(batch.mask[rows, first:])
        assert batch.cache is not None
        batch.cache = self.feeder.take(batch.cache, rows, first)
        if batch.cross is not None:
            assert batch.source_mask is not None
            source = int(batch.source_mask[rows].any(axis=0).sum())  # right padded
            batch.source_mask = np.ascontiguousarray(batch.source_mask[rows, :source])
            batch.cross = self._take(batch.cross, rows, 0, source)
        return True

    def _take(self, cache: Cache, rows: np.ndarray, first: int, end: int | None = None) -> Cache:
        graph = self.graph
        return {
            name: graph.to_device(graph.to_host(value)[rows, :, first:end, :])
            for name, value in cache.items()
        }

    def _join(self, batch: _Batch | None, group: _Batch) -> _Batch:
        """``group`` (prefilled, its first tokens chosen) appended to the running ``batch``."""
        if batch is None:
            return group
        width = max(batch.mask.shape[1], group.mask.shape[1])
        assert batch.cache is not None and group.cache is not None
        batch.cache = self.feeder.stack(batch.cache, group.cache)
        batch.mask = np.concatenate(
            [padded(batch.mask, width, True), padded(group.mask, width, True)]
        )
        if batch.cross is not None:
            assert group.cross is not None
            assert batch.source_mask is not None and group.source_mask is not None
            source = max(batch.source_mask.shape[1], group.source_mask.shape[1])
            batch.cross = self._stacked(batch.cross, group.cross, source, left=False)
            batch.source_mask = np.concatenate(
                [
                    padded(batch.source_mask, source, False),
                    padded(group.source_mask, source, False),
                ]
            )
        batch.rows = batch.rows + group.rows
        batch.next_tokens = np.concatenate([batch.next_tokens, group.next_tokens])
        return batch

    def _stacked(self, first: Cache, second: Cache, width: int, left: bool) -> Cache:
        """Two caches' rows one after the other, each padded to ``width`` positions: on the
        left (self-attention: the rows' tokens end at the right) or the right (cross-attention:
        the sources start at position 0)."""
        graph = self.graph
        return {
            name: graph.to_device(
                np.concatenate(
                    [
                        padded(graph.to_host(value), width, left),
                        padded(graph.to_host(second[name]), width, left),
                    ]
                )
            )
            for name, value in first.items()
        }

    def _fail_all(self, err: Exception) -> None:
        message = str(err) or type(err).__name__
        with self._lock:
            for batch in (self._group, self._running):
                if batch is None:
                    continue
                for row in batch.rows:
                    if not row.done:
                        row.done = True
                        row.ticket._emit(EngineEvent(None, "", "error", error=message))
            self._group = self._running = None

    def _cancel_all(self) -> None:
        for batch in (self._group, self._running):
            if batch is not None:
                for row in batch.rows:
                    if not row.done:
                        row.ticket._emit(EngineEvent(None, row.text.release(True), "cancelled"))
        while self._waiting:
            self._waiting.popleft()._emit(EngineEvent(None, "", "cancelled"))
        self._group = self._running = None


def _check_memory(model: GenerativeModel, max_batch: int) -> None:
    """Refuse a ``max_batch`` whose rows' KV caches at the context window cannot fit the
    machine's memory (the batch may grow that large; nothing is allocated up front)."""
    memory = machine_memory()
    window = model.context_length
    need = model.request_bytes([[0]] * max_batch, max(0, window - 1), 1)
    if memory is None or need <= memory.total:
        return
    gib = 1 << 30
    raise RuntimeInputError(
        f"max_batch {max_batch} needs up to {need / gib:.1f} GiB for the KV caches of that many "
        f"rows at the context window of {window} tokens, more than the "
        f"{memory.total / gib:.1f} GiB of memory of this machine; lower max_batch"
    )


__all__ = [
    "Engine",
    "EngineError",
    "EngineEvent",
    "EngineRequest",
    "EngineStats",
    "QueueFull",
    "Ticket",
]
