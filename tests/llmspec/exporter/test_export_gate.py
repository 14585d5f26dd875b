"""The export gate catches a graph that differs from the PyTorch model: the export fails with the
figures, and nothing is published under the target name."""

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import llmspec.exporter.pipeline as export_module  # noqa: E402
from llmspec.exporter.parity import ParityError  # noqa: E402

SPECS = Path(__file__).resolve().parents[3] / "specs"


class _LogitsPlusOne(torch.nn.Module):
    """An encoder-only graph wrapper whose logits are off by exactly 1.0 (hidden states exact)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden, logits = self.inner(input_ids, attention_mask, token_type_ids)
        return hidden, logits + 1.0


@pytest.fixture
def broken_exporter(monkeypatch):
    real = export_module.export_graph
    calls = []

    def export_graph(plan, directory):
        assert plan.input_names == ["input_ids", "attention_mask", "token_type_ids"]
        plan.module = _LogitsPlusOne(plan.module)
        calls.append(plan.file)
        return real(plan, directory)

    monkeypatch.setattr(export_module, "export_graph", export_graph)
    return calls


def test_gate_rejects_a_graph_that_differs_from_the_model(broken_exporter, tmp_path):
    target = tmp_path / "artifact"
    with pytest.raises(ParityError) as caught:
        export_module.export(SPECS / "tiny-encoder.yaml", target, progress=lambda line: None)
    assert broken_exporter == ["encoder.onnx"]

    report = caught.value.report
    by_name = {check.name: check for check in report.checks}
    assert by_name["last_hidden_state"].passed
    logits = by_name["logits"]
    assert not logits.passed
    assert logits.max_abs_diff == pytest.approx(1.0, abs=1e-3)
    assert logits.tolerance < 0.01
    message = str(caught.value)
    assert "fp32 graphs fail the parity gate in 1 of 2 checks" in message
    assert "the artifact was not written" in message
    assert "logits: max |diff| 1 (tolerance" in message

    # nothing under the target name, and no staging directory left beside it
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
