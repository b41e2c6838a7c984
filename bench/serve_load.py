"""Serving under load: concurrent streaming clients against `r1local serve`, side by side
in one run with llama-cpp-python's own server (`python -m llama_cpp.server`) and llama.cpp's
own `llama-server` (built from the same llama.cpp source as the wheel, bench/llama_tools.py),
on the same model (SmolLM2-135M-Instruct Q4_1) and settings (context per sequence, threads,
batch), through the same endpoint they all offer: POST /v1/chat/completions, `stream: true`.

    .venv/bin/python bench/serve_load.py [--clients 1,4,16] [--requests-per-client 4]
                                         [--max-tokens 32] [--parallel 4,16] [--rounds 1]

Each server runs once per --parallel level (r1local --parallel N against llama-server -np N;
r1local --parallel 1 is the serialised engine of before; llama_cpp.server serialises too)
and takes each --clients level in turn. With --rounds R the whole sequence of servers runs R
times, one round after another, and each row is the round with the median aggregate: these
machines are noisy, and the servers then share the noise.

Needs llama-cpp-python's server extras (sse-starlette, starlette-context, pydantic-settings).
llama_cpp.server is run with --interrupt_requests False: by default a new request cuts off
the one streaming, which would make it lose requests by design. Every request counts: one
that fails or ends without its [DONE] is "lost".

Prints a table and writes it to bench/results/serve_load.md. Targets: r1local's aggregate
tok/s at least llama-server's at the same N and clients (4 and 16), and at least 2x its own
serialised aggregate; p95 latency no worse than llama-server's; 0 lost requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

N_CTX, N_BATCH = 2048, 512
TOPICS = ["the sea", "a cat", "bread", "winter", "a bicycle", "the moon", "tea", "a city",
          "rain", "a library", "mountains", "a clock", "apples", "trains", "music", "a garden"]


@dataclass
class Result:
    ok: bool
    latency: float = 0.0
    ttft: float = 0.0
    tokens: int = 0
    error: str = ""


@dataclass
class Run:
    name: str
    wall: float = 0.0
    results: list[Result] = field(default_factory=list)


def _pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


async def _one(client, url: str, model: str, i: int, max_tokens: int) -> Result:
    import httpx

    body = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0.7,
            "seed": i, "messages": [{"role": "user",
                                     "content": f"Write one sentence about {TOPICS[i % len(TOPICS)]}."}]}
    t0 = time.perf_counter()
    first, tokens, done = 0.0, 0, False
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return Result(False, error=f"HTTP {r.status_code}: {(await r.aread())[:120]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data.strip() == "[DONE]":
                    done = True
                    break
                obj = json.loads(data)
                if "error" in obj:
                    return Result(False, error=str(obj["error"])[:120])
                for ch in obj.get("choices") or []:
                    d = ch.get("delta") or {}
                    if d.get("content") or d.get("reasoning_content"):
                        tokens += 1  # both servers send one chunk per generated token
                        if not first:
                            first = time.perf_counter() - t0
    except httpx.HTTPError as err:
        return Result(False, error=f"{type(err).__name__}: {err}")
    if not done:
        return Result(False, error="stream ended without [DONE]")
    return Result(True, time.perf_counter() - t0, first, tokens)


async def _load(name: str, url: str, model: str, clients: int, requests: int,
                max_tokens: int) -> Run:
    import httpx

    run = Run(name)
    todo = iter(range(requests))
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        await _one(client, url, model, 10_000, 2)  # warm-up: model loaded, caches hot

        async def worker() -> None:
            for i in todo:
                run.results.append(await _one(client, url, model, i, max_tokens))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        run.wall = time.perf_counter() - t0
    return run


def _wait_ready(url: str, proc: subprocess.Popen, path: str, log: Path,
                timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + path, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server at {url} did not come up")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(kind: str, model: Path, threads: int, parallel: int = 1) -> tuple[subprocess.Popen, str, str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ}
    env.pop("R1LOCAL_API_KEY", None)
    if kind == "r1local":
        cmd = [sys.executable, "-m", "r1local", "serve", "--port", str(port), "--model",
               str(model), "--ctx", str(N_CTX), "--threads", str(threads), "--keep-alive", "-1",
               "--parallel", str(parallel), "--max-queue", "4096"]
        name = str(model)
    elif kind == "llama-server":
        from llama_tools import bench_env, build_tool

        exe = build_tool("llama-server")
        env = bench_env(exe)
        # -c is the whole KV cache, split over the -np slots: N_CTX for each, as r1local's
        cmd = [str(exe), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
               "-c", str(N_CTX * parallel), "-np", str(parallel), "-b", str(N_BATCH),
               "-t", str(threads), "-tb", str(threads), "-fa", "off", "-ngl", "0",
               "--no-webui"]
        name = model.name
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
               "127.0.0.1", "--port", str(port), "--n_ctx", str(N_CTX), "--n_batch",
               str(N_BATCH), "--n_threads", str(threads), "--n_threads_batch", str(threads),
               "--interrupt_requests", "False"]
        name = str(model)
    # the servers' logs go to a file: a pipe nobody reads would fill up and block them
    log = ROOT / "bench" / "results" / f"serve_load.{kind}-{parallel}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=f)
    _wait_ready(url, proc, "/v1/models", log)
    return proc, url, name


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _row(run: Run, requests: int, clients: int) -> dict:
    ok = [r for r in run.results if r.ok]
    tokens = sum(r.tokens for r in ok)
    return {
        "server": run.name, "clients": clients, "ok": len(ok), "lost": requests - len(ok),
        "p50": _pct([r.latency for r in ok], 0.5), "p95": _pct([r.latency for r in ok], 0.95),
        "ttft50": _pct([r.ttft for r in ok], 0.5), "ttft95": _pct([r.ttft for r in ok], 0.95),
        "tok_s": tokens / run.wall if run.wall else 0.0, "tokens": tokens, "wall": run.wall,
        "errors": sorted({r.error for r in run.results if not r.ok})[:3],
    }


def _table(rows: list[dict], args, threads: int, model: Path) -> str:
    head = (f"Serving load{f' (median of {args.rounds} rounds)' if args.rounds > 1 else ''}: "
            f"{args.requests_per_client} requests per client of max "
            f"{args.max_tokens} tokens, {model.name}, context {N_CTX} per sequence, {threads} "
            "threads, POST /v1/chat/completions (stream)\n\n")
    lines = ["| server | clients | ok / lost | p50 latency s | p95 latency s | p50 TTFT s "
             "| p95 TTFT s | tokens | aggregate tok/s |", "|---|---:|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['server']} | {r['clients']} | {r['ok']} / {r['lost']} | "
                     f"{r['p50']:.2f} | {r['p95']:.2f} | {r['ttft50']:.2f} | {r['ttft95']:.2f} | "
                     f"{r['tokens']} | {r['tok_s']:.1f} |")
    out = head + "\n".join(lines) + "\n"
    ratios = []
    by = {(r["server"], r["clients"]): r for r in rows}
    for (server, clients), r in by.items():
        if not server.startswith("r1local") or server.endswith("--parallel 1"):
            continue
        n = server.rsplit(" ", 1)[-1]
        ref = by.get((f"llama-server -np {n}", clients))
        alone = by.get(("r1local --parallel 1", clients))
        if ref and ref["tok_s"]:
            ratios.append(f"| {server} / llama-server -np {n} | {clients} | "
                          f"{r['tok_s'] / ref['tok_s']:.2f}x aggregate | "
                          f"{r['p95'] / ref['p95']:.2f}x p95 latency |"
                          + (f" {r['tok_s'] / alone['tok_s']:.2f}x its serialised aggregate |"
                             if alone and alone["tok_s"] else " |"))
    if ratios:
        out += ("\n| ratio | clients | aggregate | p95 | vs --parallel 1 |\n|---|---:|---|---|---|\n"
                + "\n".join(ratios) + "\n")
    for r in rows:
        if r["errors"]:
            out += f"\n{r['server']} ({r['clients']} clients) errors: {r['errors']}\n"
    return out


def _levels(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="1,4,16", help="concurrent clients, comma-separated")
    ap.add_argument("--requests-per-client", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--parallel", default="4,16", help="r1local --parallel / llama-server -np")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", choices=["r1local", "llama_cpp", "llama-server"], default=None)
    ap.add_argument("--rounds", type=int, default=1, help="runs of every server; the median is kept")
    args = ap.parse_args()

    import model_fixtures

    model = model_fixtures.smollm2_path()
    threads = args.threads or os.cpu_count() or 2
    servers = [("r1local", 1, "r1local --parallel 1"), ("llama_cpp", 1, "llama_cpp.server")]
    for n in _levels(args.parallel):
        servers += [("r1local", n, f"r1local --parallel {n}"),
                    ("llama-server", n, f"llama-server -np {n}")]
    runs: dict[tuple[str, int], list[dict]] = {}
    for round_ in range(args.rounds):
        for kind, n, label in servers:
            if args.only and args.only != kind:
                continue
            proc, url, name = _start(kind, model, threads, n)
            try:
                for clients in _levels(args.clients):
                    requests = clients * args.requests_per_client
                    run = asyncio.run(_load(label, url, name, clients, requests,
                                            args.max_tokens))
                    row = _row(run, requests, clients)
                    runs.setdefault((label, clients), []).append(row)
                    print(f"round {round_ + 1}: {label}, {clients} clients: {row['ok']}/"
                          f"{requests} ok in {run.wall:.1f} s, {row['tok_s']:.1f} tok/s",
                          file=sys.stderr, flush=True)
            finally:
                _stop(proc)
    rows = []
    for tries in runs.values():  # the median round of each row (the lower one of two)
        mid = statistics.median_low([r["tok_s"] for r in tries])
        rows.append(next(r for r in tries if r["tok_s"] == mid))
        rows[-1]["lost"] = max(r["lost"] for r in tries)
    table = _table(rows, args, threads, model)
    print(table)
    out = ROOT / "bench" / "results" / "serve_load.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    return 0 if all(r["lost"] == 0 for r in rows if r["server"].startswith("r1local")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
