"""Reading the artifact format: the manifest round-trips; bad files are named in the error."""

import json

import pytest

from runtime.artifact import (
    FORMAT_VERSION,
    MANIFEST,
    REQUIRED_FILES,
    ArtifactError,
    FileInfo,
    GraphInfo,
    Manifest,
    TensorInfo,
    file_info,
    past_name,
    present_name,
    read_manifest,
    verify_files,
)


def _cache(name, length):
    return TensorInfo(name, "float32", ["batch", 2, length, 16])


def _manifest(files):
    """A consistent one-layer decoder-only manifest listing ``files``."""
    return Manifest(
        format_version=FORMAT_VERSION,
        llmspec_version="0.1.0",
        name="tiny",
        architecture="decoder-only",
        spec_sha256="0" * 64,
        precision="fp32",
        quantize="none",
        opset=18,
        vocab_size=260,
        context_length=128,
        layers=1,
        kv_heads=2,
        head_dim=16,
        special_tokens={"eos": 2},
        graphs={
            "decoder.onnx": GraphInfo(
                inputs=[
                    TensorInfo("input_ids", "int64", ["batch", "seq"]),
                    TensorInfo("attention_mask", "int64", ["batch", "total"]),
                    TensorInfo("position_ids", "int64", ["batch", "seq"]),
                    _cache("past_key_values.0.key", "max_length"),
                    _cache("past_key_values.0.value", "max_length"),
                    TensorInfo("logits_to_keep", "int64", []),
                ],
                outputs=[
                    TensorInfo("logits", "float32", ["batch", "kept", 260]),
                    _cache("present.0.key", "max_length"),
                    _cache("present.0.value", "max_length"),
                ],
            )
        },
        files=files,
    )


# Every file a decoder-only artifact must list, with stand-in contents.
FILES = [*REQUIRED_FILES, "decoder.onnx"]


@pytest.fixture
def artifact(tmp_path):
    for name in FILES:
        (tmp_path / name).write_bytes(name.encode() * 10)
    (tmp_path / "weights.safetensors").write_bytes(b"w" * 100)
    manifest = _manifest({name: file_info(tmp_path / name) for name in FILES})
    (tmp_path / MANIFEST).write_text(manifest.to_json())
    return tmp_path, manifest


def test_manifest_round_trips_through_json(artifact):
    path, manifest = artifact
    assert read_manifest(path) == manifest
    verify_files(path, manifest)


def test_cache_names_follow_optimum():
    assert past_name(3, "key") == "past_key_values.3.key"
    assert present_name(0, "value", "decoder") == "present.0.decoder.value"


def test_truncated_file_is_named(artifact):
    path, manifest = artifact
    (path / "weights.safetensors").write_bytes(b"w" * 50)
    with pytest.raises(ArtifactError, match="weights.safetensors: 50 bytes, the manifest says 100"):
        verify_files(path, manifest)


def test_tampered_file_is_named(artifact):
    path, manifest = artifact
    (path / "weights.safetensors").write_bytes(b"x" * 100)
    with pytest.raises(ArtifactError, match="weights.safetensors: sha256 differs"):
        verify_files(path, manifest)


def test_missing_file_is_named(artifact):
    path, manifest = artifact
    (path / "weights.safetensors").unlink()
    with pytest.raises(ArtifactError, match="weights.safetensors: missing"):
        verify_files(path, manifest)


def test_other_format_version_is_refused(artifact):
    path, _ = artifact
    data = json.loads((path / MANIFEST).read_text())
    data["format_version"] = FORMAT_VERSION + 1
    (path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="format version"):
        read_manifest(path)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"format_version": 1}'])
def test_broken_manifest_is_named(artifact, text):
    path, _ = artifact
    (path / MANIFEST).write_text(text)
    with pytest.raises(ArtifactError, match="manifest.json"):
        read_manifest(path)


def test_missing_directory_and_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="not an artifact directory"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        read_manifest(tmp_path)


def test_file_info_is_size_and_digest(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert file_info(tmp_path / "f") == FileInfo(
        3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
