"""Export with the block and head knobs: the parity gate passes with weights far from their
initialization (so every norm, cap and bias matters), the runtime gives PyTorch's greedy tokens,
``verify``'s graph properties (causality, padding, cache) hold, and a spec's stop tokens reach
generation.json as ids, eos first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file

import llmspec
import runtime
from llmspec.exporter.pipeline import export
from llmspec.inspect.verify import verify
from runtime import artifact as fmt

SPECIALS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
BASE: dict[str, Any] = {
    "architecture": "decoder-only",
    "vocabulary": {"size": 262, "special_tokens": SPECIALS},
    "context_length": 32,
    "d_model": 32,
    "layers": 2,
    "attention": {"heads": 4, "kv_heads": 2},
    "feed_forward": {"d_ff": 48},
    "positions": {"type": "rope"},
    "objective": {"type": "causal-lm"},
}
KNOBS: dict[str, dict[str, Any]] = {
    "gemma-style": {
        "norm": {"type": "rmsnorm", "eps": 1e-6, "sandwich": True, "unit_offset": True},
        "feed_forward": {"d_ff": 48, "activation": "geglu-tanh"},
        "bias": False,
        "embeddings": {"scale": True},
        "head": {"softcap": 5.0},
        "generation": {"max_new_tokens": 8, "stop_tokens": ["<unk>", "<pad>"]},
    },
    "neox-style": {
        "block": {"parallel": "separate-norms"},
        "bias": False,
        "norm": {"bias": True},
        "head": {"tied": False, "logits_bias": "learned"},
    },
    "phi-style": {
        "block": {"parallel": "shared-norm"},
        "feed_forward": {"d_ff": 48, "activation": "gelu-tanh"},
        "head": {"tied": False, "logits_bias": "learned"},
    },
}
PROMPT = [72, 101, 108, 108, 111, 32, 119]


def _varied_export(name: str, tmp_path: Path) -> Path:
    """The artifact of the knob spec ``name``, its weights (norm scales and biases included)
    carrying seeded noise."""
    spec_path = tmp_path / f"{name}.yaml"
    spec_path.write_text(yaml.safe_dump({"name": name, **BASE, **KNOBS[name]}))
    torch.manual_seed(0)
    model = llmspec.build(spec_path, dtype="fp32")
    generator = torch.Generator().manual_seed(2)
    state = {
        key: (value + 0.3 * torch.randn(value.shape, generator=generator)).contiguous()
        for key, value in model.state_dict().items()
    }
    save_file(state, str(tmp_path / "weights.safetensors"))
    return export(
        spec_path,
        tmp_path / "artifact",
        weights=tmp_path / "weights.safetensors",
        progress=lambda line: None,
    )


@torch.no_grad()
def _torch_greedy(path: Path, steps: int) -> list[int]:
    model = llmspec.build(path / fmt.SPEC, dtype="fp32", weights=path / fmt.WEIGHTS).eval()
    ids = torch.tensor([PROMPT])
    out: list[int] = []
    for _ in range(steps):
        token = int(model(ids).logits[0, -1].argmax())
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_a_knob_exports_through_the_gate_and_generates_pytorchs_tokens(name, tmp_path):
    path = _varied_export(name, tmp_path)
    manifest = fmt.read_manifest(path)
    assert manifest.parity["passed"] and manifest.parity["max_abs_diff"] < 1e-3
    model = runtime.load(path, device="cpu")
    generated = model.generate(PROMPT, max_new_tokens=8, chain="greedy").tokens[0]
    expected = _torch_greedy(path, 8)
    stops = [i for i, t in enumerate(expected) if t in model.stop_ids]
    assert generated == (expected[: stops[0] + 1] if stops else expected)
    generation = json.loads((path / fmt.GENERATION).read_text())
    if "stop_tokens" in KNOBS[name].get("generation", {}):
        special = manifest.special_tokens
        unk = model.tokenizer.ids("<unk>")  # one special token
        assert generation["stop_token_ids"] == [special["eos"], special["unk"], special["pad"]]
        assert unk == [special["unk"]]
        assert model.stop_ids == {special["eos"], special["unk"], special["pad"]}
        card = (path / fmt.MODEL_CARD).read_text()
        assert "any of the stop tokens `<unk>`, `<pad>` (besides eos)" in card
    else:
        assert "stop_token_ids" not in generation  # the file as it always was
    # ONNX-level properties on the graph: causal, left padding invisible, the cache exact.
    report = verify(path, examples=2)
    assert report.passed, report.render()


def _file_spec(stops: list[str]) -> Any:
    from llmspec.spec.loading import load_spec

    data = {"name": "stops", **BASE, "generation": {"max_new_tokens": 8, "stop_tokens": stops}}
    data["vocabulary"] = {**BASE["vocabulary"], "tokenizer": {"type": "file", "path": "t.json"}}
    return load_spec(yaml.safe_dump(data))


def test_a_stop_token_the_tokenizer_file_lacks_is_refused_before_export():
    from llmspec.tokenizer import TokenizerMismatch, byte_level, check_fits, stop_token_ids

    spec = _file_spec(["<|eot_id|>", "<|eom_id|>"])
    tokenizer = byte_level(spec)
    with pytest.raises(TokenizerMismatch) as info:
        check_fits(tokenizer, spec)
    assert "stop token '<|eot_id|>' (generation.stop_tokens) is not one token" in str(info.value)
    assert "stop token '<|eom_id|>' (generation.stop_tokens)" in str(info.value)
    tokenizer.add_special_tokens(["<|eot_id|>", "<|eom_id|>"])
    special = check_fits(tokenizer, spec)
    eot, eom = tokenizer.token_to_id("<|eot_id|>"), tokenizer.token_to_id("<|eom_id|>")
    assert stop_token_ids(tokenizer, spec) == [special["eos"], eot, eom]
    assert stop_token_ids(tokenizer, _file_spec([])) == []  # eos alone: nothing to write
