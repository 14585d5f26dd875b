"""The export direction of the newer decoder families' config translations: Qwen2, Qwen3,
Mistral (with its window), Gemma, Gemma 2, Gemma 3 (text) and GPT-NeoX, registered in
:mod:`llmspec.importers.hf.export_config`.

A decoder-only rope spec names its family by the knobs it uses (:func:`modern_family`): a
LayerNorm is GPT-NeoX's; Gemma's unit-offset RMSNorm is Gemma 3's with QK-norm, Gemma 2's with
sandwich norms, else Gemma's; QK-norm alone is Qwen3's; q/k/v biases without other biases are
Qwen2's; a sliding window on every layer is Mistral's; anything else stays Llama's. The chosen
family's fixed choices (:data:`MODERN_FIXED`) and config writer then decide, as for the other
families; a knob the family lacks is refused by name by the read-back in
:mod:`llmspec.importers.hf.export`.

Decisions: Phi-3's layers are Llama's (Mistral's with a window) with q/k/v and gate/up fused,
and the spec does not say which of these transformers classes it came from (the logits are the
same), so a spec imported from Phi-3 goes out as Llama or Mistral unless Phi-3 is asked for
(``export_hf(..., family="phi3")``, ``llmspec export-hf --family phi3``). Gemma 2/3's
``query_pre_attn_scalar`` is written as the integer whose ``** -0.5`` is the spec's scale where
there is one, else as ``scale ** -2``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmspec.importers.hf.mapping import HFImportError, WeightTable
from llmspec.importers.hf.rope import local_rope_parameters_to_hf, rope_parameters_to_hf
from llmspec.importers.hf.tables import (
    GEMMA,
    GEMMA2,
    GEMMA3,
    MISTRAL,
    QWEN2,
    QWEN3,
    gpt_neox_table,
    phi3_table,
)
from llmspec.spec.sections import ModelSpec

__all__ = ["MODERN_FIXED", "MODERN_TRANSLATIONS", "modern_family", "modern_table"]

# Our gated activation names -> transformers' (as export_config.GATED_NAMES)
_GATED = {"geglu": "gelu", "geglu-tanh": "gelu_pytorch_tanh", "swiglu": "silu"}
_PLAIN = {"gelu": "gelu", "gelu-tanh": "gelu_new", "relu": "relu", "silu": "silu"}

_DECODER = {
    "architecture": "decoder-only",
    "norm.position": "pre",
    "positions.type": "rope",
    "attention.scaled": True,
    "embeddings.token_types": 0,
    "embeddings.norm": False,
    "head.transform": False,
    "head.pooler": False,
    "head.logits_bias": "none",
    "head.rescale": False,
    "objective.type": "causal-lm",
}
_LLAMA_LIKE = {
    **_DECODER,
    "norm.type": "rmsnorm",
    "feed_forward.activation": "gated",
    "embeddings.scale": False,
    "bias": False,
}
_GEMMA = {**_LLAMA_LIKE, "embeddings.scale": True, "norm.unit_offset": True}

# What each family fixes, read as export_config.FIXED
MODERN_FIXED: dict[str, dict[str, Any]] = {
    "qwen2": {**_LLAMA_LIKE, "attention.qkv_bias": True},
    "qwen3": {**_LLAMA_LIKE, "attention.qk_norm": "rmsnorm"},
    "mistral": {**_LLAMA_LIKE, "attention.layer_pattern": None},
    "phi3": {**_LLAMA_LIKE, "attention.layer_pattern": None},
    "gemma": {**_GEMMA, "norm.sandwich": False},
    "gemma2": {**_GEMMA, "norm.sandwich": True},
    "gemma3_text": {**_GEMMA, "norm.sandwich": True, "attention.qk_norm": "rmsnorm"},
    "gpt_neox": {
        **_DECODER,
        "norm.type": "layernorm",
        "feed_forward.activation": "ungated",
        "embeddings.scale": False,
        "bias": True,
        "attention.kv_heads": "heads",
        "attention.head_dim": "whole heads",
        "block.parallel": (None, "separate-norms"),
    },
}


def modern_family(spec: ModelSpec) -> str | None:
    """The newer family a decoder-only rope ``spec`` names by its knobs (None: Llama's)."""
    attention, norm = spec.attention, spec.norm
    if norm.type == "layernorm":
        return "gpt_neox"
    if norm.unit_offset:
        if attention.qk_norm == "rmsnorm":
            return "gemma3_text"
        return "gemma2" if norm.sandwich else "gemma"
    if attention.qk_norm == "rmsnorm":
        return "qwen3"
    if attention.qkv_bias and not spec.bias:
        return "qwen2"
    if attention.sliding_window is not None:
        return "mistral"
    return None


def _ids(ids: dict[str, int]) -> dict[str, int | None]:
    return {f"{role}_token_id": ids.get(role) for role in ("pad", "bos", "eos")}


def _rope(spec: ModelSpec, family: str, problems: list[str]) -> dict[str, Any]:
    """rope_parameters for the global (or only) layers; what transformers' cannot hold is
    added to ``problems``."""
    positions = spec.positions
    assert positions.type == "rope"
    try:
        return rope_parameters_to_hf(positions, spec.head_dim, spec.context_length)
    except HFImportError as err:
        problems.append(str(err))
    return {"rope_type": "default", "rope_theta": positions.base}


def _llama_like(spec: ModelSpec, ids: dict[str, int], family: str) -> dict[str, Any]:
    """config.json's fields the Llama-like families share."""
    return {
        "model_type": family,
        "hidden_size": spec.d_model,
        "intermediate_size": spec.feed_forward.d_ff,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.attention.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "max_position_embeddings": spec.context_length,
        "rms_norm_eps": spec.norm.eps,
        "attention_bias": False,
        "attention_dropout": spec.dropout.attention,
        "tie_word_embeddings": spec.head.tied,
        **_ids(ids),
    }


def _whole_rotation(spec: ModelSpec, family: str, problems: list[str]) -> None:
    assert spec.positions.type == "rope"
    if spec.positions.rotated(spec.head_dim) != spec.head_dim:
        problems.append(f"positions rotate part of each head ({family} rotates every channel)")
    if spec.positions.local_base is not None:
        problems.append(f"positions.local_base is set ({family} has one rope base)")


def _qwen(spec: ModelSpec, ids: dict[str, int], family: str) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []
    _whole_rotation(spec, family, problems)
    rope = _rope(spec, family, problems)
    config = {
        "architectures": ["Qwen2ForCausalLM" if family == "qwen2" else "Qwen3ForCausalLM"],
        **_llama_like(spec, ids, family),
        "hidden_act": _GATED.get(spec.feed_forward.activation),
        "rope_theta": rope["rope_theta"],
        "rope_parameters": rope,
        "use_sliding_window": False,
        "sliding_window": None,
        "layer_types": ["full_attention"] * spec.layers,
    }
    return config, problems


def _mistral(spec: ModelSpec, ids: dict[str, int]) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []
    _whole_rotation(spec, "mistral", problems)
    rope = _rope(spec, "mistral", problems)
    config = {
        "architectures": ["MistralForCausalLM"],
        **_llama_like(spec, ids, "mistral"),
        "hidden_act": _GATED.get(spec.feed_forward.activation),
        "rope_theta": rope["rope_theta"],
        "rope_parameters": rope,
        "sliding_window": spec.attention.sliding_window,
    }
    del config["attention_bias"]  # Mistral has no bias switch
    return config, problems


def _phi3(spec: ModelSpec, ids: dict[str, int]) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []
    assert spec.positions.type == "rope"
    if spec.positions.local_base is not None:
        problems.append("positions.local_base is set (phi3 has one rope base)")
    rope = _rope(spec, "phi3", problems)
    config = {
        "architectures": ["Phi3ForCausalLM"],
        **_llama_like(spec, ids, "phi3"),
        "hidden_act": _GATED.get(spec.feed_forward.activation),
        "rope_theta": rope["rope_theta"],
        "rope_parameters": rope,
        "partial_rotary_factor": rope.get("partial_rotary_factor", 1.0),
        "original_max_position_embeddings": rope.get(
            "original_max_position_embeddings", spec.context_length
        ),
        "sliding_window": spec.attention.sliding_window,
        "resid_pdrop": spec.dropout.hidden,
        "embd_pdrop": spec.dropout.hidden,
    }
    del config["attention_bias"]  # Phi-3 has no bias switch
    return config, problems


def _query_scalar(spec: ModelSpec, problems: list[str]) -> float | int:
    """Gemma's query_pre_attn_scalar: the score scale is its ``** -0.5``."""
    scale = spec.attention.scale
    if scale is None:
        return spec.head_dim
    scalar = scale**-2
    for candidate in (round(scalar), scalar):
        if float(candidate) ** -0.5 == scale:
            return candidate
    problems.append(f"attention.scale {scale} is no query_pre_attn_scalar ** -0.5 exactly")
    return scalar


def _layer_types(spec: ModelSpec) -> list[str]:
    return [
        "sliding_attention" if spec.attention.layer_is_local(i) else "full_attention"
        for i in range(spec.layers)
    ]


def _gemma(spec: ModelSpec, ids: dict[str, int], family: str) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []
    positions = spec.positions
    assert positions.type == "rope"
    if positions.rotated(spec.head_dim) != spec.head_dim:
        problems.append(f"positions rotate part of each head ({family} rotates every channel)")
    rope = _rope(spec, family, problems)
    architecture = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM"}
    config: dict[str, Any] = {
        "architectures": [architecture.get(family, "Gemma3ForCausalLM")],
        **_llama_like(spec, ids, family),
        "rope_theta": rope["rope_theta"],
        "rope_parameters": rope,
    }
    activation = _GATED.get(spec.feed_forward.activation)
    if family == "gemma":
        config["hidden_act"] = activation
        if positions.local_base is not None:
            problems.append("positions.local_base is set (gemma has one rope base)")
        return config, problems
    config["hidden_activation"] = activation
    config["query_pre_attn_scalar"] = _query_scalar(spec, problems)
    config["final_logit_softcapping"] = spec.head.softcap
    # transformers builds Gemma 2/3's sliding mask even with no local layer: a window that
    # never binds, which the import reads back as none (no layer is local)
    config["sliding_window"] = spec.attention.sliding_window or spec.context_length
    config["layer_types"] = _layer_types(spec)
    local = "sliding_attention" in config["layer_types"]
    if family == "gemma2":
        config["attn_logit_softcapping"] = spec.attention.softcap
        if positions.local_base is not None:
            problems.append("positions.local_base is set (gemma2 has one rope base)")
        return config, problems
    config["attn_logit_softcapping"] = None  # transformers' Gemma 3 ignores it
    del config["rope_theta"]
    if local and "full_attention" not in config["layer_types"]:  # every layer local
        sliding = local_rope_parameters_to_hf(positions, spec.head_dim)
        sliding["rope_theta"] = positions.base
        if positions.scaling is not None:
            problems.append(
                "positions.scaling with every layer local (gemma3_text's local layers rotate "
                "unscaled)"
            )
    elif positions.local_base is not None:
        sliding = local_rope_parameters_to_hf(positions, spec.head_dim)
    else:
        sliding = {"rope_type": "default", "rope_theta": positions.base}
        if local and positions.scaling is not None:
            problems.append(
                "positions.scaling without positions.local_base (gemma3_text's local layers "
                "rotate unscaled with a base of their own)"
            )
    config["rope_parameters"] = {"full_attention": rope, "sliding_attention": sliding}
    return config, problems


def _gpt_neox(spec: ModelSpec, ids: dict[str, int]) -> tuple[dict[str, Any], list[str]]:
    problems: list[str] = []
    positions = spec.positions
    assert positions.type == "rope"
    if positions.local_base is not None:
        problems.append("positions.local_base is set (gpt_neox has one rope base)")
    rope = _rope(spec, "gpt_neox", problems)
    rope.setdefault("partial_rotary_factor", 1.0)  # GPT-NeoX's default is 0.25
    config = {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.attention.heads,
        "intermediate_size": spec.feed_forward.d_ff,
        "hidden_act": _PLAIN.get(spec.feed_forward.activation),
        "max_position_embeddings": spec.context_length,
        "layer_norm_eps": spec.norm.eps,
        "rope_parameters": rope,
        "rotary_pct": rope["partial_rotary_factor"],
        "rotary_emb_base": rope["rope_theta"],
        "use_parallel_residual": spec.block.parallel == "separate-norms",
        "attention_bias": True,
        "hidden_dropout": spec.dropout.hidden,
        "attention_dropout": spec.dropout.attention,
        "tie_word_embeddings": spec.head.tied,
        **_ids(ids),
    }
    return config, problems


Translation = Callable[[ModelSpec, dict[str, int]], tuple[dict[str, Any], list[str]]]
MODERN_TRANSLATIONS: dict[str, Translation] = {
    "qwen2": lambda spec, ids: _qwen(spec, ids, "qwen2"),
    "qwen3": lambda spec, ids: _qwen(spec, ids, "qwen3"),
    "mistral": _mistral,
    "gemma": lambda spec, ids: _gemma(spec, ids, "gemma"),
    "gemma2": lambda spec, ids: _gemma(spec, ids, "gemma2"),
    "gemma3_text": lambda spec, ids: _gemma(spec, ids, "gemma3_text"),
    "gpt_neox": _gpt_neox,
    "phi3": _phi3,  # only when asked for (modern_family never names it)
}


def modern_table(spec: ModelSpec, family: str) -> WeightTable:
    """The weight table of ``family`` (one of :data:`MODERN_TRANSLATIONS`) for ``spec``."""
    if family == "gpt_neox":
        return gpt_neox_table(spec.attention.heads)
    if family == "phi3":
        head_dim = spec.head_dim
        return phi3_table(
            spec.attention.heads * head_dim, spec.kv_heads * head_dim, spec.feed_forward.d_ff
        )
    tables = {
        "qwen2": QWEN2,
        "qwen3": QWEN3,
        "mistral": MISTRAL,
        "gemma": GEMMA,
        "gemma2": GEMMA2,
        "gemma3_text": GEMMA3,
    }
    return tables[family]
