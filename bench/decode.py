"""Decode speed of GPT-2 small: our runtime against Hugging Face transformers and our own
PyTorch model, on the same random weights, with this machine's memory-bandwidth roofline.

    .venv/bin/python bench/decode.py [--threads 2] [--prompt 128] [--new 128] [--profile]

What runs (issue 5, "Performance"):

* the spec ``specs/gpt2-small.yaml`` exported with its seeded random initialization to fp32 and
  int8 artifacts under ``bench/results/artifacts/`` (reused when the spec has not changed);
* **ours**: ``runtime.load(artifact, device="cpu", threads=T).generate(...)``, greedy and
  ``top_p=0.9,sample``, batch 1 and 8, prompt 128 random token ids, 128 new tokens;
* **transformers**: ``GPT2LMHeadModel.generate`` (its KV cache, default attention) with the
  same weights copied in (``llmspec.importers.hf.mapping.to_hf`` with the import's GPT-2 table:
  Conv1D
  weights are ``[in, out]``, q/k/v fused into ``c_attn``);
* **torch (ours)**: the generated PyTorch model (``llmspec.builder``) in a plain greedy loop
  with its KV cache;
* the memory bandwidth: the fastest read of a 1 GiB array (numpy sum or BLAS dot, on 1 and on
  T threads, best of 5).

Every contestant makes exactly ``--new`` tokens (eos does not stop them: random weights could
emit it). Each step is time-stamped when its logits are ready (ours: on entering
``SamplerChain.select``; transformers: in a logits processor; torch: in the loop). Reported per
run: time to first token (prefill), the median and the mean step (one token per row), and
tokens/s (batch / median step). The median, because the 2 CPUs are shared with other people's
jobs, whose bursts inflate single steps; the mean is there to compare.

The roofline is the bytes of weights one decode step must read (every initializer of the
decoder graph except tables only gathered from, like the token and position embeddings)
divided by the read bandwidth. Sampling's share is the median time in ``SamplerChain.select`` over
the median step of the same run.

Threads: our runtime runs with T (``--threads``, default: all CPUs) intra-op threads. torch's
OpenMP threads spin at barriers, which on a busy machine makes 2 threads much slower than 1,
so the torch contestants run with 1 and with T threads and keep their better figure.

Writes ``bench/results/decode.json`` and ``bench/results/decode.png``; prints a Markdown table
for ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPEC = ROOT / "specs" / "gpt2-small.yaml"
RESULTS = ROOT / "bench" / "results"
GREEDY, TOP_P = "greedy", "top_p=0.9,sample"


@dataclass
class Run:
    contestant: str
    precision: str
    batch: int
    chain: str
    prefill_ms: float
    ms_per_step: float  # the median step: robust to other processes' bursts on a shared CPU
    mean_ms_per_step: float
    tokens_per_s: float
    sampling_share: float | None = None


def from_stamps(
    contestant: str, precision: str, batch: int, chain: str, start: float, stamps: list[float]
) -> Run:
    """A run from the time it started and the time each step's logits were ready."""
    steps = np.diff(stamps)
    median = float(np.median(steps))
    return Run(
        contestant,
        precision,
        batch,
        chain,
        prefill_ms=1000 * (stamps[0] - start),
        ms_per_step=1000 * median,
        mean_ms_per_step=1000 * float(steps.mean()),
        tokens_per_s=batch / median,
    )


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# The machine


def read_bandwidth(threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second of reading a ``gib`` GiB float32 array: the best of numpy's sum and
    BLAS's dot (whichever streams faster here), on 1 and on ``threads`` threads, best of
    ``repeats`` each. The fastest read makes the strictest roofline."""
    data = np.ones(int(gib * (1 << 30)) // 4, dtype=np.float32)
    best = float("inf")
    kernels = (np.add.reduce, lambda part: np.dot(part, part))
    for kernel in kernels:
        for count in sorted({1, threads}):
            parts = np.array_split(data, count)
            for _ in range(repeats):
                workers = [threading.Thread(target=kernel, args=(part,)) for part in parts]
                start = time.perf_counter()
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
                best = min(best, time.perf_counter() - start)
    return data.nbytes / best


def copy_bandwidth(gib: float = 0.5, repeats: int = 5) -> float:
    """Bytes moved per second (read + write) by ``np.copyto`` of a ``gib`` GiB array."""
    source = np.ones(int(gib * (1 << 30)) // 4, dtype=np.float32)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best


def weight_bytes_per_step(graph: Path) -> int:
    """Bytes of the initializers one decode step reads: all but tables only gathered from."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(graph), load_external_data=False)
    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    total = 0
    for tensor in model.graph.initializer:
        if consumers.get(tensor.name, set()) == {"Gather"}:
            continue  # an embedding table: one row per token
        if uses_external_data(tensor):
            total += int(next(e.value for e in tensor.external_data if e.key == "length"))
        else:
            total += len(tensor.raw_data) or onnx.numpy_helper.to_array(tensor).nbytes
    return total


# ----------------------------------------------------------------------------------------
# Artifacts and weights


def artifact(precision: str) -> Path:
    """The exported artifact of the spec at ``precision`` (fp32 or int8), made when missing or
    when the spec file changed (its sha256 is kept beside the artifact)."""
    import hashlib

    from llmspec.exporter.pipeline import export

    path = RESULTS / "artifacts" / f"gpt2-small-{precision}"
    stamp = path.with_name(path.name + ".spec-sha256")
    digest = hashlib.sha256(SPEC.read_bytes()).hexdigest()
    if (path / "manifest.json").is_file() and stamp.is_file() and stamp.read_text() == digest:
        return path
    say(f"exporting {SPEC.name} to {precision} (once; reused by later runs)")
    start = time.perf_counter()
    export(
        SPEC,
        path,
        quantize="int8" if precision == "int8" else None,
        force=path.exists(),
        progress=lambda line: say(f"  export: {line}"),
    )
    stamp.write_text(digest)
    say(f"  exported in {time.perf_counter() - start:.0f} s")
    return path


def hf_model(weights: dict[str, Any], threads: int) -> Any:
    """transformers' GPT2LMHeadModel holding our weights."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmspec.importers.hf.mapping import to_hf
    from llmspec.importers.hf.tables import GPT2

    torch.set_num_threads(threads)
    config = GPT2Config(
        vocab_size=50257,
        n_positions=1024,
        n_embd=768,
        n_layer=12,
        n_head=12,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config).eval()
    # the import's GPT-2 table, converting back (Conv1D transposes, q/k/v fused into c_attn)
    model.load_state_dict(to_hf(weights, GPT2), strict=True)
    return model


# ----------------------------------------------------------------------------------------
# Contestants


def run_ours(model: Any, prompts: np.ndarray, new: int, chain: str, label: str) -> Run:
    """Our runtime's generate; a step is stamped when its logits reach ``SamplerChain.select``,
    whose own time is the sampling share."""
    from runtime import sampling

    stamps: list[float] = []
    spent: list[float] = []
    original = sampling.SamplerChain.select

    def timed(self: Any, logits: np.ndarray, state: Any) -> np.ndarray:
        stamps.append(time.perf_counter())
        try:
            return original(self, logits, state)
        finally:
            spent.append(time.perf_counter() - stamps[-1])

    sampling.SamplerChain.select = timed  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        result = model.generate(list(prompts), max_new_tokens=new, chain=chain, seed=0)
    finally:
        sampling.SamplerChain.select = original  # type: ignore[method-assign]
    assert all(len(t) == new for t in result.tokens), "every row makes all its tokens"
    run = from_stamps("ours (onnxruntime)", label, len(prompts), chain, start, stamps)
    run.sampling_share = float(np.median(spent)) * 1000 / run.ms_per_step
    return run


def run_torch(model: Any, prompts: np.ndarray, new: int) -> Run:
    """Our generated PyTorch model in a plain greedy loop with its KV cache."""
    import torch

    ids = torch.from_numpy(prompts)
    batch, length = ids.shape
    stamps = []
    with torch.inference_mode():
        start = time.perf_counter()
        mask = torch.ones(batch, length, dtype=torch.long)
        positions = torch.arange(length)[None].expand(batch, -1)
        out = model(ids, mask, positions, None)
        for step in range(1, new + 1):
            stamps.append(time.perf_counter())
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            if step == new:
                break
            mask = torch.ones(batch, length + step, dtype=torch.long)
            position = torch.full((batch, 1), length + step - 1)
            out = model(token, mask, position, list(out.present))
    return from_stamps("torch (our generated model)", "fp32", batch, GREEDY, start, stamps)


def run_hf(model: Any, prompts: np.ndarray, new: int, chain: str) -> Run:
    """transformers' generate; a step is stamped by a logits processor, which generate calls
    once per step right after the forward pass."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            stamps.append(time.perf_counter())
            return scores

    ids = torch.from_numpy(prompts)
    sampling = chain == TOP_P
    options: dict[str, Any] = dict(
        max_new_tokens=new, min_new_tokens=new, do_sample=sampling, pad_token_id=50256
    )
    if sampling:
        options.update(top_p=0.9, top_k=0, temperature=1.0)
    torch.manual_seed(0)
    with torch.inference_mode():
        start = time.perf_counter()
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            logits_processor=LogitsProcessorList([Stamp()]),
            **options,
        )
    return from_stamps("transformers generate", "fp32", len(prompts), chain, start, stamps)


def best_of_threads(counts: list[int], measure: Any, *args: Any) -> Run:
    """The faster of ``measure(*args)`` run with each torch thread count (after a short
    warm-up run), labelled with the count that won."""
    import torch

    results = []
    for count in counts:
        torch.set_num_threads(count)
        measure(args[0], args[1], 4, *args[3:])  # warm-up: 4 tokens
        run = measure(*args)
        run.contestant += f" ({count} thread{'s' if count > 1 else ''})"
        results.append(run)
    return min(results, key=lambda r: r.ms_per_step)


# ----------------------------------------------------------------------------------------
# Report


def plot(runs: list[Run], roofline_ms: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for axis, batch in zip(axes, (1, 8), strict=True):
        chosen = [r for r in runs if r.batch == batch]
        labels = [f"{r.contestant}\n{r.precision}, {r.chain}" for r in chosen]
        values = [r.ms_per_step for r in chosen]
        colors = ["tab:blue" if r.contestant.startswith("ours") else "tab:gray" for r in chosen]
        axis.barh(labels, values, color=colors)
        for row, (name, value) in enumerate(roofline_ms.items()):
            axis.axvline(value, linestyle="--", color="tab:red" if name == "fp32" else "tab:orange")
            axis.annotate(
                f" {name} roofline",
                (value, 1.0 - 0.04 * row),
                xycoords=("data", "axes fraction"),
                fontsize=8,
                va="top",
            )
        axis.set_title(f"GPT-2 small decode, batch {batch} (lower is better)")
        axis.set_xlabel("ms per step (one token per row)")
        axis.invert_yaxis()
        axis.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(runs: list[Run], baseline: dict[tuple[int, str], float]) -> str:
    lines = [
        "| contestant | precision | batch | chain | prefill ms | ms/step (median) | ms/step "
        "(mean) | tokens/s | vs transformers |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        peer = baseline.get((r.batch, r.chain))
        ratio = f"{peer / r.ms_per_step:.2f}x" if peer else "-"
        lines.append(
            f"| {r.contestant} | {r.precision} | {r.batch} | {r.chain} | {r.prefill_ms:.0f} | "
            f"{r.ms_per_step:.1f} | {r.mean_ms_per_step:.1f} | {r.tokens_per_s:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--skip-peers", action="store_true", help="only our runtime")
    parser.add_argument("--profile", action="store_true", help="cProfile one fp32 greedy run")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.perf_counter()

    say("measuring memory bandwidth")
    read_bw = read_bandwidth(args.threads)
    copy_bw = copy_bandwidth()
    say(f"  read {read_bw / 2**30:.1f} GiB/s, copy {copy_bw / 2**30:.1f} GiB/s")

    paths = {precision: artifact(precision) for precision in ("fp32", "int8")}
    weight_bytes = {p: weight_bytes_per_step(path / "decoder.onnx") for p, path in paths.items()}
    roofline_ms = {p: 1000 * b / read_bw for p, b in weight_bytes.items()}
    for p in paths:
        say(f"  {p}: {weight_bytes[p] / 1e6:.0f} MB read per step, roofline "
            f"{roofline_ms[p]:.1f} ms/step")  # fmt: skip

    import runtime

    rng = np.random.default_rng(0)
    prompts = {b: rng.integers(0, 50256, size=(b, args.prompt), dtype=np.int64) for b in batches}
    runs: list[Run] = []
    profile_text = ""
    for precision, path in paths.items():
        model = runtime.load(path, device="cpu", threads=args.threads)
        model.special_tokens.pop("eos", None)  # random weights: make every row run to the end
        model.generate([[1, 2, 3]], max_new_tokens=4)  # warm up ONNX Runtime's allocations
        for batch in batches:
            for chain in (GREEDY, TOP_P):
                say(f"ours {precision} batch {batch} {chain}")
                runs.append(run_ours(model, prompts[batch], args.new, chain, precision))
                say(f"  {runs[-1].ms_per_step:.1f} ms/step, prefill {runs[-1].prefill_ms:.0f} ms")
        if args.profile and precision == "fp32":
            profiler = cProfile.Profile()
            profiler.enable()
            model.generate(list(prompts[1]), max_new_tokens=args.new, chain=GREEDY)
            profiler.disable()
            stream = io.StringIO()
            pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(12)
            profile_text = stream.getvalue()
            say(profile_text)
        del model

    greedy_tokens: dict[str, list[int]] = {}
    if not args.skip_peers:
        import torch
        from safetensors.torch import load_file

        import llmspec

        weights = load_file(str(paths["fp32"] / "weights.safetensors"))
        # torch's OpenMP threads spin at every barrier; on a shared, busy machine that makes
        # two threads far slower than one. So each torch contestant runs with 1 and with
        # --threads threads and keeps its better figure (a generous peer).
        counts = sorted({1, args.threads})
        hf = hf_model(weights, args.threads)
        for batch in batches:
            for chain in (GREEDY, TOP_P):
                say(f"transformers batch {batch} {chain}")
                runs.append(best_of_threads(counts, run_hf, hf, prompts[batch], args.new, chain))
                say(f"  {runs[-1].ms_per_step:.1f} ms/step, prefill {runs[-1].prefill_ms:.0f} ms")
        with torch.inference_mode():
            greedy_tokens["transformers"] = hf.generate(
                torch.from_numpy(prompts[1]),
                max_new_tokens=32,
                min_new_tokens=32,
                do_sample=False,
                pad_token_id=50256,
            )[0, args.prompt :].tolist()
        del hf
        ours_torch = llmspec.build(SPEC, dtype="fp32", weights=weights).eval()
        for batch in batches:
            say(f"torch (ours) batch {batch} greedy")
            runs.append(best_of_threads(counts, run_torch, ours_torch, prompts[batch], args.new))
            say(f"  {runs[-1].ms_per_step:.1f} ms/step, prefill {runs[-1].prefill_ms:.0f} ms")
        del ours_torch
    check = runtime.load(paths["fp32"], device="cpu", threads=args.threads)
    check.special_tokens.pop("eos", None)
    greedy_tokens["ours"] = check.generate(
        list(prompts[1]), max_new_tokens=32, chain=GREEDY
    ).tokens[0]

    baseline = {
        (r.batch, r.chain): r.ms_per_step for r in runs if r.contestant.startswith("transformers")
    }

    def ours(precision: str, batch: int, chain: str) -> Run:
        return next(
            r
            for r in runs
            if r.contestant.startswith("ours")
            and (r.precision, r.batch, r.chain) == (precision, batch, chain)
        )

    targets: dict[str, Any] = {}
    fp32_1 = ours("fp32", 1, GREEDY)
    targets["fp32 batch-1 decode / roofline (target <= 1.15)"] = (
        fp32_1.ms_per_step / roofline_ms["fp32"]
    )
    if baseline:
        targets["fp32 batch-1 speedup over transformers (target >= 2)"] = (
            baseline[(1, GREEDY)] / fp32_1.ms_per_step
        )
        targets["int8 batch-1 speedup over transformers (target >= 5)"] = (
            baseline[(1, GREEDY)] / ours("int8", 1, GREEDY).ms_per_step
        )
    targets["sampling share of a top-p step, fp32 batch 1 (target <= 0.03)"] = ours(
        "fp32", 1, TOP_P
    ).sampling_share
    if 8 in batches:
        targets["batch-8 / batch-1 tokens/s, fp32 greedy (target >= 5)"] = (
            ours("fp32", 8, GREEDY).tokens_per_s / fp32_1.tokens_per_s
        )
    agree = 0
    if "transformers" in greedy_tokens:
        a, b = greedy_tokens["ours"], greedy_tokens["transformers"]
        agree = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))

    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_name(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "read_bandwidth_gib_s": read_bw / 2**30,
            "copy_bandwidth_gib_s": copy_bw / 2**30,
        },
        "setup": {"prompt": args.prompt, "new_tokens": args.new, "batches": batches},
        "weight_bytes_per_step": weight_bytes,
        "roofline_ms_per_step": roofline_ms,
        "runs": [asdict(r) for r in runs],
        "targets": targets,
        "greedy_prefix_agreement_with_transformers": agree if baseline else None,
        "profile": profile_text,
        "seconds": time.perf_counter() - started,
    }
    (RESULTS / "decode.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(runs, roofline_ms, RESULTS / "decode.png")
    print(markdown(runs, baseline))
    print()
    for name, value in targets.items():
        print(f"- {name}: {value:.3f}" if value is not None else f"- {name}: n/a")
    if baseline:
        print(f"- greedy tokens equal to transformers' for the first {agree} of 32")
    print(
        f"- read bandwidth {read_bw / 2**30:.1f} GiB/s ({args.threads} threads), "
        f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after, "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
