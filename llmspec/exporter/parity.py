"""The export gate: PyTorch and ONNX Runtime must agree before an artifact is published.

Inputs are generated (seeded): a batch of two rows, one of them padded (left padding for
decoders, right padding for encoders), a prefill and then :data:`DECODE_STEPS` cached decode
steps, each feeding the reference model's greedy token to both sides. The reference is the fp32
PyTorch model; the graph under test runs on ONNX Runtime with its own cache.

A check passes when

* the largest absolute logit (or hidden state) difference at real positions is within
  ``tolerance = rel x max(1, max |reference|)``, ``rel`` depending on the precision
  (:data:`RELATIVE_TOLERANCE`), and
* top-1 agrees everywhere: the graph's argmax is, by the reference, within ``tolerance`` of the
  reference's own best logit. (Two logits closer than the tolerance are a tie that rounding may
  break either way; demanding the same argmax there would fail correct fp16 graphs of
  untrained models, whose logits are nearly flat.)

A failed gate raises :class:`ParityError` with every figure; the report also goes into the
manifest and the model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmspec.exporter.graphs import ExportError
from llmspec.spec.sections import ModelSpec
from runtime import artifact as fmt
from runtime.graphs import DecoderGraph, EncoderGraph, KVCache, Seq2SeqGraphs, positions
from runtime.session import Graph

DECODE_STEPS = 8

# Relative to the logit scale. fp32 differs from PyTorch only by kernel rounding; fp16 and bf16
# round every activation (8 and 11 fewer mantissa bits); int8/int4 quantize every weight.
RELATIVE_TOLERANCE = {
    "fp32": 1e-4,
    "fp16": 2e-2,
    "bf16": 6e-2,
    "int8": 0.15,
    "int4": 0.3,
}


class ParityError(ExportError):
    """The exported graphs disagree with the PyTorch model beyond the tolerance."""

    def __init__(self, report: ParityReport) -> None:
        self.report = report
        failed = [c for c in report.checks if not c.passed]
        lines = [
            f"  {c.name}: max |diff| {c.max_abs_diff:.3g} (tolerance {c.tolerance:.3g}), "
            f"top-1 {'agrees' if c.top1_agrees else 'DISAGREES'}"
            for c in failed
        ]
        hint = ""
        if all(c.top1_agrees for c in failed):
            hint = (
                "\ntop-1 agrees everywhere: if these differences are acceptable for your use "
                "(quantizing random or untrained weights, whose logits are nearly flat, is the "
                "usual case), pass a looser relative tolerance with --tolerance "
                f"(now {report.relative_tolerance:g})"
            )
        super().__init__(
            f"the {report.precision} graphs fail the parity gate in {len(failed)} of "
            f"{len(report.checks)} checks; the artifact was not written:\n"
            + "\n".join(lines)
            + hint
        )


@dataclass(frozen=True)
class Check:
    name: str
    max_abs_diff: float
    scale: float
    tolerance: float
    top1_agrees: bool

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_diff <= self.tolerance and self.top1_agrees)


@dataclass
class ParityReport:
    precision: str
    provider: str
    checks: list[Check] = field(default_factory=list)
    # the user's own relative tolerance (``llmspec export --tolerance``), else the precision's
    tolerance_override: float | None = None

    @property
    def relative_tolerance(self) -> float:
        if self.tolerance_override is not None:
            return self.tolerance_override
        return RELATIVE_TOLERANCE[self.precision]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.checks), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "provider": self.provider,
            "passed": self.passed,
            "relative_tolerance": self.relative_tolerance,
            "tolerance_overridden": self.tolerance_override is not None,
            "max_abs_diff": self.max_abs_diff,
            "decode_steps": DECODE_STEPS,
            "checks": [{**asdict(c), "passed": c.passed} for c in self.checks],
        }


def compare(
    name: str, reference: np.ndarray, actual: np.ndarray, rows: np.ndarray, relative: float
) -> Check:
    """Compare ``actual`` with ``reference`` over the positions selected by ``rows`` (a boolean
    mask over all but the last axis), with the tolerance ``relative`` x the logit scale; the
    last axis is the one top-1 is taken over."""
    ref = reference.astype(np.float64)[rows]
    act = actual.astype(np.float64)[rows]
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    tolerance = relative * max(1.0, scale)
    if not np.isfinite(act).all():
        return Check(name, float("inf"), scale, tolerance, False)
    diff = float(np.abs(ref - act).max()) if ref.size else 0.0
    best = ref.max(axis=-1)
    chosen = np.take_along_axis(ref, act.argmax(axis=-1)[..., None], axis=-1)[..., 0]
    agrees = bool((chosen >= best - tolerance).all())
    return Check(name, diff, scale, tolerance, agrees)


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().numpy()


def _kv_dtype(element_type: str) -> Any:
    """The numpy type of a cache of ONNX ``element_type`` (bf16 through ml_dtypes, which onnx
    brings; the bf16 path runs only on CUDA and has not been exercised on a GPU yet)."""
    import ml_dtypes

    types = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
    return types.get(element_type, np.float32)


def _left_padded(spec: ModelSpec, rng: np.random.Generator, length: int) -> tuple[Any, Any]:
    ids = rng.integers(0, spec.vocabulary.size, size=(2, length), dtype=np.int64)
    mask = np.ones((2, length), dtype=np.int64)
    mask[1, : length // 3] = 0
    ids[1, : length // 3] = 0
    return ids, mask


def _right_padded(spec: ModelSpec, rng: np.random.Generator, length: int) -> tuple[Any, Any]:
    ids = rng.integers(0, spec.vocabulary.size, size=(2, length), dtype=np.int64)
    mask = np.ones((2, length), dtype=np.int64)
    mask[1, length - length // 3 :] = 0
    ids[1, length - length // 3 :] = 0
    return ids, mask


def _adopt(session: Any, name: str) -> Graph:
    """The gate's session of graph ``name``, fed through :mod:`runtime.graphs` exactly as the
    runtime feeds it."""
    return Graph.adopt(session, Path(name))


def check_decoder_only(
    spec: ModelSpec, model: Any, session: Any, report: ParityReport, seed: int = 0
) -> None:
    rng = np.random.default_rng(seed)
    length = max(4, min(12, spec.context_length - DECODE_STEPS))
    ids, mask = _left_padded(spec, rng, length)
    graph = DecoderGraph(
        _adopt(session, fmt.DECODER_GRAPH),
        spec.num_decoder_layers,
        spec.kv_heads,
        spec.head_dim,
    )
    graph.cache_dtype = _kv_dtype(graph.cache_type)
    cache: KVCache | None = None
    torch_past: list[torch.Tensor] | None = None
    position_ids = positions(mask)  # the reference's, as the feeder computes the graph's
    real = mask.astype(bool)
    # the runtime's prefill: the last position's logits only, in one run and row by row in
    # chunks (GroupQueryAttention's path for a chunk after a cache), against step 0's reference
    prefills = {
        chunk: graph.prefill(ids, mask, chunk, max_length=ids.shape[1] + DECODE_STEPS)[0]
        for chunk in (None, 3)
    }
    for step in range(DECODE_STEPS + 1):
        if cache is None:
            logits, cache = graph.run(ids, mask)
        else:
            last, mask, cache = graph.step(ids[:, 0], mask, cache)
            logits = last[:, None, :]
        with torch.no_grad():
            out = model(
                torch.from_numpy(ids),
                torch.from_numpy(mask),
                torch.from_numpy(position_ids),
                torch_past,
            )
        reference = _np(out.logits)
        name = "prefill" if step == 0 else f"decode step {step}"
        report.checks.append(compare(name, reference, logits, real, report.relative_tolerance))
        for chunk, last in prefills.items() if step == 0 else ():
            rows = np.ones((len(last), 1), dtype=bool)
            label = "prefill, last position" + (f", chunks of {chunk}" if chunk else "")
            check = compare(
                label, reference[:, -1:], last[:, None], rows, report.relative_tolerance
            )
            report.checks.append(check)
        torch_past = list(out.present)
        ids = reference[:, -1].argmax(-1)[:, None].astype(np.int64)
        position_ids = position_ids[:, -1:] + 1
        real = np.ones((2, 1), dtype=bool)


def check_encoder_only(
    spec: ModelSpec, model: Any, session: Any, report: ParityReport, seed: int = 0
) -> None:
    rng = np.random.default_rng(seed)
    ids, mask = _right_padded(spec, rng, max(4, min(16, spec.context_length)))
    encoder = EncoderGraph(_adopt(session, fmt.ENCODER_GRAPH))
    args = [torch.from_numpy(ids), torch.from_numpy(mask)]
    types = None
    if encoder.token_types:
        types = np.zeros_like(ids)
        # a second segment where there is one (RoBERTa's table has a single row)
        types[:, ids.shape[1] // 2 :] = min(1, spec.embeddings.token_types - 1)
        args.append(torch.from_numpy(types))
    outputs = encoder.run(ids, mask, types)
    with torch.no_grad():
        out = model(*args)
    real = mask.astype(bool)
    relative = report.relative_tolerance
    report.checks.append(
        compare(
            "last_hidden_state",
            _np(out.last_hidden_state),
            outputs[fmt.LAST_HIDDEN_STATE],
            real,
            relative,
        )
    )
    report.checks.append(compare("logits", _np(out.logits), outputs[fmt.LOGITS], real, relative))


def check_encoder_decoder(
    spec: ModelSpec,
    model: Any,
    encoder: Any,
    decoder: Any,
    start_id: int,
    report: ParityReport,
    seed: int = 0,
) -> None:
    rng = np.random.default_rng(seed)
    source, source_mask = _right_padded(spec, rng, max(4, min(12, spec.context_length)))
    graphs = Seq2SeqGraphs(
        _adopt(encoder, fmt.ENCODER_GRAPH),
        _adopt(decoder, fmt.DECODER_GRAPH),
        spec.num_decoder_layers,
        spec.kv_heads,
        spec.head_dim,
    )
    graphs.cache_dtype = _kv_dtype(graphs.cache_type)
    encoded = graphs.encode(source, source_mask)
    with torch.no_grad():
        reference = model.encode(torch.from_numpy(source), torch.from_numpy(source_mask))
    real = source_mask.astype(bool)
    relative = report.relative_tolerance
    report.checks.append(
        compare(
            "encoder last_hidden_state",
            _np(reference.last_hidden_state),
            encoded.last_hidden_state,
            real,
            relative,
        )
    )
    ids = np.full((2, 1), start_id, dtype=np.int64)
    mask = np.ones((2, 1), dtype=np.int64)
    cache: KVCache | None = None
    torch_past: list[torch.Tensor] | None = None
    every = np.ones((2, 1), dtype=bool)
    for step in range(DECODE_STEPS + 1):
        if cache is None:
            actual, cache = graphs.decode(ids, encoded, mask)
        else:
            last, mask, cache = graphs.step(ids[:, 0], encoded, mask, cache)
            actual = last[:, None, :]
        with torch.no_grad():
            out = model.decode(
                torch.from_numpy(ids),
                torch.from_numpy(source_mask),
                list(reference.cross_key_values),
                torch.from_numpy(mask),
                torch.from_numpy(np.full((2, 1), step, dtype=np.int64)),  # decoder positions
                torch_past,
            )
        logits = _np(out.logits)
        report.checks.append(compare(f"decoder step {step}", logits, actual, every, relative))
        torch_past = list(out.present)
        ids = logits[:, -1].argmax(-1)[:, None].astype(np.int64)
