# The tables keep one mapping a line, however long its names.
# ruff: noqa: E501
"""The imported Hugging Face families' weight names as tables, one per family.

What a table is (its names, rules, transforms, parts) and the two directions that read one,
:func:`~llmspec.importers.hf.mapping.from_hf` and :func:`~llmspec.importers.hf.mapping.to_hf`,
are in :mod:`llmspec.importers.hf.mapping`. Adding a family is adding its table here (and to
:data:`TABLES`) and its config translation in :mod:`llmspec.importers.hf.families` (with its
defaults in :mod:`llmspec.importers.hf.config`). GPT-NeoX's and Phi-3's tables depend on the
config's head counts (their fused projections), so they are functions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

import torch

from llmspec.importers.hf.mapping import (
    CONV1D,
    FUSED_QKV,
    FUSED_QKV_CONV1D,
    ROW,
    HFImportError,
    Rule,
    Transform,
    WeightTable,
    joined,
)

__all__ = [
    "BART",
    "BERT",
    "DISTILBERT",
    "GEMMA",
    "GEMMA2",
    "GEMMA3",
    "GPT2",
    "LLAMA",
    "MISTRAL",
    "MT5",
    "OPT",
    "QWEN2",
    "QWEN3",
    "ROBERTA",
    "T5",
    "T5_GATED",
    "TABLES",
    "XLM_ROBERTA",
    "gpt_neox_table",
    "per_head_fused_qkv",
    "phi3_table",
    "row_split",
]

# ----------------------------------------------------------------------------------------
# The tables

QKV = ("q_proj", "k_proj", "v_proj")

GPT2 = WeightTable(
    family="gpt2",
    prefix="transformer.",
    unprefixed=("lm_head.",),
    names={
        "wte.weight": "embed_tokens.weight",
        "wpe.weight": "decoder.embed_positions.weight",
        "h.{}.ln_1.weight": "decoder.layers.{}.self_attn_norm.weight",
        "h.{}.ln_1.bias": "decoder.layers.{}.self_attn_norm.bias",
        "h.{}.attn.c_attn.weight": Rule(
            tuple(f"decoder.layers.{{}}.self_attn.{p}.weight" for p in QKV), FUSED_QKV_CONV1D
        ),
        "h.{}.attn.c_attn.bias": Rule(
            tuple(f"decoder.layers.{{}}.self_attn.{p}.bias" for p in QKV), FUSED_QKV
        ),
        "h.{}.attn.c_proj.weight": Rule("decoder.layers.{}.self_attn.o_proj.weight", CONV1D),
        "h.{}.attn.c_proj.bias": "decoder.layers.{}.self_attn.o_proj.bias",
        "h.{}.ln_2.weight": "decoder.layers.{}.mlp_norm.weight",
        "h.{}.ln_2.bias": "decoder.layers.{}.mlp_norm.bias",
        "h.{}.mlp.c_fc.weight": Rule("decoder.layers.{}.mlp.up_proj.weight", CONV1D),
        "h.{}.mlp.c_fc.bias": "decoder.layers.{}.mlp.up_proj.bias",
        "h.{}.mlp.c_proj.weight": Rule("decoder.layers.{}.mlp.down_proj.weight", CONV1D),
        "h.{}.mlp.c_proj.bias": "decoder.layers.{}.mlp.down_proj.bias",
        "ln_f.weight": "decoder.final_norm.weight",
        "ln_f.bias": "decoder.final_norm.bias",
    },
    head="lm_head.weight",
    unused={
        "h.{}.attn.bias": "the causal mask, a buffer of older transformers",
        "h.{}.attn.masked_bias": "the masked score, a buffer of older transformers",
    },
)


BERT = WeightTable(
    family="bert",
    prefix="bert.",
    unprefixed=("cls.",),
    names={
        "embeddings.word_embeddings.weight": "embed_tokens.weight",
        "embeddings.position_embeddings.weight": "encoder.embed_positions.weight",
        "embeddings.token_type_embeddings.weight": Rule(
            "encoder.embed_token_types.weight", part="token_types"
        ),
        "embeddings.LayerNorm.weight": "encoder.embed_norm.weight",
        "embeddings.LayerNorm.bias": "encoder.embed_norm.bias",
        "encoder.layer.{}.attention.self.query.weight": "encoder.layers.{}.self_attn.q_proj.weight",
        "encoder.layer.{}.attention.self.query.bias": "encoder.layers.{}.self_attn.q_proj.bias",
        "encoder.layer.{}.attention.self.key.weight": "encoder.layers.{}.self_attn.k_proj.weight",
        "encoder.layer.{}.attention.self.key.bias": "encoder.layers.{}.self_attn.k_proj.bias",
        "encoder.layer.{}.attention.self.value.weight": "encoder.layers.{}.self_attn.v_proj.weight",
        "encoder.layer.{}.attention.self.value.bias": "encoder.layers.{}.self_attn.v_proj.bias",
        "encoder.layer.{}.attention.output.dense.weight": "encoder.layers.{}.self_attn.o_proj.weight",
        "encoder.layer.{}.attention.output.dense.bias": "encoder.layers.{}.self_attn.o_proj.bias",
        "encoder.layer.{}.attention.output.LayerNorm.weight": (
            "encoder.layers.{}.self_attn_norm.weight"
        ),
        "encoder.layer.{}.attention.output.LayerNorm.bias": "encoder.layers.{}.self_attn_norm.bias",
        "encoder.layer.{}.intermediate.dense.weight": "encoder.layers.{}.mlp.up_proj.weight",
        "encoder.layer.{}.intermediate.dense.bias": "encoder.layers.{}.mlp.up_proj.bias",
        "encoder.layer.{}.output.dense.weight": "encoder.layers.{}.mlp.down_proj.weight",
        "encoder.layer.{}.output.dense.bias": "encoder.layers.{}.mlp.down_proj.bias",
        "encoder.layer.{}.output.LayerNorm.weight": "encoder.layers.{}.mlp_norm.weight",
        "encoder.layer.{}.output.LayerNorm.bias": "encoder.layers.{}.mlp_norm.bias",
        "pooler.dense.weight": Rule("pooler.dense.weight", part="pooler"),
        "pooler.dense.bias": Rule("pooler.dense.bias", part="pooler"),
        "cls.predictions.transform.dense.weight": Rule(
            "head_transform.dense.weight", part="transform"
        ),
        "cls.predictions.transform.dense.bias": Rule("head_transform.dense.bias", part="transform"),
        "cls.predictions.transform.LayerNorm.weight": Rule(
            "head_transform.norm.weight", part="transform"
        ),
        "cls.predictions.transform.LayerNorm.bias": Rule(
            "head_transform.norm.bias", part="transform"
        ),
        "cls.predictions.bias": Rule("logits_bias", part="logits_bias"),
    },
    optional=("pooler", "transform", "logits_bias"),
    head="cls.predictions.decoder.weight",
    ties={"cls.predictions.decoder.bias": "cls.predictions.bias"},
    unused={
        "embeddings.position_ids": "position numbers, a buffer of older transformers",
        "embeddings.token_type_ids": "zero token types, a buffer of older transformers",
    },
)


T5 = WeightTable(  # v1.0: relu feed-forward; v1.1 is T5_GATED
    family="t5",
    names={
        "shared.weight": "embed_tokens.weight",
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (
            "encoder.relative_bias.weight"
        ),
        "encoder.block.{}.layer.0.SelfAttention.q.weight": "encoder.layers.{}.self_attn.q_proj.weight",
        "encoder.block.{}.layer.0.SelfAttention.k.weight": "encoder.layers.{}.self_attn.k_proj.weight",
        "encoder.block.{}.layer.0.SelfAttention.v.weight": "encoder.layers.{}.self_attn.v_proj.weight",
        "encoder.block.{}.layer.0.SelfAttention.o.weight": "encoder.layers.{}.self_attn.o_proj.weight",
        "encoder.block.{}.layer.0.layer_norm.weight": "encoder.layers.{}.self_attn_norm.weight",
        "encoder.block.{}.layer.1.DenseReluDense.wi.weight": "encoder.layers.{}.mlp.up_proj.weight",
        "encoder.block.{}.layer.1.DenseReluDense.wo.weight": "encoder.layers.{}.mlp.down_proj.weight",
        "encoder.block.{}.layer.1.layer_norm.weight": "encoder.layers.{}.mlp_norm.weight",
        "encoder.final_layer_norm.weight": "encoder.final_norm.weight",
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (
            "decoder.relative_bias.weight"
        ),
        "decoder.block.{}.layer.0.SelfAttention.q.weight": "decoder.layers.{}.self_attn.q_proj.weight",
        "decoder.block.{}.layer.0.SelfAttention.k.weight": "decoder.layers.{}.self_attn.k_proj.weight",
        "decoder.block.{}.layer.0.SelfAttention.v.weight": "decoder.layers.{}.self_attn.v_proj.weight",
        "decoder.block.{}.layer.0.SelfAttention.o.weight": "decoder.layers.{}.self_attn.o_proj.weight",
        "decoder.block.{}.layer.0.layer_norm.weight": "decoder.layers.{}.self_attn_norm.weight",
        "decoder.block.{}.layer.1.EncDecAttention.q.weight": "decoder.layers.{}.cross_attn.q_proj.weight",
        "decoder.block.{}.layer.1.EncDecAttention.k.weight": "decoder.layers.{}.cross_attn.k_proj.weight",
        "decoder.block.{}.layer.1.EncDecAttention.v.weight": "decoder.layers.{}.cross_attn.v_proj.weight",
        "decoder.block.{}.layer.1.EncDecAttention.o.weight": "decoder.layers.{}.cross_attn.o_proj.weight",
        "decoder.block.{}.layer.1.layer_norm.weight": "decoder.layers.{}.cross_attn_norm.weight",
        "decoder.block.{}.layer.2.DenseReluDense.wi.weight": "decoder.layers.{}.mlp.up_proj.weight",
        "decoder.block.{}.layer.2.DenseReluDense.wo.weight": "decoder.layers.{}.mlp.down_proj.weight",
        "decoder.block.{}.layer.2.layer_norm.weight": "decoder.layers.{}.mlp_norm.weight",
        "decoder.final_layer_norm.weight": "decoder.final_norm.weight",
    },
    head="lm_head.weight",
    ties={
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    },
    unused={
        "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight": (
            "cross-attention has no relative bias; transformers ignores it in old checkpoints"
        ),
    },
)


def _gated(names: Mapping[str, str | Rule]) -> dict[str, str | Rule]:
    """T5 v1.1's names: v1.0's with the gated feed-forward's wi_0 (gate) and wi_1 (up) where
    v1.0 has wi."""
    gated: dict[str, str | Rule] = {}
    for name, ours in names.items():
        if name.endswith(".DenseReluDense.wi.weight") and isinstance(ours, str):
            gated[name.replace(".wi.", ".wi_0.")] = ours.replace(".up_proj.", ".gate_proj.")
            gated[name.replace(".wi.", ".wi_1.")] = ours
        else:
            gated[name] = ours
    return gated


T5_GATED = replace(T5, names=_gated(T5.names))

BART = WeightTable(
    family="bart",
    prefix="model.",
    unprefixed=("lm_head.", "final_logits_bias"),
    names={
        "shared.weight": "embed_tokens.weight",
        "encoder.embed_positions.weight": "encoder.embed_positions.weight",
        "encoder.layernorm_embedding.weight": "encoder.embed_norm.weight",
        "encoder.layernorm_embedding.bias": "encoder.embed_norm.bias",
        "encoder.layers.{}.self_attn.q_proj.weight": "encoder.layers.{}.self_attn.q_proj.weight",
        "encoder.layers.{}.self_attn.q_proj.bias": "encoder.layers.{}.self_attn.q_proj.bias",
        "encoder.layers.{}.self_attn.k_proj.weight": "encoder.layers.{}.self_attn.k_proj.weight",
        "encoder.layers.{}.self_attn.k_proj.bias": "encoder.layers.{}.self_attn.k_proj.bias",
        "encoder.layers.{}.self_attn.v_proj.weight": "encoder.layers.{}.self_attn.v_proj.weight",
        "encoder.layers.{}.self_attn.v_proj.bias": "encoder.layers.{}.self_attn.v_proj.bias",
        "encoder.layers.{}.self_attn.out_proj.weight": "encoder.layers.{}.self_attn.o_proj.weight",
        "encoder.layers.{}.self_attn.out_proj.bias": "encoder.layers.{}.self_attn.o_proj.bias",
        "encoder.layers.{}.self_attn_layer_norm.weight": "encoder.layers.{}.self_attn_norm.weight",
        "encoder.layers.{}.self_attn_layer_norm.bias": "encoder.layers.{}.self_attn_norm.bias",
        "encoder.layers.{}.fc1.weight": "encoder.layers.{}.mlp.up_proj.weight",
        "encoder.layers.{}.fc1.bias": "encoder.layers.{}.mlp.up_proj.bias",
        "encoder.layers.{}.fc2.weight": "encoder.layers.{}.mlp.down_proj.weight",
        "encoder.layers.{}.fc2.bias": "encoder.layers.{}.mlp.down_proj.bias",
        "encoder.layers.{}.final_layer_norm.weight": "encoder.layers.{}.mlp_norm.weight",
        "encoder.layers.{}.final_layer_norm.bias": "encoder.layers.{}.mlp_norm.bias",
        "decoder.embed_positions.weight": "decoder.embed_positions.weight",
        "decoder.layernorm_embedding.weight": "decoder.embed_norm.weight",
        "decoder.layernorm_embedding.bias": "decoder.embed_norm.bias",
        "decoder.layers.{}.self_attn.q_proj.weight": "decoder.layers.{}.self_attn.q_proj.weight",
        "decoder.layers.{}.self_attn.q_proj.bias": "decoder.layers.{}.self_attn.q_proj.bias",
        "decoder.layers.{}.self_attn.k_proj.weight": "decoder.layers.{}.self_attn.k_proj.weight",
        "decoder.layers.{}.self_attn.k_proj.bias": "decoder.layers.{}.self_attn.k_proj.bias",
        "decoder.layers.{}.self_attn.v_proj.weight": "decoder.layers.{}.self_attn.v_proj.weight",
        "decoder.layers.{}.self_attn.v_proj.bias": "decoder.layers.{}.self_attn.v_proj.bias",
        "decoder.layers.{}.self_attn.out_proj.weight": "decoder.layers.{}.self_attn.o_proj.weight",
        "decoder.layers.{}.self_attn.out_proj.bias": "decoder.layers.{}.self_attn.o_proj.bias",
        "decoder.layers.{}.self_attn_layer_norm.weight": "decoder.layers.{}.self_attn_norm.weight",
        "decoder.layers.{}.self_attn_layer_norm.bias": "decoder.layers.{}.self_attn_norm.bias",
        "decoder.layers.{}.encoder_attn.q_proj.weight": "decoder.layers.{}.cross_attn.q_proj.weight",
        "decoder.layers.{}.encoder_attn.q_proj.bias": "decoder.layers.{}.cross_attn.q_proj.bias",
        "decoder.layers.{}.encoder_attn.k_proj.weight": "decoder.layers.{}.cross_attn.k_proj.weight",
        "decoder.layers.{}.encoder_attn.k_proj.bias": "decoder.layers.{}.cross_attn.k_proj.bias",
        "decoder.layers.{}.encoder_attn.v_proj.weight": "decoder.layers.{}.cross_attn.v_proj.weight",
        "decoder.layers.{}.encoder_attn.v_proj.bias": "decoder.layers.{}.cross_attn.v_proj.bias",
        "decoder.layers.{}.encoder_attn.out_proj.weight": "decoder.layers.{}.cross_attn.o_proj.weight",
        "decoder.layers.{}.encoder_attn.out_proj.bias": "decoder.layers.{}.cross_attn.o_proj.bias",
        "decoder.layers.{}.encoder_attn_layer_norm.weight": "decoder.layers.{}.cross_attn_norm.weight",
        "decoder.layers.{}.encoder_attn_layer_norm.bias": "decoder.layers.{}.cross_attn_norm.bias",
        "decoder.layers.{}.fc1.weight": "decoder.layers.{}.mlp.up_proj.weight",
        "decoder.layers.{}.fc1.bias": "decoder.layers.{}.mlp.up_proj.bias",
        "decoder.layers.{}.fc2.weight": "decoder.layers.{}.mlp.down_proj.weight",
        "decoder.layers.{}.fc2.bias": "decoder.layers.{}.mlp.down_proj.bias",
        "decoder.layers.{}.final_layer_norm.weight": "decoder.layers.{}.mlp_norm.weight",
        "decoder.layers.{}.final_layer_norm.bias": "decoder.layers.{}.mlp_norm.bias",
        "final_logits_bias": Rule("logits_bias", ROW, part="logits_bias"),
    },
    optional=("logits_bias",),
    head="lm_head.weight",
    ties={
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    },
    unused={
        "encoder.version": "fairseq's format version, ignored by transformers",
        "decoder.version": "fairseq's format version, ignored by transformers",
    },
)

LLAMA = WeightTable(  # the biases are there when the config's attention_bias is
    family="llama",
    prefix="model.",
    unprefixed=("lm_head.",),
    names={
        "embed_tokens.weight": "embed_tokens.weight",
        "layers.{}.input_layernorm.weight": "decoder.layers.{}.self_attn_norm.weight",
        "layers.{}.self_attn.q_proj.weight": "decoder.layers.{}.self_attn.q_proj.weight",
        "layers.{}.self_attn.q_proj.bias": Rule(
            "decoder.layers.{}.self_attn.q_proj.bias", part="bias"
        ),
        "layers.{}.self_attn.k_proj.weight": "decoder.layers.{}.self_attn.k_proj.weight",
        "layers.{}.self_attn.k_proj.bias": Rule(
            "decoder.layers.{}.self_attn.k_proj.bias", part="bias"
        ),
        "layers.{}.self_attn.v_proj.weight": "decoder.layers.{}.self_attn.v_proj.weight",
        "layers.{}.self_attn.v_proj.bias": Rule(
            "decoder.layers.{}.self_attn.v_proj.bias", part="bias"
        ),
        "layers.{}.self_attn.o_proj.weight": "decoder.layers.{}.self_attn.o_proj.weight",
        "layers.{}.self_attn.o_proj.bias": Rule(
            "decoder.layers.{}.self_attn.o_proj.bias", part="bias"
        ),
        "layers.{}.post_attention_layernorm.weight": "decoder.layers.{}.mlp_norm.weight",
        "layers.{}.mlp.gate_proj.weight": "decoder.layers.{}.mlp.gate_proj.weight",
        "layers.{}.mlp.gate_proj.bias": Rule("decoder.layers.{}.mlp.gate_proj.bias", part="bias"),
        "layers.{}.mlp.up_proj.weight": "decoder.layers.{}.mlp.up_proj.weight",
        "layers.{}.mlp.up_proj.bias": Rule("decoder.layers.{}.mlp.up_proj.bias", part="bias"),
        "layers.{}.mlp.down_proj.weight": "decoder.layers.{}.mlp.down_proj.weight",
        "layers.{}.mlp.down_proj.bias": Rule("decoder.layers.{}.mlp.down_proj.bias", part="bias"),
        "norm.weight": "decoder.final_norm.weight",
    },
    head="lm_head.weight",
    unused={
        "layers.{}.self_attn.rotary_emb.inv_freq": "RoPE's frequencies, from the config",
    },
)


def _bert_body() -> dict[str, str | Rule]:
    """BERT's embeddings, layers and pooler: RoBERTa and XLM-RoBERTa name them alike."""
    return {name: rule for name, rule in BERT.names.items() if not name.startswith("cls.")}


ROBERTA = WeightTable(  # XLM-RoBERTa's are the same names (XLM_ROBERTA)
    family="roberta",
    prefix="roberta.",
    unprefixed=("lm_head.",),
    names={
        **_bert_body(),
        "lm_head.dense.weight": Rule("head_transform.dense.weight", part="transform"),
        "lm_head.dense.bias": Rule("head_transform.dense.bias", part="transform"),
        "lm_head.layer_norm.weight": Rule("head_transform.norm.weight", part="transform"),
        "lm_head.layer_norm.bias": Rule("head_transform.norm.bias", part="transform"),
        "lm_head.bias": Rule("logits_bias", part="logits_bias"),
    },
    optional=("pooler", "transform", "logits_bias"),
    head="lm_head.decoder.weight",
    ties={"lm_head.decoder.bias": "lm_head.bias"},
    unused={
        "embeddings.position_ids": "position numbers, a buffer of older transformers",
        "embeddings.token_type_ids": "zero token types, a buffer of older transformers",
    },
)
XLM_ROBERTA = replace(ROBERTA, family="xlm-roberta")

DISTILBERT = WeightTable(  # BERT without token types and pooler, with its own names
    family="distilbert",
    prefix="distilbert.",
    unprefixed=("vocab_",),
    names={
        "embeddings.word_embeddings.weight": "embed_tokens.weight",
        "embeddings.position_embeddings.weight": "encoder.embed_positions.weight",
        "embeddings.LayerNorm.weight": "encoder.embed_norm.weight",
        "embeddings.LayerNorm.bias": "encoder.embed_norm.bias",
        "transformer.layer.{}.attention.q_lin.weight": "encoder.layers.{}.self_attn.q_proj.weight",
        "transformer.layer.{}.attention.q_lin.bias": "encoder.layers.{}.self_attn.q_proj.bias",
        "transformer.layer.{}.attention.k_lin.weight": "encoder.layers.{}.self_attn.k_proj.weight",
        "transformer.layer.{}.attention.k_lin.bias": "encoder.layers.{}.self_attn.k_proj.bias",
        "transformer.layer.{}.attention.v_lin.weight": "encoder.layers.{}.self_attn.v_proj.weight",
        "transformer.layer.{}.attention.v_lin.bias": "encoder.layers.{}.self_attn.v_proj.bias",
        "transformer.layer.{}.attention.out_lin.weight": "encoder.layers.{}.self_attn.o_proj.weight",
        "transformer.layer.{}.attention.out_lin.bias": "encoder.layers.{}.self_attn.o_proj.bias",
        "transformer.layer.{}.sa_layer_norm.weight": "encoder.layers.{}.self_attn_norm.weight",
        "transformer.layer.{}.sa_layer_norm.bias": "encoder.layers.{}.self_attn_norm.bias",
        "transformer.layer.{}.ffn.lin1.weight": "encoder.layers.{}.mlp.up_proj.weight",
        "transformer.layer.{}.ffn.lin1.bias": "encoder.layers.{}.mlp.up_proj.bias",
        "transformer.layer.{}.ffn.lin2.weight": "encoder.layers.{}.mlp.down_proj.weight",
        "transformer.layer.{}.ffn.lin2.bias": "encoder.layers.{}.mlp.down_proj.bias",
        "transformer.layer.{}.output_layer_norm.weight": "encoder.layers.{}.mlp_norm.weight",
        "transformer.layer.{}.output_layer_norm.bias": "encoder.layers.{}.mlp_norm.bias",
        "vocab_transform.weight": Rule("head_transform.dense.weight", part="transform"),
        "vocab_transform.bias": Rule("head_transform.dense.bias", part="transform"),
        "vocab_layer_norm.weight": Rule("head_transform.norm.weight", part="transform"),
        "vocab_layer_norm.bias": Rule("head_transform.norm.bias", part="transform"),
        "vocab_projector.bias": Rule("logits_bias", part="logits_bias"),
    },
    optional=("transform", "logits_bias"),
    head="vocab_projector.weight",
    unused={"embeddings.position_ids": "position numbers, a buffer of older transformers"},
)

OPT = WeightTable(  # OPTModel's names start with decoder.; OPTForCausalLM's with model.decoder.
    family="opt",
    prefix="model.",
    unprefixed=("lm_head.",),
    names={
        "decoder.embed_tokens.weight": "embed_tokens.weight",
        "decoder.embed_positions.weight": "decoder.embed_positions.weight",
        "decoder.layers.{}.self_attn_layer_norm.weight": "decoder.layers.{}.self_attn_norm.weight",
        "decoder.layers.{}.self_attn_layer_norm.bias": "decoder.layers.{}.self_attn_norm.bias",
        "decoder.layers.{}.self_attn.q_proj.weight": "decoder.layers.{}.self_attn.q_proj.weight",
        "decoder.layers.{}.self_attn.q_proj.bias": "decoder.layers.{}.self_attn.q_proj.bias",
        "decoder.layers.{}.self_attn.k_proj.weight": "decoder.layers.{}.self_attn.k_proj.weight",
        "decoder.layers.{}.self_attn.k_proj.bias": "decoder.layers.{}.self_attn.k_proj.bias",
        "decoder.layers.{}.self_attn.v_proj.weight": "decoder.layers.{}.self_attn.v_proj.weight",
        "decoder.layers.{}.self_attn.v_proj.bias": "decoder.layers.{}.self_attn.v_proj.bias",
        "decoder.layers.{}.self_attn.out_proj.weight": "decoder.layers.{}.self_attn.o_proj.weight",
        "decoder.layers.{}.self_attn.out_proj.bias": "decoder.layers.{}.self_attn.o_proj.bias",
        "decoder.layers.{}.final_layer_norm.weight": "decoder.layers.{}.mlp_norm.weight",
        "decoder.layers.{}.final_layer_norm.bias": "decoder.layers.{}.mlp_norm.bias",
        "decoder.layers.{}.fc1.weight": "decoder.layers.{}.mlp.up_proj.weight",
        "decoder.layers.{}.fc1.bias": "decoder.layers.{}.mlp.up_proj.bias",
        "decoder.layers.{}.fc2.weight": "decoder.layers.{}.mlp.down_proj.weight",
        "decoder.layers.{}.fc2.bias": "decoder.layers.{}.mlp.down_proj.bias",
        # pre-norm OPT only (do_layer_norm_before); post-norm OPT (350m) has no final norm
        "decoder.final_layer_norm.weight": Rule("decoder.final_norm.weight", part="final_norm"),
        "decoder.final_layer_norm.bias": Rule("decoder.final_norm.bias", part="final_norm"),
    },
    head="lm_head.weight",
)

# Mistral's weights are Llama's (without biases), mT5's T5 v1.1's (or v1.0's, by its
# feed_forward_proj)
MISTRAL = replace(LLAMA, family="mistral")


def _qkv_biased(names: Mapping[str, str | Rule]) -> dict[str, str | Rule]:
    """Qwen2's names: Llama's, with the q, k and v biases always there and no other bias."""
    biased: dict[str, str | Rule] = {}
    for name, rule in names.items():
        if not (isinstance(rule, Rule) and rule.part == "bias"):
            biased[name] = rule
        elif re.search(r"\.[qkv]_proj\.bias$", name):
            biased[name] = rule.targets[0]
    return biased


QWEN2 = replace(LLAMA, family="qwen2", names=_qkv_biased(LLAMA.names))
QWEN3 = replace(  # Llama's names and an RMSNorm on each head's queries and keys
    LLAMA,
    family="qwen3",
    names={
        **LLAMA.names,
        "layers.{}.self_attn.q_norm.weight": "decoder.layers.{}.self_attn.q_norm.weight",
        "layers.{}.self_attn.k_norm.weight": "decoder.layers.{}.self_attn.k_norm.weight",
    },
)
MT5 = replace(T5_GATED, family="mt5")


# By family; T5 by version (its feed-forward's names differ)
TABLES: dict[str, WeightTable] = {
    "bert": BERT,
    "gpt2": GPT2,
    "t5": T5,
    "t5-gated": T5_GATED,
    "bart": BART,
    "llama": LLAMA,
    "roberta": ROBERTA,
    "xlm-roberta": XLM_ROBERTA,
    "distilbert": DISTILBERT,
    "opt": OPT,
    "mistral": MISTRAL,
    "mt5": MT5,
    "qwen2": QWEN2,
    "qwen3": QWEN3,
}


# Gemma: Llama's names without biases. Gemma 2 and 3 add sandwich norms (post_attention_layernorm
# is the attention's output norm there, pre_feedforward_layernorm the feed-forward's input
# norm); Gemma 3 the QK-norm.
GEMMA = replace(
    LLAMA,
    family="gemma",
    names={k: v for k, v in LLAMA.names.items() if not (isinstance(v, Rule) and v.part == "bias")},
)
GEMMA2 = replace(
    GEMMA,
    family="gemma2",
    names={
        **{k: v for k, v in GEMMA.names.items() if "post_attention_layernorm" not in k},
        "layers.{}.post_attention_layernorm.weight": "decoder.layers.{}.self_attn_out_norm.weight",
        "layers.{}.pre_feedforward_layernorm.weight": "decoder.layers.{}.mlp_norm.weight",
        "layers.{}.post_feedforward_layernorm.weight": "decoder.layers.{}.mlp_out_norm.weight",
    },
)
GEMMA3 = replace(
    GEMMA2,
    family="gemma3_text",
    names={
        **GEMMA2.names,
        "layers.{}.self_attn.q_norm.weight": "decoder.layers.{}.self_attn.q_norm.weight",
        "layers.{}.self_attn.k_norm.weight": "decoder.layers.{}.self_attn.k_norm.weight",
    },
)
TABLES.update({"gemma": GEMMA, "gemma2": GEMMA2, "gemma3_text": GEMMA3})


# GPT-NeoX's query_key_value holds each head's q, k and v together: rows laid out
# (heads, 3, head_dim), so its split needs the head count; Phi-3's qkv_proj is q, k, v one after
# the other (rows heads * head_dim, then kv_heads * head_dim twice) and its gate_up_proj the
# gate, then the up projection. Their tables are made for a config's head counts.


def per_head_fused_qkv(heads: int) -> Transform:
    """GPT-NeoX's fused q, k, v (weight or bias), rows laid out (heads, 3, head_dim)."""

    def to_ours(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = tensor.reshape(heads, 3, -1, *tensor.shape[1:])
        return tuple(parts[:, i].reshape(-1, *tensor.shape[1:]).clone() for i in range(3))

    def back(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
        rest = tensors[0].shape[1:]
        stacked = torch.stack([t.reshape(heads, -1, *rest) for t in tensors], dim=1)
        return stacked.reshape(-1, *rest).contiguous()

    return Transform(f"per-head fused q, k, v split ({heads} heads)", to_ours, back)


def row_split(*rows: int) -> Transform:
    """Consecutive row blocks of ``rows`` (Phi-3's qkv_proj and gate_up_proj)."""

    def to_ours(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if tensor.shape[0] != sum(rows):
            raise HFImportError(
                f"a fused tensor of {tensor.shape[0]} rows cannot be split into {list(rows)}"
            )
        return tuple(part.clone() for part in tensor.split(list(rows), dim=0))

    return Transform(f"row split {list(rows)}", to_ours, joined, rank=2)


def gpt_neox_table(heads: int) -> WeightTable:
    """GPT-NeoX's (Pythia's) names for a model of ``heads`` attention heads."""
    qkv = per_head_fused_qkv(heads)
    layer = "layers.{}."
    ours = "decoder.layers.{}."
    return WeightTable(
        family="gpt_neox",
        prefix="gpt_neox.",
        unprefixed=("embed_out.",),
        names={
            "embed_in.weight": "embed_tokens.weight",
            **{
                f"{layer}{hf}.{p}": f"{ours}{mine}.{p}"
                for hf, mine in (
                    ("input_layernorm", "self_attn_norm"),
                    ("post_attention_layernorm", "mlp_norm"),
                    ("attention.dense", "self_attn.o_proj"),
                    ("mlp.dense_h_to_4h", "mlp.up_proj"),
                    ("mlp.dense_4h_to_h", "mlp.down_proj"),
                )
                for p in ("weight", "bias")
            },
            **{
                f"{layer}attention.query_key_value.{p}": Rule(
                    tuple(f"{ours}self_attn.{proj}.{p}" for proj in QKV), qkv
                )
                for p in ("weight", "bias")
            },
            "final_layer_norm.weight": "decoder.final_norm.weight",
            "final_layer_norm.bias": "decoder.final_norm.bias",
        },
        # the checkpoints' name (transformers 5's state_dict says lm_head, saving embed_out)
        head="embed_out.weight",
        unused={
            "layers.{}.attention.bias": "the causal mask, a buffer of older transformers",
            "layers.{}.attention.masked_bias": "the masked score, a buffer of older transformers",
            "layers.{}.attention.rotary_emb.inv_freq": "RoPE's frequencies, from the config",
        },
    )


def phi3_table(q_rows: int, kv_rows: int, d_ff: int) -> WeightTable:
    """Phi-3's names for q rows ``heads * head_dim``, k and v rows ``kv_heads * head_dim``."""
    attn = "decoder.layers.{}.self_attn."
    mlp = "decoder.layers.{}.mlp."
    return WeightTable(
        family="phi3",
        prefix="model.",
        unprefixed=("lm_head.",),
        names={
            "embed_tokens.weight": "embed_tokens.weight",
            "layers.{}.input_layernorm.weight": "decoder.layers.{}.self_attn_norm.weight",
            "layers.{}.self_attn.qkv_proj.weight": Rule(
                tuple(f"{attn}{p}.weight" for p in QKV), row_split(q_rows, kv_rows, kv_rows)
            ),
            "layers.{}.self_attn.o_proj.weight": f"{attn}o_proj.weight",
            "layers.{}.post_attention_layernorm.weight": "decoder.layers.{}.mlp_norm.weight",
            "layers.{}.mlp.gate_up_proj.weight": Rule(
                (f"{mlp}gate_proj.weight", f"{mlp}up_proj.weight"), row_split(d_ff, d_ff)
            ),
            "layers.{}.mlp.down_proj.weight": f"{mlp}down_proj.weight",
            "norm.weight": "decoder.final_norm.weight",
        },
        head="lm_head.weight",
        unused={"layers.{}.self_attn.rotary_emb.inv_freq": "RoPE's frequencies, from the config"},
    )
