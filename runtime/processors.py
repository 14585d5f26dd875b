"""The built-in logits processors, and the per-request states of the stateful ones.

Each processor implements :class:`runtime.sampling.LogitsProcessor` for one configuration type
of :mod:`runtime.decoding` (the table in :mod:`runtime.sampling` pairs them): the filters
(temperature, top_k, top_p, min_p, typical), which keep nothing about a request, and the
penalties (repetition, presence, frequency, no-repeat-ngram), whose ``start`` makes a state for
the request's batch (token counts, the tokens seen, an n-gram index) that ``accept`` keeps up to
date, as llama.cpp's samplers own theirs. Processors see float32 ``[batch, vocab]`` logits, a
removed token is ``-inf``, and rows already finished are skipped.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from runtime.decoding import (
    FrequencyPenalty,
    MinP,
    NoRepeatNgram,
    PresencePenalty,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
    Typical,
)
from runtime.logits import (
    NEG_INF,
    SPARSE_FRACTION,
    active_rows,
    keep_only,
    row_weights,
    sparse_support,
)

if TYPE_CHECKING:
    from runtime.sampling import DecodingState

# Nucleus and typical filters sort at most about this many tokens.
_EXACT_LIMIT = 2048


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


def _mass_up_to(
    key: np.ndarray, weights: np.ndarray, tau: float, state: DecodingState
) -> tuple[float, int]:
    """The total weight and the number of tokens with ``key <= tau``; branch-free when many."""
    below = np.less_equal(key, tau, out=state.scratch("below", bool))
    count = int(np.count_nonzero(below))
    if count * SPARSE_FRACTION <= key.size:
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
            keep_only(row, np.less(key, np.inf, out=state.scratch("below", bool)), state)
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
        keep_only(row, np.less_equal(key, boundary, out=below), state)
    # Of the tokens tied at the boundary key, the lowest ids join until the target is met.
    tied = candidates[keys == boundary]
    if len(tied) > 1:
        first = int(np.searchsorted(keys[order], boundary, side="left"))
        mass_below = cumulative[first - 1] if first else low_mass
        joined = mass_below + np.cumsum(weights[tied], dtype=np.float64)
        take = int(np.searchsorted(joined, target, side="left")) + 1
        row[tied[take:]] = NEG_INF


class _Stateless:
    """A processor that keeps nothing about a request."""

    def start(self, request: DecodingState) -> None:
        return None


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
        for index in active_rows(request):
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
            keep_only(row, keep, request)
        return logits


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
        for index in active_rows(request):
            row = logits[index]
            support = sparse_support(row, request)
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
        for index in active_rows(request):
            row = logits[index]
            threshold = np.float32(float(row.max()) + self.log_p)
            keep_only(
                row, np.greater_equal(row, threshold, out=request.scratch("keep", bool)), request
            )
        return logits


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
        for index in active_rows(request):
            row = logits[index]
            weights = row_weights(row, request)
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
        for index in active_rows(request):
            banned = state.banned(index)
            if banned:
                logits[index, banned] = NEG_INF
        return logits
