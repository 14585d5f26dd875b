"""The export direction of each family's config translation: a spec to config.json.

:func:`hf_config` picks the Hugging Face family that holds a spec: its architecture and
positions name the candidates (:data:`CANDIDATES`: encoder-only BERT, RoBERTa or DistilBERT;
decoder-only GPT-2 or OPT with learned positions, with RoPE the family its knobs name
(:mod:`llmspec.importers.hf.export_modern`: Qwen2, Qwen3, Mistral, the Gemmas, GPT-NeoX; else
Llama); encoder-decoder T5 with relative buckets, BART with learned positions), and the first
whose fixed choices fit is taken; ``family`` names one instead (Phi-3 only so). It writes
that family's config.json, the inverse of its import translation in
:mod:`llmspec.importers.hf.families`. What a family fixes (GPT-2 is pre-norm LayerNorm with
biases, BERT post-norm with an embedding norm, ...) is a table, :data:`FIXED`; values that
depend on another field (BERT's MLM head, T5's rescaled output, RoBERTa's positions counted
from the pad id) are checked by the family's translation. A spec no candidate holds is refused
naming every field in which it differs from the closest. :mod:`llmspec.importers.hf.export`
then reads the written config and weights back with the importer and refuses any difference
the tables do not know of (a knob added later). Imported families with no translation here go
out as the family with the same layers: Mistral (no binding window) as Llama, mT5 as T5 v1.1,
XLM-RoBERTa as RoBERTa.

Decisions (where DESIGN.md is silent):

* Dropout rates are written where the family has a field (Llama has no hidden dropout); they
  do not change the model's outputs. ``context_length`` is the position table's size where
  the family has one (GPT-2's ``n_positions``, Llama's ``max_position_embeddings``, T5's
  ``n_positions``) and ``model_max_length`` in tokenizer_config.json.
* BERT with its MLM transform is a ``BertForMaskedLM``, without it a ``BertModel`` (hidden
  states and pooler; transformers' BertModel has no logits, as the imported one had none).
* T5's ``tie_word_embeddings`` is its output rescale, as transformers reads it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llmspec.importers.hf.export_modern import (
    MODERN_FIXED,
    MODERN_TRANSLATIONS,
    modern_family,
    modern_table,
)
from llmspec.importers.hf.mapping import HFExportError, HFImportError, WeightTable
from llmspec.importers.hf.rope import rope_parameters_to_hf
from llmspec.importers.hf.tables import (
    BART,
    BERT,
    DISTILBERT,
    GPT2,
    LLAMA,
    OPT,
    ROBERTA,
    T5,
    T5_GATED,
)
from llmspec.spec.sections import ModelSpec

__all__ = ["FIXED", "GATED_NAMES", "PLAIN_NAMES", "T5_PROJ", "HFConfig", "hf_config"]

# Our activation names -> transformers' (one spelling each of the import's tables, inverted).
PLAIN_NAMES = {"gelu": "gelu", "gelu-tanh": "gelu_new", "relu": "relu", "silu": "silu"}
GATED_NAMES = {"geglu": "gelu", "geglu-tanh": "gelu_pytorch_tanh", "swiglu": "silu"}
# T5 names its feed-forward by feed_forward_proj; "gated-gelu" is its tanh gelu
T5_PROJ = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu-tanh": "gelu_new",
    "silu": "silu",
    "geglu": "gated-gelu_python",
    "geglu-tanh": "gated-gelu",
    "swiglu": "gated-silu",
}

# What each family fixes: a spec field (dotted) -> the value the family has. "ungated" and
# "gated" stand for the feed-forward's kind; "whole heads" for head_dim * heads = d_model.
FIXED: dict[str, dict[str, Any]] = {
    "bert": {
        "architecture": "encoder-only",
        "norm.type": "layernorm",
        "norm.position": "post",
        "positions.type": "learned",
        "positions.offset": 0,
        "bias": True,
        "attention.scaled": True,
        "attention.kv_heads": "heads",
        "attention.head_dim": "whole heads",
        "feed_forward.activation": "ungated",
        "embeddings.token_types": "at least 1",  # BERT adds token type 0 to every token
        "embeddings.norm": True,
        "embeddings.scale": False,
        "head.rescale": False,
        "objective.type": "masked-lm",
    },
    "roberta": {
        "architecture": "encoder-only",
        "norm.type": "layernorm",
        "norm.position": "post",
        "positions.type": "learned",
        "positions.offset": "at least 1",  # pad_token_id + 1
        "bias": True,
        "attention.scaled": True,
        "attention.kv_heads": "heads",
        "attention.head_dim": "whole heads",
        "feed_forward.activation": "ungated",
        "embeddings.token_types": "at least 1",
        "embeddings.norm": True,
        "embeddings.scale": False,
        "head.rescale": False,
        "objective.type": "masked-lm",
    },
    "distilbert": {
        "architecture": "encoder-only",
        "norm.type": "layernorm",
        "norm.position": "post",
        "norm.eps": 1e-12,  # DistilBERT's LayerNorms; its config has no eps
        "positions.type": "learned",
        "positions.offset": 0,
        "bias": True,
        "attention.scaled": True,
        "attention.kv_heads": "heads",
        "attention.head_dim": "whole heads",
        "feed_forward.activation": "ungated",
        "embeddings.token_types": 0,
        "embeddings.norm": True,
        "embeddings.scale": False,
        "head.pooler": False,
        "head.rescale": False,
        "objective.type": "masked-lm",
    },
    "gpt2": {
        "architecture": "decoder-only",
        "norm.type": "layernorm",
        "norm.position": "pre",
        "positions.type": "learned",
        "positions.offset": 0,
        "bias": True,
        "attention.kv_heads": "heads",
        "attention.head_dim": "whole heads",
        "feed_forward.activation": "ungated",
        "embeddings.token_types": 0,
        "embeddings.norm": False,
        "embeddings.scale": False,
        "head.transform": False,
        "head.pooler": False,
        "head.logits_bias": "none",
        "head.rescale": False,
        "objective.type": "causal-lm",
    },
    "opt": {
        "architecture": "decoder-only",
        "norm.type": "layernorm",
        "norm.eps": 1e-5,  # OPT's LayerNorms take torch's default; its config has no eps
        "positions.type": "learned",
        "positions.offset": 2,
        "bias": True,
        "attention.scaled": True,
        "attention.kv_heads": "heads",
        "attention.head_dim": "whole heads",
        "feed_forward.activation": "ungated",
        "embeddings.token_types": 0,
        "embeddings.norm": False,
        "embeddings.scale": False,
        "head.transform": False,
        "head.pooler": False,
        "head.logits_bias": "none",
        "head.rescale": False,
        "objective.type": "causal-lm",
    },
    "llama": {
        "architecture": "decoder-only",
        "norm.type": "rmsnorm",
        "norm.position": "pre",
        "positions.type": "rope",
        "attention.scaled": True,
        "feed_forward.activation": "gated",
        "embeddings.token_types": 0,
        "embeddings.norm": False,
        "embeddings.scale": False,
        "head.transform": False,
        "head.pooler": False,
        "head.logits_bias": "none",
        "head.rescale": False,
        "objective.type": "causal-lm",
    },
    "t5": {
        "architecture": "encoder-decoder",
        "norm.type": "rmsnorm",
        "norm.position": "pre",
        "positions.type": "relative",
        "bias": False,
        "attention.scaled": False,
        "attention.kv_heads": "heads",
        "embeddings.token_types": 0,
        "embeddings.norm": False,
        "embeddings.scale": False,
        "head.transform": False,
        "head.pooler": False,
        "head.logits_bias": "none",
        "objective.type": "span-corruption",
    },
    "bart": {
        "architecture": "encoder-decoder",
        "norm.type": "layernorm",
        "norm.position": "post",
        "norm.eps": 1e-5,  # BART's LayerNorms take torch's default; its config has no eps
        "positions.type": "learned",
        "positions.offset": 2,
        "bias": True,
        "attention.scaled": True,
        "attention.kv_heads": "heads",
        "attention.head_dim": "whole heads",
        "feed_forward.activation": "ungated",
        "embeddings.token_types": 0,
        "embeddings.norm": True,
        "head.transform": False,
        "head.pooler": False,
        "head.logits_bias": ("none", "buffer"),
        "head.rescale": False,
        "objective.type": "denoising",
    },
    **MODERN_FIXED,  # qwen2, qwen3, mistral, gemma, gemma2, gemma3_text, gpt_neox
}


MISSING = object()


def spec_value(spec: ModelSpec, path: str) -> Any:
    """The spec's value at a dotted ``path`` (derived values for kv_heads and head_dim;
    :data:`MISSING` where the spec's variant has no such field)."""
    if path == "attention.kv_heads":
        return spec.kv_heads
    if path == "attention.head_dim":
        return spec.head_dim
    value: Any = spec
    for part in path.split("."):
        value = getattr(value, part, MISSING)
    return value


def _fixed_differences(spec: ModelSpec, family: str) -> list[str]:
    differences = []
    for path, wanted in FIXED[family].items():
        value = spec_value(spec, path)
        if value is MISSING:  # a field of another variant (positions.offset of rope)
            continue
        if wanted == "heads":
            ok, shown = value == spec.attention.heads, "kv_heads = heads"
        elif wanted == "whole heads":
            ok, shown = value * spec.attention.heads == spec.d_model, "head_dim = d_model // heads"
        elif wanted == "at least 1":
            ok, shown = value >= 1, "at least 1"
        elif wanted == "ungated":
            ok, shown = value in PLAIN_NAMES, f"one of {', '.join(PLAIN_NAMES)}"
        elif wanted == "gated":
            ok, shown = value in GATED_NAMES, f"one of {', '.join(GATED_NAMES)}"
        elif isinstance(wanted, tuple):
            ok, shown = value in wanted, " or ".join(map(str, wanted))
        else:
            ok, shown = value == wanted, _shown(wanted)
        if not ok:
            differences.append(f"{path} is {_shown(value)} ({family} has {shown})")
    return differences


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# The families that may hold a spec, by its architecture and positions, in order of preference
CANDIDATES: dict[str, dict[str, tuple[str, ...]]] = {
    "encoder-only": {"learned": ("bert", "roberta", "distilbert")},
    "decoder-only": {"learned": ("gpt2", "opt"), "rope": ("llama", *MODERN_TRANSLATIONS)},
    "encoder-decoder": {"relative": ("t5",), "learned": ("bart",)},
}


def candidates(spec: ModelSpec) -> tuple[str, ...]:
    """The families that may hold ``spec``, by its architecture and positions."""
    positions = spec.positions.type
    choices = CANDIDATES[spec.architecture]
    if positions not in choices:
        offers = ", ".join(f"{'/'.join(fs)} ({kind})" for kind, fs in choices.items())
        raise HFExportError(
            f"positions.type {positions} cannot be exported to Hugging Face: no {spec.architecture}"
            f" family llmspec exports has it; the families and their positions: {offers}"
        )
    if spec.architecture == "decoder-only" and positions == "rope":  # the family its knobs name
        return (modern_family(spec) or "llama",)
    return choices[positions]


def _asked(spec: ModelSpec, family: str) -> tuple[str, ...]:
    """``family`` as the only candidate, if it has the spec's architecture and positions."""
    if family not in TRANSLATIONS:
        raise HFExportError(
            f"family {family!r} is not one llmspec exports to Hugging Face; supported: "
            f"{', '.join(sorted(TRANSLATIONS))}"
        )
    fitting = CANDIDATES[spec.architecture].get(spec.positions.type, ())
    if family not in fitting:
        raise HFExportError(
            f"spec {spec.name!r} cannot be exported to Hugging Face as {family}: a "
            f"{spec.architecture} model with {spec.positions.type} positions is one of "
            f"{', '.join(fitting) or 'no family llmspec exports'}"
        )
    return (family,)


@dataclass
class HFConfig:
    """A spec's Hugging Face config: family, weight table and config.json's content."""

    family: str
    table: WeightTable
    config: dict[str, Any]

    @property
    def tied(self) -> bool:
        """Whether transformers ties the output projection to the embeddings for this config."""
        return self.config.get("tie_word_embeddings") is not False


def _refuse(spec: ModelSpec, family: str, differences: list[str], among: tuple[str, ...]) -> None:
    closest = f" (the closest of {', '.join(among)})" if len(among) > 1 else ""
    raise HFExportError(
        f"spec {spec.name!r} cannot be exported to Hugging Face: as the {family} family"
        f"{closest} it differs in {'; '.join(differences)}"
    )


def _ids(ids: dict[str, int], *roles: str) -> dict[str, int | None]:
    return {f"{role}_token_id": ids.get(role) for role in roles}


def _bert(spec: ModelSpec, ids: dict[str, int]) -> tuple[dict[str, Any], list[str]]:
    head = spec.head
    problems = _mlm_head(spec, "Bert")
    architecture = "BertForMaskedLM" if head.transform else "BertModel"
    assert spec.positions.type == "learned"
    config = {
        "architectures": [architecture],
        "model_type": "bert",
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.attention.heads,
        "intermediate_size": spec.feed_forward.d_ff,
        "hidden_act": PLAIN_NAMES.get(spec.feed_forward.activation),
        "hidden_dropout_prob": spec.dropout.hidden,
        "attention_probs_dropout_prob": spec.dropout.attention,
        "max_position_embeddings": spec.positions.max_positions,
        "type_vocab_size": spec.embeddings.token_types,
        "layer_norm_eps": spec.norm.eps,
        "position_embedding_type": "absolute",
        "is_decoder": False,
        "add_cross_attention": False,
        "tie_word_embeddings": head.tied,
        **_ids(ids, "pad", "bos", "eos"),
    }
    return config, problems


def _mlm_head(spec: ModelSpec, model: str) -> list[str]:
    """What a BERT-like family's head cannot hold: its ``...ForMaskedLM`` head has a learned
    bias; its bare ``...Model`` no head at all."""
    head = spec.head
    problems = []
    if head.transform and head.logits_bias != "learned":
        problems.append(
            f"head.logits_bias is {head.logits_bias} ({model}ForMaskedLM's head has a learned bias)"
        )
    if not head.transform and head.logits_bias != "none":
        problems.append(
            f"head.logits_bias is {head.logits_bias} without head.transform ({model}Model)"
        )
    if not head.transform and not head.tied:
        problems.append(f"head.tied is false without head.transform ({model}Model has no head)")
    return problems


def _roberta(spec: ModelSpec, ids: dict[str, int]) -> tuple[dict[str, Any], list[str]]:
    assert spec.positions.type == "learned"
    offset = spec.positions.offset
    problems = _mlm_head(spec, "Roberta")
    if ids.get("pad") != offset - 1:
        problems.append(
            f"positions.offset is {offset} (RoBERTa counts positions from pad_token_id + 1, and "
            f"the pad token's id is {ids.get('pad')})"
        )
    if spec.head.transform and spec.feed_forward.activation != "gelu":
        problems.append(
            f"feed_forward.activation is {spec.feed_forward.activation} with head.transform "
            "(RoBERTa's MLM head applies gelu)"
        )
    config = {
        "architectures": ["RobertaForMaskedLM" if spec.head.transform else "RobertaModel"],
        "model_type": "roberta",
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.attention.heads,
        "intermediate_size": spec.feed_forward.d_ff,
        "hidden_act": PLAIN_NAMES.get(spec.feed_forward.activation),
        "hidden_dropout_prob": spec.dropout.hidden,
        "attention_probs_dropout_prob": spec.dropout.attention,
        "max_position_embeddings": spec.positions.max_positions + offset,
        "type_vocab_size": spec.embeddings.token_types,
        "layer_norm_eps": spec.norm.eps,
        "position_embedding_type": "absolute",
        "is_decoder": False,
        "add_cross_attention": False,
        "tie_word_embeddings": spec.head.tied,
        **_ids(ids, "pad", "bos", "eos"),
    }
    return config, problems


def _distilbert(spec: ModelSpec, ids: dict[str, int]) -> tuple[dict[str, Any], list[str]]:
    assert spec.positions.type == "learned"
    config = {
        "architectures": ["DistilBertForMaskedLM" if spec.head.transform else "DistilBertModel"],
        "model_type": "distilbert",
        "dim": spec.d_model,
        "n_layers": spec.layers,
        "n_heads": spec.attention.heads,
        "hidden_dim": spec.feed_forward.d_ff,
        "activation": PLAIN_NAMES.get(spec.feed_forward.activation),
        "max_position_embeddings": spec.positions.max_positions,
        "sinusoidal_pos_embds": False,
        "dropout": spec.dropout.hidden,
        "attention_dropout": spec.dropout.attention,
        "tie_word_embeddings": spec.head.tied,
        **_ids(ids, "pad"),
    }
    return config, _mlm_head(spec, "DistilBert")


def _opt(spec: ModelSpec, ids: dict[str, int]) -> tuple[dict[str, Any], list[str]]:
    assert spec.positions.type == "learned"
    config = {
        "architectures": ["OPTForCausalLM"],
        "model_type": "opt",
        "hidden_size": spec.d_model,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.attention.heads,
        "ffn_dim": spec.feed_forward.d_ff,
        "word_embed_proj_dim": spec.d_model,
        "max_position_embeddings": spec.positions.max_positions,
        "do_layer_norm_before": spec.norm.position == "pre",
        "_remove_final_layer_norm": False,
        "activation_function": PLAIN_NAMES.get(spec.feed_forward.activation),
        "dropout": spec.dropout.hidden,
        "attention_dropout": spec.dropout.attention,
        "enable_bias": True,
        "layer_norm_elementwise_affine": True,
        "tie_word_embeddings": spec.head.tied,
        **_ids(ids, "pad", "bos", "eos"),
    }
    return config, []


def _gpt2(spec: ModelSpec, ids: dict[str, int]) -> tuple[dict[str, Any], list[str]]:
    assert spec.positions.type == "learned"
    config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_embd": spec.d_model,
        "n_layer": spec.layers,
        "n_head": spec.attention.heads,
        "n_inner": spec.feed_forward.d_ff,
        "n_positions": spec.positions.max_positions,
        "activation_function": PLAIN_NAMES.get(spec.feed_forward.activation),
        "resid_pdrop": spec.dropout.hidden,
        "embd_pdrop": spec.dropout.hidden,
        "attn_pdrop": spec.dropout.attention,
        "layer_norm_epsilon": spec.norm.eps,
        "scale_attn_weights": spec.attention.scaled,
        "scale_attn_by_inverse_layer_idx": False,
        "add_cross_attention": False,
        "tie_word_embeddings": spec.head.tied,
        **_ids(ids, "pad", "bos", "eos"),
    }
    return config, []


def _llama(spec: ModelSpec, ids: dict[str, int]) -> tuple[dict[str, Any], list[str]]:
    assert spec.positions.type == "rope"
    base = spec.positions.base
    problems = []
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": base}
    if spec.positions.rotated(spec.head_dim) != spec.head_dim:
        problems.append("positions rotate part of each head (llama rotates every channel)")
    elif spec.positions.local_base is not None:
        problems.append("positions.local_base is set (llama has no local layers)")
    else:
        try:
            rope_parameters = rope_parameters_to_hf(
                spec.positions, spec.head_dim, spec.context_length
            )
        except HFImportError as err:
            problems.append(str(err))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": spec.d_model,
        "intermediate_size": spec.feed_forward.d_ff,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.attention.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": GATED_NAMES.get(spec.feed_forward.activation),
        "max_position_embeddings": spec.context_length,
        "rms_norm_eps": spec.norm.eps,
        # transformers 5 reads rope_parameters (with the scaling), 4 reads rope_theta
        "rope_theta": base,
        "rope_parameters": rope_parameters,
        "attention_bias": spec.bias,
        "mlp_bias": spec.bias,
        "attention_dropout": spec.dropout.attention,
        "tie_word_embeddings": spec.head.tied,
        **_ids(ids, "pad", "bos", "eos"),
    }
    return config, problems


def _t5(spec: ModelSpec, ids: dict[str, int]) -> tuple[dict[str, Any], list[str]]:
    assert spec.positions.type == "relative"
    problems = []
    if spec.head.rescale and not spec.head.tied:
        problems.append("head.rescale is true with head.tied false (T5 rescales tied heads only)")
    config = {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "d_model": spec.d_model,
        "d_kv": spec.head_dim,
        "d_ff": spec.feed_forward.d_ff,
        "num_layers": spec.layers,
        "num_decoder_layers": spec.num_decoder_layers,
        "num_heads": spec.attention.heads,
        "relative_attention_num_buckets": spec.positions.buckets,
        "relative_attention_max_distance": spec.positions.max_distance,
        "dropout_rate": spec.dropout.hidden,
        "layer_norm_epsilon": spec.norm.eps,
        "feed_forward_proj": T5_PROJ[spec.feed_forward.activation],
        "is_encoder_decoder": True,
        "n_positions": spec.context_length,
        "tie_word_embeddings": spec.head.rescale,
        "scale_decoder_outputs": spec.head.rescale,
        **_ids(ids, "pad", "eos"),
        "decoder_start_token_id": ids.get(spec.decoder_start),
    }
    return config, problems


def _bart(spec: ModelSpec, ids: dict[str, int]) -> tuple[dict[str, Any], list[str]]:
    assert spec.positions.type == "learned"
    activation = PLAIN_NAMES.get(spec.feed_forward.activation)
    config = {
        "architectures": ["BartForConditionalGeneration"],
        "model_type": "bart",
        "d_model": spec.d_model,
        "encoder_layers": spec.layers,
        "decoder_layers": spec.num_decoder_layers,
        "encoder_attention_heads": spec.attention.heads,
        "decoder_attention_heads": spec.attention.heads,
        "encoder_ffn_dim": spec.feed_forward.d_ff,
        "decoder_ffn_dim": spec.feed_forward.d_ff,
        "activation_function": activation,
        "max_position_embeddings": spec.positions.max_positions,
        "scale_embedding": spec.embeddings.scale,
        "dropout": spec.dropout.hidden,
        "attention_dropout": spec.dropout.attention,
        "activation_dropout": 0.0,
        "is_encoder_decoder": True,
        "tie_word_embeddings": spec.head.tied,
        "forced_eos_token_id": None,  # BartConfig's default 2 would force a token at the end
        **_ids(ids, "pad", "bos", "eos"),
        "decoder_start_token_id": ids.get(spec.decoder_start),
    }
    return config, []


Translation = Callable[[ModelSpec, dict[str, int]], tuple[dict[str, Any], list[str]]]
TRANSLATIONS: dict[str, Translation] = {
    "bert": _bert,
    "roberta": _roberta,
    "distilbert": _distilbert,
    "gpt2": _gpt2,
    "opt": _opt,
    "llama": _llama,
    "t5": _t5,
    "bart": _bart,
    **MODERN_TRANSLATIONS,
}


def hf_config(spec: ModelSpec, ids: dict[str, int], family: str | None = None) -> HFConfig:
    """The Hugging Face family, weight table and config.json for ``spec``, whose special tokens
    have the ids ``ids`` (role -> id): the first of its :func:`candidates` that holds it, or
    ``family`` when given. Raises :class:`HFExportError` naming every field in which the spec
    differs from the closest family."""
    among = candidates(spec) if family is None else _asked(spec, family)
    tried: list[tuple[str, list[str]]] = []
    for family in among:
        differences = _fixed_differences(spec, family)
        config: dict[str, Any] = {}
        if not differences:
            config, differences = TRANSLATIONS[family](spec, ids)
        if not differences:
            config["vocab_size"] = spec.vocabulary.size
            return HFConfig(family, _table(spec, family), dict(sorted(config.items())))
        tried.append((family, differences))
    family, differences = min(tried, key=lambda t: len(t[1]))
    _refuse(spec, family, differences, among)
    raise AssertionError("unreachable")


def _table(spec: ModelSpec, family: str) -> WeightTable:
    if family == "t5":
        return T5_GATED if spec.gated else T5
    if family in MODERN_TRANSLATIONS:
        return modern_table(spec, family)
    tables = {
        "bert": BERT,
        "roberta": ROBERTA,
        "distilbert": DISTILBERT,
        "gpt2": GPT2,
        "opt": OPT,
        "llama": LLAMA,
        "bart": BART,
    }
    return tables[family]
