"""The artifact format, defined once, here, because the reader owns it.

An artifact is a directory::

    manifest.json        this module's :class:`Manifest`
    spec.yaml            the normalized spec
    model.py             the generated PyTorch source
    weights.safetensors  the weights (never pickle)
    tokenizer.json       a tokenizers-library tokenizer
    generation.json      the default decoding chain and limits
    decoder.onnx / encoder.onnx (+ .onnx.data)   the graphs
    MODEL_CARD.md        a human description

Graph input and output names follow Hugging Face Optimum, so other tools recognize them:

* decoder-only ``decoder.onnx``: ``input_ids`` [batch, seq], ``attention_mask``
  [batch, past+seq], ``position_ids`` [batch, seq], ``past_key_values.{i}.key|value``
  [batch, kv_heads, past, head_dim] -> ``logits`` [batch, seq, vocab], ``present.{i}.key|value``.
* encoder-only ``encoder.onnx``: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when
  the model has token types) -> ``last_hidden_state``, ``logits``.
* encoder-decoder ``encoder.onnx``: ``input_ids``, ``attention_mask`` -> ``last_hidden_state``
  and each decoder layer's cross-attention ``present.{i}.encoder.key|value``, computed once per
  request; ``decoder.onnx``: ``input_ids``, ``encoder_attention_mask``, ``attention_mask``,
  ``position_ids``, ``past_key_values.{i}.encoder.key|value``,
  ``past_key_values.{i}.decoder.key|value`` -> ``logits``, ``present.{i}.decoder.key|value``.

Every file's size and sha256 are in the manifest; :func:`read_manifest` checks the format and
:func:`verify_files` the files, each failure naming the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1

MANIFEST = "manifest.json"
SPEC = "spec.yaml"
MODEL_SOURCE = "model.py"
WEIGHTS = "weights.safetensors"
TOKENIZER = "tokenizer.json"
GENERATION = "generation.json"
MODEL_CARD = "MODEL_CARD.md"
DECODER_GRAPH = "decoder.onnx"
ENCODER_GRAPH = "encoder.onnx"

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
TOKEN_TYPE_IDS = "token_type_ids"
ENCODER_ATTENTION_MASK = "encoder_attention_mask"
LOGITS = "logits"
LAST_HIDDEN_STATE = "last_hidden_state"


def past_name(layer: int, kind: str, stack: str | None = None) -> str:
    """``past_key_values.{layer}.{kind}`` (decoder-only) or ``...{layer}.{stack}.{kind}``."""
    middle = f"{layer}.{stack}" if stack else f"{layer}"
    return f"past_key_values.{middle}.{kind}"


def present_name(layer: int, kind: str, stack: str | None = None) -> str:
    """``present.{layer}.{kind}`` (decoder-only) or ``present.{layer}.{stack}.{kind}``."""
    middle = f"{layer}.{stack}" if stack else f"{layer}"
    return f"present.{middle}.{kind}"


class ArtifactError(ValueError):
    """An artifact that cannot be used; the message names the file and says how to fix it."""


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output: name, ONNX element type name and symbolic shape."""

    name: str
    dtype: str
    shape: list[int | str]


@dataclass(frozen=True)
class GraphInfo:
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]


@dataclass(frozen=True)
class FileInfo:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` holds."""

    format_version: int
    llmspec_version: str
    name: str
    architecture: str
    spec_sha256: str
    precision: str
    quantize: str
    opset: int
    vocab_size: int
    context_length: int
    layers: int
    kv_heads: int
    head_dim: int
    special_tokens: dict[str, int]
    graphs: dict[str, GraphInfo]
    files: dict[str, FileInfo]
    parity: dict[str, Any] = field(default_factory=dict)
    fusions: dict[str, dict[str, int]] = field(default_factory=dict)  # graph -> fused op counts

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        graphs = {
            name: GraphInfo(
                inputs=[TensorInfo(**t) for t in g["inputs"]],
                outputs=[TensorInfo(**t) for t in g["outputs"]],
            )
            for name, g in data["graphs"].items()
        }
        files = {name: FileInfo(**f) for name, f in data["files"].items()}
        return cls(**{**data, "graphs": graphs, "files": files})


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_info(path: Path) -> FileInfo:
    return FileInfo(size=path.stat().st_size, sha256=sha256_of(path))


def read_manifest(directory: str | Path) -> Manifest:
    """Read and check ``manifest.json`` of an artifact directory (not the other files)."""
    root = Path(directory)
    path = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(f"{root}: not an artifact directory (export one with llmspec export)")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; the artifact is incomplete, export it again")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ArtifactError(f"{path}: not valid JSON ({err}); export the artifact again") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format version {version!r}, but this runtime reads version "
            f"{FORMAT_VERSION}; re-export the artifact with a matching llmspec"
        )
    try:
        return Manifest.from_dict(data)
    except (KeyError, TypeError, AttributeError) as err:  # a field missing or of another type
        raise ArtifactError(f"{path}: malformed manifest ({err}); export it again") from None


def verify_files(directory: str | Path, manifest: Manifest) -> None:
    """Check every file the manifest lists: present, same size, same sha256."""
    root = Path(directory)
    for name, expected in sorted(manifest.files.items()):
        path = root / name
        if not path.is_file():
            raise ArtifactError(f"{path}: missing; the artifact is incomplete, export it again")
        size = path.stat().st_size
        if size != expected.size:
            raise ArtifactError(
                f"{path}: {size} bytes, the manifest says {expected.size} "
                "(truncated or replaced); export the artifact again"
            )
        if sha256_of(path) != expected.sha256:
            raise ArtifactError(
                f"{path}: sha256 differs from the manifest (the file was modified); "
                "export the artifact again"
            )
