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
=========  ========================================  ==========================================

and writes ``OUT_DIR/spec.yaml`` (a validated spec, normalized by
:func:`llmspec.spec.loading.dump_spec`, under a comment naming the source) and
``OUT_DIR/weights.safetensors`` (every tensor renamed to the names the generated model uses;
GPT-2's Conv1D ``[in, out]`` weights transposed and its fused ``c_attn`` split into q, k, v;
the names are data, one table per family in :mod:`llmspec.importers.hf.tables`, which also
converts back).
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

Decisions (where DESIGN.md is silent):

* Tied or untied output: decided by the weights as transformers 5 does. The head is tied when
  the checkpoint has no separate output matrix (``lm_head.weight``, BERT's
  ``cls.predictions.decoder.weight``) or it equals the embeddings; a separate, different one
  contradicting ``tie_word_embeddings: true`` is refused as ambiguous (older transformers
  would overwrite it with the embeddings), except for T5, whose transformers 5 config always
  says true. T5 rescales the output by ``d_model ** -0.5`` per ``scale_decoder_outputs``
  (transformers 5) or else ``tie_word_embeddings`` (v1.1 configs say false: no rescale).
* Optional parts come from the weights: BERT's pooler (BertModel) and MLM head (BertForMaskedLM),
  BART's ``final_logits_bias`` (a buffer on the logits). A model without an output head still
  gets the spec's tied output projection; its hidden states match the source.
* Special tokens and the tokenizer. The token ids the model was trained with are the truth,
  so each special token keeps its source id:

  - with a ``tokenizer.json`` in HF_DIR, it is copied and the spec names it
    (``tokenizer: {type: file, path: tokenizer.json}``). Special tokens are the tokens at the
    config's ``pad/bos/eos/unk/mask_token_id``; roles the config lacks (BERT's mask, T5's unk,
    BART's mask) come from ``special_tokens_map.json`` or ``tokenizer_config.json``
    (BERT's ``cls_token``/``sep_token`` stand for bos/eos). T5 sentinels are the
    ``<extra_id_N>`` tokens the tokenizer has.
  - without one, the source has no text mapping at all, so the import gets a byte-level
    tokenizer whose special tokens sit at the config's ids: the built-in ``byte-level``
    tokenizer when its fixed layout (see :mod:`llmspec.tokenizer`) already puts them there (T5:
    pad 0, eos 1, sentinels at the top), otherwise a placeholder ``tokenizer.json`` built
    the same way (the 256 bytes on the lowest free ids in byte order, the rest unused). Roles
    the objective needs but the config does not name (a mask token) take the highest free
    id, as BART's ``<mask>`` does; T5 gets 100 sentinels ``<extra_id_N>`` descending from the
    top id, or as many as fit beside the 256 bytes. Text through a placeholder is not the
    source model's text; padding, eos and sentinels address the same embedding rows.

  Either way the written tokenizer is checked against the spec (:func:`check_fits`) and every
  special token must come out at the id the config gives it.

  Roles sharing one id (Llama configs that pad with eos) keep the first of eos, bos, pad, unk,
  mask (bos and eos may share a token); an ``eos_token_id`` list keeps its first id. Both are
  noted in the spec's header comment.
* Context length: BERT, GPT-2, BART and Llama take their position limit
  (``max_position_embeddings``, ``n_positions``); T5's relative positions have none, so it is
  ``n_positions`` where an old config gives it, else 512 (T5's pre-training length).
* Generation defaults come from ``generation_config.json`` where there is one (greedy,
  sampling with temperature/top-k/top-p, beam search; repetition penalty and no-repeat-ngram
  before the selector), else greedy. Settings the spec's chain cannot express
  (``forced_eos_token_id``, a penalty together with beam search, ...) are left out and listed in
  the header comment: they are decoding defaults, not the model. Models without an eos token
  get no generation section.
* Precision is the dtype the weights are stored in; the weights are written unconverted.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from llmspec.errors import SpecError
from llmspec.files import publishing
from llmspec.importers.hf.tables import (
    BART,
    BERT,
    GPT2,
    LLAMA,
    T5,
    T5_GATED,
    HFImportError,
    Weights,
    from_hf,
)
from llmspec.spec.loading import dump_spec, load_spec
from llmspec.spec.sections import BYTE_LEVEL_BASE, ModelSpec
from llmspec.tokenizer import TokenizerMismatch, byte_level, check_fits, read_tokenizer_text
from llmspec.tokenizer import _byte_alphabet as byte_alphabet
from runtime.reading import MiB, UnreadableFile, read_json, read_text

__all__ = ["HFImportError", "import_hf", "weights_from_hf"]

SUPPORTED_FAMILIES = ("bert", "gpt2", "t5", "bart", "llama")
SPEC_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "spec.yaml", "weights.safetensors", "tokenizer.json"
ROLE_ORDER = ("eos", "bos", "pad", "unk", "mask")  # who keeps an id that several roles share
T5_SENTINELS = 100
T5_CONTEXT = 512


# ----------------------------------------------------------------------------------------
# Reading the source directory


@dataclass
class Source:
    """What an import reads from HF_DIR."""

    path: Path
    config: dict[str, Any]
    weights: Weights
    tokenizer_json: Path | None
    token_names: dict[str, str]  # role -> text from special_tokens_map / tokenizer_config
    generation: dict[str, Any]


# config.json and the tokenizer's JSON files are kilobytes; a shard index or a tokenizer_config
# with a long chat template a few MiB.
MAX_JSON_BYTES = 64 * MiB


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path, MAX_JSON_BYTES, "JSON file")
    except UnreadableFile as err:  # not a regular file, too large, too deep, not JSON
        raise HFImportError(str(err)) from None
    if not isinstance(data, dict):
        raise HFImportError(f"{path}: expected a JSON object")
    return data


def _load_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors and torch.load raise many kinds on a bad file
        raise HFImportError(f"{path}: cannot read weights ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise HFImportError(f"{path}: not a state dict of tensors")
    return dict(state)


def _load_weights(directory: Path) -> tuple[dict[str, torch.Tensor], str]:
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (directory / single).is_file():
            return _load_tensor_file(directory / single), single
        if (directory / index).is_file():
            weight_map = _read_json(directory / index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise HFImportError(f"{directory / index}: no weight_map")
            tensors: dict[str, torch.Tensor] = {}
            for shard in sorted(set(map(str, weight_map.values()))):
                shard_path = directory / shard
                if Path(shard).is_absolute() or ".." in Path(shard).parts:
                    raise HFImportError(
                        f"{directory / index}: shard {shard!r} is outside {directory}"
                    )
                if not shard_path.is_file():
                    raise HFImportError(f"{directory / index}: shard {shard} is missing")
                tensors.update(_load_tensor_file(shard_path))
            missing = sorted(set(weight_map) - set(tensors))
            if missing:
                raise HFImportError(f"{directory / index}: shards lack {', '.join(missing[:5])}")
            return tensors, index
    raise HFImportError(
        f"{directory}: no weights; expected model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin or pytorch_model.bin.index.json"
    )


def _token_names(directory: Path) -> dict[str, str]:
    """Special-token texts by role from special_tokens_map.json, then tokenizer_config.json."""
    names: dict[str, str] = {}
    for file_name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = directory / file_name
        if not path.is_file():
            continue
        data = _read_json(path)
        for role in ("pad", "bos", "eos", "unk", "mask", "cls", "sep"):
            value = data.get(f"{role}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value and role not in names:
                names[role] = value
    return names


def read_source(hf_dir: str | os.PathLike[str]) -> Source:
    """Read config.json, the weights and the tokenizer files of a Hugging Face directory."""
    directory = Path(hf_dir)
    if not directory.is_dir():
        raise HFImportError(f"{directory}: not a directory (give a save_pretrained directory)")
    config_path = directory / "config.json"
    if not config_path.exists():  # a FIFO or a device is refused by _read_json, naming it
        raise HFImportError(
            f"{directory}: no config.json; give a Hugging Face model directory as written by "
            "save_pretrained"
        )
    config = _read_json(config_path)
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_FAMILIES:
        raise HFImportError(
            f"{config_path}: model_type {model_type!r} is not supported; llmspec imports "
            f"{', '.join(SUPPORTED_FAMILIES)}"
        )
    tensors, weights_name = _load_weights(directory)
    generation_path = directory / "generation_config.json"
    tokenizer_path = directory / TOKENIZER_FILE
    return Source(
        path=directory,
        config=config,
        weights=Weights(tensors, str(directory / weights_name)),
        tokenizer_json=tokenizer_path if tokenizer_path.is_file() else None,
        token_names=_token_names(directory) if tokenizer_path.is_file() else {},
        generation=_read_json(generation_path) if generation_path.is_file() else {},
    )


# ----------------------------------------------------------------------------------------
# Config access with the defaults of transformers' config classes (saved configs may omit them)

DEFAULTS: dict[str, dict[str, Any]] = {
    "bert": {
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "is_decoder": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
    },
    "gpt2": {
        "vocab_size": 50257,
        "n_positions": 1024,
        "n_embd": 768,
        "n_layer": 12,
        "n_head": 12,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": 0.1,
        "attn_pdrop": 0.1,
        "layer_norm_epsilon": 1e-5,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "tie_word_embeddings": True,
    },
    "t5": {
        "vocab_size": 32128,
        "d_model": 512,
        "d_kv": 64,
        "d_ff": 2048,
        "num_layers": 6,
        "num_decoder_layers": None,
        "num_heads": 8,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6,
        "feed_forward_proj": "relu",
        "pad_token_id": 0,
        "eos_token_id": 1,
        "tie_word_embeddings": True,
    },
    "bart": {
        "vocab_size": 50265,
        "max_position_embeddings": 1024,
        "encoder_layers": 12,
        "encoder_ffn_dim": 4096,
        "encoder_attention_heads": 16,
        "decoder_layers": 12,
        "decoder_ffn_dim": 4096,
        "decoder_attention_heads": 16,
        "activation_function": "gelu",
        "d_model": 1024,
        "dropout": 0.1,
        "attention_dropout": 0.0,
        "scale_embedding": False,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "tie_word_embeddings": True,
    },
    "llama": {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": None,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "head_dim": None,
    },
}

ARCHITECTURES = {
    "bert": ("BertModel", "BertForMaskedLM"),
    "gpt2": ("GPT2Model", "GPT2LMHeadModel"),
    "t5": ("T5Model", "T5ForConditionalGeneration"),
    "bart": ("BartModel", "BartForConditionalGeneration"),
    "llama": ("LlamaModel", "LlamaForCausalLM"),
}

# transformers' activation names -> the spec's, for plain and gated feed-forward layers.
# Names missing here (quick_gelu, gelu_10, relu2, ...) have no spec equivalent.
PLAIN_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu-tanh",
    "gelu_pytorch_tanh": "gelu-tanh",
    "gelu_fast": "gelu-tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
GATED_ACTIVATIONS = {
    "gelu": "geglu",
    "gelu_python": "geglu",
    "gelu_new": "geglu-tanh",
    "gelu_pytorch_tanh": "geglu-tanh",
    "gelu_fast": "geglu-tanh",
    "silu": "swiglu",
    "swish": "swiglu",
}


class Config:
    """One family's config.json with transformers' defaults behind it."""

    def __init__(self, raw: dict[str, Any], family: str) -> None:
        self.raw = raw
        self.family = family
        self.defaults = DEFAULTS[family]

    def __getitem__(self, key: str) -> Any:
        return self.raw.get(key, self.defaults.get(key))

    def integer(self, key: str, *, minimum: int = 1) -> int:
        value = self[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise HFImportError(
                f"config.json: {key} must be an integer >= {minimum}, got {value!r}"
            )
        return value

    def number(self, key: str) -> float:
        value = self[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise HFImportError(f"config.json: {key} must be a number, got {value!r}")
        return float(value)

    def refuse(self, key: str, supported: Callable[[Any], bool], why: str) -> None:
        """Refuse the import when ``key`` holds a value the spec cannot express."""
        value = self[key]
        if not supported(value):
            raise HFImportError(f"config.json: {key} = {json.dumps(value)} is not supported: {why}")


def _activation(config: Config, key: str, *, gated: bool) -> str:
    name = config[key]
    table = GATED_ACTIVATIONS if gated else PLAIN_ACTIVATIONS
    if name not in table:
        kind = "gated feed-forward" if gated else "feed-forward"
        raise HFImportError(
            f"config.json: {key} = {json.dumps(name)} is not supported: the spec has no such "
            f"{kind} activation (supported: {', '.join(sorted(table))})"
        )
    return table[name]


def _check_architectures(config: Config) -> str:
    architectures = config.raw.get("architectures") or []
    supported = ARCHITECTURES[config.family]
    unknown = [a for a in architectures if a not in supported]
    if unknown:
        raise HFImportError(
            f"config.json: architectures {unknown[0]!r} is not supported: its extra head has no "
            f"place in a spec; llmspec imports {' and '.join(supported)}"
        )
    return architectures[0] if architectures else config.family


# ----------------------------------------------------------------------------------------
# The families: config -> spec sections, source weights -> our names


@dataclass
class Imported:
    """One family's result before the vocabulary is settled."""

    spec: dict[str, Any]  # every section but vocabulary and generation
    tensors: dict[str, torch.Tensor]
    token_ids: dict[str, int]  # role -> id from config.json
    needs: tuple[str, ...]  # roles the objective needs
    sentinels: bool = False
    notes: list[str] = field(default_factory=list)


def _output_head(
    weights: Weights,
    out: dict[str, torch.Tensor],
    head_key: str,
    config: Config,
    *,
    follow_weights: bool = False,
) -> bool:
    """Whether the output projection is tied; stores ``lm_head.weight`` when it is not."""
    embed = out["embed_tokens.weight"]
    head = weights.take_if(head_key)
    config_tied = config["tie_word_embeddings"] is not False
    if head is None:
        if not config_tied and not follow_weights:
            raise HFImportError(
                f"{weights.where}: config.json says tie_word_embeddings = false but the weights "
                f"have no {head_key!r}; the output projection would be random"
            )
        return True
    if head.shape == embed.shape and torch.equal(head, embed):
        return True
    if config_tied and not follow_weights:
        raise HFImportError(
            f"config.json: tie_word_embeddings = true, but {head_key!r} differs from the input "
            "embeddings; set tie_word_embeddings to false in config.json if the output "
            "projection is separate"
        )
    out["lm_head.weight"] = head
    return False


def _dropout(value: float) -> float:
    return value if 0 <= value < 1 else 0.0


def _special_ids(config: Config, roles: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    ids: dict[str, int] = {}
    notes: list[str] = []
    for role in roles:
        value = config[f"{role}_token_id"]
        if isinstance(value, list):
            if not value:
                continue
            if len(set(value)) > 1:
                notes.append(
                    f"{role}_token_id {value} is a list; the spec keeps the first, {value[0]}"
                )
            value = value[0]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise HFImportError(f"config.json: {role}_token_id must be a token id, got {value!r}")
        ids[role] = value
    return ids, notes


def import_bert(config: Config, weights: Weights) -> Imported:
    config.refuse("is_decoder", lambda v: not v, "a causal BERT is not an encoder-only model")
    config.refuse(
        "add_cross_attention", lambda v: not v, "encoder-only specs have no cross-attention"
    )
    config.refuse(
        "position_embedding_type",
        lambda v: v in (None, "absolute"),
        "only absolute (learned) positions are expressible",
    )
    layers = config.integer("num_hidden_layers")
    token_types = config.integer("type_vocab_size", minimum=0)
    out = from_hf(weights, BERT, {"encoder": layers}, ["token_types"] if token_types else [])
    tied = _output_head(weights, out, BERT.head, config)
    max_positions = config.integer("max_position_embeddings")
    activation = _activation(config, "hidden_act", gated=False)
    token_ids, notes = _special_ids(config, ("pad", "bos", "eos", "unk", "mask"))
    spec = {
        "architecture": "encoder-only",
        "context_length": max_positions,
        "d_model": config.integer("hidden_size"),
        "layers": layers,
        "attention": {"heads": config.integer("num_attention_heads")},
        "feed_forward": {"d_ff": config.integer("intermediate_size"), "activation": activation},
        "norm": {"type": "layernorm", "position": "post", "eps": config.number("layer_norm_eps")},
        "positions": {"type": "learned", "max_positions": max_positions},
        "bias": True,
        "embeddings": {"token_types": token_types, "norm": True},
        "head": {
            "tied": tied,
            "transform": "head_transform.dense.weight" in out,
            "pooler": "pooler.dense.weight" in out,
            "logits_bias": "learned" if "logits_bias" in out else "none",
        },
        "dropout": {
            "hidden": _dropout(config.number("hidden_dropout_prob")),
            "attention": _dropout(config.number("attention_probs_dropout_prob")),
        },
        "objective": {"type": "masked-lm"},
    }
    return Imported(spec, out, token_ids, needs=("mask", "pad"), notes=notes)


def import_gpt2(config: Config, weights: Weights) -> Imported:
    config.refuse(
        "add_cross_attention", lambda v: not v, "decoder-only specs have no cross-attention"
    )
    config.refuse(
        "scale_attn_by_inverse_layer_idx",
        lambda v: not v,
        "the spec scales every layer's attention alike",
    )
    d_model = config.integer("n_embd")
    layers = config.integer("n_layer")
    d_ff = config["n_inner"] if config["n_inner"] is not None else 4 * d_model
    out = from_hf(weights, GPT2, {"decoder": layers})
    for i in range(layers):  # the fused c_attn's shape, rebuilt from its q, k, v
        q, k, v = (out[f"decoder.layers.{i}.self_attn.{p}_proj.weight"] for p in "qkv")
        fused = [q.shape[1], q.shape[0] + k.shape[0] + v.shape[0]]
        if fused[1] != 3 * d_model:
            raise HFImportError(
                f"{weights.where}: h.{i}.attn.c_attn.weight has shape {fused}, expected "
                f"[{d_model}, {3 * d_model}]"
            )
    tied = _output_head(weights, out, GPT2.head, config)
    positions = config.integer("n_positions")
    token_ids, notes = _special_ids(config, ("pad", "bos", "eos", "unk"))
    spec = {
        "architecture": "decoder-only",
        "context_length": positions,
        "d_model": d_model,
        "layers": layers,
        "attention": {
            "heads": config.integer("n_head"),
            "scaled": bool(config["scale_attn_weights"]),
        },
        "feed_forward": {
            "d_ff": d_ff,
            "activation": _activation(config, "activation_function", gated=False),
        },
        "norm": {
            "type": "layernorm",
            "position": "pre",
            "eps": config.number("layer_norm_epsilon"),
        },
        "positions": {"type": "learned", "max_positions": positions},
        "bias": True,
        "head": {"tied": tied},
        "dropout": {
            "hidden": _dropout(config.number("resid_pdrop")),
            "attention": _dropout(config.number("attn_pdrop")),
        },
        "objective": {"type": "causal-lm"},
    }
    return Imported(spec, out, token_ids, needs=(), notes=notes)


def import_t5(config: Config, weights: Weights) -> Imported:
    proj = config["feed_forward_proj"]
    parts = proj.split("-") if isinstance(proj, str) else []
    gated = len(parts) == 2 and parts[0] == "gated"
    if not parts or len(parts) > 2 or (len(parts) == 2 and not gated):
        raise HFImportError(f"config.json: feed_forward_proj = {json.dumps(proj)} is not valid")
    act = "gelu_new" if proj == "gated-gelu" else parts[-1]  # as transformers reads it
    table = GATED_ACTIVATIONS if gated else PLAIN_ACTIVATIONS
    if act not in table:
        raise HFImportError(
            f"config.json: feed_forward_proj = {json.dumps(proj)} is not supported: the spec has "
            f"no {'gated ' if gated else ''}{act} activation"
        )
    encoder_layers = config.integer("num_layers")
    decoder_layers = (
        config.integer("num_decoder_layers")
        if config["num_decoder_layers"] is not None
        else encoder_layers
    )
    names = T5_GATED if gated else T5
    out = from_hf(weights, names, {"encoder": encoder_layers, "decoder": decoder_layers})
    # transformers 5 always writes tie_word_embeddings: true for T5 and unties a differing
    # lm_head.weight, so the weights decide; the output rescale has its own switch.
    tied = _output_head(weights, out, names.head, config, follow_weights=True)
    scale = config.raw.get("scale_decoder_outputs")
    rescale = bool(scale) if scale is not None else config["tie_word_embeddings"] is not False
    if rescale and not tied:
        raise HFImportError(
            "config.json: scale_decoder_outputs = true with a separate lm_head.weight is not "
            "supported: the spec rescales tied output projections only"
        )
    context = config.raw.get("n_positions", T5_CONTEXT)
    if isinstance(context, bool) or not isinstance(context, int) or context < 1:
        context = T5_CONTEXT
    token_ids, notes = _special_ids(config, ("pad", "bos", "eos", "unk"))
    spec: dict[str, Any] = {
        "architecture": "encoder-decoder",
        "context_length": context,
        "d_model": config.integer("d_model"),
        "layers": encoder_layers,
        "attention": {
            "heads": config.integer("num_heads"),
            "head_dim": config.integer("d_kv"),
            "scaled": False,
        },
        "feed_forward": {"d_ff": config.integer("d_ff"), "activation": table[act]},
        "norm": {"type": "rmsnorm", "position": "pre", "eps": config.number("layer_norm_epsilon")},
        "positions": {
            "type": "relative",
            "buckets": config.integer("relative_attention_num_buckets"),
            "max_distance": config.integer("relative_attention_max_distance"),
        },
        "bias": False,
        "head": {"tied": tied, "rescale": rescale},
        "dropout": {"hidden": _dropout(config.number("dropout_rate"))},
        "objective": {"type": "span-corruption"},
    }
    if decoder_layers != encoder_layers:
        spec["decoder_layers"] = decoder_layers
    return Imported(spec, out, token_ids, needs=("pad", "eos"), sentinels=True, notes=notes)


# Keys of transformers 3's BART config (mBART-style switches) that current BartModel ignores.
# A checkpoint written with them set differently was a different model; refuse it.
BART_LEGACY = {
    "normalize_before": (False, "pre-norm BART (mBART) has extra final norms"),
    "add_final_layer_norm": (False, "a final norm after each post-norm stack"),
    "normalize_embedding": (True, "BART normalizes its embeddings"),
    "static_position_embeddings": (False, "sinusoidal BART positions (Marian style)"),
    "add_bias_logits": (False, "a learned logits bias"),
    "extra_pos_embeddings": (2, "BART offsets positions by 2"),
}


def import_bart(config: Config, weights: Weights) -> Imported:
    for key, (expected, what) in BART_LEGACY.items():
        if key in config.raw and config.raw[key] != expected:
            raise HFImportError(
                f"config.json: {key} = {json.dumps(config.raw[key])} is not supported: {what}; "
                "current transformers ignores it, so the checkpoint is not a standard BART"
            )
    for a, b in (
        ("encoder_attention_heads", "decoder_attention_heads"),
        ("encoder_ffn_dim", "decoder_ffn_dim"),
    ):
        if config[a] != config[b]:
            raise HFImportError(
                f"config.json: {a} = {config[a]} and {b} = {config[b]} differ; the spec gives "
                "both stacks the same attention and feed-forward shape"
            )
    encoder_layers = config.integer("encoder_layers")
    decoder_layers = config.integer("decoder_layers")
    d_model = config.integer("d_model")
    max_positions = config.integer("max_position_embeddings")
    out = from_hf(weights, BART, {"encoder": encoder_layers, "decoder": decoder_layers})
    tied = _output_head(weights, out, BART.head, config)
    token_ids, notes = _special_ids(config, ("pad", "bos", "eos", "unk", "mask"))
    spec: dict[str, Any] = {
        "architecture": "encoder-decoder",
        "context_length": max_positions,
        "d_model": d_model,
        "layers": encoder_layers,
        "attention": {"heads": config.integer("encoder_attention_heads")},
        "feed_forward": {
            "d_ff": config.integer("encoder_ffn_dim"),
            "activation": _activation(config, "activation_function", gated=False),
        },
        # BART's LayerNorms use torch's default eps; the config has no field for it
        "norm": {"type": "layernorm", "position": "post", "eps": 1e-5},
        "positions": {"type": "learned", "max_positions": max_positions, "offset": 2},
        "bias": True,
        "embeddings": {"norm": True, "scale": bool(config["scale_embedding"])},
        "head": {"tied": tied, "logits_bias": "buffer" if "logits_bias" in out else "none"},
        "dropout": {
            "hidden": _dropout(config.number("dropout")),
            "attention": _dropout(config.number("attention_dropout")),
        },
        "objective": {"type": "denoising"},
    }
    if decoder_layers != encoder_layers:
        spec["decoder_layers"] = decoder_layers
    return Imported(spec, out, token_ids, needs=("mask", "pad", "eos"), notes=notes)


def _rope_base(config: Config) -> float:
    """RoPE's base from transformers 5's rope_parameters or 4's rope_theta; refuse scaling."""
    scaling = config.raw.get("rope_scaling")
    if scaling is not None:
        raise HFImportError(
            f"config.json: rope_scaling = {json.dumps(scaling)} is not supported: the spec's "
            "rope has no scaling"
        )
    parameters = config.raw.get("rope_parameters") or {}
    if not isinstance(parameters, dict):
        raise HFImportError(f"config.json: rope_parameters must be an object, got {parameters!r}")
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    if rope_type != "default":
        raise HFImportError(
            f"config.json: rope_parameters.rope_type = {json.dumps(rope_type)} is not supported: "
            "the spec's rope has no scaling (only 'default')"
        )
    unknown = sorted(set(parameters) - {"rope_type", "type", "rope_theta"})
    if unknown:
        raise HFImportError(
            f"config.json: rope_parameters.{unknown[0]} = {json.dumps(parameters[unknown[0]])} "
            "is not supported by the spec's rope"
        )
    base = parameters.get("rope_theta", config.raw.get("rope_theta", 10000.0))
    if isinstance(base, bool) or not isinstance(base, int | float) or base <= 1:
        raise HFImportError(f"config.json: rope_theta must be a number > 1, got {base!r}")
    return float(base)


def import_llama(config: Config, weights: Weights) -> Imported:
    if bool(config["attention_bias"]) != bool(config["mlp_bias"]):
        raise HFImportError(
            f"config.json: attention_bias = {json.dumps(config['attention_bias'])} with "
            f"mlp_bias = {json.dumps(config['mlp_bias'])} is not supported: the spec's bias "
            "switch covers attention and feed-forward together"
        )
    bias = bool(config["attention_bias"])
    base = _rope_base(config)
    activation = _activation(config, "hidden_act", gated=True)
    d_model = config.integer("hidden_size")
    heads = config.integer("num_attention_heads")
    kv_heads = config.integer("num_key_value_heads") if config["num_key_value_heads"] else heads
    head_dim = config.integer("head_dim") if config["head_dim"] else d_model // heads
    layers = config.integer("num_hidden_layers")
    out = from_hf(weights, LLAMA, {"decoder": layers}, ["bias"] if bias else [])
    tied = _output_head(weights, out, LLAMA.head, config)
    attention: dict[str, Any] = {"heads": heads}
    if kv_heads != heads:
        attention["kv_heads"] = kv_heads
    if head_dim * heads != d_model:
        attention["head_dim"] = head_dim
    token_ids, notes = _special_ids(config, ("pad", "bos", "eos", "unk"))
    spec = {
        "architecture": "decoder-only",
        "context_length": config.integer("max_position_embeddings"),
        "d_model": d_model,
        "layers": layers,
        "attention": attention,
        "feed_forward": {"d_ff": config.integer("intermediate_size"), "activation": activation},
        "norm": {"type": "rmsnorm", "position": "pre", "eps": config.number("rms_norm_eps")},
        "positions": {"type": "rope", "base": base},
        "bias": bias,
        "head": {"tied": tied},
        "dropout": {"attention": _dropout(config.number("attention_dropout"))},
        "objective": {"type": "causal-lm"},
    }
    return Imported(spec, out, token_ids, needs=(), notes=notes)


FAMILIES: dict[str, Callable[[Config, Weights], Imported]] = {
    "bert": import_bert,
    "gpt2": import_gpt2,
    "t5": import_t5,
    "bart": import_bart,
    "llama": import_llama,
}


# ----------------------------------------------------------------------------------------
# Special tokens and the tokenizer

# Texts for placeholder special tokens, in the naming each family's own tokenizer uses.
PLACEHOLDER_TEXTS: dict[str, dict[str, str]] = {
    "bert": {"pad": "[PAD]", "bos": "[CLS]", "eos": "[SEP]", "unk": "[UNK]", "mask": "[MASK]"},
    "gpt2": {
        "pad": "<pad>",
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
        "unk": "<unk>",
        "mask": "<mask>",
    },
}
DEFAULT_TEXTS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"}


@dataclass
class Vocabulary:
    section: dict[str, Any]  # the spec's vocabulary section
    tokenizer_json: str | None  # text of a tokenizer.json to write, if any
    ids: dict[str, int]  # role -> the id its token must have
    notes: list[str]


def _dedupe_roles(ids: dict[str, int], notes: list[str]) -> dict[str, int]:
    """One role per id, except that bos and eos may share; the first of ROLE_ORDER wins."""
    kept: dict[str, int] = {}
    for role in ROLE_ORDER:
        if role not in ids:
            continue
        owner = next((r for r, i in kept.items() if i == ids[role]), None)
        if owner is not None and {owner, role} != {"bos", "eos"}:
            notes.append(f"{role} shares id {ids[role]} with {owner}; the spec has no {role} token")
            continue
        kept[role] = ids[role]
    return kept


def _vocabulary_from_tokenizer(source: Source, imported: Imported, size: int) -> Vocabulary:
    from llmspec.tokenizer import MAX_TOKENIZER_BYTES

    assert source.tokenizer_json is not None
    try:
        json_text = read_text(source.tokenizer_json, MAX_TOKENIZER_BYTES, "tokenizer.json")
    except UnreadableFile as err:
        raise HFImportError(str(err)) from None
    try:
        tokenizer = read_tokenizer_text(json_text, source.tokenizer_json)
    except TokenizerMismatch as err:
        raise HFImportError(str(err)) from None
    notes: list[str] = []
    ids = dict(imported.token_ids)
    names = dict(source.token_names)
    for role, stand_in in (("bos", "cls"), ("eos", "sep")):  # BERT's [CLS] and [SEP]
        if role not in names and stand_in in names:
            names[role] = names[stand_in]
    for role in ROLE_ORDER:
        if role in ids or not names.get(role):
            continue
        token_id = tokenizer.token_to_id(names[role])
        if token_id is not None:
            ids[role] = token_id
    ids = _dedupe_roles(ids, notes)
    texts: dict[str, str] = {}
    for role, token_id in ids.items():
        text = tokenizer.id_to_token(token_id)
        if text is None:
            raise HFImportError(
                f"config.json: {role}_token_id {token_id} is not a token of {source.tokenizer_json}"
            )
        if token_id >= size:
            raise HFImportError(
                f"config.json: {role}_token_id {token_id} is beyond vocab_size {size}"
            )
        texts[role] = text
    missing = [role for role in imported.needs if role not in texts]
    if missing:
        raise HFImportError(
            f"{imported.spec['objective']['type']} needs a {missing[0]} token, but neither "
            "config.json nor the tokenizer files name one"
        )
    largest = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)
    if largest >= size:
        raise HFImportError(
            f"{source.tokenizer_json} has ids up to {largest}, beyond the model's vocab_size {size}"
        )
    sentinels = 0
    if imported.sentinels:
        while tokenizer.token_to_id(f"<extra_id_{sentinels}>") is not None:
            sentinels += 1
    section: dict[str, Any] = {
        "size": size,
        "tokenizer": {"type": "file", "path": TOKENIZER_FILE},
        "special_tokens": texts,
    }
    if sentinels:
        section["sentinels"] = sentinels
    return Vocabulary(section, json_text, ids, notes)


def _placeholder_vocabulary(family: str, imported: Imported, size: int) -> Vocabulary:
    """Byte-level vocabulary keeping the source's special ids (see the module docstring)."""
    notes: list[str] = []
    ids = _dedupe_roles(dict(imported.token_ids), notes)
    for role, token_id in ids.items():
        if token_id >= size:
            raise HFImportError(
                f"config.json: {role}_token_id = {token_id} is beyond vocab_size {size}"
            )
    names = PLACEHOLDER_TEXTS.get(family, DEFAULT_TEXTS)
    texts = {role: names[role] for role in ids}
    if "bos" in ids and ids.get("bos") == ids.get("eos"):
        texts["bos"] = texts["eos"]
    taken: dict[int, str] = {token_id: texts[role] for role, token_id in ids.items()}
    top = [i for i in range(size - 1, -1, -1) if i not in taken]
    unnamed = [role for role in imported.needs if role not in texts]
    room = len(top) - len(unnamed) - BYTE_LEVEL_BASE
    sentinels = max(0, min(T5_SENTINELS, room)) if imported.sentinels else 0
    for index in range(sentinels):
        taken[top[index]] = f"<extra_id_{index}>"
    top = top[sentinels:]
    for role in imported.needs:
        if role not in texts:  # e.g. BERT's and BART's mask: configs have no id for it
            texts[role] = names[role]
            ids[role] = top.pop(0)
            taken[ids[role]] = texts[role]
            notes.append(f"{role} has no id in config.json; the placeholder puts it at the top")
    free = sorted(i for i in range(size) if i not in taken)
    if len(free) < BYTE_LEVEL_BASE:
        raise HFImportError(
            f"config.json: vocab_size = {size} is too small for a byte-level tokenizer "
            f"({BYTE_LEVEL_BASE} bytes + {len(taken)} special tokens); put the model's "
            "tokenizer.json in the directory"
        )
    section: dict[str, Any] = {"size": size, "special_tokens": texts}
    if sentinels:
        section["sentinels"] = sentinels
    # The built-in byte-level layout: distinct specials first (pad, bos, eos, unk, mask), then
    # bytes, sentinels descending from the top. Use it when it puts every token where it is.
    order = [texts[r] for r in ("pad", "bos", "eos", "unk", "mask") if r in texts]
    distinct = list(dict.fromkeys(order))
    builtin = {i: text for i, text in enumerate(distinct)}
    builtin.update({size - 1 - k: f"<extra_id_{k}>" for k in range(sentinels)})
    if builtin == taken:
        section["tokenizer"] = {"type": "byte-level"}
        return Vocabulary(section, None, ids, notes)
    section["tokenizer"] = {"type": "file", "path": TOKENIZER_FILE}
    notes.append(
        "the source has no tokenizer.json: tokenizer.json is a byte-level placeholder that keeps "
        "the model's special-token ids"
    )
    return Vocabulary(section, _placeholder_tokenizer(taken, free, size), ids, notes)


def _placeholder_tokenizer(special: dict[int, str], free: list[int], size: int) -> str:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab: dict[str, int] = {text: token_id for token_id, text in special.items()}
    for symbol, token_id in zip(byte_alphabet(), free, strict=False):
        vocab[symbol] = token_id
    for token_id in free[BYTE_LEVEL_BASE:]:
        vocab[f"<unused_{token_id}>"] = token_id
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(text, special=True) for _, text in sorted(special.items())]
    )
    if tokenizer.get_vocab_size(with_added_tokens=True) != size:
        raise AssertionError("placeholder tokenizer does not cover the vocabulary")
    return str(tokenizer.to_str(pretty=True))


# ----------------------------------------------------------------------------------------
# Generation defaults


def _generation(config: dict[str, Any], has_eos: bool) -> tuple[dict[str, Any] | None, list[str]]:
    """The spec's generation section from generation_config.json, and what it left out."""
    if not has_eos:
        return None, []
    left_out: list[str] = []
    steps: list[dict[str, Any]] = []
    penalty = config.get("repetition_penalty")
    if penalty not in (None, 1, 1.0):
        steps.append({"type": "repetition_penalty", "penalty": penalty})
    ngram = config.get("no_repeat_ngram_size")
    if ngram:
        steps.append({"type": "no_repeat_ngram", "n": ngram})
    beams = config.get("num_beams") or 1
    if beams > 1:
        if config.get("do_sample"):
            left_out.append("do_sample with num_beams > 1 (beam sampling)")
        left_out.extend(f"{s['type']} with beam search" for s in steps)
        early = config.get("early_stopping")
        steps = [
            {
                "type": "beam_search",
                "beams": beams,
                "length_penalty": config.get("length_penalty", 1.0),
                "early_stopping": early is True,
            }
        ]
    elif config.get("do_sample"):
        temperature = config.get("temperature")
        if temperature not in (None, 1, 1.0):
            steps.append({"type": "temperature", "value": temperature})
        top_k = config.get("top_k", 50)  # transformers' default when sampling
        if top_k:
            steps.append({"type": "top_k", "k": top_k})
        for key, kind in (("top_p", "top_p"), ("typical_p", "typical")):
            value = config.get(key)
            if value not in (None, 1, 1.0):
                steps.append({"type": kind, "p": value})
        if config.get("min_p"):
            steps.append({"type": "min_p", "p": config["min_p"]})
        steps.append({"type": "sample"})
    else:
        steps.append({"type": "greedy"})
    for key in ("forced_bos_token_id", "forced_eos_token_id", "bad_words_ids", "min_length"):
        if config.get(key) not in (None, 0, []):
            left_out.append(f"{key} = {json.dumps(config[key])}")
    section: dict[str, Any] = {"chain": steps}
    if isinstance(config.get("max_new_tokens"), int) and config["max_new_tokens"] > 0:
        section["max_new_tokens"] = config["max_new_tokens"]
    return section, left_out


# ----------------------------------------------------------------------------------------
# Putting it together


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

    def attention(name: str) -> None:
        linear(f"{name}.q_proj", q_out, d)
        linear(f"{name}.k_proj", kv_out, d)
        linear(f"{name}.v_proj", kv_out, d)
        linear(f"{name}.o_proj", d, q_out)

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


def _check_tokenizer(spec: ModelSpec, vocabulary: Vocabulary) -> None:
    """The tokenizer the import writes must fit the spec and keep the source's special ids."""
    from tokenizers import Tokenizer

    if vocabulary.tokenizer_json is None:
        tokenizer = byte_level(spec)
    else:
        tokenizer = Tokenizer.from_str(vocabulary.tokenizer_json)
    try:
        ids = check_fits(tokenizer, spec)
    except TokenizerMismatch as err:
        raise HFImportError(str(err)) from None
    moved = {role: (ids[role], i) for role, i in vocabulary.ids.items() if ids.get(role) != i}
    if moved:
        role, (found, wanted) = next(iter(moved.items()))
        raise HFImportError(
            f"the tokenizer gives the {role} token id {found}, but config.json says {wanted}"
        )


def _decoder_start_role(start: object, vocabulary: Vocabulary) -> str:
    """The special-token role (pad, bos or eos) whose id is the config's decoder start."""
    for role in ("pad", "bos", "eos"):
        if vocabulary.ids.get(role) == start:
            return role
    raise HFImportError(
        f"decoder_start_token_id = {start} is not the pad, bos or eos token "
        f"(ids: {dict(sorted(vocabulary.ids.items()))}); llmspec starts decoding from one of those"
    )


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
    :func:`import_hf`; :func:`llmspec.importers.hf.tables.to_hf` is its inverse.

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
    architecture = _check_architectures(config)
    imported = _import_family(config, source.weights)
    size = config.integer("vocab_size")
    if source.tokenizer_json is not None:
        vocabulary = _vocabulary_from_tokenizer(source, imported, size)
    else:
        vocabulary = _placeholder_vocabulary(family, imported, size)
    has_eos = "eos" in vocabulary.section["special_tokens"]
    generation, left_out = _generation(source.generation, has_eos)
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
        data["vocabulary"]["decoder_start"] = _decoder_start_role(start, vocabulary)
    spec = _validated(data)
    _check_shapes(spec, imported.tensors, source.weights.where)
    _check_tokenizer(spec, vocabulary)
    written_by = (
        f", written by transformers {version}"
        if (version := source.config.get("transformers_version"))
        else ""
    )
    paragraphs = [
        f"{architecture} (model_type {family}{written_by}). Weights: weights.safetensors, "
        "in llmspec's naming.",
        *(f"Note: {note}." for note in [*imported.notes, *vocabulary.notes]),
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
    ``tokenizer.json``, atomically. Raises :class:`HFImportError` (one line, naming the file,
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
        SPEC_FILE: lambda p: p.write_text(text, encoding="utf-8"),
        WEIGHTS_FILE: lambda p: save_file(_unshared(tensors), str(p), metadata=metadata),
    }
    if tokenizer_json is not None:
        files[TOKENIZER_FILE] = lambda p: p.write_text(tokenizer_json, encoding="utf-8")
    _write_dir(target, files, force)
    return target
