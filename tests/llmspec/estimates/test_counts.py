"""Parameter counts pinned to published models, weight bytes per precision and the matrix-multiply
parameters that size the FLOPs (llmspec.estimates.counts)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspec.estimates.counts import PRECISIONS, count_parameters
from llmspec.estimates.report import estimate
from tests.llmspec.estimates.published_specs import (
    ALL_SPECS,
    BART_BASE,
    BERT_BASE,
    BERT_BASE_MLM,
    GPT2_SMALL,
    T5_SMALL,
    TINYLLAMA,
    spec_of,
    variant,
)

# ----------------------------------------------------------------------------------------
# Parameter counts


@pytest.mark.parametrize(
    ("text", "published"),
    [
        pytest.param(BERT_BASE, 109_482_240, id="bert-base-with-pooler"),
        pytest.param(BERT_BASE_MLM, 109_514_298, id="bert-base-mlm"),
        pytest.param(GPT2_SMALL, 124_439_808, id="gpt2-small"),
        pytest.param(T5_SMALL, 60_506_624, id="t5-small"),
        pytest.param(BART_BASE, 139_420_416, id="bart-base"),
        pytest.param(TINYLLAMA, 1_100_048_384, id="tinyllama-1.1b"),
    ],
)
def test_parameter_count_equals_the_published_count(text: str, published: int) -> None:
    assert count_parameters(spec_of(text)).total == published
    assert estimate(spec_of(text)).to_json()["parameters"]["total"] == published


def test_gpt2_components_are_counted_per_layer_and_in_model_order() -> None:
    params = count_parameters(spec_of(GPT2_SMALL))
    assert [(c.name, c.per_copy, c.copies) for c in params.components] == [
        ("token_embeddings", 50257 * 768, 1),
        ("decoder.positions", 1024 * 768, 1),
        ("decoder.self_attention", 4 * (768 * 768 + 768), 12),
        ("decoder.feed_forward", 768 * 3072 + 3072 + 3072 * 768 + 768, 12),
        ("decoder.layer_norms", 2 * 2 * 768, 12),
        ("decoder.final_norm", 2 * 768, 1),
    ]
    assert params.embedding == (50257 + 1024) * 768
    assert params.non_embedding == params.total - params.embedding


@pytest.mark.parametrize("text", ALL_SPECS)
def test_total_is_the_sum_of_the_components(text: str) -> None:
    params = count_parameters(spec_of(text))
    assert params.total == sum(c.per_copy * c.copies for c in params.components)


def test_encoder_decoder_shares_the_token_embedding_but_not_the_position_tables() -> None:
    params = count_parameters(spec_of(BART_BASE))
    names = [c.name for c in params.components]
    assert names.count("token_embeddings") == 1
    assert params["encoder.positions"] == params["decoder.positions"] == (1024 + 2) * 768


def test_decoder_of_an_encoder_decoder_has_cross_attention_and_three_norms_per_layer() -> None:
    params = count_parameters(spec_of(BART_BASE))
    assert params["decoder.cross_attention"] == params["decoder.self_attention"]
    assert params["encoder.cross_attention"] == 0
    assert params["decoder.layer_norms"] == 6 * 3 * 2 * 768
    assert params["encoder.layer_norms"] == 6 * 2 * 2 * 768


def test_decoder_layers_sizes_only_the_decoder_stack() -> None:
    shallow = count_parameters(variant(T5_SMALL, decoder_layers=2))
    full = count_parameters(spec_of(T5_SMALL))
    per_decoder_layer = 2 * 4 * 512 * 512 + 2 * 512 * 2048 + 3 * 512
    assert full.total - shallow.total == 4 * per_decoder_layer
    assert [c.copies for c in shallow.components if c.name == "encoder.self_attention"] == [6]


def test_relative_position_bias_is_one_table_per_stack_shared_by_its_layers() -> None:
    params = count_parameters(spec_of(T5_SMALL))
    assert params["encoder.relative_bias"] == params["decoder.relative_bias"] == 32 * 8


@pytest.mark.parametrize("text", ALL_SPECS)
def test_tied_and_untied_heads_differ_by_exactly_vocab_times_d_model(text: str) -> None:
    spec = spec_of(text)
    tied = count_parameters(variant(text, **{"head.tied": True, "head.rescale": False}))
    untied = count_parameters(variant(text, **{"head.tied": False, "head.rescale": False}))
    assert untied.total - tied.total == spec.vocabulary.size * spec.d_model
    assert untied["head.lm_head"] == spec.vocabulary.size * spec.d_model


def test_a_logits_bias_buffer_is_not_a_parameter_but_a_learned_one_is() -> None:
    none = count_parameters(variant(BART_BASE, **{"head.logits_bias": "none"})).total
    buffer = count_parameters(variant(BART_BASE, **{"head.logits_bias": "buffer"})).total
    learned = count_parameters(variant(BART_BASE, **{"head.logits_bias": "learned"})).total
    assert buffer == none
    assert learned == none + 50265


@pytest.mark.parametrize("kv_heads", [1, 2, 4, 8, 16])
def test_grouped_query_attention_shrinks_k_and_v_projections_only(kv_heads: int) -> None:
    mha = count_parameters(variant(TINYLLAMA, **{"attention.kv_heads": 32}))
    gqa = count_parameters(variant(TINYLLAMA, **{"attention.kv_heads": kv_heads}))
    head_dim, layers, d_model = 64, 22, 2048
    # k_proj and v_proj each lose (32 - kv_heads) heads of d_model x head_dim weights.
    assert mha.total - gqa.total == layers * 2 * d_model * (32 - kv_heads) * head_dim
    assert mha["decoder.feed_forward"] == gqa["decoder.feed_forward"]


def test_grouped_query_attention_with_biases_also_drops_k_and_v_biases() -> None:
    mha = count_parameters(variant(GPT2_SMALL, **{"attention.kv_heads": 12}))
    mqa = count_parameters(variant(GPT2_SMALL, **{"attention.kv_heads": 1}))
    assert mha.total - mqa.total == 12 * 2 * (768 + 1) * 11 * 64


def test_gated_feed_forward_adds_a_gate_projection() -> None:
    gated = count_parameters(spec_of(TINYLLAMA))
    plain = count_parameters(variant(TINYLLAMA, **{"feed_forward.activation": "silu"}))
    assert gated.total - plain.total == 22 * 2048 * 5632


def test_rmsnorm_has_no_shift_even_when_biases_are_on() -> None:
    layernorm = count_parameters(spec_of(GPT2_SMALL))
    rmsnorm = count_parameters(variant(GPT2_SMALL, **{"norm.type": "rmsnorm"}))
    assert layernorm.total - rmsnorm.total == (12 * 2 + 1) * 768


def test_only_pre_norm_stacks_have_a_final_norm() -> None:
    pre = count_parameters(variant(BART_BASE, **{"norm.position": "pre"}))
    post = count_parameters(spec_of(BART_BASE))
    assert pre["encoder.final_norm"] == pre["decoder.final_norm"] == 2 * 768
    assert post["encoder.final_norm"] == post["decoder.final_norm"] == 0


def test_parameter_free_positions_add_nothing() -> None:
    learned = count_parameters(spec_of(GPT2_SMALL)).total
    for kind in ("sinusoidal", "rope", "alibi"):
        other = count_parameters(variant(GPT2_SMALL, positions={"type": kind})).total
        assert learned - other == 1024 * 768


@settings(max_examples=40, deadline=None)
@given(
    hidden=st.floats(0, 1, exclude_max=True),
    attention=st.floats(0, 1, exclude_max=True),
    mask_rate=st.floats(0, 1, exclude_min=True, exclude_max=True),
    mask_fraction=st.floats(0, 1),
    random_share=st.floats(0, 1),
    dtype=st.sampled_from(["fp32", "fp16", "bf16"]),
)
def test_parameter_count_ignores_dropout_objective_and_precision(
    hidden: float,
    attention: float,
    mask_rate: float,
    mask_fraction: float,
    random_share: float,
    dtype: str,
) -> None:
    spec = variant(
        BERT_BASE_MLM,
        dropout={"hidden": hidden, "attention": attention},
        objective={
            "type": "masked-lm",
            "mask_rate": mask_rate,
            "mask_fraction": mask_fraction,
            "random_fraction": (1 - mask_fraction) * random_share * (1 - 1e-9),
        },
        precision={"dtype": dtype},
    )
    assert count_parameters(spec).total == 109_514_298


# ----------------------------------------------------------------------------------------
# Weight memory


def test_float_weights_take_4_or_2_bytes_per_parameter() -> None:
    weights = dict(estimate(spec_of(GPT2_SMALL)).weights)
    assert list(weights) == list(PRECISIONS)
    assert weights["fp32"] == 4 * 124_439_808
    assert weights["fp16"] == weights["bf16"] == 2 * 124_439_808


def test_int8_quantizes_linear_weights_per_channel_and_keeps_the_rest_fp32() -> None:
    layers, d, d_ff = 12, 768, 3072
    matrices = layers * (4 * d * d + 2 * d * d_ff)
    rows = layers * (4 * d + d_ff + d)  # q, k, v, o, up, down output channels
    rest = 124_439_808 - matrices  # embeddings, norms and biases
    # the tied output projection: the exporter's untied, quantized copy of the token table
    vocab = 50257
    head = vocab * d * 1 + vocab * 4
    expected = matrices * 1 + rows * 4 + rest * 4 + head
    assert dict(estimate(spec_of(GPT2_SMALL)).weights)["int8"] == expected


def test_int4_packs_two_weights_per_byte_with_one_scale_per_block() -> None:
    layers, d, d_ff = 12, 768, 3072
    rest = 124_439_808 - layers * (4 * d * d + 2 * d * d_ff)
    # blocks of 32 along the input: 16 bytes of weights + a 4-byte fp32 scale (fp32 graph)
    blocks = layers * (4 * d * (d // 32) + d_ff * (d // 32) + d * (d_ff // 32))
    # the output projection (the tied table's untied copy) as 8-bit blocks: 32 bytes + a scale
    head = 50257 * (d // 32) * (32 + 4)
    expected = blocks * (16 + 4) + rest * 4 + head
    assert dict(estimate(spec_of(GPT2_SMALL)).weights)["int4"] == expected


def test_int4_scales_and_unquantized_tensors_are_fp16_in_an_fp16_graph() -> None:
    fp32 = dict(estimate(spec_of(GPT2_SMALL)).weights)["int4"]
    fp16 = dict(estimate(variant(GPT2_SMALL, precision={"dtype": "fp16"})).weights)["int4"]
    layers, d, d_ff = 12, 768, 3072
    blocks = layers * (4 * d * (d // 32) + d_ff * (d // 32) + d * (d_ff // 32))
    rest = 124_439_808 - layers * (4 * d * d + 2 * d * d_ff)
    head_blocks = 50257 * (d // 32)
    assert fp32 - fp16 == blocks * 2 + rest * 2 + head_blocks * 2


def test_int4_pads_the_last_block_of_a_short_input_dimension() -> None:
    tiny = variant(
        GPT2_SMALL,
        d_model=48,
        layers=1,
        attention={"heads": 4},
        feed_forward={"d_ff": 64, "activation": "gelu"},
        precision={"block_size": 32},
    )
    params = count_parameters(tiny)
    # in=48 needs 2 blocks of 32 (16 padded values); in=64 needs exactly 2.
    blocks = 4 * 48 * 2 + 64 * 2 + 48 * 2
    matrices = 4 * 48 * 48 + 2 * 48 * 64
    head = 50257 * 2 * (32 + 4)  # the tied table's 8-bit copy, in=48: 2 blocks
    expected = blocks * (16 + 4) + (params.total - matrices) * 4 + head
    assert dict(estimate(tiny).weights)["int4"] == expected


@pytest.mark.parametrize("text", ALL_SPECS)
def test_each_narrower_precision_takes_less_memory(text: str) -> None:
    w = dict(estimate(spec_of(text)).weights)
    assert w["int4"] < w["int8"] < w["fp32"]
    # not int4 < fp16: an fp32 graph's int4 artifact keeps its token table in fp32 beside the
    # 8-bit copy of a tied output projection, which for GPT-2 small outweighs halving the rest
    assert w["fp16"] < w["fp32"]


def test_inference_weights_use_the_quantized_precision_when_the_spec_quantizes() -> None:
    plain = estimate(spec_of(GPT2_SMALL))
    quantized = estimate(variant(GPT2_SMALL, precision={"dtype": "fp32", "quantize": "int8"}))
    assert quantized.inference.precision == "int8"
    assert quantized.inference.weights == dict(plain.weights)["int8"]
    assert plain.inference.precision == "fp32"
    assert plain.inference.weights == 4 * 124_439_808


# ----------------------------------------------------------------------------------------
# FLOPs


def test_flops_per_token_are_2_and_6_times_the_matmul_parameters() -> None:
    est = estimate(spec_of(GPT2_SMALL))
    # every linear weight plus the tied output projection; lookups, norms, biases excluded
    matmul = 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 50257 * 768
    assert est.parameters.matmul == matmul
    assert est.forward_flops_per_token == 2 * matmul
    assert est.training_flops_per_token == 6 * matmul


def test_untied_output_projection_is_counted_once_in_flops() -> None:
    tied = estimate(variant(TINYLLAMA, **{"head.tied": True})).parameters.matmul
    untied = estimate(spec_of(TINYLLAMA)).parameters.matmul
    assert tied == untied
