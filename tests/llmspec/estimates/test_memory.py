"""Memory formulas pinned to their papers: the KV cache, model states under ZeRO and FSDP
(Rajbhandari et al.) and activations (Korthikanti et al.) (llmspec.estimates.memory)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llmspec.estimates.memory import STRATEGIES, layer_activation_bytes, model_states_bytes
from llmspec.estimates.report import estimate
from tests.llmspec.estimates.published_specs import (
    BERT_BASE,
    GPT2_SMALL,
    T5_SMALL,
    TINYLLAMA,
    spec_of,
    variant,
)

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
