"""Whole-model parity with rope scaling: a tiny random Llama is imported without scaling, then
the same weights run with each scaling type in transformers (rope_parameters) and in our model
(the spec's positions, written by llmspec.importers.hf.rope): the logits agree on a left-padded
batch longer than the original length, where the scalings differ from plain rope."""

from __future__ import annotations

from typing import Any

import hf_tiny
import pytest
import torch

from llmspec.builder import build
from llmspec.importers.hf.importer import import_hf
from llmspec.importers.hf.rope import positions_from_hf
from llmspec.spec.loading import load_spec

ORIGINAL = 16
MAX_POSITIONS = 128
SCALINGS: dict[str, dict[str, Any]] = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": ORIGINAL,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": ORIGINAL},
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The plain Llama (transformers) and its import (spec, weights)."""
    directory = tmp_path_factory.mktemp("llama")
    model = hf_tiny.llama(directory / "hf", max_position_embeddings=MAX_POSITIONS)
    out = import_hf(directory / "hf", directory / "imported")
    return model, load_spec(out / "spec.yaml"), out / "weights.safetensors"


@pytest.mark.parametrize("name", SCALINGS)
def test_scaled_llama_logits_equal_transformers(imported, name):
    import transformers

    plain, spec, weights = imported
    parameters = {**SCALINGS[name], "rope_theta": plain.config.rope_parameters["rope_theta"]}
    if name == "dynamic":  # transformers takes the original length from max_position_embeddings
        config = transformers.LlamaConfig(
            **{**plain.config.to_dict(), "max_position_embeddings": 20}
        )
    else:
        config = transformers.LlamaConfig(**plain.config.to_dict())
    config.rope_parameters = parameters
    config.standardize_rope_params()
    theirs_model = transformers.LlamaForCausalLM(config).eval()
    theirs_model.load_state_dict(plain.state_dict())
    positions = positions_from_hf(config.rope_parameters, config.max_position_embeddings)
    data = spec.model_dump(mode="json")
    data["positions"] = positions
    ours_model = build(type(spec).model_validate(data), weights=weights).eval()

    lengths = [30, 23]  # beyond the original length (16; dynamic: 20)
    width = max(lengths)
    mask = torch.zeros(2, width, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length :] = 1
    ids = torch.randint(3, 300, (2, width), generator=torch.Generator().manual_seed(1))
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = ours_model(ids, mask, position_ids).logits
        theirs = theirs_model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
        unscaled = plain(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(theirs[real], unscaled[real], atol=1e-3)
