"""Weight quantization of exported graphs with ONNX Runtime's own tools.

* int8: dynamic quantization of the MatMul weights (per output channel, symmetric int8;
  activations quantized on the fly), ``onnxruntime.quantization.quantize_dynamic``.
* int4: weight-only block quantization into ``MatMulNBits`` (symmetric, round to nearest, blocks
  of ``precision.block_size`` along the input dimension), which ONNX Runtime runs on CPU and
  CUDA, with ``accuracy_level`` :data:`ACCURACY_LEVEL` and the output projection (lm_head) at
  :data:`OUTPUT_PRECISION` (:class:`Int4Choice`; ``export(..., int4=...)`` overrides them).

Both only quantize a MatMul whose weight is a stored tensor. A tied output projection reads the
token embedding through a Transpose at run time, so it is untied first (:func:`untie_output`): a
transposed copy becomes the projection's own weight and is quantized, or it would stay fp32 and be
transposed at every step. The manifest's ``quantization`` object records what was done (method,
bits, block size, accuracy level, the output projection's precision and node names).

The int4 choice, measured with ``bench/quality.py`` (bench/README.md, "int4: block size,
accuracy level, output projection"): perplexity of two trained decoders (the demo's, 0.8M
parameters, and one twice as wide, 3M) on held-out standard-library text, and batch-1 decode of
the benchmark's 125M Llama-style model, each against fp32 in the same run.

* ``accuracy_level`` 4 (int8 activations inside MatMulNBits): 9-25x faster decode on CPU than
  levels 0 and 1 (fp32 compute) at the same perplexity (+0.11% / +0.27% over fp32 at every
  level on the two decoders).
* The output projection at int8 (MatMulNBits with 8 bits, same blocks): no consistent decode
  cost against an int4 one on the 125M model (69.9 vs 71.0 tokens/s over 20 rounds), and its
  logits are as close to fp32's as an fp32 projection's (KL to fp32 0.0206, as fp32's 0.0206;
  int4 0.0217). ONNX Runtime added 8-bit MatMulNBits because int4 lost too much accuracy on a
  real model (microsoft/onnxruntime#24384, phi-4; an int4 lm_head is reported to cause
  repetition); its CPU and CUDA kernels (CUDA since 1.22, #24509) run it. An fp32 projection
  costs decode speed for nothing measurable.
* The block size stays the spec's ``precision.block_size`` (default 32): blocks of 64 and 128
  decode 1.09-1.36x and 1.17-1.46x faster than 32 but lose 1.4-4x more (perplexity +0.37% to
  +0.45% against +0.11% / +0.27%; KL to fp32 on the 125M model 0.025 and 0.032 against
  0.021), and the loss at 32 grows with the width (0.11% to 0.27%): small trained models
  understate what larger blocks lose on real ones with outlier features. 16 is 1.4-1.5x slower
  than 32 for little. A spec trades with ``precision: {block_size: 128}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import numpy_helper

from llmspec.exporter.rewrites.ir import save_graph

OutputPrecision = Literal["int4", "int8", "fp32"]

ACCURACY_LEVELS = (0, 1, 4)
OUTPUT_PRECISIONS: tuple[OutputPrecision, ...] = ("int4", "int8", "fp32")

# The measured choice (module docstring; bench/README.md "int4: block size, accuracy level,
# output projection"); the block size itself is the spec's precision.block_size.
ACCURACY_LEVEL = 4
OUTPUT_PRECISION: OutputPrecision = "int8"
INT4_WHY = (
    "accuracy_level 4: 9-25x the CPU decode speed of 0/1 at equal perplexity; output "
    "projection int8: as close to fp32 as an fp32 one at the speed of int4 (int4 loses "
    "accuracy there, onnxruntime#24384); block size: the spec's (32 by default; 64/128 "
    "decode 1.1-1.5x faster at 1.4-4x the perplexity loss); measured with bench/quality.py, "
    "see bench/README.md"
)

_OUTPUT_HOPS = 4  # operators between the output projection and the logits output, at most


@dataclass(frozen=True)
class Int4Choice:
    """How an int4 export quantizes: MatMulNBits' block size along the input dimension and
    ``accuracy_level`` (0 unset, 1 fp32 compute, 4 int8 activations), and the precision of the
    output projection (``int4``; ``int8``: MatMulNBits with 8 bits, same blocks; ``fp32``)."""

    block_size: int
    accuracy_level: int = ACCURACY_LEVEL
    output: OutputPrecision = OUTPUT_PRECISION


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


def quantize_int8(source: Path, target: Path) -> dict[str, Any]:
    """Dynamic int8 quantization of ``source``'s MatMul weights into ``target``; returns the
    manifest's ``quantization`` record."""
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
    return {"method": "dynamic", "bits": 8, "symmetric": True, "per_channel": True}


def output_projections(
    model: onnx.ModelProto, ops: tuple[str, ...] = ("MatMul",)
) -> list[onnx.NodeProto]:
    """The nodes of type ``ops`` with a stored weight that make a graph output named
    ``logits`` (the output projection, "lm_head"), found walking back from the output through
    at most :data:`_OUTPUT_HOPS` other operators (a bias Add, a soft-capping Tanh/Mul/Div)."""
    graph = model.graph
    stored = {init.name for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    found: list[onnx.NodeProto] = []
    frontier = [out.name for out in graph.output if out.name == "logits"]
    for _ in range(_OUTPUT_HOPS + 1):
        following = []
        for name in frontier:
            node = producers.get(name)
            if node is None:
                continue
            if node.op_type in ops and node.input[1] in stored:
                if all(node is not seen for seen in found):
                    found.append(node)
                continue
            following.extend(node.input)
        frontier = following
    return found


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (the quantizer selects and excludes by name)."""
    taken = {node.name for node in model.graph.node if node.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def quantize_int4(source: Path, target: Path, choice: Int4Choice) -> dict[str, Any]:
    """Weight-only int4 block quantization (MatMulNBits) of ``source`` into ``target``, the
    output projection at ``choice.output``; returns the manifest's ``quantization`` record."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    untie_output(source)
    model = onnx.load(str(source), load_external_data=True)
    _name_nodes(model)
    heads = [node.name for node in output_projections(model)]
    matmuls = [node.name for node in model.graph.node if node.op_type == "MatMul"]

    def quantized(model: onnx.ModelProto, bits: int, exclude: list[str]) -> onnx.ModelProto:
        config = DefaultWeightOnlyQuantConfig(
            block_size=choice.block_size,
            is_symmetric=True,
            accuracy_level=choice.accuracy_level,
            bits=bits,
        )
        quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=exclude, algo_config=config)
        quantizer.process()
        result: onnx.ModelProto = quantizer.model.model
        return result

    model = quantized(model, 4, heads if choice.output != "int4" else [])
    if choice.output == "int8" and heads:
        model = quantized(model, 8, [name for name in matmuls if name not in heads])
    save_graph(model, target)
    return {
        "method": "MatMulNBits",
        "bits": 4,
        "symmetric": True,
        "block_size": choice.block_size,
        "accuracy_level": choice.accuracy_level,
        "output_projection": choice.output,
        "output_nodes": heads,
        "why": INT4_WHY,
    }


def count_ops(path: Path) -> dict[str, int]:
    """How many nodes of each operator type a graph has (for reports and tests)."""
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))
