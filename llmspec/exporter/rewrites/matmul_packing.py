"""Packing the MatMuls that read the same activations into one (a graph rewrite on onnx-ir).

A pre-norm layer multiplies the same normalized activations by the query, key and value
weights, and a gated feed-forward by the gate and up weights; an encoder-decoder's encoder
multiplies its last hidden states by every decoder layer's cross-attention key and value
weights. Each MatMul is a separate kernel call that, on a decode step (one row per sequence),
streams its weights from memory with a thread-pool round trip of its own. Concatenating the
weights along the output axis makes one call (``x @ [Wq | Wk | Wv]``) followed by a ``Split``:
the same bytes read once, in larger pieces, with fewer synchronizations. The result is exactly
the same numbers (each output column is the same dot product), and quantization afterwards
(per output channel for int8, per block along the input axis for int4) treats each original
column as before.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from llmspec.exporter.rewrites.ir import Rewrite, take_over


def _weight(node: ir.Node) -> np.ndarray | None:
    """The MatMul's right operand when it is a 2-D initializer."""
    value = node.inputs[1]
    if value is None or not value.is_initializer() or value.const_value is None:
        return None
    array = value.const_value.numpy()
    return array if array.ndim == 2 else None


def pack_matmuls(model: ir.Model) -> int:
    """Pack every group of MatMuls sharing their left operand and the weights' dtype and input
    size into one; return how many packed MatMuls were made."""
    graph = model.graph
    groups: dict[tuple[int, str, int], list[tuple[ir.Node, np.ndarray]]] = defaultdict(list)
    for node in graph:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or node.inputs[0] is None:
            continue
        weight = _weight(node)
        if weight is not None:
            key = (id(node.inputs[0]), str(weight.dtype), weight.shape[0])
            groups[key].append((node, weight))
    packed = [members for members in groups.values() if len(members) > 1]
    for members in packed:
        _pack(graph, members)
    if packed:
        RemoveUnusedNodesPass()(model)
    return len(packed)


def _pack(graph: ir.Graph, members: list[tuple[ir.Node, np.ndarray]]) -> None:
    first = members[0][0]
    # the packed MatMul must come after every input and before every use: the first member's
    # place works, since the shared input precedes all members and the weights are initializers
    name = f"{first.name}_packed"
    packed = np.concatenate([w for _, w in members], axis=1)
    weights = ir.Value(name=f"{name}.weight", const_value=ir.tensor(packed))
    weights.shape = ir.Shape(packed.shape)
    weights.dtype = ir.DataType.from_numpy(packed.dtype)
    graph.register_initializer(weights)
    sizes = ir.Value(
        name=f"{name}.sizes",
        const_value=ir.tensor(np.array([w.shape[1] for _, w in members], np.int64)),
    )
    sizes.shape, sizes.dtype = ir.Shape([len(members)]), ir.DataType.INT64
    graph.register_initializer(sizes)
    matmul = ir.Node("", "MatMul", [first.inputs[0], weights], name=name)
    # named and typed like every exported value: ONNX Runtime's quantizers look values up by type
    output, source = matmul.outputs[0], first.inputs[0]
    output.name, output.dtype = f"{name}_output", ir.DataType.from_numpy(packed.dtype)
    if source is not None and source.shape is not None:
        output.shape = ir.Shape([*source.shape[:-1], packed.shape[1]])
    split = ir.Node(
        "",
        "Split",
        [matmul.outputs[0], sizes],
        attributes=[ir.AttrInt64("axis", -1)],
        num_outputs=len(members),
        name=f"{name}_split",
    )
    graph.insert_before(first, matmul)
    graph.insert_before(first, split)
    for (node, _), piece in zip(members, split.outputs, strict=True):
        take_over(graph, node.outputs[0], piece)


PACK_MATMULS = Rewrite(pack_matmuls, fuses="PackedMatMul")
