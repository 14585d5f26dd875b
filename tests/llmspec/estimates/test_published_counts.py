"""The real-size example specs of today's deployed families count exactly the parameters of the
published checkpoints: the number the model card states, and the number transformers' own class
has for the published config (built on the meta device: no weights, no download)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmspec.estimates.counts import count_parameters
from llmspec.spec.loading import load_spec

SPECS = Path(__file__).resolve().parents[3] / "specs"

# spec file -> (published parameter count, transformers config class, its published values)
PUBLISHED: dict[str, tuple[int, str, dict[str, Any]]] = {
    "llama-3.2-1b.yaml": (
        1_235_814_400,
        "LlamaConfig",
        dict(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2.5-0.5b.yaml": (
        494_032_768,
        "Qwen2Config",
        dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        ),
    ),
    "qwen3-0.6b.yaml": (
        596_049_920,
        "Qwen3Config",
        dict(
            vocab_size=151936,
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            tie_word_embeddings=True,
        ),
    ),
    "mistral-7b-v0.1.yaml": (
        7_241_732_096,
        "MistralConfig",
        dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            tie_word_embeddings=False,
        ),
    ),
    "gemma-2-2b.yaml": (
        2_614_341_888,
        "Gemma2Config",
        dict(
            vocab_size=256000,
            hidden_size=2304,
            intermediate_size=9216,
            num_hidden_layers=26,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            tie_word_embeddings=True,
        ),
    ),
    "phi-3-mini-4k.yaml": (
        3_821_079_552,
        "Phi3Config",
        dict(
            vocab_size=32064,
            hidden_size=3072,
            intermediate_size=8192,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            tie_word_embeddings=False,
            pad_token_id=32000,
        ),
    ),
    "pythia-160m.yaml": (
        162_322_944,
        "GPTNeoXConfig",
        dict(
            vocab_size=50304,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            rotary_pct=0.25,
            use_parallel_residual=True,
            tie_word_embeddings=False,
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_the_estimate_is_the_published_parameter_count(name: str) -> None:
    assert count_parameters(load_spec(SPECS / name)).total == PUBLISHED[name][0]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_transformers_counts_the_same_for_the_published_config(name: str) -> None:
    import torch
    import transformers

    count, config_class, values = PUBLISHED[name]
    config = getattr(transformers, config_class)(**values)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == count
