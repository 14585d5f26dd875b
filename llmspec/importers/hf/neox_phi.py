"""GPT-NeoX (Pythia) and Phi-3: config translations (registered in
:data:`llmspec.importers.hf.families.FAMILIES`; import them through that module).

GPT-NeoX: pre-norm LayerNorm layers with biases, learned-free rotary positions on the first
``partial_rotary_factor`` of each head (``positions.partial``), its q, k and v fused per head
(:func:`~llmspec.importers.hf.tables.per_head_fused_qkv`), and with ``use_parallel_residual``
attention and feed-forward added in parallel, each with its own norm (``block.parallel:
separate-norms``); without, the usual sequential pre-norm block. Its ``attention_bias: false``
drops the attention's biases but not the feed-forward's, which the spec cannot say: refused.

Phi-3 (and 3.5): Llama's layers with q, k and v fused (``qkv_proj``) and the gate and up
projections fused (``gate_up_proj``, the gate first), rope scaling (longrope for the 128k
models) read by :mod:`llmspec.importers.hf.rope`, and the config's ``sliding_window`` on every
layer (a window as long as the context is left out, as Mistral's).
"""

from __future__ import annotations

from typing import Any

from llmspec.importers.hf.config import Config
from llmspec.importers.hf.mapping import HFImportError, Weights, from_hf
from llmspec.importers.hf.rope import positions_from_hf
from llmspec.importers.hf.tables import gpt_neox_table, phi3_table
from llmspec.importers.hf.translation import (
    Imported,
    dropout,
    output_head,
    rope_parameters,
    spec_activation,
    special_ids,
)

__all__ = ["import_gpt_neox", "import_phi3"]


def _rope_parameters(config: Config, partial_default: float) -> dict[str, Any]:
    """The standardized rope parameters (:func:`~llmspec.importers.hf.translation.rope_parameters`)
    with the family's rotated fraction where the config gives none."""
    parameters, _ = rope_parameters(config)
    parameters.setdefault("partial_rotary_factor", partial_default)
    return parameters


def import_gpt_neox(config: Config, weights: Weights) -> Imported:
    config.refuse(
        "attention_bias",
        lambda v: v is not False,
        "GPT-NeoX then has no attention biases but feed-forward ones; the spec's bias switch "
        "covers attention and feed-forward together",
    )
    config.refuse("is_decoder", lambda v: not v, "GPT-NeoX as a cross-attending decoder")
    d_model = config.integer("hidden_size")
    heads = config.integer("num_attention_heads")
    if d_model % heads:
        raise HFImportError(
            f"config.json: hidden_size {d_model} is not a multiple of num_attention_heads {heads}"
        )
    layers = config.integer("num_hidden_layers")
    table = gpt_neox_table(heads)
    if weights.has("lm_head.weight") and not weights.has(table.head):
        # a state dict of transformers 5's model, which calls embed_out lm_head
        weights.tensors[table.head] = weights.tensors.pop("lm_head.weight")
    out = from_hf(weights, table, {"decoder": layers})
    tied = output_head(weights, out, table.head, config)
    max_positions = config.integer("max_position_embeddings")
    positions = positions_from_hf(_rope_parameters(config, 0.25), max_positions)
    token_ids, notes = special_ids(config, ("pad", "bos", "eos", "unk"))
    spec: dict[str, Any] = {
        "architecture": "decoder-only",
        "context_length": max_positions,
        "d_model": d_model,
        "layers": layers,
        "attention": {"heads": heads},
        "feed_forward": {
            "d_ff": config.integer("intermediate_size"),
            "activation": spec_activation(config, "hidden_act", gated=False),
        },
        "norm": {"type": "layernorm", "position": "pre", "eps": config.number("layer_norm_eps")},
        "positions": positions,
        "bias": True,
        "head": {"tied": tied},
        "dropout": {
            "hidden": dropout(config.number("hidden_dropout")),
            "attention": dropout(config.number("attention_dropout")),
        },
        "objective": {"type": "causal-lm"},
    }
    if config["use_parallel_residual"] is not False:
        spec["block"] = {"parallel": "separate-norms"}
    return Imported(spec, out, token_ids, needs=(), notes=notes)


def import_phi3(config: Config, weights: Weights) -> Imported:
    d_model = config.integer("hidden_size")
    heads = config.integer("num_attention_heads")
    kv_heads = config.integer("num_key_value_heads") if config["num_key_value_heads"] else heads
    head_dim = config.integer("head_dim") if config["head_dim"] else d_model // heads
    layers = config.integer("num_hidden_layers")
    d_ff = config.integer("intermediate_size")
    table = phi3_table(heads * head_dim, kv_heads * head_dim, d_ff)
    out = from_hf(weights, table, {"decoder": layers})
    tied = output_head(weights, out, table.head, config)
    max_positions = config.integer("max_position_embeddings")
    positions = positions_from_hf(_rope_parameters(config, 1.0), max_positions)
    attention: dict[str, Any] = {"heads": heads}
    if kv_heads != heads:
        attention["kv_heads"] = kv_heads
    if head_dim * heads != d_model:
        attention["head_dim"] = head_dim
    token_ids, notes = special_ids(config, ("pad", "bos", "eos", "unk"))
    window = config["sliding_window"]
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1
    ):
        raise HFImportError(
            f"config.json: sliding_window must be null or an integer >= 1, got {window!r}"
        )
    if window is not None and window < max_positions:
        attention["sliding_window"] = window
    elif window is not None:
        notes.append(
            f"sliding_window {window} is at least the context length {max_positions}, so it "
            "never narrows attention; the spec has none"
        )
    spec = {
        "architecture": "decoder-only",
        "context_length": max_positions,
        "d_model": d_model,
        "layers": layers,
        "attention": attention,
        "feed_forward": {
            "d_ff": d_ff,
            "activation": spec_activation(config, "hidden_act", gated=True),
        },
        "norm": {"type": "rmsnorm", "position": "pre", "eps": config.number("rms_norm_eps")},
        "positions": positions,
        "bias": False,
        "head": {"tied": tied},
        "dropout": {
            "hidden": dropout(config.number("resid_pdrop")),
            "attention": dropout(config.number("attention_dropout")),
        },
        "objective": {"type": "causal-lm"},
    }
    return Imported(spec, out, token_ids, needs=(), notes=notes)
