"""Parameter counts with the block and head knobs equal transformers' for published configs:
Pythia-160m (parallel block, a norm each), Phi-1.5 (parallel block, one shared norm, lm_head
bias) and Gemma-2-2b (sandwich norms). transformers builds each on the meta device, so no
weights are made."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import yaml

from llmspec.estimates.counts import count_parameters
from llmspec.spec.loading import load_spec

transformers = pytest.importorskip("transformers")


def _spec(name: str, vocab: int, eos: str, **fields: Any) -> Any:
    data = {
        "name": name,
        "architecture": "decoder-only",
        "vocabulary": {
            "size": vocab,
            "tokenizer": {"type": "file", "path": "tokenizer.json"},
            "special_tokens": {"eos": eos},
        },
        "positions": {"type": "rope"},
        "objective": {"type": "causal-lm"},
        **fields,
    }
    return load_spec(yaml.safe_dump(data))


def _transformers_count(config: Any, model_class: Any) -> int:
    with torch.device("meta"):
        model = model_class(config)
    return sum(p.numel() for p in model.parameters())


CASES = {
    "pythia-160m": (
        lambda: (
            transformers.GPTNeoXConfig(
                vocab_size=50304,
                hidden_size=768,
                num_hidden_layers=12,
                num_attention_heads=12,
                intermediate_size=3072,
                max_position_embeddings=2048,
                use_parallel_residual=True,
                tie_word_embeddings=False,
            ),
            transformers.GPTNeoXForCausalLM,
        ),
        _spec,
        dict(
            name="pythia-160m",
            vocab=50304,
            eos="<|endoftext|>",
            context_length=2048,
            d_model=768,
            layers=12,
            attention={"heads": 12},
            feed_forward={"d_ff": 3072, "activation": "gelu"},
            head={"tied": False},
            block={"parallel": "separate-norms"},
        ),
    ),
    "phi-1.5": (
        lambda: (
            transformers.PhiConfig(
                vocab_size=51200,
                hidden_size=2048,
                intermediate_size=8192,
                num_hidden_layers=24,
                num_attention_heads=32,
                max_position_embeddings=2048,
            ),
            transformers.PhiForCausalLM,
        ),
        _spec,
        dict(
            name="phi-1-5",
            vocab=51200,
            eos="<|endoftext|>",
            context_length=2048,
            d_model=2048,
            layers=24,
            attention={"heads": 32},
            feed_forward={"d_ff": 8192, "activation": "gelu-tanh"},
            head={"tied": False, "logits_bias": "learned"},
            block={"parallel": "shared-norm"},
        ),
    ),
    "gemma-2-2b": (
        lambda: (
            transformers.Gemma2Config(
                vocab_size=256000,
                hidden_size=2304,
                intermediate_size=9216,
                num_hidden_layers=26,
                num_attention_heads=8,
                num_key_value_heads=4,
                head_dim=256,
            ),
            transformers.Gemma2ForCausalLM,
        ),
        _spec,
        dict(
            name="gemma-2-2b",
            vocab=256000,
            eos="<eos>",
            context_length=8192,
            d_model=2304,
            layers=26,
            attention={"heads": 8, "kv_heads": 4, "head_dim": 256},
            feed_forward={"d_ff": 9216, "activation": "geglu-tanh"},
            norm={"type": "rmsnorm", "eps": 1e-6, "sandwich": True, "unit_offset": True},
            bias=False,
            embeddings={"scale": True},
            head={"softcap": 30.0},
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_count_equals_transformers_for_the_published_config(name: str) -> None:
    reference, make_spec, fields = CASES[name]
    config, model_class = reference()
    assert count_parameters(make_spec(**fields)).total == _transformers_count(config, model_class)
