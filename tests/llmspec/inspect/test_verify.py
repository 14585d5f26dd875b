"""``llmspec verify``: good artifacts of every family pass; damaged ones fail naming the file;
a graph whose causal mask was removed (checksums recomputed) fails the causal property."""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmspec.cli.verify import add_arguments as add_verify_arguments
from llmspec.cli.verify import run as verify_command
from llmspec.inspect.verify import verify
from runtime import artifact as fmt

ROOT = Path(__file__).resolve().parents[3]
SPECS = ROOT / "specs"
EXAMPLES = 4  # per property: enough to exercise every path; the properties' power is in CI runs

PROPERTIES = {
    "decoder-only": ["decoder causal", "decoder left padding", "decoder cache == full pass"],
    "encoder-only": ["encoder bidirectional", "encoder right padding"],
    "encoder-decoder": [
        "encoder bidirectional",
        "source right padding",
        "decoder causal",
        "decoder cache == full pass",
    ],
}


@pytest.fixture(scope="module")
def artifact(tiny_artifact):
    """``artifact("tiny-gpt", "int8")``: an artifact of that tiny spec, shared with the other
    tests of the session (tests/conftest.py). Copy it (:func:`_copy`) before damaging it."""

    def make(name: str, quantize: str | None = None) -> Path:
        return tiny_artifact(name, quantize or "fp32")

    return make


def _copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / source.name
    shutil.copytree(source, target)
    return target


def _run_cli(capsys, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="llmspec verify")
    add_verify_arguments(parser)
    status = verify_command(parser.parse_args(list(argv)))
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def _reseal(root: Path, *names: str) -> None:
    """Recompute the manifest's size and sha256 of ``names``, as a careful tamperer would."""
    data = json.loads((root / fmt.MANIFEST).read_text())
    for name in names:
        info = fmt.file_info(root / name)
        data["files"][name] = {"size": info.size, "sha256": info.sha256}
    (root / fmt.MANIFEST).write_text(json.dumps(data, indent=2))


# ------------------------------------------------------------------------------------------
# Good artifacts


@pytest.mark.parametrize(
    ("name", "quantize"),
    [("tiny-gpt", None), ("tiny-encoder", None), ("tiny-t5", None), ("tiny-gpt", "int8")],
)
def test_good_artifacts_pass_every_check(artifact, name, quantize):
    path = artifact(name, quantize)
    report = verify(path, examples=EXAMPLES)
    assert report.passed, report.render()
    assert report.error is None
    names = [check.name for check in report.checks]
    assert names[:6] == ["manifest", "files", "spec", "tokenizer", "generation", "graph signatures"]
    assert names[6:] == PROPERTIES[report.architecture]
    for check in report.checks[6:]:
        assert check.examples == EXAMPLES, check
        assert check.worst is not None and check.tolerance is not None
        if check.kind == "equal":
            assert check.worst <= check.tolerance
        else:
            assert check.kind == "changes" and check.worst > check.tolerance
    assert report.precision == (quantize or "fp32")


def test_cli_prints_a_report_and_exits_0(artifact, capsys):
    path = artifact("tiny-gpt")
    status, output = _run_cli(capsys, str(path), "--examples", "2")
    assert status == 0, output
    assert "PASS  decoder causal" in output
    assert "worst |diff|" in output
    assert "verified: all 9 checks passed" in output


def test_cli_json_report(artifact, capsys):
    path = artifact("tiny-t5")
    parser = argparse.ArgumentParser()
    add_verify_arguments(parser)
    status = verify_command(parser.parse_args([str(path), "--examples", "2", "--json"]))
    data = json.loads(capsys.readouterr().out)
    assert status == 0
    assert data["passed"] is True and data["error"] is None
    assert data["architecture"] == "encoder-decoder"
    by_name = {check["name"]: check for check in data["checks"]}
    assert by_name["decoder cache == full pass"]["examples"] == 2
    assert by_name["encoder bidirectional"]["kind"] == "changes"


def test_arguments_and_defaults():
    parser = argparse.ArgumentParser()
    add_verify_arguments(parser)
    args = parser.parse_args(["some/artifact"])
    assert (args.artifact, args.examples, args.device, args.json) == (
        "some/artifact",
        20,
        "cpu",
        False,
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["a", "--examples", "0"])


def test_verify_imports_neither_torch_nor_onnx(artifact):
    path = artifact("tiny-gpt")
    code = (
        "import sys\n"
        "from llmspec.inspect.verify import verify\n"
        f"assert verify({str(path)!r}, examples=1).passed\n"
        "print(' '.join(m for m in ('torch', 'onnx', 'jinja2') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == ""


# ------------------------------------------------------------------------------------------
# Damaged artifacts: exit 1, the file named, no traceback


def _damage_truncate_weights(root: Path) -> str:
    path = root / fmt.WEIGHTS
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return f"{path}: {len(data) // 2} bytes"


def _damage_tamper_graph(root: Path) -> str:
    path = root / fmt.DECODER_GRAPH
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"{path}: sha256 differs"


def _damage_delete_tokenizer(root: Path) -> str:
    (root / fmt.TOKENIZER).unlink()
    return f"{root / fmt.TOKENIZER}: missing"


def _damage_delete_external_data(root: Path) -> str:
    (root / "decoder.onnx.data").unlink()
    return f"{root / 'decoder.onnx.data'}: missing"


def _damage_other_format_version(root: Path) -> str:
    data = json.loads((root / fmt.MANIFEST).read_text())
    data["format_version"] = fmt.FORMAT_VERSION + 1
    (root / fmt.MANIFEST).write_text(json.dumps(data))
    return f"{root / fmt.MANIFEST}: format version {fmt.FORMAT_VERSION + 1}"


def _damage_manifest_not_json(root: Path) -> str:
    (root / fmt.MANIFEST).write_text('{"format_version": 1,')
    return f"{root / fmt.MANIFEST}: not valid JSON"


def _damage_manifest_files_not_a_mapping(root: Path) -> str:
    data = json.loads((root / fmt.MANIFEST).read_text())
    data["files"] = sorted(data["files"])
    (root / fmt.MANIFEST).write_text(json.dumps(data))
    return f"{root / fmt.MANIFEST}: malformed manifest"


def _damage_unlisted_tokenizer(root: Path) -> str:
    data = json.loads((root / fmt.MANIFEST).read_text())
    del data["files"][fmt.TOKENIZER]
    (root / fmt.MANIFEST).write_text(json.dumps(data))
    return f"{root / fmt.TOKENIZER}: not listed in manifest.json"


def _damage_resealed_garbage_graph(root: Path) -> str:
    (root / fmt.DECODER_GRAPH).write_bytes(b"not a protobuf at all")
    _reseal(root, fmt.DECODER_GRAPH)
    return f"{root / fmt.DECODER_GRAPH}: ONNX Runtime cannot load it"


@pytest.mark.parametrize(
    "damage",
    [
        _damage_truncate_weights,
        _damage_tamper_graph,
        _damage_delete_tokenizer,
        _damage_delete_external_data,
        _damage_other_format_version,
        _damage_manifest_not_json,
        _damage_manifest_files_not_a_mapping,
        _damage_unlisted_tokenizer,
        _damage_resealed_garbage_graph,
    ],
)
def test_damaged_artifact_fails_naming_the_file(artifact, tmp_path, capsys, damage):
    root = _copy(artifact("tiny-gpt"), tmp_path)
    expected = damage(root)
    status, output = _run_cli(capsys, str(root), "--examples", "2")
    assert status == 1
    assert expected in output
    assert "not verified: the artifact is unusable" in output
    assert "Traceback" not in output
    report = verify(root, examples=2)
    assert not report.passed and expected in (report.error or "")


def test_not_a_directory(tmp_path, capsys):
    status, output = _run_cli(capsys, str(tmp_path / "nothing"))
    assert status == 1
    assert f"{tmp_path / 'nothing'}: not an artifact directory" in output


def test_spec_disagreeing_with_the_manifest_is_named(artifact, tmp_path):
    root = _copy(artifact("tiny-gpt"), tmp_path)
    spec = root / fmt.SPEC
    spec.write_text(spec.read_text().replace("size: 258", "size: 300"))
    _reseal(root, fmt.SPEC)
    report = verify(root, examples=1)
    assert not report.passed
    assert f"{spec}: disagrees with the manifest" in report.error
    assert "vocab_size is 300, the manifest says 258" in report.error


def test_graph_signature_differing_from_the_manifest_fails(artifact, tmp_path):
    root = _copy(artifact("tiny-gpt"), tmp_path)
    data = json.loads((root / fmt.MANIFEST).read_text())
    # consistent with the manifest's own fields (a lying vocab_size is refused earlier, by
    # read_manifest), but not what the graph says
    data["graphs"][fmt.DECODER_GRAPH]["outputs"][0]["shape"] = ["batch", "tokens", 258]
    (root / fmt.MANIFEST).write_text(json.dumps(data))
    report = verify(root, examples=1)
    assert not report.passed and report.error is None
    (signatures,) = [c for c in report.checks if c.name == "graph signatures"]
    assert not signatures.passed
    assert "decoder.onnx: output logits is float32 ['batch', 'kept', 258]" in signatures.detail
    assert "the manifest says float32 ['batch', 'tokens', 258]" in signatures.detail
    assert report.checks[-1] is signatures  # properties do not run on a mislabelled graph


# ------------------------------------------------------------------------------------------
# A graph that lost its causal mask, with the checksums made to match


def _leak_the_future(graph_path: Path) -> None:
    """Add to every position's token embedding the mean embedding of the whole sequence, so
    that each position sees the tokens after it. (Removing the mask's causal comparison no
    longer does it: GroupQueryAttention applies causality itself.)"""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(graph_path), load_external_data=False)
    nodes = list(model.graph.node)
    (index,) = [
        i for i, node in enumerate(nodes) if node.op_type == "Gather" and "input_ids" in node.input
    ]
    embedded = nodes[index].output[0]
    leaked = f"{embedded}_leaked"
    for node in nodes[index + 1 :]:
        for j, name in enumerate(node.input):
            if name == embedded:
                node.input[j] = leaked
    model.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "leak_axes"))
    extra = [
        helper.make_node("ReduceMean", [embedded, "leak_axes"], [f"{embedded}_mean"], keepdims=1),
        helper.make_node("Add", [embedded, f"{embedded}_mean"], [leaked]),
    ]
    del model.graph.node[:]
    model.graph.node.extend([*nodes[: index + 1], *extra, *nodes[index + 1 :]])
    onnx.save(model, str(graph_path))  # the weights stay in decoder.onnx.data


def test_decoder_that_sees_the_future_fails_the_causal_property(artifact, tmp_path):
    root = _copy(artifact("tiny-gpt"), tmp_path)
    _leak_the_future(root / fmt.DECODER_GRAPH)
    _reseal(root, fmt.DECODER_GRAPH)
    report = verify(root, examples=EXAMPLES)
    assert not report.passed and report.error is None
    by_name = {check.name: check for check in report.checks}
    assert by_name["files"].passed and by_name["graph signatures"].passed
    causal = by_name["decoder causal"]
    assert not causal.passed
    assert causal.worst > 100 * causal.tolerance
    # shrunk to the smallest case: two tokens, the second changed, position 0 differs
    assert causal.falsifying is not None and causal.falsifying["cut"] == 0
    assert len(causal.falsifying["tokens"]) == 2
    assert "logits at position 0 differs by" in causal.detail
    assert not by_name["decoder cache == full pass"].passed
    text = report.render()
    assert "FAIL  decoder causal" in text and "falsifying example: {" in text


def test_without_hypothesis_the_files_are_checked_and_the_run_fails(artifact, monkeypatch):
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # `import hypothesis` raises
    report = verify(artifact("tiny-encoder"), examples=1)
    assert not report.passed
    assert all(check.passed for check in report.checks[:-1])
    assert "pip install hypothesis" in report.checks[-1].detail
