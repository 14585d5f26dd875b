"""Signed artifacts: ``llmspec keygen``/``sign``, ``verify --key`` and
``runtime.load(..., require_signature=...)`` accept exactly the artifact that was signed, by
that key; anything changed after signing, another key or no signature is refused."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import runtime
from llmspec.cli import main
from llmspec.exporter.signing import PRIVATE_KEY, PUBLIC_KEY, sign_artifact, write_key_pair
from llmspec.inspect.verify import verify
from runtime import artifact as fmt
from runtime.signing import SigningError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    return write_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory) -> tuple[Path, Path]:
    return write_key_pair(tmp_path_factory.mktemp("other-keys"))


@pytest.fixture
def signed(tiny_artifact, tmp_path, keys) -> Path:
    root = tmp_path / "artifact"
    shutil.copytree(tiny_artifact("tiny-gpt", "fp32"), root)
    sign_artifact(root, keys[0])
    return root


def test_cli_round_trip_keygen_sign_verify(tiny_artifact, tmp_path, capsys):
    root = tmp_path / "artifact"
    shutil.copytree(tiny_artifact("tiny-gpt", "fp32"), root)
    assert main(["keygen", "-o", str(tmp_path / "keys")]) == 0
    private, public = tmp_path / "keys" / PRIVATE_KEY, tmp_path / "keys" / PUBLIC_KEY
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert main(["sign", str(root), "--key", str(private)]) == 0
    assert (root / fmt.SIGNATURE).stat().st_size == 64
    capsys.readouterr()
    assert main(["verify", str(root), "--key", str(public), "--examples", "1"]) == 0
    out = capsys.readouterr().out
    assert "PASS  signature" in out and "verified: all 10 checks passed" in out


def test_api_round_trip_signed_artifact_loads_with_its_public_key(signed, keys):
    model = runtime.load(signed, device="cpu", require_signature=keys[1])
    assert model.manifest.name == "tiny-gpt"
    runtime.load(signed, device="cpu", require_signature=keys[1].read_bytes())  # PEM bytes
    report = verify(signed, examples=1, key=keys[1])
    assert report.passed and report.checks[1].name == "signature"


def test_unsigned_artifact_loads_without_require_signature(tiny_artifact):
    runtime.load(tiny_artifact("tiny-gpt", "fp32"), device="cpu")


def _refused(root: Path, key: Path, expected: str, capsys) -> None:
    with pytest.raises(runtime.ArtifactError) as caught:
        runtime.load(root, device="cpu", require_signature=key)
    assert expected in str(caught.value)
    capsys.readouterr()
    assert main(["verify", str(root), "--key", str(key), "--examples", "1"]) == 1
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_manifest_changed_after_signing_is_refused(signed, keys, capsys):
    data = json.loads((signed / fmt.MANIFEST).read_text())
    data["name"] = "someone-else"
    (signed / fmt.MANIFEST).write_text(json.dumps(data, indent=2))
    _refused(signed, keys[1], "manifest.json.sig: not a valid signature of manifest.json", capsys)


def test_weights_replaced_and_resealed_after_signing_are_refused(signed, keys, capsys):
    """A careful tamperer recomputes the sha256 in the manifest; the signature then fails."""
    weights = signed / fmt.WEIGHTS
    weights.write_bytes(bytes(weights.stat().st_size))
    data = json.loads((signed / fmt.MANIFEST).read_text())
    data["files"][fmt.WEIGHTS]["sha256"] = fmt.sha256_of(weights)
    (signed / fmt.MANIFEST).write_text(json.dumps(data, indent=2))
    _refused(signed, keys[1], "not a valid signature", capsys)


def test_file_changed_after_signing_fails_the_file_check_after_the_signature(signed, keys):
    weights = signed / fmt.WEIGHTS
    weights.write_bytes(bytes(weights.stat().st_size))
    with pytest.raises(runtime.ArtifactError, match=r"weights\.safetensors: sha256 differs"):
        runtime.load(signed, device="cpu", require_signature=keys[1])


def test_another_key_is_refused(signed, other_keys, capsys):
    _refused(signed, other_keys[1], "not a valid signature", capsys)


def test_missing_signature_is_refused_when_required(signed, keys, capsys):
    (signed / fmt.SIGNATURE).unlink()
    _refused(signed, keys[1], "manifest.json.sig: missing; the artifact is not signed", capsys)


def test_garbage_signature_is_refused(signed, keys, capsys):
    (signed / fmt.SIGNATURE).write_bytes(b"not a signature")
    _refused(signed, keys[1], "15 bytes, not a 64-byte Ed25519 signature", capsys)


def test_signature_as_a_symlink_is_refused(signed, keys, capsys, tmp_path):
    outside = tmp_path / "sig"
    shutil.move(signed / fmt.SIGNATURE, outside)
    (signed / fmt.SIGNATURE).symlink_to(outside)
    _refused(signed, keys[1], "manifest.json.sig: is a symbolic link", capsys)


def test_a_private_key_is_not_taken_for_checking(signed, keys, capsys):
    with pytest.raises(SigningError, match="a private key; checking a signature takes"):
        runtime.load(signed, device="cpu", require_signature=keys[0])
    assert main(["verify", str(signed), "--key", str(keys[0]), "--examples", "1"]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_key_that_is_not_a_pem_is_a_signing_error(signed, tmp_path, capsys):
    bad = tmp_path / "bad.pem"
    bad.write_text("hello")
    with pytest.raises(SigningError, match="not a PEM public key"):
        runtime.load(signed, device="cpu", require_signature=bad)
    assert main(["sign", str(signed), "--key", str(bad)]) == 1
    assert "not a PEM private key" in capsys.readouterr().err


def test_sign_refuses_a_damaged_artifact(tiny_artifact, tmp_path, keys, capsys):
    root = tmp_path / "artifact"
    shutil.copytree(tiny_artifact("tiny-gpt", "fp32"), root)
    (root / "extra.bin").write_bytes(b"x")
    assert main(["sign", str(root), "--key", str(keys[0])]) == 1
    assert "extra.bin: a file not listed in manifest.json" in capsys.readouterr().err
    assert not (root / fmt.SIGNATURE).exists()


def test_keygen_never_replaces_keys(keys, capsys):
    before = keys[0].read_bytes()
    assert main(["keygen", "-o", str(keys[0].parent)]) == 1
    assert "exists; keys are never replaced" in capsys.readouterr().err
    assert keys[0].read_bytes() == before


def test_without_cryptography_the_error_says_what_to_install(signed, keys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric", None)
    with pytest.raises(SigningError, match=r"pip install 'llmspec\[sign\]'"):
        runtime.load(signed, device="cpu", require_signature=keys[1])


def test_unsigned_loads_never_import_cryptography(tiny_artifact):
    code = (
        "import sys, runtime, runtime.signing\n"
        f"runtime.load({str(tiny_artifact('tiny-gpt', 'fp32'))!r}, device='cpu')\n"
        "print('cryptography' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"
