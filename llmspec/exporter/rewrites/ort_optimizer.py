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
exporter's attention pattern; it is not counted on: :mod:`llmspec.exporter.rewrites.attention` fuses
attention into ONNX's own ``Attention`` operator afterwards (:func:`rewrite_graph_file`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmspec.spec.sections import ModelSpec

# The optimizer's model types whose fusion passes fit each family.
MODEL_TYPES = {"decoder-only": "gpt2", "encoder-only": "bert", "encoder-decoder": "bart"}


def optimize_graph(
    path: Path, spec: ModelSpec, *rewrites: Callable[[Any], int]
) -> tuple[dict[str, int], list[int]]:
    """Fuse ``path``'s graph in place with the optimizer, then run our own ``rewrites`` (see
    :func:`rewrite_graph_file`) on the optimized model in memory, saving once. Returns the count
    of each operator the optimizer fused (non-zero only) and what each rewrite counted."""
    import onnx_ir as ir
    from onnxruntime.transformers.optimizer import optimize_model

    from llmspec.exporter.quantize import save_graph

    model = optimize_model(
        str(path),
        model_type=MODEL_TYPES[spec.architecture],
        num_heads=spec.attention.heads,
        hidden_size=spec.d_model,
        opt_level=0,
        use_gpu=False,
    )
    counts = {op: n for op, n in model.get_fused_operator_statistics().items() if n}
    rewritten = ir.from_proto(model.model)
    for node in rewritten.graph:  # the optimizer adds the contrib domain's import only on save
        if node.domain not in ("", "ai.onnx") and node.domain not in rewritten.opset_imports:
            rewritten.opset_imports[node.domain] = rewritten.graph.opset_imports[node.domain] = 1
    ours = [rewrite(rewritten) for rewrite in rewrites]
    save_graph(ir.to_proto(rewritten), path)
    return dict(sorted(counts.items())), ours


def rewrite_graph_file(path: Path, *rewrites: Callable[[Any], int]) -> list[int]:
    """Run our own graph rewrites on ``path`` in place, in order, loading and saving it once;
    return what each one counted (the MatMuls packed, the rotations or attentions fused).

    The exporter runs :func:`llmspec.exporter.rewrites.matmul_packing.pack_matmuls` and
    :func:`llmspec.exporter.rewrites.rotary.fuse_rotary` with :func:`optimize_graph`, before
    quantization
    (so that a packed weight and its input are quantized once), and
    :func:`llmspec.exporter.rewrites.attention.fuse_attention` then
    :func:`llmspec.exporter.rewrites.attention.use_sequence_major_layout` on the final graph (ONNX
    Runtime's quantizers know a contrib ``Attention`` by the same name and would misread ours):
    with :func:`optimize_graph` when nothing is quantized, with this function after
    quantization."""
    import onnx
    import onnx_ir as ir

    from llmspec.exporter.quantize import save_graph

    model = ir.from_proto(onnx.load(str(path), load_external_data=True))
    counts = [rewrite(model) for rewrite in rewrites]
    if any(counts):
        save_graph(ir.to_proto(model), path)
    return counts
