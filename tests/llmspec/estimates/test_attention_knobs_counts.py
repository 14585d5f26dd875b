"""Parameter counts with the attention knobs: q/k/v biases without an o_proj bias (Qwen2.5) and
QK-norm's scales (Qwen3) count, and equal transformers' for the published configs (built on
the meta device, no weights made) and the generated model's own; a sliding window, a score
scale and soft-capping add no parameters."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import yaml

from llmspec.builder import build
from llmspec.estimates.counts import count_parameters
from llmspec.spec.loading import load_spec

transformers = pytest.importorskip("transformers")


def _qwen(name: str, **fields: Any) -> Any:
    data = {
        "name": name,
        "architecture": "decoder-only",
        "vocabulary": {
            "size": 151936,
            "tokenizer": {"type": "file", "path": "tokenizer.json"},
            "special_tokens": {"eos": "<|endoftext|>"},
        },
        "feed_forward": {"activation": "swiglu", **fields.pop("feed_forward")},
        "norm": {"type": "rmsnorm", "eps": 1e-6},
        "positions": {"type": "rope", "base": 1000000.0},
        "bias": False,
        "head": {"tied": True},
        "objective": {"type": "causal-lm"},
        **fields,
    }
    return load_spec(yaml.safe_dump(data))


def _transformers_count(config: Any, model_class: Any) -> int:
    with torch.device("meta"):
        model = model_class(config)
    return sum(p.numel() for p in model.parameters())


def test_qkv_bias_counts_as_qwen2_5_0_5b() -> None:
    spec = _qwen(
        "qwen2-5-0-5b",
        context_length=32768,
        d_model=896,
        layers=24,
        attention={"heads": 14, "kv_heads": 2, "qkv_bias": True},
        feed_forward={"d_ff": 4864},
    )
    config = transformers.Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    expected = _transformers_count(config, transformers.Qwen2ForCausalLM)
    assert expected == 494_032_768  # the pinned count
    assert count_parameters(spec).total == expected


def test_qk_norm_counts_as_qwen3_0_6b() -> None:
    spec = _qwen(
        "qwen3-0-6b",
        context_length=40960,
        d_model=1024,
        layers=28,
        attention={"heads": 16, "kv_heads": 8, "head_dim": 128, "qk_norm": "rmsnorm"},
        feed_forward={"d_ff": 3072},
    )
    config = transformers.Qwen3Config(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    )
    expected = _transformers_count(config, transformers.Qwen3ForCausalLM)
    assert expected == 596_049_920  # the pinned count
    assert count_parameters(spec).total == expected


@pytest.mark.parametrize(
    "attention",
    [
        {"qkv_bias": True},
        {"qkv_bias": False},
        {"qk_norm": "rmsnorm"},
        {"sliding_window": 2, "layer_pattern": ["local", "global"], "softcap": 5.0, "scale": 0.2},
    ],
    ids=["qkv-bias", "no-qkv-bias", "qk-norm", "window-softcap-scale"],
)
@pytest.mark.parametrize("bias", [True, False])
def test_count_equals_the_generated_model_with_each_knob(
    attention: dict[str, Any], bias: bool
) -> None:
    data = {
        "name": "knobs",
        "architecture": "decoder-only",
        "vocabulary": {"size": 262, "special_tokens": {"eos": "</s>"}},
        "context_length": 16,
        "d_model": 16,
        "layers": 2,
        "attention": {"heads": 4, "kv_heads": 2, **attention},
        "feed_forward": {"d_ff": 24},
        "norm": {"type": "rmsnorm"},
        "positions": {"type": "rope"},
        "bias": bias,
        "objective": {"type": "causal-lm"},
    }
    spec = load_spec(yaml.safe_dump(data))
    model = build(spec)
    assert count_parameters(spec).total == sum(p.numel() for p in model.parameters())
