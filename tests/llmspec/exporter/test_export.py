"""Export: every tiny family becomes a gated, complete artifact; writes are atomic."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from safetensors.numpy import load_file

from llmspec.cli import main
from llmspec.estimates.counts import weight_bytes
from llmspec.exporter.pipeline import ExportError, export
from llmspec.exporter.quantize import count_ops
from llmspec.exporter.rewrites.ir import Rewrite
from llmspec.spec.loading import load_spec, spec_sha256
from runtime import artifact as fmt

ROOT = Path(__file__).resolve().parents[3]
SPECS = ROOT / "specs"
FAMILIES = ["tiny-gpt", "tiny-decoder", "tiny-encoder", "tiny-t5", "tiny-bart"]


def _quiet(_: str) -> None:
    pass


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_spec_exports_a_complete_gated_artifact(tiny_artifact, name):
    path = tiny_artifact(name)
    manifest = fmt.read_manifest(path)
    fmt.verify_files(path, manifest)
    spec = load_spec(SPECS / f"{name}.yaml")
    assert manifest.spec_sha256 == spec_sha256(spec)
    assert manifest.parity["passed"] and manifest.parity["max_abs_diff"] < 1e-4
    expected = {fmt.SPEC, fmt.MODEL_SOURCE, fmt.WEIGHTS, fmt.TOKENIZER, fmt.GENERATION}
    assert expected | {fmt.MODEL_CARD} <= set(manifest.files)
    graphs = {"encoder-only": {fmt.ENCODER_GRAPH}, "decoder-only": {fmt.DECODER_GRAPH}}.get(
        spec.architecture, {fmt.ENCODER_GRAPH, fmt.DECODER_GRAPH}
    )
    assert set(manifest.graphs) == graphs
    assert all(f"{g}.data" in manifest.files for g in graphs)
    card = (path / fmt.MODEL_CARD).read_text()
    assert spec.name in card and "Export parity" in card


def test_decoder_graph_follows_the_optimum_contract(tiny_artifact):
    manifest = fmt.read_manifest(tiny_artifact("tiny-decoder"))
    graph = manifest.graphs[fmt.DECODER_GRAPH]
    names = [t.name for t in graph.inputs]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:7] == [
        "past_key_values.0.key",
        "past_key_values.0.value",
        "past_key_values.1.key",
        "past_key_values.1.value",
    ]
    assert names[-1] == "logits_to_keep"  # format 2: the positions whose logits are computed
    past = graph.inputs[3]
    # format 2: a buffer allocated once, written in place (kv_heads 2, head_dim 32)
    assert past.shape == ["batch", 2, "max_length", 32]
    assert [t.name for t in graph.outputs][:3] == ["logits", "present.0.key", "present.0.value"]
    assert graph.outputs[1].shape == past.shape
    assert graph.outputs[0].shape == ["batch", "kept", 260]


def test_encoder_decoder_graphs_pass_cross_attention_once(tiny_artifact):
    manifest = fmt.read_manifest(tiny_artifact("tiny-bart"))
    encoder = [t.name for t in manifest.graphs[fmt.ENCODER_GRAPH].outputs]
    decoder = [t.name for t in manifest.graphs[fmt.DECODER_GRAPH].inputs]
    assert encoder[:3] == ["last_hidden_state", "present.0.encoder.key", "present.0.encoder.value"]
    assert "past_key_values.2.encoder.value" in decoder  # tiny-bart has 3 decoder layers
    assert "past_key_values.2.decoder.value" in decoder
    assert "position_ids" in decoder  # learned positions need them
    t5 = fmt.read_manifest(tiny_artifact("tiny-t5"))
    assert "position_ids" not in [t.name for t in t5.graphs[fmt.DECODER_GRAPH].inputs]
    assert t5.special_tokens["decoder_start"] == t5.special_tokens["pad"]


def test_tied_embedding_is_stored_once(tiny_artifact):
    path = tiny_artifact("tiny-gpt")
    weights = load_file(path / fmt.WEIGHTS)
    assert "lm_head.weight" not in weights and "embed_tokens.weight" in weights
    graph = onnx.load(str(path / fmt.DECODER_GRAPH))
    table = weights["embed_tokens.weight"]
    copies = [
        init.name
        for init in graph.graph.initializer
        if tuple(init.dims) in (table.shape, table.shape[::-1])
    ]
    assert len(copies) == 1, copies


def test_generation_defaults_and_special_tokens_are_recorded(tiny_artifact):
    path = tiny_artifact("tiny-decoder")
    generation = json.loads((path / fmt.GENERATION).read_text())
    assert generation["max_new_tokens"] == 64
    assert [step["type"] for step in generation["chain"]] == ["temperature", "top_k", "sample"]
    manifest = fmt.read_manifest(path)
    assert manifest.special_tokens == {"pad": 0, "bos": 1, "eos": 2, "unk": 3}


@pytest.mark.parametrize(
    ("precision", "ops"),
    [
        ("fp16", set()),
        ("int8", {"MatMulInteger", "DynamicQuantizeLinear"}),
        ("int4", {"MatMulNBits"}),
    ],
)
def test_other_precisions_pass_the_gate(tiny_artifact, precision, ops):
    path = tiny_artifact("tiny-gpt", precision)
    manifest = fmt.read_manifest(path)
    assert manifest.parity["passed"] and manifest.parity["precision"] == precision
    counts = count_ops(path / fmt.DECODER_GRAPH)
    assert ops <= set(counts), counts
    if precision in ("int8", "int4"):
        # The tied output projection was untied and quantized, not transposed every step.
        graph = onnx.load(str(path / fmt.DECODER_GRAPH), load_external_data=False)
        stored = {i.name for i in graph.graph.initializer}
        transposed = [
            n for n in graph.graph.node if n.op_type == "Transpose" and n.input[0] in stored
        ]
        assert not transposed
        weights = {i.name: list(i.dims) for i in graph.graph.initializer}
        assert len(weights) > 0
    if precision == "fp16":
        inputs = {t.name: t.dtype for t in manifest.graphs[fmt.DECODER_GRAPH].inputs}
        assert inputs["past_key_values.0.key"] == "float16"


def test_quantized_artifacts_are_smaller(tiny_artifact):
    sizes = {
        p: (tiny_artifact("tiny-gpt", p) / f"{fmt.DECODER_GRAPH}.data").stat().st_size
        for p in ("fp32", "int8", "int4")
    }
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"]


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_the_quantized_weight_estimate_matches_the_stored_tensors(tiny_artifact, precision):
    """estimates.counts.weight_bytes against every initializer of the exported graph: the
    output projection (tiny-gpt's is tied: quantization stores an untied copy of the table)
    included; within 5% (what is left: scales and zero points of the quantizers' own layout)."""
    graph = onnx.load(str(tiny_artifact("tiny-gpt", precision) / fmt.DECODER_GRAPH))
    stored = sum(numpy_helper.to_array(i).nbytes for i in graph.graph.initializer)
    estimated = weight_bytes(load_spec(SPECS / "tiny-gpt.yaml"), precision)
    assert abs(stored / estimated - 1) < 0.05, (stored, estimated)


def test_bf16_without_cuda_says_it_needs_a_gpu(tmp_path):
    with pytest.raises(ExportError, match="bf16 graphs need the CUDA provider"):
        export(SPECS / "tiny-gpt.yaml", tmp_path / "a", precision="bf16", progress=_quiet)
    assert not (tmp_path / "a").exists()


def test_existing_artifact_is_replaced_only_with_force(tiny_artifact, tmp_path):
    target = tmp_path / "artifact"
    export(SPECS / "tiny-encoder.yaml", target, progress=_quiet)
    before = (target / fmt.MANIFEST).read_text()
    with pytest.raises(ExportError, match="exists; pass --force"):
        export(SPECS / "tiny-encoder.yaml", target, progress=_quiet)
    assert (target / fmt.MANIFEST).read_text() == before
    export(SPECS / "tiny-encoder.yaml", target, force=True, quantize="int8", progress=_quiet)
    assert fmt.read_manifest(target).quantize == "int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_a_failed_write_leaves_the_previous_artifact_and_no_debris(tmp_path, monkeypatch):
    target = tmp_path / "artifact"
    export(SPECS / "tiny-encoder.yaml", target, progress=_quiet)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        export(SPECS / "tiny-encoder.yaml", target, force=True, progress=_quiet)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]


def test_kill_9_mid_export_leaves_the_previous_artifact_intact(tmp_path):
    target = tmp_path / "artifact"
    export(SPECS / "tiny-encoder.yaml", target, progress=_quiet)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    code = (
        "from llmspec.exporter.pipeline import export; import sys; "
        "export(sys.argv[1], sys.argv[2], force=True)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(SPECS / "tiny-bart.yaml"), str(target)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Kill it once it is writing graphs into its staging directory.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        partial = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
        if partial and any(f.suffix == ".data" for f in partial[0].iterdir()):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the export finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    fmt.verify_files(target, fmt.read_manifest(target))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "artifact"]
    assert all(name.startswith(".artifact.") and name.endswith(".partial") for name in leftovers)


def test_a_model_directory_exports_its_own_weights(tmp_path):
    import torch
    from safetensors.torch import save_file

    from llmspec.builder import build
    from llmspec.spec.loading import dump_spec

    spec = load_spec(SPECS / "tiny-gpt.yaml")
    torch.manual_seed(123)
    model = build(spec)
    source = tmp_path / "run"
    source.mkdir()
    (source / "spec.yaml").write_text(dump_spec(spec))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, source / fmt.WEIGHTS)
    path = export(source, tmp_path / "artifact", progress=_quiet)
    exported = load_file(path / fmt.WEIGHTS)
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(exported[name], tensor.numpy())


def test_cli_export_reports_bad_inputs_with_exit_one(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "a")]) == 1
    (tmp_path / "dir").mkdir()
    assert main(["export", str(tmp_path / "dir"), "-o", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "no such file" in err and "a model directory needs spec.yaml" in err
    assert "Traceback" not in err


# The fusions ONNX Runtime's transformer optimizer finds in each family's graphs, per layer
# count L, and the attention sub-graphs fused into ONNX's Attention
# (llmspec.exporter.rewrites.attention):
# every one except T5's self-attention, whose relative position bias is added to the scores;
# a decoder's self-attention with its cache then becomes GroupQueryAttention on the in-place
# cache (llmspec.exporter.rewrites.kv_cache), cross-attention stays Attention;
# and the MatMuls that read the same input packed into one
# (llmspec.exporter.rewrites.matmul_packing): q|k|v,
# gate|up of gated feed-forwards, every decoder layer's cross-attention k|v from the encoder.
# A change here means the exported patterns changed: look before updating.
EXPECTED_FUSIONS = {
    # pre-norm LayerNorm: two per layer and the final norm; tanh GELU once per layer
    "tiny-gpt": {
        "decoder.onnx": {
            "FastGelu": 2,
            "GroupQueryAttention": 2,
            "PackedMatMul": 2,
            "SkipLayerNormalization": 2 * 2 + 1,
        }
    },
    # RMSNorm: the first norm stands alone, the others follow a residual add
    "tiny-decoder": {
        "decoder.onnx": {
            "GroupQueryAttention": 4,
            "PackedMatMul": 4 * 2,  # q|k|v and gate|up
            "RotaryEmbedding": 4 * 2,  # queries and keys (llmspec.exporter.rewrites.rotary)
            "SimplifiedLayerNormalization": 1,
            "SkipSimplifiedLayerNormalization": 8,
        }
    },
    # BERT: embeddings + norm, post-norm after each residual, bias+GELU in layers and head
    "tiny-encoder": {
        "encoder.onnx": {
            "Attention": 2,
            "BiasGelu": 2 + 1,
            "EmbedLayerNormalization": 1,
            "LayerNormalization": 1,
            "PackedMatMul": 2,
            "SkipLayerNormalization": 2 * 2,
        }
    },
    "tiny-t5": {
        "encoder.onnx": {
            "FastGelu": 2,
            "PackedMatMul": 2 * 2 + 1,  # q|k|v, wi_0|wi_1, then all cross k|v of the decoder
            "SimplifiedLayerNormalization": 1,
            "SkipSimplifiedLayerNormalization": 2 * 2,
        },
        "decoder.onnx": {
            "Attention": 2,  # cross-attention only
            "FastGelu": 2,
            "PackedMatMul": 2 * 2,  # self q|k|v, wi_0|wi_1
            "SimplifiedLayerNormalization": 1,
            "SkipSimplifiedLayerNormalization": 3 * 2,
        },
    },
    "tiny-bart": {
        "encoder.onnx": {
            "Attention": 2,
            "BiasGelu": 2,
            "EmbedLayerNormalization": 1,
            "PackedMatMul": 2 + 1,  # q|k|v per layer, the decoder's cross k|v
            "SkipLayerNormalization": 4,
        },
        "decoder.onnx": {
            "Attention": 3,  # cross-attention
            "BiasGelu": 3,
            "EmbedLayerNormalization": 1,
            "GroupQueryAttention": 3,  # self-attention
            "PackedMatMul": 3,  # self q|k|v
            "SkipLayerNormalization": 9,
        },
    },
}


@pytest.mark.parametrize("name", FAMILIES)
def test_graphs_get_the_expected_fusions(tiny_artifact, name):
    manifest = fmt.read_manifest(tiny_artifact(name))
    assert manifest.fusions == EXPECTED_FUSIONS[name]
    for graph, fused in manifest.fusions.items():
        ops = count_ops(tiny_artifact(name) / graph)
        packed = fused.pop("PackedMatMul", 0)  # a MatMul like the others, followed by a Split
        assert set(fused) <= set(ops)
        assert ops.get("Split", 0) >= packed


def test_the_gate_tolerance_can_be_set_and_is_recorded(tmp_path):
    from llmspec.exporter.parity import ParityError

    with pytest.raises(ParityError, match="int8 graphs fail the parity gate"):
        export(
            SPECS / "tiny-decoder.yaml",
            tmp_path / "strict",
            quantize="int8",
            tolerance=1e-9,
            progress=_quiet,
        )
    assert not (tmp_path / "strict").exists()
    target = export(
        SPECS / "tiny-decoder.yaml",
        tmp_path / "loose",
        quantize="int8",
        tolerance=0.5,
        progress=_quiet,
    )
    parity = fmt.read_manifest(target).parity
    assert parity["relative_tolerance"] == 0.5 and parity["tolerance_overridden"] is True
    assert all(c["tolerance"] >= 0.5 for c in parity["checks"])


@pytest.mark.parametrize("bad", ["0", "-0.1", "1.5", "tight"])
def test_cli_rejects_a_tolerance_outside_0_1(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "export",
                str(SPECS / "tiny-decoder.yaml"),
                "-o",
                str(tmp_path / "a"),
                "--tolerance",
                bad,
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--tolerance" in err and ("at most 1" in err or "expected a number" in err)


def test_a_failed_gate_whose_top1_agrees_points_at_the_tolerance():
    from llmspec.exporter.parity import Check, ParityError, ParityReport

    near = ParityReport("int4", "CPUExecutionProvider", [Check("prefill", 0.9, 2.5, 0.75, True)])
    assert "--tolerance (now 0.3)" in str(ParityError(near))
    wrong = ParityReport("int4", "CPUExecutionProvider", [Check("prefill", 0.9, 2.5, 0.75, False)])
    assert "--tolerance" not in str(ParityError(wrong))  # a wrong answer is not a tolerance matter


def test_a_failing_graph_rewrite_names_the_graph_and_stage(tmp_path, monkeypatch):
    import llmspec.exporter.pipeline as pipeline

    def broken(model):
        raise RuntimeError("pattern went wrong")

    monkeypatch.setattr(pipeline, "PACK_MATMULS", Rewrite(broken, fuses="PackedMatMul"))
    with pytest.raises(ExportError, match=r"optimizing decoder.onnx failed: RuntimeError: pattern"):
        export(SPECS / "tiny-decoder.yaml", tmp_path / "a", progress=_quiet)
    assert not (tmp_path / "a").exists()
    assert list(tmp_path.iterdir()) == []  # no staging debris
