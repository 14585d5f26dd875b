"""Decoding strategies in numpy: logits processors, selectors and the compiled chain.

The configuration types live in :mod:`runtime.decoding`; this module gives them behaviour. It
follows Hugging Face's ``logits_process.py`` (one method per processor, applied in order) and
llama.cpp's sampler chain (the selector ends the chain by construction).

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

Built-in steps register their implementation with ``@_implements(ConfigType)``; plugin steps
(see :mod:`runtime.decoding`, "Plugins") are their own implementation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

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

__all__ = [
    "DecodingError",
    "DecodingState",
    "LogitsProcessor",
    "ProcessorState",
    "SamplerChain",
    "TokenSelector",
    "implementation",
    "log_softmax",
    "softmax",
]

NEG_INF = np.float32(-np.inf)
# Filters and the sampler work on the allowed tokens alone when they are at most 1/8 of the
# vocabulary (after top_k, say), and on the whole row otherwise.
_SPARSE_FRACTION = 8
# Nucleus and typical filters sort at most about this many tokens.
_EXACT_LIMIT = 2048


# ----------------------------------------------------------------------------------------
# The request's state


class _Pairs:
    """A growing list of (row, token) pairs, kept as two int64 arrays (amortized O(1) add)."""

    def __init__(self) -> None:
        self._rows = np.empty(64, dtype=np.int64)
        self._tokens = np.empty(64, dtype=np.int64)
        self._size = 0

    def add(self, rows: np.ndarray, tokens: np.ndarray) -> None:
        end = self._size + len(rows)
        if end > len(self._rows):
            capacity = max(end, 2 * len(self._rows))
            self._rows = np.resize(self._rows, capacity)
            self._tokens = np.resize(self._tokens, capacity)
        self._rows[self._size : end] = rows
        self._tokens[self._size : end] = tokens
        self._size = end

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        return self._rows[: self._size], self._tokens[: self._size]


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


_IMPLEMENTATIONS: dict[type, Callable[[Any], LogitsProcessor | TokenSelector]] = {}
_T = TypeVar("_T")


def _implements(config_type: type) -> Callable[[_T], _T]:
    """Register the decorated class (constructed from a config instance) as the behaviour of
    the built-in step ``config_type``."""

    def register(cls: _T) -> _T:
        _IMPLEMENTATIONS[config_type] = cls  # type: ignore[assignment]
        return cls

    return register


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
# Helpers


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities along the last axis, in float64 (``-inf`` logits get probability 0)."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    # Clamped: numpy's float64 exp is ~10x slower where it underflows (see _weights).
    weights = np.exp(np.maximum(shifted, -700.0)) * (shifted > -np.inf)
    return weights / weights.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities along the last axis, in float64 (what beam search steps take)."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    normalizer = np.exp(np.maximum(shifted, -700.0)).sum(axis=-1, keepdims=True)
    return shifted - np.log(normalizer)


def _active_rows(state: DecodingState) -> list[int]:
    return np.flatnonzero(~state.finished).tolist()


def _sparse_support(row: np.ndarray, state: DecodingState) -> np.ndarray | None:
    """The ids of the row's finite logits when they are few (say after top_k), else None."""
    finite = np.greater(row, NEG_INF, out=state.scratch("finite", bool))
    if np.count_nonzero(finite) * _SPARSE_FRACTION > row.size:
        return None
    return np.flatnonzero(finite)


def _keep(row: np.ndarray, keep: np.ndarray, state: DecodingState) -> None:
    """Set the logits of ``row`` where the bool mask ``keep`` is False to -inf, in place.

    Few kept tokens: fill and scatter them back. Many: clamp with a +-inf bound, because a
    masked write is branchy and costs ~10x more on a random half-kept mask."""
    if np.count_nonzero(keep) * _SPARSE_FRACTION <= row.size:
        indices = np.flatnonzero(keep)
        kept = row[indices]
        row.fill(NEG_INF)
        row[indices] = kept
    else:
        bound = np.subtract(keep, np.float32(0.5), out=state.scratch("bound", np.float32))
        bound *= np.float32(np.inf)  # +inf where kept, -inf where not
        np.minimum(row, bound, out=row)


def _weights(row: np.ndarray, state: DecodingState) -> np.ndarray:
    """``exp(row - max(row))`` in float64, the unnormalized probabilities; exactly 0 for
    removed (-inf) tokens. numpy's float64 exp is ~10x slower on inputs whose result
    underflows, -inf included, so inputs are clamped at -700 (e^-700 ~ 1e-304, no token's
    chance) and removed tokens are zeroed afterwards."""
    weights = np.subtract(row, row.max(), out=state.scratch("weights"), dtype=np.float64)
    np.maximum(weights, -700.0, out=weights)
    np.exp(weights, out=weights)
    weights *= np.greater(row, NEG_INF, out=state.scratch("finite", bool))
    return weights


def _mass_up_to(
    key: np.ndarray, weights: np.ndarray, tau: float, state: DecodingState
) -> tuple[float, int]:
    """The total weight and the number of tokens with ``key <= tau``; branch-free when many."""
    below = np.less_equal(key, tau, out=state.scratch("below", bool))
    count = int(np.count_nonzero(below))
    if count * _SPARSE_FRACTION <= key.size:
        return float(weights[np.flatnonzero(below)].sum(dtype=np.float64)), count
    masked = np.multiply(weights, below, out=state.scratch("masked", weights.dtype))
    return float(masked.sum()), count


def _sampled_probes(
    key: np.ndarray,
    weights: np.ndarray,
    low: float,
    tau: float,
    low_mass: float,
    mass: float,
    target: float,
) -> tuple[float, float] | None:
    """Two keys that likely bracket where the mass below reaches ``target``, about
    _EXACT_LIMIT / 4 tokens either side of it, estimated from every n-th token's key and
    weight (scaled to the exact masses at ``low`` and ``tau``); None if the sample is thin."""
    stride = max(1, key.size // _EXACT_LIMIT)
    keys, masses = key[::stride], weights[::stride]
    inside = (keys > low) & (keys <= tau)
    keys, masses = keys[inside], masses[inside]
    if len(keys) < 16:
        return None
    order = np.argsort(keys)
    keys = keys[order]
    cumulative = np.cumsum(masses[order], dtype=np.float64)
    estimate = low_mass + cumulative * ((mass - low_mass) / cumulative[-1])
    crossing = int(np.searchsorted(estimate, target))
    reach = max(1, _EXACT_LIMIT // (4 * stride))
    below, above = crossing - reach, crossing + reach
    return (
        float(keys[below]) if below >= 0 else low,
        float(keys[above]) if above < len(keys) else tau,
    )


def _keep_minimal_mass(
    row: np.ndarray, key: np.ndarray, weights: np.ndarray, target: float, state: DecodingState
) -> None:
    """Keep in ``row`` the fewest tokens, taken in ascending ``key`` order (ties: lowest id
    first), whose ``weights`` sum reaches ``target`` (all with a finite key if none do).

    ``key`` is in nats (minus the logit, or the distance from the entropy). Rather than sort
    the vocabulary, find a threshold ``tau`` whose mass ``key <= tau`` reaches the target
    (doubling its distance from the smallest key, from 4 nats), narrow the interval
    (``low``, ``tau``] by interpolation while it holds more than _EXACT_LIMIT tokens, and sort
    only those: a few O(vocab) passes however flat the distribution, two for a peaked one.
    """
    smallest = float(key.min())
    low, low_mass, low_count = smallest - 1.0, 0.0, 0  # no token has a key <= low
    width = 4.0  # nats: e^-4, 2% of the most likely token's probability
    while True:
        tau = smallest + width
        mass, count = _mass_up_to(key, weights, tau, state)
        if mass >= target:
            break
        if width > 256.0:  # beyond float32's exp: the target is out of reach by rounding
            _keep(row, np.less(key, np.inf, out=state.scratch("below", bool)), state)
            return
        low, low_mass, low_count = tau, mass, count
        width *= 2.0
    bisect = False
    for _ in range(32):
        if count - low_count <= _EXACT_LIMIT or mass <= low_mass:
            break
        # Guess where the mass reaches the target and probe either side of the guess, about
        # _EXACT_LIMIT / 4 tokens away, to bracket it tightly. Among many tokens, guess from
        # a strided sample of the vocabulary; else by linear interpolation, or by bisection
        # after a round that did not halve the interval.
        span = tau - low
        probes = None
        if count - low_count > 4 * _EXACT_LIMIT:
            probes = _sampled_probes(key, weights, low, tau, low_mass, mass, target)
        if probes is None:
            fraction = 0.5 if bisect else (target - low_mass) / (mass - low_mass)
            guess = low + span * min(max(fraction, 0.1), 0.9)
            half = span * (_EXACT_LIMIT / 4) / (count - low_count)
            probes = (guess - half, guess + half)
        for probe in probes:
            if not low < probe < tau:
                continue
            probe_mass, probe_count = _mass_up_to(key, weights, probe, state)
            if probe_mass >= target:
                tau, mass, count = probe, probe_mass, probe_count
            else:
                low, low_mass, low_count = probe, probe_mass, probe_count
        bisect = tau - low > span / 2
    # The boundary lies among the tokens with low < key <= tau: sort them by key (numpy's
    # stable argsort is ~5x slower on floats, so ties are resolved by id separately). When
    # few tokens reach tau at all (a peaked distribution), take them all: then the kept ones
    # are known by index and need no pass over the vocabulary.
    below = np.less_equal(key, tau, out=state.scratch("below", bool))
    few = count <= _EXACT_LIMIT
    if few:
        low_mass = 0.0
    else:
        below &= key > low
    candidates = np.flatnonzero(below)  # in ascending id order
    keys = key[candidates]
    order = np.argsort(keys)
    cumulative = low_mass + np.cumsum(weights[candidates[order]], dtype=np.float64)
    end = min(int(np.searchsorted(cumulative, target, side="left")), len(order) - 1)
    boundary = keys[order[end]]
    if few:
        kept = candidates[keys <= boundary]
        values = row[kept]
        row.fill(NEG_INF)
        row[kept] = values
    else:
        _keep(row, np.less_equal(key, boundary, out=below), state)
    # Of the tokens tied at the boundary key, the lowest ids join until the target is met.
    tied = candidates[keys == boundary]
    if len(tied) > 1:
        first = int(np.searchsorted(keys[order], boundary, side="left"))
        mass_below = cumulative[first - 1] if first else low_mass
        joined = mass_below + np.cumsum(weights[tied], dtype=np.float64)
        take = int(np.searchsorted(joined, target, side="left")) + 1
        row[tied[take:]] = NEG_INF


# ----------------------------------------------------------------------------------------
# Processors


class _Stateless:
    """A processor that keeps nothing about a request."""

    def start(self, request: DecodingState) -> None:
        return None


@_implements(Temperature)
class TemperatureProcessor(_Stateless):
    """Divide logits by the temperature (Ackley et al. 1985; Hinton et al. 2015).

    No-op: 1.0. Below 1 sharpens, above 1 flattens; 0 keeps only the most likely token (the
    lowest id among ties), so any selector after it is greedy.
    """

    def __init__(self, config: Temperature) -> None:
        self.value = config.value
        # A temperature below float32's smallest number must not round to a zero divisor.
        self.divisor = max(np.float32(config.value), np.finfo(np.float32).smallest_subnormal)

    def process(self, logits: np.ndarray, request: DecodingState, state: None) -> np.ndarray:
        if self.value == 1.0:
            return logits
        if self.value == 0.0:
            rows = np.arange(len(logits))
            best = logits.argmax(axis=1)
            kept = logits[rows, best]
            logits.fill(NEG_INF)
            logits[rows, best] = kept
            return logits
        if self.value < 1.0:
            # Shift the maximum to 0 first, so that dividing by a small temperature cannot
            # overflow to +inf (softmax is shift-invariant); the others may go to -inf.
            logits -= logits.max(axis=1, keepdims=True)
        with np.errstate(over="ignore"):
            logits /= self.divisor
        return logits


@_implements(TopK)
class TopKProcessor(_Stateless):
    """Keep the ``k`` most likely tokens (Fan et al. 2018, "Hierarchical Neural Story
    Generation"); ties at the k-th place go to the lowest ids, so exactly ``k`` remain.

    No-op: 0 (and any ``k`` >= the vocabulary). No sort: the k-th largest logit comes from a
    partition of the few tokens at least as large as the k-th largest of 16-row column maxima
    (k distinct tokens reach that bound, so the top k are among them), or of the whole row
    when k is large.
    """

    def __init__(self, config: TopK) -> None:
        self.k = config.k

    def process(self, logits: np.ndarray, request: DecodingState, state: None) -> np.ndarray:
        size = logits.shape[1]
        if self.k == 0 or self.k >= size:
            return logits
        columns = size // 16
        for index in _active_rows(request):
            row = logits[index]
            if 4 * self.k <= columns:
                maxima = np.max(row[: 16 * columns].reshape(16, columns), axis=0)
                maxima.partition(columns - self.k)
                candidates = row[row >= maxima[columns - self.k]]
            else:
                candidates = request.scratch("top_k", np.float32)
                np.copyto(candidates, row)
            candidates.partition(len(candidates) - self.k)
            kth = candidates[len(candidates) - self.k]  # the k-th largest logit
            if kth == NEG_INF:
                continue  # k or fewer tokens are left already
            keep = np.greater_equal(row, kth, out=request.scratch("keep", bool))
            surplus = np.count_nonzero(keep) - self.k  # tokens tied with the k-th one
            if surplus:
                tied = np.flatnonzero(row == kth)
                keep[tied[len(tied) - surplus :]] = False  # ties go to the lowest ids
            _keep(row, keep, request)
        return logits


@_implements(TopP)
class TopPProcessor(_Stateless):
    """Nucleus filtering (Holtzman et al. 2020, "The Curious Case of Neural Text
    Degeneration"): keep the smallest set of most likely tokens whose probability reaches
    ``p`` (ties at the boundary go to the lowest ids); always at least one token.

    No-op: 1.0. Never sorts the vocabulary: see ``_keep_minimal_mass``.
    """

    def __init__(self, config: TopP) -> None:
        self.p = config.p

    def process(self, logits: np.ndarray, request: DecodingState, state: None) -> np.ndarray:
        if self.p >= 1.0:
            return logits
        for index in _active_rows(request):
            row = logits[index]
            support = _sparse_support(row, request)
            if support is not None:
                values = row[support].astype(np.float64)
                weights = np.exp(values - values.max())
                order = np.lexsort((support, -weights))  # descending probability, then id
                cumulative = np.cumsum(weights[order])
                end = int(np.searchsorted(cumulative, self.p * weights.sum(), side="left"))
                row[support[order[end + 1 :]]] = NEG_INF
                continue
            # Over the whole vocabulary, float32 is enough to find the boundary (as in HF):
            # ordering by -logit is exact, the masses are accurate to ~1e-7.
            key = np.negative(row, out=request.scratch("key", np.float32))
            weights = np.subtract(row, row.max(), out=request.scratch("weights", np.float32))
            np.exp(weights, out=weights)
            target = self.p * float(weights.sum())
            _keep_minimal_mass(row, key, weights, target, request)
        return logits


@_implements(MinP)
class MinPProcessor(_Stateless):
    """Keep the tokens at least ``p`` times as likely as the most likely one (Nguyen et al.
    2024, "Turning Up the Heat: Min-p Sampling"), i.e. logit >= max logit + log(p).

    No-op: 0.0. 1.0 keeps only the most likely token(s).
    """

    def __init__(self, config: MinP) -> None:
        self.log_p = math.log(config.p) if config.p > 0 else -math.inf

    def process(self, logits: np.ndarray, request: DecodingState, state: None) -> np.ndarray:
        if self.log_p == -math.inf:
            return logits
        for index in _active_rows(request):
            row = logits[index]
            threshold = np.float32(float(row.max()) + self.log_p)
            _keep(row, np.greater_equal(row, threshold, out=request.scratch("keep", bool)), request)
        return logits


@_implements(Typical)
class TypicalProcessor(_Stateless):
    """Locally typical filtering (Meister et al. 2023, "Locally Typical Sampling"): keep the
    tokens whose surprisal is closest to the distribution's entropy, fewest first, until
    their probability reaches ``p`` (ties: lowest id); always at least one token.

    No-op: 1.0.
    """

    def __init__(self, config: Typical) -> None:
        self.p = config.p

    def process(self, logits: np.ndarray, request: DecodingState, state: None) -> np.ndarray:
        if self.p >= 1.0:
            return logits
        for index in _active_rows(request):
            row = logits[index]
            weights = _weights(row, request)
            total = weights.sum()
            log_p = np.subtract(row, row.max(), out=request.scratch("log_p"), dtype=np.float64)
            log_p -= math.log(total)
            with np.errstate(invalid="ignore"):
                terms = np.multiply(weights, log_p, out=request.scratch("key"))
            terms[np.isnan(terms)] = 0.0  # 0 * -inf: removed tokens add no entropy
            entropy = -terms.sum() / total
            key = np.add(log_p, entropy, out=terms)  # |surprisal - entropy|; inf if removed
            np.abs(key, out=key)
            _keep_minimal_mass(row, key, weights, self.p * total, request)
        return logits


class _TokenCounts:
    """How often each token was accepted in each row (the prompt not counted), with the
    (row, token) pairs that occur, each once: a presence or frequency penalty's state.
    O(batch) per step; a ``[batch, vocab]`` int32 array."""

    def __init__(self, request: DecodingState) -> None:
        self.counts = np.zeros((request.batch_size, request.vocab_size), dtype=np.int32)
        self.pairs = _Pairs()
        for row in range(request.batch_size):
            np.add.at(self.counts[row], request.generated(row), 1)
            tokens = np.flatnonzero(self.counts[row])
            self.pairs.add(np.full(len(tokens), row), tokens)

    def accept(self, rows: np.ndarray, tokens: np.ndarray) -> None:
        first = self.counts[rows, tokens] == 0
        self.counts[rows, tokens] += 1
        self.pairs.add(rows[first], tokens[first])

    def reorder(self, rows: np.ndarray) -> None:
        self.counts = self.counts[rows]
        self.pairs = _Pairs()
        self.pairs.add(*np.nonzero(self.counts))


class _SeenTokens:
    """Which tokens each row holds, prompt or accepted, as (row, token) pairs, each once: a
    repetition penalty's state. O(batch) per step; a ``[batch, vocab]`` bool array."""

    def __init__(self, request: DecodingState) -> None:
        self.seen = np.zeros((request.batch_size, request.vocab_size), dtype=bool)
        self.pairs = _Pairs()
        for row in range(request.batch_size):
            tokens = np.unique(request.sequence(row))
            self.seen[row, tokens] = True
            self.pairs.add(np.full(len(tokens), row), tokens)

    def accept(self, rows: np.ndarray, tokens: np.ndarray) -> None:
        first = ~self.seen[rows, tokens]
        self.seen[rows, tokens] = True
        self.pairs.add(rows[first], tokens[first])

    def reorder(self, rows: np.ndarray) -> None:
        self.seen = self.seen[rows]
        self.pairs = _Pairs()
        self.pairs.add(*np.nonzero(self.seen))


@_implements(RepetitionPenalty)
class RepetitionPenaltyProcessor:
    """CTRL's repetition penalty (Keskar et al. 2019): divide the positive logits and
    multiply the negative logits of tokens already in the row (prompt or generated).

    No-op: 1.0 (keeps no state then). Touches only the tokens seen, not the vocabulary.
    """

    def __init__(self, config: RepetitionPenalty) -> None:
        self.penalty = np.float32(config.penalty)

    def start(self, request: DecodingState) -> _SeenTokens | None:
        return None if self.penalty == 1.0 else _SeenTokens(request)

    def process(
        self, logits: np.ndarray, request: DecodingState, state: _SeenTokens | None
    ) -> np.ndarray:
        if state is None:
            return logits
        rows, tokens = state.pairs.view()
        values = logits[rows, tokens]
        logits[rows, tokens] = np.where(values > 0, values / self.penalty, values * self.penalty)
        return logits


@_implements(PresencePenalty)
class PresencePenaltyProcessor:
    """Subtract ``penalty`` from the logit of every token generated at least once in the row
    (OpenAI's presence penalty; the prompt does not count). No-op: 0.0."""

    def __init__(self, config: PresencePenalty) -> None:
        self.penalty = np.float32(config.penalty)

    def start(self, request: DecodingState) -> _TokenCounts | None:
        return None if self.penalty == 0.0 else _TokenCounts(request)

    def process(
        self, logits: np.ndarray, request: DecodingState, state: _TokenCounts | None
    ) -> np.ndarray:
        if state is None:
            return logits
        rows, tokens = state.pairs.view()
        logits[rows, tokens] -= self.penalty
        return logits


@_implements(FrequencyPenalty)
class FrequencyPenaltyProcessor:
    """Subtract ``penalty`` times the number of times each token was generated in the row
    (OpenAI's frequency penalty; the prompt does not count). No-op: 0.0."""

    def __init__(self, config: FrequencyPenalty) -> None:
        self.penalty = np.float32(config.penalty)

    def start(self, request: DecodingState) -> _TokenCounts | None:
        return None if self.penalty == 0.0 else _TokenCounts(request)

    def process(
        self, logits: np.ndarray, request: DecodingState, state: _TokenCounts | None
    ) -> np.ndarray:
        if state is None:
            return logits
        rows, tokens = state.pairs.view()
        counts = state.counts[rows, tokens]
        logits[rows, tokens] -= self.penalty * counts.astype(np.float32)
        return logits


class _NgramIndex:
    """Each row's sequence (prompt and accepted tokens) and an index from each (n-1)-token
    prefix in it to the tokens that followed: a no-repeat-ngram's state. One lookup and one
    insertion per row and step."""

    def __init__(self, request: DecodingState, n: int) -> None:
        self.n = n
        self.sequences = [request.sequence(row).tolist() for row in range(request.batch_size)]
        self.indexes: list[dict[tuple[int, ...], set[int]]] = []
        for sequence in self.sequences:
            index: dict[tuple[int, ...], set[int]] = {}
            for end in range(n, len(sequence) + 1):
                index.setdefault(tuple(sequence[end - n : end - 1]), set()).add(sequence[end - 1])
            self.indexes.append(index)

    def accept(self, rows: np.ndarray, tokens: np.ndarray) -> None:
        n = self.n
        for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
            sequence = self.sequences[row]
            sequence.append(token)
            if len(sequence) >= n:
                prefix = tuple(sequence[len(sequence) - n : -1])
                self.indexes[row].setdefault(prefix, set()).add(token)

    def reorder(self, rows: np.ndarray) -> None:
        order = rows.tolist()
        self.sequences = [list(self.sequences[row]) for row in order]
        self.indexes = [
            {prefix: set(follow) for prefix, follow in self.indexes[row].items()} for row in order
        ]

    def banned(self, row: int) -> list[int]:
        """The tokens that would complete, in ``row``, an n-gram its sequence already holds."""
        sequence, n = self.sequences[row], self.n
        if len(sequence) < n - 1:
            return []
        return sorted(self.indexes[row].get(tuple(sequence[len(sequence) - n + 1 :]), ()))


@_implements(NoRepeatNgram)
class NoRepeatNgramProcessor:
    """Forbid every token that would complete an ``n``-gram already present in the row's
    sequence, prompt included (Paulus et al. 2018, "A Deep Reinforced Model for Abstractive
    Summarization"; HF's ``no_repeat_ngram_size``). No-op: 0.

    Its state keeps an index from each (n-1)-token prefix to its continuations, updated once
    per accepted token, so a step costs O(batch) lookups.
    """

    def __init__(self, config: NoRepeatNgram) -> None:
        self.n = config.n

    def start(self, request: DecodingState) -> _NgramIndex | None:
        return None if self.n == 0 else _NgramIndex(request, self.n)

    def process(
        self, logits: np.ndarray, request: DecodingState, state: _NgramIndex | None
    ) -> np.ndarray:
        if state is None:
            return logits
        for index in _active_rows(request):
            banned = state.banned(index)
            if banned:
                logits[index, banned] = NEG_INF
        return logits


# ----------------------------------------------------------------------------------------
# Selectors


@_implements(Greedy)
class GreedySelector:
    """The most likely token (argmax); ties go to the lowest id."""

    def __init__(self, config: Greedy) -> None:
        pass

    def select(self, logits: np.ndarray, state: DecodingState) -> np.ndarray:
        return logits.argmax(axis=1).astype(np.int64)


def _inverse_cdf(weights: np.ndarray, fraction: float) -> int:
    """The index where ``fraction`` (in [0, 1)) of the total weight is reached, walking the
    array in a fixed order: columns of a 256-column view first, then within the chosen
    column. Two short cumulative sums instead of one over the vocabulary; never an index of
    weight 0."""
    columns = 256
    body = len(weights) - len(weights) % columns
    sums = weights[:body].reshape(-1, columns).sum(axis=0)
    groups = np.append(sums, weights[body:].sum())
    cumulative = np.cumsum(groups)
    target = fraction * cumulative[-1]
    group = min(int(np.searchsorted(cumulative, target, side="right")), len(groups) - 1)
    base = cumulative[group - 1] if group else 0.0
    members = np.arange(body, len(weights)) if group == columns else np.arange(group, body, columns)
    inside = base + np.cumsum(weights[members])
    pick = int(np.searchsorted(inside, target, side="right"))
    if pick == len(members) or weights[members[pick]] == 0:  # rounding at the group's end
        pick = int(np.flatnonzero(weights[members])[-1])
    return int(members[pick])


@_implements(Sample)
class SampleSelector:
    """Draw a token from the softmax of the processed logits (in float64) with the request's
    seeded generator: one uniform draw per row and step, so the same seed and the same logits
    give the same tokens. Only tokens with a finite logit can be drawn."""

    def __init__(self, config: Sample) -> None:
        pass

    def select(self, logits: np.ndarray, state: DecodingState) -> np.ndarray:
        # Draw for every row, finished or not, so a row's draws do not depend on the others.
        fractions = state.rng.random(len(logits))
        tokens = np.zeros(len(logits), dtype=np.int64)
        for index in _active_rows(state):
            row = logits[index]
            support = _sparse_support(row, state)
            if support is not None:
                values = row[support].astype(np.float64)
                cumulative = np.cumsum(np.exp(values - values.max()))
                target = fractions[index] * cumulative[-1]
                tokens[index] = support[int(np.searchsorted(cumulative, target, side="right"))]
            else:
                tokens[index] = _inverse_cdf(_weights(row, state), float(fractions[index]))
        return tokens


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

    def __init__(self, chain: DecodingChain | str | Sequence[Any]) -> None:
        chain = DecodingChain.coerce(chain)
        if isinstance(chain.steps[0], BeamSearch):
            raise DecodingError(
                "beam_search reorders the KV cache, so it is a search, not a SamplerChain; "
                "use runtime.beam_search.BeamSearcher.from_config"
            )
        self.chain = chain
        *processors, selector = (implementation(step) for step in chain.steps)
        self.processors: tuple[LogitsProcessor, ...] = tuple(processors)  # type: ignore[arg-type]
        self.selector: TokenSelector = selector  # type: ignore[assignment]

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
        for step, processor in zip(self.chain.steps, self.processors, strict=False):
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
