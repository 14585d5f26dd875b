"""Where a decode step of an artifact's decoder goes: ONNX Runtime's own per-node profile.

    .venv/bin/python bench/op_profile.py ARTIFACT [--batch 1] [--prompt 128] [--steps 32]
                                               [--threads 2]

Runs one prefill of ``--prompt`` random token ids and ``--steps`` greedy decode steps on the
artifact's ``decoder.onnx`` (decoder-only artifacts) with ONNX Runtime's profiler on, then
prints, for the decode steps only, the time per step in each operator type, its share of the
step, and the share spent outside kernels (scheduling, allocating outputs, copying inputs).
The weights' read rate (``decode.weight_bytes_per_step`` over the MatMul time) says how close
the MatMuls run to the memory bandwidth. Profiling adds overhead: use the shares, not the
absolute step time, and measure speed with ``bench/peers.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from decode import weight_bytes_per_step  # noqa: E402  (bench/, the script's folder)

from runtime import artifact as fmt  # noqa: E402
from runtime.graphs import DecoderGraph  # noqa: E402
from runtime.session import Graph  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    manifest = fmt.read_manifest(args.artifact)
    if manifest.architecture != "decoder-only":
        print(
            f"bench/op_profile.py: {args.artifact} is {manifest.architecture}; it profiles decoders"
        )
        return 1
    graph = args.artifact / "decoder.onnx"
    with tempfile.TemporaryDirectory() as scratch:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = args.threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        cache_dtype = np.float16 if manifest.precision == "fp16" else np.float32
        _decode(session, manifest, args.batch, args.prompt, args.steps, cache_dtype)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    decode = runs[1:]
    start = decode[0]["ts"]
    per_op: Counter[str] = Counter()
    for event in events:
        kernel = event.get("cat") == "Node" and event["name"].endswith("_kernel_time")
        if kernel and event["ts"] >= start:
            per_op[event["args"]["op_name"]] += event["dur"]
    step_us = sum(r["dur"] for r in decode) / len(decode)
    print(
        f"{args.artifact.name}: {manifest.precision}/{manifest.quantize}, batch {args.batch}, "
        f"prompt {args.prompt}, {len(decode)} decode steps, {args.threads} threads"
    )
    print(f"profiled step: {step_us / 1e3:.2f} ms (mean; profiling adds overhead)")
    print("| operator | ms/step | share |")
    print("|---|---|---|")
    for op, total in per_op.most_common(12):
        share = total / len(decode) / step_us
        print(f"| {op} | {total / len(decode) / 1e3:.2f} | {share:.1%} |")
    inside = sum(per_op.values()) / len(decode)
    print(f"| (outside kernels) | {(step_us - inside) / 1e3:.2f} | {1 - inside / step_us:.1%} |")
    matmul_us = sum(t for op, t in per_op.items() if "MatMul" in op) / len(decode)
    weights = weight_bytes_per_step(graph)
    if matmul_us:
        rate = weights / (matmul_us / 1e6) / 2**30
        print(
            f"weights {weights / 1e6:.0f} MB per step, read at {rate:.1f} GiB/s in MatMul kernels"
        )
    return 0


def _decode(
    session: ort.InferenceSession,
    manifest: fmt.Manifest,
    batch: int,
    prompt: int,
    steps: int,
    cache_dtype: type,
) -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, manifest.vocab_size, (batch, prompt)).astype(np.int64)
    mask = np.ones((batch, prompt), np.int64)
    # fed as the runtime feeds it (runtime.graphs), on this profiling session
    graph = DecoderGraph.of(Graph.adopt(session, Path(fmt.DECODER_GRAPH)), manifest, cache_dtype)
    last, cache = graph.prefill(ids, mask, max_length=prompt + steps)  # last position's logits
    for _ in range(steps):
        last, mask, cache = graph.step(last.argmax(-1), mask, cache)


if __name__ == "__main__":
    raise SystemExit(main())
