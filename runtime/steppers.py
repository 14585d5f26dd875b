"""Each generative family's side of the generation loop: its graphs, KV cache and masks.

A stepper runs one request's graphs through their feeders (:mod:`runtime.graphs`) for the loop
of :mod:`runtime.generation` (see :class:`runtime.generation.Stepper`): the prompt first, then
one token per row and step, reordering the cache rows for a beam search. A decoder-only model
prefills its left-padded prompts in chunks; an encoder-decoder model runs its encoder once and
starts its decoder from the ``decoder_start`` token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from runtime.generation import Stepper
from runtime.graphs import Encoded, KVCache, left_padded, right_padded

if TYPE_CHECKING:
    from runtime.model import DecoderModel, Seq2SeqModel

# A decoder-only prompt longer than this many tokens is prefilled row by row in chunks of this
# many tokens (GroupQueryAttention runs a chunk after a cache for one row at a time, see
# runtime.graphs), each chunk using the cache of the ones before it. The result is the same as
# one run, but the attention scores of a long batched prompt never exist at once, and only the
# last position's logits are computed (logits_to_keep). Chunks of 256 were chosen when chunks
# ran over the whole batch (format 1: batch 8 x 1024 tokens took 8.8 s / 2467 MiB in one run,
# 6.8 s / 1076 MiB in chunks); bench/peers.py measures the row-by-row prefill.
PREFILL_CHUNK_TOKENS = 256


class DecoderStepper(Stepper):
    """A decoder-only model's side of a request: its one graph, on left-padded prompts."""

    def __init__(self, model: DecoderModel, prompts: list[list[int]], new_tokens: int) -> None:
        self.graph = model.feeder
        self.rows = len(prompts)
        self.ids, self.mask = left_padded(prompts, model.pad_id)
        self.room = self.ids.shape[1] + new_tokens
        self.cache: KVCache | None = None

    def first(self, beams: int) -> np.ndarray:
        """Prefill: the prompts, in chunks of at most :data:`PREFILL_CHUNK_TOKENS` tokens when
        they are longer, each chunk attending to the cache of the ones before it; the cache has
        room for every token the request can generate."""
        logits, self.cache = self.graph.prefill(
            self.ids, self.mask, PREFILL_CHUNK_TOKENS, self.room
        )
        if beams > 1:
            rows = np.repeat(np.arange(self.rows), beams)
            self.reorder(rows)
            logits = logits[rows]
        return logits

    def next(self, tokens: np.ndarray, alive: np.ndarray) -> np.ndarray:
        assert self.cache is not None  # first() ran
        logits, self.mask, self.cache = self.graph.step(tokens, self.mask, self.cache, alive)
        return logits

    def reorder(self, rows: np.ndarray) -> None:
        assert self.cache is not None
        self.cache = self.graph.reorder(self.cache, rows)
        self.mask = self.mask[rows]


class Seq2SeqStepper(Stepper):
    """An encoder-decoder model's side of a request: the encoder once, then the decoder."""

    def __init__(self, model: Seq2SeqModel, prompts: list[list[int]], new_tokens: int) -> None:
        self.graphs = model.feeder
        self.room = 1 + new_tokens
        self.start = model.special_tokens["decoder_start"]
        self.rows = len(prompts)
        # Right padding: the encoder has no position ids, so real tokens start at position 0.
        self.source, self.source_mask = right_padded(prompts, model.pad_id)
        self.mask = np.ones((self.rows, 0), dtype=np.int64)
        self.cache: KVCache | None = None
        self.encoded: Encoded | None = None

    def first(self, beams: int) -> np.ndarray:
        encoded = self.graphs.encode(self.source, self.source_mask)
        rows = self.rows
        if beams > 1:
            encoded = self.graphs.reorder_encoded(encoded, np.repeat(np.arange(rows), beams))
            rows *= beams
        self.encoded = encoded
        self.mask = np.ones((rows, 1), dtype=np.int64)
        start = np.full((rows, 1), self.start, dtype=np.int64)
        logits, self.cache = self.graphs.decode(
            start, encoded, self.mask, keep=1, max_length=self.room
        )
        return logits[:, -1, :]

    def next(self, tokens: np.ndarray, alive: np.ndarray) -> np.ndarray:
        assert self.encoded is not None and self.cache is not None  # first() ran
        logits, self.mask, self.cache = self.graphs.step(
            tokens, self.encoded, self.mask, self.cache, alive
        )
        return logits

    def reorder(self, rows: np.ndarray) -> None:
        assert self.cache is not None
        self.cache = self.graphs.reorder(self.cache, rows)
        self.mask = self.mask[rows]
