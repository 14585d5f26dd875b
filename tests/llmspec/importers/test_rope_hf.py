"""Rope's knobs to and from transformers' rope_parameters (llmspec.importers.hf.rope): a spec's
rope written as rope_parameters rotates in transformers as in the generated model, transformers'
own configs (Phi-3 longrope, Gemma 3 local/global, GPT-NeoX partial) come back as specs with
the same tables, and what the spec cannot express is refused by name."""

from __future__ import annotations

import pytest
import torch

from llmspec.importers.hf.mapping import HFImportError
from llmspec.importers.hf.rope import (
    local_rope_parameters_to_hf,
    positions_from_hf,
    rope_parameters_to_hf,
)
from llmspec.spec.sections import RopePositions
from tests.llmspec.test_rope_parity import (
    CASES,
    CONTEXT,
    HEAD_DIM,
    ORIGINAL,
    _ours,
    _positions,
    _spec,
    _theirs,
)


def _llama(parameters: dict) -> object:
    import transformers

    return transformers.LlamaConfig(
        hidden_size=128,
        num_attention_heads=4,
        head_dim=HEAD_DIM,
        max_position_embeddings=CONTEXT,
        rope_parameters=dict(parameters),
    )


@pytest.mark.parametrize("name", [n for n in CASES if n != "partial-plain"])
def test_a_spec_rope_written_for_transformers_rotates_the_same(name):
    spec = _spec(CASES[name][0])
    parameters = rope_parameters_to_hf(spec.positions, HEAD_DIM, CONTEXT)
    for length in (ORIGINAL - 2, CONTEXT + 3):
        position_ids = _positions(length)
        ours = _ours(spec, position_ids)
        theirs = _theirs(_llama(parameters), position_ids)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_rope_parameters_round_trip_to_the_same_positions(name):
    positions = _spec(CASES[name][0]).positions
    parameters = rope_parameters_to_hf(positions, HEAD_DIM, CONTEXT)
    back = RopePositions.model_validate(positions_from_hf(parameters, CONTEXT))
    assert back.rotated(HEAD_DIM) == positions.rotated(HEAD_DIM)
    assert back.base == positions.base
    if positions.scaling is None:
        assert back.scaling is None
    else:
        for field, value in positions.scaling.model_dump().items():
            if value is not None:
                assert getattr(back.scaling, field) == value, field


def test_phi3_longrope_imports_with_its_implicit_factor():
    """Phi-3 gives no factor: transformers takes max_position_embeddings / original for the
    attention factor, and so does the imported spec, explicitly."""
    import transformers
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    config = transformers.Phi3Config(
        hidden_size=128,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT,
        original_max_position_embeddings=ORIGINAL,
        partial_rotary_factor=0.75,
        rope_parameters={
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "short_factor": [1.0 + 0.05 * i for i in range(12)],
            "long_factor": [1.5 + 0.25 * i for i in range(12)],
        },
    )
    positions = positions_from_hf(config.rope_parameters, config.max_position_embeddings)
    assert positions["partial"] == 0.75
    assert positions["scaling"]["factor"] == CONTEXT / ORIGINAL
    spec = _spec(positions)
    for length in (ORIGINAL, ORIGINAL + 1):
        position_ids = _positions(length)
        theirs = Phi3RotaryEmbedding(config)(torch.zeros(1), position_ids)
        torch.testing.assert_close(_ours(spec, position_ids), theirs, rtol=1e-5, atol=1e-6)


def test_gemma3_local_layers_become_local_base_and_go_back():
    full = {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}
    sliding = {"rope_type": "default", "rope_theta": 1e4}
    positions = positions_from_hf(full, 128, local=sliding)
    assert positions == {
        "type": "rope",
        "base": 1e6,
        "scaling": {"type": "linear", "factor": 8.0},
        "local_base": 1e4,
    }
    rope = RopePositions.model_validate(positions)
    assert local_rope_parameters_to_hf(rope, HEAD_DIM) == sliding
    assert rope_parameters_to_hf(rope, HEAD_DIM, 128) == full


def test_a_rotary_dim_is_written_as_a_factor_transformers_rounds_back_to_it():
    for head_dim in (40, 80, 96, 120, 256):
        for rotated in range(2, head_dim, 2):
            rope = RopePositions.model_validate({"type": "rope", "rotary_dim": rotated})
            factor = rope_parameters_to_hf(rope, head_dim, 64)["partial_rotary_factor"]
            assert int(head_dim * factor) == rotated


@pytest.mark.parametrize(
    ("parameters", "local", "message"),
    [
        (
            {"rope_type": "proportional", "rope_theta": 1e4},
            None,
            'rope_parameters.rope_type = "proportional" is not supported; supported: default, '
            "linear, dynamic, llama3, yarn, longrope",
        ),
        (
            {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
             "high_freq_factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 1e4,
             "smooth": 2},
            None,
            "rope_parameters.smooth = 2 is not supported by the spec's llama3 rope",
        ),
        (
            {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
            "the spec's local layers rotate unscaled",
        ),
        (
            {"rope_type": "linear", "rope_theta": 1e6},
            None,
            "rope_parameters.factor is missing",
        ),
    ],
)  # fmt: skip
def test_what_the_spec_cannot_express_is_refused_by_name(parameters, local, message):
    with pytest.raises(HFImportError, match="config.json") as info:
        positions_from_hf(parameters, 64, local=local)
    assert message in str(info.value)


def test_dynamic_with_another_original_length_than_max_positions_is_refused():
    rope = RopePositions.model_validate(
        {
            "type": "rope",
            "scaling": {"type": "dynamic", "factor": 2.0, "original_max_positions": 16},
        }
    )
    with pytest.raises(HFImportError, match="must equal max_position_embeddings"):
        rope_parameters_to_hf(rope, HEAD_DIM, 64)
