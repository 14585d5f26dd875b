"""Generated models are ready for export and for other devices: no tensor is made on the CPU
behind the caller's back, and torch.export traces them with symbolic batch, sequence and
cache lengths (no data-dependent control flow)."""

from __future__ import annotations

import pytest
import torch
from codegen_variants import FAMILIES, POSITIONS, built, tokens, variant
from torch.export import Dim

from llmspec.builder import build


@pytest.mark.parametrize("positions", sorted(POSITIONS))
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_makes_every_tensor_on_the_model_device(family: str, positions: str) -> None:
    """Mixing a CPU tensor into a meta computation raises, so a forward on meta tensors proves
    that every tensor the model makes follows its inputs' device (as CUDA needs)."""
    spec = variant(
        family,
        positions=POSITIONS[positions],
        attention={"heads": 4, "kv_heads": 2},
        embeddings={"scale": True},
    )
    with torch.device("meta"):
        model = build(spec).eval()
    ids = torch.zeros(2, 5, dtype=torch.long, device="meta")
    ones = torch.ones(2, 5, dtype=torch.long, device="meta")
    if family == "decoder-only":
        out = model(ids, labels=ids)
        out = model(ids[:, :1], None, None, out.present)
    elif family == "encoder-only":
        out = model(ids, labels=ids)
    else:
        out = model(ids, None, ids, labels=ids)
        encoded = model.encode(ids)
        step = model.decode(ids[:, :1], ones, encoded.cross_key_values)
        out = model.decode(ids[:, :1], ones, encoded.cross_key_values, past_key_values=step.present)
    assert out.logits.device.type == "meta"


class _DecoderGraph(torch.nn.Module):
    """The decoder-only call with flat outputs, as the exporter traces it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: list[torch.Tensor],
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = self.model(input_ids, attention_mask, position_ids, past_key_values)
        return out.logits, out.present


def _decoder_inputs(spec, batch: int, new: int, past: int) -> tuple:
    mask = torch.ones(batch, past + new, dtype=torch.long)
    mask[0, : min(2, past + new - 1)] = 0  # left padding in the first row
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:].clone()  # not a view
    cache = [torch.randn(batch, spec.kv_heads, past, spec.head_dim) for _ in range(2 * spec.layers)]
    return tokens(batch, new, seed=past), mask, positions, cache


@pytest.mark.parametrize("positions", ["rope", "relative"])
def test_decoder_exports_with_symbolic_shapes(positions: str) -> None:
    spec = variant(
        "decoder-only", positions=POSITIONS[positions], attention={"heads": 4, "kv_heads": 2}
    )
    model = built(spec)
    graph = _DecoderGraph(model)
    example = _decoder_inputs(spec, batch=2, new=3, past=4)  # sizes 0 and 1 would specialize
    auto = Dim.AUTO
    shapes = (
        {0: auto, 1: auto},
        {0: auto, 1: auto},
        {0: auto, 1: auto},
        [{0: auto, 2: auto} for _ in example[3]],
    )
    exported = torch.export.export(graph, example, dynamic_shapes=shapes, strict=False).module()
    with torch.no_grad():
        for batch, new, past in ((3, 1, 6), (1, 5, 0), (2, 2, 3)):
            inputs = _decoder_inputs(spec, batch, new, past)
            logits, present = exported(*inputs)
            torch.testing.assert_close(logits, graph(*inputs)[0], atol=1e-5, rtol=1e-4)
            assert present[0].shape == (batch, spec.kv_heads, past + new, spec.head_dim)
