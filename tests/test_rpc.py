"""llama.cpp RPC workers end to end on loopback: real `r1local worker` processes, real
`r1local run --rpc` processes, real llama.cpp on both sides."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from r1local import rpc
from r1local.planner import plan_rpc

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def _rpc_or_skip() -> None:
    if rpc.available():
        return
    why = "the installed llama-cpp-python has no RPC backend (install.sh builds it with -DGGML_RPC=ON)"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture
def rpc_build() -> None:
    """Tests that need llama.cpp's RPC backend in the installed wheel."""
    _rpc_or_skip()


def r1local(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "r1local", *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode != 0 and p.stdout == "", (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("r1local: error: "), p.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerProcess:
    """`r1local worker` in a subprocess, up once it answers llama.cpp's hello."""

    def __init__(self, *args: str, port: int | None = None, env: dict | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "r1local", "worker", "--port", str(self.port), *args],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited: {self.proc.stderr.read()}")
            try:
                rpc.hello(self.endpoint, timeout=2)
                return
            except rpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def kill(self) -> None:
        """kill -9: the worker is gone at once, its connections with it."""
        self.proc.kill()
        self.proc.communicate()

    def stop(self) -> tuple[str, str]:
        self.proc.terminate()
        try:
            out, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return out, err


@pytest.fixture
def workers(rpc_build):
    started: list[WorkerProcess] = []

    def start(*args: str, port: int | None = None, env: dict | None = None) -> WorkerProcess:
        w = WorkerProcess(*args, port=port, env=env)
        started.append(w)
        return w

    yield start
    for w in started:
        if w.proc.poll() is None:
            w.stop()


GREEDY = ("--temperature", "0", "--top-k", "1", "--seed", "7")


@pytest.mark.parametrize("model, prompt, tokens", [
    ("smollm2", "Name three colors of the rainbow.", "40"),
    ("micro_reasoner", "What is 3+4?", "60"),
])
def test_split_over_two_workers_gives_the_same_greedy_tokens(request, workers, model, prompt, tokens):
    path = str(request.getfixturevalue(model))
    alone = r1local("run", path, prompt, "--max-tokens", tokens, *GREEDY)
    assert alone.returncode == 0, alone.stderr
    a, b = workers(), workers()
    split = r1local("run", path, prompt, "--max-tokens", tokens, *GREEDY,
                    "--rpc", f"{a.endpoint},{b.endpoint}")
    assert split.returncode == 0, split.stderr
    assert split.stdout == alone.stdout and split.stdout.strip()
    # the start line: one line saying where the layers went, the local CPU first
    line = next(x for x in split.stderr.splitlines() if a.endpoint in x)
    assert b.endpoint in line and line.index(a.endpoint) < line.index(b.endpoint)
    assert "output on " + b.endpoint in line
    if model == "smollm2":  # 30 layers: some stay here
        assert line.startswith("r1local: layers 0-") and "local CPU" in line
    for w in (a, b):  # each worker really served a client
        out, _ = w.stop()
        assert "Accepted client connection" in out


def test_workers_from_the_environment(workers, micro_reasoner):
    a = workers()
    p = r1local("run", str(micro_reasoner), "What is 3+4?", *GREEDY,
                env={rpc.RPC_ENV: a.endpoint})
    assert p.returncode == 0, p.stderr
    assert p.stdout == "3 + 4 = **7**.\n"
    assert f"output on {a.endpoint}" in p.stderr


def test_unreachable_worker_is_a_one_line_error_naming_it(rpc_build, micro_reasoner):
    port = free_port()  # nothing listens there
    line = one_line_error(r1local("run", str(micro_reasoner), "hi", "--rpc", f"127.0.0.1:{port}"))
    assert f"127.0.0.1:{port}" in line and "cannot reach RPC worker" in line


def test_malformed_rpc_list_is_refused(micro_reasoner):
    line = one_line_error(r1local("run", str(micro_reasoner), "hi", "--rpc", "localhost"))
    assert "bad RPC worker 'localhost'" in line
    # serve checks its list before it listens, from the flag or the environment
    line = one_line_error(r1local("serve", "--port", "0", env={rpc.RPC_ENV: "a:1,a:1"}))
    assert "RPC worker a:1 is listed twice" in line


def test_worker_reports_the_memory_it_offers(workers):
    w = workers("--mem", "256M")
    # the worker's own answer to llama.cpp's memory question, asked by another process: a
    # worker registered in this one would stay a device of every later load here, and
    # llama.cpp aborts asking a stopped worker for its memory
    p = subprocess.run([sys.executable, "-c", "import sys; from r1local import rpc; "
                        "print(rpc.connect([sys.argv[1]])[0].free_bytes)", w.endpoint],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert int(p.stdout) == 256 * MiB


def test_worker_refuses_a_non_loopback_address_without_the_flag(rpc_build):
    line = one_line_error(r1local("worker", "--host", "0.0.0.0", "--port", str(free_port())))
    assert "refusing to serve on 0.0.0.0" in line and "--allow-remote" in line


def test_worker_on_all_addresses_warns_once(workers):
    w = workers("--host", "0.0.0.0", "--allow-remote")
    _, err = w.stop()
    warnings = [x for x in err.splitlines() if "no authentication" in x]
    assert len(warnings) == 1
    assert f"ssh -L {w.port}:127.0.0.1:{w.port}" in warnings[0]


def test_worker_port_in_use_and_bad_address_are_one_line_errors(rpc_build):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = one_line_error(r1local("worker", "--port", str(port)))
        assert f"port {port} on 127.0.0.1 is already in use" in line
    line = one_line_error(r1local("worker", "--host", "300.1.2.3"))
    assert "bad address '300.1.2.3'" in line


def test_plan_rpc_boundaries_put_every_layer_where_the_line_says(smollm2):
    from r1local.ggufinfo import read_model_header
    from r1local.hardware import hypothetical
    from r1local.planner import plan_gguf
    from r1local.shapes import shape_from_gguf

    header = read_model_header(smollm2)
    shape = shape_from_gguf(header)
    plan = plan_gguf(header, hypothetical(ram=8 << 30))
    split = plan_rpc(shape, plan, [("a:1", 4 << 30), ("b:2", 8 << 30)])
    L = shape.n_layers
    assert split.fits and split.n_gpu_layers == L + 1 - split.parts[0].n_blocks
    # llama.cpp's rule: cumulative shares, normalised; layer il goes to the first device
    # whose split point exceeds (il - first offloaded) / offloaded
    total = sum(split.tensor_split)
    points = [sum(split.tensor_split[: k + 1]) / total for k in range(len(split.tensor_split))]
    start = L + 1 - split.n_gpu_layers
    owner = {}
    for il in range(start, L + 1):
        x = (il - start) / split.n_gpu_layers
        owner[il] = next(k for k, p in enumerate(points) if p > x)
    for k, part in enumerate(split.parts[1:]):
        for il in range(part.first, part.last + 1):
            assert owner[il] == k
    assert owner[L] == 1 and split.parts[2].output  # the output with the last worker
    # shares follow the memory: the worker with twice the memory has about twice the layers
    assert split.parts[2].n_blocks > split.parts[1].n_blocks


# ---------------------------------------------------------------------------
# A lost worker (the model runs in a child process: r1local.rpc_child)

COUNTING = "Count from 1 to 300, one number per line."  # a long reply, to be cut


def test_worker_killed_mid_reply_ends_run_in_one_line_error(workers, smollm2):
    w = workers()
    p = subprocess.Popen([sys.executable, "-m", "r1local", "run", str(smollm2), COUNTING,
                          "--max-tokens", "600", *GREEDY, "--rpc", w.endpoint], cwd=ROOT,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline()  # the reply has begun
        w.kill()
        rest, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert first.strip() and p.returncode == 1, (first, p.returncode, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    # the split's start line, then one line naming the worker that went away
    assert len(lines) == 2 and lines[0].startswith("r1local: layers "), err
    assert lines[1].startswith(f"r1local: error: lost RPC worker {w.endpoint} while running "
                               f"{smollm2.name}: connection refused"), err
    assert f"r1local worker --port {w.port}" in lines[1]
    assert len((first + rest).splitlines()) < 300  # it was cut short


def _profile_where_only_the_small_one_fits(tmp_path, big: Path, small: Path) -> Path:
    """A machine profile with RAM for ``small`` but not for ``big`` (as the planner sees
    them), so that `serve --rpc` loads ``big`` over the workers and ``small`` here."""
    from r1local import session
    from r1local.hardware import hypothetical

    for mib in range(1024, 2048, 16):
        on = hypothetical(ram=mib * MiB, cores=os.cpu_count() or 1)
        if (session.plan_model(session.locate(str(small)), on).fits
                and not session.plan_model(session.locate(str(big)), on).fits):
            path = tmp_path / "machine.toml"
            path.write_text(f'ram = "{mib}M"\ncores = {os.cpu_count() or 1}\n')
            return path
    raise AssertionError("no RAM size fits one model and not the other")


def test_serve_survives_a_lost_worker_and_loads_the_model_again(workers, tmp_path, smollm2,
                                                               micro_reasoner):
    import json

    import httpx

    w = workers()
    profile = _profile_where_only_the_small_one_fits(tmp_path, smollm2, micro_reasoner)
    env = {**os.environ, "R1LOCAL_HOME": str(tmp_path / "home"), "R1LOCAL_PROFILE": str(profile),
           "PYTHONUNBUFFERED": "1"}
    env.pop("R1LOCAL_API_KEY", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "r1local", "serve", "--port", "0", "--rpc", w.endpoint,
         "--keep-alive", "-1", "--allow-paths", str(smollm2.parent),
         "--allow-paths", str(micro_reasoner.parent)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        url = next(m.group(1) for line in server.stderr
                   if (m := re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)))
        big = {"model": str(smollm2), "prompt": COUNTING, "stream": True,
               "options": {"temperature": 0, "num_predict": 600}}
        with httpx.stream("POST", url + "/api/generate", json=big, timeout=120) as r:
            assert r.status_code == 200, r.read()
            lines = r.iter_lines()
            assert json.loads(next(lines))["response"]  # the reply has begun over the worker
            w.kill()
            events = [json.loads(x) for x in lines if x.strip()]
        # the stream ends in an error that names the worker, in one line
        assert "error" in events[-1] and not events[-1].get("done"), events[-1]
        error = events[-1]["error"]
        assert f"lost RPC worker {w.endpoint}" in error and "\n" not in error
        # it is no longer listed as loaded
        for _ in range(50):
            listed = [m["model"] for m in httpx.get(url + "/api/ps", timeout=10).json()["models"]]
            if str(smollm2) not in listed:
                break
            time.sleep(0.1)
        assert str(smollm2) not in listed, listed
        # while the worker is down: that model is a one-line API error naming it ...
        once = {**big, "stream": False, "options": {"temperature": 0, "num_predict": 8}}
        r = httpx.post(url + "/api/generate", json=once, timeout=120)
        assert r.status_code == 500 and "\n" not in r.json()["error"]
        assert f"cannot reach RPC worker {w.endpoint}" in r.json()["error"]
        # ... and the model that fits here answers meanwhile
        small = {"model": str(micro_reasoner), "stream": False, "options": {"temperature": 0},
                 "messages": [{"role": "user", "content": "What is 3+4?"}]}
        r = httpx.post(url + "/api/chat", json=small, timeout=120)
        assert r.status_code == 200 and r.json()["message"]["content"] == "3 + 4 = **7**.", r.text
        # the worker back on its port: the next request loads the model over it again
        workers(port=w.port)
        r = httpx.post(url + "/api/generate", json=once, timeout=120)
        assert r.status_code == 200 and r.json()["response"].strip(), r.text
        assert server.poll() is None
    finally:
        server.terminate()
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    assert "Traceback" not in err


def test_worker_too_small_is_a_one_line_error_with_what_would_fit(workers, smollm2):
    w = workers("--mem", "40M")
    line = one_line_error(r1local("run", str(smollm2), "hi", "--rpc", w.endpoint))
    assert f"RPC worker {w.endpoint} offers 40.0 MiB" in line
    need = int(re.search(rf"start {w.endpoint}'s worker with --mem (\d+)M or more", line).group(1))
    assert need > 40
    # and that much is enough: the same model loads with the worker offering it
    bigger = workers("--mem", f"{need}M")
    p = r1local("run", str(smollm2), "Say hi.", "--max-tokens", "4", *GREEDY,
                "--rpc", bigger.endpoint)
    assert p.returncode == 0, p.stderr


def test_each_worker_holds_what_the_plan_puts_there(workers, smollm2):
    """The plan's share of each worker against the worker process's own memory: its RSS
    growth from idle to loaded (psutil). A CPU worker's RSS holds its weights and its KV
    cache (llama.cpp clears the cache, so every page of it is touched), not the compute
    buffer it reserves but touches only as far as one batch goes: so the plan's weights +
    KV for the worker's layers (Part.bytes less the compute it reserves) is compared."""
    import psutil

    from r1local import rpc_child
    from r1local.engine import GenerationSettings
    from r1local.ggufinfo import read_model_header
    from r1local.planner import kv_cache_bytes
    from r1local.shapes import shape_from_gguf
    from r1local.units import fmt_bytes

    a, b = workers(), workers()
    idle = {w.endpoint: psutil.Process(w.proc.pid).memory_info().rss for w in (a, b)}
    engine, plan, _ = rpc_child.open_model(str(smollm2), rpc=[a.endpoint, b.endpoint])
    try:
        list(engine.complete("Hello there.", GenerationSettings(max_tokens=4)))
        shape = shape_from_gguf(read_model_header(smollm2))
        for w in (a, b):
            part = next(p for p in engine.rpc_split.parts if p.where == w.endpoint)
            held = psutil.Process(w.proc.pid).memory_info().rss - idle[w.endpoint]
            planned = (sum(shape.block_bytes[i] for i in range(part.first, part.last + 1))
                       + kv_cache_bytes(shape, plan.n_ctx, plan.kv_type, plan.flash_attn,
                                        part.n_blocks)
                       + ((shape.embd_bytes if shape.tied else shape.out_bytes) if part.output else 0))
            assert part.bytes >= planned  # what fits is judged with the compute on top
            # the start line's figure is what the worker holds, the compute said apart
            assert part.bytes - part.compute == planned and part.compute > 0
            assert f"({fmt_bytes(planned)} + {fmt_bytes(part.compute)} compute)" in engine.rpc_split.line()
            assert abs(held - planned) <= 0.10 * planned, (w.endpoint, held >> 20, planned >> 20)
    finally:
        engine.close()


def test_a_model_over_workers_answers_like_one_in_process(workers, micro_reasoner):
    """The child's engine through its parent: the same reasoning and answer as a run without
    workers, the stats, the token calls, and a cancelled reply leaves the next one intact."""
    import json
    import threading

    from r1local import rpc_child
    from r1local.engine import GenerationSettings

    w = workers()
    question = "What is 3+4?"
    alone = r1local("run", str(micro_reasoner), question, "--json", *GREEDY)
    assert alone.returncode == 0, alone.stderr
    want = json.loads(alone.stdout)
    messages = [{"role": "user", "content": question}]
    s = GenerationSettings(temperature=0, top_k=1, seed=7)
    remote, plan, _ = rpc_child.open_model(str(micro_reasoner), rpc=[w.endpoint])
    try:
        assert f"output on {w.endpoint}" in remote.rpc_split.line() and plan.n_ctx > 0
        prompt = remote.format_chat(messages)
        assert prompt.rstrip().endswith("<think>")
        assert remote.count_tokens(prompt) == len(remote.tokenize(prompt)) > 3
        # a reply that cannot end on its own for seconds (the grammar wants 300 "x "s), so
        # the cancel, not the model's end of text, is what stops it
        long = GenerationSettings(temperature=0, top_k=1, seed=7, grammar='root ::= "x "{300}',
                                  loop_guard=False)
        cancel = threading.Event()
        stream = remote.chat(messages, long, cancel=cancel)
        next(stream)
        cancel.set()
        list(stream)
        assert remote.last_stats.finish_reason == "cancelled"
        assert remote.last_stats.completion_tokens < 300
        chunks = list(remote.chat(messages, s))
        thinking = "".join(c.text for c in chunks if c.kind == "thinking")
        answer = "".join(c.text for c in chunks if c.kind == "answer")
        assert (thinking, answer) == (want["thinking"], want["answer"])
        st = remote.last_stats
        assert st.finish_reason == "stop"
        assert st.completion_tokens == want["stats"]["completion_tokens"] > 0
    finally:
        remote.close()
    assert remote._proc is None  # the child is gone with close


def test_the_rpc_processes_spin_only_briefly_once_a_graph_is_done(workers, micro_reasoner):
    """On shared cores a process whose layers are done must give the cores up at once to the
    next one in the token's chain (rpc.OMP_SPIN). Measured as the CPU time two workers spend
    on the same replies: one as r1local starts it, one told to spin as GOMP does by default;
    the user's own setting wins, and the child that holds the model gets ours."""
    import psutil

    from r1local import rpc_child
    from r1local.engine import GenerationSettings

    brief = workers()
    spinning = workers(env={"GOMP_SPINCOUNT": "300000"})
    # 60 tokens every time, each a graph on every worker
    s = GenerationSettings(temperature=0, top_k=1, seed=7, grammar='root ::= "x "{60}',
                           loop_guard=False)
    engine, _, _ = rpc_child.open_model(str(micro_reasoner), rpc=[brief.endpoint, spinning.endpoint])
    try:
        env = Path(f"/proc/{engine._proc.pid}/environ").read_bytes().split(b"\0")
        assert f"{rpc.OMP_SPIN[0]}={rpc.OMP_SPIN[1]}".encode() in env
        list(engine.complete("Count:", GenerationSettings(max_tokens=2)))  # warm-up
        procs = [psutil.Process(w.proc.pid) for w in (brief, spinning)]
        before = [sum(p.cpu_times()[:2]) for p in procs]
        list(engine.complete("Count:", s))
        used = [sum(p.cpu_times()[:2]) - b for p, b in zip(procs, before)]
    finally:
        engine.close()
    assert used[1] > 3 * used[0], used
