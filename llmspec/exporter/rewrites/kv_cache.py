"""The graph contract of format 2: an in-place KV cache and the logits of the last positions only.

A generated model, exported as is, appends each step's keys and values to the cache it is given
(``present = Concat(past, new)``): ONNX Runtime then copies the whole cache into a fresh
``present`` on every step, which for a long prompt is most of a decode step's time. These two
passes turn the exported decoder graph (decoder-only, or an encoder-decoder's decoder) into the
format-2 contract, which the runtime feeds (:mod:`runtime.graphs`):

* ``past_key_values.*`` (self-attention) are buffers ``[batch, kv_heads, max_length, head_dim]``
  allocated once per batch of requests; their first ``past`` columns hold the cache (left padded
  as before, so every row's tokens end at the same column). The graph writes the new positions'
  keys and values at columns ``past .. past + seq - 1`` and outputs the buffer itself as
  ``present.*``: the runtime binds both to the same memory (IOBinding, on the CPU too), so the
  write is in place and nothing is copied. ``attention_mask`` ``[batch, past + seq]`` still says
  how many columns are used (its width) and which are padding.
* Each fused attention (:mod:`~llmspec.exporter.rewrites.attention`; one still in the
  heads-first layout, as with QK-norm, through transposes) becomes ONNX Runtime's
  ``GroupQueryAttention`` (contrib domain) with its past and present on the shared buffer, the
  lengths as inputs (every row's total length ``past + seq``, derived from the mask's width), and
  the fused node's additive mask (padding, sliding window) as its ``attention_bias``. ONNX
  Runtime has it for float32 and float16 on the CPU and for float16 and bfloat16 on CUDA, which
  is where each precision runs (bf16 is CUDA-only; an fp32 graph on CUDA would run these nodes
  on the CPU: export fp16 for a GPU). Attention that did not fuse (T5's and ALiBi's position
  biases) writes with the standard ``TensorScatter`` (opset 24, in place when past and present
  share memory) and reads the used columns with a ``Slice``: correct, only slower.
* ``logits_to_keep`` (int64 scalar) selects the positions whose logits are computed: the last
  ``logits_to_keep``, or all of them for 0 (transformers' convention). Prefill asks for 1, so
  the vocabulary projection runs for one position per row instead of every prompt token;
  ``llmspec eval`` asks for 0. The selection sits on the output projection's input, before any
  quantization of it, so a quantized projection sees exactly the rows it multiplies.

A ``Shape`` taken of a past input (T5's bias counts the cached positions) is answered with the
cache's shape, ``past`` and not ``max_length``; a past input read by anything else would read
the buffer instead of the cache, so the export fails naming the node (:class:`ContractError`)
rather than producing a graph that is wrong. The export's parity gate and ``llmspec verify`` then
run the result through the runtime's own feeder.
"""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from llmspec.exporter.graphs import ExportError
from llmspec.exporter.rewrites.ir import Rewrite, initializer, take_over
from runtime import artifact as fmt

CONTRIB = "com.microsoft"
# The first opset with TensorScatter (the in-place write of caches GroupQueryAttention cannot hold).
SCATTER_OPSET = 24
# The element types ONNX Runtime's GroupQueryAttention kernels take: float32 and float16 on the
# CPU, float16 and bfloat16 on CUDA (the only provider that runs bf16 graphs).
_GQA_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
_SELF_CACHE = re.compile(r"past_key_values\.\d+\.(?:decoder\.)?(?:key|value)")
# Position-wise operators between the output projection and ``logits`` (a soft cap, a cast).
_POSITIONWISE = ("Cast", "Tanh", "Mul", "Div", "Add")
_PROJECTIONS = ("MatMul", "MatMulNBits", "Gemm")
# The symbolic length of ``logits``: the positions logits_to_keep selects.
KEPT = "kept"
# In the names of the Shape nodes that read a buffer's batch, head and head-size axes.
_OTHER_AXES = "kv_cache_other_axes"


class ContractError(ExportError):
    """The exported graph does not have the shape the format-2 contract is built from (a bug
    in llmspec's templates or rewrites, not in a spec)."""


def _self_pasts(graph: ir.Graph) -> dict[str, ir.Value]:
    return {v.name: v for v in graph.inputs if v.name and _SELF_CACHE.fullmatch(v.name)}


def _input(graph: ir.Graph, name: str) -> ir.Value:
    for value in graph.inputs:
        if value.name == name:
            return value
    raise ContractError(f"the graph has no input {name}")


class _Lengths:
    """The length inputs every cache writer shares, built once at the top of the graph from
    ``attention_mask`` (its width is the used length ``past + seq``) and ``input_ids``."""

    def __init__(self, graph: ir.Graph) -> None:
        first = next(iter(graph))
        mask, ids = _input(graph, fmt.ATTENTION_MASK), _input(graph, fmt.INPUT_IDS)
        one = initializer(graph, "kv_cache_one", np.ones(1, np.int64))
        self._nodes: list[ir.Node] = []

        def add(op: str, inputs: list[ir.Value], dtype: ir.DataType, **attrs: int) -> ir.Value:
            node = ir.Node(
                "",
                op,
                inputs,
                attributes=[ir.AttrInt64(key, value) for key, value in attrs.items()],
                name=f"kv_cache_{op.lower()}_{len(self._nodes)}",
            )
            node.outputs[0].dtype = dtype
            self._nodes.append(node)
            graph.insert_before(first, node)
            return node.outputs[0]

        i64, i32 = ir.DataType.INT64, ir.DataType.INT32
        total = add("Shape", [mask], i64, start=1, end=2)  # (1,) past + seq
        batch = add("Shape", [ids], i64, start=0, end=1)  # (1,)
        new = add("Shape", [ids], i64, start=1, end=2)  # (1,) seq
        self.total64 = total
        # GroupQueryAttention: seqlens_k (B,) = total - 1 for every row (the rows are left
        # padded to one width; the additive mask hides the padding), total_sequence_length a
        # scalar.
        last = add("Sub", [total, one], i64)
        self.seqlens = add("Expand", [add("Cast", [last], i32, to=i32.value), batch], i32)
        scalar = add("Squeeze", [total], i64)
        self.total32 = add("Cast", [scalar], i32, to=i32.value)
        # TensorScatter: the column each row's new positions start at, past = total - seq.
        self.past = add("Sub", [total, new], i64)  # (1,)
        self.write = add("Expand", [self.past, batch], i64)


def _static_heads(node: ir.Node) -> tuple[int, int] | None:
    """(query heads, key/value heads) of a fused ``Attention``: its attributes in the
    (B, S, heads * hs) layout, else its 4-D inputs' static head axes, else None."""
    if "q_num_heads" in node.attributes:
        return node.attributes.get_int("q_num_heads"), node.attributes.get_int("kv_num_heads")
    query, key = node.inputs[0], node.inputs[1]
    heads = [v.shape[1] if v is not None and v.shape is not None else None for v in (query, key)]
    if all(isinstance(h, int) for h in heads) and all(
        v is not None and v.shape is not None and len(v.shape) == 4 for v in (query, key)
    ):
        return heads[0], heads[1]  # type: ignore[return-value]
    return None


def _sequence_major(graph: ir.Graph, value: ir.Value, before: ir.Node) -> ir.Value:
    """(B, heads, S, hs) -> (B, S, heads * hs), GroupQueryAttention's layout."""
    transpose = ir.Node("", "Transpose", [value], attributes=[ir.AttrInt64s("perm", [0, 2, 1, 3])])
    shape = initializer(graph, "kv_cache_merge", np.array([0, 0, -1], np.int64))
    merge = ir.Node("", "Reshape", [transpose.outputs[0], shape])
    for created in (transpose, merge):
        if value.dtype is not None:
            created.outputs[0].dtype = value.dtype
        graph.insert_before(before, created)
    return merge.outputs[0]


def _gqa(graph: ir.Graph, node: ir.Node, lengths: _Lengths, heads: tuple[int, int]) -> ir.Node:
    """``node`` as GroupQueryAttention on the shared buffer; an ``Attention`` still in the
    (B, heads, S, hs) layout (QK-norm, partial rotary) gets transposes around it, which cost
    far less than a copy of the cache."""
    attrs = node.attributes
    query, key, value, bias, past_key, past_value = node.inputs[:6]
    assert query is not None and key is not None and value is not None
    four_d = "q_num_heads" not in attrs
    if four_d:
        query, key, value = (_sequence_major(graph, v, node) for v in (query, key, value))
    fused = ir.Node(
        CONTRIB,
        "GroupQueryAttention",
        # cos/sin caches and position ids unused: rotary runs before (RotaryEmbedding)
        [
            query,
            key,
            value,
            past_key,
            past_value,
            lengths.seqlens,
            lengths.total32,
            None,
            None,
            None,
            bias,
        ],
        attributes=[
            ir.AttrInt64("num_heads", heads[0]),
            ir.AttrInt64("kv_num_heads", heads[1]),
            ir.AttrFloat32("scale", attrs.get_float("scale", 0.0)),
            *(
                [ir.AttrFloat32("softcap", attrs.get_float("softcap"))]
                if "softcap" in attrs
                else []
            ),
        ],
        num_outputs=3,
        name=f"{node.name}_gqa",
    )
    graph.insert_before(node, fused)
    output = fused.outputs[0]
    if four_d:  # back to (B, heads, S, hs) for the nodes after
        output = _heads_first(graph, output, heads[0], node)
    take_over(graph, node.outputs[0], output)
    for old, new in zip(node.outputs[1:], fused.outputs[1:], strict=True):
        take_over(graph, old, new)
    return fused


def _scatter(
    graph: ir.Graph, past: ir.Value, new: ir.Value, lengths: _Lengths, before: ir.Node
) -> tuple[ir.Value, ir.Value]:
    """(present, used): ``new`` (B, kv, seq, hs) written into the buffer ``past`` at each row's
    past length, and the buffer's used columns ``[:, :, :past + seq]``."""
    write = ir.Node(
        "",
        "TensorScatter",
        [past, new, lengths.write],
        attributes=[ir.AttrInt64("axis", 2)],
        name=f"{past.name}_write",
    )
    zero = initializer(graph, "kv_cache_zero", np.zeros(1, np.int64))
    axis = initializer(graph, "kv_cache_axis", np.full(1, 2, np.int64))
    used = ir.Node("", "Slice", [write.outputs[0], zero, lengths.total64, axis])
    for created in (write, used):
        if past.dtype is not None:
            created.outputs[0].dtype = past.dtype
        graph.insert_before(before, created)
    write.outputs[0].shape = past.shape
    return write.outputs[0], used.outputs[0]


def _heads_first(graph: ir.Graph, flat: ir.Value, heads: int, before: ir.Node) -> ir.Value:
    """(B, S, heads * hs) -> (B, heads, S, hs)."""
    shape = initializer(graph, f"kv_cache_split_{heads}", np.array([0, 0, heads, -1], np.int64))
    split = ir.Node("", "Reshape", [flat, shape])
    transpose = ir.Node(
        "", "Transpose", [split.outputs[0]], attributes=[ir.AttrInt64s("perm", [0, 2, 1, 3])]
    )
    for node in (split, transpose):
        if flat.dtype is not None:
            node.outputs[0].dtype = flat.dtype
        graph.insert_before(before, node)
    return transpose.outputs[0]


def _scattered_attention(graph: ir.Graph, node: ir.Node, lengths: _Lengths) -> None:
    """A fused ``Attention`` with a past, rewritten to write its new keys and values with
    ``TensorScatter`` and attend over the used columns (no past inputs of its own)."""
    query, key, value, mask, past_key, past_value = node.inputs[:6]
    assert key is not None and value is not None and past_key is not None and past_value is not None
    sequence_major = "q_num_heads" in node.attributes
    if sequence_major:
        kv_heads = node.attributes.get_int("kv_num_heads")
        key = _heads_first(graph, key, kv_heads, node)
        value = _heads_first(graph, value, kv_heads, node)
        query = _heads_first(graph, query, node.attributes.get_int("q_num_heads"), node)  # type: ignore[arg-type]
    present_key, used_key = _scatter(graph, past_key, key, lengths, node)
    present_value, used_value = _scatter(graph, past_value, value, lengths, node)
    attributes = [
        a for name, a in node.attributes.items() if name not in ("q_num_heads", "kv_num_heads")
    ]
    attend = ir.Node(
        "",
        "Attention",
        [query, used_key, used_value, mask],
        attributes=attributes,
        name=f"{node.name}_scattered",
    )
    graph.insert_before(node, attend)
    output = attend.outputs[0]
    if sequence_major:  # back to (B, S, heads * hs)
        output = _sequence_major(graph, output, node)
    take_over(graph, node.outputs[0], output)
    take_over(graph, node.outputs[1], present_key)
    take_over(graph, node.outputs[2], present_value)


def use_in_place_cache(model: ir.Model) -> int:
    """Rewrite every write to a self-attention cache for the in-place contract (module
    docstring); return how many attentions became ``GroupQueryAttention``. A graph without
    self-attention caches (an encoder) is left as it is."""
    graph = model.graph
    pasts = _self_pasts(graph)
    if not pasts:
        return 0
    lengths = _Lengths(graph)
    fused = scattered = 0
    for node in list(graph):
        past = node.inputs[4] if len(node.inputs) >= 6 else None
        if node.op_type == "Attention" and past is not None and past.name in pasts:
            heads = _static_heads(node)
            if heads is not None and past.dtype in _GQA_TYPES:
                _gqa(graph, node, lengths, heads)
                fused += 1
            else:
                _scattered_attention(graph, node, lengths)
                scattered += 1
            continue
        if node.op_type == "Concat" and len(node.inputs) == 2:
            old, new = node.inputs
            if (
                old is not None
                and new is not None
                and old.name in pasts
                and node.attributes.get_int("axis") == 2
            ):
                present, used = _scatter(graph, old, new, lengths, node)
                concat = node.outputs[0]
                name = concat.name
                for index, out in enumerate(graph.outputs):
                    if out is concat:
                        graph.outputs[index] = present
                concat.replace_all_uses_with(used)
                concat.name = None
                present.name = name
                scattered += 1
    for node in list(graph):
        if node.op_type == "Shape" and node.inputs[0] is not None and node.inputs[0].name in pasts:
            _cache_shape(graph, node, lengths)
    RemoveUnusedNodesPass()(model)
    for value in pasts.values():
        for user, _ in value.uses():
            if user.op_type in ("GroupQueryAttention", "TensorScatter"):
                continue
            if user.op_type != "Shape" or _OTHER_AXES not in (user.name or ""):
                raise ContractError(
                    f"{value.name} is also read by {user.op_type} node {user.name!r}: the "
                    "in-place cache would give it the buffer instead of the cache"
                )
        _rename_length(value)
    for value in graph.outputs:
        if value.name and value.name.startswith("present.") and ".encoder." not in value.name:
            _rename_length(value)
    if fused:
        model.opset_imports[CONTRIB] = model.graph.opset_imports[CONTRIB] = 1
    if scattered:
        version = max(model.graph.opset_imports.get("", 0), SCATTER_OPSET)
        model.graph.opset_imports[""] = model.opset_imports[""] = version
    return fused


def _cache_shape(graph: ir.Graph, node: ir.Node, lengths: _Lengths) -> None:
    """A ``Shape`` of a past input (T5's position bias counts the past keys) answered with the
    cache's shape, ``[batch, kv, past, hs]``, not the buffer's ``max_length``."""
    buffer = node.inputs[0]
    assert buffer is not None
    i64 = ir.DataType.INT64
    head, tail = (
        ir.Node(
            "",
            "Shape",
            [buffer],
            attributes=[ir.AttrInt64("start", start), ir.AttrInt64("end", end)],
            name=f"{buffer.name}_{_OTHER_AXES}_{start}",
        )
        for start, end in ((0, 2), (3, 4))
    )
    whole = ir.Node(
        "",
        "Concat",
        [head.outputs[0], lengths.past, tail.outputs[0]],
        attributes=[ir.AttrInt64("axis", 0)],
    )
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", 4)
    bounds = [
        initializer(graph, f"kv_cache_shape_{what}_{value}", np.array([value], np.int64))
        for what, value in (("start", start), ("end", end))
    ]
    part = ir.Node("", "Slice", [whole.outputs[0], *bounds])
    for created in (head, tail, whole, part):
        created.outputs[0].dtype = i64
        graph.insert_before(node, created)
    take_over(graph, node.outputs[0], part.outputs[0])


def _rename_length(value: ir.Value) -> None:
    shape = value.shape
    if shape is not None and len(shape) == 4:
        value.shape = ir.Shape([shape[0], shape[1], fmt.MAX_LENGTH, shape[3]])


def select_logits(model: ir.Model) -> int:
    """Add the ``logits_to_keep`` input and compute the output projection for the last
    ``logits_to_keep`` positions only (0: all). Returns 1, or 0 for a graph without a
    self-attention cache (an encoder, whose callers want every position)."""
    graph = model.graph
    if not _self_pasts(graph):
        return 0
    logits = next((v for v in graph.outputs if v.name == fmt.LOGITS), None)
    node = logits.producer() if logits is not None else None
    while node is not None and node.op_type in _POSITIONWISE:
        node = node.inputs[0].producer() if node.inputs[0] is not None else None
    if node is None or node.op_type not in _PROJECTIONS or node.inputs[0] is None:
        raise ContractError("no output projection found before logits")
    hidden = node.inputs[0]
    keep = ir.Value(
        name=fmt.LOGITS_TO_KEEP, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.INT64)
    )
    graph.inputs.append(keep)
    shape = initializer(graph, "logits_to_keep_shape", np.ones(1, np.int64))
    end = initializer(graph, "logits_to_keep_end", np.array([np.iinfo(np.int64).max], np.int64))
    axis = initializer(graph, "logits_to_keep_axis", np.ones(1, np.int64))
    negate = ir.Node("", "Neg", [keep])
    start = ir.Node("", "Reshape", [negate.outputs[0], shape])
    kept = ir.Node("", "Slice", [hidden, start.outputs[0], end, axis], name="logits_to_keep")
    if hidden.dtype is not None:
        kept.outputs[0].dtype = hidden.dtype
    for created in (negate, start, kept):
        graph.insert_before(node, created)
    node.replace_input_with(0, kept.outputs[0])
    assert logits is not None
    if logits.shape is not None and len(logits.shape) == 3:
        logits.shape = ir.Shape([logits.shape[0], KEPT, logits.shape[2]])
    return 1


IN_PLACE_CACHE = Rewrite(use_in_place_cache, fuses="GroupQueryAttention", replaces="Attention")
SELECT_LOGITS = Rewrite(select_logits, fuses=None)
