"""Each family's config translation: config.json to spec sections, its weights by its table.

A family is a weight table (:mod:`llmspec.importers.hf.tables`) and a translation here that
reads the config (:class:`~llmspec.importers.hf.config.Config`), refuses what the spec cannot
express, imports the weights by the table (:func:`~llmspec.importers.hf.tables.from_hf`) and
returns every spec section but vocabulary and generation as an :class:`Imported`.
:data:`FAMILIES` maps a config's ``model_type`` to its translation. Adding a family is adding
its table, its defaults and architectures (:mod:`llmspec.importers.hf.config`) and its
translation here.

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
* Context length: BERT, GPT-2, BART and Llama take their position limit
  (``max_position_embeddings``, ``n_positions``); T5's relative positions have none, so it is
  ``n_positions`` where an old config gives it, else 512 (T5's pre-training length).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from llmspec.importers.hf.config import Config
from llmspec.importers.hf.rope import positions_from_hf
from llmspec.importers.hf.tables import (
    BART,
    BERT,
    DISTILBERT,
    GPT2,
    LLAMA,
    OPT,
    QWEN2,
    QWEN3,
    ROBERTA,
    T5,
    T5_GATED,
    HFImportError,
    Weights,
    WeightTable,
    from_hf,
)

__all__ = ["FAMILIES", "SUPPORTED_FAMILIES", "Imported"]

T5_CONTEXT = 512


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


@dataclass
class Imported:
    """One family's result before the vocabulary is settled."""

    spec: dict[str, Any]  # every section but vocabulary and generation
    tensors: dict[str, torch.Tensor]
    token_ids: dict[str, int]  # role -> id from config.json
    needs: tuple[str, ...]  # roles the objective needs
    sentinels: bool = False
    notes: list[str] = field(default_factory=list)
    # every id that ends generation (eos_token_id's list), set by the importer; the ones
    # besides eos become generation.stop_tokens
    stop_ids: list[int] = field(default_factory=list)


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
            if len(set(value)) > 1 and role != "eos":  # eos: the rest are stop tokens
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


def _rope_positions(config: Config) -> dict[str, Any]:
    """The spec's rope ``positions`` of a Llama-like config, read as transformers 5 reads it:
    its legacy ``rope_scaling`` (Llama 3.1's ``rope_type: llama3``) before ``rope_parameters``,
    ``rope_theta`` and ``partial_rotary_factor`` filled in from the top level where the dict
    lacks them. The scaling is :mod:`llmspec.importers.hf.rope`'s (linear, dynamic, llama3,
    yarn, longrope); what the spec cannot express is refused by name there. Llama-like models
    rotate every channel, so a partial rotary factor is refused."""
    raw = config.raw
    where = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
    parameters = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    if not isinstance(parameters, dict):
        raise HFImportError(f"config.json: {where} must be an object, got {json.dumps(parameters)}")
    parameters = dict(parameters)
    parameters.setdefault("rope_theta", raw.get("rope_theta", 10000.0))
    if raw.get("partial_rotary_factor") is not None:
        parameters.setdefault("partial_rotary_factor", raw["partial_rotary_factor"])
    base = parameters["rope_theta"]
    if isinstance(base, bool) or not isinstance(base, int | float) or base <= 1:
        raise HFImportError(f"config.json: rope_theta must be a number > 1, got {base!r}")
    positions = positions_from_hf(
        parameters, config.integer("max_position_embeddings"), where=where
    )
    if "partial" in positions:
        factor = json.dumps(parameters["partial_rotary_factor"])
        raise HFImportError(
            f"config.json: partial_rotary_factor = {factor} is not supported for "
            f"{config.family}: its attention rotates every channel"
        )
    return positions


def import_llama(config: Config, weights: Weights) -> Imported:
    if bool(config["attention_bias"]) != bool(config["mlp_bias"]):
        raise HFImportError(
            f"config.json: attention_bias = {json.dumps(config['attention_bias'])} with "
            f"mlp_bias = {json.dumps(config['mlp_bias'])} is not supported: the spec's bias "
            "switch covers attention and feed-forward together"
        )
    bias = bool(config["attention_bias"])
    positions = _rope_positions(config)
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
        "positions": positions,
        "bias": bias,
        "head": {"tied": tied},
        "dropout": {"attention": _dropout(config.number("attention_dropout"))},
        "objective": {"type": "causal-lm"},
    }
    return Imported(spec, out, token_ids, needs=(), notes=notes)


def import_roberta(config: Config, weights: Weights) -> Imported:
    """RoBERTa and XLM-RoBERTa: BERT's layers; positions count from ``pad_token_id + 1``
    (the spec's position offset) and the MLM head (``lm_head``) applies gelu itself."""
    config.refuse("is_decoder", lambda v: not v, "a causal RoBERTa is not an encoder-only model")
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
    offset = config.integer("pad_token_id", minimum=0) + 1  # RoBERTa's first position id
    table_rows = config.integer("max_position_embeddings")
    if table_rows <= offset:
        raise HFImportError(
            f"config.json: max_position_embeddings = {table_rows} leaves no position after "
            f"pad_token_id + 1 = {offset}, where {config.family}'s positions start"
        )
    out = from_hf(weights, ROBERTA, {"encoder": layers}, ["token_types"] if token_types else [])
    tied = _output_head(weights, out, ROBERTA.head, config)
    activation = _activation(config, "hidden_act", gated=False)
    transform = "head_transform.dense.weight" in out
    if transform and activation != "gelu":
        raise HFImportError(
            f"config.json: hidden_act = {json.dumps(config['hidden_act'])} is not supported "
            f"with the MLM head: {config.family}'s lm_head applies gelu whatever hidden_act "
            "says, the spec's head transform the feed-forward's activation"
        )
    token_ids, notes = _special_ids(config, ("pad", "bos", "eos", "unk", "mask"))
    spec = {
        "architecture": "encoder-only",
        "context_length": table_rows - offset,
        "d_model": config.integer("hidden_size"),
        "layers": layers,
        "attention": {"heads": config.integer("num_attention_heads")},
        "feed_forward": {"d_ff": config.integer("intermediate_size"), "activation": activation},
        "norm": {"type": "layernorm", "position": "post", "eps": config.number("layer_norm_eps")},
        "positions": {"type": "learned", "max_positions": table_rows - offset, "offset": offset},
        "bias": True,
        "embeddings": {"token_types": token_types, "norm": True},
        "head": {
            "tied": tied,
            "transform": transform,
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


DISTILBERT_EPS = 1e-12  # DistilBERT's LayerNorms; its config has no field for it


def import_distilbert(config: Config, weights: Weights) -> Imported:
    """DistilBERT: BERT without token types and pooler; its MLM head is ``vocab_transform``
    (with the config's activation), ``vocab_layer_norm`` and ``vocab_projector``."""
    config.refuse(
        "sinusoidal_pos_embds",
        lambda v: not v,
        "the spec's sinusoidal positions are not DistilBERT's (a fixed table from its "
        "position_embeddings); only learned positions are expressible",
    )
    layers = config.integer("n_layers")
    max_positions = config.integer("max_position_embeddings")
    out = from_hf(weights, DISTILBERT, {"encoder": layers})
    tied = _output_head(weights, out, DISTILBERT.head, config)
    token_ids, notes = _special_ids(config, ("pad", "bos", "eos", "unk", "mask"))
    spec = {
        "architecture": "encoder-only",
        "context_length": max_positions,
        "d_model": config.integer("dim"),
        "layers": layers,
        "attention": {"heads": config.integer("n_heads")},
        "feed_forward": {
            "d_ff": config.integer("hidden_dim"),
            "activation": _activation(config, "activation", gated=False),
        },
        "norm": {"type": "layernorm", "position": "post", "eps": DISTILBERT_EPS},
        "positions": {"type": "learned", "max_positions": max_positions},
        "bias": True,
        "embeddings": {"norm": True},
        "head": {
            "tied": tied,
            "transform": "head_transform.dense.weight" in out,
            "logits_bias": "learned" if "logits_bias" in out else "none",
        },
        "dropout": {
            "hidden": _dropout(config.number("dropout")),
            "attention": _dropout(config.number("attention_dropout")),
        },
        "objective": {"type": "masked-lm"},
    }
    return Imported(spec, out, token_ids, needs=("mask", "pad"), notes=notes)


OPT_POSITION_OFFSET = 2  # OPT's position table has two rows before position 0, as BART's


def import_opt(config: Config, weights: Weights) -> Imported:
    """OPT: GPT-2's shape with Linear layers, relu, learned positions offset by 2; pre-norm
    (``do_layer_norm_before``, with a final norm) or post-norm (OPT-350m, without)."""
    d_model = config.integer("hidden_size")
    projected = config["word_embed_proj_dim"]
    if projected is not None and projected != d_model:
        raise HFImportError(
            f"config.json: word_embed_proj_dim = {json.dumps(projected)} with hidden_size = "
            f"{d_model} is not supported: the spec has no project_in/project_out between "
            "narrower embeddings and the layers (OPT-350m's)"
        )
    config.refuse(
        "enable_bias",
        lambda v: v is not False,
        "the spec's bias switch covers linear layers and norms together",
    )
    config.refuse(
        "layer_norm_elementwise_affine",
        lambda v: v is not False,
        "the spec's LayerNorms have a weight and a bias",
    )
    pre_norm = config["do_layer_norm_before"] is not False
    config.refuse(
        "_remove_final_layer_norm",
        lambda v: not (v and pre_norm),
        "a pre-norm spec ends with a final norm",
    )
    layers = config.integer("num_hidden_layers")
    out = from_hf(weights, OPT, {"decoder": layers}, ["final_norm"] if pre_norm else [])
    tied = _output_head(weights, out, OPT.head, config)
    max_positions = config.integer("max_position_embeddings")
    token_ids, notes = _special_ids(config, ("pad", "bos", "eos", "unk"))
    spec = {
        "architecture": "decoder-only",
        "context_length": max_positions,
        "d_model": d_model,
        "layers": layers,
        "attention": {"heads": config.integer("num_attention_heads")},
        "feed_forward": {
            "d_ff": config.integer("ffn_dim"),
            "activation": _activation(config, "activation_function", gated=False),
        },
        # OPT's LayerNorms use torch's default eps; the config has no field for it
        "norm": {"type": "layernorm", "position": "pre" if pre_norm else "post", "eps": 1e-5},
        "positions": {
            "type": "learned",
            "max_positions": max_positions,
            "offset": OPT_POSITION_OFFSET,
        },
        "bias": True,
        "head": {"tied": tied},
        "dropout": {
            "hidden": _dropout(config.number("dropout")),
            "attention": _dropout(config.number("attention_dropout")),
        },
        "objective": {"type": "causal-lm"},
    }
    return Imported(spec, out, token_ids, needs=(), notes=notes)


def import_mistral(config: Config, weights: Weights) -> Imported:
    """Mistral: Llama's layers and names (never a bias) with a sliding attention window on
    every layer (the spec's ``attention.sliding_window``, the same count of keys, the query
    itself included); a window at least as long as the context never binds and is left out."""
    window = config["sliding_window"]
    context = config.integer("max_position_embeddings")
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1
    ):
        raise HFImportError(
            f"config.json: sliding_window must be null or an integer >= 1, got {window!r}"
        )
    if "layer_types" in config.raw:
        raise HFImportError(
            f"config.json: layer_types = {json.dumps(config.raw['layer_types'])} is not "
            "supported for mistral: MistralModel gives every layer the window (transformers "
            "reads alternating layers as Ministral)"
        )
    # Mistral has no bias switches; keys of that name in its config.json are ignored by
    # transformers, so they must not reach Llama's translation.
    raw = {k: v for k, v in config.raw.items() if k not in ("attention_bias", "mlp_bias")}
    imported = import_llama(Config(raw, config.family), weights)
    if window is not None and window < context:
        imported.spec["attention"]["sliding_window"] = window
    elif window is not None:
        imported.notes.append(
            f"sliding_window {window} is at least the context length {context}, so it never "
            "narrows attention; the spec has none"
        )
    return imported


def _full_attention_only(config: Config) -> None:
    """Refuse Qwen's optional sliding window (on the layers from ``max_window_layers``)."""
    config.refuse(
        "use_sliding_window",
        lambda v: not v,
        "sliding-window layers from max_window_layers on are not imported yet",
    )
    layer_types = config.raw.get("layer_types")
    if layer_types is not None and any(kind != "full_attention" for kind in layer_types):
        raise HFImportError(
            f"config.json: layer_types = {json.dumps(layer_types)} is not supported: only "
            '"full_attention" layers are imported yet'
        )


def _qwen(config: Config, weights: Weights, table: WeightTable, knobs: dict[str, Any]) -> Imported:
    """Qwen2's and Qwen3's shared translation: Llama's layers without the bias switches, the
    family's attention ``knobs`` on top."""
    _full_attention_only(config)
    positions = _rope_positions(config)
    d_model = config.integer("hidden_size")
    heads = config.integer("num_attention_heads")
    kv_heads = config.integer("num_key_value_heads") if config["num_key_value_heads"] else heads
    head_dim = config.integer("head_dim") if config["head_dim"] else d_model // heads
    layers = config.integer("num_hidden_layers")
    out = from_hf(weights, table, {"decoder": layers})
    tied = _output_head(weights, out, table.head, config)
    attention: dict[str, Any] = {"heads": heads, **knobs}
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
        "feed_forward": {
            "d_ff": config.integer("intermediate_size"),
            "activation": _activation(config, "hidden_act", gated=True),
        },
        "norm": {"type": "rmsnorm", "position": "pre", "eps": config.number("rms_norm_eps")},
        "positions": positions,
        "bias": False,
        "head": {"tied": tied},
        "dropout": {"attention": _dropout(config.number("attention_dropout"))},
        "objective": {"type": "causal-lm"},
    }
    return Imported(spec, out, token_ids, needs=(), notes=notes)


def import_qwen2(config: Config, weights: Weights) -> Imported:
    """Qwen2 and Qwen2.5: Llama's layers with biases on q, k and v only (the spec's
    ``attention.qkv_bias``). Its optional sliding window (``use_sliding_window``) is refused by
    name; released checkpoints leave it off."""
    return _qwen(config, weights, QWEN2, {"qkv_bias": True})


def import_qwen3(config: Config, weights: Weights) -> Imported:
    """Qwen3: Llama's layers (``head_dim`` explicit) with an RMSNorm over each head's queries
    and keys before rotary (the spec's ``attention.qk_norm``, with the model's eps). Its
    ``attention_bias`` biases q, k, v and o_proj but not the feed-forward, which the spec
    cannot say; the sliding window is refused as Qwen2's."""
    config.refuse(
        "attention_bias",
        lambda v: not v,
        "Qwen3 then biases q, k, v and o_proj but not the feed-forward; the spec's bias "
        "switch covers attention and feed-forward together",
    )
    return _qwen(config, weights, QWEN3, {"qk_norm": "rmsnorm"})


def import_mt5(config: Config, weights: Weights) -> Imported:
    """mT5: T5 v1.1's layers and names; transformers' MT5 never rescales the output (its
    config forces tie_word_embeddings, the weights decide the tie)."""
    return import_t5(Config({**config.raw, "scale_decoder_outputs": False}, config.family), weights)


# Families translated in modules of their own, which use this module's helpers (so imported here,
# after them)
from llmspec.importers.hf.gemma import import_gemma, import_gemma2, import_gemma3  # noqa: E402
from llmspec.importers.hf.neox_phi import import_gpt_neox, import_phi3  # noqa: E402

FAMILIES: dict[str, Callable[[Config, Weights], Imported]] = {
    "bert": import_bert,
    "gpt2": import_gpt2,
    "t5": import_t5,
    "bart": import_bart,
    "llama": import_llama,
    "roberta": import_roberta,
    "xlm-roberta": import_roberta,
    "distilbert": import_distilbert,
    "opt": import_opt,
    "mistral": import_mistral,
    "mt5": import_mt5,
    "qwen2": import_qwen2,
    "qwen3": import_qwen3,
    "gemma": import_gemma,
    "gemma2": import_gemma2,
    "gemma3_text": import_gemma3,
    "gpt_neox": import_gpt_neox,
    "phi3": import_phi3,
}
SUPPORTED_FAMILIES = tuple(FAMILIES)  # the model_type values llmspec imports
