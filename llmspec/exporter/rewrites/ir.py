"""What the graph rewrites share: onnx-ir helpers, saving a graph, and the rewrite types.

A rewrite (:class:`Rewrite`) is one of our passes over an exported graph in onnx-ir form: it
changes the model in place and counts the places it changed. :class:`Rewritten` is what the
rewrites of one graph did, ONNX Runtime's optimizer included, as the export reports it (the
model card's and manifest's fused-operator counts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

# The first opset with the standard Attention and RotaryEmbedding operators our fusions make.
FUSED_OPSET = 23


@dataclass(frozen=True)
class Rewrite:
    """One of our passes: ``run`` rewrites a model in place and returns how many places it
    changed; ``fuses`` names the operator those places became in the export's fusion counts
    (``None``: the pass changes a layout, it fuses nothing)."""

    run: Callable[[ir.Model], int]
    fuses: str | None
    # the operator an earlier pass fused that each of this pass's places turns into ``fuses``
    replaces: str | None = None


@dataclass
class Rewritten:
    """What rewriting one graph did: each fused operator and how many of it, non-zero only."""

    fused: dict[str, int] = field(default_factory=dict)

    def add(self, operator: str | None, count: int) -> None:
        if operator is not None and count:
            self.fused[operator] = self.fused.get(operator, 0) + count
            self.fused = dict(sorted((op, n) for op, n in self.fused.items() if n))

    def apply(self, model: ir.Model, rewrites: tuple[Rewrite, ...]) -> int:
        """Run ``rewrites`` on ``model`` in order, counting what they fuse; return how many
        places they changed in all."""
        changed = 0
        for rewrite in rewrites:
            count = rewrite.run(model)
            self.add(rewrite.fuses, count)
            self.add(rewrite.replaces, -count)
            changed += count
        return changed


def producer(value: ir.Value | None, op_type: str) -> ir.Node | None:
    """The default-domain node of type ``op_type`` that makes ``value``, or None."""
    if value is None:
        return None
    node = value.producer()
    if node is None or node.op_type != op_type or node.domain not in ("", "ai.onnx"):
        return None
    return node


def initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    """The graph's initializer ``name``, registered with ``array`` if it is new."""
    if name in graph.initializers:
        return graph.initializers[name]
    value = ir.Value(name=name, const_value=ir.tensor(array))
    value.shape, value.dtype = ir.Shape(array.shape), ir.DataType.from_numpy(array.dtype)
    graph.register_initializer(value)
    return value


def require_opset(model: ir.Model) -> None:
    """Raise the model's default-domain opset to :data:`FUSED_OPSET` if it is below."""
    version = max(model.graph.opset_imports.get("", 0), FUSED_OPSET)
    model.graph.opset_imports[""] = model.opset_imports[""] = version


def take_over(graph: ir.Graph, old: ir.Value, new: ir.Value) -> None:
    """Make ``new`` stand for ``old`` everywhere, graph outputs (and their names) included."""
    name, shape, dtype = old.name, old.shape, old.dtype
    for index, output in enumerate(graph.outputs):
        if output is old:
            graph.outputs[index] = new
    old.replace_all_uses_with(new)
    old.name = None
    new.name, new.shape = name, shape
    if dtype is not None:
        new.dtype = dtype


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """Save ``model`` at ``path`` with its weights in one ``<name>.data`` file beside it (the
    artifact's layout), replacing an older one."""
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
