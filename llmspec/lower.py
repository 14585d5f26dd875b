"""Lowering a validated spec into codegen's render plan.

Every value the generated file needs that is not written in the spec as-is (class names,
which init, which stacks, the config fields and their comments, the docstring) is computed
here, in one place; the templates only lay the plan out. The module is long because it is
that one place: every knob of the spec has its config fields and its docstring phrase here,
next to the others they combine with.
"""

from __future__ import annotations

import math
import re
from typing import Any

from codegen.plan import (
    ActivationKind,
    AttentionPlan,
    BlockPlan,
    ConfigField,
    EmbeddingsPlan,
    FeedForwardPlan,
    HeadPlan,
    InitPlan,
    LayerKind,
    LossKind,
    ModelPlan,
    NormPlan,
    PositionsPlan,
    StackPlan,
)
from llmspec.spec.loading import spec_sha256
from llmspec.spec.sections import BYTE_LEVEL_BASE, ModelSpec

# The activation applied inside each feed-forward; gated ones apply it to gate_proj.
BASE_ACTIVATION: dict[str, ActivationKind] = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu-tanh": "gelu-tanh",
    "silu": "silu",
    "swiglu": "silu",
    "geglu": "gelu",
    "geglu-tanh": "gelu-tanh",
}
ACTIVATION_NAMES = {
    "relu": "ReLU",
    "gelu": "GELU",
    "gelu-tanh": "GELU (tanh approximation)",
    "silu": "SiLU",
    "swiglu": "SwiGLU",
    "geglu": "GEGLU",
    "geglu-tanh": "GEGLU (tanh approximation, T5 v1.1's gated-gelu)",
}
LOSSES: dict[str, LossKind] = {
    "causal-lm": "causal-lm",
    "masked-lm": "masked-lm",
    "span-corruption": "seq2seq",
    "denoising": "seq2seq",
}
OBJECTIVES = {
    "causal-lm": "as a causal language model (next-token prediction)",
    "masked-lm": "as a masked language model (BERT's objective)",
    "span-corruption": "by span corruption (T5's objective)",
    "denoising": "by denoising with text infilling (BART's objective)",
}

REFERENCES = {
    "transformer": "Vaswani et al. 2017, Attention Is All You Need, "
    "https://arxiv.org/abs/1706.03762",
    "gpt2": "Radford et al. 2019, Language Models are Unsupervised Multitask Learners "
    "(GPT-2), https://openai.com/index/better-language-models/",
    "bert": "Devlin et al. 2019, BERT: Pre-training of Deep Bidirectional Transformers, "
    "https://arxiv.org/abs/1810.04805",
    "t5": "Raffel et al. 2020, Exploring the Limits of Transfer Learning with a Unified "
    "Text-to-Text Transformer (T5), https://arxiv.org/abs/1910.10683",
    "bart": "Lewis et al. 2020, BART: Denoising Sequence-to-Sequence Pre-training, "
    "https://arxiv.org/abs/1910.13461",
    "rmsnorm": "Zhang and Sennrich 2019, Root Mean Square Layer Normalization, "
    "https://arxiv.org/abs/1910.07467",
    "rope": "Su et al. 2021, RoFormer: Enhanced Transformer with Rotary Position Embedding, "
    "https://arxiv.org/abs/2104.09864",
    "alibi": "Press et al. 2022, Train Short, Test Long: Attention with Linear Biases (ALiBi), "
    "https://arxiv.org/abs/2108.12409",
    "glu": "Shazeer 2020, GLU Variants Improve Transformer, https://arxiv.org/abs/2002.05202",
    "gelu": "Hendrycks and Gimpel 2016, Gaussian Error Linear Units (GELUs), "
    "https://arxiv.org/abs/1606.08415",
    "gqa": "Ainslie et al. 2023, GQA: Training Generalized Multi-Query Transformer Models, "
    "https://arxiv.org/abs/2305.13245",
    "mqa": "Shazeer 2019, Fast Transformer Decoding: One Write-Head is All You Need, "
    "https://arxiv.org/abs/1911.02150",
    "gpt-neox": "Black et al. 2022, GPT-NeoX-20B: An Open-Source Autoregressive Language "
    "Model (parallel attention and feed-forward), https://arxiv.org/abs/2204.06745",
    "gemma2-blocks": "Gemma Team 2024, Gemma 2: Improving Open Language Models at a Practical "
    "Size (sandwich norms, logit soft-capping), https://arxiv.org/abs/2408.00118",
    "nanogpt": "The layout of this file follows Karpathy's nanoGPT, "
    "https://github.com/karpathy/nanoGPT",
}


def class_prefix(name: str) -> str:
    """The CapWords prefix of the generated classes: ``tiny-decoder`` -> ``TinyDecoder``,
    ``gpt2-small`` -> ``Gpt2Small``."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_]", name))


def _config_fields(spec: ModelSpec) -> tuple[ConfigField, ...]:
    v = spec.vocabulary
    vocab_comment = ""
    if v.tokenizer.type == "byte-level":
        specials = len(set(v.special_tokens.present().values()))
        vocab_comment = f"{BYTE_LEVEL_BASE} bytes + {specials} special tokens"
        if v.sentinels:
            vocab_comment += f" + {v.sentinels} sentinels"
        unused = v.size - BYTE_LEVEL_BASE - specials - v.sentinels
        if unused:
            vocab_comment += f" + {unused} unused"
    elif v.sentinels:
        vocab_comment = f"including {v.sentinels} span-corruption sentinels"
    fields = [
        ConfigField("vocab_size", "int", v.size, vocab_comment),
        ConfigField(
            "context_length", "int", spec.context_length, "the longest sequence trained on"
        ),
        ConfigField("d_model", "int", spec.d_model),
    ]
    if spec.architecture == "encoder-decoder":
        fields.append(ConfigField("n_encoder_layers", "int", spec.encoder_layers))
        fields.append(ConfigField("n_decoder_layers", "int", spec.num_decoder_layers))
    else:
        fields.append(ConfigField("n_layers", "int", spec.layers))
    heads = spec.attention.heads
    fields.append(ConfigField("n_heads", "int", heads))
    if spec.kv_heads < heads:
        comment = (
            "multi-query attention: one key/value head for all query heads"
            if spec.kv_heads == 1
            else f"grouped-query attention: each key/value head serves {heads // spec.kv_heads}"
            " query heads"
        )
        fields.append(ConfigField("n_kv_heads", "int", spec.kv_heads, comment))
    head_dim_comment = ""
    if spec.head_dim * heads != spec.d_model:
        head_dim_comment = f"set by the spec: n_heads * head_dim = {spec.head_dim * heads}"
    fields.append(ConfigField("head_dim", "int", spec.head_dim, head_dim_comment))
    fields += _attention_fields(spec)
    fields.append(ConfigField("d_ff", "int", spec.feed_forward.d_ff))
    fields.append(ConfigField("norm_eps", "float", spec.norm.eps))
    p = spec.positions
    if p.type == "learned":
        fields.append(
            ConfigField("max_positions", "int", p.max_positions, "rows of the position tables")
        )
        if p.offset:
            fields.append(
                ConfigField(
                    "position_offset", "int", p.offset, "added to position ids (BART uses 2)"
                )
            )
    elif p.type == "rope":
        fields.append(
            ConfigField("rope_base", "float", p.base, "the wavelength base of the rotations")
        )
        fields += _rope_fields(spec)
    elif p.type == "relative":
        fields.append(ConfigField("relative_buckets", "int", p.buckets))
        fields.append(
            ConfigField(
                "relative_max_distance",
                "int",
                p.max_distance,
                "longer distances share the last bucket",
            )
        )
    if spec.embeddings.token_types:
        fields.append(
            ConfigField("token_types", "int", spec.embeddings.token_types, "segment embeddings")
        )
    if spec.dropout.hidden:
        fields.append(
            ConfigField(
                "hidden_dropout",
                "float",
                spec.dropout.hidden,
                "on embeddings and residual branches, in training",
            )
        )
    if spec.dropout.attention:
        fields.append(
            ConfigField(
                "attention_dropout",
                "float",
                spec.dropout.attention,
                "on attention probabilities, in training",
            )
        )
    fields += _block_fields(spec)
    return tuple(fields)


def _attention_fields(spec: ModelSpec) -> list[ConfigField]:
    """The config fields of the attention knobs (none when they are off)."""
    a = spec.attention
    fields = []
    if a.scale is not None:
        fields.append(
            ConfigField("attention_scale", "float", a.scale, "scores * this, not head_dim ** -0.5")
        )
    if a.softcap is not None:
        fields.append(
            ConfigField(
                "attention_softcap", "float", a.softcap, "scores = cap * tanh(scores / cap)"
            )
        )
    if a.sliding_window is not None and _layer_pattern(spec):
        fields.append(
            ConfigField(
                "sliding_window",
                "int",
                a.sliding_window,
                "keys a local layer's query sees, itself included",
            )
        )
    return fields


def _layer_pattern(spec: ModelSpec) -> tuple[LayerKind, ...]:
    """The local/global pattern of the decoder's layers, at its shortest period; empty when no
    layer is windowed."""
    a = spec.attention
    if a.sliding_window is None:
        return ()
    pattern: tuple[LayerKind, ...] = tuple(a.layer_pattern or ("local",))
    if "local" not in pattern:
        return ()
    for period in range(1, len(pattern) + 1):
        if len(pattern) % period == 0 and pattern == pattern[:period] * (len(pattern) // period):
            return pattern[:period]
    return pattern


def _attention_phrase(spec: ModelSpec) -> str | None:
    """A docstring line on the attention knobs, or None when they are all off."""
    a = spec.attention
    parts = []
    pattern = _layer_pattern(spec)
    if pattern:
        layers = (
            "every layer"
            if pattern == ("local",)
            else f"the local layers of the pattern {', '.join(pattern)} (repeated)"
        )
        parts.append(f"a sliding window of {a.sliding_window} keys in {layers}")
    if a.qk_norm == "rmsnorm":
        parts.append("RMSNorm on each head's queries and keys")
    if a.scale is not None:
        parts.append(f"scores scaled by {a.scale:g}")
    if a.softcap is not None:
        parts.append(f"scores soft-capped at {a.softcap:g}")
    if a.qkv_bias is not None and a.qkv_bias != spec.bias:
        parts.append(
            "biases on the query, key and value projections (not the output projection)"
            if a.qkv_bias
            else "no biases on the query, key and value projections"
        )
    if not parts:
        return None
    return "Attention: " + ", ".join(parts) + "."


def rope_attention_factor(spec: ModelSpec) -> float:
    """What YaRN and LongRoPE multiply cos and sin by (1.0 for the other rope types), computed
    as transformers' ``_compute_yarn_parameters`` and ``_compute_longrope_parameters`` do; a
    LongRoPE without ``factor`` takes context_length / original_max_positions, as transformers
    takes max_position_embeddings / original_max_position_embeddings."""
    p = spec.positions
    scaling = p.scaling if p.type == "rope" else None
    if scaling is None or scaling.type not in ("yarn", "longrope"):
        return 1.0
    if scaling.attention_factor is not None:
        return scaling.attention_factor
    if scaling.type == "yarn":

        def mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        if scaling.mscale and scaling.mscale_all_dim:
            return float(
                mscale(scaling.factor, scaling.mscale)
                / mscale(scaling.factor, scaling.mscale_all_dim)
            )
        return mscale(scaling.factor)
    original = scaling.original_max_positions
    factor = scaling.factor
    if factor is None:
        factor = spec.context_length / original
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(original))


def _rope_fields(spec: ModelSpec) -> list[ConfigField]:
    """The config fields of rope's knobs (none for plain rope)."""
    p = spec.positions
    assert p.type == "rope"
    fields = []
    rotated = p.rotated(spec.head_dim)
    if rotated != spec.head_dim:
        fields.append(
            ConfigField(
                "rotary_dim",
                "int",
                rotated,
                "the first rotary_dim channels of a head rotate, the rest pass",
            )
        )
    if p.local_base is not None:
        fields.append(
            ConfigField("rope_local_base", "float", p.local_base, "local layers' base, unscaled")
        )
    scaling = p.scaling
    if scaling is None:
        return fields
    if scaling.type != "longrope":
        fields.append(ConfigField("rope_scaling_factor", "float", scaling.factor))
    if scaling.type == "llama3":
        fields.append(ConfigField("rope_low_freq_factor", "float", scaling.low_freq_factor))
        fields.append(ConfigField("rope_high_freq_factor", "float", scaling.high_freq_factor))
    if scaling.type == "yarn":
        fields.append(ConfigField("rope_beta_fast", "float", scaling.beta_fast))
        fields.append(ConfigField("rope_beta_slow", "float", scaling.beta_slow))
    if scaling.type == "longrope":
        fields.append(
            ConfigField(
                "rope_short_factor",
                "tuple[float, ...]",
                tuple(float(v) for v in scaling.short_factor),
                "frequency divisors up to the original length",
            )
        )
        fields.append(
            ConfigField(
                "rope_long_factor",
                "tuple[float, ...]",
                tuple(float(v) for v in scaling.long_factor),
                "frequency divisors beyond it",
            )
        )
    if scaling.type != "linear":
        fields.append(
            ConfigField(
                "rope_original_max_positions",
                "int",
                scaling.original_max_positions,
                "the length trained on before scaling",
            )
        )
    attention_factor = rope_attention_factor(spec)
    if attention_factor != 1.0:
        fields.append(
            ConfigField(
                "rope_attention_factor", "float", attention_factor, "multiplies cos and sin"
            )
        )
    return fields


ROPE_SCALING_NAMES = {
    "linear": "linear scaling",
    "dynamic": "dynamic NTK scaling",
    "llama3": "Llama 3 scaling",
    "yarn": "YaRN scaling",
    "longrope": "LongRoPE scaling",
}


def _rope_phrase(spec: ModelSpec) -> str:
    p = spec.positions
    assert p.type == "rope"
    parts = [f"base {p.base:g}"]
    rotated = p.rotated(spec.head_dim)
    if rotated != spec.head_dim:
        parts.append(f"the first {rotated} of {spec.head_dim} channels of each head")
    if p.scaling is not None:
        factor = getattr(p.scaling, "factor", None)
        by = f" by {factor:g}" if factor is not None else ""
        parts.append(ROPE_SCALING_NAMES[p.scaling.type] + by)
    if p.local_base is not None:
        parts.append(f"local layers base {p.local_base:g}")
    return f"rotary positions (RoPE, {', '.join(parts)})"


def _norm_bias(spec: ModelSpec) -> bool:
    """Whether the LayerNorms have shifts: norm.bias, else the spec's bias; RMSNorm never."""
    shift = spec.bias if spec.norm.bias is None else spec.norm.bias
    return shift and spec.norm.type == "layernorm"


def _block_fields(spec: ModelSpec) -> list[ConfigField]:
    """The config fields of the block and head knobs (none when they are off)."""
    if spec.head.softcap is None:
        return []
    return [
        ConfigField(
            "final_logit_softcap",
            "float",
            spec.head.softcap,
            "logits = cap * tanh(logits / cap)",
        )
    ]


def _block_phrase(spec: ModelSpec) -> str | None:
    """A docstring line on the block, norm and head knobs, or None when they are all off."""
    parts = []
    parallel = spec.block.parallel
    if parallel is not None:
        norms = "one shared norm" if parallel == "shared-norm" else "a norm each"
        parts.append(
            f"attention and feed-forward in parallel, x + attn(norm(x)) + mlp(norm(x)), "
            f"with {norms}"
        )
    if spec.norm.sandwich:
        parts.append("a norm also on each sublayer's output before the residual add (sandwich)")
    if spec.norm.unit_offset:
        parts.append("RMSNorm scaled by (1 + weight)")
    if spec.head.softcap is not None:
        parts.append(f"final logits soft-capped at {spec.head.softcap:g}")
    if not parts:
        return None
    return "Blocks: " + "; ".join(parts) + "."


def _positions_phrase(spec: ModelSpec) -> str:
    p = spec.positions
    if p.type == "learned":
        offset = f", ids offset by {p.offset}" if p.offset else ""
        return f"learned positions (up to {p.max_positions}{offset})"
    if p.type == "sinusoidal":
        return "sinusoidal positions"
    if p.type == "rope":
        return _rope_phrase(spec)
    if p.type == "alibi":
        return "ALiBi position bias"
    return (
        f"T5 relative position buckets ({p.buckets} buckets up to distance "
        f"{p.max_distance}), shared by the layers of each stack"
    )


def _description(spec: ModelSpec) -> tuple[str, ...]:
    a = spec.attention
    if spec.architecture == "encoder-decoder":
        depth = f"{spec.encoder_layers} encoder and {spec.num_decoder_layers} decoder layers"
    else:
        depth = f"{spec.layers} layers"
    kv = ""
    if spec.kv_heads == 1 and a.heads > 1:
        kv = " sharing one key/value head (multi-query attention)"
    elif spec.kv_heads < a.heads:
        kv = f" sharing {spec.kv_heads} key/value heads (grouped-query attention)"
    lines = [
        f"{depth}, d_model {spec.d_model}, {a.heads} attention heads of size {spec.head_dim}"
        f"{kv}, feed-forward width {spec.feed_forward.d_ff}.",
        f"{spec.norm.position.capitalize()}-norm "
        f"{'RMSNorm' if spec.norm.type == 'rmsnorm' else 'LayerNorm'} (eps {spec.norm.eps:g}), "
        f"{ACTIVATION_NAMES[spec.feed_forward.activation]} feed-forward, "
        f"{_positions_phrase(spec)}.",
    ]
    attention = _attention_phrase(spec)
    if attention is not None:
        lines.append(attention)
    if not a.scaled:
        lines.append(
            "Unscaled attention scores, with T5's initialization (which folds the 1/sqrt(head "
            "size) into the query projection)."
        )
    head = spec.head
    output = (
        "the output projection is the token embedding (tied)"
        if head.tied
        else "a separate output projection (lm_head)"
    )
    extras = []
    if head.rescale:
        extras.append("hidden states rescaled by 1/sqrt(d_model) before it")
    if head.transform:
        extras.append("a masked-LM transform (dense, activation, norm) before it")
    if head.logits_bias == "learned":
        extras.append("a learned logits bias")
    elif head.logits_bias == "buffer":
        extras.append("a fixed logits bias (a buffer, loaded with the weights)")
    if head.pooler:
        extras.append("a pooler (dense + tanh on the first token)")
    biases = (
        "Biases in every projection and LayerNorm" if spec.bias else "No biases"
    ) + f"; {output}"
    if spec.norm.type == "layernorm" and _norm_bias(spec) != spec.bias:
        biases = (
            "Biases in every projection, LayerNorms without shifts"
            if spec.bias
            else "No biases in the projections, LayerNorms with shifts"
        ) + f"; {output}"
    lines.append(biases + "".join(f"; {e}" for e in extras) + ".")
    block_line = _block_phrase(spec)
    if block_line is not None:
        lines.append(block_line)
    e = spec.embeddings
    embedding_parts = []
    if e.scale:
        embedding_parts.append("token embeddings scaled by sqrt(d_model)")
    if e.token_types:
        embedding_parts.append(f"{e.token_types} token type (segment) embeddings")
    if e.norm:
        embedding_parts.append("a norm after the embeddings")
    if embedding_parts:
        lines.append("Embeddings: " + ", ".join(embedding_parts) + ".")
    d = spec.dropout
    if d.hidden or d.attention:
        parts = []
        if d.hidden:
            parts.append(f"{d.hidden:g} on embeddings and residual branches")
        if d.attention:
            parts.append(f"{d.attention:g} on attention probabilities")
        lines.append("Dropout (in training): " + ", ".join(parts) + ".")
    if spec.precision.dtype != "fp32":
        lines.append(
            f"Precision {spec.precision.dtype}: llmspec.build casts the module to it (this file "
            "alone builds it in fp32)."
        )
    return tuple(lines)


def _references(spec: ModelSpec) -> tuple[str, ...]:
    keys = ["transformer"]
    keys.append(
        {
            "decoder-only": "gpt2",
            "encoder-only": "bert",
        }.get(spec.architecture, "bart" if spec.objective.type == "denoising" else "t5")
    )
    if spec.positions.type == "relative" and "t5" not in keys:
        keys.append("t5")
    if spec.norm.type == "rmsnorm":
        keys.append("rmsnorm")
    if spec.positions.type == "rope":
        keys.append("rope")
    if spec.positions.type == "alibi":
        keys.append("alibi")
    if spec.gated:
        keys.append("glu")
    if "gelu" in spec.feed_forward.activation or "geglu" in spec.feed_forward.activation:
        keys.append("gelu")
    if spec.kv_heads == 1 and spec.attention.heads > 1:
        keys.append("mqa")
    elif spec.kv_heads < spec.attention.heads:
        keys.append("gqa")
    if spec.block.parallel is not None:
        keys.append("gpt-neox")
    if spec.norm.sandwich or spec.head.softcap is not None:
        keys.append("gemma2-blocks")
    keys.append("nanogpt")
    return tuple(REFERENCES[k] for k in keys)


def _rope_plan(spec: ModelSpec) -> dict[str, Any]:
    """PositionsPlan's rope knobs (none for plain rope and other positions)."""
    p = spec.positions
    if p.type != "rope":
        return {}
    knobs: dict[str, Any] = {}
    if p.rotated(spec.head_dim) != spec.head_dim:
        knobs["partial"] = True
    if p.local_base is not None:
        knobs["local_base"] = True
    if p.scaling is not None:
        knobs["scaling"] = p.scaling.type
        if p.scaling.type == "yarn" and not p.scaling.truncate:
            knobs["yarn_truncate"] = False
    if rope_attention_factor(spec) != 1.0:
        knobs["attention_factor"] = True
    return knobs


def lower(spec: ModelSpec) -> ModelPlan:
    """The render plan of ``spec``: what ``codegen.render.render`` turns into source."""
    prefix = class_prefix(spec.name)
    init = InitPlan("normal" if spec.attention.scaled else "t5")
    scaled_residual = init.kind == "normal" and spec.norm.position == "pre"
    stacks: tuple[StackPlan, ...]
    if spec.architecture == "encoder-only":
        stacks = (StackPlan("encoder", "n_layers", causal=False, cross_attention=False),)
    elif spec.architecture == "decoder-only":
        stacks = (
            StackPlan(
                "decoder",
                "n_layers",
                causal=True,
                cross_attention=False,
                scaled_residual_init=scaled_residual,
            ),
        )
    else:
        stacks = (
            StackPlan(
                "encoder",
                "n_encoder_layers",
                causal=False,
                cross_attention=False,
                scaled_residual_init=scaled_residual,
            ),
            StackPlan(
                "decoder",
                "n_decoder_layers",
                causal=True,
                cross_attention=True,
                scaled_residual_init=scaled_residual,
            ),
        )
    activation = spec.feed_forward.activation
    article = "an" if spec.architecture[0] in "ae" else "a"
    return ModelPlan(
        spec_name=spec.name,
        spec_sha256=spec_sha256(spec),
        prefix=prefix,
        family=spec.architecture,
        summary=f"{prefix}: {article} {spec.architecture} transformer trained "
        f"{OBJECTIVES[spec.objective.type]}.",
        description=_description(spec),
        references=_references(spec),
        config=_config_fields(spec),
        norm=NormPlan(
            kind=spec.norm.type,
            position=spec.norm.position,
            bias=_norm_bias(spec),
            sandwich=spec.norm.sandwich,
            unit_offset=spec.norm.unit_offset,
        ),
        block=BlockPlan(parallel=spec.block.parallel),
        positions=PositionsPlan(
            kind=spec.positions.type,
            offset=spec.positions.offset if spec.positions.type == "learned" else 0,
            **_rope_plan(spec),
        ),
        attention=AttentionPlan(
            grouped=spec.kv_heads < spec.attention.heads,
            multi_query=spec.kv_heads == 1 and spec.attention.heads > 1,
            scaled=spec.attention.scaled,
            bias=spec.bias,
            dropout=spec.dropout.attention > 0,
            qkv_bias=spec.attention.qkv_bias,
            explicit_scale=spec.attention.scale is not None,
            softcap=spec.attention.softcap is not None,
            qk_norm=spec.attention.qk_norm == "rmsnorm",
            layer_pattern=_layer_pattern(spec),
        ),
        feed_forward=FeedForwardPlan(
            activation=BASE_ACTIVATION[activation],
            gated=spec.gated,
            bias=spec.bias,
            name=ACTIVATION_NAMES[activation].split(" (")[0],
        ),
        embeddings=EmbeddingsPlan(
            token_types=spec.embeddings.token_types > 0,
            norm=spec.embeddings.norm,
            scale=spec.embeddings.scale,
        ),
        head=HeadPlan(
            tied=spec.head.tied,
            transform=spec.head.transform,
            pooler=spec.head.pooler,
            logits_bias=spec.head.logits_bias,
            rescale=spec.head.rescale,
            bias=spec.bias,
            transform_activation=BASE_ACTIVATION[activation],
            softcap=spec.head.softcap is not None,
        ),
        stacks=stacks,
        loss=LOSSES[spec.objective.type],
        init=init,
        hidden_dropout=spec.dropout.hidden > 0,
    )
