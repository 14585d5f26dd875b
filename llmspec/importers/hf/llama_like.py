"""The Llama lineage's config translations: Llama (1-3.x, rope scaling), Mistral (a sliding
window on every layer), Qwen2 (q/k/v biases) and Qwen3 (QK-norm)."""

from __future__ import annotations

import json
from typing import Any

from llmspec.importers.hf.config import Config
from llmspec.importers.hf.mapping import HFImportError, Weights, WeightTable, from_hf
from llmspec.importers.hf.tables import (
    LLAMA,
    QWEN2,
    QWEN3,
)
from llmspec.importers.hf.translation import (
    Imported,
    decoder_attention,
    dropout,
    output_head,
    rope_positions,
    spec_activation,
    special_ids,
)


def import_llama(config: Config, weights: Weights) -> Imported:
    if bool(config["attention_bias"]) != bool(config["mlp_bias"]):
        raise HFImportError(
            f"config.json: attention_bias = {json.dumps(config['attention_bias'])} with "
            f"mlp_bias = {json.dumps(config['mlp_bias'])} is not supported: the spec's bias "
            "switch covers attention and feed-forward together"
        )
    bias = bool(config["attention_bias"])
    positions = rope_positions(config)
    activation = spec_activation(config, "hidden_act", gated=True)
    d_model = config.integer("hidden_size")
    attention = decoder_attention(config)
    layers = config.integer("num_hidden_layers")
    out = from_hf(weights, LLAMA, {"decoder": layers}, ["bias"] if bias else [])
    tied = output_head(weights, out, LLAMA.head, config)
    token_ids, notes = special_ids(config, ("pad", "bos", "eos", "unk"))
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
        "dropout": {"attention": dropout(config.number("attention_dropout"))},
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
    positions = rope_positions(config)
    d_model = config.integer("hidden_size")
    attention = decoder_attention(config, knobs)
    layers = config.integer("num_hidden_layers")
    out = from_hf(weights, table, {"decoder": layers})
    tied = output_head(weights, out, table.head, config)
    token_ids, notes = special_ids(config, ("pad", "bos", "eos", "unk"))
    spec = {
        "architecture": "decoder-only",
        "context_length": config.integer("max_position_embeddings"),
        "d_model": d_model,
        "layers": layers,
        "attention": attention,
        "feed_forward": {
            "d_ff": config.integer("intermediate_size"),
            "activation": spec_activation(config, "hidden_act", gated=True),
        },
        "norm": {"type": "rmsnorm", "position": "pre", "eps": config.number("rms_norm_eps")},
        "positions": positions,
        "bias": False,
        "head": {"tied": tied},
        "dropout": {"attention": dropout(config.number("attention_dropout"))},
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
