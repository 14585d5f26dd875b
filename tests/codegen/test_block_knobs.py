"""The block and head knobs of the spec against transformers, at the torch level.

A tiny random transformers model (built from a config, no download) and the generated model
with its weights copied give the same logits on a left-padded batch: GPT-NeoX's parallel
residual with two norms, Phi's parallel block with one shared norm and a biased lm_head, and
Gemma 2's sandwich norms, (1 + weight) RMSNorm and final logit soft-capping. Each comparison
also checks that the model without the knob differs, so none passes by accident. Then the
knobs' own rules: norm biases apart from linear biases, the parameter counts, and the
masking and cache properties of a model with every knob.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from codegen_variants import built, left_padded, tokens, variant

from llmspec.builder import build
from llmspec.estimates.counts import count_parameters
from llmspec.spec.sections import ModelSpec

transformers = pytest.importorskip("transformers")

VOCAB, LENGTH = 262, 10
# Every channel rotates: partial rotary is another knob's, tested with it.
FULL_ROTARY = {"rope_theta": 10000.0, "partial_rotary_factor": 1.0, "rope_type": "default"}
ATOL, RTOL = 1e-5, 1e-4


def _randomized(model: Any) -> Any:
    """Weights at a scale where a missing norm, bias or cap shows in the logits."""
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


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, a left-padded attention mask (rows with 0, 3 and 6 pads) and position ids."""
    torch.manual_seed(2)
    ids = torch.randint(0, 256, (3, LENGTH))
    mask = torch.ones(3, LENGTH, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :6] = 0
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _real_logits(model: Any, ours: bool) -> torch.Tensor:
    ids, mask, positions = _batch()
    with torch.no_grad():
        if ours:
            logits = model(ids, mask, positions).logits
        else:
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    return logits[mask.bool()]


def _copied(spec: ModelSpec, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    ours = build(spec).eval()
    ours.load_state_dict(weights, strict=True)
    return ours


def _renamed(reference: Any, names: tuple[tuple[str, str], ...]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in reference.state_dict().items():
        for pattern, replacement in names:
            name, count = re.subn(pattern, replacement, name)
            if count:
                break
        out[name] = tensor
    return out


def _assert_equal_and_knob_matters(spec: ModelSpec, without: ModelSpec, weights: Any, ref: Any):
    expected = _real_logits(ref, ours=False)
    got = _real_logits(_copied(spec, weights), ours=True)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    if without is not None:
        other = _real_logits(_copied(without, weights), ours=True)
        assert not torch.allclose(other, expected, atol=1e-3, rtol=1e-3)


# ----------------------------------------------------------------------------------------
# GPT-NeoX: parallel residual, a norm each


def _neox() -> Any:
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        hidden_act="gelu",
        max_position_embeddings=32,
        rope_parameters={
            "rope_theta": 10000.0,
            "partial_rotary_factor": 1.0,
            "rope_type": "default",
        },
        use_parallel_residual=True,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    return _randomized(transformers.GPTNeoXForCausalLM(config))


def _neox_weights(reference: Any) -> dict[str, torch.Tensor]:
    names = (
        (r"^gpt_neox\.embed_in\.", "embed_tokens."),
        (r"^embed_out\.", "lm_head."),
        (r"^gpt_neox\.final_layer_norm\.", "decoder.final_norm."),
        (r"^gpt_neox\.layers\.(\d+)\.input_layernorm\.", r"decoder.layers.\1.self_attn_norm."),
        (r"^gpt_neox\.layers\.(\d+)\.post_attention_layernorm\.", r"decoder.layers.\1.mlp_norm."),
        (r"^gpt_neox\.layers\.(\d+)\.attention\.dense\.", r"decoder.layers.\1.self_attn.o_proj."),
        (r"^gpt_neox\.layers\.(\d+)\.mlp\.dense_h_to_4h\.", r"decoder.layers.\1.mlp.up_proj."),
        (r"^gpt_neox\.layers\.(\d+)\.mlp\.dense_4h_to_h\.", r"decoder.layers.\1.mlp.down_proj."),
    )
    weights = _renamed(reference, names)
    heads, head_dim = 4, 8
    for key in [k for k in weights if "query_key_value" in k]:
        layer = re.search(r"layers\.(\d+)\.", key).group(1)  # type: ignore[union-attr]
        fused = weights.pop(key)  # rows laid out (heads, 3, head_dim): q, k, v of each head
        parts = fused.view(heads, 3, head_dim, *fused.shape[1:])
        for index, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            part = parts[:, index].reshape(heads * head_dim, *fused.shape[1:])
            weights[f"decoder.layers.{layer}.self_attn.{proj}.{key.rsplit('.', 1)[1]}"] = part
    return weights


def _neox_spec(**changes: Any) -> ModelSpec:
    options: dict[str, Any] = dict(
        d_model=32,
        attention={"heads": 4},
        feed_forward={"d_ff": 48, "activation": "gelu"},
        norm={"type": "layernorm", "eps": 1e-5},
        positions={"type": "rope", "base": 10000.0},
        head={"tied": False},
        block={"parallel": "separate-norms"},
    )
    options.update(changes)
    return variant("decoder-only", **options)


def test_parallel_separate_norms_equal_gpt_neox_use_parallel_residual() -> None:
    reference = _neox()
    weights = _neox_weights(reference)
    _assert_equal_and_knob_matters(_neox_spec(), _neox_spec(block={}), weights, reference)


# ----------------------------------------------------------------------------------------
# Phi: parallel block with one shared norm, a bias on the output projection


def _phi() -> Any:
    torch.manual_seed(0)
    config = transformers.PhiConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        hidden_act="gelu_new",
        max_position_embeddings=32,
        rope_parameters={
            "rope_theta": 10000.0,
            "partial_rotary_factor": 1.0,
            "rope_type": "default",
        },
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    return _randomized(transformers.PhiForCausalLM(config))


def _phi_weights(reference: Any) -> dict[str, torch.Tensor]:
    names = (
        (r"^model\.embed_tokens\.", "embed_tokens."),
        (r"^lm_head\.bias", "logits_bias"),  # logits + b: the output projection's bias
        (r"^model\.final_layernorm\.", "decoder.final_norm."),
        (r"^model\.layers\.(\d+)\.input_layernorm\.", r"decoder.layers.\1.self_attn_norm."),
        (r"^model\.layers\.(\d+)\.self_attn\.dense\.", r"decoder.layers.\1.self_attn.o_proj."),
        (r"^model\.layers\.(\d+)\.mlp\.fc1\.", r"decoder.layers.\1.mlp.up_proj."),
        (r"^model\.layers\.(\d+)\.mlp\.fc2\.", r"decoder.layers.\1.mlp.down_proj."),
        (r"^model\.layers\.", "decoder.layers."),
    )
    return _renamed(reference, names)


def test_parallel_shared_norm_and_logits_bias_equal_phi() -> None:
    reference = _phi()
    spec = _neox_spec(
        feed_forward={"d_ff": 48, "activation": "gelu-tanh"},
        head={"tied": False, "logits_bias": "learned"},
        block={"parallel": "shared-norm"},
    )
    expected = _real_logits(reference, ours=False)
    got = _real_logits(_copied(spec, _phi_weights(reference)), ours=True)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    # Sequential blocks with the one norm's weights in both places give other logits.
    sequential = _neox_spec(
        feed_forward={"d_ff": 48, "activation": "gelu-tanh"},
        head={"tied": False, "logits_bias": "learned"},
        block={},
    )
    weights = _phi_weights(reference)
    for key in [k for k in weights if ".self_attn_norm." in k]:
        weights[key.replace(".self_attn_norm.", ".mlp_norm.")] = weights[key]
    other = _real_logits(_copied(sequential, weights), ours=True)
    assert not torch.allclose(other, expected, atol=1e-3, rtol=1e-3)


# ----------------------------------------------------------------------------------------
# Gemma 2: sandwich norms, (1 + weight) RMSNorm, final logit soft-capping


def _gemma2(final_softcap: float | None) -> Any:
    torch.manual_seed(0)
    config = transformers.Gemma2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=32,
        query_pre_attn_scalar=8,  # the usual 1/sqrt(head_dim): the scale is another knob's
        attn_logit_softcapping=None,
        final_logit_softcapping=final_softcap,
        layer_types=["full_attention", "full_attention"],
        attn_implementation="eager",
    )
    model = transformers.Gemma2ForCausalLM(config)
    _randomized(model)
    with torch.no_grad():  # Gemma's norms scale by 1 + weight: weights around 0
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(0.0, 0.2)
    return model


GEMMA_NAMES = (
    (r"^model\.embed_tokens\.", "embed_tokens."),
    (r"^model\.norm\.", "decoder.final_norm."),
    (r"^model\.layers\.(\d+)\.input_layernorm\.", r"decoder.layers.\1.self_attn_norm."),
    (
        r"^model\.layers\.(\d+)\.post_attention_layernorm\.",
        r"decoder.layers.\1.self_attn_out_norm.",
    ),
    (r"^model\.layers\.(\d+)\.pre_feedforward_layernorm\.", r"decoder.layers.\1.mlp_norm."),
    (r"^model\.layers\.(\d+)\.post_feedforward_layernorm\.", r"decoder.layers.\1.mlp_out_norm."),
    (r"^model\.layers\.", "decoder.layers."),
)


def _gemma_spec(**changes: Any) -> ModelSpec:
    options: dict[str, Any] = dict(
        d_model=32,
        attention={"heads": 4, "kv_heads": 2, "head_dim": 8},
        feed_forward={"d_ff": 48, "activation": "geglu-tanh"},
        norm={"type": "rmsnorm", "eps": 1e-6, "sandwich": True, "unit_offset": True},
        positions={"type": "rope", "base": 10000.0},
        bias=False,
        embeddings={"scale": True},
        head={"tied": True, "softcap": 5.0},
    )
    options.update(changes)
    return variant("decoder-only", **options)


def _gemma_weights(reference: Any) -> dict[str, torch.Tensor]:
    weights = _renamed(reference, GEMMA_NAMES)
    weights.pop("lm_head.weight", None)  # tied: the token embedding
    return weights


def test_sandwich_norms_unit_offset_and_final_softcap_equal_gemma2() -> None:
    reference = _gemma2(final_softcap=5.0)
    weights = _gemma_weights(reference)
    _assert_equal_and_knob_matters(
        _gemma_spec(), _gemma_spec(head={"tied": True}), weights, reference
    )


def test_without_sandwich_norms_or_unit_offset_the_gemma2_logits_differ() -> None:
    reference = _gemma2(final_softcap=None)
    weights = _gemma_weights(reference)
    spec = _gemma_spec(head={"tied": True})
    _assert_equal_and_knob_matters(
        spec,
        _gemma_spec(head={"tied": True}, norm={"type": "rmsnorm", "eps": 1e-6, "sandwich": True}),
        weights,
        reference,
    )
    plain = {k: v for k, v in weights.items() if "_out_norm." not in k}
    other = _real_logits(
        _copied(
            _gemma_spec(
                head={"tied": True}, norm={"type": "rmsnorm", "eps": 1e-6, "unit_offset": True}
            ),
            plain,
        ),
        ours=True,
    )
    assert not torch.allclose(other, _real_logits(reference, ours=False), atol=1e-3, rtol=1e-3)


def test_final_softcap_is_cap_times_tanh_of_the_uncapped_logits_over_cap() -> None:
    capped: Any = built(_gemma_spec(head={"tied": True, "softcap": 0.5})).eval()
    with torch.no_grad():
        capped.embed_tokens.weight.mul_(20.0)  # logits beyond the cap
    plain = _copied(_gemma_spec(head={"tied": True}), capped.state_dict())
    ids = tokens(2, 6)
    with torch.no_grad():
        got, uncapped = capped(ids).logits, plain(ids).logits
    assert uncapped.abs().max() > 1.0  # beyond the cap, so that the cap matters
    torch.testing.assert_close(got, 0.5 * torch.tanh(uncapped / 0.5), atol=1e-6, rtol=1e-5)
    assert got.abs().max() <= 0.5


# ----------------------------------------------------------------------------------------
# Norm biases apart from linear biases


@pytest.mark.parametrize(
    ("bias", "norm_bias", "shifts", "linear_bias"),
    [(False, True, True, False), (True, False, False, True), (True, None, True, True)],
)
def test_norm_bias_sets_layernorm_shifts_apart_from_linear_biases(
    bias: bool, norm_bias: bool | None, shifts: bool, linear_bias: bool
) -> None:
    norm: dict[str, Any] = {"type": "layernorm"}
    if norm_bias is not None:
        norm["bias"] = norm_bias
    spec = variant("decoder-only", bias=bias, norm=norm)
    model: Any = built(spec)
    layer = model.decoder.layers[0]
    assert (layer.self_attn_norm.bias is not None) == shifts
    assert (model.decoder.final_norm.bias is not None) == shifts
    assert (layer.self_attn.q_proj.bias is not None) == linear_bias
    assert (layer.mlp.up_proj.bias is not None) == linear_bias


# ----------------------------------------------------------------------------------------
# Parameter counts and the masking and cache properties, with every knob

KNOBS: dict[str, tuple[str, dict[str, Any]]] = {
    "decoder/parallel-separate": ("decoder-only", {"block": {"parallel": "separate-norms"}}),
    "decoder/parallel-shared-norm-bias": (
        "decoder-only",
        {"block": {"parallel": "shared-norm"}, "bias": False, "norm": {"bias": True}},
    ),
    "decoder/sandwich-unit-offset-softcap": (
        "decoder-only",
        {
            "norm": {"type": "rmsnorm", "sandwich": True, "unit_offset": True},
            "head": {"softcap": 30.0},
        },
    ),
    "encoder/parallel-shared": ("encoder-only", {"block": {"parallel": "shared-norm"}}),
    "encoder/sandwich-no-norm-bias": (
        "encoder-only",
        {"norm": {"sandwich": True, "bias": False}, "head": {"transform": True}},
    ),
    "seq2seq/sandwich-softcap": (
        "encoder-decoder",
        {"norm": {"sandwich": True}, "head": {"softcap": 10.0, "tied": False}},
    ),
}


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_the_estimated_parameters_are_the_built_models(name: str) -> None:
    family, changes = KNOBS[name]
    spec = variant(family, **changes)
    model = built(spec)
    assert count_parameters(spec).total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_every_parameter_of_a_knob_learns(name: str) -> None:
    family, changes = KNOBS[name]
    spec = variant(family, **changes)
    model = built(spec).train()
    ids = tokens(2, 7)
    if family in ("decoder-only", "encoder-only"):
        loss = model(ids, labels=ids).loss
    else:
        loss = model(ids, None, tokens(2, 5, seed=1), labels=tokens(2, 5, seed=1)).loss
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None and "pooler" not in n]
    assert not missing


@pytest.mark.parametrize("name", [n for n in sorted(KNOBS) if KNOBS[n][0] == "decoder-only"])
def test_decoding_with_the_cache_equals_the_full_forward_and_ignores_left_padding(
    name: str,
) -> None:
    family, changes = KNOBS[name]
    model = built(variant(family, **changes)).eval()
    ids, mask, positions = left_padded([7, 4])
    with torch.no_grad():
        full = model(ids, mask, positions).logits
        alone = model(ids[1:, 3:], mask[1:, 3:], positions[1:, 3:]).logits
        torch.testing.assert_close(full[1, 3:], alone[0], atol=1e-5, rtol=1e-4)
        past = None
        for t in range(ids.shape[1]):
            out = model(ids[:, t : t + 1], mask[:, : t + 1], positions[:, t : t + 1], past)
            past = out.present
            real = mask[:, t].bool()
            torch.testing.assert_close(out.logits[real, 0], full[real, t], atol=1e-5, rtol=1e-4)
