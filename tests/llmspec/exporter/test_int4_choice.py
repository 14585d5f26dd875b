"""int4 export (issue 16): the block size, accuracy level and output projection's precision are
the measured choice, applied to the graph and recorded in the manifest; older manifests without
the record still load."""

import json
from pathlib import Path

import onnx
import pytest

from llmspec.exporter.pipeline import ExportError, export
from llmspec.exporter.quantize import (
    ACCURACY_LEVEL,
    OUTPUT_PRECISION,
    Int4Choice,
    count_ops,
    output_projections,
)
from llmspec.spec.loading import load_spec
from runtime import artifact as fmt

ROOT = Path(__file__).resolve().parents[3]
SPECS = ROOT / "specs"
QUANTIZED = ("MatMul", "MatMulNBits")


def _quiet(_: str) -> None:
    pass


def _attributes(node: onnx.NodeProto) -> dict[str, int]:
    return {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}


def _graph(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path / fmt.DECODER_GRAPH), load_external_data=False)


@pytest.fixture(scope="module")
def fp32_head(tmp_path_factory):
    """tiny-decoder at int4 with every setting away from the defaults: block 16, accuracy
    level 1, the output projection left at fp32."""
    target = tmp_path_factory.mktemp("int4") / "tiny-decoder-int4-fp32-head"
    choice = Int4Choice(block_size=16, accuracy_level=1, output="fp32")
    return export(
        SPECS / "tiny-decoder.yaml", target, quantize="int4", int4=choice, progress=_quiet
    )


def test_the_manifest_records_the_default_int4_choice(tiny_artifact):
    path = tiny_artifact("tiny-gpt", "int4")
    record = fmt.read_manifest(path).quantization
    spec = load_spec(SPECS / "tiny-gpt.yaml")
    assert record["method"] == "MatMulNBits" and record["bits"] == 4 and record["symmetric"]
    assert record["block_size"] == spec.precision.block_size
    assert record["accuracy_level"] == ACCURACY_LEVEL == 4
    assert record["output_projection"] == OUTPUT_PRECISION == "int8"
    heads = output_projections(_graph(path), QUANTIZED)
    assert [node.name for node in heads] == [f"{name}_Q8" for name in record["output_nodes"]]


def test_every_int4_matmul_carries_the_block_size_and_accuracy_level(tiny_artifact):
    path = tiny_artifact("tiny-gpt", "int4")
    block = load_spec(SPECS / "tiny-gpt.yaml").precision.block_size
    nodes = [n for n in _graph(path).graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) > 2
    for node in nodes:
        attributes = _attributes(node)
        assert attributes["block_size"] == block
        assert attributes["accuracy_level"] == ACCURACY_LEVEL


def test_the_output_projection_stays_at_int8_while_the_rest_is_int4(tiny_artifact):
    graph = _graph(tiny_artifact("tiny-gpt", "int4"))
    (head,) = output_projections(graph, QUANTIZED)
    assert head.op_type == "MatMulNBits" and _attributes(head)["bits"] == 8
    others = [n for n in graph.graph.node if n.op_type == "MatMulNBits" and n is not head]
    assert others and {_attributes(n)["bits"] for n in others} == {4}


def test_an_fp32_output_projection_is_a_plain_matmul_and_passes_the_gate(fp32_head):
    manifest = fmt.read_manifest(fp32_head)
    fmt.verify_files(fp32_head, manifest)
    assert manifest.parity["passed"] and manifest.parity["precision"] == "int4"
    graph = _graph(fp32_head)
    (head,) = output_projections(graph, QUANTIZED)
    assert head.op_type == "MatMul"
    stored = {init.name: list(init.dims) for init in graph.graph.initializer}
    assert stored[head.input[1]] == [128, 260]  # d_model x vocabulary, fp32, untied
    assert count_ops(fp32_head / fmt.DECODER_GRAPH)["MatMulNBits"] > 0
    assert manifest.quantization["output_projection"] == "fp32"
    assert manifest.quantization["output_nodes"] == [head.name]


def test_a_chosen_block_size_and_accuracy_level_reach_the_graph_and_the_spec(fp32_head):
    nodes = [n for n in _graph(fp32_head).graph.node if n.op_type == "MatMulNBits"]
    assert {(_attributes(n)["block_size"], _attributes(n)["accuracy_level"]) for n in nodes} == {
        (16, 1)
    }
    assert load_spec(fp32_head / fmt.SPEC).precision.block_size == 16
    record = fmt.read_manifest(fp32_head).quantization
    assert (record["block_size"], record["accuracy_level"]) == (16, 1)


def test_int8_records_dynamic_quantization_and_fp32_records_nothing(tiny_artifact):
    int8 = fmt.read_manifest(tiny_artifact("tiny-gpt", "int8")).quantization
    assert int8 == {"method": "dynamic", "bits": 8, "symmetric": True, "per_channel": True}
    fp32 = tiny_artifact("tiny-gpt")
    assert fmt.read_manifest(fp32).quantization == {}
    # an unquantized artifact's manifest keeps exactly the fields it had before the record
    assert "quantization" not in json.loads((fp32 / fmt.MANIFEST).read_text())


def test_an_int4_manifest_without_the_record_still_loads(tiny_artifact):
    """An int4 artifact exported before the record existed."""
    path = tiny_artifact("tiny-gpt", "int4")
    raw = json.loads((path / fmt.MANIFEST).read_text())
    del raw["quantization"]
    manifest = fmt.parse_manifest(json.dumps(raw).encode(), path / fmt.MANIFEST)
    assert manifest.quantize == "int4" and manifest.quantization == {}


def test_a_malformed_record_is_refused_by_name(tiny_artifact):
    path = tiny_artifact("tiny-gpt", "int4")
    raw = json.loads((path / fmt.MANIFEST).read_text())
    raw["quantization"] = [4]
    with pytest.raises(fmt.ArtifactError, match="quantization"):
        fmt.parse_manifest(json.dumps(raw).encode(), path / fmt.MANIFEST)


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        (Int4Choice(32, accuracy_level=3), "accuracy_level must be one of 0, 1, 4, got 3"),
        (Int4Choice(32, output="fp16"), "output projection precision must be one of int4"),  # type: ignore[arg-type]
        (Int4Choice(48), "block_size must be 16, 32, 64, 128 or 256, got 48"),
    ],
)
def test_an_impossible_int4_choice_is_an_export_error(tmp_path, choice, message):
    with pytest.raises(ExportError, match=message):
        export(SPECS / "tiny-decoder.yaml", tmp_path / "a", quantize="int4", int4=choice)
    assert not (tmp_path / "a").exists()
