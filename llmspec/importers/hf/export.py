"""Exporting a model back to Hugging Face: ``llmspec export-hf SPEC_OR_RUN -o HF_DIR``.

The model is a spec file, a run directory (``llmspec train``) or an import
(``llmspec import-hf``), resolved by :func:`llmspec.sources.resolve_source`. HF_DIR gets what
transformers' ``AutoModelFor...``/``AutoTokenizer.from_pretrained`` read:

* ``config.json``: the family's config (:mod:`llmspec.importers.hf.export_config`, the inverse
  of the import translation); a spec no family holds is refused naming what differs;
* ``model.safetensors``: the weights by the family's table (:func:`~llmspec.importers.hf.
  tables.to_hf`, the import's table read the other way) in the spec's dtype; a tied output
  projection and the per-stack copies of the embeddings are left out, as ``save_pretrained``
  leaves them, when the config ties them;
* ``tokenizer.json`` (the model's tokenizer), ``tokenizer_config.json`` and
  ``special_tokens_map.json`` (``PreTrainedTokenizerFast`` with the spec's special tokens;
  ``model_max_length`` is the spec's ``context_length``);
* ``generation_config.json`` (models that generate): the special-token ids and the spec's
  decoding chain where transformers has it (see :func:`generation_config`).

Before anything is written, config.json and the weights are read back with the importer
(:data:`llmspec.importers.hf.families.FAMILIES`); the spec read back must be the spec
(training-only fields aside: dropout, the objective's rates, the context length), so a spec
knob the export does not know of is refused by name, not dropped.

A bare spec (no weights) exports its initial weights, seeded with
:data:`llmspec.builder.INIT_SEED` as ``llmspec export`` builds them: what the spec describes,
reproducibly, for trying the files with transformers before training. HF_DIR is written
atomically (:func:`llmspec.files.publishing`); an existing one is replaced only with ``force``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from llmspec.files import publishing
from llmspec.importers.hf.config import Config
from llmspec.importers.hf.export_config import HFConfig, hf_config
from llmspec.importers.hf.families import FAMILIES
from llmspec.importers.hf.importer import _unshared, expected_shapes
from llmspec.importers.hf.mapping import HFExportError, HFImportError, Weights, to_hf
from llmspec.sources import NoSpecInDirectory, resolve_source
from llmspec.spec.sections import ModelSpec
from llmspec.tokenizer import TokenizerMismatch, check_fits, stop_token_ids

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

__all__ = ["ExportedHF", "export_hf", "generation_config", "hf_state_dict"]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
GENERATION_CONFIG = "generation_config.json"

# Spec fields the read-back leaves out: not the model (names, training settings) or kept
# elsewhere (the vocabulary is the tokenizer files; the context length, model_max_length).
# Only these fields: one added to a section later is compared, so refused unless it comes back.
NOT_COMPARED: dict[str, tuple[str, ...]] = {
    "name": (),
    "context_length": (),
    "vocabulary": ("size", "tokenizer", "special_tokens", "sentinels", "decoder_start"),
    "precision": ("dtype", "quantize", "block_size"),
    "generation": ("max_new_tokens", "chain", "stop_tokens"),
    "dropout": ("hidden", "attention"),
}

# transformers applies its logits processors in this order, whatever the config's order
HF_ORDER: tuple[str, ...] = (
    "repetition_penalty",
    "no_repeat_ngram",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "typical",
)


@dataclass
class ExportedHF:
    """What :func:`export_hf` wrote."""

    path: Path
    family: str
    architecture: str
    files: list[str]
    notes: list[str] = field(default_factory=list)  # what transformers' files cannot hold


def _our_tensors(spec: ModelSpec, weights: Path | None) -> dict[str, torch.Tensor]:
    """The model's tensors: its weights file checked against the spec, or, for a bare spec,
    its seeded initial weights."""
    import torch

    from llmspec.builder import INIT_SEED, build

    if weights is None:
        torch.manual_seed(INIT_SEED)
        return {k: v.detach() for k, v in build(spec).state_dict().items()}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as err:
        raise HFExportError(f"{weights}: not a readable safetensors file ({err})") from None
    expected = expected_shapes(spec)
    for name, shape in expected.items():
        if name not in tensors:
            raise HFExportError(f"{weights}: missing {name}, which the spec has")
        if tuple(tensors[name].shape) != shape:
            raise HFExportError(
                f"{weights}: {name} has shape {list(tensors[name].shape)}, the spec's is "
                f"{list(shape)}"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise HFExportError(f"{weights}: {extra[0]} is not a tensor of the spec's model")
    return tensors


def _dtype(tensors: dict[str, torch.Tensor], weights: Path | None) -> str:
    """config.json's dtype: the one the weights are stored in."""
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    floating = [d for d in dtypes if d in ("float32", "float16", "bfloat16")]
    if len(floating) != 1:
        raise HFExportError(
            f"{weights or 'the initial weights'}: tensors in {', '.join(dtypes)}; Hugging Face "
            "models hold one of float32, float16 and bfloat16"
        )
    return floating[0]


def hf_state_dict(tensors: dict[str, torch.Tensor], hf: HFConfig) -> dict[str, torch.Tensor]:
    """Our ``tensors`` as the Hugging Face model's weights (see the module docstring)."""
    state = to_hf(tensors, hf.table)
    if hf.tied:
        derived = {hf.table.prefix + hf.table.head, hf.table.head}
        derived |= {hf.table.prefix + copy for copy in hf.table.ties} | set(hf.table.ties)
        state = {k: v for k, v in state.items() if k not in derived}
    return state


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else key))
    return out


def _not_compared(key: str) -> bool:
    section, _, rest = key.partition(".")
    if section not in NOT_COMPARED:
        return section == "objective" and rest != "type"  # the objective's rates: training
    known = NOT_COMPARED[section]
    return not known or rest.split(".")[0] in known


def _normalized(spec: ModelSpec) -> dict[str, Any]:
    """The spec's compared fields, flat, derived defaults spelled out."""
    data = spec.model_dump(mode="json")
    data["decoder_layers"] = spec.num_decoder_layers
    data["attention"]["kv_heads"] = spec.kv_heads
    data["attention"]["head_dim"] = spec.head_dim
    return {k: v for k, v in _flat(data).items() if not _not_compared(k)}


def _read_back(spec: ModelSpec, hf: HFConfig, state: dict[str, torch.Tensor]) -> None:
    """Import config.json and ``state`` again; refuse unless the spec comes back."""
    weights = Weights(dict(state), "the exported weights")
    try:
        imported = FAMILIES[hf.family](Config(dict(hf.config), hf.family), weights)
    except HFImportError as err:
        raise HFExportError(
            f"spec {spec.name!r} cannot be exported to Hugging Face as {hf.family}: "
            f"the files would not import as the same model: {err}"
        ) from None
    left = weights.left()
    if left:  # a table that writes what it cannot read back: a bug here
        raise AssertionError(f"the {hf.family} export wrote tensors it cannot read: {left}")
    data = spec.model_dump(mode="json")
    back: dict[str, Any] = {}
    for key, known in NOT_COMPARED.items():
        value = data.get(key)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k in known}
        if value is not None:
            back[key] = value
    back.update(imported.spec)
    try:
        again = ModelSpec.model_validate(back)
    except ValidationError as err:
        raise HFExportError(
            f"spec {spec.name!r} cannot be exported to Hugging Face as {hf.family}: "
            f"the files import as no valid spec ({err.errors(include_url=False)[0]['msg']})"
        ) from None
    ours, theirs = _normalized(spec), _normalized(again)
    differences = [
        f"{key} is {_shown(ours.get(key))} ({hf.family} reads back {_shown(theirs.get(key))})"
        for key in sorted(set(ours) | set(theirs))
        if ours.get(key) != theirs.get(key)
    ]
    if differences:
        raise HFExportError(
            f"spec {spec.name!r} cannot be exported to Hugging Face: as the {hf.family} family "
            f"it differs in {'; '.join(differences)}"
        )


def _shown(value: Any) -> str:
    return "unset" if value is None else json.dumps(value)


def generation_config(
    spec: ModelSpec, ids: dict[str, int], stops: list[int] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """generation_config.json for ``spec``: its special-token ids (``eos_token_id`` is the
    list ``stops``, eos first, when the spec has stop tokens) and decoding chain, and the
    chain's steps transformers cannot hold (those are left out, with the reason).

    transformers applies repetition penalty, no-repeat n-gram, temperature, top-k, top-p,
    min-p and typical in that order; a chain in another order, or with a step transformers
    lacks (presence and frequency penalties), keeps only its selector."""
    out: dict[str, Any] = {
        f"{role}_token_id": ids[role] for role in ("bos", "eos", "pad") if role in ids
    }
    if stops:
        out["eos_token_id"] = stops
    if spec.architecture == "encoder-decoder":
        out["decoder_start_token_id"] = ids.get(spec.decoder_start)
    if spec.generation is None:
        return out, []
    out["max_new_tokens"] = spec.generation.max_new_tokens
    steps = list(spec.generation.chain)
    selector = steps[-1]
    processors = steps[:-1]
    left_out: list[str] = []
    kinds = [step.type for step in processors]
    unknown = [kind for kind in kinds if kind not in HF_ORDER]
    if unknown:
        left_out.append(
            f"the decoding steps before {selector.type} ({', '.join(kinds)}): transformers has "
            f"no {unknown[0]} step"
        )
        processors = []
    elif kinds != sorted(set(kinds), key=HF_ORDER.index):
        left_out.append(
            f"the decoding steps before {selector.type} ({', '.join(kinds)}): transformers "
            f"applies {', '.join(HF_ORDER)} in this order, each once"
        )
        processors = []
    if selector.type not in ("greedy", "sample", "beam_search"):
        left_out.append(f"the selector {selector.type}: transformers has none; greedy instead")
        processors = []
    if selector.type == "beam_search":
        out.update(
            num_beams=selector.beams,
            length_penalty=selector.length_penalty,
            early_stopping=selector.early_stopping,
            do_sample=False,
        )
    else:
        out["do_sample"] = selector.type == "sample"
        if out["do_sample"]:
            out["top_k"] = 0  # transformers' default is 50; the spec's chain has none unless given
    keys: dict[str, Callable[[Any], tuple[str, Any]]] = {
        "repetition_penalty": lambda s: ("repetition_penalty", s.penalty),
        "no_repeat_ngram": lambda s: ("no_repeat_ngram_size", s.n),
        "temperature": lambda s: ("temperature", s.value),
        "top_k": lambda s: ("top_k", s.k),
        "top_p": lambda s: ("top_p", s.p),
        "min_p": lambda s: ("min_p", s.p),
        "typical": lambda s: ("typical_p", s.p),
    }
    sampling_only = {"temperature", "top_k", "top_p", "min_p", "typical"}
    for step in processors:
        if step.type in sampling_only and not out.get("do_sample"):
            left_out.append(f"{step.type} before {selector.type}: transformers samples with it")
            continue
        key, value = keys[step.type](step)
        out[key] = value
    return out, left_out


def _tokenizer_files(spec: ModelSpec, tokenizer: Tokenizer, family: str) -> dict[str, str]:
    """tokenizer.json and the two files transformers reads its special tokens from."""
    specials = {
        f"{role}_token": text for role, text in spec.vocabulary.special_tokens.present().items()
    }
    if family in ("bert", "roberta", "distilbert"):  # their tokenizers' cls and sep
        for role, name in (("bos", "cls"), ("eos", "sep")):
            if f"{role}_token" in specials:
                specials[f"{name}_token"] = specials[f"{role}_token"]
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": spec.context_length,
        **specials,
    }
    return {
        TOKENIZER: tokenizer.to_str(pretty=True),
        TOKENIZER_CONFIG: _json(tokenizer_config),
        SPECIAL_TOKENS_MAP: _json(specials),
    }


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _check_output(target: Path, force: bool) -> None:
    if target.is_symlink() and not target.is_dir():
        raise HFExportError(
            f"{target}: a symbolic link to something that is not a directory; point it at a "
            "directory or remove it"
        )
    if target.exists():
        if not target.is_dir():
            raise HFExportError(f"{target}: exists and is not a directory")
        if not force:
            raise HFExportError(f"{target}: already exists; pass --force to replace it")


def export_hf(
    source: ModelSpec | str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    force: bool = False,
    family: str | None = None,
) -> ExportedHF:
    """Export ``source`` (a spec, spec file, run or import directory) to the Hugging Face
    directory ``output``, as the Hugging Face ``family`` (a ``model_type``) when given, else as
    the family the spec's architecture, positions and knobs name; return what was written.

    Raises :class:`HFExportError` (one line) for a spec no Hugging Face family holds, naming
    each field that differs, for weights that do not fit the spec, and when ``output`` exists
    and ``force`` is false; :class:`~llmspec.errors.SpecError` for an invalid spec."""
    from safetensors.torch import save_file

    target = Path(output)
    _check_output(target, force)
    try:
        src = resolve_source(source)
    except NoSpecInDirectory as err:
        raise HFExportError(str(err)) from None
    spec = src.spec
    try:
        tokenizer = src.tokenizer()
        ids = check_fits(tokenizer, spec)
    except TokenizerMismatch as err:
        raise HFExportError(str(err)) from None
    hf = hf_config(spec, ids, family)
    tensors = _our_tensors(spec, src.weights)
    hf.config["dtype"] = _dtype(tensors, src.weights)
    state = hf_state_dict(tensors, hf)
    _read_back(spec, hf, state)
    texts = {
        CONFIG: _json(dict(sorted(hf.config.items()))),
        **_tokenizer_files(spec, tokenizer, hf.family),
    }
    notes: list[str] = []
    if spec.can_generate:
        generation, notes = generation_config(spec, ids, stop_token_ids(tokenizer, spec))
        texts[GENERATION_CONFIG] = _json(generation)
    metadata = {"format": "pt"}
    try:
        with publishing(target, replace=force) as staged:
            save_file(_unshared(state), str(staged / WEIGHTS), metadata=metadata)
            for name, text in texts.items():
                (staged / name).write_text(text, encoding="utf-8")
    except FileExistsError as err:
        raise HFExportError(f"{target}: already exists; pass --force to replace it") from err
    architecture = hf.config["architectures"][0]
    return ExportedHF(target, hf.family, architecture, sorted([WEIGHTS, *texts]), notes)
