"""llmspec verify on rope whose frequencies follow the total length (dynamic, longrope): past
the original length every position rotates differently (as in transformers), so a padded row
and its longer neighbour, or a prefill and its cached steps, legitimately differ there. The
generated sequences stay within the original length; other models keep their lengths."""

from __future__ import annotations

import pytest

from llmspec.inspect.graph_properties import MAX_PADDING, MAX_TOKENS, GraphProperties
from runtime import artifact as fmt
from tests.llmspec.test_rope_parity import CASES, _spec


def _manifest(context_length: int) -> fmt.Manifest:
    return fmt.Manifest(
        format_version=1,
        llmspec_version="0",
        name="rope-knobs",
        architecture="decoder-only",
        spec_sha256="0" * 64,
        precision="fp32",
        quantize="none",
        opset=23,
        vocab_size=260,
        context_length=context_length,
        layers=2,
        kv_heads=2,
        head_dim=32,
        special_tokens={},
        graphs={},
        files={},
    )


@pytest.mark.parametrize("original", [8, 16, 30])
@pytest.mark.parametrize("kind", ["dynamic", "longrope"])
def test_generated_sequences_stay_within_the_original_length(kind, original):
    scaling = {**CASES[kind][0]["scaling"], "original_max_positions": original}
    spec = _spec({**CASES[kind][0], "scaling": scaling})
    properties = GraphProperties(_manifest(64), spec, {}, examples=1)
    assert properties.max_tokens + properties.max_padding <= original
    assert properties.max_tokens >= 2 and properties.max_padding >= 1


@pytest.mark.parametrize("kind", ["linear", "llama3", "yarn"])
def test_static_rope_scalings_keep_the_usual_lengths(kind):
    properties = GraphProperties(_manifest(64), _spec(CASES[kind][0]), {}, examples=1)
    assert (properties.max_tokens, properties.max_padding) == (MAX_TOKENS, MAX_PADDING)
