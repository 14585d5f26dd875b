"""What the families' config translations share: activation names, the output head's tie,
dropout, special token ids, rope positions, and :class:`Imported`, what a translation returns."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from llmspec.importers.hf.config import Config
from llmspec.importers.hf.mapping import HFImportError, Weights
from llmspec.importers.hf.rope import positions_from_hf

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


def spec_activation(config: Config, key: str, *, gated: bool) -> str:
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


def output_head(
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


def dropout(value: float) -> float:
    return value if 0 <= value < 1 else 0.0


def special_ids(config: Config, roles: Iterable[str]) -> tuple[dict[str, int], list[str]]:
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


def rope_parameters(config: Config) -> tuple[dict[str, Any], str]:
    """The standardized rope parameters of a config of either transformers version, and the
    key they came from: a legacy ``rope_scaling`` (Llama 3.1's ``rope_type: llama3``) before
    ``rope_parameters``, with ``rope_type``, ``rope_theta`` (GPT-NeoX: ``rotary_emb_base``),
    ``partial_rotary_factor`` (GPT-NeoX: ``rotary_pct``, only where the config gives one) and
    ``original_max_position_embeddings`` (Phi-3) filled in from the top level where the dict
    lacks them, as transformers 5's standardization does."""
    raw = config.raw
    where = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
    parameters = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    if not isinstance(parameters, dict):
        raise HFImportError(f"config.json: {where} must be an object, got {json.dumps(parameters)}")
    parameters = dict(parameters)
    parameters.setdefault("rope_type", parameters.get("type", "default"))
    parameters.setdefault("rope_theta", raw.get("rope_theta", raw.get("rotary_emb_base", 10000.0)))
    partial = raw.get("partial_rotary_factor", raw.get("rotary_pct"))
    if partial is not None:
        parameters.setdefault("partial_rotary_factor", partial)
    original = raw.get("original_max_position_embeddings")
    if original is not None and parameters["rope_type"] in ("longrope", "yarn", "llama3"):
        parameters.setdefault("original_max_position_embeddings", original)
    return parameters, where


def rope_positions(config: Config) -> dict[str, Any]:
    """The spec's rope ``positions`` of a Llama-like config, read as transformers 5 reads it:
    its legacy ``rope_scaling`` (Llama 3.1's ``rope_type: llama3``) before ``rope_parameters``,
    ``rope_theta`` and ``partial_rotary_factor`` filled in from the top level where the dict
    lacks them. The scaling is :mod:`llmspec.importers.hf.rope`'s (linear, dynamic, llama3,
    yarn, longrope); what the spec cannot express is refused by name there. Llama-like models
    rotate every channel, so a partial rotary factor is refused."""
    parameters, where = rope_parameters(config)
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


def decoder_attention(config: Config, knobs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The spec's attention section of a Llama-like config: ``heads``, with ``kv_heads`` and
    ``head_dim`` only where they differ from plain multi-head attention over ``hidden_size``
    (``num_key_value_heads``, ``head_dim``), the family's ``knobs`` beside them."""
    d_model = config.integer("hidden_size")
    heads = config.integer("num_attention_heads")
    kv_heads = config.integer("num_key_value_heads") if config["num_key_value_heads"] else heads
    head_dim = config.integer("head_dim") if config["head_dim"] else d_model // heads
    attention: dict[str, Any] = {"heads": heads, **(knobs or {})}
    if kv_heads != heads:
        attention["kv_heads"] = kv_heads
    if head_dim * heads != d_model:
        attention["head_dim"] = head_dim
    return attention
