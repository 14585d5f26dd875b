"""Each family's config translation: config.json to spec sections, its weights by its table.

A family is a weight table (:mod:`llmspec.importers.hf.tables`) and a translation here that
reads the config (:class:`~llmspec.importers.hf.config.Config`), refuses what the spec cannot
express, imports the weights by the table (:func:`~llmspec.importers.hf.mapping.from_hf`) and
returns every spec section but vocabulary and generation as an :class:`Imported`.
:data:`FAMILIES` maps a config's ``model_type`` to its translation. Adding a family is adding
its table, its defaults and architectures (:mod:`llmspec.importers.hf.config`) and its
translation here or in its lineage's module (:mod:`~llmspec.importers.hf.bert_like`,
:mod:`~llmspec.importers.hf.llama_like`, :mod:`~llmspec.importers.hf.gemma`,
:mod:`~llmspec.importers.hf.neox_phi`), with the helpers of
:mod:`~llmspec.importers.hf.translation`.

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
from collections.abc import Callable
from typing import Any

from llmspec.importers.hf.bert_like import import_bert, import_distilbert, import_roberta
from llmspec.importers.hf.config import Config
from llmspec.importers.hf.gemma import import_gemma, import_gemma2, import_gemma3
from llmspec.importers.hf.llama_like import import_llama, import_mistral, import_qwen2, import_qwen3
from llmspec.importers.hf.mapping import HFImportError, Weights, from_hf
from llmspec.importers.hf.neox_phi import import_gpt_neox, import_phi3
from llmspec.importers.hf.tables import (
    BART,
    GPT2,
    OPT,
    T5,
    T5_GATED,
)
from llmspec.importers.hf.translation import (
    GATED_ACTIVATIONS,
    PLAIN_ACTIVATIONS,
    Imported,
    dropout,
    output_head,
    spec_activation,
    special_ids,
)

__all__ = ["FAMILIES", "SUPPORTED_FAMILIES", "Imported"]

T5_CONTEXT = 512


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
    tied = output_head(weights, out, GPT2.head, config)
    positions = config.integer("n_positions")
    token_ids, notes = special_ids(config, ("pad", "bos", "eos", "unk"))
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
            "activation": spec_activation(config, "activation_function", gated=False),
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
            "hidden": dropout(config.number("resid_pdrop")),
            "attention": dropout(config.number("attn_pdrop")),
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
    tied = output_head(weights, out, names.head, config, follow_weights=True)
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
    token_ids, notes = special_ids(config, ("pad", "bos", "eos", "unk"))
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
        "dropout": {"hidden": dropout(config.number("dropout_rate"))},
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
    tied = output_head(weights, out, BART.head, config)
    token_ids, notes = special_ids(config, ("pad", "bos", "eos", "unk", "mask"))
    spec: dict[str, Any] = {
        "architecture": "encoder-decoder",
        "context_length": max_positions,
        "d_model": d_model,
        "layers": encoder_layers,
        "attention": {"heads": config.integer("encoder_attention_heads")},
        "feed_forward": {
            "d_ff": config.integer("encoder_ffn_dim"),
            "activation": spec_activation(config, "activation_function", gated=False),
        },
        # BART's LayerNorms use torch's default eps; the config has no field for it
        "norm": {"type": "layernorm", "position": "post", "eps": 1e-5},
        "positions": {"type": "learned", "max_positions": max_positions, "offset": 2},
        "bias": True,
        "embeddings": {"norm": True, "scale": bool(config["scale_embedding"])},
        "head": {"tied": tied, "logits_bias": "buffer" if "logits_bias" in out else "none"},
        "dropout": {
            "hidden": dropout(config.number("dropout")),
            "attention": dropout(config.number("attention_dropout")),
        },
        "objective": {"type": "denoising"},
    }
    if decoder_layers != encoder_layers:
        spec["decoder_layers"] = decoder_layers
    return Imported(spec, out, token_ids, needs=("mask", "pad", "eos"), notes=notes)


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
    tied = output_head(weights, out, OPT.head, config)
    max_positions = config.integer("max_position_embeddings")
    token_ids, notes = special_ids(config, ("pad", "bos", "eos", "unk"))
    spec = {
        "architecture": "decoder-only",
        "context_length": max_positions,
        "d_model": d_model,
        "layers": layers,
        "attention": {"heads": config.integer("num_attention_heads")},
        "feed_forward": {
            "d_ff": config.integer("ffn_dim"),
            "activation": spec_activation(config, "activation_function", gated=False),
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
            "hidden": dropout(config.number("dropout")),
            "attention": dropout(config.number("attention_dropout")),
        },
        "objective": {"type": "causal-lm"},
    }
    return Imported(spec, out, token_ids, needs=(), notes=notes)


def import_mt5(config: Config, weights: Weights) -> Imported:
    """mT5: T5 v1.1's layers and names; transformers' MT5 never rescales the output (its
    config forces tie_word_embeddings, the weights decide the tie)."""
    return import_t5(Config({**config.raw, "scale_decoder_outputs": False}, config.family), weights)


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
