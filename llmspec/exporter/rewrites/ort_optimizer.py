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

from pathlib import Path

import onnx
import onnx_ir as ir

from llmspec.exporter.rewrites.ir import Rewrite, Rewritten, save_graph
from llmspec.spec.sections import ModelSpec

# The optimizer's model types whose fusion passes fit each family.
MODEL_TYPES = {"decoder-only": "gpt2", "encoder-only": "bert", "encoder-decoder": "bart"}


def optimize_graph(path: Path, spec: ModelSpec, *rewrites: Rewrite) -> Rewritten:
    """Fuse ``path``'s graph in place with the optimizer, then run our own ``rewrites`` (see
    :func:`rewrite_graph_file`) on the optimized model in memory, saving once. Returns every
    operator fused, by the optimizer and by our rewrites."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(
        str(path),
        model_type=MODEL_TYPES[spec.architecture],
        num_heads=spec.attention.heads,
        hidden_size=spec.d_model,
        opt_level=0,
        use_gpu=False,
    )
    done = Rewritten()
    for operator, count in model.get_fused_operator_statistics().items():
        done.add(operator, count)
    rewritten = ir.from_proto(model.model)
    for node in rewritten.graph:  # the optimizer adds the contrib domain's import only on save
        if node.domain not in ("", "ai.onnx") and node.domain not in rewritten.opset_imports:
            rewritten.opset_imports[node.domain] = rewritten.graph.opset_imports[node.domain] = 1
    done.apply(rewritten, rewrites)
    save_graph(ir.to_proto(rewritten), path)
    return done


def rewrite_graph_file(path: Path, *rewrites: Rewrite) -> Rewritten:
    """Run our own graph rewrites on ``path`` in place, in order, loading and saving it once
    (not at all when nothing changed); return the operators they fused.

    The exporter runs :data:`~llmspec.exporter.rewrites.matmul_packing.PACK_MATMULS` and
    :data:`~llmspec.exporter.rewrites.rotary.FUSE_ROTARY` with :func:`optimize_graph`, before
    quantization (so that a packed weight and its input are quantized once), and
    :data:`~llmspec.exporter.rewrites.attention.FUSE_ATTENTION` then
    :data:`~llmspec.exporter.rewrites.attention.SEQUENCE_MAJOR` on the final graph (ONNX
    Runtime's quantizers know a contrib ``Attention`` by the same name and would misread ours):
    with :func:`optimize_graph` when nothing is quantized, with this function after
    quantization."""
    model = ir.from_proto(onnx.load(str(path), load_external_data=True))
    done = Rewritten()
    if done.apply(model, rewrites):
        save_graph(ir.to_proto(model), path)
    return done
