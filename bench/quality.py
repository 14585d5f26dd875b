"""int4 that is fast and good (issue 16, item 3): perplexity of every precision on held-out
text, and decode speed of every int4 variant, each against fp32 in the same run.

    .venv/bin/python bench/quality.py quality [--run out/quality/tiny-decoder/run]
    .venv/bin/python bench/quality.py quality --run out/quality/small-decoder/run \
        --output quality-small.json
    .venv/bin/python bench/quality.py speed [--source bench/results/peers/ours/import]
    .venv/bin/python bench/quality.py table --quality quality.json quality-small.json

The trained decoders: ``make demo``'s run (or its two commands: ``llmspec train
specs/tiny-decoder.yaml --data $STDLIB/{json,email,logging,collections} -o
out/quality/tiny-decoder/run --lr 3e-3 --warmup 30 --steps 500 --batch-size 8 --seq-len 256``),
and ``bench/small-decoder.yaml`` (the same at twice the width, 3M parameters) trained on the
same corpus with ``--lr 2e-3 --warmup 30 --steps 400 --batch-size 8 --seq-len 256`` into
``out/quality/small-decoder/run``.

The variants (:data:`VARIANTS`): fp32; int8 (dynamic, per channel); int4 MatMulNBits at block
sizes 16, 32, 64 and 128 with accuracy level 4 and the output projection (lm_head) at int8;
accuracy levels 0 and 1 at block 32; the output projection at int4 and at fp32 at block 32.

* **quality**: a TRAINED decoder (default: the demo's, ``make demo``'s recipe: the tiny decoder
  trained 500 steps on the standard library's json, email, logging and collections) exported
  at every variant with :func:`llmspec.exporter.pipeline.export` (so each one passed the
  parity gate), then :func:`llmspec.inspect.evaluate.evaluate` (``llmspec eval``) on held-out
  text: standard-library modules that are not in the training corpus (:data:`HELD_OUT`).
  Writes ``bench/results/quality/quality.json``.
* **speed**: the benchmark's 125M Llama-style model (bench/peers.py's import, random weights)
  exported to fp32 once (the exporter's own graph export), each variant fused and quantized
  from it with :func:`llmspec.exporter.pipeline.quantize_graph` (the export's own step, so the
  graphs are the ones ``llmspec export`` makes), then timed through the runtime's feeder
  (:class:`runtime.graphs.DecoderGraph`): a prefill of ``--prompt`` random ids and ``--steps``
  greedy decode steps at batch 1, the variants taken in turn for ``--rounds`` rounds (the CPUs
  are shared: every variant sees the same load), tokens/s from the median step, and the
  median prefill (one call on the whole prompt, the graph's own cost: the runtime chunks long
  prompts). On these random weights it also compares each variant's prompt logits with fp32's:
  mean KL divergence and top-1 agreement over the prompt's positions (a 32000-token vocabulary,
  where an int4 output projection matters more than on the demo's 260). Writes
  ``bench/results/quality/speed.json``.
* **table**: the Markdown table of bench/README.md from both files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmspec.exporter.quantize import Int4Choice  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "quality"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# standard-library modules outside the demo's corpus (json, email, logging, collections)
HELD_OUT = ("argparse.py", "dataclasses.py", "textwrap.py", "string.py", "heapq.py")


@dataclass(frozen=True)
class Variant:
    name: str
    quantize: str  # none, int8, int4
    int4: Int4Choice | None = None

    def columns(self) -> dict[str, Any]:
        if self.int4 is None:
            precision = "fp32" if self.quantize == "none" else self.quantize
            return {"precision": precision, "block": "", "accuracy": "", "lm_head": precision}
        return {
            "precision": "int4",
            "block": self.int4.block_size,
            "accuracy": self.int4.accuracy_level,
            "lm_head": self.int4.output,
        }


def _int4(block: int, accuracy: int = 4, output: str = "int8") -> Variant:
    choice = Int4Choice(block, accuracy, output)  # type: ignore[arg-type]
    return Variant(f"int4-b{block}-a{accuracy}-{output}", "int4", choice)


VARIANTS = (
    Variant("fp32", "none"),
    Variant("int8", "int8"),
    *(_int4(block) for block in (16, 32, 64, 128)),
    _int4(32, accuracy=0),
    _int4(32, accuracy=1),
    _int4(32, output="int4"),
    _int4(32, output="fp32"),
)


def quiet(_line: str) -> None:
    pass


def quality(args: argparse.Namespace) -> None:
    from llmspec.exporter.pipeline import export
    from llmspec.inspect.evaluate import evaluate

    data = [STDLIB / name for name in HELD_OUT]
    work = RESULTS / "artifacts" / Path(args.output).stem
    rows = []
    for variant in VARIANTS:
        artifact = work / variant.name
        started = time.perf_counter()
        if not (args.reuse and (artifact / "manifest.json").is_file()):
            export(
                args.run,
                artifact,
                quantize=variant.quantize,
                int4=variant.int4,
                force=True,
                progress=quiet,
            )
        exported = time.perf_counter() - started
        report = evaluate(
            artifact,
            data,
            batch_size=8,
            seq_len=args.seq_len,
            batches=args.batches,
            device="cpu",
            threads=args.threads,
        )
        row = {
            "variant": variant.name,
            **variant.columns(),
            "loss": report.loss,
            "perplexity": report.perplexity,
            "accuracy_next_token": report.accuracy,
            "tokens": report.tokens,
            "export_s": round(exported, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    model = json.loads((work / "fp32" / "manifest.json").read_text())["name"]
    out = {"run": str(args.run), "model": model, "held_out": list(HELD_OUT), "rows": rows}
    (RESULTS / args.output).write_text(json.dumps(out, indent=2) + "\n")


def speed(args: argparse.Namespace) -> None:
    import onnxruntime as ort
    import torch

    from llmspec.builder import INIT_SEED, build
    from llmspec.exporter.graphs import export_graph, plan_graphs
    from llmspec.exporter.pipeline import quantize_graph
    from llmspec.sources import resolve_source
    from runtime import artifact as fmt
    from runtime.graphs import DecoderGraph
    from runtime.session import Graph

    src = resolve_source(args.source, None)
    spec = src.spec
    work = RESULTS / "speed"
    raw = work / "raw"
    if not (raw / "decoder.onnx").is_file():
        raw.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(INIT_SEED)
        reference = build(spec, dtype="fp32", weights=src.weights).eval()
        (plan,) = plan_graphs(spec, reference, torch.float32)
        export_graph(plan, raw)
        del reference
    graphs: dict[str, Path] = {"fp32": args.fp32 / "decoder.onnx"}
    chosen = [v for v in VARIANTS[1:] if not args.only or v.name in args.only]
    for variant in chosen:
        folder = work / variant.name
        target = folder / "decoder.onnx"
        if not target.is_file():
            scratch = work / "scratch"
            shutil.rmtree(scratch, ignore_errors=True)
            shutil.copytree(raw, scratch)
            folder.mkdir(parents=True, exist_ok=True)
            print(f"quantizing {variant.name}", flush=True)
            choice = variant.int4 or Int4Choice(block_size=32)
            quantize_graph(scratch / "decoder.onnx", target, spec, variant.quantize, choice)
            shutil.rmtree(scratch)
        graphs[variant.name] = target
    manifest = fmt.read_manifest(args.fp32)
    decoders = {}
    for name, path in graphs.items():
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        decoders[name] = DecoderGraph.of(Graph.adopt(session, path), manifest, np.float32)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, manifest.vocab_size, (1, args.prompt)).astype(np.int64)
    steps: dict[str, list[float]] = {name: [] for name in decoders}
    prefills: dict[str, list[float]] = {name: [] for name in decoders}
    prompt_logits: dict[str, Any] = {}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, graph in decoders.items():
            mask = np.ones_like(ids)
            started = time.perf_counter()
            logits, cache = graph.prefill(ids, mask)
            prefills[name].append(time.perf_counter() - started)
            prompt_logits[name] = logits[0].astype(np.float64)
            last = logits[:, -1]
            for _ in range(args.steps):
                started = time.perf_counter()
                last, mask, cache = graph.step(last.argmax(-1), mask, cache)
                steps[name].append(time.perf_counter() - started)
    reference = _log_softmax(prompt_logits["fp32"])
    rows = []
    for name, times in steps.items():
        mine = _log_softmax(prompt_logits[name])
        kl = float((np.exp(reference) * (reference - mine)).sum(-1).mean())
        agree = float((mine.argmax(-1) == reference.argmax(-1)).mean())
        median = statistics.median(times)
        variant = next(v for v in VARIANTS if v.name == name)
        size = sum(p.stat().st_size for p in graphs[name].parent.glob("decoder.onnx*"))
        rows.append(
            {
                "variant": name,
                **variant.columns(),
                "median_step_ms": round(median * 1e3, 3),
                "tokens_per_s": round(1 / median, 2),
                "prefill_ms": round(statistics.median(prefills[name]) * 1e3, 1),
                "kl_vs_fp32": kl,
                "top1_vs_fp32": agree,
                "graph_mb": round(size / 1e6, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    out = {
        "source": str(args.source),
        "prompt": args.prompt,
        "steps": args.steps,
        "rounds": args.rounds,
        "threads": args.threads,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "rows": rows,
    }
    (RESULTS / args.output).write_text(json.dumps(out, indent=2) + "\n")


def _log_softmax(logits: Any) -> Any:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def table(args: argparse.Namespace) -> None:
    models = [json.loads((RESULTS / name).read_text()) for name in args.quality]
    qualities = [{r["variant"]: r for r in model["rows"]} for model in models]
    speed_rows = {r["variant"]: r for r in _rows(args.speed)}
    base_tps = speed_rows["fp32"]["tokens_per_s"]
    heads = "".join(f"| {m.get('model', m['run'])} perplexity | vs fp32 " for m in models)
    print(
        f"| precision | block | accuracy level | lm_head {heads}"
        "| tokens/s (125M, batch 1) | vs fp32 | prefill ms | graph MB | 125M KL / top-1 vs fp32 |"
    )
    print("|---" * (9 + 2 * len(models)) + "|")
    for variant in VARIANTS:
        s = speed_rows.get(variant.name)
        c = variant.columns()
        cells = [str(c["precision"]), str(c["block"]), str(c["accuracy"]), str(c["lm_head"])]
        for rows in qualities:
            q, base_ppl = rows.get(variant.name), rows["fp32"]["perplexity"]
            if q:
                cells += [f"{q['perplexity']:.4f}", f"{q['perplexity'] / base_ppl - 1:+.2%}"]
            else:
                cells += ["-", "-"]
        if s:
            ratio = s["tokens_per_s"] / base_tps
            cells += [f"{s['tokens_per_s']:.1f}", f"{ratio:.2f}x"]
            cells += [str(s.get("prefill_ms", "-")), str(s["graph_mb"])]
            cells += [
                f"{s['kl_vs_fp32']:.2g} / {s['top1_vs_fp32']:.0%}" if "kl_vs_fp32" in s else "-"
            ]
        else:
            cells += ["-", "-", "-", "-", "-"]
        print("| " + " | ".join(cells) + " |")


def _rows(name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads((RESULTS / name).read_text())["rows"]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    q = verbs.add_parser("quality", help="perplexity of every variant of a trained decoder")
    q.add_argument("--run", type=Path, default=ROOT / "out" / "quality" / "tiny-decoder" / "run")
    q.add_argument("--seq-len", type=int, default=256)
    q.add_argument("--batches", type=int, default=None, help="default: all the held-out text")
    q.add_argument("--threads", type=int, default=None)
    q.add_argument("--reuse", action="store_true", help="evaluate artifacts already exported")
    q.add_argument("--output", default="quality.json", help="file name under the results")
    q.set_defaults(run_verb=quality)
    s = verbs.add_parser("speed", help="decode tokens/s of every variant of the bench model")
    peers = ROOT / "bench" / "results" / "peers" / "ours"
    s.add_argument("--source", type=Path, default=peers / "import")
    s.add_argument("--fp32", type=Path, default=peers / "cpu-fp32", help="its fp32 artifact")
    s.add_argument("--prompt", type=int, default=128)
    s.add_argument("--steps", type=int, default=16)
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    s.add_argument("--only", nargs="+", metavar="VARIANT", help="time these (and fp32) only")
    s.add_argument("--output", default="speed.json", help="file name under the results")
    s.set_defaults(run_verb=speed)
    t = verbs.add_parser("table", help="the Markdown table of bench/README.md")
    t.add_argument("--quality", nargs="+", default=["quality.json"], metavar="FILE")
    t.add_argument("--speed", default="speed.json", metavar="FILE")
    t.set_defaults(run_verb=table)
    args = parser.parse_args()
    args.run_verb(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
