"""Every variant a spec can choose generates a model that runs forward and backward."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from codegen_variants import FAMILIES, POSITIONS, VOCAB, built, tokens, variant

from llmspec.spec.sections import ModelSpec

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {}
for family in FAMILIES:
    for name, positions in POSITIONS.items():
        VARIANTS[f"{family}/positions-{name}"] = (family, {"positions": positions})
    for norm in ("layernorm", "rmsnorm"):
        for where in ("pre", "post"):
            VARIANTS[f"{family}/{norm}-{where}"] = (
                family,
                {"norm": {"type": norm, "position": where, "eps": 1e-6}},
            )
    VARIANTS[f"{family}/gqa"] = (family, {"attention": {"heads": 4, "kv_heads": 2}})
    VARIANTS[f"{family}/mqa"] = (family, {"attention": {"heads": 4, "kv_heads": 1}})
    VARIANTS[f"{family}/head-dim"] = (family, {"attention": {"heads": 2, "head_dim": 12}})
    VARIANTS[f"{family}/no-bias"] = (family, {"bias": False})
    VARIANTS[f"{family}/untied"] = (family, {"head": {"tied": False}})
    VARIANTS[f"{family}/dropout"] = (family, {"dropout": {"hidden": 0.1, "attention": 0.2}})
    VARIANTS[f"{family}/embeddings-scale-norm"] = (
        family,
        {"embeddings": {"scale": True, "norm": True}},
    )
    VARIANTS[f"{family}/logits-bias-learned"] = (family, {"head": {"logits_bias": "learned"}})
    VARIANTS[f"{family}/logits-bias-buffer"] = (family, {"head": {"logits_bias": "buffer"}})
    VARIANTS[f"{family}/t5-style"] = (
        family,
        {
            "attention": {"heads": 4, "head_dim": 8, "scaled": False},
            "positions": POSITIONS["relative"],
            "norm": {"type": "rmsnorm", "position": "pre"},
            "bias": False,
            "head": {"tied": True, "rescale": True},
            "feed_forward": {"d_ff": 48, "activation": "geglu-tanh"},
        },
    )
    VARIANTS[f"{family}/unscaled-untied"] = (
        family,
        {"attention": {"heads": 4, "scaled": False}, "head": {"tied": False}},
    )
for activation in ("relu", "gelu", "gelu-tanh", "silu", "swiglu", "geglu", "geglu-tanh"):
    VARIANTS[f"decoder-only/{activation}"] = (
        "decoder-only",
        {"feed_forward": {"d_ff": 48, "activation": activation}},
    )
    VARIANTS[f"encoder-decoder/{activation}"] = (
        "encoder-decoder",
        {"feed_forward": {"d_ff": 48, "activation": activation}},
    )
VARIANTS["encoder-only/bert"] = (
    "encoder-only",
    {
        "norm": {"type": "layernorm", "position": "post", "eps": 1e-12},
        "embeddings": {"token_types": 2, "norm": True},
        "head": {"tied": True, "transform": True, "pooler": True, "logits_bias": "learned"},
    },
)
VARIANTS["encoder-only/transform-rmsnorm-swiglu"] = (
    "encoder-only",
    {
        "norm": {"type": "rmsnorm"},
        "feed_forward": {"d_ff": 48, "activation": "swiglu"},
        "head": {"transform": True},
    },
)
VARIANTS["encoder-decoder/deeper-decoder"] = ("encoder-decoder", {"decoder_layers": 3})


def _loss(model: torch.nn.Module, spec: ModelSpec) -> torch.Tensor:
    """The objective's loss on a small padded batch, after checking the output shapes."""
    ids = tokens(2, 7)
    mask = torch.ones_like(ids)
    if spec.architecture == "decoder-only":
        mask[1, :2] = 0  # left padding
        labels = ids.masked_fill(mask == 0, -100)
        out = model(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), labels=labels)
        assert out.logits.shape == (2, 7, VOCAB)
        assert len(out.present) == 2 * spec.layers
    elif spec.architecture == "encoder-only":
        mask[1, 5:] = 0  # right padding
        labels = torch.full_like(ids, -100)
        labels[:, 1] = ids[:, 1]
        out = model(ids, mask, labels=labels)
        assert out.logits.shape == (2, 7, VOCAB)
        assert out.last_hidden_state.shape == (2, 7, spec.d_model)
    else:
        mask[1, 5:] = 0
        decoder_ids = tokens(2, 5, seed=1)
        out = model(ids, mask, decoder_ids, labels=decoder_ids)
        assert out.logits.shape == (2, 5, VOCAB)
        assert len(out.present) == 2 * spec.num_decoder_layers
    assert out.loss is not None and out.loss.ndim == 0
    return out.loss


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_runs_forward_and_backward(name: str) -> None:
    family, changes = VARIANTS[name]
    spec = variant(family, **changes)
    model = built(spec).train()
    loss = _loss(model, spec)
    assert torch.isfinite(loss)
    loss.backward()
    # The pooler is not part of the masked-LM loss; everything else is.
    grads = {n: p.grad for n, p in model.named_parameters() if not n.startswith("pooler.")}
    assert not [n for n, g in grads.items() if g is None]
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    # Every layer's attention learns (the loss reaches the first layer's query projection).
    first = "decoder" if family == "decoder-only" else "encoder"
    assert grads[f"{first}.layers.0.self_attn.q_proj.weight"].abs().sum() > 0


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_module_is_built_in_the_requested_dtype(family: str, dtype: str) -> None:
    spec = variant(family, norm={"type": "rmsnorm"}, head={"logits_bias": "buffer"})
    model = built(spec, dtype=dtype)
    wanted = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    assert {p.dtype for p in model.parameters()} == {wanted}
    assert {b.dtype for b in model.buffers()} == {wanted}


@pytest.mark.parametrize("positions", sorted(POSITIONS))
@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_forward_on_cpu_is_finite_and_close_to_fp32(family: str, positions: str) -> None:
    spec = variant(family, positions=POSITIONS[positions], norm={"type": "rmsnorm"})
    full = built(spec, "fp32", seed=3)
    half = built(spec, "bf16", seed=3)
    ids = tokens(2, 6)
    with torch.no_grad():
        if family == "encoder-decoder":
            a = full(ids, None, ids[:, :4]).logits
            b = half(ids, None, ids[:, :4]).logits
        else:
            a, b = full(ids).logits, half(ids).logits
    assert b.dtype == torch.bfloat16 and torch.isfinite(b).all()
    torch.testing.assert_close(b.float(), a, atol=0.1, rtol=0.1)


def test_dropout_is_active_in_training_and_off_in_eval() -> None:
    spec = variant("decoder-only", dropout={"hidden": 0.5, "attention": 0.5})
    model = built(spec)
    ids = tokens(1, 8)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
        model.train()
        assert not torch.equal(model(ids).logits, model(ids).logits)
