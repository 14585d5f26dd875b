"""The BERT lineage's config translations: BERT, RoBERTa and XLM-RoBERTa (positions offset by
the pad id + 1, one token type), DistilBERT (no token types, no pooler, its own names)."""

from __future__ import annotations

import json

from llmspec.importers.hf.config import Config
from llmspec.importers.hf.mapping import HFImportError, Weights, from_hf
from llmspec.importers.hf.tables import (
    BERT,
    DISTILBERT,
    ROBERTA,
)
from llmspec.importers.hf.translation import (
    Imported,
    dropout,
    output_head,
    spec_activation,
    special_ids,
)


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
    tied = output_head(weights, out, BERT.head, config)
    max_positions = config.integer("max_position_embeddings")
    activation = spec_activation(config, "hidden_act", gated=False)
    token_ids, notes = special_ids(config, ("pad", "bos", "eos", "unk", "mask"))
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
            "hidden": dropout(config.number("hidden_dropout_prob")),
            "attention": dropout(config.number("attention_probs_dropout_prob")),
        },
        "objective": {"type": "masked-lm"},
    }
    return Imported(spec, out, token_ids, needs=("mask", "pad"), notes=notes)


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
    tied = output_head(weights, out, ROBERTA.head, config)
    activation = spec_activation(config, "hidden_act", gated=False)
    transform = "head_transform.dense.weight" in out
    if transform and activation != "gelu":
        raise HFImportError(
            f"config.json: hidden_act = {json.dumps(config['hidden_act'])} is not supported "
            f"with the MLM head: {config.family}'s lm_head applies gelu whatever hidden_act "
            "says, the spec's head transform the feed-forward's activation"
        )
    token_ids, notes = special_ids(config, ("pad", "bos", "eos", "unk", "mask"))
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
            "hidden": dropout(config.number("hidden_dropout_prob")),
            "attention": dropout(config.number("attention_probs_dropout_prob")),
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
    tied = output_head(weights, out, DISTILBERT.head, config)
    token_ids, notes = special_ids(config, ("pad", "bos", "eos", "unk", "mask"))
    spec = {
        "architecture": "encoder-only",
        "context_length": max_positions,
        "d_model": config.integer("dim"),
        "layers": layers,
        "attention": {"heads": config.integer("n_heads")},
        "feed_forward": {
            "d_ff": config.integer("hidden_dim"),
            "activation": spec_activation(config, "activation", gated=False),
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
            "hidden": dropout(config.number("dropout")),
            "attention": dropout(config.number("attention_dropout")),
        },
        "objective": {"type": "masked-lm"},
    }
    return Imported(spec, out, token_ids, needs=("mask", "pad"), notes=notes)
