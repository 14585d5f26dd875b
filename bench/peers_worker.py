"""One contestant of ``bench/peers.py``, in a process of its own (so that its peak RSS is its
own), run with the python of the contestant's environment:

    PYTHON bench/peers_worker.py JOB.json

JOB.json (written by ``peers.py``) names the contestant, its model, precision, device, thread
count, the prompts (a ``.npy`` of token ids, ``[batch, prompt]``), the number of new tokens,
the decoding chains to time and the file to write the result to. The result is JSON: the
timed runs (``decode.Run`` fields plus prompt, new tokens and this process's peak RSS), the
first row's greedy tokens (to check that the contestants run the same weights), the execution
providers the sessions really use and the versions of the packages that did the work.

Imports only the standard library and numpy at module level: each contestant's packages are
imported by its runner, inside the environment that has them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
# Python puts a script's folder first on sys.path, where a benchmark named like a standard
# module (a bench/profile.py: `profile`, which cProfile imports) hides that module from every
# import. Keep bench/ last: its modules (decode) still import, the standard ones win.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH]
sys.path.append(str(BENCH))

from decode import GREEDY, TOP_P, from_stamps  # noqa: E402

WARMUP_PROMPT, WARMUP_NEW = 16, 4  # a short generate first: sessions and arenas settle
CHECK_TOKENS = 16  # greedy tokens of the first row kept for the same-weights check


@dataclass
class Job:
    contestant: str  # "ours", "transformers", "optimum" or "genai"
    model: str  # the artifact / model directory
    precision: str
    device: str  # "cpu" or "cuda"
    threads: int
    prompts: str  # .npy with int64 token ids, [batch, prompt]
    new_tokens: int
    chains: list[str]
    result: str  # where the result JSON goes


@dataclass
class Timed:
    """One generate call: its start, the time each step's logits were ready, the first row's
    new tokens."""

    start: float
    stamps: list[float]
    tokens: list[int]


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM) in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------------------
# Contestants: each returns a function generate(prompts, new, chain) -> Timed, and facts.


def ours(job: Job) -> tuple[Callable[[np.ndarray, int, str], Timed], dict[str, Any]]:
    """Our runtime; a step is stamped when its logits reach ``SamplerChain.select`` (as in
    ``bench/decode.py``)."""
    import onnxruntime

    import runtime
    from runtime import sampling

    model = runtime.load(job.model, device=job.device, threads=job.threads)
    if not isinstance(model, runtime.DecoderModel):
        raise RuntimeError(f"{job.model} is not a decoder-only artifact")
    model.special_tokens.pop("eos", None)  # random weights: make every row run to the end

    def generate(prompts: np.ndarray, new: int, chain: str) -> Timed:
        stamps: list[float] = []
        original = sampling.SamplerChain.select

        def stamped(self: Any, logits: np.ndarray, state: Any) -> np.ndarray:
            stamps.append(time.perf_counter())
            return original(self, logits, state)

        sampling.SamplerChain.select = stamped  # type: ignore[method-assign]
        try:
            start = time.perf_counter()
            result = model.generate(list(prompts), max_new_tokens=new, chain=chain, seed=0)
        finally:
            sampling.SamplerChain.select = original  # type: ignore[method-assign]
        return Timed(start, stamps, [int(t) for t in result.tokens[0]])

    facts = {"providers": list(model.providers), "onnxruntime": onnxruntime.__version__}
    return generate, facts


def hf_generate(model: Any, device: str) -> Callable[[np.ndarray, int, str], Timed]:
    """transformers' ``generate`` on ``model`` (a transformers model or Optimum's ORT model);
    a step is stamped by a logits processor, which generate calls once per step right after
    the forward pass (after a device synchronize on CUDA)."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def generate(prompts: np.ndarray, new: int, chain: str) -> Timed:
        stamps: list[float] = []

        class Stamp(LogitsProcessor):
            def __call__(self, input_ids: Any, scores: Any) -> Any:
                sync()
                stamps.append(time.perf_counter())
                return scores

        ids = torch.from_numpy(prompts).to(device)
        sampling = chain == TOP_P
        options: dict[str, Any] = dict(
            max_new_tokens=new,
            min_new_tokens=new,  # eos must not stop a row
            do_sample=sampling,
            pad_token_id=0,
        )
        if sampling:
            options.update(top_p=0.9, top_k=0, temperature=1.0)
        torch.manual_seed(0)
        with torch.inference_mode():
            start = time.perf_counter()
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                logits_processor=LogitsProcessorList([Stamp()]),
                **options,
            )
        return Timed(start, stamps, out[0, prompts.shape[1] :].tolist())

    return generate


def transformers_(job: Job) -> tuple[Callable[[np.ndarray, int, str], Timed], dict[str, Any]]:
    """transformers' LlamaForCausalLM, eager attention, its dynamic KV cache."""
    import torch
    import transformers

    if job.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"torch {torch.__version__} in {sys.prefix} cannot use CUDA; install a CUDA build "
            "of torch there to run transformers on the GPU"
        )
    torch.set_num_threads(job.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[job.precision]
    llama: Any = transformers.LlamaForCausalLM
    model = llama.from_pretrained(job.model, attn_implementation="eager", dtype=dtype)
    model = model.to(job.device).eval()
    facts = {"torch": torch.__version__, "transformers": transformers.__version__}
    return hf_generate(model, job.device), facts


def optimum(job: Job) -> tuple[Callable[[np.ndarray, int, str], Timed], dict[str, Any]]:
    """Optimum's ORTModelForCausalLM on its own ONNX export, with ``job.threads`` intra-op
    threads (IOBinding on CUDA, as Optimum does by default there)."""
    import onnxruntime as ort
    import optimum.onnxruntime as opt
    import torch
    import transformers

    options = ort.SessionOptions()
    options.intra_op_num_threads = job.threads
    options.inter_op_num_threads = 1
    torch.set_num_threads(job.threads)  # generate's own tensor work (sampling, concat of ids)
    provider = "CUDAExecutionProvider" if job.device == "cuda" else "CPUExecutionProvider"
    model = opt.ORTModelForCausalLM.from_pretrained(
        job.model, provider=provider, session_options=options, use_cache=True
    )
    providers = model.model.get_providers()
    if providers[0] != provider:
        raise RuntimeError(f"Optimum's session runs on {providers}, not {provider}")
    facts = {
        "providers": providers,
        "onnxruntime": ort.__version__,
        "optimum-onnx": _version("optimum-onnx"),
        "transformers": transformers.__version__,
    }
    return hf_generate(model, job.device), facts


def genai(job: Job) -> tuple[Callable[[np.ndarray, int, str], Timed], dict[str, Any]]:
    """onnxruntime-genai's Generator on its model builder's model; a step is stamped when
    ``generate_next_token`` returns (it runs the forward pass of the previous token, then
    selects; the first call only selects from the prompt's logits)."""
    import onnxruntime_genai as og

    config = og.Config(job.model)
    config.clear_providers()
    if job.device == "cuda":
        config.append_provider("cuda")
    session = {"intra_op_num_threads": job.threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": session}}}))
    model = og.Model(config)

    def generate(prompts: np.ndarray, new: int, chain: str) -> Timed:
        batch, length = prompts.shape
        params = og.GeneratorParams(model)
        search: dict[str, Any] = dict(
            batch_size=batch,
            max_length=length + new,
            min_length=length + new,  # eos must not stop a row
            do_sample=chain == TOP_P,
            random_seed=0,
        )
        if chain == TOP_P:
            search.update(top_p=0.9, top_k=0, temperature=1.0)  # top_k 0: nucleus alone
        params.set_search_options(**search)
        generator = og.Generator(model, params)
        stamps = []
        start = time.perf_counter()
        generator.append_tokens(prompts.astype(np.int32))
        for _ in range(new):
            generator.generate_next_token()
            stamps.append(time.perf_counter())
        tokens = np.asarray(generator.get_sequence(0))[length:].tolist()
        return Timed(start, stamps, [int(t) for t in tokens])

    facts = {"onnxruntime-genai": og.__version__, "onnxruntime": _version("onnxruntime")}
    return generate, facts


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


CONTESTANTS = {"ours": ours, "transformers": transformers_, "optimum": optimum, "genai": genai}


def main() -> int:
    job = Job(**json.loads(Path(sys.argv[1]).read_text()))
    prompts = np.load(job.prompts)
    batch, length = prompts.shape
    generate, facts = CONTESTANTS[job.contestant](job)
    generate(prompts[:, :WARMUP_PROMPT], WARMUP_NEW, GREEDY)
    runs, tokens = [], {}
    for chain in job.chains:
        print(
            f"{job.contestant} {job.precision} batch {batch} prompt {length} {chain}",
            file=sys.stderr,
        )
        timed = generate(prompts, job.new_tokens, chain)
        if len(timed.stamps) != job.new_tokens or len(timed.tokens) != job.new_tokens:
            raise RuntimeError(
                f"made {len(timed.tokens)} tokens in {len(timed.stamps)} steps, "
                f"not {job.new_tokens}: eos stopped a row or the stamps are wrong"
            )
        run = from_stamps(job.contestant, job.precision, batch, chain, timed.start, timed.stamps)
        runs.append(asdict(run))
        tokens[chain] = timed.tokens[:CHECK_TOKENS]
        print(f"  {run.ms_per_step:.1f} ms/step, prefill {run.prefill_ms:.0f} ms", file=sys.stderr)
    result = {"runs": runs, "tokens": tokens, "peak_rss_mib": peak_rss_mib(), "facts": facts}
    Path(job.result).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
