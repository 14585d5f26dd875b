"""Beam search bookkeeping: which hypotheses live on, which are finished, which is best.

The generation loop owns the model and its KV cache; this class owns the beams. It follows
the semantics of Hugging Face's ``BeamSearchScorer`` (and transformers 5's vectorized beam
search, which keeps them): each step ranks the ``2 * beams`` best continuations of every batch
row by summed log-probability; a continuation ending in ``eos_id`` among the top ``beams`` is a
finished hypothesis scored ``sum_logprobs / length ** length_penalty``, where ``length`` counts
the generated tokens including the eos; the best ``beams`` other continuations live on. A row
is done when it holds ``beams`` finished hypotheses and either ``early_stopping`` is True or no
live beam can still beat the worst of them (the best live score divided by its current length
** length_penalty, HF's heuristic). After the last step the live beams join the finished ones
(HF's ``finalize``) and :meth:`BeamSearcher.best` returns the best hypothesis of each row;
:meth:`BeamSearcher.best_hypotheses` adds its score, its summed log-probability and, for each
of its tokens, the model row whose log-probabilities it was chosen from (HF's
``beam_indices``), with which a loop finds each token's log-probability after the reorders.

How a generation loop uses it::

    searcher = BeamSearcher.from_config(chain.steps[0], eos_id=eos, pad_id=pad, batch=B)
    # run the prompt with every row repeated `beams` times: cache rows [B * beams]
    for _ in range(max_new_tokens):
        logprobs = log_softmax(logits[:, -1, :])         # [B * beams, vocab]
        rows, tokens = searcher.step(logprobs)           # both [B * beams]
        cache = cache[rows]                              # reorder every layer's K/V rows
        logits = run_the_model(tokens[:, None], cache)   # feed each row its new token
        if searcher.done:
            break
    token_lists = searcher.best()                        # B lists of generated token ids

Live beams start from the same prompt: only beam 0 of each row is live at the first step (the
others start at -inf), so the first step does not pick the same token ``beams`` times.

A beam search runs no logits processors (a chain with ``beam_search`` is that step alone), so
its reorder touches only the cache and the beams. A loop that did combine them would reorder
the request's processor states with the same rows (``DecodingState.reorder(rows)`` in
:mod:`runtime.sampling`), as it reorders the cache.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

import numpy as np

from runtime.decoding import BeamSearch, DecodingError

__all__ = ["BeamSearcher", "Hypothesis"]


class Hypothesis(NamedTuple):
    """A batch row's best hypothesis: its generated token ids, its score (the summed
    log-probability divided by ``length ** length_penalty``), the summed log-probability
    itself, and ``rows[i]``: the model row (``b * beams + j``) at step ``i`` whose
    log-probabilities ``tokens[i]`` was chosen from."""

    tokens: list[int]
    score: float
    logprob: float
    rows: list[int]


# A finished hypothesis: (score, tokens, model rows, summed log-probability).
_Finished = tuple[float, tuple[int, ...], tuple[int, ...], float]


class BeamSearcher:
    """The beams of one batched request.

    Args:
        beams: hypotheses kept per batch row (>= 1).
        length_penalty: exponent of the length that divides a finished hypothesis' summed
            log-probability; > 0 favours longer outputs, < 0 shorter ones, 0 ignores length.
        early_stopping: stop a row as soon as it has ``beams`` finished hypotheses.
        eos_id: the token that finishes a hypothesis; None: hypotheses finish only at the end.
        stop_ids: other tokens that finish a hypothesis as eos does (Llama 3's <|eot_id|>).
        pad_id: the token fed to the rows of batch rows that are done.
        batch: number of prompts; the model runs ``batch * beams`` rows, row ``i * beams + j``
            being beam ``j`` of prompt ``i``.
    """

    def __init__(
        self,
        beams: int,
        length_penalty: float = 1.0,
        early_stopping: bool = False,
        eos_id: int | None = None,
        pad_id: int = 0,
        batch: int = 1,
        stop_ids: Collection[int] = (),
    ) -> None:
        config = BeamSearch(
            beams=beams, length_penalty=length_penalty, early_stopping=early_stopping
        )  # validates them with the configuration's messages
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise DecodingError(f"beam search needs batch >= 1, got {batch!r}")
        named = [("eos_id", eos_id), ("pad_id", pad_id)]
        named += [(f"stop_ids[{i}]", stop) for i, stop in enumerate(stop_ids)]
        for name, value in named:
            if value is not None and (not isinstance(value, int | np.integer) or value < 0):
                raise DecodingError(f"{name} must be a token id >= 0, got {value!r}")
        self.beams = config.beams
        self.length_penalty = config.length_penalty
        self.early_stopping = config.early_stopping
        self.eos_id = None if eos_id is None else int(eos_id)
        self._finishing = frozenset(int(t) for t in (*stop_ids, eos_id) if t is not None)
        self.pad_id = int(pad_id)
        self.batch = batch
        self.steps = 0
        self._scores = np.full((batch, self.beams), -np.inf)  # summed log-probs of live beams
        self._scores[:, 0] = 0.0
        self._tokens = np.zeros((batch * self.beams, 0), dtype=np.int64)  # live beams' tokens
        # the model row each live beam's token came from, at each step
        self._origins = np.zeros((batch * self.beams, 0), dtype=np.int64)
        # Finished hypotheses per batch row, best first.
        self._finished: list[list[_Finished]] = [[] for _ in range(batch)]
        self._done = np.zeros(batch, dtype=bool)

    @classmethod
    def from_config(
        cls,
        config: BeamSearch,
        *,
        eos_id: int | None,
        pad_id: int,
        batch: int,
        stop_ids: Collection[int] = (),
    ) -> BeamSearcher:
        """A searcher for a chain's ``beam_search`` step."""
        return cls(
            config.beams,
            config.length_penalty,
            config.early_stopping,
            eos_id,
            pad_id,
            batch,
            stop_ids,
        )

    @property
    def done(self) -> bool:
        """Whether every batch row is done: the loop can stop before ``max_new_tokens``."""
        return bool(self._done.all())

    @property
    def rows_done(self) -> np.ndarray:
        """``[batch]`` bool: which batch rows are done (their rows are fed ``pad_id``)."""
        return self._done.copy()

    def step(self, logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance every live beam by one token.

        Args:
            logprobs: ``[batch * beams, vocab]`` log-probabilities of the next token for each
                model row (``runtime.logits.log_softmax`` of the last position's logits).

        Returns:
            ``(rows, tokens)``, both ``[batch * beams]`` int64: before the next model step,
            reorder the cache so that its row ``i`` is the old row ``rows[i]``, and feed row
            ``i`` the token ``tokens[i]``. Rows of done batch rows keep their place
            (``rows[i] == i``) and get ``pad_id``.
        """
        logprobs = self._checked(logprobs)
        vocab = logprobs.shape[1]
        width = self.beams * vocab
        keep = min(2 * self.beams, width)
        length = self.steps + 1  # generated tokens, the new one included
        totals = logprobs.reshape(self.batch, self.beams, vocab) + self._scores[:, :, None]
        totals = totals.reshape(self.batch, width)  # [batch, beams * vocab]
        rows = np.arange(self.batch * self.beams, dtype=np.int64)
        tokens = np.full(self.batch * self.beams, self.pad_id, dtype=np.int64)
        scores = np.full((self.batch, self.beams), -np.inf)
        for b in np.flatnonzero(~self._done).tolist():
            base = b * self.beams
            row = totals[b]
            best = np.argpartition(-row, keep - 1)[:keep] if keep < width else np.arange(width)
            best = best[np.lexsort((best, -row[best]))]  # by score, then by (beam, token)
            slot = 0
            for rank, flat in enumerate(best.tolist()):
                score = float(row[flat])
                beam, token = divmod(flat, vocab)
                if token in self._finishing:
                    if rank < self.beams and score > -np.inf:
                        hypothesis = (*self._tokens[base + beam].tolist(), token)
                        origins = (*self._origins[base + beam].tolist(), base + beam)
                        normalized = score / length**self.length_penalty
                        self._add(b, (normalized, hypothesis, origins, score))
                    continue
                rows[base + slot], tokens[base + slot] = base + beam, token
                scores[b, slot] = score
                slot += 1
                if slot == self.beams:
                    break
            for dead in range(slot, self.beams):  # a vocabulary too small to fill the beams
                rows[base + dead], tokens[base + dead] = base, self.pad_id
            self._done[b] = self._is_done(b, float(scores[b, 0]), length)
        self._tokens = np.concatenate([self._tokens[rows], tokens[:, None]], axis=1)
        self._origins = np.concatenate([self._origins[rows], rows[:, None]], axis=1)
        self._scores = np.where(self._done[:, None], self._scores, scores)
        self.steps = length
        return rows, tokens

    def best(self) -> list[list[int]]:
        """The best hypothesis of each batch row: its generated token ids, ending with
        ``eos_id`` (or a stop id) if it finished with it. Live beams of rows that are not done
        count as finished at their current length (HF's ``finalize``); calling it does not
        change the search. A row with no hypothesis (no step taken) gets ``[]``."""
        return [hypothesis.tokens for hypothesis in self.best_hypotheses()]

    def best_hypotheses(self) -> list[Hypothesis]:
        """The best hypothesis of each batch row (as :meth:`best` picks it) with its score,
        summed log-probability and origin rows (see :class:`Hypothesis`)."""
        results = []
        for b in range(self.batch):
            candidates = list(self._finished[b])
            if not self._done[b] and self.steps:
                for j in range(self.beams):
                    score = float(self._scores[b, j])
                    if score > -np.inf:
                        row = b * self.beams + j
                        candidates.append(
                            (
                                score / self.steps**self.length_penalty,
                                tuple(self._tokens[row].tolist()),
                                tuple(self._origins[row].tolist()),
                                score,
                            )
                        )
            best = max(candidates, key=lambda item: item[0], default=(0.0, (), (), 0.0))
            results.append(Hypothesis(list(best[1]), best[0], best[3], list(best[2])))
        return results

    def _add(self, b: int, hypothesis: _Finished) -> None:
        """Keep a finished hypothesis if it is among the row's ``beams`` best."""
        finished = self._finished[b]
        score = hypothesis[0]
        if len(finished) == self.beams and score <= finished[-1][0]:
            return
        position = next((i for i, item in enumerate(finished) if score > item[0]), len(finished))
        finished.insert(position, hypothesis)
        del finished[self.beams :]

    def _is_done(self, b: int, best_live: float, length: int) -> bool:
        finished = self._finished[b]
        if len(finished) < self.beams:
            return False
        if self.early_stopping:
            return True
        return finished[-1][0] >= best_live / length**self.length_penalty

    def _checked(self, logprobs: np.ndarray) -> np.ndarray:
        if not isinstance(logprobs, np.ndarray) or logprobs.dtype.kind != "f":
            raise DecodingError("beam search takes a floating-point numpy array of log-probs")
        rows = self.batch * self.beams
        if logprobs.ndim != 2 or logprobs.shape[0] != rows:
            raise DecodingError(
                f"beam search takes log-probs of shape [batch * beams, vocab] = [{rows}, V], "
                f"got {logprobs.shape}"
            )
        live = np.repeat(~self._done, self.beams)
        broken = live & np.isnan(logprobs).any(axis=1)
        if broken.any():
            raise DecodingError(f"log-probs of row {int(np.flatnonzero(broken)[0])} contain NaN")
        return logprobs.astype(np.float64, copy=False)
