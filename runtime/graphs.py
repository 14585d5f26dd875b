"""The one feeder of the graph contract: every run of one of our graphs goes through here.

:mod:`runtime.artifact` defines the contract (the graphs of each family and the names of their
inputs and outputs); this module turns token ids and attention masks into those inputs and the
outputs back into logits, hidden states and caches. The runtime's generation loop
(:mod:`runtime.steppers`), ``llmspec verify``, ``llmspec eval`` and the export parity gate all
feed the graphs through these classes, so a graph is verified and gated exactly as the runtime
runs it.

* :class:`DecoderGraph`: a decoder-only ``decoder.onnx``. Prompts are left padded; position
  ids count each row's real tokens (:func:`positions`), so padding does not shift them.
  :meth:`~DecoderGraph.prefill` runs prompts (optionally in chunks, each attending to the cache
  of the ones before), :meth:`~DecoderGraph.step` feeds one token per row with the cache.
* :class:`EncoderGraph`: an ``encoder.onnx`` (encoder-only, or an encoder-decoder's encoder).
  Sources are right padded (the encoder takes no position ids); ``token_type_ids`` are fed
  where the graph takes them (zeros unless given).
* :class:`Seq2SeqGraphs`: an encoder-decoder's two graphs. :meth:`~Seq2SeqGraphs.encode` runs
  the encoder once and gives the decoder's cross-attention keys/values (:class:`Encoded`);
  :meth:`~Seq2SeqGraphs.decode` runs decoder tokens (teacher forced, or a prefill of the decoder
  start token), :meth:`~Seq2SeqGraphs.step` one token per row. The decoder's positions are
  absolute (its sequences are not padded on the left): ``past .. past + n - 1``.

A cache is a ``dict`` from the graph's ``past_key_values.*`` input names to values where the
graph keeps them (numpy arrays on the CPU, ``OrtValue`` s with IOBinding on CUDA, see
:mod:`runtime.session`); ``None`` for a cache means an empty one (past length 0). Every class
has ``reorder`` for beam search (row ``i`` becomes the old row ``rows[i]``).

Only token ids, masks and positions are built here from host arrays; nothing is copied back to
the host but what ``host`` names (the logits by default).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime import artifact as fmt
from runtime.artifact import ArtifactError
from runtime.session import Graph

KINDS = ("key", "value")

Cache = dict[str, Any]


def positions(mask: np.ndarray) -> np.ndarray:
    """Position ids ``[batch, seq]`` of a (left padded) attention mask: each row's real tokens
    count 0, 1, 2, ...; padding before them sits at position 0."""
    return np.clip(mask.cumsum(axis=-1) - 1, 0, None).astype(np.int64)


def left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask ``[len(rows), longest]`` with each row's tokens at the
    right end (a decoder's prompts: the next token follows every row's last one)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for row, tokens in enumerate(rows):
        ids[row, width - len(tokens) :] = tokens
        mask[row, width - len(tokens) :] = 1
    return ids, mask


def right_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask ``[len(rows), longest]`` with each row's tokens from
    position 0 (an encoder's inputs: it has no position ids, so real tokens start at 0)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    return ids, mask


def cache_names(layers: int, stack: str | None = None) -> list[tuple[str, str]]:
    """(input name, output name) of every cache tensor of ``layers`` layers: the self-attention
    cache of a decoder-only graph (``stack`` None) or an encoder-decoder's ``"decoder"`` (self)
    or ``"encoder"`` (cross) keys/values."""
    return [
        (fmt.past_name(i, kind, stack), fmt.present_name(i, kind, stack))
        for i in range(layers)
        for kind in KINDS
    ]


def require(graph: Graph, names: Iterable[str]) -> Graph:
    """``graph`` if it takes every input in ``names``, else :class:`ArtifactError`."""
    missing = [n for n in names if n not in graph.inputs]
    if missing:
        raise ArtifactError(
            f"{graph.path}: the graph lacks the inputs {', '.join(missing)}; "
            "export the artifact again"
        )
    return graph


def _past_length(cache: Cache) -> int:
    """How many tokens ``cache`` holds (axis 2 of any of its values)."""
    for value in cache.values():
        shape = value.shape() if callable(value.shape) else value.shape  # OrtValue: a method
        return int(shape[2])
    return 0


class _CachedGraph:
    """A graph with a self-attention cache of ``layers`` x (key, value)
    ``[batch, kv_heads, past, head_dim]``."""

    def __init__(
        self,
        graph: Graph,
        layers: int,
        kv_heads: int,
        head_dim: int,
        stack: str | None,
        cache_dtype: Any = None,
    ) -> None:
        self.graph = graph
        self.layers = layers
        self.kv_heads, self.head_dim = kv_heads, head_dim
        self.names = cache_names(layers, stack)
        # None: the graph's own cache type (runtime.session.Graph.empty); a numpy type
        # otherwise (the export gate's bf16 through ml_dtypes).
        self.cache_dtype = cache_dtype

    @property
    def cache_type(self) -> str:
        """The ONNX element type of the graph's cache inputs (``"float"``, ``"float16"``,
        ``"bfloat16"``), for a caller that chooses its own ``cache_dtype``."""
        return self.graph.inputs[self.names[0][0]].dtype if self.names else ""

    def _feeds(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: value for name, value in values.items() if name in self.graph.inputs}

    def empty_cache(self, rows: int) -> Cache:
        """The cache of ``rows`` rows before any token (past length 0)."""
        shape = (rows, self.kv_heads, 0, self.head_dim)
        if self.cache_dtype is not None:
            return {past: np.zeros(shape, dtype=self.cache_dtype) for past, _ in self.names}
        return {past: self.graph.empty(past, shape) for past, _ in self.names}

    def reorder(self, cache: Cache, rows: np.ndarray) -> Cache:
        """``cache`` with row ``i`` taken from the old row ``rows[i]`` (beam search)."""
        return {name: self.graph.reorder(value, rows) for name, value in cache.items()}

    def _cache_out(self, out: dict[str, Any]) -> Cache:
        return {past: out[present] for past, present in self.names}


class DecoderGraph(_CachedGraph):
    """A decoder-only ``decoder.onnx``: ``input_ids``, ``attention_mask`` (past and new
    tokens), ``position_ids`` and the cache -> ``logits`` and the new cache."""

    def __init__(
        self, graph: Graph, layers: int, kv_heads: int, head_dim: int, cache_dtype: Any = None
    ) -> None:
        require(graph, [fmt.INPUT_IDS, fmt.ATTENTION_MASK, fmt.past_name(0, "key")])
        super().__init__(graph, layers, kv_heads, head_dim, None, cache_dtype)

    @classmethod
    def of(cls, graph: Graph, manifest: fmt.Manifest, cache_dtype: Any = None) -> DecoderGraph:
        """The decoder graph of an artifact whose manifest is ``manifest``."""
        return cls(graph, manifest.layers, manifest.kv_heads, manifest.head_dim, cache_dtype)

    def run(
        self,
        ids: np.ndarray,
        mask: np.ndarray,
        cache: Cache | None = None,
        position_ids: np.ndarray | None = None,
        host: tuple[str, ...] = (fmt.LOGITS,),
    ) -> tuple[np.ndarray, Cache]:
        """Run ``ids`` ``[batch, n]`` after the ``cache`` (None: empty). ``mask`` ``[batch,
        past + n]`` covers the cached and the new tokens; ``position_ids`` default to
        :func:`positions` of ``mask`` (its last ``n`` columns). Returns the logits ``[batch, n,
        vocab]`` and the cache after the new tokens."""
        if cache is None:
            cache = self.empty_cache(len(ids))
        if position_ids is None:
            position_ids = positions(mask)[:, mask.shape[1] - ids.shape[1] :]
        inputs = {fmt.INPUT_IDS: ids, fmt.ATTENTION_MASK: mask, fmt.POSITION_IDS: position_ids}
        out = self.graph.run(self._feeds(inputs), cache, host=host)
        return out[fmt.LOGITS], self._cache_out(out)

    def prefill(
        self, ids: np.ndarray, mask: np.ndarray, chunk_tokens: int | None = None
    ) -> tuple[np.ndarray, Cache]:
        """Run the (left padded) prompts ``ids`` with their ``mask`` from an empty cache.

        Without ``chunk_tokens``: one run, the logits of every position ``[batch, seq, vocab]``.
        With it: chunks of at most ``chunk_tokens`` tokens over the batch (at least one column),
        each attending to the cache of the ones before; only the last position's logits
        ``[batch, vocab]`` are kept (a long prompt's logits are the memory chunking saves)."""
        if chunk_tokens is None:
            return self.run(ids, mask)
        rows, width = ids.shape
        position_ids = positions(mask)
        cache = self.empty_cache(rows)
        chunk = max(1, chunk_tokens // rows)
        logits: np.ndarray | None = None
        for start in range(0, width, chunk):
            stop = min(width, start + chunk)
            out, cache = self.run(
                ids[:, start:stop], mask[:, :stop], cache, position_ids[:, start:stop]
            )
            logits = out[:, -1, :]
        assert logits is not None  # width >= 1
        return logits, cache

    def step(
        self,
        tokens: np.ndarray,
        mask: np.ndarray,
        cache: Cache,
        alive: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, Cache]:
        """Feed one token per row after ``cache``, whose tokens ``mask`` ``[batch, past]``
        covers. ``alive`` False masks a row's token out (a finished row keeps feeding the pad
        token); its position is the count of the row's real tokens so far. Returns the logits
        ``[batch, vocab]``, the mask with the new column and the new cache."""
        position_ids = mask.sum(axis=1, keepdims=True)
        column = np.ones(len(mask), dtype=np.int64) if alive is None else alive.astype(np.int64)
        mask = np.concatenate([mask, column[:, None]], axis=1)
        ids = np.ascontiguousarray(np.asarray(tokens).reshape(-1, 1), dtype=np.int64)
        logits, cache = self.run(ids, mask, cache, position_ids)
        return logits[:, -1, :], mask, cache


class EncoderGraph:
    """An ``encoder.onnx``: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the
    graph takes them) -> every output by name (``last_hidden_state``, and ``logits`` of an
    encoder-only model or the cross-attention ``present.{i}.encoder.*`` of an encoder-decoder)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = require(graph, [fmt.INPUT_IDS, fmt.ATTENTION_MASK])
        self.token_types = fmt.TOKEN_TYPE_IDS in graph.inputs

    def feeds(
        self, ids: np.ndarray, mask: np.ndarray, token_types: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """The graph's inputs for right padded ``ids`` and their ``mask``."""
        inputs = {fmt.INPUT_IDS: ids, fmt.ATTENTION_MASK: mask}
        if self.token_types:
            inputs[fmt.TOKEN_TYPE_IDS] = np.zeros_like(ids) if token_types is None else token_types
        return inputs

    def run(
        self,
        ids: np.ndarray,
        mask: np.ndarray,
        token_types: np.ndarray | None = None,
        host: tuple[str, ...] = (fmt.LAST_HIDDEN_STATE, fmt.LOGITS),
    ) -> dict[str, Any]:
        """Every output by name; those in ``host`` as numpy arrays."""
        return self.graph.run(self.feeds(ids, mask, token_types), {}, host=host)


@dataclass
class Encoded:
    """An encoder-decoder's source after the encoder: what every decoder run needs."""

    mask: np.ndarray  # the source's attention mask, the decoder's encoder_attention_mask
    cross: Cache  # the decoder's past_key_values.{i}.encoder.* inputs
    outputs: dict[str, Any]  # every encoder output by name (last_hidden_state, present.*)

    @property
    def last_hidden_state(self) -> Any:
        return self.outputs[fmt.LAST_HIDDEN_STATE]


class Seq2SeqGraphs(_CachedGraph):
    """An encoder-decoder's ``encoder.onnx`` and ``decoder.onnx``. The decoder takes
    ``input_ids``, ``encoder_attention_mask``, ``attention_mask`` (its own past and new tokens),
    ``position_ids`` (where its positions are absolute), the cross-attention keys/values from
    the encoder and its own cache -> ``logits`` and the new cache."""

    def __init__(
        self,
        encoder: Graph,
        decoder: Graph,
        layers: int,
        kv_heads: int,
        head_dim: int,
        cache_dtype: Any = None,
    ) -> None:
        self.encoder = EncoderGraph(encoder)
        require(
            decoder,
            [fmt.INPUT_IDS, fmt.ENCODER_ATTENTION_MASK, fmt.past_name(0, "key", "encoder")],
        )
        super().__init__(decoder, layers, kv_heads, head_dim, "decoder", cache_dtype)
        self.cross_names = cache_names(layers, "encoder")

    @classmethod
    def of(
        cls, encoder: Graph, decoder: Graph, manifest: fmt.Manifest, cache_dtype: Any = None
    ) -> Seq2SeqGraphs:
        """The graphs of an artifact whose manifest is ``manifest``."""
        return cls(
            encoder, decoder, manifest.layers, manifest.kv_heads, manifest.head_dim, cache_dtype
        )

    @property
    def decoder(self) -> Graph:
        return self.graph

    def encode(self, ids: np.ndarray, mask: np.ndarray, host: tuple[str, ...] = ()) -> Encoded:
        """Run the encoder on right padded ``ids`` and their ``mask``; the outputs in ``host``
        come back as numpy arrays, the rest stay where the decoder's cache lives."""
        out = self.encoder.run(ids, mask, host=host)
        cross = {past: out[present] for past, present in self.cross_names}
        return Encoded(mask=mask, cross=cross, outputs=out)

    def reorder_encoded(self, encoded: Encoded, rows: np.ndarray) -> Encoded:
        """``encoded`` with row ``i`` taken from the old row ``rows[i]`` (beams of a prompt)."""
        cross = {name: self.graph.reorder(value, rows) for name, value in encoded.cross.items()}
        return Encoded(mask=encoded.mask[rows], cross=cross, outputs=encoded.outputs)

    def decode(
        self,
        ids: np.ndarray,
        encoded: Encoded,
        mask: np.ndarray | None = None,
        cache: Cache | None = None,
        host: tuple[str, ...] = (fmt.LOGITS,),
        position_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Cache]:
        """Run decoder tokens ``ids`` ``[batch, n]`` after the ``cache`` (None: empty).
        ``mask`` ``[batch, past + n]`` (default all ones) covers the cached and new tokens; the
        positions are ``past .. past + n - 1`` unless ``position_ids`` ``[batch, n]`` are given
        (rows whose cache is left padded, as continuous batching makes them). Returns the
        logits ``[batch, n, vocab]`` and the cache after the new tokens."""
        batch, length = ids.shape
        if cache is None:
            cache = self.empty_cache(batch)
        if mask is None:
            mask = np.ones((batch, _past_length(cache) + length), dtype=np.int64)
        done = mask.shape[1] - length
        inputs = {
            fmt.INPUT_IDS: ids,
            fmt.ENCODER_ATTENTION_MASK: encoded.mask,
            fmt.ATTENTION_MASK: mask,
            fmt.POSITION_IDS: np.broadcast_to(
                np.arange(done, done + length, dtype=np.int64), (batch, length)
            ).copy()
            if position_ids is None
            else position_ids,
        }
        out = self.graph.run(self._feeds(inputs), {**encoded.cross, **cache}, host=host)
        return out[fmt.LOGITS], self._cache_out(out)

    def step(
        self,
        tokens: np.ndarray,
        encoded: Encoded,
        mask: np.ndarray,
        cache: Cache,
        alive: np.ndarray | None = None,
        padded: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, Cache]:
        """Feed one decoder token per row after ``cache``, whose tokens ``mask`` ``[batch,
        past]`` covers (``alive`` False masks a finished row's token out). ``padded``: the
        rows' caches are left padded to a common width (continuous batching), so each row's
        position is the count of its real tokens, not the width. Returns the logits ``[batch,
        vocab]``, the mask with the new column and the new cache."""
        position_ids = mask.sum(axis=1, keepdims=True) if padded else None
        column = np.ones(len(mask), dtype=np.int64) if alive is None else alive.astype(np.int64)
        mask = np.concatenate([mask, column[:, None]], axis=1)
        ids = np.ascontiguousarray(np.asarray(tokens).reshape(-1, 1), dtype=np.int64)
        logits, cache = self.decode(ids, encoded, mask, cache, position_ids=position_ids)
        return logits[:, -1, :], mask, cache


__all__ = [
    "Cache",
    "DecoderGraph",
    "Encoded",
    "EncoderGraph",
    "Seq2SeqGraphs",
    "cache_names",
    "left_padded",
    "positions",
    "require",
    "right_padded",
]
