#!/usr/bin/env bash
# The GPU check of issue 7, in one go on a fresh machine with one NVIDIA GPU:
#
#     bash bench/gpu_check.sh        # writes to $OUT if set, else bench/results/gpu
#
# 1. make setup: the project's own environment, nothing installed by hand;
# 2. ONNX Runtime's CUDA provider really runs a graph (runtime.session.cuda_status);
# 3. the Llama model of bench/peers.py exported to fp16 through the parity gate, and a quick
#    timed run of our runtime on CUDA (peers.py --device cuda --only ours --quick);
# 4. our runtime's session really on CUDAExecutionProvider (session.get_providers()), the
#    gate's figures from the artifact's manifest, 8 greedy tokens on the GPU; then where each
#    kind of node really ran (ONNX Runtime's per-node profile): a MatMul, Attention,
#    RotaryEmbedding or norm left on the CPU fails the check (the CUDA provider lacking a
#    kernel for the export's opset-23 fusions would show here);
# 5. the format-2 KV cache on CUDA (buffers in device memory bound as past and present):
#    batched ragged prompts equal each prompt alone, a prompt longer than a prefill chunk
#    (row-by-row chunks, each row copied through the host into the batch's buffers), beam
#    search (rows reordered through the host), and the continuous-batching engine (rows
#    joining and leaving) giving model.generate's tokens;
# 6. the comparison (peers.py --device cuda): ours fp16, onnxruntime-genai-cuda fp16 and int4,
#    Optimum fp16 on CUDAExecutionProvider, transformers fp16. Peers whose environment pip
#    cannot create (no package index there) are reported as failed, and the rest goes on.
#
# Everything within BUDGET_S (480 s): each step runs under `timeout` with at most what is left.
# Writes gpu_check.log (this transcript), peers.{json,md,png}, quick/peers.{json,md,png} and
# logs.tgz (every export's, environment's and contestant's log) to the output folder.
# Exit status 0 when every step passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

BUDGET_S=${BUDGET_S:-480}
OUT=${OUT:-bench/results/gpu}
PYTHON=.venv/bin/python
START=$(date +%s)
STATUS=0
mkdir -p "$OUT/quick"
exec > >(tee "$OUT/gpu_check.log") 2>&1

left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# step NAME SECONDS COMMAND...: run COMMAND under the smaller of SECONDS and the time left.
step() {
    local name=$1 limit=$2 rc
    shift 2
    local remaining
    remaining=$(($(left) - 5))
    ((limit > remaining)) && limit=$remaining
    if ((limit < 10)); then
        echo "== $name: skipped, the ${BUDGET_S} s budget is spent"
        STATUS=1
        return 1
    fi
    echo "== $name (at most ${limit} s; $(left) s left)"
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    if ((rc == 124 || rc == 137)); then
        echo "== $name: stopped after ${limit} s"
    fi
    if ((rc != 0)); then
        echo "== $name: FAILED (exit status $rc)"
        STATUS=1
    fi
    return $rc
}

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, output in $OUT"
step "make setup" 240 make setup || exit 1
step "nvidia-smi" 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

step "ONNX Runtime's CUDA provider" 60 "$PYTHON" - <<'EOF' || exit 1
from runtime.session import cuda_status

usable, why = cuda_status()
print("CUDA usable" if usable else f"CUDA not usable: {why}")
raise SystemExit(0 if usable else 1)
EOF

step "fp16 export through the parity gate, quick run of ours on CUDA" 240 \
    "$PYTHON" bench/peers.py --device cuda --only ours --quick --results "$OUT/quick"

step "our runtime's session providers" 90 "$PYTHON" - <<'EOF'
import json
from pathlib import Path

import runtime

artifact = Path("bench/results/peers/ours/cuda-fp16")
gate = json.loads((artifact / "manifest.json").read_text())["parity"]
print(
    f"parity gate of the fp16 export: passed {gate['passed']}, max |diff| "
    f"{gate['max_abs_diff']:.3g} (relative tolerance {gate['relative_tolerance']}), "
    f"run on {gate['provider']}"
)
model = runtime.load(artifact, device="cuda")
print("our runtime's session providers:", model.providers)
if model.providers[0] != "CUDAExecutionProvider":
    raise SystemExit("our runtime does not run on CUDAExecutionProvider")
tokens = model.generate([[5, 6, 7]], max_new_tokens=8, chain="greedy").tokens[0]
print("8 greedy tokens on CUDA:", tokens)
EOF

# ONNX Runtime silently runs a node on the CPU when the CUDA provider has no kernel for it:
# the per-node profile of one prefill says where each kind of node ran.
step "where our graph's nodes run on CUDA" 120 "$PYTHON" - <<'EOF'
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime import artifact as fmt

artifact = Path("bench/results/peers/ours/cuda-fp16")
manifest = fmt.read_manifest(artifact)
options = ort.SessionOptions()
options.enable_profiling = True
options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "placement")
session = ort.InferenceSession(
    str(artifact / "decoder.onnx"), options, providers=["CUDAExecutionProvider"]
)
batch, length = 2, 16
shape = (batch, manifest.kv_heads, length, manifest.head_dim)  # format 2: the whole buffer
feed = {
    "input_ids": np.full((batch, length), 5, np.int64),
    "attention_mask": np.ones((batch, length), np.int64),
    "position_ids": np.tile(np.arange(length, dtype=np.int64), (batch, 1)),
    "logits_to_keep": np.array(1, np.int64),
}
for i in range(manifest.layers):
    for kind in ("key", "value"):
        feed[f"past_key_values.{i}.{kind}"] = np.zeros(shape, np.float16)
session.run(None, feed)
events = json.loads(Path(session.end_profiling()).read_text())
where = collections.Counter(
    (e["args"]["op_name"], e["args"].get("provider", "?"))
    for e in events
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
)
for (op, provider), count in sorted(where.items()):
    print(f"  {op:40s} {provider:28s} {count}")
heavy = {
    "MatMul",
    "GroupQueryAttention",
    "Attention",
    "TensorScatter",
    "RotaryEmbedding",
    "SkipSimplifiedLayerNormalization",
}
on_cpu = sorted({op for (op, provider), _ in where.items() if op in heavy and "CPU" in provider})
if on_cpu:
    raise SystemExit(f"on the CPU although the session is on CUDA: {', '.join(on_cpu)}")
print("every MatMul, attention, cache write, RotaryEmbedding and norm ran on CUDA")
EOF

step "the in-place KV cache on CUDA" 120 "$PYTHON" - <<'EOF'
import numpy as np

import runtime
from runtime.batching import Engine, EngineRequest
from runtime.sampling import SamplerChain

model = runtime.load("bench/results/peers/ours/cuda-fp16", device="cuda")
rng = np.random.default_rng(0)
prompts = [rng.integers(300, 30000, size=n).tolist() for n in (5, 40, 300)]  # 300 > a chunk
batched = model.generate(prompts, max_new_tokens=12, chain="greedy").tokens
alone = [model.generate([p], max_new_tokens=12, chain="greedy").tokens[0] for p in prompts]
print("batched == alone:", [a == b for a, b in zip(batched, alone)])
beams = model.generate(prompts[:2], max_new_tokens=8, chain="beam_search=3")
print("beam search on CUDA:", [len(t) for t in beams.tokens], "tokens per prompt")
engine = Engine(model, max_batch=4)
greedy = SamplerChain("greedy")
tickets = [engine.submit(EngineRequest(p, 12, greedy)) for p in prompts]
served = [[e.token for e in ticket if e.token is not None] for ticket in tickets]
engine.close()
print("engine == generate:", [a == b for a, b in zip(served, alone)])
if batched != alone or served != alone:
    raise SystemExit("the in-place cache on CUDA gave different tokens")
EOF

# Peer environments get 100 s of pip each: without a package index they fail fast and are
# reported; with one, onnxruntime-genai-cuda, optimum-onnx and their torch take about that.
step "the comparison on CUDA" 600 \
    "$PYTHON" bench/peers.py --device cuda --setup-timeout 100 --results "$OUT"

tar czf "$OUT/logs.tgz" -C bench/results/peers logs 2>/dev/null || echo "== no logs to pack"
echo "== done in $(($(date +%s) - START)) s, exit status $STATUS"
exit $STATUS
