"""Rope knobs (scaling, partial rotary, a local base) in the generated model equal
transformers' rope (modeling_rope_utils and the rotary modules of Llama, Phi-3 and GPT-NeoX):
the cos and sin tables for every scaling type at lengths below and above the original one, the
partial rotation, and the stack's use of the tables."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from llmspec.builder import build, load_module, model_classes
from llmspec.lower import lower
from llmspec.spec.sections import ModelSpec

HEAD_DIM = 32
CONTEXT = 64
ORIGINAL = 16


def _spec(positions: dict[str, Any], **attention: Any) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "rope-knobs",
            "architecture": "decoder-only",
            "vocabulary": {"size": 260, "special_tokens": {"pad": "<pad>", "eos": "</s>"}},
            "context_length": CONTEXT,
            "d_model": 128,
            "layers": 2,
            "attention": {"heads": 4, "kv_heads": 2, **attention},
            "feed_forward": {"d_ff": 64, "activation": "swiglu"},
            "norm": {"type": "rmsnorm"},
            "positions": {"type": "rope", **positions},
            "bias": False,
            "objective": {"type": "causal-lm"},
        }
    )


def _ours(spec: ModelSpec, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The generated module's global cos and sin (B, T, rd), computed as its stacks do."""
    module = load_module(spec)
    plan = lower(spec).positions
    config = model_classes(spec)[1]()
    if not plan.rope_knobs:  # plain rope: the function of the golden files
        cos, sin = module.rope_cos_sin(
            position_ids, config.head_dim, config.rope_base, torch.float32
        )
        return cos[:, 0], sin[:, 0]
    if plan.length_dependent:
        inv_freq = module.scaled_rope_inverse_frequencies(config, position_ids)
    elif plan.scaling != "none":
        inv_freq = module.scaled_rope_inverse_frequencies(config, position_ids.device)
    else:
        dim = config.rotary_dim if plan.partial else config.head_dim
        inv_freq = module.rope_inverse_frequencies(dim, config.rope_base, position_ids.device)
    extra = (config.rope_attention_factor,) if plan.attention_factor else ()
    cos, sin = module.rope_cos_sin(position_ids, inv_freq, torch.float32, *extra)
    return cos[:, 0], sin[:, 0]


def _theirs(config: Any, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' cos and sin (B, T, rd) from a fresh rotary module (its dynamic types
    remember earlier calls; ours do not, so each call gets a fresh one)."""
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    kind = GPTNeoXRotaryEmbedding if config.model_type == "gpt_neox" else LlamaRotaryEmbedding
    rotary = kind(config)
    return rotary(torch.zeros(1, dtype=torch.float32), position_ids)


def _config(rope: dict[str, Any], partial: float = 1.0) -> Any:
    """A transformers config with these rope parameters: GPT-NeoX's for plain partial rope
    (Llama's default rope ignores partial_rotary_factor), else Llama's."""
    import transformers

    if rope["rope_type"] == "default":
        return transformers.GPTNeoXConfig(
            hidden_size=128,
            num_attention_heads=4,
            max_position_embeddings=CONTEXT,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            rotary_pct=partial,
        )
    parameters = {"rope_theta": 10000.0, **rope}
    if partial != 1.0:
        parameters["partial_rotary_factor"] = partial
    return transformers.LlamaConfig(
        hidden_size=128,
        num_attention_heads=4,
        head_dim=HEAD_DIM,
        max_position_embeddings=CONTEXT,
        rope_parameters=parameters,
    )


def _positions(length: int) -> torch.Tensor:
    """Two rows: one from 0, one left-padded (padding at 0), as the runtime feeds them."""
    first = torch.arange(length)
    second = (torch.arange(length) - 3).clamp(min=0)
    return torch.stack((first, second))


LONGROPE_SHORT = [1.0 + 0.1 * i for i in range(8)]
LONGROPE_LONG = [2.0 + 0.5 * i for i in range(8)]
CASES = {
    "linear": (
        {"scaling": {"type": "linear", "factor": 4.0}},
        {"rope_type": "linear", "factor": 4.0},
        1.0,
    ),
    "dynamic": (
        {"scaling": {"type": "dynamic", "factor": 2.0, "original_max_positions": CONTEXT}},
        {"rope_type": "dynamic", "factor": 2.0},
        1.0,
    ),
    "llama3": (
        {
            "base": 500000.0,
            "scaling": {
                "type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_positions": ORIGINAL,
            },
        },
        {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": ORIGINAL,
        },
        1.0,
    ),
    "yarn": (
        {"scaling": {"type": "yarn", "factor": 4.0, "original_max_positions": ORIGINAL}},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
        1.0,
    ),
    "yarn-mscale-untruncated": (
        {
            "scaling": {
                "type": "yarn",
                "factor": 4.0,
                "original_max_positions": ORIGINAL,
                "beta_fast": 16.0,
                "beta_slow": 2.0,
                "mscale": 1.0,
                "mscale_all_dim": 0.5,
                "truncate": False,
            }
        },
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": ORIGINAL,
            "beta_fast": 16.0,
            "beta_slow": 2.0,
            "mscale": 1.0,
            "mscale_all_dim": 0.5,
            "truncate": False,
        },
        1.0,
    ),
    "longrope": (
        {
            "scaling": {
                "type": "longrope",
                "short_factor": LONGROPE_SHORT,
                "long_factor": LONGROPE_LONG,
                "original_max_positions": ORIGINAL,
            },
            "partial": 0.5,
        },
        {
            "rope_type": "longrope",
            "short_factor": LONGROPE_SHORT,
            "long_factor": LONGROPE_LONG,
            "original_max_position_embeddings": ORIGINAL,
        },
        0.5,
    ),
    "partial-yarn": (
        {
            "rotary_dim": 16,
            "scaling": {"type": "yarn", "factor": 4.0, "original_max_positions": ORIGINAL},
        },
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
        0.5,
    ),
    "partial-plain": ({"partial": 0.25}, {"rope_type": "default"}, 0.25),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("length", [ORIGINAL - 4, ORIGINAL, ORIGINAL + 5, CONTEXT + 9])
def test_cos_sin_tables_equal_transformers_below_and_beyond_the_original_length(name, length):
    ours, theirs, partial = CASES[name]
    spec = _spec(ours)
    position_ids = _positions(length)
    cos, sin = _ours(spec, position_ids)
    their_cos, their_sin = _theirs(_config(theirs, partial), position_ids)
    assert cos.shape == their_cos.shape == (2, length, int(HEAD_DIM * partial))
    torch.testing.assert_close(cos, their_cos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sin, their_sin, rtol=1e-5, atol=1e-6)


def test_length_dependent_scalings_switch_where_transformers_does():
    """dynamic and longrope: at the original length the plain (short) table, one token more
    the scaled (long) one, chosen from the position ids."""
    spec = _spec(CASES["longrope"][0])
    at, beyond = _positions(ORIGINAL), _positions(ORIGINAL + 1)
    cos_at, _ = _ours(spec, at)
    cos_beyond, _ = _ours(spec, beyond)
    assert not torch.allclose(cos_at[:, 1:ORIGINAL], cos_beyond[:, 1:ORIGINAL])
    dynamic = _spec(
        {"scaling": {"type": "dynamic", "factor": 2.0, "original_max_positions": ORIGINAL}}
    )
    plain = _spec({})
    torch.testing.assert_close(_ours(dynamic, at), _ours(plain, at), rtol=0, atol=0)
    assert not torch.allclose(_ours(dynamic, beyond)[0], _ours(plain, beyond)[0])


def test_partial_rotation_equals_gpt_neox():
    """The first rotary_dim channels rotate as GPT-NeoX's apply_rotary_pos_emb does; the rest
    pass through unchanged."""
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    spec = _spec({"partial": 0.25})
    module = load_module(spec)
    position_ids = _positions(7)
    cos, sin = _ours(spec, position_ids)
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 7, HEAD_DIM), torch.randn(2, 4, 7, HEAD_DIM)
    their_q, their_k = apply_rotary_pos_emb(q, k, cos, sin)
    torch.testing.assert_close(module.apply_rope(q, cos[:, None], sin[:, None]), their_q)
    torch.testing.assert_close(module.apply_rope(k, cos[:, None], sin[:, None]), their_k)
    assert torch.equal(module.apply_rope(q, cos[:, None], sin[:, None])[..., 8:], q[..., 8:])


def _logits(spec: ModelSpec, ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    model = build(spec).eval()
    with torch.no_grad():
        return model(ids, torch.ones_like(ids), position_ids)[0]


def test_the_stack_rotates_with_the_scaled_frequencies():
    """Linear scaling by 1/2 at positions p is plain rope at positions 2p: the whole model's
    logits agree, so the stack feeds the scaled tables to every layer."""
    ids = torch.randint(0, 260, (1, 9), generator=torch.Generator().manual_seed(1))
    positions = torch.arange(9)[None]
    scaled = _logits(_spec({"scaling": {"type": "linear", "factor": 0.5}}), ids, positions)
    plain = _logits(_spec({}), ids, 2 * positions)
    torch.testing.assert_close(scaled, plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, _logits(_spec({}), ids, positions), atol=1e-3)


def test_local_layers_rotate_with_the_local_base_unscaled_as_gemma3():
    """Gemma 3's layout: local (sliding) layers rotate with rope_local_base_freq and no
    scaling, global ones with the scaled base; the cos and sin each layer receives equal
    transformers' per-layer-type tables."""
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

    spec = _spec(
        {"base": 1e6, "local_base": 1e4, "scaling": {"type": "linear", "factor": 8.0}},
        sliding_window=4,
        layer_pattern=["local", "global"],
    )
    config = Gemma3TextConfig(
        hidden_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=HEAD_DIM,
        num_hidden_layers=2,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=CONTEXT,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    )
    rotary = Gemma3RotaryEmbedding(config)
    torch.manual_seed(0)
    model = build(spec).eval()
    layers = next(m for name, m in model.named_modules() if name.endswith("layers"))
    received: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer in layers:
        layer.register_forward_pre_hook(lambda _, args: received.append((args[2], args[3])))
    ids = torch.randint(0, 260, (2, 11), generator=torch.Generator().manual_seed(2))
    position_ids = _positions(11)
    with torch.no_grad():
        model(ids, torch.ones_like(ids), position_ids)
    x = torch.zeros(1)
    for (cos, sin), kind in zip(received, config.layer_types, strict=True):
        their_cos, their_sin = rotary(x, position_ids, kind)
        torch.testing.assert_close(cos[:, 0], their_cos, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sin[:, 0], their_sin, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(received[0][0], received[1][0])


@pytest.mark.parametrize("name", ["longrope", "partial-yarn", "llama3"])
def test_rope_knobs_add_no_parameters(name):
    """Rope has no weights: the estimate and the built model count as plain rope does."""
    from llmspec.estimates.counts import count_parameters

    spec, plain = _spec(CASES[name][0]), _spec({})
    built = sum(p.numel() for p in build(spec).parameters())
    assert count_parameters(spec).total == count_parameters(plain).total == built
