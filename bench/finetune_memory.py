"""LoRA fine-tuning memory: ``llmspec estimate --finetune lora`` against a measured step, on CPU.

For each tiny generative spec, workload, adapter and with or without activation checkpointing,
in a fresh process per spec: the model is built, wrapped with LoRA (PEFT) and trained one step
with AdamW, so that the optimizer's states exist as they do for the rest of a run; then the
second step is measured: the bytes held before it (the frozen weights, the adapter, AdamW's
moments) plus the peak of live tensors during it (forward, backward, optimizer step), from the
PyTorch profiler's memory events. That is what the estimate models
(:mod:`llmspec.estimates.finetune`, whose activation terms were fitted on this script's output).

Usage: ``python bench/finetune_memory.py [--real] [--json]`` (Linux, the compile and finetune
extras); ``--real`` adds gpt2-small, pythia-160m and t5-small (a few minutes each).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPECS = ("tiny-decoder", "tiny-gpt", "tiny-t5", "tiny-bart")
TINY_SHAPES = [(2, 32), (4, 64), (2, 128), (8, 64), (4, 128), (2, 256)]
TINY_ADAPTERS = [(8, ["q_proj", "v_proj"]), (16, ["q_proj", "k_proj", "v_proj", "o_proj"])]
# --real: a few minutes each, about 1 GB of memory
REAL = ("gpt2-small", "pythia-160m", "t5-small")
REAL_SHAPES = [(2, 128), (1, 256), (4, 64)]
REAL_ADAPTERS = [(16, ["q_proj", "v_proj"])]

MEASURE = r"""
import gc, json, sys
from pathlib import Path
import torch
from torch.profiler import ProfilerActivity, profile
import llmspec
from llmspec.estimates.finetune import lora_memory
from llmspec.trainer.finetune import checkpoint_layers
from llmspec.trainer.lora import LoraSettings, apply_lora

torch.set_num_threads(1)
name = sys.argv[1]
spec = llmspec.load_spec(Path("specs") / f"{name}.yaml")
SHAPES = json.loads(sys.argv[2])
ADAPTERS = [(r, tuple(targets)) for r, targets in json.loads(sys.argv[3])]

def measure(b, s, r, targets, ckpt):
    lora = LoraSettings(r=r, alpha=2 * r, targets=targets)
    model = apply_lora(llmspec.build(spec, dtype="fp32"), lora)
    if ckpt:
        checkpoint_layers(model)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    enc_dec = spec.architecture == "encoder-decoder"

    def step(ids):
        extra = {"decoder_input_ids": ids} if enc_dec else {}
        mask = torch.ones_like(ids)
        model(input_ids=ids, attention_mask=mask, labels=ids, **extra).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(torch.randint(0, 250, (b, s)))
    gc.collect()
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    held += sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t) and t.ndim
    )
    ids = torch.randint(0, 250, (b, s))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step(ids)
    events = profiler.profiler.kineto_results.events()
    live = peak = 0
    for _, change in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"):
        live += change
        peak = max(peak, live)
    est = lora_memory(spec, batch_size=b, seq_len=s, rank=r, targets=targets, checkpointing=ckpt)
    return {
        "spec": name, "batch_size": b, "seq_len": s, "rank": r, "targets": list(targets),
        "checkpointing": ckpt, "estimate_bytes": est.total, "measured_bytes": held + peak,
    }

measure(1, 8, ADAPTERS[0][0], ADAPTERS[0][1], False)  # warm up kernels and autograd
for b, s in SHAPES:
    if s > spec.context_length:
        continue
    for r, targets in ADAPTERS:
        for ckpt in (False, True):
            print(json.dumps(measure(b, s, r, targets, ckpt)), flush=True)
            gc.collect()
"""


def measure(name: str, shapes: list[Any], adapters: list[Any]) -> list[dict[str, Any]]:
    command = [sys.executable, "-c", MEASURE, name, json.dumps(shapes), json.dumps(adapters)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    cases = [(name, TINY_SHAPES, TINY_ADAPTERS) for name in SPECS]
    if "--real" in sys.argv:
        cases += [(name, REAL_SHAPES, REAL_ADAPTERS) for name in REAL]
    results = [r for case in cases for r in measure(*case)]
    if "--json" in sys.argv:
        print(json.dumps(results, indent=2))
        return
    mib = 2**20
    print(
        f"{'spec':13} {'tokens':>7} {'lora':>6} {'ckpt':>4} {'estimate':>10} {'measured':>10} ratio"
    )
    for ckpt in (False, True):
        ratios = [r["measured_bytes"] / r["estimate_bytes"] for r in results]
        for r, ratio in zip(results, ratios, strict=True):
            if r["checkpointing"] != ckpt:
                continue
            print(
                f"{r['spec']:13} {str(r['batch_size']) + 'x' + str(r['seq_len']):>7} "
                f"{'r' + str(r['rank']) + 'x' + str(len(r['targets'])):>6} "
                f"{'yes' if ckpt else 'no':>4} {r['estimate_bytes'] / mib:8.2f}Mi "
                f"{r['measured_bytes'] / mib:8.2f}Mi {ratio:5.2f}"
            )
    for ckpt in (False, True):
        ratios = [
            r["measured_bytes"] / r["estimate_bytes"] for r in results if r["checkpointing"] == ckpt
        ]
        print(
            f"checkpointing {'on ' if ckpt else 'off'}: measured / estimate "
            f"{min(ratios):.3f} to {max(ratios):.3f} over {len(ratios)} cases"
        )


if __name__ == "__main__":
    main()
