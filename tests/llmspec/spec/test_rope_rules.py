"""Rope's knobs in the spec: scaling types, partial rotary and a local base are validated
together with the head size and the layer pattern, each problem located at its field with a
fix; specs without the knobs keep their normalized form."""

from __future__ import annotations

import pytest

from llmspec import SpecError, load_spec
from llmspec.spec.loading import dump_spec, spec_sha256

BASE = """name: rope-rules
architecture: decoder-only
vocabulary: {size: 260}
context_length: 64
d_model: 128
layers: 2
feed_forward: {d_ff: 64}
objective: {type: causal-lm}
"""


def _load(positions: str, attention: str = "{heads: 4}"):
    return load_spec(BASE + f"attention: {attention}\npositions: {positions}\n")


def _problems(positions: str, attention: str = "{heads: 4}") -> list[str]:
    with pytest.raises(SpecError) as info:
        _load(positions, attention)
    return [f"{'.'.join(map(str, p.path))}: {p.message}" for p in info.value.problems]


def test_every_knob_together_loads_and_round_trips():
    spec = _load(
        "{type: rope, base: 1.0e+6, partial: 0.5, local_base: 1.0e+4, "
        "scaling: {type: yarn, factor: 8, original_max_positions: 16, beta_fast: 16}}",
        "{heads: 4, sliding_window: 4, layer_pattern: [local, global]}",
    )
    assert spec.positions.rotated(spec.head_dim) == 16
    assert spec.positions.scaling.factor == 8.0
    assert load_spec(dump_spec(spec)) == spec


def test_plain_rope_keeps_its_normalized_form():
    """The new fields stay out of the dump at their defaults: existing specs keep their sha256
    (and so their generated source)."""
    spec = _load("{type: rope}")
    assert "rope" in dump_spec(spec)
    for name in ("rotary_dim", "partial", "scaling", "local_base"):
        assert name not in dump_spec(spec)
    assert spec_sha256(spec) == spec_sha256(_load("{type: rope, base: 10000.0}"))


@pytest.mark.parametrize(
    ("positions", "expected"),
    [
        ("{type: rope, rotary_dim: 7}", "positions.rotary_dim: rope rotates pairs of channels"),
        ("{type: rope, rotary_dim: 40}", "rotary_dim (40) must not exceed the head dim (32)"),
        ("{type: rope, partial: 0.1}", "partial 0.1 of head dim 32 gives rotary_dim 3"),
        ("{type: rope, partial: 1.5}", "positions.partial: must be less than or equal to 1"),
        ("{type: rope, rotary_dim: 8, partial: 0.25}", "give rotary_dim (8) or partial"),
        (
            "{type: rope, scaling: {type: ntk, factor: 2.0}}",
            "positions.scaling.type: unknown type 'ntk' (choose one of: dynamic, linear, "
            "llama3, longrope, yarn)",
        ),
        ("{type: rope, scaling: {type: linear, factor: 0}}", "positions.scaling.factor: must be"),
        (
            "{type: rope, scaling: {type: dynamic, factor: 2.0}}",
            "positions.scaling.original_max_positions: required field missing",
        ),
        (
            "{type: rope, scaling: {type: llama3, factor: 8, low_freq_factor: 4, "
            "high_freq_factor: 1, original_max_positions: 16}}",
            "positions.scaling.high_freq_factor: high_freq_factor (1.0) must be greater than "
            "low_freq_factor (4.0)",
        ),
        (
            "{type: rope, scaling: {type: yarn, factor: 4, original_max_positions: 16, "
            "beta_fast: 1, beta_slow: 32}}",
            "positions.scaling.beta_fast: beta_fast (1.0) must be greater than beta_slow (32.0)",
        ),
        (
            "{type: rope, scaling: {type: yarn, factor: 4, original_max_positions: 16, "
            "mscale: 1.0}}",
            "positions.scaling.mscale: mscale and mscale_all_dim set the attention factor together",
        ),
        (
            "{type: rope, partial: 0.5, scaling: {type: longrope, short_factor: [1.0], "
            "long_factor: [1, 1, 1, 1, 1, 1, 1, 1], original_max_positions: 16}}",
            "positions.scaling.short_factor: longrope needs one factor per rotated channel pair: "
            "8 (rotary dim 16 / 2), got 1",
        ),
        (
            "{type: rope, rotary_dim: 4, scaling: {type: longrope, short_factor: [1.0, -1.0], "
            "long_factor: [1.0, 2.0], original_max_positions: 16}}",
            "positions.scaling.short_factor: longrope factors divide frequencies",
        ),
        (
            "{type: rope, rotary_dim: 2, scaling: {type: dynamic, factor: 2.0, "
            "original_max_positions: 16}}",
            "positions.scaling.type: dynamic scaling raises the base to the power d / (d - 2)",
        ),
        (
            "{type: rope, local_base: 100.0}",
            "positions.local_base: local_base is the base of local (windowed) layers, but no "
            "layer is local",
        ),
    ],
)
def test_bad_rope_knobs_are_refused_at_their_field_with_a_fix(positions, expected):
    problems = _problems(positions)
    assert any(expected in p for p in problems), problems


def test_a_misspelled_scaling_type_gets_a_suggestion():
    (problem,) = _problems("{type: rope, scaling: {type: lama3, factor: 8}}")
    assert "did you mean 'llama3'?" in problem


def test_a_local_base_on_an_all_local_model_says_to_set_the_base():
    (problem,) = _problems("{type: rope, local_base: 100.0}", "{heads: 4, sliding_window: 4}")
    assert "every layer is local" in problem and "set base to 100.0" in problem


def test_rope_knobs_on_an_odd_head_report_the_head_once():
    """An odd head dim is the existing rule's problem; the knobs' rule adds no second one."""
    problems = _problems("{type: rope, partial: 0.5}", "{heads: 4, head_dim: 33}")
    assert len([p for p in problems if "positions" in p]) == 1, problems
