"""The runnable decoding chain: SamplerChain, its request state and its steps' contract.

The configuration types live in :mod:`runtime.decoding`; their behaviour in
:mod:`runtime.processors` (logits processors) and :mod:`runtime.selectors` (greedy, sample),
and this module compiles a chain of them. It follows Hugging Face's ``logits_process.py`` (one
method per processor, applied in order) and llama.cpp's sampler chain (the selector ends the
chain by construction).

How a generation loop uses it (one ``SamplerChain`` per chain, one request state per call)::

    chain = SamplerChain("temperature=0.7,top_k=50,top_p=0.9,sample")  # immutable, thread-safe
    state = chain.start(prompts, vocab_size, seed=seed, pad_id=pad_id)  # prompts unpadded
    for _ in range(max_new_tokens):
        logits = run_the_model(...)[:, -1, :]        # [batch, vocab], the last position
        tokens = chain.select(logits, state)         # [batch] int64; finished rows get pad_id
        state.append(tokens)                         # accepts tokens of unfinished rows
        state.finish(tokens == eos_id)               # and rows that hit a stop string
        if state.finished.all():
            break

``SamplerChain.select`` checks the logits against the state (shape, dtype, NaN, +inf, rows
with no token left) and raises :class:`DecodingError` naming the row. It may modify ``logits``
in place when they are a C-contiguous float32 array (the usual case, for speed); pass a copy
to keep them.

Processors see float32 ``[batch, vocab]`` logits; a removed token is ``-inf``. Rows that are
already finished are skipped by the per-row processors and get ``pad_id`` from the selector.
Everything that changes during a request is in the request's :class:`DecodingState`: what
every step reads (the sequences, finished rows, the random generator, scratch buffers) and
the state each stateful processor made for the request with its ``start`` and keeps up to
date with ``accept`` (token counts, n-gram indexes), as llama.cpp's samplers own theirs. So
one ``SamplerChain`` serves concurrent requests, and a new stateful processor (a grammar, a
penalty) is one class and its state, with no shared state class to edit.

Built-in steps find their implementation in one table here (``_IMPLEMENTATIONS``); plugin
steps (see :mod:`runtime.decoding`, "Plugins") are their own implementation.

Structured output: ``SamplerChain(chain, constraint=model.constraint(json_schema=...))`` runs
the constraint (a :class:`runtime.structured.Constraint`, a stateful processor of this
protocol) FIRST, before temperature, top-k and the rest, so that every filter and the selector
see only the tokens the grammar allows. A chain with a constraint is made per request (the
constraint is the request's); the constraint itself is shared and holds no request's state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from runtime.decoding import (
    BeamSearch,
    DecodingChain,
    DecodingError,
    FrequencyPenalty,
    Greedy,
    MinP,
    NoRepeatNgram,
    PresencePenalty,
    RepetitionPenalty,
    Sample,
    Temperature,
    TopK,
    TopP,
    Typical,
    plugin_shape_problem,
    step_text,
)
from runtime.processors import (
    FrequencyPenaltyProcessor,
    MinPProcessor,
    NoRepeatNgramProcessor,
    PresencePenaltyProcessor,
    RepetitionPenaltyProcessor,
    TemperatureProcessor,
    TopKProcessor,
    TopPProcessor,
    TypicalProcessor,
)
from runtime.selectors import GreedySelector, SampleSelector

__all__ = [
    "DecodingError",
    "DecodingState",
    "LogitsProcessor",
    "ProcessorState",
    "SamplerChain",
    "TokenSelector",
    "implementation",
]


# ----------------------------------------------------------------------------------------
# The request's state


class DecodingState:
    """One request of a chain: what every step may read, and the states its processors own.

    The generation loop creates one per request (or :meth:`SamplerChain.start` does). It
    holds what is common to all steps: the rows' sequences (prompt and accepted tokens),
    which rows are finished, the request's seeded random generator and scratch buffers. What
    a stateful processor keeps (token counts, an n-gram index, a grammar's position) is that
    processor's own state, made by its ``start(request)`` the first time the processor runs on
    this request and updated only through its ``accept``; this class knows no processor's
    internals (llama.cpp's samplers: ``accept`` updates, ``apply`` reads, ``reset`` clears).

    Args:
        prompts: one sequence of token ids per batch row, without padding (for an
            encoder-decoder model: the decoder's prefix, e.g. ``[decoder_start]``). Repetition
            penalty and no-repeat-ngram look at prompt and generated tokens; presence and
            frequency penalties at generated tokens only (as OpenAI's API and vLLM do).
        vocab_size: the width of the logits, which must be ``[len(prompts), vocab_size]``.
        seed: seeds the request's one ``np.random.Generator(PCG64(seed))``; the same seed and
            the same logits give the same tokens. None draws fresh entropy.
        pad_id: the token the selector returns for finished rows.
    """

    def __init__(
        self,
        prompts: Sequence[Sequence[int] | np.ndarray],
        vocab_size: int,
        *,
        seed: int | None = None,
        pad_id: int = 0,
    ) -> None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer):
            raise DecodingError(f"vocab_size must be an integer, got {vocab_size!r}")
        if vocab_size < 1:
            raise DecodingError(f"vocab_size must be >= 1, got {vocab_size}")
        if len(prompts) == 0:
            raise DecodingError("a decoding state needs at least one prompt (batch row)")
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0
        ):
            raise DecodingError(f"seed must be an integer >= 0 or None, got {seed!r}")
        if not 0 <= pad_id < vocab_size:
            raise DecodingError(f"pad_id {pad_id} is outside the vocabulary [0, {vocab_size})")
        self.batch_size = len(prompts)
        self.vocab_size = int(vocab_size)
        self.pad_id = int(pad_id)
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.finished = np.zeros(self.batch_size, dtype=bool)
        self.steps = 0
        self._sequences: list[list[int]] = []
        self._prompt_lengths: list[int] = []
        for row, prompt in enumerate(prompts):
            ids = np.asarray(prompt)
            if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
                raise DecodingError(f"prompt {row} must be a 1-D sequence of integer token ids")
            if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
                bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
                raise DecodingError(
                    f"prompt {row} has token id {bad} outside the vocabulary [0, {vocab_size})"
                )
            self._sequences.append(ids.astype(np.int64).tolist())
            self._prompt_lengths.append(ids.size)
        # id(processor) -> (processor, its state or None); the processor is kept so that its
        # id is not reused while this request lives.
        self._states: dict[int, tuple[LogitsProcessor, ProcessorState | None]] = {}
        self._scratch: dict[tuple[str, str], np.ndarray] = {}

    # -- what the generation loop calls

    def append(self, tokens: np.ndarray) -> None:
        """Accept one new token per row (``[batch]`` integers); finished rows are ignored.

        Records the tokens and hands them to every processor state of this request
        (``accept(rows, tokens)``, the unfinished rows and their tokens)."""
        tokens = np.asarray(tokens)
        if tokens.shape != (self.batch_size,) or tokens.dtype.kind not in "iu":
            raise DecodingError(
                f"append takes one integer token per row, shape ({self.batch_size},); "
                f"got shape {tokens.shape} of {tokens.dtype}"
            )
        rows = np.flatnonzero(~self.finished)
        new = tokens[rows].astype(np.int64)
        if new.size and (new.min() < 0 or new.max() >= self.vocab_size):
            row = int(rows[(new < 0) | (new >= self.vocab_size)][0])
            raise DecodingError(
                f"row {row}: token id {int(tokens[row])} is outside the vocabulary "
                f"[0, {self.vocab_size})"
            )
        for row, token in zip(rows.tolist(), new.tolist(), strict=True):
            self._sequences[row].append(token)
        for _, state in self._states.values():
            if state is not None:
                state.accept(rows, new)
        self.steps += 1

    def finish(self, rows: np.ndarray) -> None:
        """Mark rows finished: a ``[batch]`` bool mask or an array of row indices."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (self.batch_size,):
                raise DecodingError(f"finish takes a mask of shape ({self.batch_size},)")
            self.finished |= rows
        else:
            self.finished[rows] = True

    def reorder(self, rows: np.ndarray) -> None:
        """Make row ``i`` the old row ``rows[i]`` (a row may be taken twice, as a beam search
        does with its cache): the sequences, the finished flags and every processor's state
        (``reorder(rows)``)."""
        rows = np.asarray(rows)
        if rows.shape != (self.batch_size,) or rows.dtype.kind not in "iu":
            raise DecodingError(
                f"reorder takes one integer row index per row, shape ({self.batch_size},); "
                f"got shape {rows.shape} of {rows.dtype}"
            )
        if rows.size and (rows.min() < 0 or rows.max() >= self.batch_size):
            raise DecodingError(f"reorder's row indices must be in [0, {self.batch_size})")
        order = rows.astype(np.int64).tolist()
        self._sequences = [list(self._sequences[row]) for row in order]
        self._prompt_lengths = [self._prompt_lengths[row] for row in order]
        self.finished = self.finished[rows]
        for _, state in self._states.values():
            if state is not None:
                state.reorder(rows)

    # -- what processors read

    def sequence(self, row: int) -> np.ndarray:
        """Row ``row``'s prompt followed by its generated tokens (int64)."""
        return np.asarray(self._sequences[row], dtype=np.int64)

    def generated(self, row: int) -> np.ndarray:
        """The tokens generated so far for row ``row`` (int64)."""
        return np.asarray(self._sequences[row][self._prompt_lengths[row] :], dtype=np.int64)

    def state_of(self, processor: LogitsProcessor) -> ProcessorState | None:
        """``processor``'s state for this request: made by ``processor.start(self)`` on first
        use (from the sequences so far), then kept up to date by :meth:`append`."""
        entry = self._states.get(id(processor))
        if entry is None:
            state = processor.start(self)
            if state is not None and not all(
                callable(getattr(state, method, None)) for method in ("accept", "reorder")
            ):
                raise DecodingError(
                    f"{processor!r}.start returned {type(state).__name__}, not a processor "
                    "state: return None, or an object with accept(rows, tokens) and "
                    "reorder(rows)"
                )
            entry = self._states[id(processor)] = (processor, state)
        return entry[1]

    def scratch(self, name: str, dtype: type | np.dtype = np.float64) -> np.ndarray:
        """A ``[vocab]`` work buffer of this request, reused across steps to avoid allocating
        (and page-faulting) vocabulary-sized arrays on every step. Its contents are undefined
        on entry; use it within one ``process``/``select`` call only."""
        key = (name, np.dtype(dtype).str)
        buffer = self._scratch.get(key)
        if buffer is None:
            buffer = self._scratch[key] = np.empty(self.vocab_size, dtype=dtype)
        return buffer


# ----------------------------------------------------------------------------------------
# The contract and the registry


class ProcessorState(Protocol):
    """What a stateful processor keeps about one request, for its batch rows.

    ``accept`` receives the unfinished rows' indices and the tokens they accepted (both int64
    arrays of one length); it is the only way the state learns of new tokens. ``reorder``
    makes row ``i`` the old row ``rows[i]`` (``[batch]`` int64; a row may be taken twice).
    """

    def accept(self, rows: np.ndarray, tokens: np.ndarray) -> None: ...

    def reorder(self, rows: np.ndarray) -> None: ...


class LogitsProcessor(Protocol):
    """Changes logits; applied in the order the chain lists them.

    ``start(request)`` makes the processor's state for a request's batch (a
    :class:`ProcessorState`, built from ``request.sequence(row)`` / ``request.generated(row)``),
    or returns None when the processor keeps none. It is called once per request, the first
    time the processor runs on it; from then on the state learns new tokens through its
    ``accept`` alone. Starting again gives a fresh state.

    ``process`` receives checked, C-contiguous float32 logits ``[batch, vocab]`` (no NaN, no
    +inf, at least one finite entry in every unfinished row), the request and the state
    ``start`` made, and returns logits of the same shape and dtype, usually the same array
    modified in place. A removed token is ``-inf``; a filter keeps at least one token per
    row. The processor itself must not change, so one instance serves concurrent requests.
    """

    def start(self, request: DecodingState) -> ProcessorState | None: ...

    def process(
        self, logits: np.ndarray, request: DecodingState, state: ProcessorState | None
    ) -> np.ndarray: ...


class TokenSelector(Protocol):
    """Picks one token per row from processed logits; ends the chain.

    ``select`` receives what the processors returned and returns ``[batch]`` int64 token
    ids; the chain replaces the tokens of finished rows with ``state.pad_id``.
    """

    def select(self, logits: np.ndarray, state: DecodingState) -> np.ndarray: ...


# The behaviour of each built-in step, built from its configuration (a plugin step is its own
# behaviour). Typed Any: a processor's ``process`` takes its own state type, narrower than the
# protocol's ProcessorState | None.
_IMPLEMENTATIONS: dict[type, Callable[[Any], Any]] = {
    Temperature: TemperatureProcessor,
    TopK: TopKProcessor,
    TopP: TopPProcessor,
    MinP: MinPProcessor,
    Typical: TypicalProcessor,
    RepetitionPenalty: RepetitionPenaltyProcessor,
    PresencePenalty: PresencePenaltyProcessor,
    FrequencyPenalty: FrequencyPenaltyProcessor,
    NoRepeatNgram: NoRepeatNgramProcessor,
    Greedy: GreedySelector,
    Sample: SampleSelector,
}


def implementation(step: Any) -> LogitsProcessor | TokenSelector:
    """The processor or selector for a step's configuration (built-in or plugin)."""
    build = _IMPLEMENTATIONS.get(type(step))
    if build is not None:
        return build(step)
    problem = plugin_shape_problem(step)
    if problem:
        raise DecodingError(f"decoding step {step!r} cannot be used: {problem}")
    if callable(getattr(step, "process", None)) or callable(getattr(step, "select", None)):
        return step  # a plugin step is its own behaviour
    raise DecodingError(f"decoding step {step!r} has no implementation")


# ----------------------------------------------------------------------------------------
# The compiled chain


class SamplerChain:
    """A decoding chain compiled into its processors and its selector: the runnable chain.

    Build it once per chain (from a :class:`DecodingChain`, its compact string
    ``"temperature=0.7,top_k=50,sample"``, or a sequence of steps) and share it: it holds no
    per-request data (that is in the request's :class:`DecodingState`, with each processor's
    own state). Beam search is not a SamplerChain, because it reorders the cache: use
    :class:`runtime.beam_search.BeamSearcher`.
    """

    def __init__(self, chain: DecodingChain | str | Sequence[Any], constraint: Any = None) -> None:
        chain = DecodingChain.coerce(chain)
        if isinstance(chain.steps[0], BeamSearch):
            raise DecodingError(
                "beam_search reorders the KV cache, so it is a search, not a SamplerChain; "
                "use runtime.beam_search.BeamSearcher.from_config"
            )
        self.chain = chain
        self.constraint = constraint
        *processors, selector = (implementation(step) for step in chain.steps)
        if constraint is not None:
            if not all(callable(getattr(constraint, m, None)) for m in ("start", "process")):
                raise DecodingError(
                    f"constraint {constraint!r} is not a logits processor (start and process); "
                    "make one with model.constraint(json_schema=..., regex=... or grammar=...)"
                )
            processors.insert(0, constraint)
        self.processors: tuple[LogitsProcessor, ...] = tuple(processors)  # type: ignore[arg-type]
        self.selector: TokenSelector = selector  # type: ignore[assignment]
        # what an error after each processor names it by
        self._steps: tuple[Any, ...] = (
            *(() if constraint is None else (constraint,)),
            *chain.steps[:-1],
        )

    def start(
        self,
        prompts: Sequence[Sequence[int] | np.ndarray],
        vocab_size: int,
        *,
        seed: int | None = None,
        pad_id: int = 0,
    ) -> DecodingState:
        """A fresh request of this chain (see :class:`DecodingState` for the arguments), with
        every processor's state started from the prompts."""
        request = DecodingState(prompts, vocab_size, seed=seed, pad_id=pad_id)
        for processor in self.processors:
            request.state_of(processor)
        return request

    def process(self, logits: np.ndarray, state: DecodingState) -> np.ndarray:
        """Check ``logits`` ``[batch, vocab]`` against ``state`` and apply the processors in
        order; returns float32 logits (``logits`` itself, modified, when it was C-contiguous
        float32). Raises DecodingError for a shape or dtype mismatch, or a row (not finished)
        with NaN, +inf or no finite logit, naming the row."""
        logits = _checked(logits, state)
        _check_rows(logits, state, None)
        for step, processor in zip(self._steps, self.processors, strict=True):
            logits = processor.process(logits, state, state.state_of(processor))
            # After each step, so that the next one sees valid rows and the error names it.
            _check_rows(logits, state, step)
        return logits

    def select(self, logits: np.ndarray, state: DecodingState) -> np.ndarray:
        """The next token of every row: ``[batch]`` int64, ``state.pad_id`` for finished rows.

        Does not accept the tokens: call ``state.append(tokens)`` next.
        """
        tokens = np.asarray(self.selector.select(self.process(logits, state), state))
        if tokens.shape != (state.batch_size,):
            raise DecodingError(
                f"the selector {self.chain.steps[-1]!r} returned shape {tokens.shape}, "
                f"expected ({state.batch_size},)"
            )
        tokens = tokens.astype(np.int64, copy=False)
        tokens[state.finished] = state.pad_id
        return tokens

    def __repr__(self) -> str:
        if self.constraint is not None:
            return f"SamplerChain({str(self.chain)!r}, constraint={self.constraint!r})"
        return f"SamplerChain({str(self.chain)!r})"


def _checked(logits: np.ndarray, state: DecodingState) -> np.ndarray:
    if not isinstance(logits, np.ndarray):
        raise DecodingError(f"logits must be a numpy array, got {type(logits).__name__}")
    expected = (state.batch_size, state.vocab_size)
    if logits.shape != expected:
        hint = "; pass the last position's logits, logits[:, -1, :]" if logits.ndim == 3 else ""
        raise DecodingError(
            f"logits have shape {logits.shape}, but the decoding state has batch "
            f"{state.batch_size} and vocabulary {state.vocab_size}: expected {expected}{hint}"
        )
    if logits.dtype.kind != "f":
        raise DecodingError(f"logits must be floating point, got {logits.dtype}")
    return np.ascontiguousarray(logits, dtype=np.float32)


def _check_rows(logits: np.ndarray, state: DecodingState, step: Any) -> None:
    """Raise for unfinished rows with NaN, +inf or no finite logit: in the model's logits
    (``step`` None) or after a processor ``step``."""
    peaks = logits.max(axis=1)  # NaN propagates through max
    bad = ~state.finished & ~np.isfinite(peaks)
    if not bad.any():
        return
    what = "the model's logits" if step is None else f"the logits after '{step_text(step)}'"
    problems = []
    for row in np.flatnonzero(bad).tolist():
        if np.isnan(peaks[row]):
            problems.append(f"row {row} contains NaN")
        elif peaks[row] > 0:
            problems.append(f"row {row} contains +inf")
        else:
            problems.append(f"row {row} has no token left (every logit is -inf)")
    raise DecodingError(f"{what}: {'; '.join(problems)}")
