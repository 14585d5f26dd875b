"""The render plan: everything the templates need to write one model file, and nothing more.

A plan is plain frozen dataclasses of plain values. Every decision is already taken when a
plan exists (which norm, which positions, which init, which numbers go into the config);
the templates only lay the decisions out. ``llmspec.lower`` builds plans from validated specs;
this package knows nothing of specs, YAML or pydantic.

Naming: class names are ``plan.prefix`` followed by a role (``TinyDecoderAttention``); the
module attributes follow the weight naming contract of DESIGN.md (``q_proj``, ``mlp.up_proj``,
``self_attn_norm``, ...), so weight mappings from other formats are tables.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from typing import Literal

Family = Literal["encoder-only", "decoder-only", "encoder-decoder"]
NormKind = Literal["layernorm", "rmsnorm"]
NormPosition = Literal["pre", "post"]
PositionKind = Literal["learned", "sinusoidal", "rope", "alibi", "relative"]
RopeScalingKind = Literal["none", "linear", "dynamic", "llama3", "yarn", "longrope"]
ActivationKind = Literal["relu", "gelu", "gelu-tanh", "silu"]
LossKind = Literal["causal-lm", "masked-lm", "seq2seq"]
ParallelKind = Literal["shared-norm", "separate-norms"]
InitKind = Literal["normal", "t5"]
LogitsBias = Literal["none", "learned", "buffer"]
StackRole = Literal["encoder", "decoder"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# The call of each activation on an argument, in the generated file's terms (F is
# torch.nn.functional there).
_ACTIVATION_CALLS: dict[str, str] = {
    "relu": "F.relu({})",
    "gelu": "F.gelu({})",
    "gelu-tanh": 'F.gelu({}, approximate="tanh")',
    "silu": "F.silu({})",
}


class PlanError(ValueError):
    """A plan that cannot be rendered (a bug in whatever built it, not a user error)."""


@dataclass(frozen=True)
class ConfigField:
    """One field of the generated config dataclass: ``name: type = value  # comment``."""

    name: str
    type: Literal["int", "float", "tuple[float, ...]"]
    value: int | float | tuple[float, ...]
    comment: str = ""

    def __post_init__(self) -> None:
        if not _IDENTIFIER.match(self.name) or keyword.iskeyword(self.name):
            raise PlanError(f"config field name {self.name!r} is not a Python identifier")
        if self.type == "tuple[float, ...]":
            if not isinstance(self.value, tuple) or not all(
                isinstance(v, float) for v in self.value
            ):
                raise PlanError(f"config field {self.name}: {self.value!r} is not floats")
        elif isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise PlanError(f"config field {self.name}: {self.value!r} is not a number")
        if self.type == "int" and not isinstance(self.value, int):
            raise PlanError(f"config field {self.name} is an int, got {self.value!r}")
        if "\n" in self.comment:
            raise PlanError(f"config field {self.name}: a comment is one line")

    @property
    def literal(self) -> str:
        """The value as Python source (floats keep a decimal point: ``10000.0``, ``1e-05``)."""
        if isinstance(self.value, tuple):
            return "(" + "".join(f"{v!r}, " for v in self.value) + ")"
        return repr(float(self.value)) if self.type == "float" else repr(self.value)


@dataclass(frozen=True)
class NormPlan:
    """Every norm of the model (one type per model); ``bias`` only for LayerNorm."""

    kind: NormKind
    position: NormPosition
    bias: bool
    sandwich: bool = False  # pre-norm: also a norm on each sublayer's output (Gemma 2)
    unit_offset: bool = False  # RMSNorm scaled by (1 + weight), the weight from 0 (Gemma)

    def __post_init__(self) -> None:
        if self.kind == "rmsnorm" and self.bias:
            raise PlanError("RMSNorm has no bias")
        if self.sandwich and self.position != "pre":
            raise PlanError("sandwich norms are for pre-norm blocks")
        if self.unit_offset and self.kind != "rmsnorm":
            raise PlanError("a unit offset is RMSNorm's")


@dataclass(frozen=True)
class BlockPlan:
    """How a layer's sublayers meet the residual stream. ``parallel``: attention and
    feed-forward both read the layer's input, x + attn(norm1(x)) + mlp(norm2(x)), with their
    own norms (``separate-norms``, GPT-NeoX) or one (``shared-norm``, GPT-J); None: in turn."""

    parallel: ParallelKind | None = None


@dataclass(frozen=True)
class PositionsPlan:
    """How positions enter the model. The numbers (max_positions, rope_base, buckets) are
    config fields; ``offset`` is added to every position id before a learned lookup (BART)."""

    kind: PositionKind
    offset: int = 0
    # Rope only. ``partial``: only the first config.rotary_dim channels of each head rotate.
    # ``scaling``: transformers' rope type of the frequencies ("none": plain RoPE), whose
    # numbers are config fields (rope_scaling_factor, ...). ``attention_factor``: cos and sin
    # are multiplied by config.rope_attention_factor (YaRN, LongRoPE). ``yarn_truncate``:
    # YaRN's correction range is rounded to whole dimensions. ``local_base``: local layers
    # rotate unscaled with config.rope_local_base.
    partial: bool = False
    scaling: RopeScalingKind = "none"
    attention_factor: bool = False
    yarn_truncate: bool = True
    local_base: bool = False

    def __post_init__(self) -> None:
        knobs = self.partial or self.scaling != "none" or self.attention_factor or self.local_base
        if knobs and self.kind != "rope":
            raise PlanError("rotary dims, scaling and a local base are rope's")
        if self.attention_factor and self.scaling not in ("yarn", "longrope"):
            raise PlanError("only YaRN and LongRoPE scale cos and sin")

    @property
    def rope_knobs(self) -> bool:
        """Rope with any knob: the frequencies come from ``rope_inverse_frequencies``."""
        return self.partial or self.scaling != "none" or self.local_base

    @property
    def length_dependent(self) -> bool:
        """Frequencies that depend on the total length (the largest position id + 1)."""
        return self.scaling in ("dynamic", "longrope")

    @property
    def uses_position_ids(self) -> bool:
        """Absolute positions read position ids; ALiBi and T5 buckets only query-key distances."""
        return self.kind in ("learned", "sinusoidal", "rope")

    @property
    def is_bias(self) -> bool:
        """Positions that enter as an additive bias on the attention scores."""
        return self.kind in ("alibi", "relative")


POSITION_NAMES: dict[str, str] = {
    "learned": "learned position embeddings",
    "sinusoidal": "sinusoidal position embeddings",
    "rope": "rotary position embeddings",
    "alibi": "ALiBi bias",
    "relative": "relative position bias",
}


LayerKind = Literal["local", "global"]


@dataclass(frozen=True)
class AttentionPlan:
    grouped: bool  # fewer key/value heads than query heads (GQA, MQA)
    multi_query: bool  # one key/value head (MQA); implies grouped
    scaled: bool  # scores * head_dim ** -0.5; T5 folds the scale into its init instead
    bias: bool  # of o_proj (and of q/k/v_proj unless qkv_bias says otherwise)
    dropout: bool
    qkv_bias: bool | None = None  # of q_proj, k_proj, v_proj; None: as ``bias``
    explicit_scale: bool = False  # scores * config.attention_scale instead of head_dim ** -0.5
    softcap: bool = False  # scores = softcap * tanh(scores / softcap), config.attention_softcap
    qk_norm: bool = False  # RMSNorm over head_dim on queries and keys (q_norm, k_norm)
    # The sliding window's layers, repeated over the decoder's layers from the first; empty:
    # no window. Its size is config.sliding_window.
    layer_pattern: tuple[LayerKind, ...] = ()

    def __post_init__(self) -> None:
        if self.multi_query and not self.grouped:
            raise PlanError("multi-query attention is grouped attention with one group")
        if self.explicit_scale and not self.scaled:
            raise PlanError("an explicit scale is the scale of scaled attention")
        if self.layer_pattern and "local" not in self.layer_pattern:
            raise PlanError("a sliding window needs a local layer; drop the pattern instead")

    @property
    def projection_bias(self) -> bool:
        """Whether q_proj, k_proj and v_proj have biases."""
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def any_bias(self) -> bool:
        """Whether some attention projection has a bias (for the init of biases)."""
        return self.bias or self.projection_bias

    @property
    def windowed(self) -> bool:
        return bool(self.layer_pattern)

    @property
    def all_local(self) -> bool:
        return self.layer_pattern == ("local",)

    def is_local(self, index: str) -> str:
        """A Python condition on the layer index variable ``index``: whether that layer is
        local (e.g. ``i % 2 == 0`` for [local, global])."""
        period = len(self.layer_pattern)
        local = [i for i, kind in enumerate(self.layer_pattern) if kind == "local"]
        others = [i for i, kind in enumerate(self.layer_pattern) if kind == "global"]
        if not others:
            return "True"
        if len(local) == 1:
            return f"{index} % {period} == {local[0]}"
        if len(others) == 1:
            return f"{index} % {period} != {others[0]}"
        return f"{index} % {period} in {tuple(local)}"

    @property
    def pattern_doc(self) -> str:
        """The layer pattern in words, for comments and docstrings."""
        if self.all_local:
            return "every layer attends within the sliding window"
        local = sum(kind == "local" for kind in self.layer_pattern)
        return (
            f"{local} of every {len(self.layer_pattern)} layers are local: their queries see "
            "a sliding window of keys"
        )


@dataclass(frozen=True)
class FeedForwardPlan:
    activation: ActivationKind  # the base activation; gated FFNs apply it to gate_proj
    gated: bool
    bias: bool
    name: str  # for the docstring: "SwiGLU", "GELU", ...

    def activate(self, argument: str) -> str:
        """Source that applies the activation to ``argument``."""
        return _ACTIVATION_CALLS[self.activation].format(argument)


@dataclass(frozen=True)
class EmbeddingsPlan:
    token_types: bool
    norm: bool
    scale: bool  # token embeddings * sqrt(d_model)


@dataclass(frozen=True)
class StackPlan:
    """One stack of layers (``encoder.`` or ``decoder.``)."""

    role: StackRole
    layers_field: str  # the config field holding this stack's depth
    causal: bool
    cross_attention: bool
    scaled_residual_init: bool = False  # GPT-2: o_proj/down_proj std / sqrt(residual adds)

    def __post_init__(self) -> None:
        if self.cross_attention and not self.causal:
            raise PlanError("only a causal (decoder) stack attends to an encoder")

    @property
    def residuals_per_layer(self) -> int:
        """Residual additions per layer: attention and feed-forward, plus cross-attention."""
        return 3 if self.cross_attention else 2


@dataclass(frozen=True)
class HeadPlan:
    tied: bool
    transform: bool  # BERT's dense + activation + norm before the output projection
    pooler: bool  # BERT's dense + tanh on the first token
    logits_bias: LogitsBias
    rescale: bool  # hidden * d_model ** -0.5 before the tied projection (T5)
    bias: bool  # of the transform's and the pooler's dense layers
    transform_activation: ActivationKind = "gelu"
    softcap: bool = False  # logits = cap * tanh(logits / cap), config.final_logit_softcap

    def activate(self, argument: str) -> str:
        return _ACTIVATION_CALLS[self.transform_activation].format(argument)


@dataclass(frozen=True)
class InitPlan:
    """``normal``: N(0, std) weights, zero biases (GPT-2, BERT, BART, Llama). ``t5``: T5's
    factor-scaled init (Mesh TensorFlow), for models whose attention is unscaled."""

    kind: InitKind
    std: float = 0.02


@dataclass(frozen=True)
class ModelPlan:
    """A whole generated file."""

    spec_name: str
    spec_sha256: str
    prefix: str  # class name prefix: "tiny-decoder" -> "TinyDecoder"
    family: Family
    summary: str  # the first line of the module docstring
    description: tuple[str, ...]  # bullet points of the module docstring
    references: tuple[str, ...]
    config: tuple[ConfigField, ...]
    norm: NormPlan
    positions: PositionsPlan
    attention: AttentionPlan
    feed_forward: FeedForwardPlan
    embeddings: EmbeddingsPlan
    head: HeadPlan
    stacks: tuple[StackPlan, ...]
    loss: LossKind
    init: InitPlan
    hidden_dropout: bool
    block: BlockPlan = BlockPlan()

    def __post_init__(self) -> None:
        if not _IDENTIFIER.match(self.prefix) or not self.prefix[0].isupper():
            raise PlanError(f"class prefix {self.prefix!r} is not a CapWords identifier")
        if not re.fullmatch(r"[0-9a-f]{64}", self.spec_sha256):
            raise PlanError("spec_sha256 must be 64 lowercase hex digits")
        names = [f.name for f in self.config]
        if len(set(names)) != len(names):
            raise PlanError(f"duplicate config fields in {names}")
        roles = tuple(s.role for s in self.stacks)
        expected = {
            "encoder-only": ("encoder",),
            "decoder-only": ("decoder",),
            "encoder-decoder": ("encoder", "decoder"),
        }[self.family]
        if roles != expected:
            raise PlanError(f"a {self.family} model has stacks {expected}, got {roles}")
        for stack in self.stacks:
            if stack.layers_field not in names:
                raise PlanError(f"stack {stack.role}: no config field {stack.layers_field!r}")
            if stack.cross_attention != (self.family == "encoder-decoder" and stack.causal):
                raise PlanError(f"stack {stack.role}: cross-attention only in a seq2seq decoder")
        if self.head.rescale and not self.head.tied:
            raise PlanError("rescale applies to a tied output projection")
        if self.block.parallel is not None:
            if self.norm.position != "pre" or self.norm.sandwich:
                raise PlanError("a parallel block is pre-norm, without sandwich norms")
            if self.family == "encoder-decoder":
                raise PlanError("a parallel block has no place for cross-attention")
        for text in (self.summary, *self.description, *self.references):
            if '"""' in text or "\\" in text:
                raise PlanError(f"docstring text may not contain quotes or backslashes: {text!r}")

    def field(self, name: str) -> ConfigField:
        for f in self.config:
            if f.name == name:
                return f
        raise PlanError(f"no config field {name!r}")

    @property
    def has_cache(self) -> bool:
        """Some stack decodes token by token with a key/value cache."""
        return any(s.causal for s in self.stacks)

    @property
    def has_encoder_stack(self) -> bool:
        return any(not s.causal for s in self.stacks)

    @property
    def uses_math(self) -> bool:
        """Whether the file needs ``import math``."""
        return (
            self.embeddings.scale
            or self.positions.kind in ("alibi", "relative")
            or self.positions.scaling in ("llama3", "yarn")
            or any(s.scaled_residual_init for s in self.stacks)
        )

    @property
    def relative_directions(self) -> tuple[str, ...]:
        """The kinds of T5 buckets the stacks use, in stack order: "bidirectional" (encoder),
        "causal" (decoder)."""
        return tuple("causal" if s.causal else "bidirectional" for s in self.stacks)

    @property
    def positions_name(self) -> str:
        return POSITION_NAMES[self.positions.kind]

    @property
    def position_input_items(self) -> tuple[str, ...]:
        """The positional inputs of an attention layer, as ``name: description`` items."""
        if self.positions.kind == "rope":
            rotated = "rd" if self.positions.partial else "hs"
            return (f"cos, sin: (B, 1, T, {rotated}) the rotary angles of the new positions.",)
        if self.positions.is_bias:
            return (f"position_bias: (1, nh, T, S) the {self.positions_name} on the scores.",)
        return ()

    @property
    def self_attention_doc(self) -> str:
        heads = {
            (False, False): "Multi-head self-attention",
            (True, False): "Grouped-query self-attention (GQA: each key/value head serves a group "
            "of query heads)",
            (True, True): "Multi-query self-attention (MQA: one key/value head for all query "
            "heads)",
        }[(self.attention.grouped, self.attention.multi_query)]
        parts = [heads]
        if self.positions.kind == "rope":
            parts.append("with rotary positions on queries and keys")
        elif self.positions.is_bias:
            parts.append(f"with the {self.positions_name} on the scores")
        text = " ".join(parts) + "."
        if self.has_cache:
            text += (
                " Causal in the decoder, where it takes and returns the key/value cache;"
                " bidirectional in the encoder."
                if self.has_encoder_stack
                else " Causal; takes and returns the key/value cache."
            )
        return text

    @property
    def embedding_doc(self) -> str:
        """What the stacks add to the token embeddings, in order."""
        parts = ["token embeddings"]
        if self.embeddings.scale:
            parts[0] = "token embeddings scaled by sqrt(d_model)"
        if self.positions.kind in ("learned", "sinusoidal"):
            parts.append(f"plus {self.positions_name}")
        if self.embeddings.token_types:
            parts.append("plus token types (encoder)")
        text = " ".join(parts)
        return text + ", normalized" if self.embeddings.norm else text

    @property
    def model_class(self) -> str:
        suffix = {
            "decoder-only": "ForCausalLM",
            "encoder-only": "ForMaskedLM",
            "encoder-decoder": "ForConditionalGeneration",
        }[self.family]
        return self.prefix + suffix
