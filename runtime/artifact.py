"""The artifact format, defined once, here, because the reader owns it.

An artifact is a directory::

    manifest.json        this module's :class:`Manifest`
    spec.yaml            the normalized spec
    model.py             the generated PyTorch source
    weights.safetensors  the weights (never pickle)
    tokenizer.json       a tokenizers-library tokenizer (padding and truncation it enables are
                         ignored; a post-processor that adds tokens frames texts, see
                         runtime.tokenizer)
    generation.json      the default decoding chain and limits
    chat_template.jinja  optional: the chat template of an imported model (Jinja text, from its
                         tokenizer_config.json), exposed as the model's ``chat_template``
    decoder.onnx / encoder.onnx (+ .onnx.data)   the graphs
    MODEL_CARD.md        a human description

Graph input and output names follow Hugging Face Optimum, so other tools recognize them:

* decoder-only ``decoder.onnx``: ``input_ids`` [batch, seq], ``attention_mask``
  [batch, past+seq], ``position_ids`` [batch, seq], ``past_key_values.{i}.key|value``
  [batch, kv_heads, max_length, head_dim], ``logits_to_keep`` [] -> ``logits`` [batch, kept,
  vocab], ``present.{i}.key|value`` [batch, kv_heads, max_length, head_dim].
* encoder-only ``encoder.onnx``: ``input_ids``, ``attention_mask`` (and ``token_type_ids`` when
  the model has token types) -> ``last_hidden_state``, ``logits``.
* encoder-decoder ``encoder.onnx``: ``input_ids``, ``attention_mask`` -> ``last_hidden_state``
  and each decoder layer's cross-attention ``present.{i}.encoder.key|value``, computed once per
  request; ``decoder.onnx``: ``input_ids``, ``encoder_attention_mask``, ``attention_mask``,
  ``position_ids``, ``past_key_values.{i}.encoder.key|value``,
  ``past_key_values.{i}.decoder.key|value``, ``logits_to_keep`` -> ``logits``,
  ``present.{i}.decoder.key|value``.

Format 2 (:data:`FORMAT_VERSION`): the self-attention caches are in place. ``past_key_values``
and ``present`` are one buffer of ``max_length`` positions, allocated once per batch by the
runtime and bound as both (the first ``past`` positions hold the cache, left padded like the
prompts; the graph writes the ``seq`` new ones after them); ``logits_to_keep`` selects the last
positions whose logits are computed (0: all). See :mod:`llmspec.exporter.rewrites.kv_cache`.

Integrity (DESIGN.md, "Trust"). An artifact comes from someone else, so every check here names
the file or field it refuses and never trusts the manifest further than it has checked it:

* :func:`read_manifest` reads ``manifest.json`` bounded (:data:`MANIFEST_LIMIT`, depth-checked,
  a regular file, not a symlink) and checks every field's type and range, then the fields
  against each other and against the graph signatures the manifest declares (layers, kv_heads,
  head_dim and vocab_size against the ``past_key_values.*`` and ``logits`` shapes, special
  token ids within the vocabulary, the family's graphs and input/output names, every required
  file listed). File names must be plain names (:func:`check_file_name`).
* :func:`verify_files` checks the directory: it holds exactly ``manifest.json``, the listed
  files and optionally the signature :data:`SIGNATURE`; anything unlisted (a graph's external
  data left out of the manifest, a stray file, a subdirectory) is refused, and so is a listed
  file that is a symlink or not a regular file (symlinks are refused outright, so nothing is
  ever read from outside the directory). Every listed file's size and sha256 must match.
* :func:`check_graph_signature` compares what ONNX Runtime reports of an opened graph (input
  and output names, element types, shapes) with the manifest, so that a manifest that lies
  about the graphs fails at load, not with an ONNX Runtime error in the middle of a request.
* A signature (:mod:`runtime.signing`, Ed25519 over the exact bytes of ``manifest.json``,
  which hashes every file) is checked first when :func:`read_manifest` is given a key.

Checksums catch accidents (a truncated copy, a flipped bit, a file from another export); only a
signature catches tampering, because whoever can change a file can change the manifest too.

This module is longer than most (about 700 lines) because it is one thing: the format, defined
once. The names (files, graph inputs and outputs), the manifest's schema and every check of an
artifact against them (the fields, their consistency with the declared graph signatures, the
directory, the opened graphs) change together whenever the format does; split, a format change
would again have to be made in several places, which is what defining it once prevents.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from runtime.errors import LlmspecError
from runtime.reading import (
    MiB,
    UnreadableFile,
    check_regular,
    open_regular,
    parse_json,
    read_bytes,
    read_text,
)

FORMAT_VERSION = 2
# What changed since each older format, for the error that asks to re-export.
_OLD_FORMATS = {
    1: "format 1 graphs copy the whole KV cache every step; format 2 writes it in place and "
    "takes logits_to_keep"
}

MANIFEST = "manifest.json"
# The one file allowed beside manifest.json without being listed in it: the Ed25519 signature
# of manifest.json's exact bytes (runtime.signing); it cannot be listed, as it signs the list.
SIGNATURE = "manifest.json.sig"
SPEC = "spec.yaml"
MODEL_SOURCE = "model.py"
WEIGHTS = "weights.safetensors"
TOKENIZER = "tokenizer.json"
GENERATION = "generation.json"
MODEL_CARD = "MODEL_CARD.md"
# Optional, listed in the manifest's files like any other when present; artifacts without one
# (every one written before it existed) have no chat template. The format version stays 1.
CHAT_TEMPLATE = "chat_template.jinja"
CHAT_TEMPLATE_LIMIT = 4 * MiB  # real templates are a few KiB
DECODER_GRAPH = "decoder.onnx"
ENCODER_GRAPH = "encoder.onnx"

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
TOKEN_TYPE_IDS = "token_type_ids"
ENCODER_ATTENTION_MASK = "encoder_attention_mask"
LOGITS = "logits"
LOGITS_TO_KEEP = "logits_to_keep"
MAX_LENGTH = "max_length"  # the symbolic length of an in-place cache buffer
LAST_HIDDEN_STATE = "last_hidden_state"

# The graphs of each architecture (the manifest's ``architecture`` field).
FAMILY_GRAPHS = {
    "decoder-only": (DECODER_GRAPH,),
    "encoder-only": (ENCODER_GRAPH,),
    "encoder-decoder": (ENCODER_GRAPH, DECODER_GRAPH),
}
# What every artifact holds besides its graphs (DESIGN.md, "The artifact").
REQUIRED_FILES = (SPEC, MODEL_SOURCE, WEIGHTS, TOKENIZER, GENERATION, MODEL_CARD)
PRECISIONS = ("fp32", "fp16", "bf16")
QUANTIZATIONS = ("none", "int8", "int4")

# manifest.json of a real model is a few KiB (a 32-layer model's graph signatures ~60 KiB).
MANIFEST_LIMIT = 16 * MiB
# Largest vocabulary, context, layer count or head size a manifest may state: token ids and
# positions are int64 in the graphs, but nothing real comes near 2**31.
MAX_DIMENSION = 2**31 - 1
MAX_FILE_SIZE = 2**63 - 1
# A file name in an artifact: one plain path component, no hidden files, no separators, no
# control characters or look-alikes (so nothing can name a file outside the directory).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# ONNX Runtime's element type names (NodeArg.type) as the manifest spells them (ONNX's names).
ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}
_FLOAT_TYPES = ("float32", "float16", "bfloat16")


def past_name(layer: int, kind: str, stack: str | None = None) -> str:
    """``past_key_values.{layer}.{kind}`` (decoder-only) or ``...{layer}.{stack}.{kind}``."""
    middle = f"{layer}.{stack}" if stack else f"{layer}"
    return f"past_key_values.{middle}.{kind}"


def present_name(layer: int, kind: str, stack: str | None = None) -> str:
    """``present.{layer}.{kind}`` (decoder-only) or ``present.{layer}.{stack}.{kind}``."""
    middle = f"{layer}.{stack}" if stack else f"{layer}"
    return f"present.{middle}.{kind}"


class ArtifactError(ValueError, LlmspecError):
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
    # how the weights were quantized (llmspec.exporter.quantize); absent when they were not
    quantization: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        if not data["quantization"]:
            del data["quantization"]  # unquantized artifacts keep the fields they always had
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """The sha256 of the regular file ``path`` (hex); raises UnreadableFile for anything else."""
    digest = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_info(path: Path) -> FileInfo:
    return FileInfo(size=path.stat().st_size, sha256=sha256_of(path))


def check_file_name(name: str) -> bool:
    """Whether ``name`` may name a file of an artifact: one plain path component of letters,
    digits, ``.``, ``_`` and ``-``, not hidden, at most 255 characters, and neither
    ``manifest.json`` nor its signature."""
    return bool(_PLAIN_NAME.fullmatch(name)) and name not in (MANIFEST, SIGNATURE)


# ---------------------------------------------------------------------------------------------
# Reading manifest.json


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise ArtifactError(f"{path}: cannot read it ({err.strerror})") from None


def _regular_or_refuse(path: Path, mode: int) -> None:
    """Refuse a symlink or anything but a regular file inside an artifact."""
    if stat.S_ISLNK(mode):
        raise ArtifactError(
            f"{path}: is a symbolic link; an artifact holds regular files only (replace the "
            "link by a copy of the file, or export the artifact again)"
        )
    if not stat.S_ISREG(mode):
        try:
            check_regular(path)  # says what it is (opening a FIFO this way cannot block)
        except UnreadableFile as err:
            raise ArtifactError(f"{err}; an artifact holds regular files only") from None
        raise ArtifactError(f"{path}: not a regular file; an artifact holds regular files only")


def read_manifest_bytes(directory: str | os.PathLike[str]) -> bytes:
    """The exact bytes of an artifact's ``manifest.json`` (what a signature signs), read
    bounded; raises :class:`ArtifactError` for a missing directory or manifest, a symlink, a
    FIFO or device, or one larger than :data:`MANIFEST_LIMIT`."""
    root = Path(directory)
    path = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(f"{root}: not an artifact directory (export one with llmspec export)")
    info = _lstat(path)
    if info is None:
        raise ArtifactError(f"{path}: missing; the artifact is incomplete, export it again")
    _regular_or_refuse(path, info.st_mode)
    try:
        return read_bytes(path, MANIFEST_LIMIT, "manifest")
    except UnreadableFile as err:
        raise ArtifactError(f"{err}; export the artifact again") from None


def read_manifest(directory: str | os.PathLike[str], signed_by: Any = None) -> Manifest:
    """Read and check ``manifest.json`` of an artifact directory (not the other files: see
    :func:`verify_files`).

    ``signed_by``: a public key (see :func:`runtime.signing.public_key`); when given, the
    signature :data:`SIGNATURE` must be a valid one of manifest.json's bytes by that key,
    checked before anything in the manifest is parsed. Raises :class:`ArtifactError`.
    """
    root = Path(directory)
    data = read_manifest_bytes(root)
    if signed_by is not None:
        # Imported here: runtime.signing reads this module's file names (an import cycle at
        # the top); it imports the optional `cryptography` only inside its own functions.
        from runtime.signing import check_signature

        check_signature(root, data, signed_by)
    return parse_manifest(data, root / MANIFEST)


def parse_manifest(data: bytes, path: Path) -> Manifest:
    """The manifest in ``data`` (the bytes of ``path``), every field checked (see the module
    docstring); raises :class:`ArtifactError` naming the field."""
    try:
        raw = parse_json(data, str(path))
    except UnreadableFile as err:
        raise ArtifactError(f"{err}; export the artifact again") from None
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path}: expected a JSON object, got {_show(raw)}")
    version = raw.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        why = _OLD_FORMATS.get(version) if isinstance(version, int) else None
        raise ArtifactError(
            f"{path}: format version {_show(version)}, but this runtime reads version "
            f"{FORMAT_VERSION}{f' ({why})' if why else ''}; re-export the artifact with a "
            "matching llmspec (llmspec export SPEC_OR_RUN -o DIR)"
        )
    manifest = _Fields(path).manifest(raw)
    _check_consistent(manifest, path)
    return manifest


def _show(value: Any) -> str:
    """A short description of a JSON value for a message (never a huge repr)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return repr(value) if abs(value) < 10**15 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:60]) + "..."
    if isinstance(value, dict):
        return f"an object of {len(value)} fields"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    return repr(value)


def _few(items: Sequence[Any], most: int = 6) -> str:
    """At most ``most`` items of a list for a message, and how many there are in all."""
    shown = ", ".join(_show(item) for item in items[:most])
    return f"[{shown}]" if len(items) <= most else f"[{shown}, ...] ({len(items)} in all)"


class _Fields:
    """Type and range checks of manifest.json's fields, each failure naming the field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field_name: str, problem: str) -> ArtifactError:
        return ArtifactError(
            f"{self.path}: malformed manifest: {field_name} {problem}; export the artifact again"
        )

    def integer(self, value: Any, name: str, low: int = 0, high: int = MAX_DIMENSION) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(name, f"must be an integer in [{low}, {high}], got {_show(value)}")
        return value

    def string(self, value: Any, name: str, choices: Sequence[str] = ()) -> str:
        if not isinstance(value, str) or (choices and value not in choices):
            wanted = f"one of {', '.join(choices)}" if choices else "a string"
            raise self.fail(name, f"must be {wanted}, got {_show(value)}")
        return value

    def mapping(self, value: Any, name: str, keys: Sequence[str] | None = None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(name, f"must be a JSON object, got {_show(value)}")
        if keys is not None and sorted(value) != sorted(keys):
            raise self.fail(
                name, f"must have exactly the fields {', '.join(keys)}, got {_few(sorted(value))}"
            )
        return value

    def tensor(self, value: Any, name: str) -> TensorInfo:
        data = self.mapping(value, name, ("name", "dtype", "shape"))
        shape = data["shape"]
        if not isinstance(shape, list) or len(shape) > 8:
            raise self.fail(
                f"{name}.shape", f"must be a list of at most 8 dims, got {_show(shape)}"
            )
        dims: list[int | str] = []
        for i, dim in enumerate(shape):
            dims.append(
                self.string(dim, f"{name}.shape[{i}]")
                if isinstance(dim, str)
                else self.integer(dim, f"{name}.shape[{i}]")
            )
        return TensorInfo(
            name=self.string(data["name"], f"{name}.name"),
            dtype=self.string(data["dtype"], f"{name}.dtype"),
            shape=dims,
        )

    def graph(self, value: Any, name: str) -> GraphInfo:
        data = self.mapping(value, name, ("inputs", "outputs"))
        sides = {}
        for side in ("inputs", "outputs"):
            items = data[side]
            if not isinstance(items, list):
                raise self.fail(f"{name}.{side}", f"must be a list, got {_show(items)}")
            sides[side] = [self.tensor(t, f"{name}.{side}[{i}]") for i, t in enumerate(items)]
        return GraphInfo(inputs=sides["inputs"], outputs=sides["outputs"])

    def file(self, value: Any, name: str) -> FileInfo:
        data = self.mapping(value, name, ("sha256", "size"))
        digest = data["sha256"]
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise self.fail(
                f"{name}.sha256", f"must be 64 lowercase hex digits, got {_show(digest)}"
            )
        return FileInfo(
            size=self.integer(data["size"], f"{name}.size", 0, MAX_FILE_SIZE), sha256=digest
        )

    def manifest(self, raw: dict[str, Any]) -> Manifest:
        known = {f.name: f for f in fields(Manifest)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise self.fail("has unknown fields", _few(unknown))
        optional = {"parity", "fusions", "quantization"}
        missing = sorted(set(known) - set(raw) - optional)
        if missing:
            raise self.fail("lacks the fields", ", ".join(missing))
        files = {}
        for name, info in self.mapping(raw["files"], "files").items():
            if not check_file_name(name):
                raise ArtifactError(
                    f"{self.path}: files lists {_show(name)}, which is not a plain file name "
                    "inside the artifact (letters, digits, '.', '_', '-'; no '/', '..' or "
                    "hidden files); refusing the artifact"
                )
            files[name] = self.file(info, f"files.{name}")
        graphs = {
            name: self.graph(info, f"graphs.{name}")
            for name, info in self.mapping(raw["graphs"], "graphs").items()
        }
        special = {
            self.string(name, "special_tokens"): self.integer(token, f"special_tokens.{name}")
            for name, token in self.mapping(raw["special_tokens"], "special_tokens").items()
        }
        fusions = {
            self.string(graph, "fusions"): {
                op: self.integer(count, f"fusions.{graph}.{op}")
                for op, count in self.mapping(counts, f"fusions.{graph}").items()
            }
            for graph, counts in self.mapping(raw.get("fusions", {}), "fusions").items()
        }
        return Manifest(
            format_version=FORMAT_VERSION,
            llmspec_version=self.string(raw["llmspec_version"], "llmspec_version"),
            name=self.string(raw["name"], "name"),
            architecture=self.string(raw["architecture"], "architecture", tuple(FAMILY_GRAPHS)),
            spec_sha256=self.string(raw["spec_sha256"], "spec_sha256"),
            precision=self.string(raw["precision"], "precision", PRECISIONS),
            quantize=self.string(raw["quantize"], "quantize", QUANTIZATIONS),
            opset=self.integer(raw["opset"], "opset", 1, 1000),
            vocab_size=self.integer(raw["vocab_size"], "vocab_size", 1),
            context_length=self.integer(raw["context_length"], "context_length", 1),
            layers=self.integer(raw["layers"], "layers", 1),
            kv_heads=self.integer(raw["kv_heads"], "kv_heads", 1),
            head_dim=self.integer(raw["head_dim"], "head_dim", 1),
            special_tokens=special,
            graphs=graphs,
            files=files,
            parity=self.mapping(raw.get("parity", {}), "parity"),
            fusions=fusions,
            quantization=self.mapping(raw.get("quantization", {}), "quantization"),
        )


# ---------------------------------------------------------------------------------------------
# The manifest against itself: its fields against the graph signatures it declares


def contract_names(
    manifest: Manifest, graph: str, has_positions: bool, has_token_types: bool = False
) -> tuple[list[str], list[str]]:
    """The input and output names the family's contract gives ``graph`` (module docstring).

    ``has_positions``: an encoder-decoder's decoder may take ``position_ids`` (absolute
    positions) or not (relative ones); ``has_token_types``: an encoder-only graph may take
    ``token_type_ids``."""
    kinds = ("key", "value")
    layers = range(manifest.layers)

    def kv(maker: Any, stack: str | None) -> list[str]:
        return [maker(i, k, stack) for i in layers for k in kinds]

    if manifest.architecture == "decoder-only":
        return (
            [INPUT_IDS, ATTENTION_MASK, POSITION_IDS, *kv(past_name, None), LOGITS_TO_KEEP],
            [LOGITS, *kv(present_name, None)],
        )
    if manifest.architecture == "encoder-only":
        extra = [TOKEN_TYPE_IDS] if has_token_types else []
        return [INPUT_IDS, ATTENTION_MASK, *extra], [LAST_HIDDEN_STATE, LOGITS]
    if graph == ENCODER_GRAPH:
        return [INPUT_IDS, ATTENTION_MASK], [LAST_HIDDEN_STATE, *kv(present_name, "encoder")]
    inputs = [INPUT_IDS, ENCODER_ATTENTION_MASK, ATTENTION_MASK]
    if has_positions:
        inputs.append(POSITION_IDS)
    inputs += kv(past_name, "encoder") + kv(past_name, "decoder") + [LOGITS_TO_KEEP]
    return inputs, [LOGITS, *kv(present_name, "decoder")]


def _cache_tensors_per_layer(architecture: str, graph: str) -> int:
    """How many inputs of ``graph`` carry each layer's keys and values."""
    if architecture == "decoder-only":
        return 2
    if architecture == "encoder-decoder" and graph == DECODER_GRAPH:
        return 4  # cross and self attention
    return 0


def _check_consistent(manifest: Manifest, path: Path) -> None:
    """The manifest's fields agree with each other and with the graph signatures it declares,
    so that every later use of them (cache shapes, token ids, input names) is safe."""
    root = path.parent

    def fail(problem: str) -> ArtifactError:
        return ArtifactError(f"{path}: {problem}; the manifest disagrees with the artifact")

    wanted = FAMILY_GRAPHS[manifest.architecture]
    if sorted(manifest.graphs) != sorted(wanted):
        raise fail(
            f"graphs lists {_few(sorted(manifest.graphs))}, a {manifest.architecture} artifact has "
            f"{list(wanted)}"
        )
    for name in (*REQUIRED_FILES, *wanted):
        if name not in manifest.files:
            raise ArtifactError(
                f"{root / name}: not listed in {MANIFEST}; a {manifest.architecture} artifact "
                "needs it (the manifest must list every file), export it again"
            )
    for token, value in manifest.special_tokens.items():
        if value >= manifest.vocab_size:
            raise fail(
                f"special_tokens.{token} is {value}, outside the vocabulary "
                f"(vocab_size {manifest.vocab_size})"
            )
    if (
        manifest.architecture == "encoder-decoder"
        and "decoder_start" not in manifest.special_tokens
    ):
        raise fail("an encoder-decoder artifact needs special_tokens.decoder_start")
    for graph in wanted:
        info = manifest.graphs[graph]
        in_names = [t.name for t in info.inputs]
        per_layer = _cache_tensors_per_layer(manifest.architecture, graph)
        cache_inputs = sum(name.startswith("past_key_values.") for name in in_names)
        if per_layer and cache_inputs != per_layer * manifest.layers:
            raise fail(
                f"layers is {manifest.layers}, but {graph} has {cache_inputs} past_key_values "
                f"inputs, not {per_layer} per layer"
            )
        out_names = [t.name for t in info.outputs]
        if manifest.architecture == "encoder-decoder" and graph == ENCODER_GRAPH:
            cross = sum(name.startswith("present.") for name in out_names)
            if cross != 2 * manifest.layers:
                raise fail(
                    f"layers is {manifest.layers}, but {graph} has {cross} present outputs "
                    "(cross-attention keys and values), not 2 per decoder layer"
                )
        # The counts above tie layers to the declared inputs, so the contract built from it is
        # no longer than the manifest itself.
        contract_in, contract_out = contract_names(
            manifest, graph, POSITION_IDS in in_names, TOKEN_TYPE_IDS in in_names
        )
        for side, names, contract in (
            ("inputs", in_names, contract_in),
            ("outputs", out_names, contract_out),
        ):
            if names != contract:
                at = next(
                    (i for i, (a, b) in enumerate(zip(names, contract, strict=False)) if a != b),
                    min(len(names), len(contract)),
                )
                raise fail(
                    f"{graph}'s {side} {_few(names[at:], 3)} from position {at} break the "
                    f"{manifest.architecture} contract, which has {_few(contract[at:], 3)} there"
                )
        for tensor in (*info.inputs, *info.outputs):
            _check_tensor(manifest, graph, tensor, fail)


_ID_INPUTS = (INPUT_IDS, ATTENTION_MASK, POSITION_IDS, TOKEN_TYPE_IDS, ENCODER_ATTENTION_MASK)


def _check_tensor(manifest: Manifest, graph: str, tensor: TensorInfo, fail: Any) -> None:
    """One declared tensor of ``graph`` against the manifest's fields (static dims only)."""
    where = f"{graph}'s {tensor.name}"
    shape = tensor.shape
    if tensor.name.startswith(("past_key_values.", "present.")):
        if len(shape) != 4 or tensor.dtype not in _FLOAT_TYPES:
            raise fail(
                f"{where} is {tensor.dtype} {shape}, not a [batch, kv_heads, length, head_dim] "
                "float tensor"
            )
        for axis, name in ((1, "kv_heads"), (3, "head_dim")):
            value = getattr(manifest, name)
            if isinstance(shape[axis], int) and shape[axis] != value:
                raise fail(f"{name} is {value}, but {where} has {shape[axis]} ({shape})")
    elif tensor.name == LOGITS:
        if len(shape) != 3 or tensor.dtype not in _FLOAT_TYPES:
            raise fail(
                f"{where} is {tensor.dtype} {shape}, not a [batch, sequence, vocab] float tensor"
            )
        if isinstance(shape[2], int) and shape[2] != manifest.vocab_size:
            raise fail(f"vocab_size is {manifest.vocab_size}, but {where} has {shape[2]} ({shape})")
    elif tensor.name in _ID_INPUTS and (len(shape) != 2 or tensor.dtype != "int64"):
        raise fail(f"{where} is {tensor.dtype} {shape}, not an int64 [batch, sequence] tensor")


# ---------------------------------------------------------------------------------------------
# The directory against the manifest


def read_chat_template(directory: str | os.PathLike[str], manifest: Manifest) -> str | None:
    """The artifact's chat template (Jinja source, UTF-8), or None when the manifest lists
    none. Rendering it is the caller's (``jinja2``, or transformers' ``apply_chat_template``):
    the runtime does not depend on a template engine. Call after :func:`verify_files`, which
    checked the file's size and sha256."""
    if CHAT_TEMPLATE not in manifest.files:
        return None
    try:
        return read_text(Path(directory) / CHAT_TEMPLATE, CHAT_TEMPLATE_LIMIT, "chat template")
    except UnreadableFile as err:
        raise ArtifactError(str(err)) from None


def verify_files(directory: str | os.PathLike[str], manifest: Manifest) -> None:
    """The directory holds exactly manifest.json, the files the manifest lists and optionally
    :data:`SIGNATURE`; each listed file is a regular file (not a symlink) with the manifest's
    size and sha256. Raises :class:`ArtifactError` naming the first file that is not so."""
    root = Path(directory)
    allowed = {*manifest.files, MANIFEST, SIGNATURE}
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                if entry.name not in allowed:
                    kind = "a directory" if entry.is_dir(follow_symlinks=False) else "a file"
                    raise ArtifactError(
                        f"{root / entry.name}: {kind} not listed in {MANIFEST}; an artifact "
                        "holds exactly the files its manifest lists (every graph's external "
                        "data included): remove it, or export the artifact again"
                    )
    except OSError as err:
        raise ArtifactError(f"{root}: cannot list the artifact ({err.strerror})") from None
    for name, expected in sorted(manifest.files.items()):
        path = root / name
        info = _lstat(path)
        if info is None:
            raise ArtifactError(f"{path}: missing; the artifact is incomplete, export it again")
        _regular_or_refuse(path, info.st_mode)
        if info.st_size != expected.size:
            raise ArtifactError(
                f"{path}: {info.st_size} bytes, the manifest says {expected.size} "
                "(truncated or replaced); export the artifact again"
            )
        try:
            digest = sha256_of(path)
        except UnreadableFile as err:
            raise ArtifactError(str(err)) from None
        if digest != expected.sha256:
            raise ArtifactError(
                f"{path}: sha256 differs from the manifest (the file was modified); "
                "export the artifact again"
            )


# ---------------------------------------------------------------------------------------------
# The graphs against the manifest


def describe_values(values: Sequence[Any]) -> list[TensorInfo]:
    """ONNX Runtime's ``session.get_inputs()`` / ``get_outputs()`` as the manifest writes them:
    ONNX element type names, an unnamed dynamic dim as 0 (as ``graph_info`` records it)."""
    return [
        TensorInfo(
            value.name,
            ORT_TYPES.get(value.type, value.type),
            [0 if dim is None else dim for dim in value.shape],
        )
        for value in values
    ]


def signature_problems(
    graph: str, listed: GraphInfo, inputs: Sequence[Any], outputs: Sequence[Any]
) -> list[str]:
    """How the inputs and outputs ONNX Runtime reports for ``graph`` differ from what the
    manifest lists (empty when they agree)."""
    problems = []
    for side, values, expected in (
        ("input", inputs, listed.inputs),
        ("output", outputs, listed.outputs),
    ):
        actual = describe_values(values)
        if [t.name for t in actual] != [t.name for t in expected]:
            problems.append(
                f"{graph}: the graph's {side}s are {[t.name for t in actual]}, the manifest "
                f"lists {[t.name for t in expected]}"
            )
            continue
        for got, want in zip(actual, expected, strict=True):
            if (got.dtype, list(got.shape)) != (want.dtype, list(want.shape)):
                problems.append(
                    f"{graph}: {side} {got.name} is {got.dtype} {list(got.shape)} in the graph, "
                    f"the manifest says {want.dtype} {list(want.shape)}"
                )
    return problems


def check_graph_signature(
    path: Path, manifest: Manifest, inputs: Sequence[Any], outputs: Sequence[Any]
) -> None:
    """Raise :class:`ArtifactError` when the graph at ``path`` (opened by ONNX Runtime, whose
    ``get_inputs()`` / ``get_outputs()`` are given) differs from the manifest's signature."""
    problems = signature_problems(path.name, manifest.graphs[path.name], inputs, outputs)
    if problems:
        raise ArtifactError(
            f"{path}: the graph disagrees with {MANIFEST}: "
            + "; ".join(problems)
            + "; export the artifact again"
        )
