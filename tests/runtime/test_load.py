"""runtime.load: verification, families, devices."""

import json
import shutil
import warnings

import onnxruntime as ort
import pytest

import runtime
from runtime import artifact as fmt
from runtime import session


@pytest.fixture
def gpt_copy(varied_artifact, tmp_path):
    copy = tmp_path / "artifact"
    shutil.copytree(varied_artifact("tiny-gpt"), copy)
    return copy


def test_each_family_gets_its_model_class(varied_artifact, tiny_artifact):
    cases = {
        varied_artifact("tiny-gpt"): runtime.DecoderModel,
        varied_artifact("tiny-t5"): runtime.Seq2SeqModel,
        tiny_artifact("tiny-encoder"): runtime.EncoderModel,
    }
    for path, cls in cases.items():
        model = runtime.load(path, device="cpu", threads=1)
        assert type(model) is cls
        assert model.device == "cpu" and model.providers == ["CPUExecutionProvider"]
    assert not hasattr(runtime.EncoderModel, "generate")
    assert not hasattr(runtime.DecoderModel, "fill_mask")


def test_a_modified_file_is_named(gpt_copy):
    path = gpt_copy / fmt.TOKENIZER
    path.write_text(path.read_text().replace('"', "'", 1))
    with pytest.raises(runtime.ArtifactError, match=r"tokenizer\.json: .*(bytes|sha256)"):
        runtime.load(gpt_copy, device="cpu")


def test_a_truncated_graph_is_named(gpt_copy):
    path = gpt_copy / fmt.DECODER_GRAPH
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(runtime.ArtifactError, match=r"decoder\.onnx: 100 bytes, the manifest"):
        runtime.load(gpt_copy, device="cpu")


def test_a_missing_file_is_named(gpt_copy):
    (gpt_copy / fmt.GENERATION).unlink()
    with pytest.raises(runtime.ArtifactError, match=r"generation\.json: missing"):
        runtime.load(gpt_copy, device="cpu")


def test_another_format_version_is_refused(gpt_copy):
    manifest = json.loads((gpt_copy / fmt.MANIFEST).read_text())
    manifest["format_version"] = fmt.FORMAT_VERSION + 1
    (gpt_copy / fmt.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(runtime.ArtifactError, match="format version 3, but this runtime reads"):
        runtime.load(gpt_copy, device="cpu")


def test_a_format_1_artifact_is_told_to_re_export(gpt_copy):
    """Format 1 graphs returned a new cache every step; this runtime binds one buffer as past
    and present, which a format-1 graph would not write: the manifest's version stops it."""
    manifest = json.loads((gpt_copy / fmt.MANIFEST).read_text())
    manifest["format_version"] = 1
    (gpt_copy / fmt.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(runtime.ArtifactError) as caught:
        runtime.load(gpt_copy, device="cpu")
    message = str(caught.value)
    assert "format version 1" in message and "in place" in message
    assert "re-export the artifact" in message and "llmspec export" in message


def test_not_an_artifact(tmp_path):
    with pytest.raises(runtime.ArtifactError, match="not an artifact directory"):
        runtime.load(tmp_path / "nothing")
    with pytest.raises(runtime.ArtifactError, match=r"manifest\.json: missing"):
        runtime.load(tmp_path)


@pytest.mark.parametrize("device", ["gpu", "CUDA", ""])
def test_unknown_device_is_refused(gpt_copy, device):
    with pytest.raises(ValueError, match="device must be one of auto, cuda, cpu"):
        runtime.load(gpt_copy, device=device)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_bad_thread_counts_are_refused(gpt_copy, threads):
    with pytest.raises(ValueError, match="threads must be"):
        runtime.load(gpt_copy, device="cpu", threads=threads)


def test_cuda_without_a_usable_gpu_is_a_clear_error(gpt_copy):
    usable, _ = session.cuda_status()
    if usable:
        assert runtime.load(gpt_copy, device="cuda").device == "cuda"
        return
    with pytest.raises(runtime.DeviceError, match="device='cuda' was asked for, but"):
        runtime.load(gpt_copy, device="cuda")


def test_auto_reports_a_fallback_to_the_cpu_once(gpt_copy, monkeypatch):
    usable, _ = session.cuda_status()
    if usable:
        pytest.skip("CUDA works here: nothing falls back")
    monkeypatch.setattr(session, "_fallback_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = runtime.load(gpt_copy)
        second = runtime.load(gpt_copy)
    assert first.device == second.device == "cpu"
    fallbacks = [w for w in caught if issubclass(w.category, runtime.DeviceFallbackWarning)]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert len(fallbacks) == 1  # once per process
        assert "running on the CPU" in str(fallbacks[0].message)
        assert fallbacks[0].filename == __file__  # points at the caller of runtime.load
    else:
        assert fallbacks == []  # a CPU-only onnxruntime: nothing fell back
