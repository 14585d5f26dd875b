"""Serving under load: ``llmspec serve`` with continuous batching against the same artifact
served one request at a time (issue 15).

    .venv/bin/python bench/serve_load.py [--artifact DIR] [--clients 1,4,16] [--tokens 64]

The artifact: by default bench/peers.py's 125M Llama-style model (seeded random weights,
imported and exported fp32, made once in ``bench/results/peers/``); ``--artifact`` serves any
decoder artifact. Two servers, each its own process on 127.0.0.1 (``llmspec serve``):

* **continuous**: ``--max-batch 16``: requests join the running batch at step boundaries;
* **one at a time**: ``--max-batch 1``: the same server, engine and graphs, one row at a time
  (what a server without batching does; requests wait in its queue).

At each level of concurrency ``c``, ``c`` clients (httpx, asyncio, in this process) each send
``--requests`` streaming ``/v1/completions`` requests one after another: a random prompt of
``--prompt`` tokens, ``max_tokens`` = ``--tokens``, greedy, ``logprobs: 0`` so that every token
is its own server-sent event (a byte-level tokenizer's text of a token can be empty, and empty
events are not sent), ``stream_options.include_usage`` for the exact token count. Measured
per level: aggregate tokens/s (completion tokens of all requests / the level's wall time), time
to first token (request sent -> first token's event) and inter-token latency (gaps between a
request's token events), p50 and p99 over all requests / all gaps.

Prints a Markdown table and the ratios (continuous at 16 clients / at 1 client: the issue's
target is >= 4x; continuous / one at a time at each level) and writes
``bench/results/serve_load.json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != BENCH]
sys.path.append(str(BENCH))

RESULTS = ROOT / "bench" / "results"
CONFIGS = {"continuous": 16, "one at a time": 1}
START_TIMEOUT_S = 300
MODEL = ""  # the served model's id, from /v1/models


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def default_artifact() -> Path:
    """bench/peers.py's fp32 artifact of its Llama-style model, made on first use."""
    import peers

    key = peers.hf_folder()
    return peers.prepare("ours", "fp32", "cpu", key, 0.0).model


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(artifact: Path, max_batch: int, threads: int | None) -> tuple[Any, str]:
    port = free_port()
    command = [sys.executable, "-m", "llmspec", "serve", str(artifact), "--port", str(port)]
    command += ["--max-batch", str(max_batch), "--max-queue", "1024"]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited: {process.stderr.read() if process.stderr else ''}"
            )
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                global MODEL
                MODEL = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"the server did not answer /health within {START_TIMEOUT_S} s")


async def one_request(client: Any, url: str, prompt: str, tokens: int) -> dict[str, Any]:
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0,
        "logprobs": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    stamps: list[float] = []
    usage: dict[str, int] = {}
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {await response.aread()!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk.get("choices"):
                stamps.append(time.perf_counter())
    return {
        "ttft_s": stamps[0] - sent if stamps else float("nan"),
        "gaps_s": np.diff(stamps).tolist(),
        "tokens": int(usage.get("completion_tokens", 0)),
    }


async def level(url: str, clients: int, requests: int, prompts: list[str], tokens: int) -> dict:
    import httpx

    async def client_loop(index: int, client: Any) -> list[dict]:
        out = []
        for k in range(requests):
            prompt = prompts[(index * requests + k) % len(prompts)]
            out.append(await one_request(client, url, prompt, tokens))
        return out

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(client_loop(i, client) for i in range(clients)))
        wall = time.perf_counter() - started
    flat = [r for rs in results for r in rs]
    ttft = np.array([r["ttft_s"] for r in flat]) * 1000
    gaps = np.array([g for r in flat for g in r["gaps_s"]]) * 1000
    total = sum(r["tokens"] for r in flat)
    return {
        "clients": clients,
        "requests": len(flat),
        "tokens": total,
        "wall_s": wall,
        "tokens_per_s": total / wall,
        "ttft_p50_ms": float(np.percentile(ttft, 50)),
        "ttft_p99_ms": float(np.percentile(ttft, 99)),
        "itl_p50_ms": float(np.percentile(gaps, 50)) if gaps.size else float("nan"),
        "itl_p99_ms": float(np.percentile(gaps, 99)) if gaps.size else float("nan"),
    }


def random_prompts(count: int, length: int, seed: int = 0) -> list[str]:
    """Printable ASCII of ``length`` characters (one token each for a byte-level tokenizer)."""
    rng = np.random.default_rng(seed)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz     .,"))
    return ["".join(rng.choice(alphabet, size=length)) for _ in range(count)]


def markdown(rows: list[dict]) -> str:
    lines = [
        "| server | clients | requests | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms "
        "| ITL p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['server']} | {r['clients']} | {r['requests']} | {r['tokens_per_s']:.1f} | "
            f"{r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | {r['itl_p50_ms']:.1f} | "
            f"{r['itl_p99_ms']:.1f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Aggregate tokens/s and TTFT p50 against the number of clients, one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, ttft) = plt.subplots(1, 2, figsize=(11, 4))
    for server in dict.fromkeys(r["server"] for r in rows):
        mine = [r for r in rows if r["server"] == server]
        clients = [r["clients"] for r in mine]
        speed.plot(clients, [r["tokens_per_s"] for r in mine], marker="o", label=server)
        ttft.plot(clients, [r["ttft_p50_ms"] for r in mine], marker="o", label=server)
    speed.set(xlabel="concurrent clients", ylabel="aggregate tokens/s", xscale="log")
    ttft.set(xlabel="concurrent clients", ylabel="time to first token p50 (ms)", xscale="log")
    ttft.set_yscale("log")
    for axis in (speed, ttft):
        axis.set_xticks(sorted({r["clients"] for r in rows}))
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle("llmspec serve: continuous batching vs one request at a time")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, help="a decoder artifact (default: peers')")
    parser.add_argument("--clients", default="1,4,16", help="concurrency levels")
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens per request")
    parser.add_argument("--prompt", type=int, default=32, help="prompt length in characters")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS")
    parser.add_argument("--only", default=",".join(CONFIGS), help="servers to run")
    args = parser.parse_args()
    artifact = args.artifact or default_artifact()
    levels = [int(c) for c in args.clients.split(",")]
    prompts = random_prompts(64, args.prompt)
    rows: list[dict] = []
    for name in [n.strip() for n in args.only.split(",")]:
        process, url = start_server(artifact, CONFIGS[name], args.threads)
        try:
            asyncio.run(level(url, 1, 1, prompts, 8))  # warm-up
            for clients in levels:
                say(f"{name}: {clients} clients x {args.requests} requests")
                row = asyncio.run(level(url, clients, args.requests, prompts, args.tokens))
                rows.append({"server": name, **row})
                say(f"  {row['tokens_per_s']:.1f} tokens/s, TTFT p50 {row['ttft_p50_ms']:.0f} ms")
        finally:
            process.terminate()
            process.wait(60)
    table = markdown(rows)
    by = {(r["server"], r["clients"]): r for r in rows}
    ratios = []
    if ("continuous", 1) in by and ("continuous", max(levels)) in by:
        top = (
            by[("continuous", max(levels))]["tokens_per_s"] / by[("continuous", 1)]["tokens_per_s"]
        )
        ratios.append(f"continuous, {max(levels)} clients / 1 client: {top:.2f}x tokens/s")
    for clients in levels:
        if ("continuous", clients) in by and ("one at a time", clients) in by:
            ratio = (
                by[("continuous", clients)]["tokens_per_s"]
                / by[("one at a time", clients)]["tokens_per_s"]
            )
            ratios.append(f"continuous / one at a time at {clients} clients: {ratio:.2f}x tokens/s")
    text = f"{table}\n\n" + "\n".join(f"- {line}" for line in ratios) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"artifact": str(artifact), "args": {k: str(v) for k, v in vars(args).items()}}
    (RESULTS / "serve_load.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / "serve_load.md").write_text(text)
    plot(rows, RESULTS / "serve_load.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
