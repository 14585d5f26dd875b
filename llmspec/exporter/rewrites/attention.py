"""Fusing each exported attention sub-graph into one ONNX ``Attention`` node (opset 23).

The generated models spell attention out (see ``codegen/templates/attention.jinja``): append the
new keys and values to the cache, repeat key/value heads for grouped-query attention, scale
``q @ k^T``, replace masked scores with the dtype's minimum, softmax, multiply by the values.
Exported as is, that is a dozen nodes per layer, and on every decode step ONNX Runtime
materializes the repeated keys and values (``nh / nkv`` copies of the whole cache), the score
tensor four times and the concatenated cache. The standard ``Attention`` operator (ONNX opset
23) does all of it in one kernel on CPU and CUDA: grouped heads without copies, the boolean
mask, the past and present cache of the graph contract (``[batch, kv_heads, length,
head_dim]``, present = past followed by the new positions).

The attention knobs fuse too: a sliding window (Mistral, Gemma's local layers) is a banded
boolean mask, computed once per graph from the attention mask and shapes, so a windowed layer
is the same pattern with another mask; an explicit score scale is the node's ``scale``; logit
soft-capping, ``tanh(scores / cap) * cap`` before the mask, is the node's ``softcap`` (applied
by the ONNX definition between the scaled product and the mask, as Gemma 2); QK-norm and q/k/v
biases act before the pattern, on the node's inputs.

The pass is a pattern match on the exported graph, not on the model: a sub-graph is replaced
only when every piece is exactly what the templates produce, and anything else (ALiBi or T5
position biases added to the scores, unknown shapes) is left alone and still runs correctly,
only slower. The export parity gate runs on the fused graph, so a fusion that changed the
numbers fails the export.

Masked positions: by the ONNX definition, ``Attention`` adds ``-inf`` where a boolean mask is
False, so a query whose keys are all masked (a left-padding position) would produce NaN, which
would then flow into the cache and, multiplied by a zero weight, into real positions (ONNX
Runtime's CPU kernel happens to use the lowest float instead, other backends need not). The
fused node is therefore given an additive float mask holding the dtype's lowest value where the
boolean mask is False, computed once per graph: every row stays finite on every backend, and
padding queries attend uniformly, as with the template's ``masked_fill``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnx_ir.convenience import get_const_tensor
from onnx_ir.passes.common import RemoveUnusedNodesPass

from llmspec.exporter.rewrites.ir import (
    Rewrite,
    initializer,
    producer,
    require_opset,
    take_over,
)


@dataclass
class _Match:
    """One attention sub-graph, by the values the fused node needs and the ones it replaces."""

    query: ir.Value
    key: ir.Value  # the new keys, (B, kv_heads, S, hs)
    value: ir.Value
    past_key: ir.Value | None
    past_value: ir.Value | None
    present_key: ir.Value | None  # the Concat outputs the fused node takes over
    present_value: ir.Value | None
    mask: ir.Value  # bool, True where a query may see a key
    scale: float
    softcap: float | None  # scores = softcap * tanh(scores / softcap), before the mask
    output: ir.Value  # probs @ v, (B, heads, S, hs)
    anchor: ir.Node  # the last node of the sub-graph: the fused node goes before it
    sequence_major_keys: bool = False  # key is (B, S, kv, hs): transposed for the fused node


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    tensor = get_const_tensor(value)
    return None if tensor is None else tensor.numpy()


def _ints(node: ir.Node, name: str) -> tuple[int, ...] | None:
    attribute = node.attributes.get(name)
    return None if attribute is None else tuple(attribute.as_ints())


def _skip_cast(value: ir.Value | None) -> ir.Value | None:
    """The input of a Cast (the templates' softmax runs in float32), or the value itself."""
    node = producer(value, "Cast")
    return node.inputs[0] if node is not None else value


def _unrepeat(value: ir.Value | None) -> ir.Value | None:
    """The key/value heads before ``repeat_interleave`` over the head axis, or the value itself.

    torch exports ``x.repeat_interleave(r, dim=1)`` on (B, kv, T, hs) as
    ``Reshape(Expand(Unsqueeze(x, 2), ...), (B, kv * r, T, hs))``: each key/value head is
    repeated for consecutive query heads, which is the head grouping of ``Attention``."""
    reshape = producer(value, "Reshape")
    expand = producer(reshape.inputs[0] if reshape else None, "Expand")
    unsqueeze = producer(expand.inputs[0] if expand else None, "Unsqueeze")
    if unsqueeze is None:
        return value
    axes = _constant(unsqueeze.inputs[1]) if len(unsqueeze.inputs) > 1 else None
    if axes is None or axes.reshape(-1).tolist() != [2]:
        return None  # some other broadcast: not ours to fuse
    return unsqueeze.inputs[0]


def _split_cache(value: ir.Value | None) -> tuple[ir.Value, ir.Value | None, ir.Value | None]:
    """(new, past, present) for keys or values: ``present = Concat(past, new, axis=2)`` when a
    cache is appended to, else the value is the new keys or values themselves."""
    concat = producer(value, "Concat")
    assert value is not None
    if concat is not None and len(concat.inputs) == 2 and concat.attributes.get_int("axis") == 2:
        past, new = concat.inputs
        if past is not None and past.is_graph_input() and new is not None:
            return new, past, value
    return value, None, None


def _match(softmax: ir.Node) -> _Match | None:
    """The attention sub-graph around ``softmax``, or None where it is not exactly ours."""
    if softmax.attributes.get_int("axis", -1) not in (-1, 3):
        return None
    probs = softmax.outputs[0]
    consumers = [node for node, _ in probs.uses()]
    cast_back = consumers[0] if len(consumers) == 1 and consumers[0].op_type == "Cast" else None
    if cast_back is not None:
        probs = cast_back.outputs[0]
        consumers = [node for node, _ in probs.uses()]
    if (
        len(consumers) != 1
        or consumers[0].op_type != "MatMul"
        or consumers[0].inputs[0] is not probs
    ):
        return None
    weighted = consumers[0]
    where = producer(_skip_cast(softmax.inputs[0]), "Where")
    if where is None:
        return None
    negated = producer(where.inputs[0], "Not")
    fill = _constant(where.inputs[1])
    if negated is None or fill is None or fill.size != 1:
        return None
    scores, softcap = _uncapped(where.inputs[2])
    if scores is None:
        return None
    scale = 1.0
    multiply = producer(scores, "Mul")
    if multiply is not None:
        factor = _constant(multiply.inputs[1])
        if factor is None or factor.size != 1:
            return None
        scale, scores = float(factor.reshape(-1)[0]), multiply.inputs[0]
    product = producer(scores, "MatMul")
    transpose = producer(product.inputs[1] if product else None, "Transpose")
    if product is None or transpose is None:
        return None
    perm = _ints(transpose, "perm")
    # the encoder form, where ONNX Runtime's optimizer merged the keys' two transposes,
    # (B, S, kv, hs) -> (B, kv, hs, S): the fused node gets the keys from a new Transpose to
    # (B, kv, S, hs); no cache is appended to there (checked below: values without a past)
    sequence_major_keys = perm == (0, 2, 3, 1)
    if sequence_major_keys:
        keys = transpose.inputs[0]
    elif perm == (0, 1, 3, 2):
        keys = _unrepeat(transpose.inputs[0])
    else:
        return None
    values = _unrepeat(weighted.inputs[1])
    if keys is None or values is None or product.inputs[0] is None:
        return None
    key, past_key, present_key = _split_cache(keys)
    value, past_value, present_value = _split_cache(values)
    if (past_key is None) != (past_value is None):
        return None
    mask = negated.inputs[0]
    if mask is None or mask.dtype != ir.DataType.BOOL:
        return None
    return _Match(
        query=product.inputs[0],
        key=key,
        value=value,
        past_key=past_key,
        past_value=past_value,
        present_key=present_key,
        present_value=present_value,
        mask=mask,
        scale=scale,
        softcap=softcap,
        output=weighted.outputs[0],
        anchor=weighted,
        sequence_major_keys=sequence_major_keys,
    )


def _uncapped(scores: ir.Value | None) -> tuple[ir.Value | None, float | None]:
    """(the scores before soft-capping, the cap) when ``scores`` is the templates'
    ``tanh(x / cap) * cap`` (a bare ``tanh(x)`` when the exporter dropped a cap of 1); (scores,
    None) when they are not capped; (None, None) when the pattern holds something else
    (unequal constants), which is not ours to fuse."""
    tanh = producer(scores, "Tanh")
    if tanh is not None:
        return tanh.inputs[0], 1.0
    capped = producer(scores, "Mul")
    tanh = producer(capped.inputs[0] if capped is not None else None, "Tanh")
    if capped is None or tanh is None:
        return scores, None
    outer = _scalar(capped.inputs[1])
    divide = producer(tanh.inputs[0], "Div")
    inner = _scalar(divide.inputs[1]) if divide is not None else None
    if divide is None or outer is None or inner is None or outer != inner:
        return None, None
    return divide.inputs[0], outer


def _scalar(value: ir.Value | None) -> float | None:
    """The value of a one-element constant, or None."""
    array = _constant(value)
    return None if array is None or array.size != 1 else float(array.reshape(-1)[0])


def _lowest(dtype: ir.DataType) -> float:
    return float(np.finfo(dtype.numpy()).min)


def fuse_attention(model: ir.Model) -> int:
    """Replace every attention sub-graph the templates produce with one ``Attention`` node;
    return how many were replaced. Raises the model's default opset to 23 when any was."""
    graph = model.graph
    matches = [m for node in list(graph) if node.op_type == "Softmax" for m in [_match(node)] if m]
    if not matches:
        return 0
    additive: dict[tuple[str, ir.DataType], ir.Value] = {}
    for match in matches:
        dtype = match.output.dtype
        assert dtype is not None
        bias = additive.get((match.mask.name or "", dtype))
        if bias is None:
            bias = _additive_mask(graph, match.mask, dtype)
            additive[(match.mask.name or "", dtype)] = bias
        if _broadcasts_over_queries(match.mask):
            bias = _expand_over_queries(graph, bias, match.query, match.anchor)
        key = match.key
        if match.sequence_major_keys:
            heads_first = ir.Node(
                "", "Transpose", [key], attributes=[ir.AttrInt64s("perm", [0, 2, 1, 3])]
            )
            graph.insert_before(match.anchor, heads_first)
            key = heads_first.outputs[0]
        inputs: Sequence[ir.Value | None] = [match.query, key, match.value, bias]
        if match.past_key is not None:
            inputs = [*inputs, match.past_key, match.past_value]
        fused = ir.Node(
            "",
            "Attention",
            inputs,
            attributes=[
                ir.AttrFloat32("scale", match.scale),
                *([ir.AttrFloat32("softcap", match.softcap)] if match.softcap else []),
            ],
            num_outputs=3 if match.past_key is not None else 1,
            name=f"{match.anchor.name}_attention",
        )
        graph.insert_before(match.anchor, fused)
        take_over(graph, match.output, fused.outputs[0])
        if match.present_key is not None and match.present_value is not None:
            take_over(graph, match.present_key, fused.outputs[1])
            take_over(graph, match.present_value, fused.outputs[2])
    RemoveUnusedNodesPass()(model)
    require_opset(model)
    return len(matches)


def _additive_mask(graph: ir.Graph, mask: ir.Value, dtype: ir.DataType) -> ir.Value:
    """``Where(mask, 0, lowest)`` in ``dtype``, inserted right after the mask is produced."""
    zero = initializer(graph, f"{mask.name}_zero", np.zeros((), dtype.numpy()))
    lowest = initializer(graph, f"{mask.name}_lowest", np.array(_lowest(dtype), dtype.numpy()))
    node = ir.Node("", "Where", [mask, zero, lowest], name=f"{mask.name}_additive")
    node.outputs[0].name = f"{mask.name}_additive"
    node.outputs[0].dtype = dtype
    producer = mask.producer()
    if producer is None:
        graph.insert_before(next(iter(graph)), node)
    else:
        graph.insert_after(producer, node)
    return node.outputs[0]


def _broadcasts_over_queries(mask: ir.Value) -> bool:
    """Whether the mask is (B, 1, 1, S), one row for every query (padding only)."""
    shape = mask.shape
    return shape is not None and len(shape) == 4 and shape[2] == 1


def _expand_over_queries(
    graph: ir.Graph, bias: ir.Value, query: ir.Value, anchor: ir.Node
) -> ir.Value:
    """``bias`` expanded to one row per query: ``Attention`` does not broadcast the mask's query
    axis (ONNX Runtime 1.31 checks that it equals the query length)."""
    ones = initializer(graph, "attention_fusion_ones", np.ones(2, np.int64))
    one = initializer(graph, "attention_fusion_one", np.ones(1, np.int64))
    queries = ir.Node(
        "", "Shape", [query], attributes=[ir.AttrInt64("start", 2), ir.AttrInt64("end", 3)]
    )
    target = ir.Node(
        "", "Concat", [ones, queries.outputs[0], one], attributes=[ir.AttrInt64("axis", 0)]
    )
    expand = ir.Node("", "Expand", [bias, target.outputs[0]])
    if bias.dtype is not None:
        expand.outputs[0].dtype = bias.dtype
    for node in (queries, target, expand):
        graph.insert_before(anchor, node)
    return expand.outputs[0]


def _heads_split(value: ir.Value | None) -> tuple[ir.Value, int] | None:
    """``(x, heads)`` when ``value`` is ``Transpose(Reshape(x, (B, S, heads, hs)), (0, 2, 1, 3))``
    with x of shape (B, S, heads * hs), the templates' split into heads."""
    transpose = producer(value, "Transpose")
    if transpose is None or _ints(transpose, "perm") != (0, 2, 1, 3):
        return None
    reshape = producer(transpose.inputs[0], "Reshape")
    if reshape is None or reshape.inputs[0] is None:
        return None
    split, flat = reshape.outputs[0].shape, reshape.inputs[0].shape
    if split is None or flat is None or len(split) != 4 or len(flat) != 3:
        return None
    heads, size = split[2], split[3]
    if not isinstance(heads, int) or not isinstance(size, int) or flat[2] != heads * size:
        return None
    return reshape.inputs[0], heads


def _rotated_split(value: ir.Value | None) -> tuple[ir.Value, int, ir.Node | None] | None:
    """Like :func:`_heads_split`, also through a ``RotaryEmbedding`` applied after the split."""
    rotary = producer(value, "RotaryEmbedding")
    found = _heads_split(rotary.inputs[0] if rotary is not None else value)
    if found is None:
        return None
    return found[0], found[1], rotary


def use_sequence_major_layout(model: ir.Model) -> int:
    """Feed fused ``Attention`` nodes (see :func:`fuse_attention`) queries, keys and values as
    (B, S, heads * hs), as the projections make them, instead of split into heads and
    transposed, and take their output in that layout too: ``Attention`` and
    ``RotaryEmbedding`` accept it (given the head counts), so the reshapes and transposes
    around every attention go. The cache stays (B, kv_heads, T, hs), the graph contract's
    layout. Returns how many attentions changed."""
    graph = model.graph
    changed = 0
    for node in list(graph):
        if node.op_type != "Attention" or node.domain not in ("", "ai.onnx"):
            continue
        pieces = [_rotated_split(value) for value in node.inputs[:3]]
        output = node.outputs[0]
        users = [user for user, _ in output.uses()]
        if any(piece is None for piece in pieces) or len(users) != 1:
            continue
        merge = users[0]
        if merge.op_type != "Transpose" or _ints(merge, "perm") != (0, 2, 1, 3):
            continue
        flat_users = [user for user, _ in merge.outputs[0].uses()]
        if len(flat_users) != 1 or flat_users[0].op_type != "Reshape":
            continue
        reshape = flat_users[0]
        (query, heads, query_rotary), (key, kv_heads, key_rotary), (value, _, value_rotary) = [
            piece for piece in pieces if piece is not None
        ]
        if value_rotary is not None or (query_rotary is None) != (key_rotary is None):
            continue
        if query_rotary is not None and key_rotary is not None:
            query = _rotate_flat(graph, query_rotary, query, heads, node)
            key = _rotate_flat(graph, key_rotary, key, kv_heads, node)
        fused = ir.Node(
            "",
            "Attention",
            [query, key, value, *node.inputs[3:]],
            attributes=[
                *node.attributes.values(),
                ir.AttrInt64("q_num_heads", heads),
                ir.AttrInt64("kv_num_heads", kv_heads),
            ],
            num_outputs=len(node.outputs),
            name=f"{node.name}_bsh",
        )
        graph.insert_before(node, fused)
        take_over(graph, reshape.outputs[0], fused.outputs[0])
        for old, new in zip(node.outputs[1:], fused.outputs[1:], strict=True):
            take_over(graph, old, new)
        changed += 1
    if changed:
        RemoveUnusedNodesPass()(model)
    return changed


def _rotate_flat(
    graph: ir.Graph, rotary: ir.Node, flat: ir.Value, heads: int, before: ir.Node
) -> ir.Value:
    """``RotaryEmbedding`` of the (B, S, heads * hs) values, with the tables of ``rotary``."""
    node = ir.Node(
        "",
        "RotaryEmbedding",
        [flat, *rotary.inputs[1:]],
        attributes=[*rotary.attributes.values(), ir.AttrInt64("num_heads", heads)],
        name=f"{rotary.name}_bsh",
    )
    graph.insert_before(before, node)
    return node.outputs[0]


FUSE_ATTENTION = Rewrite(fuse_attention, fuses="Attention")
SEQUENCE_MAJOR = Rewrite(use_sequence_major_layout, fuses=None)
