"""Estimates: exact parameter counts pinned to published models, memory and FLOPs formulas
pinned to their papers (ZeRO, Korthikanti et al.), and the estimate's API contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from llmspec import ModelSpec, load_spec
from llmspec.cli import main
from llmspec.inspect.estimate import (
    DEVICES,
    PLOT_GPUS,
    PRECISIONS,
    STRATEGIES,
    count_parameters,
    estimate,
    human_bytes,
    human_count,
    human_duration,
    human_flops,
    layer_activation_bytes,
    memory_by_gpus,
    model_states_bytes,
    training_seconds,
)

# Real-size specs, written here so these tests pin the counting rules, not the example files.

BERT_BASE = """
name: bert-base
architecture: encoder-only
vocabulary:
  size: 30522
  special_tokens: {pad: "[PAD]", unk: "[UNK]", mask: "[MASK]"}
context_length: 512
d_model: 768
layers: 12
attention: {heads: 12}
feed_forward: {d_ff: 3072, activation: gelu}
norm: {type: layernorm, position: post, eps: 1.0e-12}
positions: {type: learned, max_positions: 512}
embeddings: {token_types: 2, norm: true}
head: {pooler: true}
dropout: {hidden: 0.1, attention: 0.1}
objective: {type: masked-lm}
"""

BERT_BASE_MLM = BERT_BASE.replace(
    "head: {pooler: true}", "head: {transform: true, logits_bias: learned}"
).replace("name: bert-base", "name: bert-base-mlm")

GPT2_SMALL = """
name: gpt2-small
architecture: decoder-only
vocabulary: {size: 50257, special_tokens: {bos: "<|endoftext|>", eos: "<|endoftext|>"}}
context_length: 1024
d_model: 768
layers: 12
attention: {heads: 12}
feed_forward: {d_ff: 3072, activation: gelu-tanh}
norm: {type: layernorm, position: pre, eps: 1.0e-5}
positions: {type: learned, max_positions: 1024}
dropout: {hidden: 0.1, attention: 0.1}
objective: {type: causal-lm}
"""

T5_SMALL = """
name: t5-small
architecture: encoder-decoder
vocabulary:
  size: 32128
  sentinels: 100
  special_tokens: {pad: "<pad>", eos: "</s>", unk: "<unk>"}
context_length: 512
d_model: 512
layers: 6
attention: {heads: 8, scaled: false}
feed_forward: {d_ff: 2048, activation: relu}
norm: {type: rmsnorm, position: pre, eps: 1.0e-6}
positions: {type: relative, buckets: 32, max_distance: 128}
bias: false
head: {tied: true, rescale: true}
objective: {type: span-corruption}
"""

BART_BASE = """
name: bart-base
architecture: encoder-decoder
vocabulary:
  size: 50265
  special_tokens: {bos: "<s>", pad: "<pad>", eos: "</s>", unk: "<unk>", mask: "<mask>"}
context_length: 1024
d_model: 768
layers: 6
attention: {heads: 12}
feed_forward: {d_ff: 3072, activation: gelu}
norm: {type: layernorm, position: post}
positions: {type: learned, max_positions: 1024, offset: 2}
embeddings: {norm: true}
head: {tied: true, logits_bias: buffer}
objective: {type: denoising}
"""

TINYLLAMA = """
name: tinyllama-1b
architecture: decoder-only
vocabulary: {size: 32000, special_tokens: {bos: "<s>", eos: "</s>", unk: "<unk>"}}
context_length: 2048
d_model: 2048
layers: 22
attention: {heads: 32, kv_heads: 4}
feed_forward: {d_ff: 5632, activation: swiglu}
norm: {type: rmsnorm, position: pre, eps: 1.0e-5}
positions: {type: rope, base: 10000.0}
bias: false
head: {tied: false}
precision: {dtype: bf16}
objective: {type: causal-lm}
"""

ALL_SPECS = [BERT_BASE, BERT_BASE_MLM, GPT2_SMALL, T5_SMALL, BART_BASE, TINYLLAMA]


def variant(text: str, **changes: Any) -> ModelSpec:
    """The spec in ``text`` with dotted-path fields replaced: ``variant(S, **{"head.tied": 0})``."""
    data = yaml.safe_load(text)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return ModelSpec.model_validate(data)


def spec_of(text: str) -> ModelSpec:
    return load_spec(text)


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
    expected = matrices * 1 + rows * 4 + rest * 4
    assert dict(estimate(spec_of(GPT2_SMALL)).weights)["int8"] == expected


def test_int4_packs_two_weights_per_byte_with_one_scale_per_block() -> None:
    layers, d, d_ff = 12, 768, 3072
    rest = 124_439_808 - layers * (4 * d * d + 2 * d * d_ff)
    # blocks of 32 along the input: 16 bytes of weights + a 4-byte fp32 scale (fp32 graph)
    blocks = layers * (4 * d * (d // 32) + d_ff * (d // 32) + d * (d_ff // 32))
    expected = blocks * (16 + 4) + rest * 4
    assert dict(estimate(spec_of(GPT2_SMALL)).weights)["int4"] == expected


def test_int4_scales_and_unquantized_tensors_are_fp16_in_an_fp16_graph() -> None:
    fp32 = dict(estimate(spec_of(GPT2_SMALL)).weights)["int4"]
    fp16 = dict(estimate(variant(GPT2_SMALL, precision={"dtype": "fp16"})).weights)["int4"]
    layers, d, d_ff = 12, 768, 3072
    blocks = layers * (4 * d * (d // 32) + d_ff * (d // 32) + d * (d_ff // 32))
    rest = 124_439_808 - layers * (4 * d * d + 2 * d * d_ff)
    assert fp32 - fp16 == blocks * 2 + rest * 2


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
    expected = blocks * (16 + 4) + (params.total - matrices) * 4
    assert dict(estimate(tiny).weights)["int4"] == expected


@pytest.mark.parametrize("text", ALL_SPECS)
def test_each_narrower_precision_takes_less_memory(text: str) -> None:
    w = dict(estimate(spec_of(text)).weights)
    assert w["int4"] < w["int8"] < w["fp32"]
    assert w["int4"] < w["fp16"] < w["fp32"]


def test_inference_weights_use_the_quantized_precision_when_the_spec_quantizes() -> None:
    plain = estimate(spec_of(GPT2_SMALL))
    quantized = estimate(variant(GPT2_SMALL, precision={"dtype": "fp32", "quantize": "int8"}))
    assert quantized.inference.precision == "int8"
    assert quantized.inference.weights == dict(plain.weights)["int8"]
    assert plain.inference.precision == "fp32"
    assert plain.inference.weights == 4 * 124_439_808


# ----------------------------------------------------------------------------------------
# KV cache


def test_kv_cache_per_token_is_2_x_layers_x_kv_heads_x_head_dim_x_bytes() -> None:
    llama = estimate(spec_of(TINYLLAMA), batch_size=4, seq_len=1024)
    per_token = 2 * 22 * 4 * 64 * 2  # K and V, layers, kv heads, head dim, bf16
    assert llama.inference.kv_bytes_per_token == per_token
    assert llama.inference.kv_cache == 4 * 1024 * per_token
    assert llama.inference.total == llama.inference.weights + llama.inference.kv_cache
    gpt2 = estimate(spec_of(GPT2_SMALL))
    assert gpt2.inference.kv_bytes_per_token == 2 * 12 * 12 * 64 * 4 == 72 * 1024


def test_kv_cache_shrinks_with_grouped_query_attention() -> None:
    mha = estimate(variant(TINYLLAMA, **{"attention.kv_heads": 32}))
    gqa = estimate(spec_of(TINYLLAMA))
    assert mha.inference.kv_cache == 8 * gqa.inference.kv_cache


def test_encoder_decoder_cache_adds_cross_attention_keys_and_values_per_encoder_token() -> None:
    t5 = estimate(spec_of(T5_SMALL), batch_size=2, seq_len=100)
    per_token = 2 * 6 * 8 * 64 * 4
    assert t5.inference.kv_bytes_per_token == t5.inference.cross_kv_bytes_per_token == per_token
    assert t5.inference.kv_cache == 2 * 100 * 2 * per_token


def test_encoder_only_models_keep_no_kv_cache() -> None:
    bert = estimate(spec_of(BERT_BASE))
    assert bert.inference.kv_cache == bert.inference.kv_bytes_per_token == 0


@given(batch=st.integers(1, 64), seq=st.integers(1, 2048))
def test_kv_cache_is_linear_in_batch_and_sequence(batch: int, seq: int) -> None:
    one = estimate(spec_of(TINYLLAMA), batch_size=1, seq_len=1).inference.kv_cache
    assert estimate(spec_of(TINYLLAMA), batch_size=batch, seq_len=seq).inference.kv_cache == (
        batch * seq * one
    )


# ----------------------------------------------------------------------------------------
# Training memory


@pytest.mark.parametrize(
    ("stage", "gigabytes"), [(0, 120.0), (1, 31.4), (2, 16.6), (3, 1.9)], ids=lambda v: str(v)
)
def test_zero_paper_7_5b_model_on_64_devices(stage: int, gigabytes: float) -> None:
    # Rajbhandari et al. 2020, figure 1: Psi = 7.5B, N_d = 64, K = 12.
    states = model_states_bytes(7_500_000_000, gpus=64, stage=stage)
    assert round(states.total / 1e9, 1) == gigabytes


def test_mixed_precision_adam_keeps_16_bytes_per_parameter_unsharded() -> None:
    states = model_states_bytes(1000, gpus=1, stage=0, mixed_precision=True)
    assert (states.weights, states.gradients, states.optimizer) == (2000, 2000, 12000)


def test_fp32_adam_keeps_16_bytes_per_parameter_without_a_master_copy() -> None:
    states = model_states_bytes(1000, gpus=1, stage=0, mixed_precision=False)
    assert (states.weights, states.gradients, states.optimizer) == (4000, 4000, 8000)


def test_each_zero_stage_shards_one_more_kind_of_state() -> None:
    full = model_states_bytes(6400, gpus=64, stage=0)
    s1, s2, s3 = (model_states_bytes(6400, gpus=64, stage=s) for s in (1, 2, 3))
    assert (s1.weights, s1.gradients, s1.optimizer) == (full.weights, full.gradients, 1200)
    assert (s2.weights, s2.gradients, s2.optimizer) == (full.weights, 200, 1200)
    assert (s3.weights, s3.gradients, s3.optimizer) == (200, 200, 1200)


def test_a_shard_rounds_up_to_whole_parameters() -> None:
    assert model_states_bytes(10, gpus=3, stage=3).total == 4 * 16


@pytest.mark.parametrize(
    ("params", "gpus", "stage", "message"),
    [
        (100, 0, 0, "gpus must be at least 1"),
        (100, 1, 4, "ZeRO stage must be 0"),
        (-1, 1, 0, "params must not be negative"),
    ],
)
def test_model_states_reject_bad_arguments(
    params: int, gpus: int, stage: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        model_states_bytes(params, gpus=gpus, stage=stage)


def test_fsdp_full_shard_matches_zero_3_and_ddp_replicates_everything() -> None:
    est = estimate(spec_of(TINYLLAMA), gpus=8)
    by_name = {t.strategy: t for t in est.training}
    assert [name for name, _ in STRATEGIES] == list(by_name)
    assert by_name["fsdp"].states == by_name["zero-3"].states
    assert by_name["ddp"].states.total == 16 * 1_100_048_384
    assert by_name["zero-3"].states.total == 16 * -(-1_100_048_384 // 8)


def test_bert_base_activations_are_4_33_mb_per_layer_at_seq_128() -> None:
    # Korthikanti et al. 2022: s*b*h*(34 + 5*a*s/h) bytes with 16-bit activations.
    per_layer = layer_activation_bytes(128, 1, 768, 12)
    assert per_layer == 128 * 1 * 768 * (34 + 5 * 12 * 128 // 768) == 4_325_376
    assert round(per_layer / 1e6, 2) == 4.33
    bert_bf16 = variant(BERT_BASE, precision={"dtype": "bf16"})
    assert estimate(bert_bf16, seq_len=128).activations_per_layer == 4_325_376


def test_full_recomputation_keeps_only_each_layers_input() -> None:
    assert layer_activation_bytes(128, 4, 768, 12, recompute=True) == 2 * 128 * 4 * 768


def test_fp32_activations_double_all_but_the_one_byte_dropout_masks() -> None:
    s, b, h, a = 256, 2, 512, 8
    assert layer_activation_bytes(s, b, h, a, value_bytes=4) == (66 * s * b * h + 9 * a * s * s * b)


def test_training_activations_cover_every_layer_and_the_fp32_logits() -> None:
    spec = variant(GPT2_SMALL, precision={"dtype": "bf16"})
    est = estimate(spec, batch_size=2, seq_len=512)
    logits = 4 * 512 * 2 * 50257
    for t in est.training:
        assert t.activations == 12 * layer_activation_bytes(512, 2, 768, 12) + logits
        assert t.activations_recompute == 12 * 2 * 512 * 2 * 768 + logits
        assert t.total == t.states.total + t.activations


def test_decoder_cross_attention_adds_an_attention_block_and_a_norm_per_layer() -> None:
    t5 = estimate(variant(T5_SMALL, precision={"dtype": "bf16"}), seq_len=128)
    s, b, h, a = 128, 1, 512, 8
    self_attention_layers = 12 * layer_activation_bytes(s, b, h, a)
    cross_attention = 6 * (13 * s * b * h + 5 * a * s * s * b)  # 11sbh + 5as²b, norm 2sbh
    logits = 4 * s * b * 32128
    assert t5.training[0].activations == self_attention_layers + cross_attention + logits


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


# ----------------------------------------------------------------------------------------
# The API contract


def test_seq_len_defaults_to_the_context_length() -> None:
    assert estimate(spec_of(GPT2_SMALL)).seq_len == 1024


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, r"batch_size must be at least 1, got 0"),
        ({"seq_len": 0}, r"seq_len must be at least 1, got 0"),
        ({"gpus": -2}, r"gpus must be at least 1, got -2"),
        ({"seq_len": 1025}, r"seq_len 1025 exceeds gpt2-small's context_length 1024; use"),
    ],
)
def test_bad_workload_arguments_raise_value_error_saying_how_to_fix(
    kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        estimate(spec_of(GPT2_SMALL), **kwargs)


def test_every_bad_argument_is_reported_at_once() -> None:
    with pytest.raises(ValueError, match=r"batch_size.*gpus"):
        estimate(spec_of(GPT2_SMALL), batch_size=0, gpus=0)


@pytest.mark.parametrize("text", ALL_SPECS)
def test_json_has_stable_keys_and_integer_numbers(text: str) -> None:
    data = estimate(spec_of(text), batch_size=2, seq_len=128, gpus=4).to_json()
    assert json.loads(json.dumps(data)) == data
    assert list(data) == [
        "name",
        "architecture",
        "inputs",
        "parameters",
        "weights_bytes",
        "inference",
        "training",
        "flops_per_token",
        "compute",
    ]
    assert data["inputs"] == {"batch_size": 2, "seq_len": 128, "gpus": 4}
    assert list(data["weights_bytes"]) == list(PRECISIONS)
    assert list(data["training"]["strategies"]) == [name for name, _ in STRATEGIES]

    def numbers(node: object) -> list[object]:
        if isinstance(node, dict):
            return [v for value in node.values() for v in numbers(value)]
        if isinstance(node, list):
            return [v for value in node for v in numbers(value)]
        return [node] if isinstance(node, int | float) and not isinstance(node, bool) else []

    floats = {"mfu": data["compute"].pop("mfu")}  # a ratio; seconds is None without a device
    assert isinstance(floats["mfu"], float)
    assert all(isinstance(n, int) for n in numbers(data))


def test_render_shows_human_units_in_aligned_columns() -> None:
    text = estimate(spec_of(GPT2_SMALL)).render()
    assert "124.44 M" in text
    assert "474.7 MiB" in text
    weights = text.split("\nWeights\n")[1].split("\n\n")[0].splitlines()
    assert len({len(line) for line in weights}) == 1  # right-aligned byte column
    assert weights[1].split() == ["fp32", "474.7", "MiB"]


@pytest.mark.parametrize(
    ("n", "shown"), [(999, "999"), (1536, "1.54 K"), (124_439_808, "124.44 M"), (1.1e9, "1.10 B")]
)
def test_human_count_uses_decimal_suffixes(n: int, shown: str) -> None:
    assert human_count(int(n)) == shown


@pytest.mark.parametrize(
    ("n", "shown"), [(512, "512 B"), (73_728, "72.0 KiB"), (497_759_232, "474.7 MiB")]
)
def test_human_bytes_uses_binary_units(n: int, shown: str) -> None:
    assert human_bytes(n) == shown


def test_estimating_does_not_import_torch() -> None:
    code = "import sys, llmspec.inspect.estimate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ----------------------------------------------------------------------------------------
# Training compute: FLOPs for a token count, compute-optimal tokens, time on a device

GPT2_TOTAL = 124_439_808
GPT2_MATMUL = 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 50257 * 768  # tied output included


def test_training_flops_are_6_x_matmul_parameters_x_tokens() -> None:
    compute = estimate(spec_of(GPT2_SMALL), tokens=10**9).compute
    assert compute.matmul_parameters == GPT2_MATMUL == 123_532_032
    assert compute.flops == 6 * 123_532_032 * 10**9 == 741_192_192 * 10**9
    assert compute.tokens_given
    # the same count as the per-token figure, times the tokens
    assert compute.flops == estimate(spec_of(GPT2_SMALL)).training_flops_per_token * 10**9


def test_compute_optimal_tokens_are_20_per_parameter_and_the_default_token_count() -> None:
    compute = estimate(spec_of(GPT2_SMALL)).compute
    assert compute.compute_optimal_tokens == 20 * GPT2_TOTAL == 2_488_796_160
    assert compute.tokens == compute.compute_optimal_tokens and not compute.tokens_given
    assert compute.compute_optimal_flops == 6 * GPT2_MATMUL * 2_488_796_160
    assert compute.seconds is None  # no device, no time
    given = estimate(spec_of(GPT2_SMALL), tokens=5).compute
    assert given.compute_optimal_tokens == 2_488_796_160  # shown always


def test_h100_at_mfu_0_4_trains_gpt2_small_on_1b_tokens_in_31_minutes() -> None:
    # 741.19 PFLOP / (989 TFLOP/s x 0.4) = 7.41192192e17 / 3.956e14 = 1873.58997 s
    compute = estimate(spec_of(GPT2_SMALL), tokens=10**9, device="h100").compute
    assert compute.seconds == pytest.approx(1873.5899697, rel=1e-9)
    assert human_duration(1873.5899697) == "31.2 minutes"
    eight = estimate(spec_of(GPT2_SMALL), tokens=10**9, device="h100", gpus=8, mfu=0.5)
    assert eight.compute.seconds == pytest.approx(7.41192192e17 / (8 * 989e12 * 0.5))


def test_device_table_holds_the_vendor_dense_peaks() -> None:
    peaks = {name: d.peak_flops for name, d in DEVICES.items()}
    assert peaks["h100"] == 989 * 10**12
    assert peaks["a100"] == 312 * 10**12
    assert peaks["v100"] == 125 * 10**12
    assert peaks["l4"] == 121 * 10**12
    assert all(name.startswith("cpu-") for name in list(DEVICES)[4:])
    assert training_seconds(312 * 10**12, DEVICES["a100"], mfu=1.0) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mfu": 0.0}, r"mfu must be in \(0, 1\], got 0.0"),
        ({"mfu": 1.5}, r"mfu must be in \(0, 1\], got 1.5"),
        ({"device": "tpu"}, r"unknown device 'tpu'; choose one of: h100, a100, v100, l4"),
        ({"tokens": 0}, r"tokens must be at least 1, got 0"),
    ],
)
def test_bad_compute_arguments_raise_value_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        estimate(spec_of(GPT2_SMALL), **kwargs)


def test_compute_json_keys() -> None:
    data = estimate(spec_of(GPT2_SMALL), tokens=10**9, device="h100", gpus=2).to_json()
    compute = data["compute"]
    assert compute == {
        "parameters": GPT2_TOTAL,
        "matmul_parameters": GPT2_MATMUL,
        "tokens_per_parameter": 20,
        "compute_optimal_tokens": 20 * GPT2_TOTAL,
        "compute_optimal_flops": 6 * GPT2_MATMUL * 20 * GPT2_TOTAL,
        "tokens": 10**9,
        "tokens_source": "given",
        "flops": 6 * GPT2_MATMUL * 10**9,
        "device": {
            "name": "h100",
            "description": "NVIDIA H100 SXM",
            "peak_flops": 989 * 10**12,
            "precision": "bf16",
            "memory_bytes": 80 * 2**30,
        },
        "mfu": 0.4,
        "gpus": 2,
        "seconds": pytest.approx(1873.5899697 / 2),
    }
    assert json.loads(json.dumps(data)) == data


def test_render_shows_the_compute_view() -> None:
    text = estimate(spec_of(GPT2_SMALL), tokens=10**9, device="h100").render()
    section = text.split("\nTraining compute")[1]
    assert "2.49 B" in section and "Hoffmann et al. 2022" in section
    assert "741.19 PFLOP" in section
    assert "31.2 minutes" in section and "1 x h100" in section
    bare = estimate(spec_of(GPT2_SMALL)).render()
    assert "give --device (h100, a100, v100, l4" in bare


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(59, "59.0 seconds"), (3600, "60.0 minutes"), (86400, "24.0 hours"), (1e8, "3.2 years")],
)
def test_human_duration(seconds: float, shown: str) -> None:
    assert human_duration(seconds) == shown


def test_human_flops_reaches_exa() -> None:
    assert human_flops(741_192_192 * 10**9) == "741.19 PFLOP"
    assert human_flops(1_840_000_000_000_000_000) == "1.84 EFLOP"
    assert human_flops(248_880_000) == "248.88 MFLOP"


def test_memory_by_gpus_matches_the_estimate_at_each_device_count() -> None:
    spec = spec_of(TINYLLAMA)
    memory = memory_by_gpus(spec, batch_size=1, seq_len=256)
    assert list(memory) == [name for name, _ in STRATEGIES]
    assert PLOT_GPUS == (1, 2, 4, 8, 16, 32, 64)
    for i, n in enumerate(PLOT_GPUS):
        est = estimate(spec, seq_len=256, gpus=n)
        assert [memory[t.strategy][i] for t in est.training] == [t.total for t in est.training]
    assert len(set(memory["ddp"])) == 1  # DDP replicates: no saving from more devices
    assert memory["fsdp"] == memory["zero-3"]
    assert memory["zero-3"][-1] < memory["zero-2"][-1] < memory["zero-1"][-1] < memory["ddp"][-1]


# ----------------------------------------------------------------------------------------
# The estimate verb: compute flags, usage errors, the memory plot

TINY_SPEC = Path(__file__).resolve().parents[3] / "specs" / "tiny-decoder.yaml"


def test_estimate_verb_json_has_the_compute_view(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["estimate", str(TINY_SPEC), "--tokens", "2.5M", "--device", "a100", "--gpus", "4"]
    assert main([*argv, "--mfu", "0.5", "--json"]) == 0
    compute = json.loads(capsys.readouterr().out)["compute"]
    assert compute["tokens"] == 2_500_000 and compute["tokens_source"] == "given"
    assert compute["device"]["name"] == "a100" and compute["mfu"] == 0.5
    assert compute["seconds"] == pytest.approx(compute["flops"] / (4 * 312e12 * 0.5))
    assert main(["estimate", str(TINY_SPEC), "--json"]) == 0
    compute = json.loads(capsys.readouterr().out)["compute"]
    assert compute["tokens"] == compute["compute_optimal_tokens"] == 20 * compute["parameters"]
    assert compute["device"] is None and compute["seconds"] is None


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--mfu", "0"], "must be above 0 and at most 1, got 0.0"),
        (["--mfu", "1.01"], "must be above 0 and at most 1, got 1.01"),
        (["--mfu", "lots"], "expected a number, got 'lots'"),
        (["--device", "tpu-v5"], "invalid choice: 'tpu-v5' (choose from"),
        (["--tokens", "0"], "must be a whole number of at least 1"),
        (["--tokens", "many"], "expected a token count"),
    ],
)
def test_bad_compute_flags_are_usage_errors(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["estimate", str(TINY_SPEC), *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err
    if "--device" in flags:
        assert all(name in err for name in DEVICES)


def test_estimate_verb_writes_the_memory_plot_atomically(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmspec import files

    written: list[tuple[Path, bytes]] = []
    real = files.write_atomic

    def spy(path: Path, data: str | bytes) -> Path:
        assert isinstance(data, bytes)
        written.append((Path(path), data))
        return real(path, data)

    monkeypatch.setattr(files, "write_atomic", spy)
    target = tmp_path / "memory.png"
    argv = ["estimate", str(TINY_SPEC), "--plot", str(target), "--device", "l4", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    json.loads(out)  # the plot does not disturb the JSON on stdout
    assert f"wrote {target}" in err
    assert written == [(target, target.read_bytes())]
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["memory.png"]  # no temporary left
