"""Parameter counts from a spec, per component, and the bytes they take at each precision.

The count is exact: the generated PyTorch model has exactly :func:`count_parameters`'s
parameters, tied weights counted once. :func:`weight_bytes` stores them as ONNX Runtime's
quantization does: dynamic quantization (``quantize_dynamic``, int8) and ``MatMulNBits``
(int4), https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from llmspec.spec.sections import ModelSpec

PrecisionName = Literal["fp32", "fp16", "bf16", "int8", "int4"]
PRECISIONS: tuple[PrecisionName, ...] = ("fp32", "fp16", "bf16", "int8", "int4")
FLOAT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}

INT8_SCALE_BYTES = 4  # one fp32 scale per output channel


# ----------------------------------------------------------------------------------------
# Parameters


@dataclass(frozen=True)
class Component:
    """One group of parameters: ``copies`` identical copies (one per layer) of ``per_copy``.

    ``matrices`` are the ``(out_features, in_features)`` weights of the linear layers in one
    copy, the tensors that weight quantization replaces; the rest (embedding tables, norms,
    biases) stays in floating point. ``embedding`` marks lookup tables (tokens, positions,
    token types, relative position buckets), which are not matrix multiplies.
    """

    name: str
    per_copy: int
    copies: int = 1
    matrices: tuple[tuple[int, int], ...] = ()
    embedding: bool = False

    @property
    def total(self) -> int:
        return self.per_copy * self.copies

    @property
    def matrix_parameters(self) -> int:
        """Parameters in linear-layer weights, over all copies."""
        return self.copies * sum(out * inp for out, inp in self.matrices)


@dataclass(frozen=True)
class ParameterCount:
    """Every parameter of a model, grouped into :class:`Component` s in model order.

    ``tied_output`` is the size of the output projection when it is the token embedding
    (counted once, in ``token_embeddings``, but still a matrix multiply per token)."""

    components: tuple[Component, ...]
    tied_output: int = 0

    @property
    def total(self) -> int:
        return sum(c.total for c in self.components)

    @property
    def embedding(self) -> int:
        """Parameters in lookup tables (tokens, positions, token types, relative buckets)."""
        return sum(c.total for c in self.components if c.embedding)

    @property
    def non_embedding(self) -> int:
        """Kaplan et al.'s N: every parameter outside the lookup tables."""
        return self.total - self.embedding

    @property
    def matmul(self) -> int:
        """Parameters that take part in a matrix multiply for every token: all linear weights,
        plus the output projection when it is tied to the token embedding."""
        return sum(c.matrix_parameters for c in self.components) + self.tied_output

    def __getitem__(self, name: str) -> int:
        """The total of the component called ``name``; 0 when the model has none."""
        return sum(c.total for c in self.components if c.name == name)


def _norm(spec: ModelSpec) -> int:
    """A norm's parameters: a scale, and a shift for LayerNorm when norm biases are on (the
    spec's ``bias`` unless ``norm.bias`` says otherwise)."""
    shift = spec.bias if spec.norm.bias is None else spec.norm.bias
    has_shift = spec.norm.type == "layernorm" and shift
    return spec.d_model * (2 if has_shift else 1)


def _norms_per_layer(spec: ModelSpec, cross: bool) -> int:
    """One norm before each sublayer (attention, cross-attention, feed-forward), one for both
    in a shared-norm parallel block; sandwich norms add one after each sublayer."""
    sublayers = 3 if cross else 2
    norms = 1 if spec.block.parallel == "shared-norm" else sublayers
    return norms + (sublayers if spec.norm.sandwich else 0)


def _linears(spec: ModelSpec, *shapes: tuple[int, int]) -> tuple[int, tuple[tuple[int, int], ...]]:
    """(parameters, matrices) of linear layers with the given (out, in) shapes; each has a
    bias of ``out`` values when ``spec.bias`` is on."""
    weights = sum(out * inp for out, inp in shapes)
    biases = sum(out for out, _ in shapes) if spec.bias else 0
    return weights + biases, shapes


def _attention(spec: ModelSpec, name: str, layers: int) -> Component:
    """q_proj, k_proj, v_proj and o_proj; q/k/v biases as ``attention.qkv_bias`` says (default:
    the spec's ``bias``), o_proj's as ``bias``; QK-norm's two RMSNorm scales of head_dim."""
    a, d = spec.attention, spec.d_model
    q_width, kv_width = a.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    matrices = ((q_width, d), (kv_width, d), (kv_width, d), (d, q_width))
    count = sum(out * inp for out, inp in matrices)
    if spec.bias if a.qkv_bias is None else a.qkv_bias:
        count += q_width + 2 * kv_width
    if spec.bias:
        count += d
    if a.qk_norm == "rmsnorm":
        count += 2 * spec.head_dim
    return Component(name, count, layers, matrices)


def _feed_forward(spec: ModelSpec, name: str, layers: int) -> Component:
    d, d_ff = spec.d_model, spec.feed_forward.d_ff
    into = ((d_ff, d), (d_ff, d)) if spec.gated else ((d_ff, d),)  # (gate_proj,) up_proj
    count, matrices = _linears(spec, *into, (d, d_ff))  # ..., down_proj
    return Component(name, count, layers, matrices)


def stacks(spec: ModelSpec) -> list[tuple[str, int, bool]]:
    """(name, layers, has cross-attention) of each stack, input side first."""
    if spec.architecture == "encoder-only":
        return [("encoder", spec.layers, False)]
    if spec.architecture == "decoder-only":
        return [("decoder", spec.layers, False)]
    return [("encoder", spec.encoder_layers, False), ("decoder", spec.num_decoder_layers, True)]


def count_parameters(spec: ModelSpec) -> ParameterCount:
    """The exact parameters of the model a spec describes, per component, in model order.

    Component names: ``token_embeddings``, ``token_type_embeddings``, then per stack
    (``encoder``/``decoder``) ``positions``, ``relative_bias``, ``embedding_norm``,
    ``self_attention``, ``cross_attention``, ``feed_forward``, ``layer_norms`` (2 per layer, 3
    with cross-attention; 1 in a shared-norm parallel block; twice as many with sandwich
    norms), ``final_norm`` (pre-norm stacks only), then ``head.pooler``,
    ``head.transform``, ``head.lm_head`` (untied only) and ``head.logits_bias`` (learned only;
    a buffer is not a parameter). The token embedding is shared by both stacks of an
    encoder-decoder; learned position tables are per stack.
    """
    d, vocab = spec.d_model, spec.vocabulary.size
    parts = [Component("token_embeddings", vocab * d, embedding=True)]
    if spec.embeddings.token_types:
        parts.append(
            Component("token_type_embeddings", spec.embeddings.token_types * d, embedding=True)
        )
    positions = spec.positions
    for stack, layers, cross in stacks(spec):
        if positions.type == "learned":
            rows = positions.max_positions + positions.offset
            parts.append(Component(f"{stack}.positions", rows * d, embedding=True))
        elif positions.type == "relative":
            table = positions.buckets * spec.attention.heads
            parts.append(Component(f"{stack}.relative_bias", table, embedding=True))
        if spec.embeddings.norm:
            parts.append(Component(f"{stack}.embedding_norm", _norm(spec)))
        parts.append(_attention(spec, f"{stack}.self_attention", layers))
        if cross:
            parts.append(_attention(spec, f"{stack}.cross_attention", layers))
        parts.append(_feed_forward(spec, f"{stack}.feed_forward", layers))
        parts.append(
            Component(f"{stack}.layer_norms", _norms_per_layer(spec, cross) * _norm(spec), layers)
        )
        if spec.norm.position == "pre":
            parts.append(Component(f"{stack}.final_norm", _norm(spec)))
    head = spec.head
    if head.pooler:
        count, matrices = _linears(spec, (d, d))
        parts.append(Component("head.pooler", count, matrices=matrices))
    if head.transform:
        count, matrices = _linears(spec, (d, d))
        parts.append(Component("head.transform", count + _norm(spec), matrices=matrices))
    if not head.tied:
        parts.append(Component("head.lm_head", vocab * d, matrices=((vocab, d),)))
    if head.logits_bias == "learned":
        parts.append(Component("head.logits_bias", vocab))
    return ParameterCount(tuple(parts), tied_output=vocab * d if head.tied else 0)


# ----------------------------------------------------------------------------------------
# Weight memory


def _int4_base(spec: ModelSpec) -> Literal["fp32", "fp16"]:
    """The float type around int4 weights: MatMulNBits takes fp32 or fp16 activations."""
    return "fp16" if spec.precision.dtype == "fp16" else "fp32"


def weight_bytes(spec: ModelSpec, precision: PrecisionName) -> int:
    """Bytes of the model's parameters stored at ``precision``.

    * fp32, fp16, bf16: every parameter at 4, 2, 2 bytes.
    * int8, as ONNX Runtime's dynamic quantization (``quantize_dynamic``, per channel,
      symmetric) of an fp32 graph: each linear weight 1 byte per value plus one fp32 scale per
      output channel; embedding tables (Gather, not MatMul), norms and biases stay fp32.
    * int4, as ONNX Runtime's ``MatMulNBits`` (symmetric, no zero points): each linear weight
      is cut along its input dimension into blocks of ``spec.precision.block_size`` values
      (the last block padded), 0.5 byte per value plus one scale per block. Scales and
      everything that is not a linear weight (embeddings, norms, biases) keep the graph's
      float type: fp16 when the spec's dtype is fp16, otherwise fp32.

    The output projection (``head.lm_head``, or for a tied head the transposed copy of the
    embedding table that quantization makes it: the exporter unties it so that it can be
    quantized, and the table itself stays in the graph's float type for the Gather) is
    quantized as well: at int8 as the other linear weights, at int4 as 8-bit ``MatMulNBits``
    blocks (1 byte per value plus a scale per block), which keeps its quality (the exporter's
    default ``Int4Choice``, see :mod:`llmspec.exporter.quantize`). Buffers (BART's
    ``final_logits_bias``, rotary tables) are not parameters and are not counted.
    """
    params = count_parameters(spec)
    if precision in FLOAT_BYTES:
        return params.total * FLOAT_BYTES[precision]
    base = FLOAT_BYTES["fp32" if precision == "int8" else _int4_base(spec)]
    block = spec.precision.block_size

    def quantized(out: int, inp: int, bits: int = 4) -> int:
        if precision == "int8":
            return out * inp + out * INT8_SCALE_BYTES
        return out * math.ceil(inp / block) * (block * bits // 8 + base)

    total = 0
    for c in params.components:
        bits = 8 if c.name == "head.lm_head" else 4
        matrices = sum(quantized(out, inp, bits) for out, inp in c.matrices)
        rest = c.per_copy - sum(out * inp for out, inp in c.matrices)
        total += c.copies * (matrices + rest * base)
    if params.tied_output:  # the untied, quantized copy of the embedding table
        total += quantized(params.tied_output // spec.d_model, spec.d_model, 8)
    return total
