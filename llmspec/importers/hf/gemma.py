"""Gemma, Gemma 2 and Gemma 3 (text): config translations (registered in
:data:`llmspec.importers.hf.families.FAMILIES`; import them through that module).

All three are Llama's layers with Gemma's RMSNorm (``x / rms(x) * (1 + weight)``: the spec's
``norm.unit_offset``), embeddings scaled by ``sqrt(hidden_size)`` (``embeddings.scale``), a
gated tanh-gelu feed-forward and an explicit ``head_dim``. Gemma 2 adds sandwich norms
(``norm.sandwich``: ``post_attention_layernorm`` is our ``self_attn_out_norm``,
``pre_feedforward_layernorm`` our ``mlp_norm``, ``post_feedforward_layernorm`` our
``mlp_out_norm``), attention and final logit soft-capping (``attention.softcap``,
``head.softcap``), the score scale ``query_pre_attn_scalar ** -0.5`` (``attention.scale``) and
sliding-window layers (``attention.sliding_window`` with ``layer_pattern``, the shortest period
of ``layer_types``). Gemma 3 adds QK-norm (``attention.qk_norm``, Gemma's norm too) and a rope
base of its own for the local layers (``positions.local_base``, ``rope_local_base_freq``).

Decisions: a layer pattern without a local layer drops the window (nothing is windowed); one
whose layers are all local is no pattern (every layer local), and Gemma 3's local base is then
the only base. Gemma 1's legacy ``hidden_act: gelu`` means tanh-gelu, as transformers reads it.
"""

from __future__ import annotations

import json
from typing import Any

from llmspec.importers.hf.config import Config
from llmspec.importers.hf.mapping import HFImportError, Weights, WeightTable, from_hf
from llmspec.importers.hf.rope import positions_from_hf
from llmspec.importers.hf.tables import GEMMA, GEMMA2, GEMMA3
from llmspec.importers.hf.translation import (
    Imported,
    decoder_attention,
    dropout,
    output_head,
    spec_activation,
    special_ids,
)

__all__ = ["import_gemma", "import_gemma2", "import_gemma3"]

LAYER_KINDS = {"sliding_attention": "local", "full_attention": "global"}


def _refuse_common(config: Config) -> None:
    config.refuse(
        "attention_bias",
        lambda v: not v,
        "Gemma then biases q, k, v and o_proj but not the feed-forward; the spec's bias switch "
        "covers attention and feed-forward together",
    )
    config.refuse(
        "use_bidirectional_attention",
        lambda v: not v,
        "bidirectional attention (EmbeddingGemma) is not a causal decoder-only model",
    )


def _legacy_rope(config: Config, theta: float = 10000.0) -> dict[str, Any]:
    """A transformers 4 config's rope fields as one standardized rope_parameters dict."""
    scaling = config.raw.get("rope_scaling")
    if scaling is not None and not isinstance(scaling, dict):
        raise HFImportError(f"config.json: rope_scaling must be an object, got {scaling!r}")
    parameters: dict[str, Any] = dict(scaling or {"rope_type": "default"})
    parameters["rope_theta"] = config.raw.get("rope_theta", theta)
    return parameters


def _layer_kinds(config: Config, layers: int, default: list[str]) -> list[str]:
    """Each layer's kind, local or global, from ``layer_types`` (else ``default``)."""
    types = config.raw.get("layer_types")
    if types is None:
        return default
    if not isinstance(types, list) or len(types) != layers:
        raise HFImportError(
            f"config.json: layer_types must list one type for each of the {layers} layers, got "
            f"{json.dumps(types)}"
        )
    unknown = [t for t in types if t not in LAYER_KINDS]
    if unknown:
        raise HFImportError(
            f"config.json: layer_types entry {json.dumps(unknown[0])} is not supported "
            f"(supported: {', '.join(sorted(LAYER_KINDS))})"
        )
    return [LAYER_KINDS[t] for t in types]


def _shortest_period(kinds: list[str]) -> list[str]:
    for period in range(1, len(kinds) + 1):
        if all(kind == kinds[i % period] for i, kind in enumerate(kinds)):
            return kinds[:period]
    return kinds  # not reached: the whole list is a period


def _window(config: Config, kinds: list[str], attention: dict[str, Any]) -> bool:
    """Set the sliding window and layer pattern; whether any layer is local."""
    window = config["sliding_window"]
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1
    ):
        raise HFImportError(
            f"config.json: sliding_window must be null or an integer >= 1, got {window!r}"
        )
    if window is None or "local" not in kinds:
        return False
    attention["sliding_window"] = window
    if "global" in kinds:
        attention["layer_pattern"] = _shortest_period(kinds)
    return True


def _gemma(
    config: Config,
    weights: Weights,
    table: WeightTable,
    *,
    activation_key: str,
    sandwich: bool,
    attention_knobs: dict[str, Any],
    positions: dict[str, Any],
    kinds: list[str] | None = None,
) -> Imported:
    """The translation the three Gemmas share; ``kinds`` is each layer's kind (Gemma 2/3)."""
    _refuse_common(config)
    d_model = config.integer("hidden_size")
    attention = decoder_attention(config, attention_knobs)
    head_dim = attention.get("head_dim", d_model // attention["heads"])
    layers = config.integer("num_hidden_layers")
    out = from_hf(weights, table, {"decoder": layers})
    tied = output_head(weights, out, table.head, config)
    scalar = config["query_pre_attn_scalar"]
    if scalar is not None:
        if isinstance(scalar, bool) or not isinstance(scalar, int | float) or scalar <= 0:
            raise HFImportError(
                f"config.json: query_pre_attn_scalar must be a number > 0, got {scalar!r}"
            )
        if scalar != head_dim:  # else the usual 1/sqrt(head_dim)
            attention["scale"] = float(scalar) ** -0.5
    softcap = config["attn_logit_softcapping"]
    notes: list[str] = []
    if softcap is not None and config.family == "gemma3_text":
        notes.append(  # Gemma3Attention keeps it but never passes it to the attention
            f"attn_logit_softcapping {softcap} is ignored, as transformers' Gemma 3 ignores it"
        )
    elif softcap is not None:
        attention["softcap"] = float(config.number("attn_logit_softcapping"))
    local = _window(config, kinds, attention) if kinds is not None else False
    if "local_base" in positions and not local:
        del positions["local_base"]  # no layer is local: its base is unused
    elif "local_base" in positions and "layer_pattern" not in attention:
        positions["base"] = positions.pop("local_base")  # every layer is local
    head: dict[str, Any] = {"tied": tied}
    if config["final_logit_softcapping"] is not None:
        head["softcap"] = float(config.number("final_logit_softcapping"))
    token_ids, id_notes = special_ids(config, ("pad", "bos", "eos", "unk"))
    notes.extend(id_notes)
    if config[activation_key] == "gelu" and activation_key == "hidden_act":
        notes.append(
            "hidden_act gelu is Gemma's legacy name for tanh-gelu, as transformers reads it"
        )
        config = Config({**config.raw, "hidden_act": "gelu_pytorch_tanh"}, config.family)
    norm: dict[str, Any] = {
        "type": "rmsnorm",
        "position": "pre",
        "eps": config.number("rms_norm_eps"),
        "unit_offset": True,
    }
    if sandwich:
        norm["sandwich"] = True
    spec = {
        "architecture": "decoder-only",
        "context_length": config.integer("max_position_embeddings"),
        "d_model": d_model,
        "layers": layers,
        "attention": attention,
        "feed_forward": {
            "d_ff": config.integer("intermediate_size"),
            "activation": spec_activation(config, activation_key, gated=True),
        },
        "norm": norm,
        "positions": positions,
        "bias": False,
        "embeddings": {"scale": True},
        "head": head,
        "dropout": {"attention": dropout(config.number("attention_dropout"))},
        "objective": {"type": "causal-lm"},
    }
    return Imported(spec, out, token_ids, needs=(), notes=notes)


def _flat_positions(config: Config) -> dict[str, Any]:
    parameters = config.raw.get("rope_parameters")
    if parameters is None:
        parameters = _legacy_rope(config)
    return positions_from_hf(parameters, config.integer("max_position_embeddings"))


def import_gemma(config: Config, weights: Weights) -> Imported:
    """Gemma (1): Llama's layers with Gemma's norm, scaled embeddings and head_dim."""
    return _gemma(
        config,
        weights,
        GEMMA,
        activation_key="hidden_act",
        sandwich=False,
        attention_knobs={},
        positions=_flat_positions(config),
    )


def import_gemma2(config: Config, weights: Weights) -> Imported:
    """Gemma 2: sandwich norms, soft-capping, the explicit score scale, local and global
    layers (alternating from a local one unless ``layer_types`` says otherwise)."""
    layers = config.integer("num_hidden_layers")
    default = ["local" if i % 2 == 0 else "global" for i in range(layers)]
    return _gemma(
        config,
        weights,
        GEMMA2,
        activation_key="hidden_activation",
        sandwich=True,
        attention_knobs={},
        positions=_flat_positions(config),
        kinds=_layer_kinds(config, layers, default),
    )


def import_gemma3(config: Config, weights: Weights) -> Imported:
    """Gemma 3 (text): Gemma 2's layers with QK-norm, five local layers then a global one
    (``layer_types``, else ``sliding_window_pattern``) and the local layers' own rope base."""
    layers = config.integer("num_hidden_layers")
    pattern = config.raw.get("sliding_window_pattern", config.raw.get("_sliding_window_pattern", 6))
    if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
        raise HFImportError(
            f"config.json: sliding_window_pattern must be an integer >= 1, got {pattern!r}"
        )
    default = ["global" if (i + 1) % pattern == 0 else "local" for i in range(layers)]
    max_positions = config.integer("max_position_embeddings")
    parameters = config.raw.get("rope_parameters")
    if parameters is None:
        full = _legacy_rope(config, theta=1000000.0)
        sliding = {
            "rope_type": "default",
            "rope_theta": config.raw.get("rope_local_base_freq", 10000.0),
        }
        parameters = {"full_attention": full, "sliding_attention": sliding}
    if not isinstance(parameters, dict) or "full_attention" not in parameters:
        raise HFImportError(
            "config.json: rope_parameters of gemma3_text must have full_attention and "
            f"sliding_attention entries, got {json.dumps(parameters)}"
        )
    positions = positions_from_hf(
        parameters["full_attention"],
        max_positions,
        local=parameters.get("sliding_attention"),
        where="rope_parameters.full_attention",
    )
    return _gemma(
        config,
        weights,
        GEMMA3,
        activation_key="hidden_activation",
        sandwich=True,
        attention_knobs={"qk_norm": "rmsnorm"},
        positions=positions,
        kinds=_layer_kinds(config, layers, default),
    )
