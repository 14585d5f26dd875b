"""Memory from a spec: inference (weights and KV cache), training per device (model states
and activations), and whether building or training it fits this machine.

References:

* ZeRO: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
  Parameter Models", https://arxiv.org/abs/1910.02054 (:func:`model_states_bytes`)
* Activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", https://arxiv.org/abs/2205.05198 (:func:`layer_activation_bytes`)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from llmspec.estimates.counts import FLOAT_BYTES, PrecisionName, count_parameters, stacks
from llmspec.estimates.units import human_bytes
from llmspec.spec.sections import ModelSpec
from runtime.memory import MachineMemory, machine_memory

ADAM_STATE_BYTES = 8  # Adam's first and second moments, fp32
MASTER_WEIGHT_BYTES = 4  # the fp32 copy of the weights kept by mixed-precision training
LOGITS_BYTES = 4  # the logits are computed in fp32 for the loss (Korthikanti et al., 4.3)

StrategyName = Literal["ddp", "zero-1", "zero-2", "zero-3", "fsdp"]
# Each data-parallel strategy and the ZeRO stage it amounts to. FSDP's full sharding shards
# weights, gradients and optimizer states, as ZeRO-3 does.
STRATEGIES: tuple[tuple[StrategyName, int], ...] = (
    ("ddp", 0),
    ("zero-1", 1),
    ("zero-2", 2),
    ("zero-3", 3),
    ("fsdp", 3),
)


# ----------------------------------------------------------------------------------------
# Inference


@dataclass(frozen=True)
class InferenceMemory:
    """Memory to serve one model replica: weights plus the KV cache for a batch.

    Transient activations and the runtime's workspace are not included. KV entries are kept
    in the graph's float type (the spec's dtype; fp32 for int8 models)."""

    precision: PrecisionName
    weights: int
    kv_bytes_per_token: int  # decoder self-attention, one token of one sequence
    cross_kv_bytes_per_token: int  # cross-attention, one encoder token (encoder-decoder)
    kv_cache: int  # for batch_size sequences of seq_len decoder (and encoder) tokens

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache


def kv_bytes_per_token(spec: ModelSpec) -> int:
    """Bytes of decoder self-attention keys and values one token adds to the cache:
    2 (K and V) x decoder layers x kv_heads x head_dim x bytes of the spec's dtype.
    0 for encoder-only models, which keep no cache. For encoder-decoder models the decoder's
    cross-attention keys and values take the same number of bytes per encoder token.
    Windowed layers (``attention.sliding_window``) count the same: their cache keeps every
    position, as the generated models do (no ring buffer of the window)."""
    return (
        2
        * spec.num_decoder_layers
        * spec.kv_heads
        * spec.head_dim
        * FLOAT_BYTES[spec.precision.dtype]
    )


# ----------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class ModelStates:
    """Bytes of one device's model states: weights, gradients and optimizer states."""

    weights: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer


def model_states_bytes(
    params: int, *, gpus: int = 1, stage: int = 0, mixed_precision: bool = True
) -> ModelStates:
    """One device's model-state bytes for Adam under data parallelism with ZeRO ``stage``.

    Mixed precision (Rajbhandari et al. 2020, section 3.1): 2-byte weights and 2-byte
    gradients, and K = 12 optimizer bytes per parameter (fp32 master weights, Adam's m and v):
    16 bytes per parameter. Pure fp32 training: 4-byte weights, 4-byte gradients and 8 bytes
    of Adam m and v (no master copy, the weights are already fp32): 16 bytes as well.

    Stage 0 (DDP) replicates everything; stage 1 shards the optimizer states over ``gpus``;
    stage 2 also the gradients; stage 3 (FSDP full shard) also the weights. A shard holds
    ceil(params / gpus) parameters. The buffers ZeRO-3/FSDP gather for one layer at a time
    are not included.

    >>> s = model_states_bytes(7_500_000_000, gpus=64, stage=1)
    >>> round(s.total / 1e9, 1)
    31.4
    """
    if params < 0:
        raise ValueError(f"params must not be negative, got {params}")
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    if stage not in (0, 1, 2, 3):
        raise ValueError(f"ZeRO stage must be 0 (DDP), 1, 2 or 3, got {stage}")
    shard = math.ceil(params / gpus)
    if mixed_precision:
        weight, gradient, optimizer = 2, 2, MASTER_WEIGHT_BYTES + ADAM_STATE_BYTES
    else:
        weight, gradient, optimizer = 4, 4, ADAM_STATE_BYTES
    return ModelStates(
        weights=(shard if stage >= 3 else params) * weight,
        gradients=(shard if stage >= 2 else params) * gradient,
        optimizer=(shard if stage >= 1 else params) * optimizer,
    )


def layer_activation_bytes(
    seq_len: int,
    batch_size: int,
    d_model: int,
    heads: int,
    *,
    value_bytes: int = 2,
    recompute: bool = False,
) -> int:
    """Activation bytes one transformer layer keeps for the backward pass.

    Korthikanti et al. 2022, section 4.1: ``s*b*h*(34 + 5*a*s/h)`` bytes with 16-bit
    activations (s = seq_len, b = batch_size, h = d_model, a = heads), i.e. 34sbh + 5as²b. Of
    that, the dropout masks (2sbh + as²b) are 1 byte per value and the rest 2 bytes, so for
    ``value_bytes`` e it is ``e*(16sbh + 2as²b) + 2sbh + as²b``. The formula assumes a
    multi-head attention block and a 4h feed-forward, as in the paper, and attention that
    materializes its s x s scores (the as²b terms); a fused attention kernel (FlashAttention,
    SDPA) keeps far less. With full activation recomputation only each layer's input is
    kept: ``e*s*b*h``.

    >>> layer_activation_bytes(128, 1, 768, 12)  # BERT-base: 4.33 MB
    4325376
    """
    sbh = seq_len * batch_size * d_model
    scores = heads * seq_len * seq_len * batch_size
    if recompute:
        return value_bytes * sbh
    return value_bytes * (16 * sbh + 2 * scores) + 2 * sbh + scores


def _cross_attention_activation_bytes(
    seq_len: int, batch_size: int, d_model: int, heads: int, value_bytes: int
) -> int:
    """What a decoder layer's cross-attention adds to :func:`layer_activation_bytes`: the
    paper's attention block (11sbh + 5as²b at 16 bits) plus its norm (2sbh), taking the
    encoder length equal to the decoder length."""
    sbh = seq_len * batch_size * d_model
    scores = heads * seq_len * seq_len * batch_size
    return value_bytes * (6 * sbh + 2 * scores) + sbh + scores


@dataclass(frozen=True)
class TrainingMemory:
    """One device's training memory under one data-parallel strategy."""

    strategy: StrategyName
    stage: int  # the ZeRO stage the strategy amounts to
    states: ModelStates
    activations: int  # without recomputation
    activations_recompute: int  # with full activation recomputation

    @property
    def total(self) -> int:
        return self.states.total + self.activations

    @property
    def total_recompute(self) -> int:
        return self.states.total + self.activations_recompute


def training_activation_bytes(
    spec: ModelSpec, batch_size: int, seq_len: int, recompute: bool
) -> int:
    """Activation bytes of one device's micro-batch: every layer of every stack, plus the
    fp32 logits the loss keeps (4 x s x b x vocab, Korthikanti et al. section 4.3)."""
    value_bytes = FLOAT_BYTES[spec.precision.dtype]
    shape = (seq_len, batch_size, spec.d_model, spec.attention.heads)
    total = LOGITS_BYTES * seq_len * batch_size * spec.vocabulary.size
    for _, layers, cross in stacks(spec):
        per_layer = layer_activation_bytes(*shape, value_bytes=value_bytes, recompute=recompute)
        if cross and not recompute:
            per_layer += _cross_attention_activation_bytes(*shape, value_bytes)
        total += layers * per_layer
    return total


# ----------------------------------------------------------------------------------------
# Memory against this machine

# What the Python objects of one layer's modules take besides the parameters (measured: about
# 40 KiB for a layer of a tiny model); it is what a spec with millions of tiny layers needs.
MODULE_BYTES_PER_LAYER = 64 * 1024


def build_bytes(spec: ModelSpec, dtype: str = "fp32") -> int:
    """Bytes that building the model of ``spec`` in ``dtype`` takes at least: the parameters
    are initialized in fp32 and then cast (both copies live for a moment), the logits-bias
    buffer, and the modules' own objects (:data:`MODULE_BYTES_PER_LAYER`)."""
    params = count_parameters(spec).total + spec.vocabulary.size
    cast = FLOAT_BYTES[dtype] if dtype != "fp32" else 0
    layers = spec.encoder_layers + spec.num_decoder_layers
    return params * (FLOAT_BYTES["fp32"] + cast) + layers * MODULE_BYTES_PER_LAYER


def train_bytes(spec: ModelSpec, shards: int = 1) -> int:
    """Bytes of one device's model states when training ``spec`` with Adam (16 per
    parameter, see :func:`model_states_bytes`), sharded over ``shards`` devices (FSDP);
    activations not included."""
    params = count_parameters(spec).total
    stage = 3 if shards > 1 else 0
    return model_states_bytes(params, gpus=shards, stage=stage).total


def shortfall(need: int, memory: MachineMemory | None) -> str | None:
    """Why ``need`` bytes do not fit ``memory`` (None when they fit or memory is unknown)."""
    if memory is None or need <= memory.available:
        return None
    return (
        f"{memory.device} has {human_bytes(memory.available)} available "
        f"({human_bytes(memory.total)} in all)"
    )


def fit_warnings(spec: ModelSpec, memory: MachineMemory | None = None) -> list[str]:
    """Plain warnings for ``llmspec estimate`` when building or training ``spec`` would not fit
    this machine's memory (``memory``: default :func:`machine_memory`)."""
    memory = memory or machine_memory()
    out = []
    build = build_bytes(spec)
    why = shortfall(build, memory)
    if why is not None:
        out.append(
            f"warning: {spec.name} would not fit this machine: building it (export, train) needs "
            f"at least {human_bytes(build)}, and {why}"
        )
    else:
        train = train_bytes(spec)
        why = shortfall(train, memory)
        if why is not None:
            out.append(
                f"warning: training {spec.name} here would not fit: its weights, gradients and "
                f"Adam states need {human_bytes(train)}, and {why}"
            )
    return out
