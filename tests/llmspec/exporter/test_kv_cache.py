"""The in-place cache's fallback: a fused attention that GroupQueryAttention cannot take writes
its cache with TensorScatter and attends over a Slice of the used columns. Every float cache
type has a GroupQueryAttention kernel, so the export reaches this path only for attention with
dynamic head counts; the test forces it by leaving GroupQueryAttention no element type."""

from __future__ import annotations

from pathlib import Path

import runtime
from llmspec.exporter.pipeline import export
from llmspec.exporter.quantize import count_ops
from llmspec.exporter.rewrites import kv_cache
from runtime import artifact as fmt

SPECS = Path(__file__).resolve().parents[3] / "specs"


def test_attention_without_group_query_attention_writes_with_tensor_scatter(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(kv_cache, "_GQA_TYPES", ())
    scattered = export(SPECS / "tiny-gpt.yaml", tmp_path / "scattered", progress=lambda _: None)
    monkeypatch.undo()
    fused = export(SPECS / "tiny-gpt.yaml", tmp_path / "fused", progress=lambda _: None)
    ops = count_ops(scattered / fmt.DECODER_GRAPH)
    assert "GroupQueryAttention" not in ops
    assert ops["TensorScatter"] == 2 * 2  # keys and values of both layers
    assert fmt.read_manifest(scattered).parity["passed"]  # the gate, through the runtime's feeder
    # the same greedy tokens as the GroupQueryAttention graph, past a cache that grows
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14]]
    a = runtime.load(scattered, device="cpu").generate(prompts, max_new_tokens=12)
    b = runtime.load(fused, device="cpu").generate(prompts, max_new_tokens=12)
    assert a.tokens == b.tokens
