"""Rope knobs through export: specs with scaling, partial rotary and a local base export,
pass the parity gate (fp32, a left-padded batch, a prefill of 12 tokens then 8 cached decode
steps) and keep the rotary fusion. With an original length of 16, dynamic and longrope cross it
during the gate's decode, so the exported graph must choose its frequencies from the total
length as the PyTorch model does (a table fixed at export would fail the gate)."""

from __future__ import annotations

from typing import Any

import onnx
import pytest

from llmspec.exporter.parity import DECODE_STEPS
from llmspec.exporter.pipeline import export
from llmspec.spec.loading import dump_spec
from runtime import artifact as fmt
from tests.llmspec.test_rope_parity import ORIGINAL, _spec

SPECS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "longrope-partial": (
        {
            "rotary_dim": 16,
            "scaling": {
                "type": "longrope",
                "short_factor": [1.0 + 0.1 * i for i in range(8)],
                "long_factor": [2.0 + 0.5 * i for i in range(8)],
                "original_max_positions": ORIGINAL,
            },
        },
        {},
    ),
    "dynamic": (
        {"scaling": {"type": "dynamic", "factor": 2.0, "original_max_positions": ORIGINAL}},
        {},
    ),
    "llama3-partial-local": (
        {
            "partial": 0.5,
            "local_base": 100.0,
            "scaling": {
                "type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_positions": ORIGINAL,
            },
        },
        {"sliding_window": 4, "layer_pattern": ["local", "global"]},
    ),
}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    made = {}

    def make(name: str):
        if name not in made:
            positions, attention = SPECS[name]
            directory = tmp_path_factory.mktemp(name)
            (directory / "spec.yaml").write_text(dump_spec(_spec(positions, **attention)))
            made[name] = export(
                directory / "spec.yaml", directory / "artifact", progress=lambda line: None
            )
        return made[name]

    return make


def test_the_gate_crosses_the_original_length():
    """The premise of the length-dependent checks: the gate's last position is beyond it."""
    prefill = max(4, min(12, 64 - DECODE_STEPS))  # check_decoder_only's, for a context of 64
    assert prefill <= ORIGINAL < prefill + DECODE_STEPS


@pytest.mark.slow
@pytest.mark.parametrize("name", SPECS)
def test_rope_knobs_export_pass_the_gate_and_keep_the_rotary_fusion(artifacts, name):
    path = artifacts(name)
    manifest = fmt.read_manifest(path)
    assert manifest.parity["passed"]
    assert manifest.parity["max_abs_diff"] < 1e-4
    # two layers, queries and keys: every rotation fused, partial ones on their slice
    assert manifest.fusions[fmt.DECODER_GRAPH]["RotaryEmbedding"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["longrope-partial", "dynamic"])
def test_length_dependent_frequencies_are_computed_in_the_graph(artifacts, name):
    """The graph reads the total length from position_ids (a ReduceMax) and picks between two
    frequency sets (a Where): nothing was folded at export time."""
    graph = onnx.load(str(artifacts(name) / fmt.DECODER_GRAPH), load_external_data=False)
    ops = {node.op_type for node in graph.graph.node}
    assert {"ReduceMax", "Where"} <= ops
    positions = next(i for i in graph.graph.input if i.name == "position_ids")
    dims = [d.dim_param or d.dim_value for d in positions.type.tensor_type.shape.dim]
    assert all(isinstance(d, str) for d in dims)  # batch and sequence stay dynamic


@pytest.mark.slow
@pytest.mark.parametrize("name", ["longrope-partial", "llama3-partial-local"])
def test_rope_knob_artifacts_pass_the_graph_properties(artifacts, name):
    """llmspec verify's ONNX-level properties: causality, left padding and cached steps equal to
    a full pass (for longrope within its original length, see graph_properties)."""
    from llmspec.inspect.verify import verify

    report = verify(artifacts(name), examples=6, progress=lambda line: None)
    assert report.passed, [c for c in report.checks if not c.passed]
    names = {c.name for c in report.checks}
    assert {"decoder causal", "decoder left padding"} <= names, names
