"""Memory of a LoRA fine-tuning step (``llmspec estimate SPEC --finetune lora``).

One device, one micro-batch of ``batch_size`` sequences of ``seq_len`` tokens, the way
``llmspec finetune`` trains (:mod:`llmspec.trainer.finetune`):

* **frozen weights**: every parameter of the model, fp32 (4 bytes each; the model is built and
  kept in fp32, autocast or not), with no gradient and no optimizer state;
* **adapter**: ``r * (in + out)`` parameters per targeted linear layer (LoRA's A and B), with
  their gradients and AdamW's two moments: 16 bytes per parameter;
* **activations**: what the backward pass keeps. A frozen linear layer keeps no input (its
  weight needs no gradient), so the Korthikanti et al. count used for pre-training
  (:func:`llmspec.estimates.memory.layer_activation_bytes`) does not apply; the terms here were
  measured on our generated models and fitted by least squares (fp32 bytes per unit, the
  ``ACT_*`` constants): per token x d_model x layer (norms, rotary positions, q, k, v, the
  attention output, the feed-forward's hidden activations, residuals), per attention score
  (heads x s x s per sequence and attention block, self and cross: the generated attention
  materializes its softmax), per logit (the fp32 logits and the loss's log-softmax), per token x
  rank x targeted layer (the adapter's ``A x`` and its gradient), per relative-position bias
  value (T5), and the dropout masks and outputs when the spec has dropout. With activation
  checkpointing (the ``CKPT_*`` constants) each layer keeps only its input and one layer at a
  time is recomputed in the backward pass.

The measurements (bench/finetune_memory.py: the bytes held before a second step, i.e. the
frozen weights, the adapter and AdamW's moments, plus the peak of live tensors during it from
the PyTorch profiler) cover tiny-decoder, tiny-gpt, tiny-t5 and tiny-bart at 2x32 to 2x256
tokens with ranks 8 and 16 on two and four targets per attention block, and gpt2-small,
pythia-160m and t5-small at 2x128, 1x256 and 4x64 with rank 16 on q_proj and v_proj, with and
without checkpointing: measured / estimated is 0.95 to 1.05 over all of them. The activations
are those of fp32 compute: under bf16 autocast (``--bf16``, a bf16 spec) a step keeps less,
which is not modelled (the estimate is then an upper bound).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmspec.estimates.counts import count_parameters, stacks
from llmspec.spec.sections import ModelSpec

ADAPTER_STATE_BYTES = 16  # fp32 weight, gradient, AdamW's m and v
FROZEN_WEIGHT_BYTES = 4

# fp32 bytes per unit, fitted (see the module docstring); CKPT_: with activation checkpointing
ACT_TOKEN_LAYER, CKPT_TOKEN_LAYER = 64.0, 19.0  # per token x d_model x layer
ACT_SCORES, CKPT_SCORES = 4.3, 7.3  # per attention score (all blocks; ckpt: one layer's)
ACT_LOGITS, CKPT_LOGITS = 4.0, 8.7  # per logit
ACT_ADAPTER, CKPT_ADAPTER = 7.7, 1.0  # per token x rank x targeted layer
ACT_RELATIVE, CKPT_RELATIVE = 3.8, 7.5  # per relative-position bias value (heads x s x s, stack)
ACT_ATTENTION_DROPOUT = 5.8  # per score, with attention dropout (its mask and output)
ACT_HIDDEN_DROPOUT, CKPT_HIDDEN_DROPOUT = 36.0, 4.6  # per token x d_model x layer, with dropout


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
    token_layers = tokens * spec.d_model * all_layers
    scores = spec.attention.heads * seq_len * seq_len * batch_size
    relative = spec.attention.heads * seq_len * seq_len * len(stacks(spec))
    relative *= spec.positions.type == "relative"
    hidden_dropout = spec.dropout.hidden > 0
    if checkpointing:
        act = (
            CKPT_TOKEN_LAYER * token_layers
            + CKPT_SCORES * scores * attention_blocks / all_layers
            + CKPT_LOGITS * tokens * spec.vocabulary.size
            + CKPT_ADAPTER * tokens * rank * targeted
            + CKPT_RELATIVE * relative
            + CKPT_HIDDEN_DROPOUT * token_layers * hidden_dropout
        )
    else:
        act = (
            ACT_TOKEN_LAYER * token_layers
            + ACT_SCORES * scores * attention_blocks
            + ACT_LOGITS * tokens * spec.vocabulary.size
            + ACT_ADAPTER * tokens * rank * targeted
            + ACT_RELATIVE * relative
            + ACT_ATTENTION_DROPOUT * scores * attention_blocks * (spec.dropout.attention > 0)
            + ACT_HIDDEN_DROPOUT * token_layers * hidden_dropout
        )
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
