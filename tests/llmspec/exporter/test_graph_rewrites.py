"""Our graph rewrites on exported graphs. The attention fusion
(llmspec.exporter.rewrites.attention): the
fused graph computes what the exported one does, stays finite on padding, owns the cache
outputs, and leaves other patterns alone. MatMul packing
(llmspec.exporter.rewrites.matmul_packing) and the
rotary fusion (llmspec.exporter.rewrites.rotary): the same numbers from fewer nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from llmspec.builder import build
from llmspec.exporter.graphs import OPSET, export_graph, plan_graphs
from llmspec.exporter.quantize import count_ops
from llmspec.exporter.rewrites.attention import (
    fuse_attention,
    use_sequence_major_layout,
)
from llmspec.exporter.rewrites.ir import FUSED_OPSET, save_graph
from llmspec.exporter.rewrites.matmul_packing import pack_matmuls
from llmspec.exporter.rewrites.rotary import fuse_rotary
from llmspec.spec.loading import load_spec
from tests.conftest import SPECS


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """tiny-decoder's decoder graph as the exporter writes it (no optimizer) and fused."""
    directory = tmp_path_factory.mktemp("fusion")
    spec = load_spec(Path(SPECS) / "tiny-decoder.yaml")
    torch.manual_seed(0)
    (plan,) = plan_graphs(spec, build(spec).eval(), torch.float32)
    plain = export_graph(plan, directory)
    fused_dir = directory / "fused"
    fused_dir.mkdir()
    model = ir.from_proto(onnx.load(str(plain)))
    count = fuse_attention(model)
    fused = fused_dir / plain.name
    save_graph(ir.to_proto(model), fused)
    return spec, plain, fused, count


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _left_padded(spec, seed, shape, pads):
    """Random token ids and an attention mask with ``pads[row]`` leading padding positions."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, spec.vocabulary.size, shape).astype(np.int64)
    mask = np.ones(shape, np.int64)
    for row, count in pads.items():
        mask[row, :count] = 0
    return ids, mask


def _run_steps(session, spec, ids, mask, steps):
    """Prefill then greedy steps; every output of every call."""
    layers, kv, hs = spec.layers, spec.kv_heads, spec.head_dim
    batch = ids.shape[0]
    past = [np.zeros((batch, kv, 0, hs), np.float32) for _ in range(2 * layers)]
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    results = []
    for _ in range(steps):
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        for i in range(layers):
            feed[f"past_key_values.{i}.key"] = past[2 * i]
            feed[f"past_key_values.{i}.value"] = past[2 * i + 1]
        out = session.run(None, feed)
        results.append(out)
        past = out[1:]
        ids = out[0][:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((batch, 1), np.int64)], axis=1)
        positions = positions[:, -1:] + 1
    return results


def test_every_layer_is_fused_into_one_attention_node(exported):
    spec, plain, fused, count = exported
    assert count == spec.layers
    ops = count_ops(fused)
    assert ops["Attention"] == spec.layers
    assert "Softmax" not in ops and "Expand" not in ops  # no score tensor, no repeated heads
    assert count_ops(plain)["Softmax"] == spec.layers
    model = onnx.load(str(fused), load_external_data=False)
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert default == [FUSED_OPSET] and OPSET < FUSED_OPSET
    # the cache outputs are now the fused nodes' own, under the contract's names
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    assert all(producers[o.name] == "Attention" for o in model.graph.output[1:])


def test_fused_graph_matches_the_export_on_left_padded_batches(exported):
    spec, plain, fused, _ = exported
    ids, mask = _left_padded(spec, seed=0, shape=(3, 9), pads={1: 4, 2: 8})  # row 2: one token
    reference = _run_steps(_session(plain), spec, ids, mask, steps=5)
    candidate = _run_steps(_session(fused), spec, ids, mask, steps=5)
    real = mask.astype(bool)
    for step, (want, got) in enumerate(zip(reference, candidate, strict=True)):
        assert all(np.isfinite(x).all() for x in got), "padding must not produce NaN or inf"
        logits_want = want[0][real] if step == 0 else want[0]
        logits_got = got[0][real] if step == 0 else got[0]
        np.testing.assert_allclose(logits_got, logits_want, atol=1e-5, rtol=1e-5)
        for cache_want, cache_got in zip(want[1:], got[1:], strict=True):
            assert cache_got.shape == cache_want.shape
            # real positions of the cache agree; padding positions hold whatever attention to
            # nothing gives, and no real query ever sees them
            keep = np.concatenate([real, np.ones((3, step), bool)], axis=1)
            np.testing.assert_allclose(
                cache_got.transpose(0, 2, 1, 3)[keep],
                cache_want.transpose(0, 2, 1, 3)[keep],
                atol=1e-5,
                rtol=1e-5,
            )


def test_attention_with_an_added_position_bias_is_left_alone(tiny_artifact):
    """T5 adds its relative position bias to the scores: not the pattern, so not fused, and the
    artifact still passed the gate."""
    artifact = tiny_artifact("tiny-t5")
    assert count_ops(artifact / "encoder.onnx")["Softmax"] == 2  # two self-attention layers
    assert "Attention" not in count_ops(artifact / "encoder.onnx")
    decoder = count_ops(artifact / "decoder.onnx")
    assert decoder["Softmax"] == 2 and decoder["Attention"] == 2  # self kept, cross fused


def test_a_graph_without_the_pattern_is_returned_unchanged():
    x = ir.Value(name="x", shape=ir.Shape([2, 3]), type=ir.TensorType(ir.DataType.FLOAT))
    node = ir.Node("", "Softmax", [x], attributes=[ir.AttrInt64("axis", -1)])
    node.outputs[0].name = "y"
    graph = ir.Graph([x], node.outputs, nodes=[node], opset_imports={"": OPSET})
    model = ir.Model(graph, ir_version=10)
    assert fuse_attention(model) == 0
    assert [n.op_type for n in model.graph] == ["Softmax"]
    assert model.graph.opset_imports[""] == OPSET


def _rewritten_copy(source, directory, rewrite):
    model = ir.from_proto(onnx.load(str(source)))
    count = rewrite(model)
    directory.mkdir()
    target = directory / source.name
    save_graph(ir.to_proto(model), target)
    return target, count


def test_matmuls_sharing_their_input_are_packed(exported, tmp_path):
    """tiny-decoder: per layer q|k|v and gate|up become one MatMul each; the attention output
    projection, the down projection and the output head read their own inputs."""
    spec, plain, _, _ = exported
    packed, groups = _rewritten_copy(plain, tmp_path / "packed", pack_matmuls)
    assert groups == 2 * spec.layers
    before, after = count_ops(plain)["MatMul"], count_ops(packed)["MatMul"]
    assert before - after == spec.layers * (3 - 1) + spec.layers * (2 - 1)
    assert count_ops(packed)["Split"] >= groups


def test_packed_graph_gives_the_same_numbers(exported, tmp_path):
    spec, plain, _, _ = exported
    packed, _ = _rewritten_copy(plain, tmp_path / "packed", pack_matmuls)
    ids, mask = _left_padded(spec, seed=1, shape=(2, 6), pads={0: 2})
    _assert_same_logits(plain, packed, spec, ids, mask, steps=3, tolerance=1e-6)


def test_rotary_embeddings_become_one_node_each(exported, tmp_path):
    spec, plain, _, _ = exported
    rotated, count = _rewritten_copy(plain, tmp_path / "rotary", fuse_rotary)
    assert count == 2 * spec.layers  # queries and keys of every layer
    ops = count_ops(rotated)
    assert ops["RotaryEmbedding"] == 2 * spec.layers
    assert "Neg" not in ops  # rotate_half is gone everywhere
    assert ops["Cos"] == ops["Sin"] == 1  # the half tables are computed once per graph


def test_rotary_fusion_keeps_the_numbers_with_left_padding(exported, tmp_path):
    """Left padding gives rows different positions: the tables must follow position_ids."""
    spec, plain, _, _ = exported
    rotated, _ = _rewritten_copy(plain, tmp_path / "rotary", fuse_rotary)
    ids, mask = _left_padded(spec, seed=2, shape=(3, 7), pads={0: 3, 2: 5})
    _assert_same_logits(plain, rotated, spec, ids, mask, steps=4, tolerance=1e-5)


def _assert_same_logits(plain, rewritten, spec, ids, mask, steps, tolerance):
    """Prefill (real positions only) and cached steps give the same logits in both graphs."""
    real = mask.astype(bool)
    want = _run_steps(_session(plain), spec, ids, mask, steps=steps)
    got = _run_steps(_session(rewritten), spec, ids, mask, steps=steps)
    for step, (step_want, step_got) in enumerate(zip(want, got, strict=True)):
        logits_want = step_want[0][real] if step == 0 else step_want[0]
        logits_got = step_got[0][real] if step == 0 else step_got[0]
        np.testing.assert_allclose(logits_got, logits_want, rtol=tolerance, atol=tolerance)


def _all_rewrites(model):
    rewrites = (pack_matmuls, fuse_rotary, fuse_attention, use_sequence_major_layout)
    return [rewrite(model) for rewrite in rewrites][-1]


def test_attention_takes_the_projections_layout(exported, tmp_path):
    """After every rewrite, each attention reads (B, S, heads * hs) straight from the packed
    projection's Split (rotated where rope applies) and its output goes straight to the output
    projection: no reshape or transpose is left around it; the cache keeps the contract's
    (B, kv_heads, T, hs)."""
    spec, plain, _, _ = exported
    rewritten, changed = _rewritten_copy(plain, tmp_path / "all", _all_rewrites)
    assert changed == spec.layers
    model = onnx.load(str(rewritten), load_external_data=False)
    producers = {out: node for node in model.graph.node for out in node.output}
    users: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    attentions = [n for n in model.graph.node if n.op_type == "Attention"]
    assert len(attentions) == spec.layers
    for node in attentions:
        attributes = {a.name: a.i for a in node.attribute if a.name.endswith("num_heads")}
        assert attributes == {"q_num_heads": spec.attention.heads, "kv_num_heads": spec.kv_heads}
        q, k, v = (producers[name] for name in node.input[:3])
        assert (q.op_type, k.op_type, v.op_type) == ("RotaryEmbedding", "RotaryEmbedding", "Split")
        assert [u.op_type for u in users[node.output[0]]] == ["MatMul"]
    weights = {i.name for i in model.graph.initializer}
    transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
    assert all(n.input[0] in weights for n in transposes)  # only the tied head's embedding
    assert "Reshape" not in count_ops(rewritten)


def test_sequence_major_attention_keeps_the_numbers(exported, tmp_path):
    spec, plain, _, _ = exported
    rewritten, _ = _rewritten_copy(plain, tmp_path / "all", _all_rewrites)
    ids, mask = _left_padded(spec, seed=3, shape=(3, 8), pads={1: 5})
    _assert_same_logits(plain, rewritten, spec, ids, mask, steps=4, tolerance=1e-5)
