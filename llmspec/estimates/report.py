"""Estimates from a spec alone: parameters, memory and FLOPs, without building anything.

Pure Python (no torch): ``llmspec estimate`` must answer "does this fit?" on a laptop before
anyone installs the compile extra. :func:`estimate` gathers, for one spec and one workload:

* the **exact parameter count**, per component and in total, with tied weights counted once,
  and **weight memory** for every precision (fp32, fp16, bf16, int8, int4)
  (:mod:`llmspec.estimates.counts`);
* **inference memory**: weights at the artifact's precision plus the KV cache, and **training
  memory per device** for DDP, ZeRO-1/2/3 and FSDP (:mod:`llmspec.estimates.memory`, after
  Rajbhandari et al. 2020 and Korthikanti et al. 2022);
* **FLOPs per token**: 2 (forward) and 6 (training) per matrix-multiply parameter, and the
  **training compute view** (:class:`~llmspec.estimates.compute.TrainingCompute`): FLOPs for a
  token count, the compute-optimal token count (20 per parameter) and, on a device from
  :data:`~llmspec.estimates.compute.DEVICES` at an assumed model FLOPs utilization (MFU), the
  training time (:mod:`llmspec.estimates.compute`).

This module also has **memory per device against device count** for each strategy
(:func:`memory_by_gpus`), drawn by :func:`plot_memory` (matplotlib, imported only there).

Units: parameter counts are counts, memory is bytes, FLOPs are floating-point operations
(a multiply-add is 2). :meth:`Estimate.render` shows binary units (KiB, MiB, GiB).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from llmspec.estimates.compute import DEFAULT_MFU, DEVICES, TOKENS_PER_PARAMETER, TrainingCompute
from llmspec.estimates.counts import (
    FLOAT_BYTES,
    PRECISIONS,
    ParameterCount,
    PrecisionName,
    count_parameters,
    weight_bytes,
)
from llmspec.estimates.memory import (
    STRATEGIES,
    InferenceMemory,
    StrategyName,
    TrainingMemory,
    kv_bytes_per_token,
    layer_activation_bytes,
    model_states_bytes,
    training_activation_bytes,
)
from llmspec.estimates.units import human_bytes, human_count, human_duration, human_flops
from llmspec.spec.sections import ModelSpec


@dataclass(frozen=True)
class Estimate:
    """Everything :func:`estimate` works out for one spec and one workload."""

    name: str
    architecture: str
    batch_size: int  # sequences per device (the micro-batch, for training)
    seq_len: int  # tokens per sequence (encoder and decoder each, for encoder-decoder)
    gpus: int  # data-parallel devices for training
    dtype: str  # the spec's dtype: training precision and KV-cache type
    parameters: ParameterCount
    weights: tuple[tuple[PrecisionName, int], ...]  # bytes at each precision, PRECISIONS order
    inference: InferenceMemory
    mixed_precision: bool  # training keeps fp32 master weights (dtype fp16/bf16)
    activations_per_layer: int  # bytes, one self-attention layer, no recomputation
    training: tuple[TrainingMemory, ...]  # per device, one per STRATEGIES entry
    forward_flops_per_token: int  # 2 x matmul parameters
    training_flops_per_token: int  # 6 x matmul parameters (forward + backward)
    compute: TrainingCompute  # training FLOPs, compute-optimal tokens, time on a device

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with stable keys: counts, bytes and FLOPs as integers."""
        p = self.parameters
        return {
            "name": self.name,
            "architecture": self.architecture,
            "inputs": {"batch_size": self.batch_size, "seq_len": self.seq_len, "gpus": self.gpus},
            "parameters": {
                "total": p.total,
                "embedding": p.embedding,
                "non_embedding": p.non_embedding,
                "matmul": p.matmul,
                "components": [
                    {"name": c.name, "per_copy": c.per_copy, "copies": c.copies, "total": c.total}
                    for c in p.components
                ],
            },
            "weights_bytes": dict(self.weights),
            "inference": {
                "precision": self.inference.precision,
                "weights_bytes": self.inference.weights,
                "kv_cache_bytes_per_token": self.inference.kv_bytes_per_token,
                "cross_kv_cache_bytes_per_token": self.inference.cross_kv_bytes_per_token,
                "kv_cache_bytes": self.inference.kv_cache,
                "total_bytes": self.inference.total,
            },
            "training": {
                "dtype": self.dtype,
                "mixed_precision": self.mixed_precision,
                "activations_bytes_per_layer": self.activations_per_layer,
                "strategies": {
                    t.strategy: {
                        "zero_stage": t.stage,
                        "weights_bytes": t.states.weights,
                        "gradients_bytes": t.states.gradients,
                        "optimizer_bytes": t.states.optimizer,
                        "activations_bytes": t.activations,
                        "activations_recompute_bytes": t.activations_recompute,
                        "total_bytes": t.total,
                        "total_recompute_bytes": t.total_recompute,
                    }
                    for t in self.training
                },
            },
            "flops_per_token": {
                "forward": self.forward_flops_per_token,
                "training": self.training_flops_per_token,
            },
            "compute": self.compute.to_json(),
        }

    def render(self) -> str:
        """A human-readable report: aligned tables in human units."""
        p, inf = self.parameters, self.inference
        gpus = f"{self.gpus} GPU" + ("s" if self.gpus > 1 else "")
        out = [
            f"{self.name}: {self.architecture}, batch {self.batch_size} x seq {self.seq_len}, "
            f"{gpus}",
            "",
            "Parameters",
        ]
        rows = [
            [
                c.name,
                f"{c.copies} x {human_count(c.per_copy)}" if c.copies > 1 else "",
                human_count(c.total),
            ]
            for c in p.components
        ]
        rows.append(["total", "", human_count(p.total)])
        rows.append(["non-embedding", "", human_count(p.non_embedding)])
        out += _table(["component", "per layer", "parameters"], rows)
        out += ["", "Weights"]
        out += _table(
            ["precision", "bytes"], [[name, human_bytes(size)] for name, size in self.weights]
        )
        out += ["", f"Inference ({inf.precision} weights, {self.dtype} KV cache, one replica)"]
        rows = [
            ["weights", human_bytes(inf.weights)],
            ["KV cache per token", human_bytes(inf.kv_bytes_per_token)],
        ]
        if inf.cross_kv_bytes_per_token:
            rows.append(["cross KV per encoder token", human_bytes(inf.cross_kv_bytes_per_token)])
        rows.append([f"KV cache ({self.batch_size} x {self.seq_len})", human_bytes(inf.kv_cache)])
        rows.append(["total", human_bytes(inf.total)])
        out += _table(["", "bytes"], rows)
        scheme = (
            f"mixed {self.dtype} + fp32 Adam, 16 B/param"
            if self.mixed_precision
            else "fp32 Adam, 16 B/param"
        )
        out += [
            "",
            f"Training per device ({gpus}, micro-batch {self.batch_size} x {self.seq_len})",
            f"  {scheme}; activations {human_bytes(self.activations_per_layer)} per layer",
        ]
        out += _table(
            [
                "strategy",
                "weights",
                "gradients",
                "optimizer",
                "activations",
                "total",
                "recompute total",
            ],
            [
                [
                    t.strategy,
                    human_bytes(t.states.weights),
                    human_bytes(t.states.gradients),
                    human_bytes(t.states.optimizer),
                    human_bytes(t.activations),
                    human_bytes(t.total),
                    human_bytes(t.total_recompute),
                ]
                for t in self.training
            ],
        )
        out += [
            "",
            f"FLOPs per token: forward {human_flops(self.forward_flops_per_token)}, "
            f"training {human_flops(self.training_flops_per_token)} "
            f"(2 and 6 x {human_count(p.matmul)} matmul parameters)",
        ]
        out += ["", *self._render_compute()]
        return "\n".join(out) + "\n"

    def _render_compute(self) -> list[str]:
        """The training compute section: label, right-aligned value, then a note."""
        c = self.compute
        rows = [
            [
                "compute-optimal tokens",
                human_count(c.compute_optimal_tokens),
                f"{TOKENS_PER_PARAMETER} per parameter x {human_count(c.parameters)} parameters "
                "(Hoffmann et al. 2022)",
            ],
            ["compute-optimal FLOPs", human_flops(c.compute_optimal_flops), ""],
        ]
        if c.tokens_given:
            rows.append(["tokens", human_count(c.tokens), "--tokens"])
            rows.append(["training FLOPs", human_flops(c.flops), ""])
        seconds = c.seconds
        if c.device is not None and seconds is not None:
            d = c.device
            rows += [
                [
                    "device",
                    f"{c.gpus} x {d.name}",
                    f"{d.description}, {d.peak_flops / 1e12:g} TFLOP/s dense {d.precision} peak",
                ],
                [
                    "MFU",
                    f"{c.mfu:g}",
                    f"{human_flops(round(c.gpus * d.peak_flops * c.mfu))}/s achieved in all",
                ],
                [
                    "training time",
                    human_duration(seconds),
                    f"for the {'given' if c.tokens_given else 'compute-optimal'} "
                    f"{human_count(c.tokens)} tokens",
                ],
            ]
        widths = [max(len(r[i]) for r in rows) for i in range(2)]
        out = [
            f"Training compute (6 FLOPs per token x {human_count(c.matmul_parameters)} "
            "matmul parameters)"
        ]
        out += [
            f"  {r[0].ljust(widths[0])}  {r[1].rjust(widths[1])}  {r[2]}".rstrip() for r in rows
        ]
        if seconds is None:
            out.append(
                f"  training time: give --device ({', '.join(DEVICES)}) and --gpus, --mfu "
                f"(default {DEFAULT_MFU})"
            )
        return out


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  " + "  ".join([first, *rest]).rstrip()

    return [line(header), *(line(r) for r in rows)]


def estimate(
    spec: ModelSpec,
    *,
    batch_size: int = 1,
    seq_len: int | None = None,
    gpus: int = 1,
    tokens: int | None = None,
    device: str | None = None,
    mfu: float = DEFAULT_MFU,
) -> Estimate:
    """Estimate a spec's parameters, memory and FLOPs for a workload.

    ``batch_size`` sequences of ``seq_len`` tokens (default: the spec's context_length; both
    the encoder and decoder length for encoder-decoder models) per device; ``gpus``
    data-parallel devices for the training split (inference is for one replica) and for the
    training time. ``tokens`` to train on (default: the compute-optimal count), ``device`` (a
    :data:`DEVICES` name, or None for no training time) and its ``mfu``. Raises ValueError for
    a batch, length, device or token count below 1, a length beyond the context window, an
    unknown device or an MFU outside (0, 1].
    """
    context = spec.context_length
    seq = context if seq_len is None else seq_len
    counts = [("batch_size", batch_size), ("seq_len", seq), ("gpus", gpus)]
    if tokens is not None:
        counts.append(("tokens", tokens))
    problems = [f"{name} must be at least 1, got {value}" for name, value in counts if value < 1]
    if not 0 < mfu <= 1:
        problems.append(f"mfu must be in (0, 1], got {mfu}")
    if device is not None and device not in DEVICES:
        problems.append(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    if seq > context:
        problems.append(
            f"seq_len {seq} exceeds {spec.name}'s context_length {context}; "
            f"use a seq_len of at most {context}, or raise context_length in the spec"
        )
    if problems:
        raise ValueError("; ".join(problems))

    params = count_parameters(spec)
    served: PrecisionName = (
        spec.precision.quantize if spec.precision.quantize != "none" else spec.precision.dtype
    )
    per_token = kv_bytes_per_token(spec)
    cross_per_token = per_token if spec.architecture == "encoder-decoder" else 0
    inference = InferenceMemory(
        precision=served,
        weights=weight_bytes(spec, served),
        kv_bytes_per_token=per_token,
        cross_kv_bytes_per_token=cross_per_token,
        kv_cache=batch_size * seq * (per_token + cross_per_token),
    )
    mixed = spec.precision.dtype != "fp32"
    activations = training_activation_bytes(spec, batch_size, seq, recompute=False)
    recomputed = training_activation_bytes(spec, batch_size, seq, recompute=True)
    training = tuple(
        TrainingMemory(
            strategy=strategy,
            stage=stage,
            states=model_states_bytes(params.total, gpus=gpus, stage=stage, mixed_precision=mixed),
            activations=activations,
            activations_recompute=recomputed,
        )
        for strategy, stage in STRATEGIES
    )
    return Estimate(
        name=spec.name,
        architecture=spec.architecture,
        batch_size=batch_size,
        seq_len=seq,
        gpus=gpus,
        dtype=spec.precision.dtype,
        parameters=params,
        weights=tuple((p, weight_bytes(spec, p)) for p in PRECISIONS),
        inference=inference,
        mixed_precision=mixed,
        activations_per_layer=layer_activation_bytes(
            seq,
            batch_size,
            spec.d_model,
            spec.attention.heads,
            value_bytes=FLOAT_BYTES[spec.precision.dtype],
        ),
        training=training,
        forward_flops_per_token=2 * params.matmul,
        training_flops_per_token=6 * params.matmul,
        compute=TrainingCompute(
            parameters=params.total,
            matmul_parameters=params.matmul,
            compute_optimal_tokens=TOKENS_PER_PARAMETER * params.total,
            tokens=TOKENS_PER_PARAMETER * params.total if tokens is None else tokens,
            tokens_given=tokens is not None,
            device=None if device is None else DEVICES[device],
            mfu=mfu,
            gpus=gpus,
        ),
    )


# ----------------------------------------------------------------------------------------
# Memory against device count

PLOT_GPUS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)


def memory_by_gpus(
    spec: ModelSpec,
    *,
    batch_size: int = 1,
    seq_len: int | None = None,
    gpus: tuple[int, ...] = PLOT_GPUS,
) -> dict[StrategyName, list[int]]:
    """Training bytes per device (model states plus the micro-batch's activations, no
    recomputation) for each strategy at each device count in ``gpus``."""
    per_count = [estimate(spec, batch_size=batch_size, seq_len=seq_len, gpus=n) for n in gpus]
    return {
        name: [e.training[i].total for e in per_count] for i, (name, _) in enumerate(STRATEGIES)
    }


def plot_memory(
    spec: ModelSpec,
    *,
    batch_size: int = 1,
    seq_len: int | None = None,
    device: str | None = None,
) -> bytes:
    """A PNG of :func:`memory_by_gpus` over 1 to 64 devices, one line per strategy, on log
    axes; with a ``device`` that has its own memory, a line at that capacity. matplotlib
    (the compile extra) is imported here only, with the Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    seq = spec.context_length if seq_len is None else seq_len
    memory = memory_by_gpus(spec, batch_size=batch_size, seq_len=seq)
    figure = Figure(figsize=(8, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    styles = {
        "ddp": ("o-", "tab:red"),
        "zero-1": ("s-", "tab:orange"),
        "zero-2": ("^-", "tab:green"),
        "zero-3": ("D-", "tab:blue"),
        "fsdp": ("x--", "black"),  # the same numbers as ZeRO-3: dashed over it
    }
    for name, values in memory.items():
        marker, color = styles[name]
        label = "fsdp (full shard = zero-3)" if name == "fsdp" else name
        axes.plot(PLOT_GPUS, [v / 2**30 for v in values], marker, color=color, label=label)
    if device is not None and DEVICES[device].memory_bytes is not None:
        d = DEVICES[device]
        capacity = (d.memory_bytes or 0) / 2**30
        axes.axhline(capacity, color="gray", linestyle=":", linewidth=1.5)
        axes.annotate(
            f"{d.name} memory ({capacity:.0f} GiB)",
            (PLOT_GPUS[0], capacity),
            xytext=(2, 3),
            textcoords="offset points",
            color="dimgray",
        )
    axes.set_xscale("log", base=2)
    axes.xaxis.set_major_locator(FixedLocator(PLOT_GPUS))
    axes.xaxis.set_minor_locator(NullLocator())
    axes.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    axes.set_yscale("log")
    plain = FuncFormatter(lambda y, _: f"{y:.3g}")
    axes.yaxis.set_major_formatter(plain)
    axes.yaxis.set_minor_formatter(plain)  # short ranges have few or no major (decade) ticks
    axes.set_xlabel("data-parallel devices")
    axes.set_ylabel("training memory per device (GiB)")
    params = count_parameters(spec)
    axes.set_title(
        f"{spec.name}: {human_count(params.total)} parameters, micro-batch {batch_size} x {seq}, "
        f"{spec.precision.dtype}, Adam\nmodel states + activations (no recomputation)",
        fontsize=10,
    )
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), title="strategy")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
