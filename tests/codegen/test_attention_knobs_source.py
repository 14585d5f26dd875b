"""The generated source of every attention knob (sliding window and layer pattern, QK-norm,
soft-capping, an explicit scale, q/k/v bias) meets the bar of tests/codegen/test_source.py:
ruff-clean and formatted, a shape comment on every reshape, and only the chosen variant
emitted; the knobs also render in an encoder-decoder (both attentions) and run there."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import torch
from codegen_variants import built, tokens, variant

from codegen.plan import AttentionPlan, PlanError
from codegen.render import ruff_command
from llmspec.builder import build, generate_source

KNOBS: dict[str, dict[str, Any]] = {
    "window": {"sliding_window": 4},
    "window-pattern": {"sliding_window": 4, "layer_pattern": ["local", "global"]},
    "window-gemma3": {
        "sliding_window": 4,
        "layer_pattern": ["local"] * 5 + ["global"],
    },
    "window-two-globals": {
        "sliding_window": 4,
        "layer_pattern": ["global", "local", "local", "global"],
    },
    "qk-norm": {"qk_norm": "rmsnorm"},
    "softcap": {"softcap": 50.0},
    "scale": {"scale": 0.0625},
    "qkv-bias": {"qkv_bias": True},
    "all": {
        "sliding_window": 4,
        "layer_pattern": ["local", "global"],
        "qk_norm": "rmsnorm",
        "softcap": 50.0,
        "scale": 0.0625,
        "qkv_bias": True,
    },
}


def _spec(knobs: dict[str, Any], family: str = "decoder-only") -> Any:
    return variant(
        family,
        layers=6,
        attention={"heads": 4, "kv_heads": 2, **knobs},
        norm={"type": "rmsnorm"},
        positions={"type": "rope"},
        bias=False,
    )


def _ruff(*args: str, source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ruff_command(), *args, "--isolated", "--line-length", "100", "-"],
        input=source,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("name", KNOBS)
def test_attention_knob_source_is_clean_formatted_and_commented(name: str) -> None:
    source = generate_source(_spec(KNOBS[name]))
    checked = _ruff("check", "--select", "E,F,W,I,B,UP", "--target-version", "py310", source=source)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    formatted = _ruff("format", "--check", "--target-version", "py310", source=source)
    assert formatted.returncode == 0, formatted.stdout
    for line in source.splitlines():
        if re.search(r"\.(view|reshape|transpose|permute|flatten)\(", line):
            assert line.lstrip().startswith(("#", '"')) or "# (" in line, line


@pytest.mark.parametrize("name", KNOBS)
def test_only_the_chosen_attention_knobs_are_emitted(name: str) -> None:
    knobs = KNOBS[name]
    source = generate_source(_spec(knobs))
    assert ("sliding_window_mask" in source) == ("sliding_window" in knobs)
    assert ("self.q_norm" in source) == ("qk_norm" in knobs)
    assert ("torch.tanh(scores" in source) == ("softcap" in knobs)
    assert ("self.scale" in source) == ("scale" in knobs)
    assert ("hs**-0.5" in source) == ("scale" not in knobs)
    assert ("bias=True" in source) == ("qkv_bias" in knobs)
    assert ("layer_mask = local_mask if" in source) == ("layer_pattern" in knobs)


@pytest.mark.parametrize(
    ("pattern", "condition"),
    [
        (["local", "global"], "i % 2 == 0"),
        (["local"] * 5 + ["global"], "i % 6 != 5"),
        (["global", "local", "local"], "i % 3 != 0"),
        (["global", "local", "local", "global"], "i % 4 in (1, 2)"),
        (["local", "global", "local", "global", "local", "global"], "i % 2 == 0"),
    ],
)
def test_the_layer_pattern_is_one_readable_condition_at_its_shortest_period(
    pattern: list[str], condition: str
) -> None:
    source = generate_source(_spec({"sliding_window": 4, "layer_pattern": pattern}))
    assert f"layer_mask = local_mask if {condition} else mask" in source


def test_an_all_global_pattern_emits_no_window() -> None:
    source = generate_source(_spec({"sliding_window": 4, "layer_pattern": ["global"]}))
    assert "sliding_window" not in source and "local_mask" not in source


def test_knobs_apply_to_both_attentions_of_an_encoder_decoder_and_it_runs() -> None:
    knobs = {k: v for k, v in KNOBS["all"].items() if k not in ("sliding_window", "layer_pattern")}
    spec = _spec(knobs, "encoder-decoder")
    source = generate_source(spec)
    assert source.count("self.q_norm = ") == 2 and source.count("torch.tanh(scores") == 2
    model = built(spec)
    with torch.no_grad():
        logits = model(tokens(2, 5), None, tokens(2, 3)).logits
    assert logits.shape == (2, 3, spec.vocabulary.size) and torch.isfinite(logits).all()


def test_every_knob_makes_its_tensors_on_the_model_device() -> None:
    """A forward on meta tensors raises if the window mask or a knob made a CPU tensor."""
    spec = _spec(KNOBS["all"])
    with torch.device("meta"):
        model = build(spec).eval()
    ids = torch.zeros(2, 5, dtype=torch.long, device="meta")
    mask = torch.ones(2, 5, dtype=torch.long, device="meta")
    logits = model(ids, mask).logits
    assert logits.device.type == "meta" and logits.shape == (2, 5, spec.vocabulary.size)


def test_attention_plans_reject_impossible_knob_combinations() -> None:
    base = {"grouped": False, "multi_query": False, "bias": False, "dropout": False}
    with pytest.raises(PlanError, match="explicit scale"):
        AttentionPlan(scaled=False, explicit_scale=True, **base)
    with pytest.raises(PlanError, match="needs a local layer"):
        AttentionPlan(scaled=True, layer_pattern=("global",), **base)
