"""The attention knobs through export: a decoder with a sliding window on alternate layers,
QK-norm, an explicit scale, logit soft-capping and q/k/v biases still fuses every layer into
one ONNX ``Attention`` node (a banded mask is a mask; the cap and the scale are the node's
``softcap`` and ``scale``), the fused graph gives the torch model's logits on left-padded
batches longer than the window, prefill and cached steps, and the exporter's parity gate
passes and reports the fusions in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
import yaml

from llmspec.builder import build
from llmspec.exporter.graphs import export_graph, plan_graphs
from llmspec.exporter.quantize import count_ops
from llmspec.exporter.rewrites.attention import fuse_attention
from llmspec.exporter.rewrites.ir import save_graph
from llmspec.spec.loading import load_spec

WINDOW = 3
SPEC = {
    "name": "knobbed-decoder",
    "architecture": "decoder-only",
    "vocabulary": {"size": 262, "special_tokens": {"pad": "<pad>", "bos": "<s>", "eos": "</s>"}},
    "context_length": 32,
    "d_model": 32,
    "layers": 2,
    "attention": {
        "heads": 4,
        "kv_heads": 2,
        "sliding_window": WINDOW,
        "layer_pattern": ["local", "global"],
        "qk_norm": "rmsnorm",
        "scale": 0.3,
        "softcap": 1.5,  # small: the cap bends these scores
        "qkv_bias": True,
    },
    "feed_forward": {"d_ff": 48, "activation": "swiglu"},
    "norm": {"type": "rmsnorm"},
    "positions": {"type": "rope"},
    "bias": False,
    "objective": {"type": "causal-lm"},
}


def _fused_graph(data: dict, directory: Path):
    """The spec of ``data``, its torch model, its decoder graph with attention fused and how
    many attentions were fused."""
    path = directory / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    spec = load_spec(path)
    torch.manual_seed(0)
    model = build(spec).eval()
    (plan,) = plan_graphs(spec, model, torch.float32)
    plain = export_graph(plan, directory)
    graph = ir.from_proto(onnx.load(str(plain)))
    count = fuse_attention(graph)
    (directory / "fused").mkdir()
    target = directory / "fused" / plain.name
    save_graph(ir.to_proto(graph), target)
    return spec, model, target, count


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    return _fused_graph(SPEC, tmp_path_factory.mktemp("knobs"))


def test_windowed_capped_scaled_layers_all_fuse_with_their_attributes(fused):
    spec, _, path, count = fused
    assert count == spec.layers
    assert "Softmax" not in count_ops(path) and "Tanh" not in count_ops(path)
    nodes = [n for n in onnx.load(str(path), load_external_data=False).graph.node]
    attributes = [
        {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        for n in nodes
        if n.op_type == "Attention"
    ]
    assert len(attributes) == spec.layers
    for found in attributes:
        assert found["softcap"] == pytest.approx(1.5)
        assert found["scale"] == pytest.approx(0.3)


def test_fused_graph_equals_the_torch_model_beyond_the_window_with_the_cache(fused):
    spec, model, path, _ = fused
    session = _session(path)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 256, (3, 9)).astype(np.int64)  # 9 tokens: three windows
    mask = np.ones((3, 9), np.int64)
    mask[1, :2], mask[2, :5] = 0, 0
    past = [np.zeros((3, spec.kv_heads, 0, spec.head_dim), np.float32)] * (2 * spec.layers)
    torch_past = None
    for step in range(4):
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)[:, -ids.shape[1] :]
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        for i in range(spec.layers):
            feed[f"past_key_values.{i}.key"] = past[2 * i]
            feed[f"past_key_values.{i}.value"] = past[2 * i + 1]
        logits, *past = session.run(None, feed)
        with torch.no_grad():
            out = model(
                torch.from_numpy(ids),
                torch.from_numpy(mask),
                torch.from_numpy(positions),
                torch_past,
            )
        torch_past = out.present
        real = mask[:, -ids.shape[1] :].astype(bool)
        assert np.isfinite(logits).all(), "padding must not produce NaN or inf"
        np.testing.assert_allclose(logits[real], out.logits.numpy()[real], atol=1e-5, rtol=1e-4)
        ids = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((3, 1), np.int64)], axis=1)
        assert step == 0 or past[0].shape[2] == mask.shape[1] - 1  # the cache holds every position


def test_fused_windowed_graph_ignores_exactly_the_keys_older_than_the_window(tmp_path: Path):
    """One all-local layer: the logits at query q change with the token at key j < q exactly
    when q - j < WINDOW (the query sees keys q - WINDOW + 1 .. q), in the fused graph."""
    attention = {k: v for k, v in SPEC["attention"].items() if k != "layer_pattern"}
    spec, _, path, count = _fused_graph({**SPEC, "layers": 1, "attention": attention}, tmp_path)
    assert count == 1
    length = 8
    ids = np.random.default_rng(1).integers(0, 256, (1, length)).astype(np.int64)
    rows = [ids[0]]
    for key in range(length):  # row key + 1: the token at `key` changed
        changed = ids[0].copy()
        changed[key] = (changed[key] + 1) % 256
        rows.append(changed)
    batch = np.stack(rows)
    mask = np.ones_like(batch)
    feed = {
        "input_ids": batch,
        "attention_mask": mask,
        "position_ids": np.maximum(np.cumsum(mask, axis=1) - 1, 0),
    }
    for name in ("key", "value"):
        feed[f"past_key_values.0.{name}"] = np.zeros(
            (len(rows), spec.kv_heads, 0, spec.head_dim), np.float32
        )
    logits = _session(path).run(None, feed)[0]
    for key in range(length):
        for query in range(key + 1, length):
            same = np.allclose(logits[key + 1, query], logits[0, query], atol=1e-6, rtol=0)
            assert same == (query - key >= WINDOW), (key, query)


def test_export_of_the_knobs_passes_the_gate_and_the_graph_properties(tmp_path: Path):
    from llmspec.exporter.pipeline import export
    from llmspec.inspect.verify import verify

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    artifact = export(spec_path, tmp_path / "artifact", progress=lambda line: None)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["parity"]["passed"]
    # format 2: each fused attention runs as GroupQueryAttention on the in-place cache, the
    # banded mask as its attention_bias, the cap and the scale as its attributes
    assert manifest["fusions"]["decoder.onnx"]["GroupQueryAttention"] == SPEC["layers"]
    gqa = [
        {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        for n in onnx.load(str(artifact / "decoder.onnx"), load_external_data=False).graph.node
        if n.op_type == "GroupQueryAttention"
    ]
    assert len(gqa) == SPEC["layers"]
    assert all(g["softcap"] == pytest.approx(1.5) and g["scale"] == pytest.approx(0.3) for g in gqa)
    # decoder causal, left padding, cache == full pass: on the runtime's own feeder
    report = verify(artifact, examples=4)
    assert report.passed, report.render()
