"""Memory of a LoRA fine-tuning step (``llmspec estimate SPEC --finetune lora``).

One device, one micro-batch of ``batch_size`` sequences of ``seq_len`` tokens, the way
``llmspec finetune`` trains (:mod:`llmspec.trainer.finetune`):

* **frozen weights**: every parameter of the model, fp32 (4 bytes each; the model is built and
  kept in fp32, autocast or not), with no gradient and no optimizer state;
* **adapter**: ``r * (in + out)`` parameters per targeted linear layer (LoRA's A and B), with
  their gradients and AdamW's two moments: 16 bytes per parameter;
* **activations**: what the backward pass keeps. A frozen linear layer keeps no input (its
  weight needs no gradient), so the Korthikanti et al. count used for pre-training
  (:func:`llmspec.estimates.memory.layer_activation_bytes`) over-counts; the terms here were
  measured on our generated models (bench/finetune_memory.py: the live tensors of a second
  step, the model, adapter and AdamW states held plus the step's peak from the PyTorch
  profiler, over tiny-decoder, tiny-gpt, tiny-t5 and tiny-bart at 2x32 to 2x256 tokens, ranks
  8 and 16, two and four targets per attention block) and fitted by least squares, fp32:

  - ``ACT_TOKEN_LAYER`` bytes per token per layer per model dimension (norms, rotary
    positions, the attention's q, k, v and output, the feed-forward's hidden activations,
    residuals);
  - ``ACT_SCORES`` bytes per attention score (heads x s x s per sequence, per attention block:
    self- and cross-attention; the generated attention materializes its softmax);
  - ``ACT_LOGITS`` bytes per logit (the fp32 logits and the loss's log-softmax, partly freed);
  - ``ACT_ADAPTER`` bytes per token per rank per targeted layer (the adapter's ``A x``, its
    gradient and the dropout's output).

  With activation checkpointing each layer keeps only its input (``ACT_CKPT_TOKEN_LAYER``)
  and one layer at a time is recomputed in the backward pass (``ACT_CKPT_SCORES`` per score of
  one layer), the logits and adapter terms staying (``ACT_CKPT_LOGITS``, ``ACT_CKPT_ADAPTER``).

Over the measured cases the fit is within 5 % without checkpointing and within 14 % with it
(the recomputation's peak depends on which layer's backward is running); a bf16 spec or bf16
autocast is taken to halve the activation terms, which was not measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmspec.estimates.counts import count_parameters, stacks
from llmspec.spec.sections import ModelSpec

ADAPTER_STATE_BYTES = 16  # fp32 weight, gradient, AdamW's m and v
FROZEN_WEIGHT_BYTES = 4

ACT_TOKEN_LAYER = 64.0
ACT_SCORES = 4.7
ACT_LOGITS = 2.44
ACT_ADAPTER = 8.0
ACT_CKPT_TOKEN_LAYER = 18.1
ACT_CKPT_SCORES = 8.9
ACT_CKPT_LOGITS = 8.4
ACT_CKPT_ADAPTER = 2.0


def linear_layers(spec: ModelSpec) -> list[tuple[str, int, int, int]]:
    """(dotted name tail, out, in, copies) of the generated model's linear layers that LoRA may
    target: the attention projections (``self_attn.q_proj``, ``cross_attn.v_proj``, ...) and
    the feed-forward's (``mlp.gate_proj``, ``mlp.up_proj``, ``mlp.down_proj``)."""
    d, d_ff = spec.d_model, spec.feed_forward.d_ff
    q_width, kv_width = spec.attention.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    out: list[tuple[str, int, int, int]] = []
    for _, layers, cross in stacks(spec):
        for block in ("self_attn", "cross_attn") if cross else ("self_attn",):
            out += [
                (f"{block}.q_proj", q_width, d, layers),
                (f"{block}.k_proj", kv_width, d, layers),
                (f"{block}.v_proj", kv_width, d, layers),
                (f"{block}.o_proj", d, q_width, layers),
            ]
        if spec.gated:
            out.append(("mlp.gate_proj", d_ff, d, layers))
        out += [("mlp.up_proj", d_ff, d, layers), ("mlp.down_proj", d, d_ff, layers)]
    return out


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


@dataclass(frozen=True)
class FinetuneMemory:
    """One device's memory for a LoRA fine-tuning step."""

    rank: int
    targets: tuple[str, ...]
    targeted_layers: int  # linear layers with an adapter
    frozen_weights: int  # bytes
    adapter_parameters: int
    adapter_states: int  # bytes: weights, gradients, AdamW moments
    activations: int  # bytes
    checkpointing: bool

    @property
    def total(self) -> int:
        return self.frozen_weights + self.adapter_states + self.activations

    def to_json(self) -> dict[str, object]:
        return {
            "method": "lora",
            "rank": self.rank,
            "targets": list(self.targets),
            "targeted_layers": self.targeted_layers,
            "adapter_parameters": self.adapter_parameters,
            "frozen_weights_bytes": self.frozen_weights,
            "adapter_states_bytes": self.adapter_states,
            "activation_bytes": self.activations,
            "checkpointing": self.checkpointing,
            "total_bytes": self.total,
        }


def lora_memory(
    spec: ModelSpec,
    *,
    batch_size: int,
    seq_len: int,
    rank: int = 8,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    checkpointing: bool = False,
) -> FinetuneMemory:
    """The memory of one LoRA step (see the module docstring). ValueError for a target that
    names no linear layer of the spec's model."""
    layers = linear_layers(spec)
    unknown = [t for t in targets if not any(_matches(name, t) for name, *_ in layers)]
    if unknown:
        names = sorted({name.rsplit(".", 1)[-1] for name, *_ in layers})
        raise ValueError(
            f"lora targets {', '.join(unknown)} name no linear layer of {spec.name}; its "
            f"linear layers are {', '.join(names)}"
        )
    chosen = [
        (out, inp, copies)
        for name, out, inp, copies in layers
        if any(_matches(name, t) for t in targets)
    ]
    adapter = sum(rank * (out + inp) * copies for out, inp, copies in chosen)
    targeted = sum(copies for *_, copies in chosen)
    all_layers = sum(n for _, n, _ in stacks(spec))
    attention_blocks = sum(n * (2 if cross else 1) for _, n, cross in stacks(spec))
    tokens = batch_size * seq_len
    scores = spec.attention.heads * seq_len * seq_len * batch_size
    if checkpointing:
        per_block = attention_blocks / all_layers
        act = (
            ACT_CKPT_TOKEN_LAYER * tokens * spec.d_model * all_layers
            + ACT_CKPT_SCORES * scores * per_block
            + ACT_CKPT_LOGITS * tokens * spec.vocabulary.size
            + ACT_CKPT_ADAPTER * tokens * rank * targeted
        )
    else:
        act = (
            ACT_TOKEN_LAYER * tokens * spec.d_model * all_layers
            + ACT_SCORES * scores * attention_blocks
            + ACT_LOGITS * tokens * spec.vocabulary.size
            + ACT_ADAPTER * tokens * rank * targeted
        )
    if spec.precision.dtype != "fp32":
        act /= 2
    return FinetuneMemory(
        rank=rank,
        targets=tuple(targets),
        targeted_layers=targeted,
        frozen_weights=count_parameters(spec).total * FROZEN_WEIGHT_BYTES,
        adapter_parameters=adapter,
        adapter_states=adapter * ADAPTER_STATE_BYTES,
        activations=round(act),
        checkpointing=checkpointing,
    )
