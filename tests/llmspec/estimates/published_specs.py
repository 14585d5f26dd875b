"""Real-size specs of published models (BERT, GPT-2, T5, BART, TinyLlama), written here so the
estimate tests pin the counting rules, not the example files, and helpers to vary them."""

from __future__ import annotations

from typing import Any

import yaml

from llmspec import ModelSpec, load_spec

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
