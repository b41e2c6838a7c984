"""llama.cpp RPC workers end to end on loopback: real `r1local worker` processes, real
`r1local run --rpc` processes, real llama.cpp on both sides."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "r1local", "worker", "--port", str(self.port), *args],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
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

    def start(*args: str) -> WorkerProcess:
        w = WorkerProcess(*args)
        started.append(w)
        return w

    yield start
    for w in started:
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


def test_worker_reports_the_memory_it_offers(workers):
    w = workers("--mem", "256M")
    # in this process: the worker's own answer to llama.cpp's memory question
    (got,) = rpc.connect([w.endpoint])
    assert got.free_bytes == 256 * MiB


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
