"""Decode speed of a Llama-style decoder: our runtime against its peers on the same random
weights, with this machine's memory-bandwidth roofline (issue 7).

    .venv/bin/python bench/peers.py [--threads T] [--quick] [--only ours,genai] [--device cuda]

The model: transformers' ``LlamaForCausalLM`` (hidden 768, 12 layers, 12 heads, 4 kv heads,
intermediate 2048, vocabulary 32000, untied embeddings, RoPE base 10000, RMSNorm eps 1e-5, 2048
positions, no biases), seeded random initialization, saved with ``save_pretrained`` and a small
byte-level ``tokenizer.json`` in ``bench/results/peers/hf/``. Every contestant starts from that
folder:

* **ours**: ``llmspec import-hf`` then ``llmspec export`` (fp32, int8, int4; fp16 on CUDA), run
  by ``runtime.load(artifact, device, threads).generate``;
* **transformers**: ``LlamaForCausalLM.generate`` with eager attention and its KV cache (fp32;
  fp16 on CUDA);
* **optimum**: Optimum's ``ORTModelForCausalLM`` on ``optimum-cli export onnx`` of the folder
  (fp32; fp16 exported on CUDA), in the environment ``bench/.envs/optimum[-cuda]``;
* **genai**: onnxruntime-genai's ``Generator`` on the model its builder
  (``python -m onnxruntime_genai.models.builder``) makes of the folder (fp32 and int4; fp16 and
  int4 on CUDA), in ``bench/.envs/genai[-cuda]``.

Peers that need the CPU ``onnxruntime`` package (or another transformers) live in their own
virtual environments, created here on first use with pip (``-c constraints.txt`` keeps torch at
the CPU build on disk) and pinned to this environment's ONNX Runtime version; a peer whose
environment or model cannot be made is reported as failed, with the reason and its log, and
the others go on.

Every contestant's model is prepared first; then the (batch, prompt) cells run one after the
other, every contestant in turn within a cell, so that a cell's figures are minutes apart on this
shared machine, not a whole run apart. Each contestant runs each cell in a process of its own
(``bench/peers_worker.py``), so that the reported peak RSS (VmHWM) is its own: a warm-up
generate, then greedy and ``top_p=0.9,sample`` on the same seeded random prompts, every row
making exactly the asked number of tokens (eos does not stop it). Steps are time-stamped when
their logits are ready and reported as in ``bench/decode.py``: prefill (time to the first
token), the median step, tokens/s = batch / median step.

The roofline of a run: the bytes one decode step reads (the weights, as
``decode.weight_bytes_per_step`` counts them in the contestant's own graph, plus the KV cache at
the mean context length of the timed steps) over the measured read bandwidth.

Writes ``peers.json``, ``peers.md`` (the Markdown table, also printed) and ``peers.png`` to
``bench/results/`` (``bench/results/gpu/`` with ``--device cuda``; ``--results`` elsewhere).
Models, environments' logs and job files stay in ``bench/results/peers/`` and are reused while
the Hugging Face folder is unchanged (delete a model's folder to make it again).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
# Python puts a script's folder first on sys.path, where a benchmark named like a standard
# module (a bench/profile.py: `profile`, which cProfile imports) hides that module from every
# import. Keep bench/ last: its modules (decode) still import, the standard ones win.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH]
sys.path.append(str(BENCH))

from decode import GREEDY, TOP_P, Run, _cpu_name, read_bandwidth, weight_bytes_per_step  # noqa: E402

PEERS = ROOT / "bench" / "results" / "peers"
HF = PEERS / "hf"
LOGS = PEERS / "logs"
WORK = PEERS / "work"
ENVS = ROOT / "bench" / ".envs"
WORKER = BENCH / "peers_worker.py"
CHAINS = [GREEDY, TOP_P]
WORKER_TIMEOUT_S = 1800

# The model every contestant runs (issue 7): a Llama-style decoder, seeded random weights.
LLAMA: dict[str, Any] = dict(
    vocab_size=32000,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=4,
    intermediate_size=2048,
    hidden_act="silu",
    tie_word_embeddings=False,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=2048,
    attention_bias=False,
    mlp_bias=False,
    bos_token_id=1,
    eos_token_id=2,
)
SEED = 0
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2: the config's bos and eos
# Saved tokenizer_config.json: transformers 5 would name its own TokenizersBackend class, which
# the transformers < 4.58 that Optimum pins cannot load; PreTrainedTokenizerFast both can.
TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "model_max_length": LLAMA["max_position_embeddings"],
}

# What each contestant runs, per device: precisions in the order they are reported.
CONTESTANTS = ("ours", "genai", "optimum", "transformers")
LABELS = {
    "ours": "ours (llmspec runtime)",
    "genai": "onnxruntime-genai",
    "optimum": "Optimum ORTModelForCausalLM",
    "transformers": "transformers generate (eager)",
}
PRECISIONS = {
    "cpu": {
        "ours": ("fp32", "int8", "int4"),
        "genai": ("fp32", "int4"),
        "optimum": ("fp32",),
        "transformers": ("fp32",),
    },
    "cuda": {
        "ours": ("fp16",),
        "genai": ("fp16", "int4"),
        "optimum": ("fp16",),
        "transformers": ("fp16",),
    },
}


@dataclass(frozen=True)
class Matrix:
    batches: tuple[int, ...]
    prompts: tuple[int, ...]
    new_tokens: int


FULL = Matrix(batches=(1, 8), prompts=(128, 1024), new_tokens=128)
QUICK = Matrix(batches=(1,), prompts=(128,), new_tokens=16)  # validates the pipeline


@dataclass
class PeerRun(Run):
    """A run of ``bench/decode.py`` and what this comparison adds to it."""

    prompt: int = 0
    new_tokens: int = 0
    peak_rss_mib: float = 0.0  # VmHWM of the contestant's process (model, warm-up, both chains)
    roofline_ms: float = 0.0  # (weights + KV cache at the mean context) / read bandwidth


@dataclass
class Failure:
    contestant: str
    precision: str
    reason: str


@dataclass
class Footprint:
    """What one decode step must read: the weights, and the KV cache per token of context."""

    weight_bytes: int
    cache_bytes_per_token: int  # per row: layers x (key + value) x kv heads x head dim x dtype


class PeerError(RuntimeError):
    """A contestant cannot run; the message says what failed, where its log is, how to fix."""


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# Processes


def run_logged(command: list[str], log: Path, what: str, timeout: float) -> None:
    """Run ``command`` with its output appended to ``log``; PeerError naming ``what`` and the
    log's last lines when it fails or outlives ``timeout`` seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        try:
            status = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT
            ).returncode
        except subprocess.TimeoutExpired:
            raise PeerError(
                f"{what}: still running after {timeout:.0f} s, stopped; see {log}"
            ) from None
        except OSError as err:
            raise PeerError(f"{what}: cannot start {command[0]} ({err})") from None
    if status != 0:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
        lines = [line for line in lines if line]
        # The line that says what went wrong: the last naming an error or a failure.
        summary = next(
            (line for line in reversed(lines) if "error" in line.lower() or "fail" in line.lower()),
            lines[-1] if lines else "(no output)",
        )
        tail = "\n    ".join(lines[-8:])
        raise PeerError(
            f"{what} failed (exit status {status}): {summary} [log: {log.relative_to(ROOT)}]"
            f"\n    {tail}"
        )


# ----------------------------------------------------------------------------------------
# The Hugging Face folder every contestant starts from


def build_hf(directory: Path) -> None:
    """Save the seeded random LlamaForCausalLM and a byte-level tokenizer to ``directory``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    LlamaForCausalLM(LlamaConfig(**LLAMA)).save_pretrained(directory)
    # The 256 bytes after the special tokens, no merges: any text encodes, every id is < 259.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *alphabet])}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.save(str(directory / "tokenizer.json"))
    text = json.dumps(TOKENIZER_CONFIG, indent=2) + "\n"
    (directory / "tokenizer_config.json").write_text(text)


def hf_folder() -> str:
    """Make ``bench/results/peers/hf`` unless it holds this recipe's model; return the sha256
    of its files, which keys every model made from it."""
    import transformers

    recipe = json.dumps([LLAMA, SEED, SPECIAL_TOKENS, TOKENIZER_CONFIG, transformers.__version__])
    stamp = HF.with_name("hf.recipe-sha256")
    wanted = hashlib.sha256(recipe.encode()).hexdigest()
    if not (stamp.is_file() and stamp.read_text() == wanted and (HF / "config.json").is_file()):
        say(f"saving the seeded random Llama model to {HF}")
        partial = HF.with_name("hf.partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        build_hf(partial)
        shutil.rmtree(HF, ignore_errors=True)
        partial.rename(HF)
        stamp.write_text(wanted)
    digest = hashlib.sha256()
    for path in sorted(HF.iterdir()):
        digest.update(path.name.encode())
        with path.open("rb") as data:
            while chunk := data.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def made_from(target: Path, key: str, make: Any) -> Path:
    """``target``, made by ``make()`` unless the stamp beside it says it was made from
    ``key`` (the HF folder's digest and the command that makes it)."""
    stamp = target.with_name(target.name + ".source-sha256")
    if target.is_dir() and stamp.is_file() and stamp.read_text() == key:
        return target
    stamp.unlink(missing_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    started = time.perf_counter()
    make()
    stamp.write_text(key)
    say(f"  made {target.relative_to(ROOT)} in {time.perf_counter() - started:.0f} s")
    return target


# ----------------------------------------------------------------------------------------
# Peer environments


def ort_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for distribution in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    raise PeerError("no onnxruntime in this environment; run `make setup`")


def requirements(peer: str, device: str) -> list[str]:
    """The pip requirements of a peer's environment: the peer's packages, the ONNX Runtime of
    this environment (CPU or GPU build), torch for the model exporters."""
    ort = (
        f"onnxruntime-gpu=={ort_version()}" if device == "cuda" else f"onnxruntime=={ort_version()}"
    )
    if peer == "genai":
        genai = (
            "onnxruntime-genai-cuda==0.18.0" if device == "cuda" else "onnxruntime-genai==0.18.0"
        )
        # The builder needs onnx-ir, and torch and transformers to read the HF folder.
        return [genai, ort, "onnx-ir", "transformers", "torch"]
    extra = "onnxruntime-gpu" if device == "cuda" else "onnxruntime"
    return [f"optimum-onnx[{extra}]", ort, "torch"]  # optimum-onnx pins transformers < 4.58


def peer_python(peer: str, device: str, timeout: float) -> Path:
    """The python of ``bench/.envs/PEER[-cuda]``, created with pip when missing or made for
    other requirements. PeerError, with the pip log, when pip fails."""
    name = peer if device == "cpu" else f"{peer}-cuda"
    root = ENVS / name
    python = root / "bin" / "python"
    wanted = "\n".join(requirements(peer, device)) + "\n"
    stamp = root / "requirements.txt"
    if python.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return python
    say(f"creating {root} (once): pip install {' '.join(wanted.split())}")
    shutil.rmtree(root, ignore_errors=True)
    log = LOGS / f"env-{name}.log"
    log.unlink(missing_ok=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--timeout", "30", "--retries", "1"]
    try:
        run_logged([sys.executable, "-m", "venv", str(root)], log, f"creating {root}", 300)
        run_logged(
            [*pip, "-c", str(ROOT / "constraints.txt"), *wanted.split()],
            log,
            f"pip install into {root}",
            timeout,
        )
    except PeerError as err:
        shutil.rmtree(root, ignore_errors=True)
        raise PeerError(
            f"{err}\n  The {peer} peer needs its own environment, made with pip from the "
            "package index; where the index cannot be reached, run the other contestants "
            "(--only ours,transformers) or build the environment by hand with the pip "
            "command at the top of the log."
        ) from None
    stamp.write_text(wanted)
    return python


# ----------------------------------------------------------------------------------------
# Models


@dataclass
class Entry:
    """One contestant at one precision, ready to run."""

    contestant: str
    precision: str
    python: Path
    model: Path
    footprint: Footprint
    facts: dict[str, Any] = field(default_factory=dict)


# The export gate's relative tolerance for our int4 artifact of the random benchmark model.
INT4_TOLERANCE = 0.5


def prepare(contestant: str, precision: str, device: str, key: str, setup_s: float) -> Entry:
    """Make (or reuse) the contestant's model at ``precision``; PeerError when it cannot."""
    log = LOGS / f"prepare-{contestant}-{device}-{precision}.log"
    log.unlink(missing_ok=True)
    if contestant == "transformers":
        return Entry(contestant, precision, Path(sys.executable), HF, hf_footprint(precision))
    if contestant == "ours":
        key = f"{key} {compiler_digest()}"
        cli = [sys.executable, "-m", "llmspec"]
        imported = PEERS / "ours" / "import"
        command = [*cli, "import-hf", str(HF), "-o", str(imported), "--force"]
        made_from(imported, key, lambda: run_logged(command, log, "llmspec import-hf", 600))
        dtype, quantize = (
            (precision, "none") if precision in ("fp32", "fp16") else ("fp32", precision)
        )
        options = ["--precision", dtype, "--quantize", quantize]
        if quantize == "int4":
            # random weights give nearly flat logits, on which int4's error is 0.39 of the logit
            # scale here (the default gate allows 0.3); top-1 still has to agree everywhere
            options += ["--tolerance", str(INT4_TOLERANCE)]
        artifact = PEERS / "ours" / f"{device}-{precision}"
        command = [*cli, "export", str(imported), "-o", str(artifact), *options, "--force"]
        made_from(
            artifact,
            f"{key} {' '.join(options)}",
            lambda: run_logged(command, log, f"llmspec export {' '.join(options)}", 1800),
        )
        gate = json.loads((artifact / "manifest.json").read_text()).get("parity", {})
        return Entry(
            contestant,
            precision,
            Path(sys.executable),
            artifact,
            onnx_footprint(artifact / "decoder.onnx"),
            {"parity_gate": gate},
        )
    python = peer_python(contestant, device, setup_s)
    target = PEERS / contestant / f"{device}-{precision}"
    if contestant == "genai":
        # -c: the builder's cache folder (else it writes one into the working directory).
        cache = PEERS / "genai" / "cache"
        options = ["-p", precision, "-e", device]
        command = [str(python), "-m", "onnxruntime_genai.models.builder", "-i", str(HF)]
        command += ["-o", str(target), *options, "-c", str(cache)]
    else:
        options = ["--task", "text-generation-with-past"]
        if device == "cuda":
            options += ["--dtype", "fp16", "--device", "cuda"]
        command = [str(python.with_name("optimum-cli")), "export", "onnx", "--model", str(HF)]
        command += [*options, str(target)]
    made_from(
        target,
        f"{key} {' '.join(options)}",
        lambda: run_logged(command, log, f"the {contestant} model export", 1800),
    )
    return Entry(contestant, precision, python, target, onnx_footprint(target / "model.onnx"))


def compiler_digest() -> str:
    """sha256 of llmspec's and codegen's sources: our artifacts are made again when the
    compiler changes, not only when the model does."""
    digest = hashlib.sha256()
    for package in ("llmspec", "codegen"):
        for path in sorted((ROOT / package).rglob("*")):
            if path.suffix in (".py", ".jinja") and path.is_file():
                digest.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    return digest.hexdigest()


def cache_bytes_per_token(dtype_bytes: int) -> int:
    """KV cache bytes per token of context and per row: layers x (key, value) x kv heads x
    head dim x the cache's dtype size."""
    head_dim = LLAMA["hidden_size"] // LLAMA["num_attention_heads"]
    return LLAMA["num_hidden_layers"] * 2 * LLAMA["num_key_value_heads"] * head_dim * dtype_bytes


def onnx_footprint(graph: Path) -> Footprint:
    """The weights one step of ``graph`` reads (``decode.weight_bytes_per_step``) and its cache
    per token, in the dtype of its ``past*`` inputs (their shapes are not always static:
    the genai builder names the head dimension ``kv_cache_dim``)."""
    import onnx

    if not graph.is_file():
        raise PeerError(f"{graph} is missing: the export did not write it; delete its folder")
    model = onnx.load(str(graph), load_external_data=False)
    sizes = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2}
    cache = [v.type.tensor_type.elem_type for v in model.graph.input if v.name.startswith("past")]
    if not cache or cache[0] not in sizes:
        raise PeerError(f"{graph}: no float past* (KV cache) input; is it a decoder with a cache?")
    return Footprint(weight_bytes_per_step(graph), cache_bytes_per_token(sizes[cache[0]]))


def hf_footprint(precision: str) -> Footprint:
    """transformers' reads: every parameter but the token embedding table, in ``precision``,
    and its cache (in that dtype too)."""
    from safetensors import safe_open

    size = 4 if precision == "fp32" else 2
    weights = 0
    with safe_open(str(HF / "model.safetensors"), framework="numpy") as tensors:
        for name in tensors.keys():  # noqa: SIM118 (safe_open is no mapping)
            if name != "model.embed_tokens.weight":
                weights += int(np.prod(tensors.get_slice(name).get_shape())) * size
    return Footprint(weights, cache_bytes_per_token(size))


# ----------------------------------------------------------------------------------------
# The machine


def cuda_read_bandwidth(gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second of ONNX Runtime's CUDA ReduceSum over a ``gib`` GiB float32 tensor
    kept on the GPU (IOBinding), best of ``repeats``: the GPU's read bandwidth as ONNX Runtime
    kernels see it."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)],
        "read",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    # IR 9: what every ONNX Runtime since 1.15 reads (onnx itself writes a newer one).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
    count = int(gib * (1 << 30)) // 4
    data = ort.OrtValue.ortvalue_from_numpy(np.ones(count, dtype=np.float32), "cuda", 0)
    binding = session.io_binding()
    binding.bind_ortvalue_input("x", data)
    binding.bind_output("y", "cuda")
    session.run_with_iobinding(binding)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        best = min(best, time.perf_counter() - start)
    return count * 4 / best


def gpu_name() -> str | None:
    try:
        query = [
            "nvidia-smi",
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader",
        ]
        return subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


# ----------------------------------------------------------------------------------------
# Running


def prompts_file(batch: int, length: int) -> Path:
    """Random token ids (no special tokens), the same for every contestant and every run of
    this script: seeded by (SEED, batch, length)."""
    path = WORK / f"prompts-b{batch}-p{length}.npy"
    rng = np.random.default_rng([SEED, batch, length])
    ids = rng.integers(len(SPECIAL_TOKENS), LLAMA["vocab_size"], size=(batch, length))
    np.save(path, ids.astype(np.int64))
    return path


def run_cell(
    entry: Entry, device: str, threads: int, batch: int, length: int, matrix: Matrix
) -> dict[str, Any]:
    """One worker process: ``entry`` on one (batch, prompt) cell, both chains."""
    name = f"{entry.contestant}-{device}-{entry.precision}-b{batch}-p{length}"
    result = WORK / f"{name}.result.json"
    result.unlink(missing_ok=True)
    job = {
        "contestant": entry.contestant,
        "model": str(entry.model),
        "precision": entry.precision,
        "device": device,
        "threads": threads,
        "prompts": str(prompts_file(batch, length)),
        "new_tokens": matrix.new_tokens,
        "chains": CHAINS,
        "result": str(result),
    }
    job_path = WORK / f"{name}.job.json"
    job_path.write_text(json.dumps(job, indent=2) + "\n")
    log = LOGS / f"{name}.log"
    log.unlink(missing_ok=True)
    command = [str(entry.python), str(WORKER), str(job_path)]
    run_logged(
        command,
        log,
        f"{entry.contestant} {entry.precision} batch {batch} prompt {length}",
        WORKER_TIMEOUT_S,
    )
    return json.loads(result.read_text())


# ----------------------------------------------------------------------------------------
# Report


def roofline_ms(
    footprint: Footprint, batch: int, prompt: int, matrix: Matrix, bandwidth: float
) -> float:
    """Milliseconds to read a step's bytes: the weights, and every row's cache at the mean
    context length of the timed steps (prompt + new / 2)."""
    cache = footprint.cache_bytes_per_token * batch * (prompt + matrix.new_tokens / 2)
    return 1000 * (footprint.weight_bytes + cache) / bandwidth


def peer_precision(contestant: str, ours: str, device: str) -> str | None:
    """The precision of ``contestant`` that ours at ``ours`` is compared with: the same one for
    genai (None if genai has no such model), the only one for optimum and transformers."""
    available = PRECISIONS[device][contestant]
    if contestant == "genai":
        return ours if ours in available else None
    return available[0]


def ratios(runs: list[PeerRun], device: str) -> dict[int, dict[str, float | None]]:
    """For each of our runs (by index): peer ms/step / our ms/step (above 1: ours is faster)."""
    times = {(r.contestant, r.precision, r.batch, r.prompt, r.chain): r.ms_per_step for r in runs}
    out: dict[int, dict[str, float | None]] = {}
    for index, run in enumerate(runs):
        if run.contestant != "ours":
            continue
        out[index] = {}
        for peer in CONTESTANTS[1:]:
            precision = peer_precision(peer, run.precision, device)
            theirs = precision and times.get((peer, precision, run.batch, run.prompt, run.chain))
            out[index][peer] = theirs / run.ms_per_step if theirs else None
    return out


def markdown(
    runs: list[PeerRun], device: str, failures: list[Failure], agreement: dict[str, str]
) -> str:
    vs = ratios(runs, device)
    lines = [
        "| contestant | precision | batch | prompt | chain | prefill ms | ms/step (median) | "
        "tokens/s | peak RSS MiB | roofline ms | x roofline | vs genai | vs optimum | "
        "vs transformers |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for index, r in enumerate(runs):
        cells = [
            f"{vs[index][p]:.2f}x" if index in vs and vs[index][p] else "-" for p in CONTESTANTS[1:]
        ]
        lines.append(
            f"| {LABELS[r.contestant]} | {r.precision} | {r.batch} | {r.prompt} | {r.chain} | "
            f"{r.prefill_ms:.0f} | {r.ms_per_step:.1f} | {r.tokens_per_s:.1f} | "
            f"{r.peak_rss_mib:.0f} | {r.roofline_ms:.1f} | {r.ms_per_step / r.roofline_ms:.2f} | "
            + " | ".join(cells)
            + " |"
        )
    if failures:
        lines += ["", "| failed | precision | reason |", "|---|---|---|"]
        for f in failures:
            reason = f.reason.splitlines()[0].replace("|", "\\|")
            lines.append(f"| {LABELS[f.contestant]} | {f.precision} | {reason} |")
    if agreement:
        lines.append("")
        lines += [f"- greedy tokens, {name}: {text}" for name, text in agreement.items()]
    return "\n".join(lines)


def plot(runs: list[PeerRun], matrix: Matrix, device: str, path: Path) -> None:
    """ms/step bars per contestant, precision and chain, one panel per (batch, prompt) cell;
    each bar's roofline is a black tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    cells = [(b, p) for b in matrix.batches for p in matrix.prompts]
    columns = len(matrix.prompts)
    fig, axes = plt.subplots(
        len(matrix.batches), columns, figsize=(7 * columns, 5 * len(matrix.batches)), squeeze=False
    )
    colors = dict(
        zip(CONTESTANTS, ("tab:blue", "tab:green", "tab:orange", "tab:gray"), strict=True)
    )
    for axis, (batch, prompt) in zip(axes.flat, cells, strict=True):
        chosen = [r for r in runs if (r.batch, r.prompt) == (batch, prompt)]
        labels = [f"{LABELS[r.contestant]}\n{r.precision}, {r.chain}" for r in chosen]
        axis.barh(
            labels, [r.ms_per_step for r in chosen], color=[colors[r.contestant] for r in chosen]
        )
        rows = range(len(chosen))
        roofline = [r.roofline_ms for r in chosen]
        axis.scatter(roofline, rows, marker="|", s=400, color="black", zorder=3)
        for row, run in enumerate(chosen):
            axis.annotate(
                f" {run.ms_per_step:.1f}", (run.ms_per_step, row), va="center", fontsize=7
            )
        axis.set_title(f"batch {batch}, prompt {prompt}")
        axis.set_xscale("log")  # peers differ by orders of magnitude; ratios read as distances
        axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("ms per step (one token per row; log scale, lower is better)")
        axis.invert_yaxis()
        axis.tick_params(axis="y", labelsize=7)
    fig.suptitle(
        f"Llama-style decoder (768 x 12 layers, 32k vocabulary) decode on {device}; "
        "black tick: the run's roofline (weights + KV cache read once per step)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def greedy_agreement(
    results: dict[tuple[str, str, int, int], dict[str, Any]], matrix: Matrix, device: str
) -> dict[str, str]:
    """How many of the first row's greedy tokens each contestant shares with transformers' in
    the first cell: a check that all run the same weights (quantized ones may part early)."""
    cell = (matrix.batches[0], matrix.prompts[0])
    reference = results.get(("transformers", PRECISIONS[device]["transformers"][0], *cell))
    if reference is None:
        return {}
    theirs = reference["tokens"][GREEDY]
    out = {}
    for (contestant, precision, *where), result in results.items():
        if contestant == "transformers" or tuple(where) != cell:
            continue
        ours = result["tokens"][GREEDY]
        same = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), len(ours)
        )
        out[f"{LABELS[contestant]} {precision}"] = (
            f"equal to transformers' for the first {same} of {len(ours)}"
        )
    return out


# ----------------------------------------------------------------------------------------


def contestant_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONTESTANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown contestant {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(CONTESTANTS)}"
        )
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 2, help="for every contestant"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="batch 1, prompt 128, 16 new tokens: checks the pipeline",
    )
    parser.add_argument(
        "--only",
        type=contestant_list,
        default=list(CONTESTANTS),
        metavar="NAME,...",
        help=f"run these contestants only ({', '.join(CONTESTANTS)})",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--results",
        type=Path,
        help="where peers.json/.md/.png go (default: bench/results, "
        "bench/results/gpu with --device cuda)",
    )
    parser.add_argument(
        "--setup-timeout",
        type=float,
        default=900,
        metavar="S",
        help="seconds pip may take to create one peer environment (default 900)",
    )
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    device = args.device
    if device == "cuda":
        from runtime.session import cuda_status

        usable, why = cuda_status()
        if not usable:
            print(
                f"peers.py: --device cuda: CUDA is unavailable here: {why}. Run it on a machine "
                "with an NVIDIA GPU (bench/gpu_check.sh), or leave --device out to compare on "
                "the CPU.",
                file=sys.stderr,
            )
            return 2
    results_dir = args.results or ROOT / "bench" / "results" / ("gpu" if device == "cuda" else "")
    matrix = QUICK if args.quick else FULL
    for folder in (results_dir, LOGS, WORK):
        folder.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.perf_counter()
    date = time.strftime("%Y-%m-%d %H:%M", time.gmtime())  # the start, in UTC

    key = hf_folder()
    say(f"measuring the read bandwidth ({device})")
    bandwidth = cuda_read_bandwidth() if device == "cuda" else read_bandwidth(args.threads)
    say(f"  {bandwidth / 2**30:.1f} GiB/s")

    runs: list[PeerRun] = []
    failures: list[Failure] = []
    results: dict[tuple[str, str, int, int], dict[str, Any]] = {}
    entries: dict[str, dict[str, Any]] = {}
    prepared = []
    for contestant in [c for c in CONTESTANTS if c in args.only]:
        for precision in PRECISIONS[device][contestant]:
            say(f"{LABELS[contestant]}, {precision}: preparing")
            try:
                entry = prepare(contestant, precision, device, key, args.setup_timeout)
            except PeerError as err:
                say(f"  FAILED: {err}")
                failures.append(Failure(contestant, precision, str(err)))
                continue
            facts = {"model": str(entry.model.relative_to(ROOT)), "python": str(entry.python)}
            entries[f"{contestant} {precision}"] = facts | asdict(entry.footprint) | entry.facts
            prepared.append((contestant, precision, entry))
    # Cell by cell, every contestant in turn: the machine is shared and its speed drifts over
    # minutes (the bandwidth probe gave 36 and 61 GiB/s an hour apart), so the contestants of a
    # cell run minutes apart, not a whole run apart.
    for batch in matrix.batches:
        for prompt in matrix.prompts:
            for contestant, precision, entry in prepared:
                say(f"{LABELS[contestant]}, {precision}")
                try:
                    result = run_cell(entry, device, args.threads, batch, prompt, matrix)
                except PeerError as err:
                    say(f"  FAILED: {err}")
                    failures.append(Failure(contestant, precision, str(err)))
                    continue
                results[(contestant, precision, batch, prompt)] = result
                entries[f"{contestant} {precision}"].update(result["facts"])
                roofline = roofline_ms(entry.footprint, batch, prompt, matrix, bandwidth)
                cell = [
                    PeerRun(
                        **run,
                        prompt=prompt,
                        new_tokens=matrix.new_tokens,
                        peak_rss_mib=result["peak_rss_mib"],
                        roofline_ms=roofline,
                    )
                    for run in result["runs"]
                ]
                runs += cell
                say(
                    f"  batch {batch} prompt {prompt}: "
                    + ", ".join(f"{r.chain} {r.ms_per_step:.1f} ms/step" for r in cell)
                    + f" (roofline {roofline:.1f}), prefill {cell[0].prefill_ms:.0f} ms, "
                    f"peak RSS {result['peak_rss_mib']:.0f} MiB"
                )

    runs.sort(key=lambda r: (r.batch, r.prompt, CONTESTANTS.index(r.contestant)))
    agreement = greedy_agreement(results, matrix, device)
    vs = ratios(runs, device)
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": _cpu_name(),
            "gpu": gpu_name() if device == "cuda" else None,
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "device": device,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "read_bandwidth_gib_s": bandwidth / 2**30,
            "started_utc": date,
        },
        "setup": {**asdict(matrix), "chains": CHAINS, "hf_sha256": key, "model": LLAMA},
        "contestants": entries,
        "runs": [
            {**asdict(r), "x_roofline": r.ms_per_step / r.roofline_ms, "vs": vs.get(i)}
            for i, r in enumerate(runs)
        ],
        "failures": [asdict(f) for f in failures],
        "greedy_agreement": agreement,
        "seconds": time.perf_counter() - started,
    }
    (results_dir / "peers.json").write_text(json.dumps(report, indent=2) + "\n")
    summary = (
        f"{date} UTC, {_cpu_name()}, {device}, {args.threads} threads, "
        f"read bandwidth {bandwidth / 2**30:.1f} GiB/s, load average {load_before[0]:.1f} "
        f"before and {os.getloadavg()[0]:.1f} after, {time.perf_counter() - started:.0f} s"
    )
    table = markdown(runs, device, failures, agreement) + f"\n\n- {summary}"
    (results_dir / "peers.md").write_text(table + "\n")
    plot(runs, matrix, device, results_dir / "peers.png")
    print(table)
    say(f"wrote {results_dir}/peers.{{json,md,png}}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
