"""The spec's cross-field rules: what no single section can check on its own.

Each rule names the top-level fields it reads, so that rules whose inputs are valid still run
(and are reported) when other sections have field errors: :func:`cross_field_problems` is called
by :class:`~llmspec.spec.sections.ModelSpec`'s validator and, with the valid fields only, by
:func:`llmspec.spec.loading.load_spec` next to the field errors. A rule takes the spec (or a
namespace of its valid sections) and returns ``(path, message)`` pairs. The rules are one list
(:data:`RULES`, in registration order) so that their problems are reported in a stable order;
hence one module, however many knobs the spec grows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from llmspec.spec.sections import BYTE_LEVEL_BASE, OBJECTIVE_ARCHITECTURE, ModelSpec
from llmspec.spec.yaml_safe import MAX_INT
from runtime.decoding import chain_problems

RuleProblems = list[tuple[tuple[str | int, ...], str]]
Rule = Callable[[Any], RuleProblems]
RULES: list[tuple[frozenset[str], Rule]] = []


def rule(*needs: str) -> Callable[[Rule], Rule]:
    def register(function: Rule) -> Rule:
        RULES.append((frozenset(needs), function))
        return function

    return register


def _divisors(n: int) -> str:
    if n > 4096:
        return "a divisor"
    values = [str(d) for d in range(1, n + 1) if n % d == 0]
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


@rule("attention", "d_model")
def _heads_fit(s: Any) -> RuleProblems:
    a = s.attention
    out: RuleProblems = []
    if a.head_dim is None and s.d_model % a.heads:
        out.append(
            (
                ("attention", "heads"),
                f"heads ({a.heads}) must divide d_model ({s.d_model}); try "
                f"{_divisors(s.d_model)}, "
                "or set attention.head_dim",
            )
        )
    if a.kv_heads is not None and a.heads % a.kv_heads:
        out.append(
            (
                ("attention", "kv_heads"),
                f"kv_heads ({a.kv_heads}) must divide heads ({a.heads}); try {_divisors(a.heads)}",
            )
        )
    return out


@rule("attention", "architecture", "layers", "norm")
def _attention_knobs_fit(s: Any) -> RuleProblems:
    a = s.attention
    out: RuleProblems = []
    if a.scale is not None and not a.scaled:
        out.append(
            (
                ("attention", "scale"),
                f"scale ({a.scale:g}) is the score scale of scaled attention, but scaled is "
                "false; drop scale, or set scaled: true",
            )
        )
    if a.sliding_window is not None and s.architecture != "decoder-only":
        out.append(
            (
                ("attention", "sliding_window"),
                f"a sliding window is supported for decoder-only models, not {s.architecture} "
                "ones (their windows are two-sided, as ModernBERT's); remove sliding_window",
            )
        )
    if a.layer_pattern is not None:
        path = ("attention", "layer_pattern")
        if not a.layer_pattern:
            out.append(
                (
                    path,
                    "the pattern is empty; list the layers' kinds, e.g. [local, global], or "
                    "remove layer_pattern (with sliding_window every layer is then local)",
                )
            )
        if a.sliding_window is None and "local" in a.layer_pattern:
            out.append(
                (
                    path,
                    "local layers attend within a sliding window, but there is none; set "
                    "attention.sliding_window, or make every layer global",
                )
            )
        if len(a.layer_pattern) > s.layers:
            out.append(
                (
                    path,
                    f"the pattern has {len(a.layer_pattern)} entries but the model has "
                    f"{s.layers} layers; give at most {s.layers} (it repeats over the layers)",
                )
            )
    if a.qk_norm == "rmsnorm" and s.norm.type != "rmsnorm":
        out.append(
            (
                ("attention", "qk_norm"),
                f"qk_norm rmsnorm uses the model's RMSNorm, but norm.type is {s.norm.type}; "
                "set norm.type: rmsnorm (as Qwen3 and Gemma 3), or qk_norm: none",
            )
        )
    return out


@rule("attention", "d_model", "positions")
def _rope_even(s: Any) -> RuleProblems:
    head_dim = s.attention.head_dim or s.d_model // s.attention.heads
    if s.positions.type == "rope" and head_dim % 2:
        return [
            (
                ("positions", "type"),
                f"rope rotates pairs of channels, so the head dim must be even, "
                f"got {head_dim}; change attention.head_dim or d_model",
            )
        ]
    if s.positions.type == "sinusoidal" and s.d_model % 2:
        return [(("d_model",), f"sinusoidal positions need an even d_model, got {s.d_model}")]
    return []


@rule("attention", "d_model", "positions", "layers")
def _rope_knobs(s: Any) -> RuleProblems:
    """Partial rotary and rope scaling fit the head: an even rotated width within the head,
    one longrope factor per rotated pair, llama3 and yarn ranges the right way round."""
    p = s.positions
    if p.type != "rope":
        return []
    head_dim = s.attention.head_dim or s.d_model // s.attention.heads
    out: RuleProblems = []
    if p.rotary_dim is not None and p.partial is not None:
        out.append(
            (
                ("positions", "partial"),
                f"give rotary_dim ({p.rotary_dim}) or partial ({p.partial}), not both; "
                f"partial {p.partial} of head dim {head_dim} is rotary_dim "
                f"{int(head_dim * p.partial)}",
            )
        )
        return out
    if p.local_base is not None:
        local = [s.attention.layer_is_local(i) for i in range(s.layers)]
        if not any(local):
            out.append(
                (
                    ("positions", "local_base"),
                    "local_base is the base of local (windowed) layers, but no layer is local; "
                    "set attention.sliding_window and attention.layer_pattern (Gemma 3: five "
                    "local layers, then one global), or remove local_base",
                )
            )
        elif all(local):
            out.append(
                (
                    ("positions", "local_base"),
                    "every layer is local, so local_base would be the only base; set base to "
                    f"{p.local_base} and remove local_base",
                )
            )
    rotated = p.rotated(head_dim)
    where = ("positions", "partial" if p.partial is not None else "rotary_dim")
    if p.rotary_dim is not None and rotated > head_dim:
        out.append((where, f"rotary_dim ({rotated}) must not exceed the head dim ({head_dim})"))
        return out
    if rotated != head_dim and (rotated < 2 or rotated % 2):
        given = f"partial {p.partial} of head dim {head_dim} gives " if p.partial else ""
        out.append(
            (
                where,
                f"rope rotates pairs of channels, so the rotated width must be even and at "
                f"least 2; {given}rotary_dim {rotated}; choose an even rotary_dim up to "
                f"{head_dim}",
            )
        )
        return out
    scaling = p.scaling
    if scaling is None:
        return out
    if scaling.type == "longrope":
        pairs = rotated // 2
        for name in ("short_factor", "long_factor"):
            values = getattr(scaling, name)
            if len(values) != pairs:
                out.append(
                    (
                        ("positions", "scaling", name),
                        f"longrope needs one factor per rotated channel pair: {pairs} "
                        f"(rotary dim {rotated} / 2), got {len(values)}",
                    )
                )
            elif any(v <= 0 for v in values):
                out.append(
                    (
                        ("positions", "scaling", name),
                        "longrope factors divide frequencies, so each must be > 0",
                    )
                )
    if scaling.type == "dynamic" and rotated <= 2:
        out.append(
            (
                ("positions", "scaling", "type"),
                f"dynamic scaling raises the base to the power d / (d - 2) of the rotated width "
                f"d, so d must be more than 2, got {rotated}",
            )
        )
    if scaling.type == "llama3" and scaling.high_freq_factor <= scaling.low_freq_factor:
        out.append(
            (
                ("positions", "scaling", "high_freq_factor"),
                f"high_freq_factor ({scaling.high_freq_factor}) must be greater than "
                f"low_freq_factor ({scaling.low_freq_factor}); Llama 3.1 uses 4.0 and 1.0",
            )
        )
    if scaling.type == "yarn" and scaling.beta_fast <= scaling.beta_slow:
        out.append(
            (
                ("positions", "scaling", "beta_fast"),
                f"beta_fast ({scaling.beta_fast}) must be greater than beta_slow "
                f"({scaling.beta_slow}); YaRN's defaults are 32 and 1",
            )
        )
    if (
        scaling.type == "yarn"
        and (scaling.mscale is None) != (scaling.mscale_all_dim is None)
        and scaling.attention_factor is None
    ):
        out.append(
            (
                ("positions", "scaling", "mscale"),
                "mscale and mscale_all_dim set the attention factor together; give both, "
                "neither, or an explicit attention_factor",
            )
        )
    return out


@rule("objective", "architecture")
def _objective_fits(s: Any) -> RuleProblems:
    wanted = OBJECTIVE_ARCHITECTURE[s.objective.type]
    if wanted != s.architecture:
        fits = [o for o, a in OBJECTIVE_ARCHITECTURE.items() if a == s.architecture]
        return [
            (
                ("objective", "type"),
                f"{s.objective.type} trains {wanted} models, not {s.architecture}; "
                f"use {' or '.join(fits)}, or change architecture to {wanted}",
            )
        ]
    return []


@rule("objective")
def _masked_split(s: Any) -> RuleProblems:
    o = s.objective
    if o.type == "masked-lm" and o.mask_fraction + o.random_fraction > 1 + 1e-9:
        return [
            (
                ("objective", "random_fraction"),
                f"mask_fraction ({o.mask_fraction}) + random_fraction ({o.random_fraction}) "
                "must not exceed 1; the rest keep their token (BERT uses 0.8 and 0.1)",
            )
        ]
    return []


@rule("vocabulary", "objective", "architecture", "context_length")
def _special_tokens_fit(s: Any) -> RuleProblems:
    v = s.vocabulary
    present = v.special_tokens.present()
    out: RuleProblems = []
    needs = {
        "masked-lm": ["mask", "pad"],
        "denoising": ["mask", "pad", "eos"],
        "span-corruption": ["pad", "eos"],
    }.get(s.objective.type, [])
    for name in needs:
        if name not in present:
            out.append(
                (
                    ("vocabulary", "special_tokens", name),
                    f"{s.objective.type} needs {'an' if name[0] in 'aeiou' else 'a'} {name} "
                    f'token; add e.g. {name}: "<{name}>"',
                )
            )
    if s.objective.type == "span-corruption":
        noise = round(s.context_length * s.objective.noise_density)
        spans = max(1, round(noise / s.objective.mean_span_length))
        if v.sentinels < spans:
            out.append(
                (
                    ("vocabulary", "sentinels"),
                    f"span corruption of {s.context_length} tokens at noise density "
                    f"{s.objective.noise_density} and mean span {s.objective.mean_span_length} "
                    f"makes up to {spans} spans, so it needs at least {spans} sentinels "
                    f"(got {v.sentinels}); T5 uses 100",
                )
            )
    texts = list(present.values())
    clashes = {t for t in texts if texts.count(t) > 1}
    allowed_shared = {(present.get("bos"), present.get("eos"))}  # GPT-2 uses one for both
    for text in sorted(clashes):
        names = [n for n, t in present.items() if t == text]
        if sorted(names) == ["bos", "eos"] and (text, text) in allowed_shared:
            continue
        out.append(
            (
                ("vocabulary", "special_tokens", names[-1]),
                f"{' and '.join(names)} are both {text!r}; special tokens must differ "
                "(only bos and eos may share one)",
            )
        )
    if v.tokenizer.type == "byte-level":
        distinct = len(set(texts))
        needed = BYTE_LEVEL_BASE + distinct + v.sentinels
        if v.size < needed:
            out.append(
                (
                    ("vocabulary", "size"),
                    f"the byte-level tokenizer needs {BYTE_LEVEL_BASE} byte tokens + {distinct} "
                    f"special tokens + {v.sentinels} sentinels = {needed} ids, but size is "
                    f"{v.size}; raise size to at least {needed}",
                )
            )
    elif v.size < len(set(texts)) + v.sentinels + 1:
        out.append((("vocabulary", "size"), "the vocabulary is smaller than its special tokens"))
    return out


@rule("positions", "context_length")
def _positions_bound_context(s: Any) -> RuleProblems:
    p = s.positions
    if p.type == "learned" and p.max_positions < s.context_length:
        return [
            (
                ("positions", "max_positions"),
                f"learned positions cover {p.max_positions} tokens but context_length is "
                f"{s.context_length}; raise max_positions or lower context_length",
            )
        ]
    return []


@rule("architecture", "generation")
def _generation_fits(s: Any) -> RuleProblems:
    out: RuleProblems = []
    if s.generation is None:
        return out
    if s.architecture == "encoder-only":
        return [
            (
                ("generation",),
                "encoder-only models do not generate text; remove the generation section "
                "(use fill-mask or embed with them)",
            )
        ]
    for index, message in chain_problems(list(s.generation.chain)):
        path: tuple[str | int, ...] = ("generation", "chain")
        out.append(((*path, index) if index is not None else path, message))
    return out


@rule("generation", "context_length")
def _generation_within_context(s: Any) -> RuleProblems:
    # runtime.generation.max_new_tokens_limit: more than the context window can never be made
    if s.generation is not None and s.generation.max_new_tokens > s.context_length:
        return [
            (
                ("generation", "max_new_tokens"),
                f"max_new_tokens {s.generation.max_new_tokens} is beyond the context window of "
                f"{s.context_length} tokens, so no request could generate that many; lower it "
                f"to at most {s.context_length}",
            )
        ]
    return []


@rule("generation", "vocabulary", "architecture", "objective")
def _generation_needs_eos(s: Any) -> RuleProblems:
    # Encoder-only models are told to drop the section; encoder-decoder objectives already
    # demand eos in _special_tokens_fit.
    if (
        s.generation is not None
        and s.architecture == "decoder-only"
        and s.vocabulary.special_tokens.eos is None
    ):
        return [
            (
                ("vocabulary", "special_tokens", "eos"),
                'a model that generates needs an eos token to stop; add eos: "<eos>"',
            )
        ]
    return []


@rule("architecture", "vocabulary")
def _decoder_start_fits(s: Any) -> RuleProblems:
    start = s.vocabulary.decoder_start
    path = ("vocabulary", "decoder_start")
    if s.architecture != "encoder-decoder":
        if start is not None:
            return [(path, f"decoder_start is for encoder-decoder models, not {s.architecture}")]
        return []
    # Without decoder_start the decoder starts from pad, which every encoder-decoder objective
    # already requires (see _special_tokens_fit).
    if start is not None and start not in s.vocabulary.special_tokens.present():
        return [
            (
                path,
                f"the decoder starts from the {start} token, but there is none; add "
                f"special_tokens.{start} or choose a token you have",
            )
        ]
    return []


@rule("architecture", "decoder_layers")
def _decoder_layers_fit(s: Any) -> RuleProblems:
    if s.decoder_layers is not None and s.architecture != "encoder-decoder":
        return [
            (
                ("decoder_layers",),
                f"decoder_layers is for encoder-decoder models; a {s.architecture} model "
                "has one stack, sized by layers",
            )
        ]
    return []


@rule("architecture", "embeddings", "head")
def _encoder_only_parts(s: Any) -> RuleProblems:
    out: RuleProblems = []
    if s.architecture != "encoder-only":
        if s.embeddings.token_types:
            out.append(
                (("embeddings", "token_types"), "token type embeddings are for encoder-only models")
            )
        if s.head.pooler:
            out.append((("head", "pooler"), "the pooler is for encoder-only models"))
        if s.head.transform:
            out.append((("head", "transform"), "the MLM transform is for encoder-only models"))
    return out


@rule("head")
def _rescale_needs_tied(s: Any) -> RuleProblems:
    if s.head.rescale and not s.head.tied:
        return [
            (
                ("head", "rescale"),
                "rescale applies to a tied output projection (T5); set tied: true or drop it",
            )
        ]
    return []


@rule("norm")
def _norm_knobs_fit(s: Any) -> RuleProblems:
    n = s.norm
    out: RuleProblems = []
    if n.sandwich and n.position != "pre":
        out.append(
            (
                ("norm", "sandwich"),
                "sandwich norms wrap the sublayers of a pre-norm block (Gemma 2); a post-norm "
                "block already normalizes after each residual add: set position: pre or drop "
                "sandwich",
            )
        )
    if n.type == "rmsnorm" and n.bias:
        out.append(
            (
                ("norm", "bias"),
                "RMSNorm has no shift; use type: layernorm for norm biases, or drop bias",
            )
        )
    if n.unit_offset and n.type != "rmsnorm":
        out.append(
            (
                ("norm", "unit_offset"),
                "unit_offset (scale by 1 + weight, Gemma's RMSNorm) is for type: rmsnorm",
            )
        )
    return out


@rule("block", "norm", "architecture")
def _parallel_block_fits(s: Any) -> RuleProblems:
    parallel = s.block.parallel
    if parallel is None:
        return []
    path = ("block", "parallel")
    out: RuleProblems = []
    if s.norm.position != "pre":
        out.append(
            (
                path,
                f"a parallel block ({parallel}) adds attention and feed-forward of the same "
                "normalized input to the residual: it needs norm.position: pre",
            )
        )
    if s.architecture == "encoder-decoder":
        out.append(
            (
                path,
                "parallel blocks are not supported in encoder-decoder models (where would "
                "cross-attention go?); use them in decoder-only or encoder-only models",
            )
        )
    if s.norm.sandwich:
        out.append(
            (
                path,
                "sandwich norms with a parallel block are not supported (no reference model "
                "has both); drop norm.sandwich or block.parallel",
            )
        )
    return out


@rule("generation", "vocabulary")
def _stop_tokens_fit(s: Any) -> RuleProblems:
    if s.generation is None or not s.generation.stop_tokens:
        return []
    v = s.vocabulary
    present = v.special_tokens.present()
    out: RuleProblems = []
    seen: set[str] = set()
    for index, text in enumerate(s.generation.stop_tokens):
        path: tuple[str | int, ...] = ("generation", "stop_tokens", index)
        if text == present.get("eos"):
            out.append((path, f"{text!r} is the eos token, which always stops; drop it here"))
        elif text in seen:
            out.append((path, f"{text!r} is listed twice; list each stop token once"))
        elif v.tokenizer.type != "file" and text not in present.values():
            out.append(
                (
                    path,
                    f"{text!r} is not a token of the {v.tokenizer.type} tokenizer, whose only "
                    "whole-word tokens are the special tokens "
                    f"({', '.join(repr(t) for t in present.values()) or 'none'}); stop on one "
                    "of those, or use a tokenizer file that has it",
                )
            )
        seen.add(text)
    return out


@rule("precision")
def _precision_fits(s: Any) -> RuleProblems:
    p = s.precision
    out: RuleProblems = []
    if p.quantize == "int8" and p.dtype != "fp32":
        out.append(
            (
                ("precision", "quantize"),
                f"int8 dynamic quantization works on fp32 graphs; set dtype: fp32 (got {p.dtype})",
            )
        )
    if p.quantize == "int4" and p.dtype == "bf16":
        out.append((("precision", "quantize"), "int4 (MatMulNBits) takes fp32 or fp16, not bf16"))
    if p.block_size not in (16, 32, 64, 128, 256):
        out.append(
            (
                ("precision", "block_size"),
                f"block_size must be 16, 32, 64, 128 or 256, got {p.block_size}",
            )
        )
    return out


def _huge_integers(value: Any, path: tuple[str | int, ...]) -> RuleProblems:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return (
            []
            if -MAX_INT <= value < MAX_INT
            else [(path, "out of range: spec integers fit in 64 bits")]
        )
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _huge_integers(item, (*path, key))]
    if isinstance(value, list | tuple):
        return [p for i, item in enumerate(value) for p in _huge_integers(item, (*path, i))]
    return []


@rule()
def _integers_fit_64_bits(s: Any) -> RuleProblems:
    # Counts beyond 64 bits overflow the float arithmetic of estimates and every tensor size;
    # a spec from YAML cannot hold them, one built in Python can.
    out: RuleProblems = []
    for name in ModelSpec.model_fields:
        value = getattr(s, name, None)
        if isinstance(value, BaseModel):
            value = value.model_dump()
        out += _huge_integers(value, (name,))
    return out


def cross_field_problems(
    spec: Any, valid: frozenset[str] | None = None
) -> list[tuple[tuple[str | int, ...], str]]:
    """Every cross-field rule's problems. ``valid`` names the top-level fields that passed
    field validation (``None``: all did); rules that read an invalid field are skipped."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    for needs, function in RULES:
        if valid is None or needs <= valid:
            out.extend(function(spec))
    return out
