"""Tiny specs for the code generation tests, built from YAML text as users write it.

``variant(family, **changes)`` starts from a tiny base spec of the family and applies changes
given as dotted paths (``positions={"type": "rope"}``, ``norm__type="rmsnorm"``); the result
goes through ``llmspec.spec.loading.load_spec`` like any spec file.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import torch
import yaml

from llmspec.builder import build
from llmspec.spec.loading import load_spec
from llmspec.spec.sections import ModelSpec

SPECIALS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>", "mask": "<mask>"}
VOCAB = 262  # 256 bytes + 5 special tokens + 1 spare
PAD = 256  # the first special token id (not needed by the model itself)

BASES: dict[str, dict[str, Any]] = {
    "decoder-only": {
        "name": "variant-decoder",
        "architecture": "decoder-only",
        "objective": {"type": "causal-lm"},
    },
    "encoder-only": {
        "name": "variant-encoder",
        "architecture": "encoder-only",
        "objective": {"type": "masked-lm"},
    },
    "encoder-decoder": {
        "name": "variant-seq2seq",
        "architecture": "encoder-decoder",
        "objective": {"type": "denoising"},
    },
}
COMMON: dict[str, Any] = {
    "vocabulary": {"size": VOCAB, "special_tokens": SPECIALS},
    "context_length": 32,
    "d_model": 32,
    "layers": 2,
    "attention": {"heads": 4},
    "feed_forward": {"d_ff": 48, "activation": "gelu"},
    "norm": {"type": "layernorm", "position": "pre"},
    "positions": {"type": "learned", "max_positions": 32},
}
FAMILIES = tuple(BASES)
POSITIONS: dict[str, dict[str, Any]] = {
    "learned": {"type": "learned", "max_positions": 32},
    "learned-offset": {"type": "learned", "max_positions": 32, "offset": 2},
    "sinusoidal": {"type": "sinusoidal"},
    "rope": {"type": "rope", "base": 10000.0},
    "alibi": {"type": "alibi"},
    "relative": {"type": "relative", "buckets": 8, "max_distance": 16},
}


def spec_dict(family: str, **changes: Any) -> dict[str, Any]:
    """The tiny base of ``family`` with ``changes`` applied; ``a__b=v`` sets ``data[a][b] = v``."""
    data = copy.deepcopy({**COMMON, **BASES[family]})
    for key, value in changes.items():
        *parents, last = key.split("__")
        target = data
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    return data


@cache
def _load(text: str) -> ModelSpec:
    return load_spec(text)


def variant(family: str, **changes: Any) -> ModelSpec:
    """A validated spec: the tiny base of ``family`` with ``changes``, loaded from YAML text."""
    return _load(yaml.safe_dump(spec_dict(family, **changes), sort_keys=False))


def built(spec: ModelSpec, dtype: str = "fp32", seed: int = 0) -> torch.nn.Module:
    """The model of ``spec`` in eval mode, initialized from ``seed``."""
    torch.manual_seed(seed)
    return build(spec, dtype=dtype).eval()


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


def left_padded(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, ...]:
    """input_ids, attention_mask, position_ids of a batch padded on the left."""
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length :] = 1
    ids = tokens(len(lengths), width, seed).masked_fill(mask == 0, PAD)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def right_padded(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(lengths)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return tokens(len(lengths), width, seed).masked_fill(mask == 0, PAD), mask
