"""Training memory: ``llmspec estimate`` against one measured training step, on CPU.

For each tiny spec and workload, in a fresh process each (so that peaks do not carry over):

* **tensors**: the peak bytes of live tensors while the model and its AdamW are built and one
  step (forward, backward, optimizer step) runs, from the PyTorch profiler's memory events;
  this is what the estimate models (weights, gradients, Adam's moments, activations);
* **RSS**: the growth of the process's resident-set high-water mark (``VmHWM``, reset through
  ``/proc/self/clear_refs``) over the same work, after a warm-up step on a throwaway model;
  it adds the allocator's slack and caches to the tensors.

Usage: ``python bench/train_memory.py [--json]`` (Linux, the compile extra installed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CASES = [
    (name, batch, seq)
    for name in ("tiny-decoder", "tiny-gpt", "tiny-encoder", "tiny-t5", "tiny-bart")
    for batch, seq in ((2, 32), (4, 64), (8, 128))
]

MEASURE = r"""
import gc, json, sys
from pathlib import Path
import torch
from torch.profiler import ProfilerActivity, profile
import llmspec
from llmspec.estimates.report import estimate

torch.set_num_threads(1)
name, batch, seq = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
spec = llmspec.load_spec(Path("specs") / f"{name}.yaml")

def status(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

def step(ids):
    model = llmspec.build(spec, dtype="fp32")
    optimizer = torch.optim.AdamW(model.parameters())
    extra = {"decoder_input_ids": ids} if spec.architecture == "encoder-decoder" else {}
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids, **extra).loss.backward()
    optimizer.step()

step(torch.randint(0, 250, (1, 8)))  # warm up kernels, thread pools and the autograd engine
gc.collect()
ids = torch.randint(0, 250, (batch, seq))
base = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
    step(ids)
rss = status("VmHWM") - base
changes = sorted(
    (e.start_ns(), e.nbytes())
    for e in profiler.profiler.kineto_results.events()
    if e.name() == "[memory]"
)
live = peak = 0
for _, change in changes:
    live += change
    peak = max(peak, live)
training = estimate(spec, batch_size=batch, seq_len=seq).to_json()["training"]
print(json.dumps({
    "spec": name, "batch_size": batch, "seq_len": seq,
    "estimate_bytes": training["strategies"]["ddp"]["total_bytes"],
    "tensor_peak_bytes": peak, "rss_growth_bytes": rss,
}))
"""


def measure(name: str, batch: int, seq: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, name, str(batch), str(seq)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    results = [measure(*case) for case in CASES]
    if "--json" in sys.argv:
        print(json.dumps(results, indent=2))
        return
    mib = 2**20
    print(f"{'spec':14} {'tokens':>8} {'estimate':>10} {'tensors':>10} {'ratio':>6} {'RSS':>10}")
    for r in results:
        estimate, tensors, rss = r["estimate_bytes"], r["tensor_peak_bytes"], r["rss_growth_bytes"]
        print(
            f"{r['spec']:14} {str(r['batch_size']) + 'x' + str(r['seq_len']):>8} "
            f"{estimate / mib:8.1f}Mi {tensors / mib:8.1f}Mi {tensors / estimate:6.2f} "
            f"{rss / mib:8.1f}Mi"
        )


if __name__ == "__main__":
    main()
