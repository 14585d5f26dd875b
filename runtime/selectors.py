"""The built-in selectors, which end a decoding chain: greedy (argmax) and sampling.

Each implements :class:`runtime.sampling.TokenSelector` for one configuration type of
:mod:`runtime.decoding` (the table in :mod:`runtime.sampling` pairs them): it picks one token
per row from the processed logits; the chain then gives finished rows the pad token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from runtime.decoding import Greedy, Sample
from runtime.logits import active_rows, row_weights, sparse_support

if TYPE_CHECKING:
    from runtime.sampling import DecodingState


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
        for index in active_rows(state):
            row = logits[index]
            support = sparse_support(row, state)
            if support is not None:
                values = row[support].astype(np.float64)
                cumulative = np.cumsum(np.exp(values - values.max()))
                target = fractions[index] * cumulative[-1]
                tokens[index] = support[int(np.searchsorted(cumulative, target, side="right"))]
            else:
                tokens[index] = _inverse_cdf(row_weights(row, state), float(fractions[index]))
        return tokens
