"""Estimates from a spec alone: parameters, memory and FLOPs, without building anything.

Pure Python (no torch): ``llmspec estimate`` must answer "does this fit?" on a laptop before
anyone installs the compile extra. What it computes:

* the **exact parameter count**, per component and in total, with tied weights counted once;
  the generated PyTorch model has exactly this many parameters (:func:`count_parameters`);
* **weight memory** for every precision (fp32, fp16, bf16, int8, int4), see
  :func:`weight_bytes` for the quantization schemes;
* **inference memory**: weights at the artifact's precision plus the KV cache;
* **training memory per device** for DDP, ZeRO-1/2/3 and FSDP, following Rajbhandari et al.
  2020 for model states (:func:`model_states_bytes`) and Korthikanti et al. 2022 for
  activations (:func:`layer_activation_bytes`);
* **FLOPs per token**: 2 (forward) and 6 (training) per matrix-multiply parameter;
* the **training compute view** (:class:`TrainingCompute`): FLOPs for a token count, the
  compute-optimal token count (20 per parameter) and, on a device from :data:`DEVICES` at an
  assumed model FLOPs utilization (MFU), the training time;
* **memory per device against device count** for each strategy (:func:`memory_by_gpus`),
  drawn by :func:`plot_memory` (matplotlib, imported only there).

References:

* ZeRO: Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
  Parameter Models", https://arxiv.org/abs/1910.02054
* Activations: Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", https://arxiv.org/abs/2205.05198
* FLOPs: Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1,
  https://arxiv.org/abs/2001.08361
* Compute-optimal tokens: Hoffmann et al. 2022, "Training Compute-Optimal Large Language
  Models" (Chinchilla), https://arxiv.org/abs/2203.15556
* MFU: Chowdhery et al. 2022, "PaLM: Scaling Language Modeling with Pathways", appendix B,
  https://arxiv.org/abs/2204.02311
* Quantization: ONNX Runtime's dynamic quantization (``quantize_dynamic``, int8) and
  ``MatMulNBits`` (int4), https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html

Units: parameter counts are counts, memory is bytes, FLOPs are floating-point operations
(a multiply-add is 2). :meth:`Estimate.render` shows binary units (KiB, MiB, GiB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from llmspec.spec.sections import ModelSpec
from runtime.memory import MachineMemory, machine_memory

PrecisionName = Literal["fp32", "fp16", "bf16", "int8", "int4"]
PRECISIONS: tuple[PrecisionName, ...] = ("fp32", "fp16", "bf16", "int8", "int4")
FLOAT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}

INT8_SCALE_BYTES = 4  # one fp32 scale per output channel
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
    """A norm's parameters: a scale, and a shift for LayerNorm when biases are on."""
    has_shift = spec.norm.type == "layernorm" and spec.bias
    return spec.d_model * (2 if has_shift else 1)


def _linears(spec: ModelSpec, *shapes: tuple[int, int]) -> tuple[int, tuple[tuple[int, int], ...]]:
    """(parameters, matrices) of linear layers with the given (out, in) shapes; each has a
    bias of ``out`` values when ``spec.bias`` is on."""
    weights = sum(out * inp for out, inp in shapes)
    biases = sum(out for out, _ in shapes) if spec.bias else 0
    return weights + biases, shapes


def _attention(spec: ModelSpec, name: str, layers: int) -> Component:
    d = spec.d_model
    q_width, kv_width = spec.attention.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    # q_proj, k_proj, v_proj, o_proj
    count, matrices = _linears(spec, (q_width, d), (kv_width, d), (kv_width, d), (d, q_width))
    return Component(name, count, layers, matrices)


def _feed_forward(spec: ModelSpec, name: str, layers: int) -> Component:
    d, d_ff = spec.d_model, spec.feed_forward.d_ff
    into = ((d_ff, d), (d_ff, d)) if spec.gated else ((d_ff, d),)  # (gate_proj,) up_proj
    count, matrices = _linears(spec, *into, (d, d_ff))  # ..., down_proj
    return Component(name, count, layers, matrices)


def _stacks(spec: ModelSpec) -> list[tuple[str, int, bool]]:
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
    with cross-attention), ``final_norm`` (pre-norm stacks only), then ``head.pooler``,
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
    for stack, layers, cross in _stacks(spec):
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
        parts.append(Component(f"{stack}.layer_norms", (3 if cross else 2) * _norm(spec), layers))
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

    A tied output projection is the embedding table and stays unquantized. Buffers (BART's
    ``final_logits_bias``, rotary tables) are not parameters and are not counted.
    """
    params = count_parameters(spec)
    if precision in FLOAT_BYTES:
        return params.total * FLOAT_BYTES[precision]
    base = FLOAT_BYTES["fp32" if precision == "int8" else _int4_base(spec)]
    block = spec.precision.block_size

    def quantized(out: int, inp: int) -> int:
        if precision == "int8":
            return out * inp + out * INT8_SCALE_BYTES
        return out * math.ceil(inp / block) * (block // 2 + base)

    total = 0
    for c in params.components:
        matrices = sum(quantized(out, inp) for out, inp in c.matrices)
        rest = c.per_copy - sum(out * inp for out, inp in c.matrices)
        total += c.copies * (matrices + rest * base)
    return total


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
    cross-attention keys and values take the same number of bytes per encoder token."""
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


def _training_activations(spec: ModelSpec, batch_size: int, seq_len: int, recompute: bool) -> int:
    """Activation bytes of one device's micro-batch: every layer of every stack, plus the
    fp32 logits the loss keeps (4 x s x b x vocab, Korthikanti et al. section 4.3)."""
    value_bytes = FLOAT_BYTES[spec.precision.dtype]
    shape = (seq_len, batch_size, spec.d_model, spec.attention.heads)
    total = LOGITS_BYTES * seq_len * batch_size * spec.vocabulary.size
    for _, layers, cross in _stacks(spec):
        per_layer = layer_activation_bytes(*shape, value_bytes=value_bytes, recompute=recompute)
        if cross and not recompute:
            per_layer += _cross_attention_activation_bytes(*shape, value_bytes)
        total += layers * per_layer
    return total


# ----------------------------------------------------------------------------------------
# Compute and devices

# Hoffmann et al. 2022 (table 3, and the 70B/1.4T-token Chinchilla): about 20 training tokens
# per parameter for the least loss at a given compute. Their N counts every parameter,
# embeddings included, so the compute-optimal count here is 20 x ParameterCount.total.
TOKENS_PER_PARAMETER = 20
DEFAULT_MFU = 0.4  # a good large-scale run; PaLM reports 46%, GPT-3 on V100s about 21%


@dataclass(frozen=True)
class Device:
    """One accelerator: its peak dense matrix-multiply rate at ``precision`` (no 2:4 sparsity)
    and, where it has its own, its memory."""

    name: str
    description: str
    peak_flops: int  # FLOP/s
    precision: str
    memory_bytes: int | None = None


# Vendor datasheet figures, dense (the datasheets also print twice these "with sparsity"):
# * H100 SXM: 989 TFLOP/s bf16 tensor core, 80 GB HBM3
#   (NVIDIA H100 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h100/)
# * A100 SXM: 312 TFLOP/s bf16 tensor core, 80 GB HBM2e
#   (NVIDIA A100 datasheet, https://www.nvidia.com/en-us/data-center/a100/)
# * V100 SXM2: 125 TFLOP/s fp16 tensor core (no bf16), 32 GB HBM2
#   (NVIDIA V100 datasheet, https://www.nvidia.com/en-us/data-center/v100/)
# * L4: 121 TFLOP/s bf16 tensor core, 24 GB GDDR6
#   (NVIDIA L4 datasheet, https://www.nvidia.com/en-us/data-center/l4/)
# The CPUs are nominal machines, their peaks worked out from the vector units, fp32:
# * cpu-avx512: 32 cores x 2.0 GHz x 64 FLOP/cycle (two 512-bit FMA units: 2 x 16 lanes x 2)
# * cpu-avx2: 8 cores x 3.0 GHz x 32 FLOP/cycle (two 256-bit FMA units: 2 x 8 lanes x 2)
DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device("h100", "NVIDIA H100 SXM", 989 * 10**12, "bf16", 80 * 2**30),
        Device("a100", "NVIDIA A100 SXM 80GB", 312 * 10**12, "bf16", 80 * 2**30),
        Device("v100", "NVIDIA V100 SXM2 32GB", 125 * 10**12, "fp16", 32 * 2**30),
        Device("l4", "NVIDIA L4", 121 * 10**12, "bf16", 24 * 2**30),
        Device("cpu-avx512", "32-core AVX-512 CPU at 2.0 GHz", 32 * 2 * 10**9 * 64, "fp32"),
        Device("cpu-avx2", "8-core AVX2 CPU at 3.0 GHz", 8 * 3 * 10**9 * 32, "fp32"),
    )
}


def training_seconds(
    flops: int, device: Device, *, gpus: int = 1, mfu: float = DEFAULT_MFU
) -> float:
    """Seconds to do ``flops`` on ``gpus`` devices, each at ``mfu`` of its peak: the model
    FLOPs utilization (Chowdhery et al. 2022), the share of the peak that goes to the model's
    own arithmetic. Communication is assumed hidden (perfect scaling across devices).

    >>> round(training_seconds(989 * 10**12, DEVICES["h100"], mfu=0.5))
    2
    """
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    return flops / (gpus * device.peak_flops * mfu)


@dataclass(frozen=True)
class TrainingCompute:
    """The training compute view: FLOPs for ``tokens`` (given, or else the compute-optimal
    count) at 6 FLOPs per matrix-multiply parameter per token, and the time on a device.

    ``matmul_parameters`` (:attr:`ParameterCount.matmul`) size the FLOPs, as for FLOPs per
    token: ``flops = 6 x matmul_parameters x tokens``. ``parameters`` (all of them, embeddings
    included, as Hoffmann et al. count) size the compute-optimal count: ``20 x parameters``.
    """

    parameters: int
    matmul_parameters: int
    compute_optimal_tokens: int
    tokens: int
    tokens_given: bool  # False: ``tokens`` is the compute-optimal count
    device: Device | None
    mfu: float
    gpus: int

    @property
    def flops(self) -> int:
        return 6 * self.matmul_parameters * self.tokens

    @property
    def compute_optimal_flops(self) -> int:
        return 6 * self.matmul_parameters * self.compute_optimal_tokens

    @property
    def seconds(self) -> float | None:
        """Training time for ``tokens`` on ``gpus`` devices; None without a device."""
        if self.device is None:
            return None
        return training_seconds(self.flops, self.device, gpus=self.gpus, mfu=self.mfu)

    def to_json(self) -> dict[str, Any]:
        device = self.device
        return {
            "parameters": self.parameters,
            "matmul_parameters": self.matmul_parameters,
            "tokens_per_parameter": TOKENS_PER_PARAMETER,
            "compute_optimal_tokens": self.compute_optimal_tokens,
            "compute_optimal_flops": self.compute_optimal_flops,
            "tokens": self.tokens,
            "tokens_source": "given" if self.tokens_given else "compute-optimal",
            "flops": self.flops,
            "device": None
            if device is None
            else {
                "name": device.name,
                "description": device.description,
                "peak_flops": device.peak_flops,
                "precision": device.precision,
                "memory_bytes": device.memory_bytes,
            },
            "mfu": self.mfu,
            "gpus": self.gpus,
            "seconds": self.seconds,
        }


def human_duration(seconds: float) -> str:
    """A duration in the largest unit that keeps it readable: ``31.2 minutes``, ``3.5 days``."""
    for factor, unit, limit in (
        (1, "seconds", 120),
        (60, "minutes", 120 * 60),
        (3600, "hours", 72 * 3600),
        (86400, "days", 730 * 86400),
    ):
        if seconds < limit:
            return f"{seconds / factor:.1f} {unit}"
    return f"{seconds / (365.25 * 86400):.1f} years"


# ----------------------------------------------------------------------------------------
# The estimate


@dataclass(frozen=True)
class Estimate:
    """Everything :func:`estimate` works out for one spec and one workload."""

    name: str
    architecture: str
    batch_size: int  # sequences per device (the micro-batch, for training)
    seq_len: int  # tokens per sequence (encoder and decoder each, for encoder-decoder)
    gpus: int  # data-parallel devices for training
    dtype: str  # the spec's dtype: training precision and KV-cache type
    parameters: ParameterCount
    weights: tuple[tuple[PrecisionName, int], ...]  # bytes at each precision, PRECISIONS order
    inference: InferenceMemory
    mixed_precision: bool  # training keeps fp32 master weights (dtype fp16/bf16)
    activations_per_layer: int  # bytes, one self-attention layer, no recomputation
    training: tuple[TrainingMemory, ...]  # per device, one per STRATEGIES entry
    forward_flops_per_token: int  # 2 x matmul parameters
    training_flops_per_token: int  # 6 x matmul parameters (forward + backward)
    compute: TrainingCompute  # training FLOPs, compute-optimal tokens, time on a device

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with stable keys: counts, bytes and FLOPs as integers."""
        p = self.parameters
        return {
            "name": self.name,
            "architecture": self.architecture,
            "inputs": {"batch_size": self.batch_size, "seq_len": self.seq_len, "gpus": self.gpus},
            "parameters": {
                "total": p.total,
                "embedding": p.embedding,
                "non_embedding": p.non_embedding,
                "matmul": p.matmul,
                "components": [
                    {"name": c.name, "per_copy": c.per_copy, "copies": c.copies, "total": c.total}
                    for c in p.components
                ],
            },
            "weights_bytes": dict(self.weights),
            "inference": {
                "precision": self.inference.precision,
                "weights_bytes": self.inference.weights,
                "kv_cache_bytes_per_token": self.inference.kv_bytes_per_token,
                "cross_kv_cache_bytes_per_token": self.inference.cross_kv_bytes_per_token,
                "kv_cache_bytes": self.inference.kv_cache,
                "total_bytes": self.inference.total,
            },
            "training": {
                "dtype": self.dtype,
                "mixed_precision": self.mixed_precision,
                "activations_bytes_per_layer": self.activations_per_layer,
                "strategies": {
                    t.strategy: {
                        "zero_stage": t.stage,
                        "weights_bytes": t.states.weights,
                        "gradients_bytes": t.states.gradients,
                        "optimizer_bytes": t.states.optimizer,
                        "activations_bytes": t.activations,
                        "activations_recompute_bytes": t.activations_recompute,
                        "total_bytes": t.total,
                        "total_recompute_bytes": t.total_recompute,
                    }
                    for t in self.training
                },
            },
            "flops_per_token": {
                "forward": self.forward_flops_per_token,
                "training": self.training_flops_per_token,
            },
            "compute": self.compute.to_json(),
        }

    def render(self) -> str:
        """A human-readable report: aligned tables in human units."""
        p, inf = self.parameters, self.inference
        gpus = f"{self.gpus} GPU" + ("s" if self.gpus > 1 else "")
        out = [
            f"{self.name}: {self.architecture}, batch {self.batch_size} x seq {self.seq_len}, "
            f"{gpus}",
            "",
            "Parameters",
        ]
        rows = [
            [
                c.name,
                f"{c.copies} x {human_count(c.per_copy)}" if c.copies > 1 else "",
                human_count(c.total),
            ]
            for c in p.components
        ]
        rows.append(["total", "", human_count(p.total)])
        rows.append(["non-embedding", "", human_count(p.non_embedding)])
        out += _table(["component", "per layer", "parameters"], rows)
        out += ["", "Weights"]
        out += _table(
            ["precision", "bytes"], [[name, human_bytes(size)] for name, size in self.weights]
        )
        out += ["", f"Inference ({inf.precision} weights, {self.dtype} KV cache, one replica)"]
        rows = [
            ["weights", human_bytes(inf.weights)],
            ["KV cache per token", human_bytes(inf.kv_bytes_per_token)],
        ]
        if inf.cross_kv_bytes_per_token:
            rows.append(["cross KV per encoder token", human_bytes(inf.cross_kv_bytes_per_token)])
        rows.append([f"KV cache ({self.batch_size} x {self.seq_len})", human_bytes(inf.kv_cache)])
        rows.append(["total", human_bytes(inf.total)])
        out += _table(["", "bytes"], rows)
        scheme = (
            f"mixed {self.dtype} + fp32 Adam, 16 B/param"
            if self.mixed_precision
            else "fp32 Adam, 16 B/param"
        )
        out += [
            "",
            f"Training per device ({gpus}, micro-batch {self.batch_size} x {self.seq_len})",
            f"  {scheme}; activations {human_bytes(self.activations_per_layer)} per layer",
        ]
        out += _table(
            [
                "strategy",
                "weights",
                "gradients",
                "optimizer",
                "activations",
                "total",
                "recompute total",
            ],
            [
                [
                    t.strategy,
                    human_bytes(t.states.weights),
                    human_bytes(t.states.gradients),
                    human_bytes(t.states.optimizer),
                    human_bytes(t.activations),
                    human_bytes(t.total),
                    human_bytes(t.total_recompute),
                ]
                for t in self.training
            ],
        )
        out += [
            "",
            f"FLOPs per token: forward {human_flops(self.forward_flops_per_token)}, "
            f"training {human_flops(self.training_flops_per_token)} "
            f"(2 and 6 x {human_count(p.matmul)} matmul parameters)",
        ]
        out += ["", *self._render_compute()]
        return "\n".join(out) + "\n"

    def _render_compute(self) -> list[str]:
        """The training compute section: label, right-aligned value, then a note."""
        c = self.compute
        rows = [
            [
                "compute-optimal tokens",
                human_count(c.compute_optimal_tokens),
                f"{TOKENS_PER_PARAMETER} per parameter x {human_count(c.parameters)} parameters "
                "(Hoffmann et al. 2022)",
            ],
            ["compute-optimal FLOPs", human_flops(c.compute_optimal_flops), ""],
        ]
        if c.tokens_given:
            rows.append(["tokens", human_count(c.tokens), "--tokens"])
            rows.append(["training FLOPs", human_flops(c.flops), ""])
        seconds = c.seconds
        if c.device is not None and seconds is not None:
            d = c.device
            rows += [
                [
                    "device",
                    f"{c.gpus} x {d.name}",
                    f"{d.description}, {d.peak_flops / 1e12:g} TFLOP/s dense {d.precision} peak",
                ],
                [
                    "MFU",
                    f"{c.mfu:g}",
                    f"{human_flops(round(c.gpus * d.peak_flops * c.mfu))}/s achieved in all",
                ],
                [
                    "training time",
                    human_duration(seconds),
                    f"for the {'given' if c.tokens_given else 'compute-optimal'} "
                    f"{human_count(c.tokens)} tokens",
                ],
            ]
        widths = [max(len(r[i]) for r in rows) for i in range(2)]
        out = [
            f"Training compute (6 FLOPs per token x {human_count(c.matmul_parameters)} "
            "matmul parameters)"
        ]
        out += [
            f"  {r[0].ljust(widths[0])}  {r[1].rjust(widths[1])}  {r[2]}".rstrip() for r in rows
        ]
        if seconds is None:
            out.append(
                f"  training time: give --device ({', '.join(DEVICES)}) and --gpus, --mfu "
                f"(default {DEFAULT_MFU})"
            )
        return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  " + "  ".join([first, *rest]).rstrip()

    return [line(header), *(line(r) for r in rows)]


def human_count(n: int) -> str:
    """A count with a decimal SI suffix: ``124.44 M``; below a thousand, the number itself."""
    for factor, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {suffix}"
    return str(n)


def human_flops(n: int) -> str:
    """FLOPs with a decimal SI prefix: ``248.88 MFLOP``, up to zetta (``7.41 EFLOP``)."""
    prefixes = ((10**21, "Z"), (10**18, "E"), (10**15, "P"), (10**12, "T"), (10**9, "G"))
    for factor, prefix in (*prefixes, (10**6, "M"), (10**3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}FLOP"
    return f"{n} FLOP"


def human_bytes(n: int) -> str:
    """Bytes in binary units with one decimal: ``474.7 MiB``; below 1 KiB, ``512 B``."""
    for factor, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= factor:
            return f"{n / factor:.1f} {suffix}"
    return f"{n} B"


def estimate(
    spec: ModelSpec,
    *,
    batch_size: int = 1,
    seq_len: int | None = None,
    gpus: int = 1,
    tokens: int | None = None,
    device: str | None = None,
    mfu: float = DEFAULT_MFU,
) -> Estimate:
    """Estimate a spec's parameters, memory and FLOPs for a workload.

    ``batch_size`` sequences of ``seq_len`` tokens (default: the spec's context_length; both
    the encoder and decoder length for encoder-decoder models) per device; ``gpus``
    data-parallel devices for the training split (inference is for one replica) and for the
    training time. ``tokens`` to train on (default: the compute-optimal count), ``device`` (a
    :data:`DEVICES` name, or None for no training time) and its ``mfu``. Raises ValueError for
    a batch, length, device or token count below 1, a length beyond the context window, an
    unknown device or an MFU outside (0, 1].
    """
    context = spec.context_length
    seq = context if seq_len is None else seq_len
    counts = [("batch_size", batch_size), ("seq_len", seq), ("gpus", gpus)]
    if tokens is not None:
        counts.append(("tokens", tokens))
    problems = [f"{name} must be at least 1, got {value}" for name, value in counts if value < 1]
    if not 0 < mfu <= 1:
        problems.append(f"mfu must be in (0, 1], got {mfu}")
    if device is not None and device not in DEVICES:
        problems.append(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    if seq > context:
        problems.append(
            f"seq_len {seq} exceeds {spec.name}'s context_length {context}; "
            f"use a seq_len of at most {context}, or raise context_length in the spec"
        )
    if problems:
        raise ValueError("; ".join(problems))

    params = count_parameters(spec)
    served: PrecisionName = (
        spec.precision.quantize if spec.precision.quantize != "none" else spec.precision.dtype
    )
    per_token = kv_bytes_per_token(spec)
    cross_per_token = per_token if spec.architecture == "encoder-decoder" else 0
    inference = InferenceMemory(
        precision=served,
        weights=weight_bytes(spec, served),
        kv_bytes_per_token=per_token,
        cross_kv_bytes_per_token=cross_per_token,
        kv_cache=batch_size * seq * (per_token + cross_per_token),
    )
    mixed = spec.precision.dtype != "fp32"
    activations = _training_activations(spec, batch_size, seq, recompute=False)
    recomputed = _training_activations(spec, batch_size, seq, recompute=True)
    training = tuple(
        TrainingMemory(
            strategy=strategy,
            stage=stage,
            states=model_states_bytes(params.total, gpus=gpus, stage=stage, mixed_precision=mixed),
            activations=activations,
            activations_recompute=recomputed,
        )
        for strategy, stage in STRATEGIES
    )
    return Estimate(
        name=spec.name,
        architecture=spec.architecture,
        batch_size=batch_size,
        seq_len=seq,
        gpus=gpus,
        dtype=spec.precision.dtype,
        parameters=params,
        weights=tuple((p, weight_bytes(spec, p)) for p in PRECISIONS),
        inference=inference,
        mixed_precision=mixed,
        activations_per_layer=layer_activation_bytes(
            seq,
            batch_size,
            spec.d_model,
            spec.attention.heads,
            value_bytes=FLOAT_BYTES[spec.precision.dtype],
        ),
        training=training,
        forward_flops_per_token=2 * params.matmul,
        training_flops_per_token=6 * params.matmul,
        compute=TrainingCompute(
            parameters=params.total,
            matmul_parameters=params.matmul,
            compute_optimal_tokens=TOKENS_PER_PARAMETER * params.total,
            tokens=TOKENS_PER_PARAMETER * params.total if tokens is None else tokens,
            tokens_given=tokens is not None,
            device=None if device is None else DEVICES[device],
            mfu=mfu,
            gpus=gpus,
        ),
    )


# ----------------------------------------------------------------------------------------
# Memory against device count

PLOT_GPUS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)


def memory_by_gpus(
    spec: ModelSpec,
    *,
    batch_size: int = 1,
    seq_len: int | None = None,
    gpus: tuple[int, ...] = PLOT_GPUS,
) -> dict[StrategyName, list[int]]:
    """Training bytes per device (model states plus the micro-batch's activations, no
    recomputation) for each strategy at each device count in ``gpus``."""
    per_count = [estimate(spec, batch_size=batch_size, seq_len=seq_len, gpus=n) for n in gpus]
    return {
        name: [e.training[i].total for e in per_count] for i, (name, _) in enumerate(STRATEGIES)
    }


def plot_memory(
    spec: ModelSpec,
    *,
    batch_size: int = 1,
    seq_len: int | None = None,
    device: str | None = None,
) -> bytes:
    """A PNG of :func:`memory_by_gpus` over 1 to 64 devices, one line per strategy, on log
    axes; with a ``device`` that has its own memory, a line at that capacity. matplotlib
    (the compile extra) is imported here only, with the Agg canvas (no display needed)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    seq = spec.context_length if seq_len is None else seq_len
    memory = memory_by_gpus(spec, batch_size=batch_size, seq_len=seq)
    figure = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    styles = {
        "ddp": ("o-", "tab:red"),
        "zero-1": ("s-", "tab:orange"),
        "zero-2": ("^-", "tab:green"),
        "zero-3": ("D-", "tab:blue"),
        "fsdp": ("x--", "black"),  # the same numbers as ZeRO-3: dashed over it
    }
    for name, values in memory.items():
        marker, color = styles[name]
        label = "fsdp (full shard = zero-3)" if name == "fsdp" else name
        axes.plot(PLOT_GPUS, [v / 2**30 for v in values], marker, color=color, label=label)
    if device is not None and DEVICES[device].memory_bytes is not None:
        d = DEVICES[device]
        capacity = (d.memory_bytes or 0) / 2**30
        axes.axhline(capacity, color="gray", linestyle=":", linewidth=1.5)
        axes.annotate(
            f"{d.name} memory ({capacity:.0f} GiB)",
            (PLOT_GPUS[0], capacity),
            xytext=(2, 3),
            textcoords="offset points",
            color="dimgray",
        )
    axes.set_xscale("log", base=2)
    axes.xaxis.set_major_locator(FixedLocator(PLOT_GPUS))
    axes.xaxis.set_minor_locator(NullLocator())
    axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axes.set_yscale("log")
    plain = FuncFormatter(lambda y, _: f"{y:.3g}")
    axes.yaxis.set_major_formatter(plain)
    axes.yaxis.set_minor_formatter(plain)  # short ranges have few or no major (decade) ticks
    axes.set_xlabel("data-parallel devices")
    axes.set_ylabel("training memory per device (GiB)")
    params = count_parameters(spec)
    axes.set_title(
        f"{spec.name}: {human_count(params.total)} parameters, micro-batch {batch_size} x {seq}, "
        f"{spec.precision.dtype}, Adam\nmodel states + activations (no recomputation)",
        fontsize=10,
    )
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), title="strategy")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


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
