"""Soak: `r1local serve` under many concurrent clients, with clients that leave mid-stream
and hostile requests mixed in. The claim: no good request is lost, every hostile one gets a
4xx JSON answer, and the server's memory stays flat.

    .venv/bin/python bench/serve_soak.py [--clients 16] [--per-client 500] [--disconnects 100]
                                         [--hostile 20] [--max-tokens 24]

The server is a real `r1local serve` subprocess on 127.0.0.1 (a free port, a scratch
R1LOCAL_HOME) serving the micro reasoner (tests/micro_reasoner.py), stopped at the end.
Each client runs its share of the schedule in turn: --clients x --per-client requests in
all, of which --disconnects are streams the client drops after two chunks and --hostile are
hostile; the rest are good requests, spread over both APIs, streaming or not, whose greedy
answers are checked word for word. A good request is "lost" when it fails, ends without
its final chunk, or answers other words. The server's RSS is read from /proc (Linux).

Prints a table and writes it to bench/results/serve_soak.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from serve_load import _stop  # (the same server stop: TERM, then KILL after 30 s)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

MAX_BODY = "1M"  # the soak's --max-body: the oversized bodies stay cheap to send
QUESTION, ANSWER = "Say hello.", "Hello!"
THINKING = "The user wants a greeting."


@dataclass
class Tally:
    good_ok: int = 0
    good_lost: int = 0
    disconnects: int = 0  # streams dropped while the server still had chunks to send
    hostile_4xx: int = 0
    hostile_other: int = 0
    lost: list[str] = field(default_factory=list)
    hostile_wrong: list[str] = field(default_factory=list)
    disconnect_errors: list[str] = field(default_factory=list)
    done: int = 0


# ---- the good requests: four shapes, each checked against the greedy answer ---------------

def _ollama_body(stream: bool, max_tokens: int, chat: bool) -> dict:
    body = {"model": "", "stream": stream, "options": {"temperature": 0, "num_predict": max_tokens}}
    if chat:
        body["messages"] = [{"role": "user", "content": QUESTION}]
    else:
        body["prompt"] = QUESTION
    return body


async def _good(client, url: str, i: int, max_tokens: int) -> str | None:
    """None when the answer is right, else what went wrong."""
    kind = i % 4
    if kind == 0:  # Ollama generate, one JSON object
        r = await client.post(url + "/api/generate", json=_ollama_body(False, max_tokens, False))
        if r.status_code != 200:
            return f"generate HTTP {r.status_code}: {r.text[:100]}"
        got = r.json()
        return None if (got.get("thinking"), got.get("response")) == (THINKING, ANSWER) else \
            f"generate answered {got.get('response')!r}"
    if kind == 1:  # Ollama chat, NDJSON stream
        think, text, done = [], [], False
        async with client.stream("POST", url + "/api/chat",
                                 json=_ollama_body(True, max_tokens, True)) as r:
            if r.status_code != 200:
                return f"chat HTTP {r.status_code}"
            async for line in r.aiter_lines():
                if not line:
                    continue
                obj = json.loads(line)
                if "error" in obj:
                    return f"chat error {obj['error'][:100]}"
                think.append(obj["message"].get("thinking", ""))
                text.append(obj["message"]["content"])
                done = done or obj["done"]
        return None if done and ("".join(think), "".join(text)) == (THINKING, ANSWER) else \
            f"chat stream ended {done=} with {''.join(text)!r}"
    body = {"model": "", "temperature": 0, "max_tokens": max_tokens, "stream": kind == 3,
            "messages": [{"role": "user", "content": QUESTION}]}
    if kind == 2:  # OpenAI chat, one JSON object
        r = await client.post(url + "/v1/chat/completions", json=body)
        if r.status_code != 200:
            return f"openai HTTP {r.status_code}: {r.text[:100]}"
        msg = r.json()["choices"][0]["message"]
        return None if (msg.get("reasoning_content"), msg["content"]) == (THINKING, ANSWER) else \
            f"openai answered {msg['content']!r}"
    text, finished = [], False  # OpenAI chat, SSE stream
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return f"openai stream HTTP {r.status_code}"
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                finished = True
                break
            obj = json.loads(line[6:])
            if "error" in obj:
                return f"openai stream error {obj['error']}"
            for ch in obj["choices"]:
                text.append(ch["delta"].get("content") or "")
    return None if finished and "".join(text) == ANSWER else \
        f"openai stream ended {finished=} with {''.join(text)!r}"


async def _disconnect(client, url: str, i: int) -> bool:
    """Stream a long reply and leave after two chunks; True when the stream was unfinished
    (a reply that ends sooner is no disconnect; a failure raises)."""
    body = {"model": "", "prompt": f"Tell me a long story, number {i}.", "stream": True,
            "options": {"temperature": 1.0, "num_predict": 400, "seed": i}}
    async with client.stream("POST", url + "/api/generate", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:100]!r}")
        seen = 0
        async for line in r.aiter_lines():
            if not line:
                continue
            obj = json.loads(line)
            if "error" in obj:
                raise RuntimeError(obj["error"][:100])
            if obj.get("done"):
                return False
            seen += 1
            if seen == 2:
                return True  # leaving the block closes the connection mid-stream
    return False


# ---- the hostile ones: each must be a 4xx with a JSON body -----------------------------

def _hostile_requests() -> list[tuple[str, dict]]:
    hi = {"model": "", "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
    return [
        ("DNS-rebinding Host", {"path": "/api/generate", "json": hi,
                                "headers": {"Host": "evil.example"}}),
        ("cross-site text/plain pull", {"path": "/api/pull", "content": '{"model": "7b"}',
                                        "headers": {"Content-Type": "text/plain"}}),
        ("path as a model name", {"path": "/api/show", "json": {"model": "/etc/passwd"}}),
        ("300-character name", {"path": "/api/show", "json": {"model": "a" * 300}}),
        ("num_ctx 10**9", {"path": "/api/generate", "json": {**hi, "options": {"num_ctx": 10 ** 9}}}),
        ("seed 10**30", {"path": "/v1/completions",
                         "json": {"model": "", "prompt": "hi", "seed": 10 ** 30}}),
        ("malformed JSON", {"path": "/v1/chat/completions", "content": "{not json",
                            "headers": {"Content-Type": "application/json"}}),
        ("prompt past the context", {"path": "/api/generate",
                                     "json": {**hi, "prompt": "word " * 200_000}}),
        ("unknown model", {"path": "/api/chat", "json": {"model": "no-such-model", "messages": [
            {"role": "user", "content": "hi"}]}}),
        ("oversized declared body", {"raw": "declared"}),
        ("oversized chunked body", {"raw": "chunked"}),
    ]


async def _raw_oversized(port: int, how: str) -> tuple[int, bool]:
    """A body past --max-body, sent by hand so that the answer can come before the body
    ends: (status, whether the answer is a JSON error)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framing = "Transfer-Encoding: chunked" if how == "chunked" else f"Content-Length: {64 << 20}"
    writer.write(f"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                 f"application/json\r\n{framing}\r\n\r\n".encode())
    answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    piece = b"x" * 65536
    try:
        for _ in range(1024):  # 64 MiB at most
            if answer.done():
                break
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if how == "chunked" else piece)
            await writer.drain()
    except ConnectionError:
        pass  # the server answered and closed: the answer is read below
    try:
        head = await asyncio.wait_for(answer, 30)
        body = await asyncio.wait_for(reader.read(4096), 30)
        return int(head.split()[1]), b'"error"' in body
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
        return 0, False
    finally:
        writer.close()


async def _hostile(client, url: str, port: int, i: int) -> tuple[str, int, bool]:
    kinds = _hostile_requests()
    name, req = kinds[i % len(kinds)]
    if "raw" in req:
        return (name, *await _raw_oversized(port, req["raw"]))
    r = await client.post(url + req["path"], json=req.get("json"), content=req.get("content"),
                          headers=req.get("headers"))
    try:
        is_json = "error" in r.json()
    except ValueError:
        is_json = False
    return name, r.status_code, is_json


# ---- the run -----------------------------------------------------------------------------

def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _schedule(total: int, disconnects: int, hostile: int, seed: int = 0) -> list[str]:
    jobs = ["disconnect"] * disconnects + ["hostile"] * hostile
    jobs += ["good"] * (total - len(jobs))
    random.Random(seed).shuffle(jobs)
    return jobs


async def _soak(url: str, port: int, pid: int, args) -> tuple[Tally, list[tuple[int, int]], float]:
    import httpx

    total = args.clients * args.per_client
    jobs = _schedule(total, args.disconnects, args.hostile)
    tally = Tally()
    todo = iter(enumerate(jobs))
    hostile_seq = itertools.count()  # each kind of hostile request in turn

    async def worker(client) -> None:
        for i, job in todo:
            try:
                if job == "good":
                    problem = await _good(client, url, i, args.max_tokens)
                    if problem is None:
                        tally.good_ok += 1
                    else:
                        tally.good_lost += 1
                        tally.lost.append(problem)
                elif job == "disconnect":
                    left = await _disconnect(client, url, i)  # (not `+= await`: a race)
                    tally.disconnects += left
                else:
                    name, status, is_json = await _hostile(client, url, port, next(hostile_seq))
                    if 400 <= status < 500 and is_json:
                        tally.hostile_4xx += 1
                    else:
                        tally.hostile_other += 1
                        tally.hostile_wrong.append(f"{name}: {status}")
            except Exception as err:  # a broken answer (bad JSON, a missing field) counts too
                if job == "good":
                    tally.good_lost += 1
                    tally.lost.append(f"{type(err).__name__}: {err}")
                elif job == "hostile":
                    tally.hostile_other += 1
                    tally.hostile_wrong.append(f"{type(err).__name__}")
                else:
                    tally.disconnect_errors.append(f"{type(err).__name__}: {err}")
            tally.done += 1

    async def sampler() -> None:
        while True:
            await asyncio.sleep(0.5)
            samples.append((tally.done, _rss(pid)))

    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:
        # warm up (not counted): every shape once, so the start sample has the buffers and
        # caches a first request of each kind allocates
        for i in range(4):
            await _good(client, url, i, args.max_tokens)
        await _disconnect(client, url, -1)
        for i in range(len(_hostile_requests())):
            await _hostile(client, url, port, i)
        await asyncio.sleep(1.0)
        samples: list[tuple[int, int]] = [(0, _rss(pid))]
        t0 = time.perf_counter()
        watch = asyncio.ensure_future(sampler())
        await asyncio.gather(*(worker(client) for _ in range(args.clients)))
        wall = time.perf_counter() - t0
        watch.cancel()
    await asyncio.sleep(1.0)  # let the last cancelled generations finish
    samples.append((tally.done, _rss(pid)))
    return tally, samples, wall


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model: Path, home: str, threads: int) -> tuple[subprocess.Popen, str, int, Path]:
    import httpx

    port = _free_port()
    env = {**os.environ, "R1LOCAL_HOME": home}
    env.pop("R1LOCAL_API_KEY", None)
    log = ROOT / "bench" / "results" / "serve_soak.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "r1local", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--model", str(model), "--keep-alive", "-1", "--threads", str(threads),
           "--max-body", MAX_BODY]
    with open(log, "w") as f:  # a pipe nobody reads would fill up and block the server
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=f)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/api/version", timeout=2).status_code == 200:
                return proc, url, port, log
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not come up")


def _at(samples: list[tuple[int, int]], done: int) -> int:
    return min(samples, key=lambda s: abs(s[0] - done))[1]


def _report(args, tally: Tally, samples, wall: float, model: Path, tracebacks: int) -> str:
    from r1local.units import fmt_bytes

    total = args.clients * args.per_client
    good = total - args.disconnects - args.hostile
    start, mid, end = samples[0][1], _at(samples, total // 2), samples[-1][1]
    peak = max(s[1] for s in samples)
    lines = [
        f"Soak: {args.clients} concurrent clients, {total} requests ({good} good, "
        f"{args.disconnects} dropped mid-stream, {args.hostile} hostile), {model.name}, "
        f"max {args.max_tokens} tokens, {wall:.0f} s\n",
        "| good ok / lost | mid-stream disconnects | hostile 4xx / other | tracebacks in log "
        "| RSS start | RSS middle | RSS end | RSS peak |",
        "|---|---|---|---|---|---|---|---|",
        f"| {tally.good_ok} / {tally.good_lost} | {tally.disconnects} of {args.disconnects} | "
        f"{tally.hostile_4xx} / {tally.hostile_other} | {tracebacks} | {fmt_bytes(start)} | "
        f"{fmt_bytes(mid)} | {fmt_bytes(end)} | {fmt_bytes(peak)} |",
    ]
    steps = " ".join(fmt_bytes(_at(samples, total * k // 10)) for k in range(11))
    out = "\n".join(lines) + f"\n\nRSS at every tenth of the requests: {steps}\n"
    if tally.lost:
        out += f"\nlost: {sorted(set(tally.lost))[:5]}\n"
    if tally.disconnect_errors:
        out += f"\nclient errors while disconnecting: {sorted(set(tally.disconnect_errors))[:5]}\n"
    if tally.hostile_wrong:
        out += f"\nhostile not answered 4xx: {sorted(set(tally.hostile_wrong))}\n"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--per-client", type=int, default=500, help="requests each client sends")
    ap.add_argument("--disconnects", type=int, default=100)
    ap.add_argument("--hostile", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=24,
                    help="enough for the micro reasoner's whole greedy answer")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.disconnects + args.hostile > args.clients * args.per_client:
        ap.error("more disconnects and hostile requests than requests")

    import micro_reasoner

    model = micro_reasoner.micro_reasoner_gguf()
    threads = args.threads or os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="r1local-soak-") as home:
        proc, url, port, log = _start(model, home, threads)
        try:
            tally, samples, wall = asyncio.run(_soak(url, port, proc.pid, args))
        finally:
            _stop(proc)
    tracebacks = log.read_text(errors="replace").count("Traceback")
    table = _report(args, tally, samples, wall, model, tracebacks)
    print(table)
    out = ROOT / "bench" / "results" / "serve_soak.md"
    out.write_text(table)
    clean = not tally.good_lost and not tally.hostile_other and not tracebacks
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
