"""Weight quantization of exported graphs with ONNX Runtime's own tools.

* int8: dynamic quantization of the MatMul weights (per output channel, symmetric int8;
  activations quantized on the fly), ``onnxruntime.quantization.quantize_dynamic``.
* int4: weight-only block quantization into ``MatMulNBits`` (symmetric, blocks of
  ``precision.block_size`` along the input dimension), which ONNX Runtime runs on CPU and CUDA.

Both only quantize a MatMul whose weight is a stored tensor. A tied output projection reads the
token embedding through a Transpose at run time, so it is untied first (:func:`untie_output`): a
transposed copy becomes the projection's own weight and is quantized, or it would stay fp32 and be
transposed at every step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from llmspec.exporter.rewrites.ir import save_graph


def untie_output(path: Path) -> int:
    """Give every ``MatMul(x, Transpose(W))`` with a stored ``W`` its own transposed weight.

    Returns how many were untied. The graph is rewritten in place (weights in ``<file>.data``).
    """
    model = onnx.load(
        str(path),
        load_external_data=True,
    )
    graph = model.graph
    stored = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    untied = 0
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        source = producers.get(node.input[1])
        if source is None or source.op_type != "Transpose" or source.input[0] not in stored:
            continue
        weight = numpy_helper.to_array(stored[source.input[0]])
        if weight.ndim != 2:
            continue
        name = f"{source.input[0]}.untied_transpose"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), name))
        node.input[1] = name
        untied += 1
    if untied:
        used = {name for node in graph.node for name in node.input}
        kept = [
            node for node in graph.node if node.op_type != "Transpose" or node.output[0] in used
        ]
        del graph.node[:]
        graph.node.extend(kept)
        save_graph(model, path)
    return untied


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of ``source``'s MatMul weights into ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    untie_output(source)
    quantize_dynamic(
        str(source),
        str(target),
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        use_external_data_format=True,
        extra_options={"MatMulConstBOnly": True},
    )


def quantize_int4(source: Path, target: Path, block_size: int) -> None:
    """Weight-only int4 block quantization (MatMulNBits) of ``source`` into ``target``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    untie_output(source)
    model = onnx.load(str(source), load_external_data=True)
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, accuracy_level=4
    )
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    save_graph(quantizer.model.model, target)


def count_ops(path: Path) -> dict[str, int]:
    """How many nodes of each operator type a graph has (for reports and tests)."""
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
