"""The attention knobs of the spec against transformers, at the torch level.

A tiny random transformers model (built from a config, no download) and the generated model
with its weights copied: Mistral's sliding window, Qwen2's q/k/v bias without an o_proj bias
and Qwen3's QK-norm give the same logits on a left-padded batch; Gemma 2's attention (explicit
scale, logit soft-capping, local and global layers) gives the same outputs layer by layer, with
transformers' own masks. Each comparison also checks that the model without the knob differs,
so none passes by accident.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from codegen_variants import variant

from llmspec.builder import build, load_module
from llmspec.spec.sections import ModelSpec

transformers = pytest.importorskip("transformers")

VOCAB, LENGTH = 262, 12  # longer than the windows below, so that they matter
ATOL, RTOL = 1e-5, 1e-4

# transformers' Llama-style names (without "model.") to ours
_NAMES = (
    (r"^layers\.(\d+)\.input_layernorm\.", r"decoder.layers.\1.self_attn_norm."),
    (r"^layers\.(\d+)\.post_attention_layernorm\.", r"decoder.layers.\1.mlp_norm."),
    (r"^layers\.(\d+)\.", r"decoder.layers.\1."),
    (r"^norm\.", "decoder.final_norm."),
)


def _ours(name: str) -> str:
    name = name.removeprefix("model.")
    for pattern, replacement in _NAMES:
        name, count = re.subn(pattern, replacement, name)
        if count:
            break
    return name


def _randomized(model: Any) -> Any:
    """Weights at a scale where a missing bias, norm or window shows in the logits."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.2)
            elif "norm" in name and name.endswith("weight"):
                parameter.normal_(1.0, 0.2)
            else:
                parameter.normal_(0.0, 0.2)
    return model.eval()


def _spec(config: Any, **attention: Any) -> ModelSpec:
    """The spec of a Llama-style transformers config, with ``attention`` knobs."""
    return variant(
        "decoder-only",
        d_model=config.hidden_size,
        layers=config.num_hidden_layers,
        attention={
            "heads": config.num_attention_heads,
            "kv_heads": config.num_key_value_heads,
            "head_dim": config.head_dim,
            **attention,
        },
        feed_forward={"d_ff": config.intermediate_size, "activation": "swiglu"},
        norm={"type": "rmsnorm", "eps": config.rms_norm_eps},
        positions={"type": "rope", "base": 10000.0},
        bias=False,
        head={"tied": False},
    )


def _copied(spec: ModelSpec, reference: Any) -> Any:
    ours = build(spec).eval()
    weights = {_ours(name): tensor for name, tensor in reference.state_dict().items()}
    ours.load_state_dict(weights, strict=True)
    return ours


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, a left-padded attention mask (rows with 0, 3 and 7 pads) and position ids."""
    torch.manual_seed(2)
    ids = torch.randint(0, 256, (3, LENGTH))
    mask = torch.ones(3, LENGTH, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :7] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def _assert_same_real_logits(ours: torch.nn.Module, reference: Any) -> None:
    ids, mask, positions = _batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, mask, positions).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=ATOL, rtol=RTOL)


def _differs(ours: torch.nn.Module, reference: Any) -> bool:
    ids, mask, positions = _batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, mask, positions).logits
    real = mask.bool()
    return not torch.allclose(got[real], expected[real], atol=1e-3, rtol=1e-3)


def _llama_style(config_class: Any, model_class: Any, **options: Any) -> Any:
    config = config_class(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        attn_implementation="eager",
        **options,
    )
    return _randomized(model_class(config))


# ----------------------------------------------------------------------------------------
# Whole models: Mistral, Qwen2, Qwen3


def test_sliding_window_logits_equal_mistral_on_left_padded_batch() -> None:
    reference = _llama_style(
        transformers.MistralConfig, transformers.MistralForCausalLM, sliding_window=4, head_dim=8
    )
    windowed = _copied(_spec(reference.config, sliding_window=4), reference)
    _assert_same_real_logits(windowed, reference)
    assert _differs(_copied(_spec(reference.config), reference), reference)


def test_qkv_bias_without_output_bias_logits_equal_qwen2() -> None:
    reference = _llama_style(
        transformers.Qwen2Config, transformers.Qwen2ForCausalLM, use_sliding_window=False
    )
    assert reference.model.layers[0].self_attn.o_proj.bias is None
    config = reference.config
    config.head_dim = config.hidden_size // config.num_attention_heads
    ours = _copied(_spec(config, qkv_bias=True), reference)
    assert ours.decoder.layers[0].self_attn.o_proj.bias is None
    _assert_same_real_logits(ours, reference)


def test_qk_norm_logits_equal_qwen3_and_matter() -> None:
    reference = _llama_style(
        transformers.Qwen3Config,
        transformers.Qwen3ForCausalLM,
        head_dim=16,  # not hidden_size / heads, as the real Qwen3 sizes
        use_sliding_window=False,
        attention_bias=False,
    )
    ours = _copied(_spec(reference.config, qk_norm="rmsnorm"), reference)
    _assert_same_real_logits(ours, reference)
    without = build(_spec(reference.config)).eval()
    state = {k: v for k, v in ours.state_dict().items() if "q_norm" not in k and "k_norm" not in k}
    without.load_state_dict(state, strict=True)
    assert _differs(without, reference)


# ----------------------------------------------------------------------------------------
# Gemma 2's attention, layer by layer


def _gemma2_config() -> Any:
    return transformers.Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        query_pre_attn_scalar=12,
        attn_logit_softcapping=2.0,  # small, so that the cap bends these scores
        sliding_window=4,
        max_position_embeddings=64,
        attn_implementation="eager",
    )


def test_gemma2_attention_scale_softcap_and_layer_pattern_equal_transformers() -> None:
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
    from transformers.models.gemma2 import modeling_gemma2

    config = _gemma2_config()
    assert config.layer_types == ["sliding_attention", "full_attention"]
    spec = variant(
        "decoder-only",
        d_model=32,
        layers=2,
        attention={
            "heads": 4,
            "kv_heads": 2,
            "head_dim": 8,
            "scale": 12**-0.5,
            "softcap": 2.0,
            "sliding_window": 4,
            "layer_pattern": ["local", "global"],
        },
        norm={"type": "rmsnorm"},
        positions={"type": "rope", "base": config.rope_parameters["rope_theta"]},
        bias=False,
    )
    module = load_module(spec)
    # the same without scale and softcap: 1/sqrt(head_dim) and raw scores
    plain_module = load_module(
        spec.model_copy(
            update={"attention": spec.attention.model_copy(update={"scale": None, "softcap": None})}
        )
    )
    config_class = module.VariantDecoderConfig
    _, mask, positions = _batch()
    torch.manual_seed(3)
    x = torch.randn(3, LENGTH, 32)
    rotary = modeling_gemma2.Gemma2RotaryEmbedding(config)
    cos, sin = rotary(x, positions)
    masks = {
        "sliding_attention": create_sliding_window_causal_mask(config, x, mask, None, positions),
        "full_attention": create_causal_mask(config, x, mask, None, positions),
    }
    ours_mask = module.causal_mask(mask, LENGTH)
    local_mask = module.sliding_window_mask(ours_mask, 4)
    real = mask.bool()
    for layer, kind in enumerate(config.layer_types):
        theirs = _randomized(modeling_gemma2.Gemma2Attention(config, layer))
        ours = module.VariantDecoderAttention(config_class())
        ours.load_state_dict(theirs.state_dict(), strict=True)
        ours.eval()
        hf_mask = masks[kind]
        layer_mask = local_mask if kind == "sliding_attention" else ours_mask
        # the same masks at real queries: transformers' additive mask is 0 where it attends
        rows = real[:, None, :, None].expand_as(hf_mask)
        assert torch.equal((hf_mask == 0)[rows], layer_mask.expand_as(hf_mask)[rows])
        plain = plain_module.VariantDecoderAttention(plain_module.VariantDecoderConfig())
        plain.load_state_dict(theirs.state_dict(), strict=True)
        with torch.no_grad():
            expected, _ = theirs(x, (cos, sin), hf_mask)
            got, _ = ours(x, layer_mask, cos[:, None], sin[:, None])
            unscaled, _ = plain.eval()(x, layer_mask, cos[:, None], sin[:, None])
        torch.testing.assert_close(got[real], expected[real], atol=ATOL, rtol=RTOL)
        assert not torch.allclose(unscaled[real], expected[real], atol=1e-3, rtol=1e-3)
