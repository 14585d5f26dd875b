"""Fusing each exported rotary position embedding into one ONNX ``RotaryEmbedding`` (opset 23).

The templates rotate queries and keys as ``x * cos + rotate_half(x) * sin`` (see
``codegen/templates/positions.jinja``), with ``cos`` and ``sin`` of the angles duplicated over
both halves of the head dimension and computed once per graph from ``position_ids``. Exported,
that is six nodes for every query and key of every layer (Mul, Split, Neg, Concat, Mul, Add),
each a kernel call and an intermediate tensor. ``RotaryEmbedding`` does the same rotation (the
non-interleaved, "rotate half" form) in one kernel from the cosines and sines of the angles
themselves (``[batch, sequence, head_dim / 2]``), which the fusion computes once per graph from
the angles the template already has.

The rope knobs keep the pattern: YaRN's and LongRoPE's attention factor multiplies both tables
by one constant, which the half tables get too; scaled frequencies (static or chosen from the
length in the graph) only change how the angles are computed; partial rotary rotates a slice of
each head (``x[..., :rd]``), which is then the fused node's input, the other channels still
passing through the template's Concat.

As for attention (:mod:`llmspec.exporter.rewrites.attention`), only exactly the template's pattern
is replaced, and the export's parity gate checks the fused graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from llmspec.exporter.rewrites.ir import Rewrite, producer, require_opset, take_over


@dataclass
class _Table:
    """How a duplicated cos or sin table was made: ``f(Unsqueeze(Concat(a, a), 1))``, possibly
    multiplied by a constant scalar (YaRN's and LongRoPE's attention factor), possibly cast to
    the model's dtype."""

    angles: ir.Value  # a: (B, S, hs / 2)
    function: str  # "Cos" or "Sin"
    cast_to: int | None  # the Cast's "to", when there is one
    scale: ir.Value | None = None  # the constant scalar the table is multiplied by


def _scalar_constant(value: ir.Value | None) -> bool:
    """An initializer with a single element (produced by no node, so it may be used anywhere
    in the graph)."""
    return (
        value is not None
        and value.producer() is None
        and value.const_value is not None
        and value.const_value.size == 1
    )


def _table(value: ir.Value | None, function: str) -> _Table | None:
    cast = producer(value, "Cast")
    cast_to = None
    if cast is not None:
        cast_to = cast.attributes.get_int("to")
        value = cast.inputs[0]
    scale = None
    multiply = producer(value, "Mul")
    if multiply is not None and len(multiply.inputs) == 2:
        for trig_value, factor in (multiply.inputs, reversed(multiply.inputs)):
            if producer(trig_value, function) is not None and _scalar_constant(factor):
                value, scale = trig_value, factor
                break
        else:
            return None
    trig = producer(value, function)
    unsqueeze = producer(trig.inputs[0] if trig else None, "Unsqueeze")
    concat = producer(unsqueeze.inputs[0] if unsqueeze else None, "Concat")
    if concat is None or unsqueeze is None or len(concat.inputs) != 2:
        return None
    first, second = concat.inputs
    if first is None or first is not second or concat.attributes.get_int("axis") not in (-1, 2):
        return None
    axes = unsqueeze.inputs[1] if len(unsqueeze.inputs) > 1 else None
    if axes is None or axes.const_value is None or axes.const_value.numpy().tolist() != [1]:
        return None
    return _Table(first, function, cast_to, scale)


@dataclass
class _Rotation:
    x: ir.Value
    cos: _Table
    sin: _Table
    output: ir.Value
    anchor: ir.Node


def _other(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The input of a binary node that is not ``value``."""
    a, b = node.inputs
    return b if a is value else a if b is value else None


def _match(add: ir.Node) -> _Rotation | None:
    """``Add(Mul(x, cos), Mul(Concat(Neg(x2), x1), sin))`` with ``x1, x2 = Split(x)``."""
    if len(add.inputs) != 2:
        return None
    for straight_value, rotated_value in (add.inputs, reversed(add.inputs)):
        straight = producer(straight_value, "Mul")
        rotated = producer(rotated_value, "Mul")
        if straight is None or rotated is None:
            continue
        for half in rotated.inputs:
            concat = producer(half, "Concat")
            if concat is None or len(concat.inputs) != 2 or half is None:
                continue
            negate = producer(concat.inputs[0], "Neg")
            split = producer(negate.inputs[0] if negate else None, "Split")
            if split is None or negate is None or len(split.outputs) != 2:
                continue
            x1, x2 = split.outputs
            if concat.inputs[1] is not x1 or negate.inputs[0] is not x2:
                continue
            if len(split.inputs) > 1 and split.inputs[1] is not None:
                continue  # explicit sizes: the templates split in equal halves
            if split.attributes.get_int("axis") not in (-1, 3):
                continue
            x = split.inputs[0]
            sin_value = _other(rotated, half)
            cos_value = _other(straight, x) if x is not None else None
            cos, sin = _table(cos_value, "Cos"), _table(sin_value, "Sin")
            if x is None or cos is None or sin is None or cos.angles is not sin.angles:
                continue
            if not _same_scale(cos.scale, sin.scale):
                continue
            return _Rotation(x, cos, sin, add.outputs[0], add)
    return None


def _same_scale(a: ir.Value | None, b: ir.Value | None) -> bool:
    """Whether cos and sin are scaled alike (both not at all, or by equal constants)."""
    if a is None or b is None:
        return a is b
    assert a.const_value is not None and b.const_value is not None
    return bool(a.const_value.numpy().item() == b.const_value.numpy().item())


def fuse_rotary(model: ir.Model) -> int:
    """Replace every rotary embedding the templates produce with ``RotaryEmbedding``; return
    how many were replaced. Raises the model's default opset to 23 when any was."""
    graph = model.graph
    matches = [m for node in list(graph) if node.op_type == "Add" for m in [_match(node)] if m]
    if not matches:
        return 0
    halves: dict[tuple[int, str, int | None, int], ir.Value] = {}
    for match in matches:
        tables = []
        for table in (match.cos, match.sin):
            key = (id(table.angles), table.function, table.cast_to, id(table.scale))
            if key not in halves:
                halves[key] = _half_table(graph, table)
            tables.append(halves[key])
        fused = ir.Node(
            "", "RotaryEmbedding", [match.x, *tables], name=f"{match.anchor.name}_rotary"
        )
        graph.insert_before(match.anchor, fused)
        take_over(graph, match.output, fused.outputs[0])
    RemoveUnusedNodesPass()(model)
    require_opset(model)
    return len(matches)


def _half_table(graph: ir.Graph, table: _Table) -> ir.Value:
    """``function(angles)`` (scaled and cast like the original), right after the angles are
    computed."""
    nodes = [ir.Node("", table.function, [table.angles])]
    if table.scale is not None:
        nodes.append(ir.Node("", "Mul", [nodes[-1].outputs[0], table.scale]))
    if table.cast_to is not None:
        nodes.append(
            ir.Node(
                "", "Cast", [nodes[-1].outputs[0]], attributes=[ir.AttrInt64("to", table.cast_to)]
            )
        )
    producer = table.angles.producer()
    for node in reversed(nodes):
        if producer is None:
            graph.insert_before(next(iter(graph)), node)
        else:
            graph.insert_after(producer, node)
    output = nodes[-1].outputs[0]
    output.name = f"{table.angles.name}_{table.function.lower()}_half"
    return output


FUSE_ROTARY = Rewrite(fuse_rotary, fuses="RotaryEmbedding")
