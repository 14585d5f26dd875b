"""Importing a local Hugging Face model directory as a spec and weights in llmspec's naming.

``llmspec import-hf HF_DIR -o OUT_DIR`` reads ``config.json`` and the weights
(``model.safetensors``, a sharded ``model.safetensors.index.json``, or ``pytorch_model.bin``
/ its index, read with ``torch.load(weights_only=True)``) of one of these families:

=========  ========================================  ==========================================
family     architectures                              spec
=========  ========================================  ==========================================
bert       BertModel, BertForMaskedLM                 encoder-only, post-norm, masked-lm
gpt2       GPT2Model, GPT2LMHeadModel                 decoder-only, pre-norm, causal-lm
t5         T5Model, T5ForConditionalGeneration        encoder-decoder, relative, span-corruption
           (v1.0 relu and v1.1 gated-gelu)
bart       BartModel, BartForConditionalGeneration    encoder-decoder, post-norm, denoising
llama      LlamaModel, LlamaForCausalLM               decoder-only, RoPE, causal-lm
roberta,   RobertaModel, RobertaForMaskedLM (and      encoder-only, post-norm, masked-lm,
xlm-       XLMRoberta...)                             positions offset by pad_token_id + 1
roberta
distil-    DistilBertModel, DistilBertForMaskedLM     encoder-only, post-norm, masked-lm, no
bert                                                  token types
opt        OPTModel, OPTForCausalLM                   decoder-only, pre- or post-norm, learned
                                                      positions offset by 2, causal-lm
mistral    MistralModel, MistralForCausalLM           as llama (no binding sliding window)
mt5        MT5Model, MT5ForConditionalGeneration      as T5 v1.1, never rescaled
qwen2      Qwen2Model, Qwen2ForCausalLM               as llama, biases on q, k, v only
qwen3      Qwen3Model, Qwen3ForCausalLM               as llama, RMSNorm on queries and keys
gemma      GemmaModel, GemmaForCausalLM               as llama, (1 + weight) RMSNorm, scaled
                                                      embeddings
gemma2     Gemma2Model, Gemma2ForCausalLM             as gemma, sandwich norms, soft-capping,
                                                      local/global layers, score scale
gemma3_    Gemma3TextModel, Gemma3ForCausalLM         as gemma2, QK-norm, local layers' rope
text                                                  base
gpt_neox   GPTNeoXModel, GPTNeoXForCausalLM           decoder-only, LayerNorm, parallel
                                                      residual, partial rotary, causal-lm
phi3       Phi3Model, Phi3ForCausalLM                 as llama, fused qkv and gate/up, longrope
=========  ========================================  ==========================================

and writes ``OUT_DIR/spec.yaml`` (a validated spec, normalized by
:func:`llmspec.spec.loading.dump_spec`, under a comment naming the source) and
``OUT_DIR/weights.safetensors`` (every tensor renamed to the names the generated model uses;
GPT-2's Conv1D ``[in, out]`` weights transposed and its fused ``c_attn`` split into q, k, v;
the names are data, one table per family in :mod:`llmspec.importers.hf.tables`, which also
converts back), and ``OUT_DIR/chat_template.jinja`` when the source has a chat template
(``chat_template.jinja``, else ``chat_template`` of ``chat_template.json`` or
``tokenizer_config.json``; ``llmspec export`` puts it into the artifact).
The directory is written atomically: into a temporary sibling, fsynced, then renamed; an
existing ``OUT_DIR`` is refused unless ``force``.

Faithful or nothing. Every config option that would make the spec's model compute something
other than the Hugging Face model is refused with an error naming the option and its value
(``rope_scaling``, an activation the spec has no name for, BERT's relative
``position_embedding_type``, cross-attention in a decoder-only model, BART encoder and decoder
with different head counts or widths, ...), and so is every weight the spec has no place for
(a classification head, say): nothing is dropped silently. Options that only change training
(dropout rates, initializer ranges) are carried over where the spec has them and ignored
otherwise.

The import is a pipeline of one module per step: :mod:`~llmspec.importers.hf.source` reads the
directory; :mod:`~llmspec.importers.hf.families` translates the config by the family's
defaults (:mod:`~llmspec.importers.hf.config`) and its weights by the family's table
(:mod:`~llmspec.importers.hf.tables`); :mod:`~llmspec.importers.hf.vocabulary` settles the
special tokens and the tokenizer, :mod:`~llmspec.importers.hf.generation` the decoding
defaults; this module validates the spec, checks every tensor against :func:`expected_shapes`
and writes the directory. Precision is the dtype the weights are stored in; the weights are
written unconverted.
"""

from __future__ import annotations

import os
import re
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from llmspec.errors import SpecError
from llmspec.files import publishing
from llmspec.importers.hf.config import Config, check_architectures
from llmspec.importers.hf.families import FAMILIES, SUPPORTED_FAMILIES
from llmspec.importers.hf.generation import eos_ids, generation_section
from llmspec.importers.hf.mapping import HFImportError, Weights
from llmspec.importers.hf.source import TOKENIZER_FILE, Source, read_source
from llmspec.importers.hf.translation import Imported
from llmspec.importers.hf.vocabulary import (
    check_tokenizer,
    decoder_start_role,
    placeholder_vocabulary,
    vocabulary_from_tokenizer,
)
from llmspec.spec.loading import dump_spec, load_spec
from llmspec.spec.sections import ModelSpec
from runtime import artifact as fmt

__all__ = ["HFImportError", "expected_shapes", "import_hf", "weights_from_hf"]


def _spec_name(directory: Path, family: str) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", directory.resolve().name.lower())
    name = re.sub(r"([-_])[-_]+", r"\1", name).strip("-_")[:64].strip("-_")
    if not re.fullmatch(r"[a-z][a-z0-9]*([-_][a-z0-9]+)*", name):
        return family
    return name


def _precision(tensors: dict[str, torch.Tensor]) -> str:
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    unknown = [d for d in dtypes if d not in names]
    if unknown:
        raise HFImportError(f"weights in {unknown[0]} are not supported (fp32, fp16 or bf16)")
    if len(dtypes) > 1:
        raise HFImportError(
            f"the weights mix {', '.join(sorted(names[d] for d in dtypes))}; save them in one dtype"
        )
    return names[dtypes.pop()] if dtypes else "fp32"


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of ``weights.safetensors`` for ``spec`` and its shape (the naming contract)."""
    d, v = spec.d_model, spec.vocabulary.size
    q_out, kv_out = spec.attention.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    layernorm = spec.norm.type == "layernorm"
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (v, d)}

    def linear(name: str, out_features: int, in_features: int) -> None:
        shapes[f"{name}.weight"] = (out_features, in_features)
        if spec.bias:
            shapes[f"{name}.bias"] = (out_features,)

    def norm(name: str, width: int = d) -> None:
        shapes[f"{name}.weight"] = (width,)
        if layernorm and spec.bias:
            shapes[f"{name}.bias"] = (width,)

    qkv_bias = spec.bias if spec.attention.qkv_bias is None else spec.attention.qkv_bias

    def attention(name: str) -> None:
        for projection, width in (("q_proj", q_out), ("k_proj", kv_out), ("v_proj", kv_out)):
            shapes[f"{name}.{projection}.weight"] = (width, d)
            if qkv_bias:
                shapes[f"{name}.{projection}.bias"] = (width,)
        linear(f"{name}.o_proj", d, q_out)
        if spec.attention.qk_norm == "rmsnorm":  # over each head's queries and keys
            shapes[f"{name}.q_norm.weight"] = (spec.head_dim,)
            shapes[f"{name}.k_norm.weight"] = (spec.head_dim,)

    stacks = {
        "encoder-only": [("encoder", spec.layers, False)],
        "decoder-only": [("decoder", spec.layers, False)],
        "encoder-decoder": [
            ("encoder", spec.layers, False),
            ("decoder", spec.num_decoder_layers, True),
        ],
    }[spec.architecture]
    positions = spec.positions
    for stack, count, cross in stacks:
        if positions.type == "learned":
            shapes[f"{stack}.embed_positions.weight"] = (
                positions.max_positions + positions.offset,
                d,
            )
        if positions.type == "relative":
            shapes[f"{stack}.relative_bias.weight"] = (positions.buckets, spec.attention.heads)
        if spec.embeddings.token_types and stack == "encoder":
            shapes[f"{stack}.embed_token_types.weight"] = (spec.embeddings.token_types, d)
        if spec.embeddings.norm:
            norm(f"{stack}.embed_norm")
        for i in range(count):
            layer = f"{stack}.layers.{i}"
            attention(f"{layer}.self_attn")
            norm(f"{layer}.self_attn_norm")
            if cross:
                attention(f"{layer}.cross_attn")
                norm(f"{layer}.cross_attn_norm")
            if spec.gated:
                linear(f"{layer}.mlp.gate_proj", spec.feed_forward.d_ff, d)
            linear(f"{layer}.mlp.up_proj", spec.feed_forward.d_ff, d)
            linear(f"{layer}.mlp.down_proj", d, spec.feed_forward.d_ff)
            norm(f"{layer}.mlp_norm")
            if spec.norm.sandwich:  # on each sublayer's output
                norm(f"{layer}.self_attn_out_norm")
                norm(f"{layer}.mlp_out_norm")
        if spec.norm.position == "pre":
            norm(f"{stack}.final_norm")
    if not spec.head.tied:
        shapes["lm_head.weight"] = (v, d)
    if spec.head.logits_bias != "none":
        shapes["logits_bias"] = (v,)
    if spec.head.transform:
        linear("head_transform.dense", d, d)
        norm("head_transform.norm")
    if spec.head.pooler:
        linear("pooler.dense", d, d)
    return shapes


def _check_shapes(spec: ModelSpec, tensors: dict[str, torch.Tensor], where: str) -> None:
    expected = expected_shapes(spec)
    for name, shape in expected.items():
        if name not in tensors:  # a family rule forgot one: a bug here, not in the input
            raise AssertionError(f"import produced no {name}")
        if tuple(tensors[name].shape) != shape:
            raise HFImportError(
                f"{where}: {name} has shape {list(tensors[name].shape)} but config.json implies "
                f"{list(shape)}"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise AssertionError(f"import produced tensors outside the naming contract: {extra}")


def _validated(data: dict[str, Any]) -> ModelSpec:
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'spec'}: "
            + str(e["msg"]).removeprefix("Value error, ")
            for e in err.errors(include_url=False)
        )
        raise HFImportError(f"the imported spec is not valid: {problems}") from None


def _import_family(config: Config, weights: Weights) -> Imported:
    """The family's import of ``weights``, every one of which must have found its place."""
    imported = FAMILIES[config.family](config, weights)
    left = weights.left()
    if left:
        more = f" and {len(left) - 5} more" if len(left) > 5 else ""
        raise HFImportError(
            f"{weights.where}: weights with no place in the spec: {', '.join(left[:5])}"
            f"{more} (a head llmspec does not import?)"
        )
    return imported


def weights_from_hf(
    config: Mapping[str, Any], state: Mapping[str, torch.Tensor], where: str = "the state dict"
) -> dict[str, torch.Tensor]:
    """Our tensors for a Hugging Face model's ``state`` (its ``state_dict()`` or its weight
    files' tensors) and ``config`` (config.json's content): the weights half of
    :func:`import_hf`; :func:`llmspec.importers.hf.mapping.to_hf` is its inverse.

    Raises :class:`HFImportError` (naming the option or the weight, ``where`` for the weights)
    for a config the spec cannot express, a missing weight, or one with no place in the spec.
    """
    family = config.get("model_type")
    if family not in SUPPORTED_FAMILIES:
        raise HFImportError(
            f"config: model_type {family!r} is not supported; llmspec imports "
            f"{', '.join(SUPPORTED_FAMILIES)}"
        )
    weights = Weights(dict(state), where)
    return _import_family(Config(dict(config), str(family)), weights).tensors


def build_import(source: Source) -> tuple[ModelSpec, str, dict[str, torch.Tensor], str | None]:
    """(spec, spec.yaml text, our tensors, tokenizer.json text or None) for a read source."""
    family = str(source.config["model_type"])
    config = Config(source.config, family)
    architecture = check_architectures(config)
    imported = _import_family(config, source.weights)
    imported.stop_ids = eos_ids(source.config, source.generation)
    size = config.integer("vocab_size")
    if source.tokenizer_json is not None:
        vocabulary = vocabulary_from_tokenizer(source, imported, size)
    else:
        vocabulary = placeholder_vocabulary(family, imported, size)
    has_eos = "eos" in vocabulary.section["special_tokens"]
    generation, left_out = generation_section(
        source.generation,
        has_eos,
        encoder_decoder=imported.spec["architecture"] == "encoder-decoder",
        context_length=imported.spec["context_length"],
        stop_tokens=vocabulary.stop_tokens,
    )
    data: dict[str, Any] = {
        "name": _spec_name(source.path, family),
        "architecture": imported.spec["architecture"],
        "vocabulary": vocabulary.section,
        **{k: v for k, v in imported.spec.items() if k != "architecture"},
        "precision": {"dtype": _precision(imported.tensors)},
    }
    if generation is not None and imported.spec["architecture"] != "encoder-only":
        data["generation"] = generation
    start = source.generation.get(
        "decoder_start_token_id", source.config.get("decoder_start_token_id")
    )
    if imported.spec["architecture"] == "encoder-decoder" and start is not None:
        data["vocabulary"]["decoder_start"] = decoder_start_role(start, vocabulary)
    spec = _validated(data)
    _check_shapes(spec, imported.tensors, source.weights.where)
    check_tokenizer(spec, vocabulary)
    written_by = (
        f", written by transformers {version}"
        if (version := source.config.get("transformers_version"))
        else ""
    )
    paragraphs = [
        f"{architecture} (model_type {family}{written_by}). Weights: weights.safetensors, "
        "in llmspec's naming.",
        *(f"Note: {note}." for note in [*imported.notes, *vocabulary.notes]),
        *(f"Note: {note} ({fmt.CHAT_TEMPLATE})." for note in source.chat_notes),
        *(f"Generation default not imported: {item}." for item in left_out),
    ]
    header = [f"# Imported by `llmspec import-hf` from {source.path.resolve().name}"]
    header += [
        f"# {line}"
        for paragraph in paragraphs
        for line in textwrap.wrap(paragraph, 98, break_long_words=False, break_on_hyphens=False)
    ]
    text = "\n".join(header) + "\n" + dump_spec(spec)
    try:
        load_spec(text)
    except SpecError as err:  # dump_spec of a valid spec must load; a bug if not
        raise AssertionError(f"the imported spec does not round-trip: {err}") from None
    return spec, text, imported.tensors, vocabulary.tokenizer_json


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors with no two sharing storage, as safetensors requires."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen:
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def _write_dir(out_dir: Path, files: dict[str, Callable[[Path], object]], force: bool) -> None:
    """Write ``files`` into a staging sibling of ``out_dir``, then publish it in one step; a
    failure to write raises :class:`llmspec.files.OutputError` and leaves ``out_dir`` as it was."""
    try:
        with publishing(out_dir, replace=force) as staged:
            for name, write in files.items():
                write(staged / name)
    except FileExistsError as err:
        raise HFImportError(f"{out_dir}: already exists; pass --force to replace it") from err


def _check_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse an ``out_dir`` that is not a directory or that exists without ``force``. A
    symbolic link to a directory is followed, as by ``llmspec export``: that directory is
    replaced and the link kept."""
    if out_dir.is_symlink() and not out_dir.is_dir():
        raise HFImportError(
            f"{out_dir}: a symbolic link to something that is not a directory; point it at a "
            "directory or remove it"
        )
    if out_dir.exists():
        if not out_dir.is_dir():
            raise HFImportError(f"{out_dir}: exists and is not a directory")
        if not force:
            raise HFImportError(f"{out_dir}: already exists; pass --force to replace it")


def import_hf(
    hf_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Import the Hugging Face model in ``hf_dir`` into ``out_dir``; return ``out_dir``.

    Writes ``spec.yaml``, ``weights.safetensors`` and, when the spec names one,
    ``tokenizer.json`` (and ``chat_template.jinja`` when the source has a chat template),
    atomically. Raises :class:`HFImportError` (one line, naming the file,
    option or weight) for anything that cannot be imported faithfully, and when ``out_dir``
    exists and ``force`` is false.
    """
    from safetensors.torch import save_file

    target = Path(out_dir)
    _check_out_dir(target, force)
    source = read_source(hf_dir)
    _, text, tensors, tokenizer_json = build_import(source)
    # The folder's name only: an import never records the importing machine's paths.
    metadata = {"format": "pt", "source": source.path.resolve().name}
    files: dict[str, Callable[[Path], object]] = {
        fmt.SPEC: lambda p: p.write_text(text, encoding="utf-8"),
        fmt.WEIGHTS: lambda p: save_file(_unshared(tensors), str(p), metadata=metadata),
    }
    if tokenizer_json is not None:
        files[TOKENIZER_FILE] = lambda p: p.write_text(tokenizer_json, encoding="utf-8")
    template = source.chat_template
    if template is not None:  # llmspec export copies it into the artifact
        files[fmt.CHAT_TEMPLATE] = lambda p: p.write_text(template, encoding="utf-8")
    _write_dir(target, files, force)
    return target
