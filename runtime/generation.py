"""The generation loop: a request's checks, its run over a model's stepper, each row's text.

The generative models of :mod:`runtime.model` hand ``generate``'s arguments to
:func:`checked_request`, which checks all of them before a graph runs, and run the
:class:`Request` it returns with a :class:`Run`: step by step with a
:class:`runtime.sampling.SamplerChain`, or as a beam search (:mod:`runtime.beam_search`), over
a :class:`Stepper`, the model's side that runs its graphs and keeps the KV cache
(:mod:`runtime.steppers`). What a run returns is defined in :mod:`runtime.results`. The
artifact's defaults for it, generation.json (``max_new_tokens``, the chain and the stop token
ids), are read here too (:func:`read_generation`). A row ends at its first stop token: eos, or
any of generation.json's ``stop_token_ids`` (Llama 3's ``<|eot_id|>`` and ``<|eom_id|>``).

Text is decoded incrementally (the prefix-offset method of Hugging Face's text-generation-
inference, :class:`RowText`): a step's text is released only once its bytes form whole
characters, and, when stop strings are given, only once it cannot be the beginning of a stop
string. So the concatenated stream of a row equals its final text exactly, and a stop string
never leaks into a stream.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from runtime.beam_search import BeamSearcher
from runtime.decoding import BeamSearch, DecodingChain, DecodingError
from runtime.errors import LlmspecError, RuntimeInputError
from runtime.logits import log_softmax, token_logprobs
from runtime.memory import machine_memory
from runtime.reading import MiB, UnreadableFile, read_json
from runtime.results import FinishReason, GenerationResult, StreamEvent, Timing, TokenLogprob
from runtime.sampling import SamplerChain
from runtime.structured import Constraint

if TYPE_CHECKING:
    from runtime.model import GenerativeModel

Prompt = str | Sequence[int] | np.ndarray
Prompts = Prompt | Sequence[Prompt]
Chain = DecodingChain | str | Sequence[Any]


# ----------------------------------------------------------------------------------------
# generation.json: the artifact's defaults

# generation.json holds a number and a short chain: a few hundred bytes, three levels deep.
MAX_GENERATION_BYTES = 1 * MiB
MAX_GENERATION_DEPTH = 16


class GenerationConfigError(ValueError, LlmspecError):
    """A generation.json (or its contents) that cannot be used; the message names the file."""


def max_new_tokens_limit(context_length: int) -> int:
    """The most ``max_new_tokens`` a default may ask for: the context window. More can never
    be generated (a decoder-only model's prompt shares the window; an encoder-decoder
    model's decoder has a window of its own), so such a default fails every request."""
    return context_length


class GenerationDefaults(NamedTuple):
    """What an artifact's generation.json holds."""

    max_new_tokens: int
    chain: DecodingChain
    # Every token that ends a row (eos included), in the file's order; None: the file has no
    # stop_token_ids (artifacts written before they existed), so eos alone stops.
    stop_token_ids: tuple[int, ...] | None = None


# More stop tokens than any model has (Llama 3.1 has three); a bound on what is read.
MAX_STOP_TOKENS = 1024


def _stop_token_ids(value: Any, name: str, vocab_size: int | None) -> tuple[int, ...]:
    """generation.json's ``stop_token_ids``, checked: a non-empty list of distinct token ids."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_STOP_TOKENS:
        what = f"{len(value)} ids" if isinstance(value, list) else type(value).__name__
        raise GenerationConfigError(
            f"{name}: stop_token_ids must be a list of 1 to {MAX_STOP_TOKENS} token ids, got {what}"
        )
    for index, token in enumerate(value):
        bad = isinstance(token, bool) or not isinstance(token, int) or token < 0
        if not bad and vocab_size is not None and token >= vocab_size:
            bad = True
        if bad:
            shown = repr(token) if len(repr(token)) <= 40 else repr(token)[:37] + "..."
            within = f" in [0, {vocab_size})" if vocab_size is not None else " >= 0"
            raise GenerationConfigError(
                f"{name}: stop_token_ids[{index}] must be a token id{within}, got {shown}"
            )
    if len(set(value)) != len(value):
        raise GenerationConfigError(f"{name}: stop_token_ids lists a token twice")
    return tuple(value)


def read_generation(
    path: str | os.PathLike[str], context_length: int, vocab_size: int | None = None
) -> GenerationDefaults:
    """The :class:`GenerationDefaults` of an artifact's generation.json, checked.

    The file is read bounded (a regular file of at most :data:`MAX_GENERATION_BYTES`, JSON
    nested at most :data:`MAX_GENERATION_DEPTH` deep), ``max_new_tokens`` must be a whole
    number from 0 to :func:`max_new_tokens_limit`, ``chain`` a valid decoding chain (whose
    sizes :mod:`runtime.decoding` bounds) and the optional ``stop_token_ids`` distinct token
    ids (below ``vocab_size`` when it is given). Raises :class:`GenerationConfigError` naming
    the file, the field and the fix; ``runtime.load`` and ``llmspec verify`` turn it into their
    errors."""
    name = os.fspath(path)
    try:
        data = read_json(path, MAX_GENERATION_BYTES, "generation.json", MAX_GENERATION_DEPTH)
    except UnreadableFile as err:
        raise GenerationConfigError(str(err)) from None
    if not isinstance(data, dict):
        raise GenerationConfigError(
            f"{name}: expected a JSON object with max_new_tokens and chain, "
            f"got {type(data).__name__}"
        )
    missing = [key for key in ("max_new_tokens", "chain") if key not in data]
    if missing:
        raise GenerationConfigError(f"{name}: missing {', '.join(missing)}")
    max_new = data["max_new_tokens"]
    if isinstance(max_new, bool) or not isinstance(max_new, int) or max_new < 0:
        shown = repr(max_new) if len(repr(max_new)) <= 40 else repr(max_new)[:37] + "..."
        raise GenerationConfigError(
            f"{name}: max_new_tokens must be a whole number >= 0, got {shown}"
        )
    limit = max_new_tokens_limit(context_length)
    if max_new > limit:
        shown = str(max_new) if max_new < 10**30 else f"a {len(str(max_new))}-digit number"
        raise GenerationConfigError(
            f"{name}: max_new_tokens is {shown}, beyond the context window of "
            f"{context_length} tokens, so every request with this default would fail; "
            f"lower it to at most {limit} (generation.max_new_tokens in the spec)"
        )
    try:
        chain = DecodingChain.from_json(data["chain"])
    except DecodingError as err:
        raise GenerationConfigError(f"{name}: chain: {err}") from None
    stops = data.get("stop_token_ids")
    if stops is not None:
        stops = _stop_token_ids(stops, name, vocab_size)
    return GenerationDefaults(max_new, chain, stops)


# ----------------------------------------------------------------------------------------
# The request


@dataclass
class Request:
    """One checked generate call."""

    prompts: list[list[int]]  # the token ids the model is fed (framed for encoder inputs)
    max_new_tokens: int
    sampler: SamplerChain | None  # None with beam search
    beam: BeamSearch | None
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    logprobs: int | None = None  # top alternatives per token; None: no logprobs
    constraint: Constraint | None = None


# OpenAI's bound on top_logprobs (and vLLM's default max_logprobs).
MAX_LOGPROBS = 20


def checked_logprobs(logprobs: Any) -> int | None:
    """``logprobs`` checked: None, or the number of top alternatives, 0 to
    :data:`MAX_LOGPROBS`."""
    if logprobs is None:
        return None
    if (
        isinstance(logprobs, bool)
        or not isinstance(logprobs, int | np.integer)
        or not 0 <= logprobs <= MAX_LOGPROBS
    ):
        raise RuntimeInputError(
            f"logprobs must be None or a whole number of top alternatives from 0 to "
            f"{MAX_LOGPROBS}, got {logprobs!r}"
        )
    return int(logprobs)


def _prompt_list(model: GenerativeModel, prompts: Prompts) -> list[list[int]]:
    """The prompts of a request as checked token ids, one list per row."""
    if isinstance(prompts, bytes | bytearray):
        raise RuntimeInputError("prompts must be a string or token ids, not bytes; decode them")
    if isinstance(prompts, str):
        items: list[Any] = [prompts]
    elif isinstance(prompts, np.ndarray):
        items = [prompts] if prompts.ndim == 1 else list(prompts)
    elif isinstance(prompts, Sequence):
        if len(prompts) == 0:
            raise RuntimeInputError("no prompts given; pass a string or a list of them")
        single = all(isinstance(p, int | np.integer) and not isinstance(p, bool) for p in prompts)
        items = [prompts] if single else list(prompts)
    else:
        raise RuntimeInputError(
            f"prompts must be a string, a list of token ids, or a list of those; "
            f"got {type(prompts).__name__}"
        )
    result = []
    for row, item in enumerate(items):
        what = f"prompt {row}"
        if isinstance(item, str):
            if not item:
                raise RuntimeInputError(f"{what} is empty; give some text to continue")
            result.append(model._checked_ids(model._prompt_tokens(item, what), what))
        elif isinstance(item, bytes):
            raise RuntimeInputError(f"{what} is bytes; decode it to a str first")
        else:
            result.append(model._checked_ids(item, what))
    return result


def checked_request(
    model: GenerativeModel,
    prompts: Prompts,
    max_new_tokens: int | None,
    chain: Chain | None,
    seed: int | None,
    stop: str | Sequence[str] | None,
    stream: bool,
    logprobs: int | None = None,
    constraint: Constraint | None = None,
) -> Request:
    """``generate``'s arguments (see :meth:`runtime.model.GenerativeModel.generate`) checked
    against ``model`` and the machine's memory, as a :class:`Request`. Raises
    :class:`RuntimeInputError` or :class:`DecodingError`, before any graph runs."""
    ids = _prompt_list(model, prompts)
    default = max_new_tokens is None
    if max_new_tokens is None:
        max_new_tokens = model.max_new_tokens
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int | np.integer):
        raise RuntimeInputError(
            f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}"
        )
    if max_new_tokens < 0:
        raise RuntimeInputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    try:
        model._check_lengths(ids, int(max_new_tokens))
    except RuntimeInputError as err:
        if not default:
            raise
        raise RuntimeInputError(
            f"{err} (max_new_tokens {max_new_tokens} is the artifact's default, from "
            "generation.json; pass max_new_tokens to choose another)"
        ) from None
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0
    ):
        raise RuntimeInputError(f"seed must be a whole number >= 0 or None, got {seed!r}")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not isinstance(stop, list | tuple):
        raise RuntimeInputError(
            f"stop must be a string or a list of strings, got {type(stop).__name__}"
        )
    stops = tuple(stop or ())
    for text in stops:
        if not isinstance(text, str) or not text:
            raise RuntimeInputError(f"stop strings must be non-empty strings, got {text!r}")
    parsed = model._chain(chain)
    beam = model._beam(parsed)
    if beam is not None and stream:
        raise RuntimeInputError(
            "beam_search cannot stream: its best hypothesis is known only at the end; "
            "use stream=False or a sampling chain"
        )
    top = checked_logprobs(logprobs)
    if constraint is not None:
        if not isinstance(constraint, Constraint):
            raise RuntimeInputError(
                f"constraint must be a runtime.structured.Constraint (from "
                f"model.constraint(json_schema=..., regex=... or grammar=...)), got "
                f"{type(constraint).__name__}"
            )
        constraint.check_model(model)
        if beam is not None:
            raise RuntimeInputError(
                "a constraint (structured output) cannot be used with beam_search; use a "
                "sampling chain (e.g. greedy or 'temperature=0.7,sample')"
            )
    _check_memory(model, ids, int(max_new_tokens), beam.beams if beam is not None else 1)
    sampler = None
    if beam is None:
        if constraint is not None:
            sampler = SamplerChain(parsed, constraint=constraint)
        elif parsed is model.chain:
            sampler = model._default_sampler
        else:
            sampler = SamplerChain(parsed)
    return Request(ids, int(max_new_tokens), sampler, beam, seed, stops, stream, top, constraint)


def _check_memory(
    model: GenerativeModel, prompts: list[list[int]], max_new_tokens: int, beams: int
) -> None:
    """Refuse a request whose KV cache alone cannot fit the machine's memory."""
    memory = machine_memory()
    need = model.request_bytes(prompts, max_new_tokens, beams)
    if memory is None or need <= memory.total:
        return
    available = memory.total
    gib = 1 << 30
    raise RuntimeInputError(
        f"this request needs at least {need / gib:.1f} GiB for its KV cache and logits "
        f"({len(prompts)} prompts x {beams} beams, up to "
        f"{model._cache_positions(max(len(p) for p in prompts), max_new_tokens)} positions), "
        f"more than the {available / gib:.1f} GiB of memory of this machine; send fewer "
        "prompts at once, or lower beams or max_new_tokens"
    )


# ----------------------------------------------------------------------------------------
# The run


class _Clock:
    """The loop's own time: paused while a streaming consumer holds the control."""

    def __init__(self) -> None:
        self.busy = 0.0
        self._mark = time.perf_counter()

    def pause(self) -> None:
        self.busy += time.perf_counter() - self._mark

    def resume(self) -> None:
        self._mark = time.perf_counter()

    def now(self) -> float:
        return self.busy + time.perf_counter() - self._mark


class Stepper:
    """The model side of one request: runs the graphs and keeps the cache and the masks."""

    rows: int

    def first(self, beams: int) -> np.ndarray:
        """Run the prompt; ``[rows * beams, vocab]`` logits of the first new token, each
        prompt's row repeated ``beams`` times (beam ``j`` of prompt ``i`` is row
        ``i * beams + j``)."""
        raise NotImplementedError

    def next(self, tokens: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """Feed one token per row (``alive`` False: the row is done, its token is masked)."""
        raise NotImplementedError

    def reorder(self, rows: np.ndarray) -> None:
        """Make row ``i`` of the cache the old row ``rows[i]`` (beam search)."""
        raise NotImplementedError


class Run:
    """The per-call state of one generate call."""

    def __init__(self, model: GenerativeModel, request: Request) -> None:
        self.model = model
        self.request = request
        rows = len(request.prompts)
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.reasons: list[FinishReason] = ["length"] * rows
        self.texts: list[RowText] | None = None
        self.logprobs: list[list[TokenLogprob]] | None = (
            None if request.logprobs is None else [[] for _ in range(rows)]
        )
        self.clock = _Clock()
        self.first_token = 0.0
        self.steps = 0
        self.stop_ids = model.stop_ids

    def _row_text(self) -> RowText:
        return RowText(self.model._decode_raw, self.request.stop, self.model._hidden_ids())

    def events(self) -> Iterator[StreamEvent]:
        request, model = self.request, self.model
        if request.stream or request.stop:
            self.texts = [self._row_text() for _ in request.prompts]
        if request.max_new_tokens == 0:
            return
        assert request.sampler is not None
        state = request.sampler.start(
            model._prefixes(request.prompts),
            model.vocab_size,
            seed=request.seed,
            pad_id=model.pad_id,
        )
        stepper = model._stepper(request.prompts, request.max_new_tokens)
        logits = stepper.first(1)
        top = request.logprobs
        for step in range(request.max_new_tokens):
            # the model's raw log-probabilities, before select changes the logits in place
            raw = None if top is None else np.array(logits, dtype=np.float32)
            tokens = request.sampler.select(logits, state)
            chosen = None if top is None or raw is None else token_logprobs(raw, tokens, top)
            state.append(tokens)
            if step == 0:
                self.first_token = self.clock.now()
            self.steps = step + 1
            last = step == request.max_new_tokens - 1
            finished: list[int] = []
            events: list[StreamEvent] = []
            for row in np.flatnonzero(~state.finished).tolist():
                token = int(tokens[row])
                self.tokens[row].append(token)
                entry = None
                if chosen is not None and self.logprobs is not None:
                    entry = chosen[row]
                    self.logprobs[row].append(entry)
                reason: FinishReason | None = None
                if token in self.stop_ids:
                    reason = "eos"
                elif self.texts is not None:
                    self.texts[row].push(token)
                    if self.texts[row].stopped:
                        reason = "stop"
                if reason is None and last:
                    reason = "length"
                if reason is not None:
                    finished.append(row)
                    self.reasons[row] = reason
                if self.texts is not None and request.stream:
                    text = self.texts[row]
                    if reason is not None:
                        text.flush()
                    released = text.release(reason is not None)
                    events.append(StreamEvent(row, token, released, reason, entry))
            if finished:
                state.finish(np.asarray(finished, dtype=np.int64))
            if events:
                self.clock.pause()
                yield from events
                self.clock.resume()
            if state.finished.all() or last:
                break
            logits = stepper.next(tokens, ~state.finished)

    def beam_events(self) -> Iterator[StreamEvent]:
        request, model = self.request, self.model
        if request.max_new_tokens == 0:
            return
        assert request.beam is not None
        rows = len(request.prompts)
        searcher = BeamSearcher.from_config(
            request.beam,
            eos_id=model.special_tokens.get("eos"),
            pad_id=model.pad_id,
            batch=rows,
            stop_ids=self.stop_ids,
        )
        beams = searcher.beams
        stepper = model._stepper(request.prompts, request.max_new_tokens)
        logits = stepper.first(beams)
        identity = np.arange(rows * beams)
        history: list[_BeamStep] = []  # each step's log-probs of the tokens that can be chosen
        for step in range(request.max_new_tokens):
            logprobs = log_softmax(logits)
            order, tokens = searcher.step(logprobs)
            if request.logprobs is not None:
                history.append(_BeamStep(logprobs, order, tokens, self.stop_ids, request.logprobs))
            if step == 0:
                self.first_token = self.clock.now()
            self.steps = step + 1
            if searcher.done or step == request.max_new_tokens - 1:
                break
            if not np.array_equal(order, identity):
                stepper.reorder(order)
            alive = np.repeat(~searcher.rows_done, beams)
            logits = stepper.next(tokens, alive)
        for row, best in enumerate(searcher.best_hypotheses()):
            self.tokens[row] = best.tokens
            ends = bool(best.tokens) and best.tokens[-1] in self.stop_ids
            self.reasons[row] = "eos" if ends else "length"
            if self.logprobs is not None:
                self.logprobs[row] = [
                    history[step].entry(origin, token)
                    for step, (origin, token) in enumerate(zip(best.rows, best.tokens, strict=True))
                ]
        yield from ()

    def result(self) -> GenerationResult:
        total = self.clock.now()
        texts = []
        for row, tokens in enumerate(self.tokens):
            if self.texts is not None:
                self.texts[row].flush()
                texts.append(self.texts[row].text)
                continue
            text = self.model.decode(tokens)
            if self.request.stop:  # beam search: cut the best hypothesis' text
                cut = [i for i in (text.find(s) for s in self.request.stop) if i >= 0]
                if cut:
                    text, self.reasons[row] = text[: min(cut)], "stop"
            texts.append(text)
        later = self.steps - 1
        timing = Timing(
            prefill_ms=1000 * self.first_token,
            per_token_ms=1000 * (total - self.first_token) / later if later > 0 else 0.0,
            total_ms=1000 * total,
            steps=self.steps,
        )
        return GenerationResult(
            texts=texts,
            tokens=self.tokens,
            finish_reasons=self.reasons,
            prompt_tokens=self.request.prompts,
            timing=timing,
            logprobs=self.logprobs,
        )


class _BeamStep:
    """What one beam search step keeps for logprobs: the top alternatives of every model row
    and the log-probabilities of the tokens a hypothesis can have taken there (the live beams'
    new tokens and the stop tokens), so that the best hypothesis' tokens find theirs by the
    model row they came from, whatever the reorders since."""

    def __init__(
        self,
        logprobs: np.ndarray,
        order: np.ndarray,
        tokens: np.ndarray,
        stop_ids: frozenset[int],
        top: int,
    ) -> None:
        self.values: dict[tuple[int, int], float] = {}
        for origin, token in zip(order.tolist(), tokens.tolist(), strict=True):
            self.values[(origin, token)] = float(logprobs[origin, token])
        for stop in stop_ids:
            if stop < logprobs.shape[1]:
                for origin, value in enumerate(logprobs[:, stop].tolist()):
                    self.values[(origin, stop)] = float(value)
        self.top: list[tuple[tuple[int, float], ...]] = [()] * len(logprobs)
        count = min(top, logprobs.shape[1])
        if count > 0:  # as token_logprobs orders them: most likely first, then by lower id
            part = np.argpartition(-logprobs, count - 1, axis=-1)[:, :count]
            for row, ids in enumerate(part):
                ids = ids[np.lexsort((ids, -logprobs[row, ids]))]
                self.top[row] = tuple((int(i), float(logprobs[row, i])) for i in ids)

    def entry(self, origin: int, token: int) -> TokenLogprob:
        return TokenLogprob(token, self.values[(origin, token)], self.top[origin])


# ----------------------------------------------------------------------------------------
# Each row's text

# Decoding bytes that do not yet form a whole character gives U+FFFD.
_INCOMPLETE = "\ufffd"


class RowText:
    """The text of one row, decoded incrementally; trims at the first stop string.

    ``push`` a token, then ``release`` what may be shown so far. ``decode`` is the tokenizer's
    decode for a list of ids; ``hidden`` ids (pad, bos, eos) never reach it."""

    def __init__(
        self, decode: Callable[[list[int]], str], stop: Sequence[str], hidden: frozenset[int]
    ) -> None:
        self._decode = decode
        self._stop = tuple(stop)
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self._hidden = hidden
        self._ids: list[int] = []
        self._prefix_offset = 0  # ids before it are decoded into ``text`` for good
        self._read_offset = 0  # ids before it are decoded into ``text``
        self.text = ""
        self._released = 0
        self.stopped = False

    def push(self, token: int) -> None:
        """Add a token; sets ``stopped`` (and trims ``text``) when a stop string appears."""
        if token in self._hidden or self.stopped:
            return
        self._ids.append(token)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith(_INCOMPLETE):
            self._append(full[len(prefix) :])
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)

    def flush(self) -> None:
        """Decode what is left at the end (incomplete characters come out as U+FFFD)."""
        if self.stopped or self._read_offset == len(self._ids):
            return
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        self._append(full[len(prefix) :])
        self._prefix_offset = self._read_offset = len(self._ids)

    def _append(self, delta: str) -> None:
        start = max(0, len(self.text) - self._longest_stop + 1)
        self.text += delta
        if not self._stop:
            return
        found = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
        if found:
            self.text = self.text[: min(found)]
            self.stopped = True

    def release(self, final: bool) -> str:
        """The text not released before that is safe to show: all of it when ``final``, else
        all but a tail that could be the beginning of a stop string."""
        end = len(self.text)
        if not final and self._stop:
            for size in range(min(self._longest_stop - 1, end - self._released), 0, -1):
                tail = self.text[end - size :]
                if any(s.startswith(tail) for s in self._stop):
                    end -= size
                    break
        delta = self.text[self._released : end]
        self._released = end
        return delta
