"""Graph optimization with ONNX Runtime's transformer optimizer.

``onnxruntime.transformers.optimizer`` pattern-matches sub-graphs and replaces them with fused
contrib operators that ONNX Runtime runs in one kernel on CPU and CUDA: LayerNorm after a
residual add becomes ``SkipLayerNormalization`` (``SkipSimplifiedLayerNormalization`` for
RMSNorm), the tanh GELU ``FastGelu``, a bias add before GELU ``BiasGelu``, BERT's embeddings
``EmbedLayerNormalization``. Only these offline fusions run here (``opt_level=0``); ONNX
Runtime applies its own graph optimizations when a session opens.

The counts of each fusion go into the manifest; tests pin the counts expected for the example
specs, so a change in the exported patterns (a new torch version, a template change) is noticed
rather than silently making the graphs slower. Attention fusion does not match the dynamo
exporter's attention pattern; it is not counted on: :mod:`llmspec.attention_fusion` fuses
attention into ONNX's own ``Attention`` operator afterwards (:func:`fuse_attention_file`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmspec.spec import ModelSpec

# The optimizer's model types whose fusion passes fit each family.
MODEL_TYPES = {"decoder-only": "gpt2", "encoder-only": "bert", "encoder-decoder": "bart"}


def optimize_graph(path: Path, spec: ModelSpec) -> dict[str, int]:
    """Fuse ``path``'s graph in place; return the count of each fused operator (non-zero only)."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(
        str(path),
        model_type=MODEL_TYPES[spec.architecture],
        num_heads=spec.attention.heads,
        hidden_size=spec.d_model,
        opt_level=0,
        use_gpu=False,
    )
    counts = {op: n for op, n in model.get_fused_operator_statistics().items() if n}
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    model.save_model_to_file(str(path), use_external_data_format=True, all_tensors_to_one_file=True)
    return dict(sorted(counts.items()))


def fuse_attention_file(path: Path) -> int:
    """Fuse ``path``'s attention sub-graphs in place (see :mod:`llmspec.attention_fusion`);
    return how many were fused. Runs last, on the final (possibly quantized) graph: ONNX
    Runtime's quantizers know a contrib ``Attention`` by the same name and would misread ours."""
    from llmspec.attention_fusion import fuse_attention

    return _rewrite(path, fuse_attention)


def pack_matmuls_file(path: Path) -> int:
    """Pack the MatMuls of ``path`` that share their input, in place (see
    :mod:`llmspec.matmul_packing`); return how many packed MatMuls were made. Runs before
    quantization, so that a packed weight is quantized (and its input quantized) once."""
    from llmspec.matmul_packing import pack_matmuls

    return _rewrite(path, pack_matmuls)


def _rewrite(path: Path, rewrite: Callable[[Any], int]) -> int:
    import onnx
    import onnx_ir as ir

    from llmspec.quantize import save_graph

    model = ir.from_proto(onnx.load(str(path), load_external_data=True))
    changed = rewrite(model)
    if changed:
        save_graph(ir.to_proto(model), path)
    return changed
