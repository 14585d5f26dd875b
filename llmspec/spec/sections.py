"""The spec language: a validated, typed description of one transformer language model.

A spec is YAML with nested sections and snake_case keys (see ``specs/`` for examples)::

    name: gpt2-small
    architecture: decoder-only
    vocabulary: {size: 50257, special_tokens: {eos: "<|endoftext|>"}}
    context_length: 1024
    d_model: 768
    layers: 12
    attention: {heads: 12}
    feed_forward: {d_ff: 3072, activation: gelu-tanh}
    norm: {type: layernorm, position: pre, eps: 1.0e-5}
    positions: {type: learned, max_positions: 1024}
    objective: {type: causal-lm}

Variant choices are discriminated unions with a literal ``type`` tag. Every model forbids
unknown keys. Validation is strict: ``768.0`` is not an integer and ``"yes"`` is not a
boolean. Cross-field rules live in :mod:`llmspec.spec.rules`; they are reported together with
field errors by :func:`llmspec.spec.loading.load_spec`.

Decisions recorded here (where DESIGN.md is silent):

* ``bias`` is one switch for every linear projection and every LayerNorm's shift (unless
  ``norm.bias`` sets the shifts apart); RMSNorm never has a bias. BERT, GPT-2 and BART have
  biases; T5 and Llama have none.
* An output projection's bias (GPT-J's and Phi's ``lm_head.bias``) is ``head.logits_bias:
  learned``: logits + b is the same function, so it has no second knob.
* ``layers`` counts the layers of each stack; an encoder-decoder may give ``decoder_layers``
  when its decoder is deeper or shallower (T5's ``num_decoder_layers``).
* ``head.logits_bias: buffer`` is a fixed (not trained) bias on the logits, loaded with the
  weights, as BART's ``final_logits_bias``; ``learned`` is a trained one (BERT's MLM decoder bias).
  Buffers are not parameters, so they are not in the parameter count.
* T5 relative position buckets live in the first layer of each stack and are shared by all its
  layers, as in T5.
"""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from runtime.decoding import Greedy, Step

BYTE_LEVEL_BASE = 256  # the built-in tokenizer has one token per byte before its specials


class AddedLater:
    """Marks a field added after the first spec format: ``Annotated[bool, ADDED] = ...``.

    Such a field is left out of a section's dump (``model_dump``, so of :func:`dump_spec
    <llmspec.spec.loading.dump_spec>` and :func:`spec_sha256
    <llmspec.spec.loading.spec_sha256>`) while it holds its default, so a spec that does not
    use it keeps its normalized form, its sha256 and its generated source byte for byte."""


ADDED = AddedLater()


class Section(BaseModel):
    """Base of every spec section: unknown keys are errors, values are not coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    @model_serializer(mode="wrap")
    def _without_added_defaults(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name, info in type(self).model_fields.items():
                if (
                    name in data
                    and ADDED in info.metadata
                    and getattr(self, name) == info.get_default(call_default_factory=True)
                ):
                    del data[name]
        return data


# ----------------------------------------------------------------------------------------
# Vocabulary and tokenizer


class ByteLevelTokenizer(Section):
    """The built-in tokenizer: one token per byte (256), then the special tokens and sentinels.
    Needs no training and no file."""

    type: Literal["byte-level"] = "byte-level"


def _inside_spec_folder(value: str) -> str:
    """A file name in a spec: relative, and not climbing out of the spec's folder.

    A spec is something people share, so it must not be able to pull in files from elsewhere
    on the machine that builds it (a corpus ends up in the exported tokenizer). Symlinks that
    lead outside are refused where the file is opened (:func:`llmspec.tokenizer.spec_file`)."""
    if "\0" in value:
        raise ValueError(f"{value!r} contains a NUL character; write a plain file name")
    posix, windows = PurePosixPath(value), PureWindowsPath(value)
    where = (
        "an absolute path"
        if posix.is_absolute() or windows.drive or windows.root
        else "a path that climbs with '..'"
        if ".." in posix.parts or ".." in windows.parts
        else None
    )
    if where is not None:
        raise ValueError(
            f"{value!r} is {where}; files named in a spec are read from the spec's folder "
            "(or below it) only: copy the file next to the spec and write its name relative "
            "to the spec"
        )
    return value


SpecFile = Annotated[str, AfterValidator(_inside_spec_folder)]


class BpeTokenizer(Section):
    """A byte-level BPE trained to ``vocabulary.size`` on the given text files."""

    type: Literal["bpe"]
    corpus: list[SpecFile] = Field(
        min_length=1, description="text files, relative to the spec file, inside its folder"
    )
    min_frequency: PositiveInt = 2


class FileTokenizer(Section):
    """A ready ``tokenizer.json`` (Hugging Face tokenizers format)."""

    type: Literal["file"]
    path: SpecFile = Field(min_length=1, description="relative to the spec file, inside its folder")


Tokenizer = Annotated[
    ByteLevelTokenizer | BpeTokenizer | FileTokenizer, Field(discriminator="type")
]


class SpecialTokens(Section):
    """The text of each special token; ``null`` when the model has none."""

    pad: str | None = None
    bos: str | None = None
    eos: str | None = None
    unk: str | None = None
    mask: str | None = None

    def present(self) -> dict[str, str]:
        return {name: text for name, text in self.model_dump().items() if text is not None}


class Vocabulary(Section):
    size: PositiveInt
    tokenizer: Tokenizer = Field(default_factory=ByteLevelTokenizer)
    special_tokens: SpecialTokens = Field(default_factory=SpecialTokens)
    sentinels: int = Field(
        default=0, ge=0, description="span-corruption sentinels <extra_id_0> ... (T5 has 100)"
    )
    decoder_start: Literal["pad", "bos", "eos"] | None = Field(
        default=None,
        description="encoder-decoder only: the special token the decoder starts from "
        "(default pad, as T5; BART starts from eos)",
    )


# ----------------------------------------------------------------------------------------
# Blocks


class Attention(Section):
    heads: PositiveInt
    kv_heads: PositiveInt | None = Field(
        default=None, description="key/value heads: = heads for MHA, 1 for MQA, between for GQA"
    )
    head_dim: PositiveInt | None = Field(default=None, description="default: d_model // heads")
    scaled: bool = Field(
        default=True,
        description="scale scores by 1/sqrt(head_dim); T5 folds the scale into its init",
    )
    scale: Annotated[float | None, ADDED] = Field(
        default=None,
        gt=0,
        description="an explicit score scale instead of 1/sqrt(head_dim), e.g. Gemma's "
        "query_pre_attn_scalar ** -0.5; needs scaled: true",
    )
    softcap: Annotated[float | None, ADDED] = Field(
        default=None,
        gt=0,
        description="attention logit soft-capping: scores = softcap * tanh(scores / softcap), "
        "after the scale and before the mask (Gemma 2 uses 50.0)",
    )
    sliding_window: Annotated[PositiveInt | None, ADDED] = Field(
        default=None,
        description="decoder-only: a local layer's query sees at most this many keys, itself "
        "included (Mistral, Gemma 2); the key/value cache still holds every position",
    )
    layer_pattern: Annotated[list[Literal["local", "global"]] | None, ADDED] = Field(
        default=None,
        description="which layers are local (windowed) and which global, repeated over the "
        "layers from the first: [local, global] for Gemma 2, five local and one global for "
        "Gemma 3; default with sliding_window: every layer local (Mistral)",
    )
    qk_norm: Annotated[Literal["none", "rmsnorm"], ADDED] = Field(
        default="none",
        description="rmsnorm: an RMSNorm over head_dim on each head's queries and keys, "
        "before rotary (Qwen3, Gemma 3): weights self_attn.q_norm and self_attn.k_norm",
    )
    qkv_bias: Annotated[bool | None, ADDED] = Field(
        default=None,
        description="biases on q_proj, k_proj and v_proj (not o_proj) when they differ from "
        "the top-level bias: Qwen2 has them, without any other bias; default: follow bias",
    )

    def layer_is_local(self, layer: int) -> bool:
        """Whether self-attention layer ``layer`` (from 0) attends within the sliding window."""
        if self.sliding_window is None:
            return False
        if not self.layer_pattern:
            return True
        return self.layer_pattern[layer % len(self.layer_pattern)] == "local"


Activation = Literal["relu", "gelu", "gelu-tanh", "silu", "swiglu", "geglu", "geglu-tanh"]
GATED_ACTIVATIONS = frozenset({"swiglu", "geglu", "geglu-tanh"})


class FeedForward(Section):
    d_ff: PositiveInt
    activation: Activation = Field(
        default="gelu",
        description="swiglu/geglu/geglu-tanh are gated: gate_proj and up_proj, then down_proj",
    )


class Norm(Section):
    type: Literal["layernorm", "rmsnorm"] = "layernorm"
    position: Literal["pre", "post"] = Field(
        default="pre", description="pre: x + f(norm(x)) (GPT-2); post: norm(x + f(x)) (BERT)"
    )
    eps: float = Field(default=1e-5, gt=0, lt=1)
    sandwich: Annotated[bool, ADDED] = Field(
        default=False,
        description="pre-norm only: also a norm on each sublayer's output before the residual "
        "add, x + norm(f(norm(x))) (Gemma 2/3's post_attention_layernorm and "
        "post_feedforward_layernorm)",
    )
    bias: Annotated[bool | None, ADDED] = Field(
        default=None,
        description="LayerNorm shifts; null: follow the spec's bias (Falcon has LayerNorm "
        "shifts but no linear biases). RMSNorm never has one",
    )
    unit_offset: Annotated[bool, ADDED] = Field(
        default=False,
        description="rmsnorm only: scale by (1 + weight), the weight starting at 0 (Gemma)",
    )


class LearnedPositions(Section):
    type: Literal["learned"]
    max_positions: PositiveInt
    offset: int = Field(default=0, ge=0, description="BART adds 2 to every position id")


class SinusoidalPositions(Section):
    type: Literal["sinusoidal"]


class LinearRopeScaling(Section):
    """Position interpolation (Chen et al. 2023): every frequency divided by ``factor``
    (transformers' rope type "linear")."""

    type: Literal["linear"]
    factor: float = Field(gt=0, description="the positions are divided by it (> 1 stretches)")


class DynamicRopeScaling(Section):
    """Dynamic NTK scaling (transformers' rope type "dynamic"): up to
    ``original_max_positions`` tokens the plain frequencies; beyond, the base grows to
    ``base * (factor * L / original - (factor - 1)) ** (d / (d - 2))`` for a total length L
    (the largest position id + 1), recomputed from the length in the exported graph too."""

    type: Literal["dynamic"]
    factor: float = Field(gt=0)
    original_max_positions: PositiveInt = Field(
        description="the length trained on (transformers' max_position_embeddings)"
    )


class Llama3RopeScaling(Section):
    """Llama 3.1's scaling (transformers' rope type "llama3"): wavelengths longer than
    ``original_max_positions / low_freq_factor`` are divided by ``factor``, shorter than
    ``original_max_positions / high_freq_factor`` kept, those between interpolated."""

    type: Literal["llama3"]
    factor: float = Field(gt=0)
    low_freq_factor: float = Field(gt=0)
    high_freq_factor: float = Field(gt=0)
    original_max_positions: PositiveInt


class YarnRopeScaling(Section):
    """YaRN (Peng et al. 2023; transformers' rope type "yarn"): frequencies ramp from
    extrapolated (fast, ``beta_fast`` rotations) to interpolated by ``factor`` (slow,
    ``beta_slow``); cos and sin are multiplied by ``attention_factor`` (default
    ``0.1 ln(factor) + 1``, or the ratio of the ``mscale`` and ``mscale_all_dim`` terms)."""

    type: Literal["yarn"]
    factor: float = Field(gt=0)
    original_max_positions: PositiveInt
    beta_fast: float = Field(default=32.0, gt=0)
    beta_slow: float = Field(default=1.0, gt=0)
    attention_factor: float | None = Field(default=None, gt=0)
    mscale: float | None = Field(default=None, gt=0)
    mscale_all_dim: float | None = Field(default=None, gt=0)
    truncate: bool = Field(
        default=True, description="round the correction range to whole dimensions"
    )


class LongRopeScaling(Section):
    """LongRoPE (Phi-3; transformers' rope type "longrope"): frequency i is divided by
    ``short_factor[i]`` while the total length (largest position id + 1) is at most
    ``original_max_positions``, by ``long_factor[i]`` beyond (chosen in the exported graph
    too); cos and sin are multiplied by ``attention_factor`` (default
    ``sqrt(1 + ln(factor) / ln(original_max_positions))``, 1 when factor <= 1)."""

    type: Literal["longrope"]
    short_factor: list[float] = Field(min_length=1, description="one per rotated pair")
    long_factor: list[float] = Field(min_length=1, description="one per rotated pair")
    original_max_positions: PositiveInt
    factor: float | None = Field(
        default=None, gt=0, description="default: context_length / original_max_positions"
    )
    attention_factor: float | None = Field(default=None, gt=0)


RopeScaling = Annotated[
    LinearRopeScaling | DynamicRopeScaling | Llama3RopeScaling | YarnRopeScaling | LongRopeScaling,
    Field(discriminator="type"),
]


class RopePositions(Section):
    """Rotary positions. ``rotary_dim`` (or ``partial``, the fraction of the head dim, rounded
    down as transformers' partial_rotary_factor) rotates only the first channels of each head
    and passes the rest through (GPT-NeoX, Phi). ``scaling`` changes the frequencies as
    transformers' rope types do. ``local_base`` is the base of windowed (local) layers, which
    rotate unscaled (Gemma 3's rope_local_base_freq)."""

    type: Literal["rope"]
    base: float = Field(default=10000.0, gt=1)
    rotary_dim: Annotated[PositiveInt | None, ADDED] = Field(
        default=None, description="rotate the first rotary_dim channels of each head (even)"
    )
    partial: Annotated[float | None, ADDED] = Field(
        default=None, gt=0, le=1, description="rotate this fraction of each head's channels"
    )
    scaling: Annotated[RopeScaling | None, ADDED] = None
    local_base: Annotated[float | None, ADDED] = Field(
        default=None, gt=1, description="the base of local (windowed) layers, unscaled"
    )

    def rotated(self, head_dim: int) -> int:
        """How many channels of each head rotate (the rest pass through)."""
        if self.rotary_dim is not None:
            return self.rotary_dim
        if self.partial is not None:
            return int(head_dim * self.partial)
        return head_dim


class AlibiPositions(Section):
    type: Literal["alibi"]


class RelativePositions(Section):
    """T5's bucketed relative position bias, computed once per stack and shared by its layers."""

    type: Literal["relative"]
    buckets: PositiveInt = 32
    max_distance: PositiveInt = 128


Positions = Annotated[
    LearnedPositions | SinusoidalPositions | RopePositions | AlibiPositions | RelativePositions,
    Field(discriminator="type"),
]


class Embeddings(Section):
    token_types: int = Field(default=0, ge=0, description="segment embeddings (BERT has 2)")
    norm: bool = Field(default=False, description="a norm after the embeddings (BERT, BART)")
    scale: bool = Field(default=False, description="multiply embeddings by sqrt(d_model)")


class Block(Section):
    """How the sublayers of a layer meet the residual stream."""

    parallel: Annotated[Literal["shared-norm", "separate-norms"] | None, ADDED] = Field(
        default=None,
        description="pre-norm only: attention and feed-forward read the same input and are "
        "added together, x + attn(norm1(x)) + mlp(norm2(x)); separate-norms: two norms "
        "(GPT-NeoX's use_parallel_residual, Falcon-40B), shared-norm: one (GPT-J, Phi-2, "
        "Falcon-7B). null: one after the other (GPT-2, Llama)",
    )


class Head(Section):
    tied: bool = Field(default=True, description="the output projection is the input embedding")
    transform: bool = Field(
        default=False, description="dense + activation + norm before the output (BERT's MLM)"
    )
    pooler: bool = Field(default=False, description="dense + tanh on the first token (BERT)")
    logits_bias: Literal["none", "learned", "buffer"] = "none"
    rescale: bool = Field(
        default=False,
        description="multiply hidden states by d_model ** -0.5 before a tied output (T5)",
    )
    softcap: Annotated[float | None, ADDED] = Field(
        default=None,
        gt=0,
        description="final logit soft-capping: logits = softcap * tanh(logits / softcap), "
        "after any logits bias (Gemma 2's final_logit_softcapping, 30.0)",
    )


class Dropout(Section):
    hidden: float = Field(default=0.0, ge=0, lt=1)
    attention: float = Field(default=0.0, ge=0, lt=1)


# ----------------------------------------------------------------------------------------
# Objective, precision, generation


class CausalLM(Section):
    """Next-token prediction (GPT)."""

    type: Literal["causal-lm"]


class MaskedLM(Section):
    """BERT's masked LM: select ``mask_rate`` of the tokens; of those, ``mask_fraction``
    become the mask token, ``random_fraction`` a random token, the rest stay."""

    type: Literal["masked-lm"]
    mask_rate: float = Field(default=0.15, gt=0, lt=1)
    mask_fraction: float = Field(default=0.8, ge=0, le=1)
    random_fraction: float = Field(default=0.1, ge=0, le=1)


class SpanCorruption(Section):
    """T5's span corruption: drop ``noise_density`` of the tokens in spans of mean length
    ``mean_span_length``, each replaced by a sentinel."""

    type: Literal["span-corruption"]
    noise_density: float = Field(default=0.15, gt=0, lt=1)
    mean_span_length: float = Field(default=3.0, ge=1)


class Denoising(Section):
    """BART's text infilling: mask ``mask_rate`` of the tokens in Poisson(``poisson_lambda``)
    spans, each span replaced by one mask token; optionally permute sentences."""

    type: Literal["denoising"]
    mask_rate: float = Field(default=0.3, gt=0, lt=1)
    poisson_lambda: float = Field(default=3.0, gt=0)
    permute_sentences: bool = False


Objective = Annotated[CausalLM | MaskedLM | SpanCorruption | Denoising, Field(discriminator="type")]
OBJECTIVE_ARCHITECTURE = {
    "causal-lm": "decoder-only",
    "masked-lm": "encoder-only",
    "span-corruption": "encoder-decoder",
    "denoising": "encoder-decoder",
}


class Precision(Section):
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    quantize: Literal["none", "int8", "int4"] = Field(
        default="none", description="weight quantization at export"
    )
    block_size: int = Field(default=32, description="int4 block size: 16, 32, 64, 128 or 256")


# The runtime's decoding step types, one definition for the spec, generation.json and the CLI.
DecodingStep = Annotated[Step, Field(discriminator="type")]


def _strict_step_values(chain: Any) -> Any:
    """Decoding steps are validated in lax mode (see Generation); hold their parameters to the
    same strictness as the rest of the spec: numbers are numbers, not booleans or text."""
    problems = []
    for index, item in enumerate(chain if isinstance(chain, list) else []):
        for key, value in item.items() if isinstance(item, dict) else ():
            if key not in ("type", "early_stopping") and isinstance(value, str | bool):
                shown = str(value).lower() if isinstance(value, bool) else repr(value)
                problems.append(f"[{index}].{key} must be a number, got {shown}")
    if problems:
        raise ValueError("; ".join(problems))
    return chain


TokenText = Annotated[str, Field(strict=True, min_length=1)]  # strict in the lax Generation


def _greedy_chain() -> list[DecodingStep]:
    return [Greedy()]


class Generation(Section):
    # Decoding steps are plain dataclasses shared with the runtime; pydantic validates them
    # from mappings only in lax mode, so this section is lax (a quoted "0.7" is read as 0.7).
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)

    max_new_tokens: PositiveInt = 64
    chain: Annotated[list[DecodingStep], BeforeValidator(_strict_step_values)] = Field(
        default_factory=lambda: _greedy_chain()
    )
    stop_tokens: Annotated[list[TokenText], ADDED] = Field(
        default_factory=list,
        description="tokens (their text) that end generation besides eos, each one token of "
        "the vocabulary: Llama 3's <|eot_id|> and <|eom_id|> next to eos <|end_of_text|>",
    )


# ----------------------------------------------------------------------------------------
# Fine-tuning


def _one_prompt_slot(template: str) -> str:
    if template.count("{prompt}") != 1:
        raise ValueError("must hold {prompt} exactly once, where the instruction goes")
    return template


class Lora(Section):
    r: PositiveInt = Field(default=8, description="the adapters' rank")
    alpha: PositiveInt = Field(default=16, description="the update is scaled by alpha / r")
    dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="dropout on the adapters' input"
    )
    targets: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        min_length=1,
        description="the linear layers that get adapters, by module name (q_proj, v_proj, "
        "o_proj, gate_proj, ...) or dotted tail (cross_attn.q_proj)",
    )


class Finetune(Section):
    """How ``llmspec finetune`` adapts the model unless its flags say otherwise."""

    method: Literal["lora"] = "lora"
    lora: Lora = Field(default_factory=Lora)
    template: Annotated[str, AfterValidator(_one_prompt_slot)] | None = Field(
        default=None,
        description="the plain prompt template, {prompt} where the instruction goes (default "
        "Alpaca's '### Instruction:\\n{prompt}\\n\\n### Response:\\n'); the response and eos "
        "follow it. Used instead of a model directory's chat_template.jinja",
    )


# ----------------------------------------------------------------------------------------
# The spec


class ModelSpec(Section):
    """A whole model. Derived values (``head_dim``, ``kv_heads``, ...) are properties."""

    name: str = Field(
        pattern=r"^[a-z][a-z0-9]*([-_][a-z0-9]+)*$",
        max_length=64,
        description="lowercase words joined by '-' or '_'; names the generated classes",
    )
    architecture: Literal["encoder-only", "decoder-only", "encoder-decoder"]
    vocabulary: Vocabulary
    context_length: PositiveInt
    d_model: PositiveInt
    layers: PositiveInt = Field(description="layers per stack")
    decoder_layers: PositiveInt | None = Field(
        default=None, description="encoder-decoder only: decoder depth when it differs"
    )
    attention: Attention
    feed_forward: FeedForward
    norm: Norm = Field(default_factory=Norm)
    block: Annotated[Block, ADDED] = Field(default_factory=Block)
    positions: Positions
    bias: bool = Field(default=True, description="biases in projections and LayerNorms")
    embeddings: Embeddings = Field(default_factory=Embeddings)
    head: Head = Field(default_factory=Head)
    dropout: Dropout = Field(default_factory=Dropout)
    objective: Objective
    precision: Precision = Field(default_factory=Precision)
    generation: Generation | None = None
    finetune: Annotated[Finetune | None, ADDED] = Field(
        default=None, description="defaults for llmspec finetune (LoRA)"
    )

    @model_validator(mode="after")
    def _cross_field_rules(self, info: Any) -> ModelSpec:
        if info.context and info.context.get("skip_rules"):
            return self
        # The rules read this module's constants and ModelSpec's field names: imported here,
        # where they run, rather than in a cycle at the top.
        from llmspec.spec.rules import cross_field_problems

        problems = cross_field_problems(self)
        if problems:
            raise ValueError("; ".join(f"{'.'.join(map(str, p))}: {m}" for p, m in problems))
        return self

    # Derived values, computed in one place.
    @property
    def kv_heads(self) -> int:
        return self.attention.kv_heads or self.attention.heads

    @property
    def head_dim(self) -> int:
        return self.attention.head_dim or self.d_model // self.attention.heads

    @property
    def encoder_layers(self) -> int:
        return self.layers if self.architecture != "decoder-only" else 0

    @property
    def num_decoder_layers(self) -> int:
        if self.architecture == "encoder-only":
            return 0
        return self.decoder_layers or self.layers

    @property
    def decoder_start(self) -> str:
        """The special token (its role) that starts the decoder of an encoder-decoder."""
        return self.vocabulary.decoder_start or "pad"

    @property
    def gated(self) -> bool:
        return self.feed_forward.activation in GATED_ACTIVATIONS

    @property
    def can_generate(self) -> bool:
        return self.architecture != "encoder-only"
