"""Numpy operations on logits shared by the processors, the selectors and the models.

``softmax`` and ``log_softmax`` (what fill-mask and beam search take); and the per-row work of
the decoding steps (:mod:`runtime.processors`, :mod:`runtime.selectors`): which rows are still
running, a row's few finite tokens, keeping only some tokens of a row, a row's unnormalized
probabilities. The row helpers use the request's scratch buffers (see
:meth:`runtime.sampling.DecodingState.scratch`), so a step allocates no vocabulary-sized array.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from runtime.results import TokenLogprob

if TYPE_CHECKING:
    from runtime.sampling import DecodingState

NEG_INF = np.float32(-np.inf)
# Filters and the sampler work on the allowed tokens alone when they are at most 1/8 of the
# vocabulary (after top_k, say), and on the whole row otherwise.
SPARSE_FRACTION = 8


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities along the last axis, in float64 (``-inf`` logits get probability 0)."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    # Clamped: numpy's float64 exp is ~10x slower where it underflows (see row_weights).
    weights = np.exp(np.maximum(shifted, -700.0)) * (shifted > -np.inf)
    return weights / weights.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities along the last axis, in float64 (what beam search steps take)."""
    shifted = np.asarray(logits, dtype=np.float64)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    normalizer = np.exp(np.maximum(shifted, -700.0)).sum(axis=-1, keepdims=True)
    return shifted - np.log(normalizer)


def token_logprobs(logits: np.ndarray, tokens: np.ndarray, top: int = 0) -> list[TokenLogprob]:
    """Each row's chosen token's log-probability under ``logits`` ``[batch, vocab]`` (the
    model's raw logits, see :class:`runtime.results.TokenLogprob`) and the ``top`` most likely
    tokens of the row, most likely first (equal ones by lower id)."""
    logprobs = log_softmax(logits)
    rows = np.arange(len(logprobs))
    chosen = logprobs[rows, np.asarray(tokens, dtype=np.int64)]
    top = min(top, logprobs.shape[-1])
    if top > 0:
        # argpartition, then a stable sort of the few on (-logprob, id)
        part = np.argpartition(-logprobs, top - 1, axis=-1)[:, :top]
        best = []
        for row in rows.tolist():
            ids = part[row]
            order = np.lexsort((ids, -logprobs[row, ids]))
            best.append(tuple((int(i), float(logprobs[row, i])) for i in ids[order]))
    else:
        best = [()] * len(rows)
    return [
        TokenLogprob(int(token), float(value), alternatives)
        for token, value, alternatives in zip(
            np.asarray(tokens).tolist(), chosen.tolist(), best, strict=True
        )
    ]


def active_rows(state: DecodingState) -> list[int]:
    """The rows of the request that are not finished yet."""
    return np.flatnonzero(~state.finished).tolist()


def sparse_support(row: np.ndarray, state: DecodingState) -> np.ndarray | None:
    """The ids of the row's finite logits when they are few (say after top_k), else None."""
    finite = np.greater(row, NEG_INF, out=state.scratch("finite", bool))
    if np.count_nonzero(finite) * SPARSE_FRACTION > row.size:
        return None
    return np.flatnonzero(finite)


def keep_only(row: np.ndarray, keep: np.ndarray, state: DecodingState) -> None:
    """Set the logits of ``row`` where the bool mask ``keep`` is False to -inf, in place.

    Few kept tokens: fill and scatter them back. Many: clamp with a +-inf bound, because a
    masked write is branchy and costs ~10x more on a random half-kept mask."""
    if np.count_nonzero(keep) * SPARSE_FRACTION <= row.size:
        indices = np.flatnonzero(keep)
        kept = row[indices]
        row.fill(NEG_INF)
        row[indices] = kept
    else:
        bound = np.subtract(keep, np.float32(0.5), out=state.scratch("bound", np.float32))
        bound *= np.float32(np.inf)  # +inf where kept, -inf where not
        np.minimum(row, bound, out=row)


def row_weights(row: np.ndarray, state: DecodingState) -> np.ndarray:
    """``exp(row - max(row))`` in float64, the unnormalized probabilities; exactly 0 for
    removed (-inf) tokens. numpy's float64 exp is ~10x slower on inputs whose result
    underflows, -inf included, so inputs are clamped at -700 (e^-700 ~ 1e-304, no token's
    chance) and removed tokens are zeroed afterwards."""
    weights = np.subtract(row, row.max(), out=state.scratch("weights"), dtype=np.float64)
    np.maximum(weights, -700.0, out=weights)
    np.exp(weights, out=weights)
    weights *= np.greater(row, NEG_INF, out=state.scratch("finite", bool))
    return weights
