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

The self-attention cache is a :class:`KVCache` (format 2, see
:mod:`llmspec.exporter.rewrites.kv_cache`): one buffer per ``past_key_values.*`` input,
``[rows, kv_heads, max_length, head_dim]``, allocated once per batch and written in place by
the graph; its first :attr:`KVCache.length` columns are in use, left padded like the prompts.
``None`` for a cache means an empty one. A run extends the cache it is given (the object and
its buffers): keep no other reference to it expecting the old contents. A run that needs more
columns than the buffers have grows them (a copy, doubling, so rare); callers that know their
need pass ``max_length``. The
encoder-decoder's cross-attention keys/values are a plain ``dict`` (:class:`Encoded`), computed
once and only read. Every class has ``reorder`` for beam search (row ``i`` becomes the old row
``rows[i]``), in place when the row count stays.

Logits: the graphs compute the output projection only for the last ``logits_to_keep``
positions; prefill and steps ask for the last one, :meth:`DecoderGraph.run` and
:meth:`Seq2SeqGraphs.decode` for every position unless told otherwise (``llmspec eval``).

GroupQueryAttention runs a chunk of several tokens after a cache only for one row at a time, so
a prompt longer than a prefill chunk is prefilled row by row (each row's chunks in order); on
the CPU each row writes straight into its rows of the batch's buffers.

Only token ids, masks and positions are built here from host arrays; nothing is copied back to
the host but what ``host`` names (the logits by default).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime import artifact as fmt
from runtime.artifact import ArtifactError
from runtime.session import NUMPY_DTYPES, Buffer, Graph

KINDS = ("key", "value")

Cache = dict[str, Any]  # cross-attention keys/values by input name


class KVCache:
    """A batch's self-attention cache, written in place by the graph: ``buffers`` maps each
    ``past_key_values.*`` input to its ``present.*`` output and the :class:`Buffer` both are
    bound to, ``[rows, kv_heads, max_length, head_dim]``. Columns ``0 .. length - 1`` hold the
    cache (left padded); the rest are room for the next positions."""

    def __init__(self, buffers: dict[str, tuple[str, Buffer]], rows: int, length: int) -> None:
        self.buffers = buffers
        self.rows = rows
        self.length = length
        # each graph's IOBinding with these buffers bound (runtime.session.Graph.run)
        self.bindings: dict[int, Any] = {}

    @property
    def max_length(self) -> int:
        for _, buffer in self.buffers.values():
            return buffer.shape[2]
        return 0

    def host(self) -> dict[str, np.ndarray]:
        """The used part of every buffer by input name, ``[rows, kv, length, hd]``, on the host
        (views on the CPU, copies from the device)."""
        return {
            name: buffer.host()[:, :, : self.length] for name, (_, buffer) in self.buffers.items()
        }


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

    def empty_cache(self, rows: int, max_length: int = 1) -> KVCache:
        """The cache of ``rows`` rows before any token, with room for ``max_length`` positions
        (it grows when a run needs more)."""
        shape = (rows, self.kv_heads, max(1, max_length), self.head_dim)
        buffers = {
            past: (present, self.graph.buffer(past, shape, self.cache_dtype))
            for past, present in self.names
        }
        return KVCache(buffers, rows, 0)

    def _with(self, cache: KVCache, arrays: dict[str, np.ndarray], max_length: int) -> KVCache:
        """A new cache holding ``arrays`` ``[rows, kv, length, hd]`` by input name."""
        rows, length = 0, 0
        for array in arrays.values():
            rows, length = array.shape[0], array.shape[2]
        fresh = self.empty_cache(rows, max(max_length, length))
        for name, (_, buffer) in fresh.buffers.items():
            if buffer.array is not None:
                buffer.array[:, :, :length] = arrays[name]
            else:
                whole = np.zeros(buffer.shape, dtype=arrays[name].dtype)
                whole[:, :, :length] = arrays[name]
                buffer.load(whole)
        fresh.length = length
        return fresh

    def reserve(self, cache: KVCache, length: int) -> KVCache:
        """``cache`` itself when it has room for ``length`` positions, else a copy with at
        least twice the room."""
        if length <= cache.max_length:
            return cache
        return self._with(cache, cache.host(), max(length, 2 * cache.max_length))

    def reorder(self, cache: KVCache, rows: np.ndarray) -> KVCache:
        """``cache`` with row ``i`` taken from the old row ``rows[i]`` (beam search; repeating
        prompts for beams); in place when the row count stays."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) != cache.rows:
            taken = {name: np.take(a, rows, axis=0) for name, a in cache.host().items()}
            return self._with(cache, taken, cache.max_length)
        for _, buffer in cache.buffers.values():
            if buffer.array is not None:
                used = buffer.array[:, :, : cache.length]
                used[...] = used[rows]
            else:
                whole = buffer.host()
                whole[:, :, : cache.length] = whole[rows, :, : cache.length]
                buffer.load(whole)
        return cache

    def take(self, cache: KVCache, rows: np.ndarray, first: int) -> KVCache:
        """The rows ``rows`` of ``cache`` without its first ``first`` columns (continuous
        batching: finished rows leave, and the columns no remaining row uses go)."""
        taken = {name: a[rows, :, first:] for name, a in cache.host().items()}
        return self._with(cache, taken, cache.max_length - first)

    def stack(self, first: KVCache, second: KVCache) -> KVCache:
        """The rows of ``first`` then ``second``, each left padded to the longer one's length
        (continuous batching: a prefilled group joins the running batch)."""
        width = max(first.length, second.length)
        a, b = first.host(), second.host()
        joined = {
            name: np.concatenate([padded(a[name], width, True), padded(b[name], width, True)])
            for name in a
        }
        return self._with(first, joined, max(first.max_length, second.max_length, width))

    def _row(self, cache: KVCache, row: int) -> KVCache | None:
        """Row ``row`` of ``cache`` as a one-row cache over the same memory, or None when the
        buffers are device memory."""
        buffers = {}
        for past, (present, buffer) in cache.buffers.items():
            view = buffer.rows(row, row + 1)
            if view is None:
                return None
            buffers[past] = (present, view)
        return KVCache(buffers, 1, cache.length)


def padded(array: np.ndarray, width: int, left: bool) -> np.ndarray:
    """``array`` (a mask ``[rows, positions]`` or a cache ``[rows, heads, positions, dim]``)
    with zeros added on the ``left`` or the right of its positions up to ``width``."""
    axis = 1 if array.ndim == 2 else 2
    extra = width - array.shape[axis]
    if not extra:
        return array
    pad = [(0, 0)] * array.ndim
    pad[axis] = (extra, 0) if left else (0, extra)
    return np.pad(array, pad)


def _check_fits(cache: KVCache, ids: np.ndarray, width: int) -> None:
    """A run's new tokens ``ids`` must follow ``cache`` exactly in a mask of ``width``."""
    if cache.length + ids.shape[1] != width or cache.rows != len(ids):
        raise ValueError(
            f"a cache of {cache.rows} rows x {cache.length} positions, {ids.shape} new "
            f"tokens and a mask of {width} columns do not fit together"
        )


def _keep(count: int) -> np.ndarray:
    return np.array(count, dtype=np.int64)


def _logits_into(
    graph: Graph, host: tuple[str, ...], rows: int, kept: int
) -> dict[str, np.ndarray] | None:
    """A host array for the run's logits ``[rows, kept, vocab]`` when the logits are all the
    caller wants back and their vocabulary and type are known; else None."""
    info = graph.output_info.get(fmt.LOGITS)
    dtype = NUMPY_DTYPES.get(info.dtype) if info is not None else None
    if (
        host != (fmt.LOGITS,)
        or info is None
        or dtype is None
        or not isinstance(info.shape[-1], int)
    ):
        return None
    return {fmt.LOGITS: np.empty((rows, kept, info.shape[-1]), dtype=dtype)}


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
        cache: KVCache | None = None,
        position_ids: np.ndarray | None = None,
        host: tuple[str, ...] = (fmt.LOGITS,),
        keep: int = 0,
    ) -> tuple[np.ndarray, KVCache]:
        """Run ``ids`` ``[batch, n]`` after the ``cache`` (None: empty). ``mask`` ``[batch,
        past + n]`` covers the cached and the new tokens; ``position_ids`` default to
        :func:`positions` of ``mask`` (its last ``n`` columns). Returns the logits of the last
        ``keep`` positions (0: all) ``[batch, keep or n, vocab]`` and the cache after the new
        tokens (``cache`` itself, written in place, unless it had to grow)."""
        width = mask.shape[1]
        cache = self.empty_cache(len(ids), width) if cache is None else self.reserve(cache, width)
        _check_fits(cache, ids, width)
        if position_ids is None:
            position_ids = positions(mask)[:, width - ids.shape[1] :]
        inputs = {
            fmt.INPUT_IDS: ids,
            fmt.ATTENTION_MASK: mask,
            fmt.POSITION_IDS: position_ids,
            fmt.LOGITS_TO_KEEP: _keep(keep),
        }
        into = _logits_into(self.graph, host, len(ids), keep or ids.shape[1])
        out = self.graph.run(
            self._feeds(inputs), {}, host, cache.buffers, into=into, bindings=cache.bindings
        )
        cache.length = width
        return out[fmt.LOGITS], cache

    def prefill_chunks(
        self,
        ids: np.ndarray,
        mask: np.ndarray,
        chunk_tokens: int | None = None,
        max_length: int | None = None,
    ) -> Iterator[tuple[np.ndarray, KVCache] | None]:
        """Prefill the (left padded) prompts ``ids`` with their ``mask`` one run at a time:
        yields None after every run but the last, then (the last position's logits ``[batch,
        vocab]``, the cache). One run when the prompts fit in ``chunk_tokens`` columns (or no
        chunking is asked); else each row's chunks of at most ``chunk_tokens`` tokens, row by
        row (module docstring). ``max_length``: the room to allocate (default the prompts')."""
        rows, width = ids.shape
        cache = self.empty_cache(rows, max(width, max_length or 0))
        if chunk_tokens is None or width <= chunk_tokens:
            logits, cache = self.run(ids, mask, cache, keep=1)
            yield logits[:, -1, :], cache
            return
        position_ids = positions(mask)
        last = []
        on_device = []  # rows prefilled in caches of their own (device buffers have no row views)
        for row in range(rows):
            alone = self._row(cache, row)
            one = alone if alone is not None else self.empty_cache(1, width)
            for start in range(0, width, chunk_tokens):
                stop = min(width, start + chunk_tokens)
                span = slice(row, row + 1)
                out, one = self.run(
                    ids[span, start:stop],
                    mask[span, :stop],
                    one,
                    position_ids[span, start:stop],
                    keep=1,
                )
                if stop < width or row < rows - 1:
                    yield None
            last.append(out[0, -1])
            if alone is None:
                on_device.append(one)
        if on_device:  # the rows come through the host, each buffer loaded once
            for name, (_, buffer) in cache.buffers.items():
                whole = buffer.host()
                for row, one in enumerate(on_device):
                    whole[row, :, :width] = one.buffers[name][1].host()[0, :, :width]
                buffer.load(whole)
        cache.length = width
        yield np.stack(last), cache

    def prefill(
        self,
        ids: np.ndarray,
        mask: np.ndarray,
        chunk_tokens: int | None = None,
        max_length: int | None = None,
    ) -> tuple[np.ndarray, KVCache]:
        """:meth:`prefill_chunks` run to the end: the last position's logits ``[batch, vocab]``
        and the cache."""
        for result in self.prefill_chunks(ids, mask, chunk_tokens, max_length):
            if result is not None:
                return result
        raise AssertionError("prefill_chunks ends with its result")

    def step(
        self,
        tokens: np.ndarray,
        mask: np.ndarray,
        cache: KVCache,
        alive: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, KVCache]:
        """Feed one token per row after ``cache``, whose tokens ``mask`` ``[batch, past]``
        covers. ``alive`` False masks a row's token out (a finished row keeps feeding the pad
        token); its position is the count of the row's real tokens so far. Returns the logits
        ``[batch, vocab]``, the mask with the new column and the new cache."""
        position_ids = mask.sum(axis=1, keepdims=True)
        column = np.ones(len(mask), dtype=np.int64) if alive is None else alive.astype(np.int64)
        mask = np.concatenate([mask, column[:, None]], axis=1)
        ids = np.ascontiguousarray(np.asarray(tokens).reshape(-1, 1), dtype=np.int64)
        logits, cache = self.run(ids, mask, cache, position_ids, keep=1)
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
        cache: KVCache | None = None,
        host: tuple[str, ...] = (fmt.LOGITS,),
        position_ids: np.ndarray | None = None,
        keep: int = 0,
        max_length: int | None = None,
    ) -> tuple[np.ndarray, KVCache]:
        """Run decoder tokens ``ids`` ``[batch, n]`` after the ``cache`` (None: empty, with
        room for ``max_length`` positions). ``mask`` ``[batch, past + n]`` (default all ones)
        covers the cached and new tokens; the positions are ``past .. past + n - 1`` unless
        ``position_ids`` ``[batch, n]`` are given (rows whose cache is left padded, as
        continuous batching makes them). Returns the logits of the last ``keep`` positions (0:
        all) ``[batch, keep or n, vocab]`` and the cache after the new tokens."""
        batch, length = ids.shape
        past = 0 if cache is None else cache.length
        if mask is None:
            mask = np.ones((batch, past + length), dtype=np.int64)
        width = mask.shape[1]
        if cache is None:
            cache = self.empty_cache(batch, max(width, max_length or 0))
        cache = self.reserve(cache, width)
        _check_fits(cache, ids, width)
        done = width - length
        inputs = {
            fmt.INPUT_IDS: ids,
            fmt.ENCODER_ATTENTION_MASK: encoded.mask,
            fmt.ATTENTION_MASK: mask,
            fmt.POSITION_IDS: np.broadcast_to(
                np.arange(done, done + length, dtype=np.int64), (batch, length)
            ).copy()
            if position_ids is None
            else position_ids,
            fmt.LOGITS_TO_KEEP: _keep(keep),
        }
        into = _logits_into(self.graph, host, batch, keep or length)
        out = self.graph.run(
            self._feeds(inputs),
            encoded.cross,
            host,
            cache.buffers,
            into=into,
            bindings=cache.bindings,
        )
        cache.length = width
        return out[fmt.LOGITS], cache

    def step(
        self,
        tokens: np.ndarray,
        encoded: Encoded,
        mask: np.ndarray,
        cache: KVCache,
        alive: np.ndarray | None = None,
        padded: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, KVCache]:
        """Feed one decoder token per row after ``cache``, whose tokens ``mask`` ``[batch,
        past]`` covers (``alive`` False masks a finished row's token out). ``padded``: the
        rows' caches are left padded to a common width (continuous batching), so each row's
        position is the count of its real tokens, not the width. Returns the logits ``[batch,
        vocab]``, the mask with the new column and the new cache."""
        position_ids = mask.sum(axis=1, keepdims=True) if padded else None
        column = np.ones(len(mask), dtype=np.int64) if alive is None else alive.astype(np.int64)
        mask = np.concatenate([mask, column[:, None]], axis=1)
        ids = np.ascontiguousarray(np.asarray(tokens).reshape(-1, 1), dtype=np.int64)
        logits, cache = self.decode(ids, encoded, mask, cache, position_ids=position_ids, keep=1)
        return logits[:, -1, :], mask, cache


__all__ = [
    "Cache",
    "DecoderGraph",
    "Encoded",
    "EncoderGraph",
    "KVCache",
    "Seq2SeqGraphs",
    "cache_names",
    "left_padded",
    "padded",
    "positions",
    "require",
    "right_padded",
]
