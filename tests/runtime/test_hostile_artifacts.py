"""Hostile artifacts: ``runtime.load`` and ``llmspec verify`` refuse every one with our error
naming the file or field (ArtifactError; exit 1 without a traceback), and no mutation of a
valid artifact's JSON files gives any other exception.

Each case starts from a copy of one tiny exported artifact and does what an attacker (or an
accident) would: leave files out of the manifest, name files outside the artifact, plant
symlinks, subdirectories and stray files, change weights, lie in the manifest's fields, or make
manifest.json itself deep, huge, a FIFO or not UTF-8.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runtime
from llmspec.cli import main
from runtime import artifact as fmt

DATA = "decoder.onnx.data"


@pytest.fixture(scope="module")
def base(tiny_artifact) -> Path:
    return tiny_artifact("tiny-gpt", "fp32")


def _copy(base: Path, tmp_path: Path) -> Path:
    root = tmp_path / "artifact"
    shutil.copytree(base, root)
    return root


def _manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / fmt.MANIFEST).read_text())


def _write_manifest(root: Path, data: dict[str, Any]) -> None:
    (root / fmt.MANIFEST).write_text(json.dumps(data, indent=2))


def _edit(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        data = _manifest(root)
        change(data)
        _write_manifest(root, data)

    return damage


def _listed(name: str, path: Path) -> Callable[[dict[str, Any]], None]:
    """List ``name`` in the manifest with the real size and sha256 of ``path``."""

    def change(data: dict[str, Any]) -> None:
        info = fmt.file_info(path)
        data["files"][name] = {"size": info.size, "sha256": info.sha256}

    return change


def _set(*keys: Any, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


def _delete(*keys: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return change


def _every_cache(axis: int, value: int) -> Callable[[dict[str, Any]], None]:
    """Make every cache tensor's ``axis`` ``value`` in the manifest (a consistent lie)."""

    def change(data: dict[str, Any]) -> None:
        graph = data["graphs"][fmt.DECODER_GRAPH]
        for tensor in graph["inputs"] + graph["outputs"]:
            if tensor["name"].startswith(("past_key_values.", "present.")):
                tensor["shape"][axis] = value

    return change


def _symlink_outside(root: Path) -> None:
    outside = root.parent / "outside-tokenizer.json"
    shutil.copy(root / fmt.TOKENIZER, outside)  # same bytes: the sha256 still matches
    (root / fmt.TOKENIZER).unlink()
    (root / fmt.TOKENIZER).symlink_to(outside)


def _symlink_listed(root: Path) -> None:
    (root / "passwd").symlink_to("/etc/passwd")
    _edit(_listed("passwd", Path("/etc/passwd")))(root)


def _tamper_weights(root: Path) -> None:
    path = root / fmt.WEIGHTS
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _replace_weights_unlisted(root: Path) -> None:
    """Issue 12's first finding: leave the external data out and replace every weight."""
    path = root / DATA
    path.write_bytes(bytes(path.stat().st_size))
    _edit(_delete("files", DATA))(root)


def _fifo_listed(root: Path) -> None:
    (root / DATA).unlink()
    os.mkfifo(root / DATA)
    _edit(_set("files", DATA, "size", value=0))(root)


def _manifest_bytes(data: bytes) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        (root / fmt.MANIFEST).write_bytes(data)

    return damage


def _manifest_fifo(root: Path) -> None:
    (root / fmt.MANIFEST).unlink()
    os.mkfifo(root / fmt.MANIFEST)


def _manifest_symlink(root: Path) -> None:
    outside = root.parent / "outside-manifest.json"
    shutil.move(root / fmt.MANIFEST, outside)
    (root / fmt.MANIFEST).symlink_to(outside)


def _huge_int_text(root: Path) -> None:
    text = (root / fmt.MANIFEST).read_text()
    (root / fmt.MANIFEST).write_text(text.replace('"layers": 2', '"layers": ' + "9" * 5000))


def _non_utf8(root: Path) -> None:
    text = (root / fmt.MANIFEST).read_bytes()
    (root / fmt.MANIFEST).write_bytes(text.replace(b'"tiny-gpt"', b'"tiny-\xff\xfegpt"'))


def _unnamed(root: Path) -> None:
    (root / fmt.MODEL_CARD).unlink()
    _edit(_delete("files", fmt.MODEL_CARD))(root)


# (id, damage, what the message must contain: one text, or one for load and one for verify)
CASES: list[tuple[str, Callable[[Path], None], str | tuple[str, str]]] = [
    # -- files the manifest does not account for
    ("external data omitted", _edit(_delete("files", DATA)), f"{DATA}: a file not listed"),
    ("weights replaced, data unlisted", _replace_weights_unlisted, f"{DATA}: a file not listed"),
    ("files empty", _edit(_set("files", value={})), "spec.yaml: not listed in manifest.json"),
    ("required file unlisted and gone", _unnamed, "MODEL_CARD.md: not listed in manifest.json"),
    ("extra unlisted file", lambda r: (r / "notes.txt").write_text("hi"), "notes.txt: a file"),
    ("subdirectory", lambda r: (r / "sub").mkdir(), "sub: a directory not listed"),
    ("hidden unlisted file", lambda r: (r / ".x").write_text("hi"), ".x: a file not listed"),
    # -- names that escape
    (
        "dot-dot name",
        _edit(_listed("../../../etc/passwd", Path("/etc/passwd"))),
        "'../../../etc/passwd', which is not a plain file name",
    ),
    (
        "absolute name",
        _edit(_listed("/etc/passwd", Path("/etc/passwd"))),
        "'/etc/passwd', which is not a plain file name",
    ),
    ("NUL in a name", _edit(_listed("a\0b", Path("/etc/passwd"))), "not a plain file name"),
    ("hidden name", _edit(_listed(".hidden", Path("/etc/passwd"))), "not a plain file name"),
    ("manifest lists itself", _edit(_listed("manifest.json", Path("/etc/passwd"))), "plain"),
    ("symlink out of the artifact", _symlink_outside, "tokenizer.json: is a symbolic link"),
    ("listed symlink to /etc/passwd", _symlink_listed, "passwd: is a symbolic link"),
    ("manifest.json a symlink", _manifest_symlink, "manifest.json: is a symbolic link"),
    # -- changed contents
    ("tampered weights", _tamper_weights, "weights.safetensors: sha256 differs"),
    ("listed file a FIFO", _fifo_listed, f"{DATA}: is a FIFO"),
    # -- lying fields, caught against the manifest's own graph signatures
    ("layers", _edit(_set("layers", value=3)), "layers is 3, but decoder.onnx has 4"),
    ("kv_heads", _edit(_set("kv_heads", value=8)), "kv_heads is 8, but decoder.onnx's"),
    ("head_dim", _edit(_set("head_dim", value=32)), "head_dim is 32, but decoder.onnx's"),
    ("vocab_size smaller", _edit(_set("vocab_size", value=100)), "vocab_size is 100, but"),
    ("vocab_size larger", _edit(_set("vocab_size", value=1000)), "vocab_size is 1000, but"),
    (
        "logits shape",
        _edit(_set("graphs", fmt.DECODER_GRAPH, "outputs", 0, "shape", 2, value=999)),
        "vocab_size is 258, but decoder.onnx's logits has 999",
    ),
    (
        "context_length absurd",
        _edit(_set("context_length", value=10**12)),
        "context_length must be an integer in [1, 2147483647], got 1000000000000",
    ),
    ("context_length zero", _edit(_set("context_length", value=0)), "context_length must be"),
    (
        "special token beyond vocab",
        _edit(_set("special_tokens", "eos", value=258)),
        "special_tokens.eos is 258, outside the vocabulary (vocab_size 258)",
    ),
    (
        "negative special token",
        _edit(_set("special_tokens", "eos", value=-1)),
        "special_tokens.eos",
    ),
    (
        "special token a string",
        _edit(_set("special_tokens", "pad", value="0")),
        "special_tokens.pad",
    ),
    ("special tokens a list", _edit(_set("special_tokens", value=[0])), "special_tokens must be"),
    (
        "input renamed",
        _edit(_set("graphs", fmt.DECODER_GRAPH, "inputs", 3, "name", value="past_key_values.0.k")),
        "contract",
    ),
    (
        "extra graph",
        _edit(_set("graphs", fmt.ENCODER_GRAPH, value={"inputs": [], "outputs": []})),
        "graphs lists",
    ),
    ("architecture changed", _edit(_set("architecture", value="encoder-only")), "graphs lists"),
    (
        "cache input int64",
        _edit(_set("graphs", fmt.DECODER_GRAPH, "inputs", 3, "dtype", value="int64")),
        "float tensor",
    ),
    # -- consistent lies: caught against ONNX Runtime's view of the graph
    (
        "kv_heads, consistently",
        lambda r: _edit(_every_cache(1, 8))(r) or _edit(_set("kv_heads", value=8))(r),
        (  # load compares the graph with the manifest; verify first the spec
            "input past_key_values.0.key is float32 ['batch', 4, 'max_length', 16]",
            "spec.yaml: disagrees with the manifest: kv_heads is 4, the manifest says 8",
        ),
    ),
    (
        "logits dtype",
        _edit(_set("graphs", fmt.DECODER_GRAPH, "outputs", 0, "dtype", value="float16")),
        "output logits is float32",
    ),
    # -- wrong types and shapes of fields
    ("layers a string", _edit(_set("layers", value="2")), "layers must be an integer"),
    ("layers a float", _edit(_set("layers", value=2.0)), "layers must be an integer"),
    ("layers a bool", _edit(_set("layers", value=True)), "layers must be an integer"),
    (
        "layers huge",
        _edit(_set("layers", value=10**30)),
        "layers must be an integer in [1, 2147483647], got an integer of 100 bits",
    ),
    ("layers 5000 digits", _huge_int_text, "not valid JSON"),
    ("layers missing", _edit(_delete("layers")), "malformed manifest: lacks the fields layers"),
    (
        "unknown field",
        _edit(_set("evil", value=1)),
        "malformed manifest: has unknown fields ['evil']",
    ),
    ("files a list", _edit(_set("files", value=["spec.yaml"])), "files must be a JSON object"),
    ("negative size", _edit(_set("files", fmt.SPEC, "size", value=-1)), "files.spec.yaml.size"),
    ("size a string", _edit(_set("files", fmt.SPEC, "size", value="891")), "files.spec.yaml.size"),
    (
        "sha256 not hex",
        _edit(_set("files", fmt.SPEC, "sha256", value="z" * 64)),
        "files.spec.yaml.sha256",
    ),
    ("file info nested", _edit(_set("files", fmt.SPEC, value=[[[[]]]])), "files.spec.yaml must be"),
    (
        "graphs garbage",
        _edit(_set("graphs", fmt.DECODER_GRAPH, value=[1, 2])),
        "graphs.decoder.onnx must be",
    ),
    (
        "shape nested",
        _edit(_set("graphs", fmt.DECODER_GRAPH, "inputs", 0, "shape", 0, value=[[1]])),
        "inputs[0].shape[0]",
    ),
    (
        "tensor extra key",
        _edit(_set("graphs", fmt.DECODER_GRAPH, "inputs", 0, "x", value=1)),
        "inputs[0] must have exactly",
    ),
    (
        "precision unknown",
        _edit(_set("precision", value="fp64")),
        "precision must be one of fp32, fp16, bf16",
    ),
    ("quantize unknown", _edit(_set("quantize", value="int2")), "quantize must be one of"),
    (
        "fusions garbage",
        _edit(_set("fusions", value={"decoder.onnx": {"Attention": "2"}})),
        "fusions.decoder.onnx.Attention",
    ),
    ("parity a list", _edit(_set("parity", value=[])), "parity must be a JSON object"),
    ("format_version true", _edit(_set("format_version", value=True)), "format version true"),
    (
        "not an object",
        _manifest_bytes(b"[1, 2, 3]"),
        "expected a JSON object, got a list of 3 items",
    ),
    # -- manifest.json itself
    (
        "deeply nested",
        _manifest_bytes(b"[" * 100_000 + b"]" * 100_000),
        "nested 100000 levels deep",
    ),
    (
        "huge",
        _manifest_bytes(b" " * (fmt.MANIFEST_LIMIT + 1) + b"{}"),
        "larger than 16777216 bytes",
    ),
    ("a FIFO", _manifest_fifo, "manifest.json: is a FIFO"),
    (
        "a directory",
        lambda r: (r / fmt.MANIFEST).unlink() or (r / fmt.MANIFEST).mkdir(),
        "manifest.json: is a directory",
    ),
    ("not UTF-8", _non_utf8, "manifest.json: not UTF-8"),
    ("empty", _manifest_bytes(b""), "manifest.json: not valid JSON"),
    ("missing", lambda r: (r / fmt.MANIFEST).unlink(), "manifest.json: missing"),
]


@pytest.mark.parametrize(("damage", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_artifact_is_refused_by_load_and_verify(base, tmp_path, capsys, damage, expected):
    by_load, by_verify = expected if isinstance(expected, tuple) else (expected, expected)
    root = _copy(base, tmp_path)
    damage(root)
    with pytest.raises(runtime.ArtifactError) as caught:
        runtime.load(root, device="cpu")
    assert by_load in str(caught.value)
    status = main(["verify", str(root), "--examples", "1"])
    output = capsys.readouterr()
    assert status == 1
    assert by_verify in output.out + output.err
    assert "Traceback" not in output.err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (_set("layers", value=3), "layers is 3, but encoder.onnx has 4 present outputs"),
        (_delete("special_tokens", "decoder_start"), "needs special_tokens.decoder_start"),
        (_delete("graphs", fmt.ENCODER_GRAPH), "graphs lists ['decoder.onnx']"),
        (_delete("files", "encoder.onnx.data"), "encoder.onnx.data: a file not listed"),
    ],
    ids=["layers", "decoder_start", "encoder graph", "encoder data"],
)
def test_hostile_encoder_decoder_artifact_is_refused(tiny_artifact, tmp_path, change, expected):
    root = _copy(tiny_artifact("tiny-t5", "fp32"), tmp_path)
    _edit(change)(root)
    with pytest.raises(runtime.ArtifactError, match=re.escape(expected)):
        runtime.load(root, device="cpu")


def test_unlisted_external_data_was_what_let_weights_be_replaced(base, tmp_path):
    """The listed-file check alone passed issue 12's attack; the exact listing refuses it."""
    root = _copy(base, tmp_path)
    _replace_weights_unlisted(root)
    manifest = fmt.read_manifest(root)  # the manifest itself is well-formed
    assert DATA not in manifest.files
    with pytest.raises(runtime.ArtifactError, match="decoder.onnx.data: a file not listed"):
        fmt.verify_files(root, manifest)


def test_signature_file_is_the_one_unlisted_file_allowed(base, tmp_path):
    root = _copy(base, tmp_path)
    (root / fmt.SIGNATURE).write_bytes(b"\0" * 64)  # not checked unless a key is required
    runtime.load(root, device="cpu")


def test_a_lying_context_length_is_refused_by_verify_and_by_the_graph_at_run_time(
    base, tmp_path, capsys
):
    """Nothing in a graph's signature states its context length, so load cannot see this lie;
    verify compares it with spec.yaml, and a request beyond the graph's real position table
    ends in ArtifactError naming the graph, not ONNX Runtime's exception."""
    root = _copy(base, tmp_path)
    _edit(_set("context_length", value=4096))(root)
    model = runtime.load(root, device="cpu")
    with pytest.raises(runtime.ArtifactError, match=r"decoder\.onnx: ONNX Runtime refused"):
        model.generate([[5] * 140], max_new_tokens=1)
    assert main(["verify", str(root), "--examples", "1"]) == 1
    assert "context_length is 128, the manifest says 4096" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Random mutations of the JSON files


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["../x", "/etc/passwd", "decoder.onnx", "float32", "batch", "greedy"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document (the root included)."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


@st.composite
def _mutated(draw: Any, document: Any) -> Any:
    """``document`` with one to three places below its root replaced, deleted or given an
    extra key (a document that is not an object at all is a case of its own)."""
    result = json.loads(json.dumps(document))
    for _ in range(draw(st.integers(1, 3))):
        places = _paths(result)[1:]
        if not places:
            break
        place = draw(st.sampled_from(places))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        parent = result
        for key in place[:-1]:
            parent = parent[key]
        if action == "delete":
            del parent[place[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(_VALUES)
        else:
            parent[place[-1]] = draw(_VALUES)
    return result


def _load_or_artifact_error(root: Path) -> None:
    with contextlib.suppress(runtime.ArtifactError):
        runtime.load(root, device="cpu")


def test_no_mutation_of_manifest_json_gives_another_exception(base, tmp_path):
    root = _copy(base, tmp_path)
    original = _manifest(root)

    @settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
    @given(_mutated(original))
    def check(mutated: Any) -> None:
        (root / fmt.MANIFEST).write_text(json.dumps(mutated))
        _load_or_artifact_error(root)

    check()


def test_no_mutation_of_generation_json_gives_another_exception(base, tmp_path):
    """generation.json resealed in the manifest after each mutation, so its checksum passes and
    its contents are what load reads."""
    root = _copy(base, tmp_path)
    manifest = _manifest(root)
    original = json.loads((root / fmt.GENERATION).read_text())

    @settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
    @given(_mutated(original))
    def check(mutated: Any) -> None:
        (root / fmt.GENERATION).write_text(json.dumps(mutated))
        _listed(fmt.GENERATION, root / fmt.GENERATION)(manifest)
        _write_manifest(root, manifest)
        _load_or_artifact_error(root)

    check()
