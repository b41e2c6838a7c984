"""A pulled cable between r1local and its RPC worker: the connection is counted gone on both
sides (TCP keepalive and user timeout, r1local/rpc_liveness.py) instead of waited for.

The cable is pulled for real: the worker and the client run in a network namespace of
their own, and tc filters there swallow every packet to and from the worker's port, so
the two kernels stop hearing each other while both processes live on. Needs root, `ip` and
`tc` (skipped without them); nothing outside the namespace is touched."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from r1local import rpc, rpc_liveness
from test_rpc import COUNTING, GREEDY, free_port, one_line_error, rpc_build  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
DEAD_S = 3  # what the processes under test are given as $R1LOCAL_RPC_DEAD_S
CLONE_NEWNET = 0x40000000


# ---- the options on real sockets, in this process ------------------------------------

def _opt(sock: socket.socket, level: int, name: int) -> int:
    return sock.getsockopt(level, name)


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux socket options")
def test_the_client_side_guards_its_connections_to_the_workers_only():
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_server(("127.0.0.1", 0)) as other:
        port = listener.getsockname()[1]
        to_worker = socket.create_connection(("127.0.0.1", port))
        to_other = socket.create_connection(other.getsockname())
        accepted, _ = listener.accept()
        with to_worker, to_other, accepted:
            seen: set = set()
            match = rpc_liveness.to_workers([f"localhost:{port}"])
            assert rpc_liveness.guard_matching(match, 12, seen) == 1
            assert rpc_liveness.guard_matching(match, 12, seen) == 0  # done once
            assert _opt(to_worker, socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert _opt(to_worker, socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 12000
            assert _opt(to_worker, socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 4
            assert _opt(to_worker, socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 2
            # not a connection to a worker: left as llama.cpp (or anyone) made it
            for sock in (to_other, accepted):
                assert _opt(sock, socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
                assert _opt(sock, socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="Linux socket options")
def test_the_worker_side_guards_the_connections_it_accepted():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        with client, accepted:
            assert rpc_liveness.guard_matching(rpc_liveness.from_clients(port), 30) == 1
            assert _opt(accepted, socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30000
            assert _opt(client, socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


def test_the_dead_time_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(rpc_liveness.DEAD_ENV, "7.5")
    assert rpc_liveness.dead_after() == 7.5
    for bad in ("soon", "0", "-3"):
        monkeypatch.setenv(rpc_liveness.DEAD_ENV, bad)
        assert rpc_liveness.dead_after() == rpc_liveness.DEAD_AFTER_S


# ---- a pulled cable, end to end ------------------------------------------------------

def _sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


@pytest.fixture
def netns(rpc_build):
    """A network namespace with its loopback up and a tc root that can swallow packets."""
    if os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("tc")):
        pytest.skip("needs root, ip and tc (a network namespace to pull the cable in)")
    name = f"r1local-test-{os.getpid()}"
    made = _sh("ip", "netns", "add", name)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace: {made.stderr.strip()}")
    try:
        steps = [("ip", "link", "set", "lo", "up"),
                 ("tc", "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "10"),
                 ("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:10", "htb",
                  "rate", "10gbit", "quantum", "60000"),
                 # the pulled cable: a class that sends a byte a second and queues the rest.
                 # Queued, not dropped: a packet dropped here would tell the sender's
                 # kernel (local congestion), which then keeps retrying instead of
                 # counting the peer silent; on a real cable the packets leave and are lost
                 ("tc", "class", "add", "dev", "lo", "parent", "1:", "classid", "1:20", "htb",
                  "rate", "8bit", "ceil", "8bit", "burst", "1", "cburst", "1"),
                 ("tc", "qdisc", "add", "dev", "lo", "parent", "1:20", "handle", "20:", "pfifo",
                  "limit", "100000")]
        for step in steps:
            done = _sh("ip", "netns", "exec", name, *step)
            if done.returncode != 0:
                pytest.skip(f"tc cannot shape loopback here: {' '.join(step)}: {done.stderr.strip()}")
        yield name
    finally:
        _sh("ip", "netns", "del", name)


def _cut(ns: str, port: int) -> None:
    """Every packet to or from ``port`` in ``ns`` is lost from now on: neither side's
    kernel hears the other (not even the one that gives up first)."""
    for way in ("dport", "sport"):
        done = _sh("ip", "netns", "exec", ns, "tc", "filter", "add", "dev", "lo", "parent", "1:",
                   "protocol", "ip", "prio", "1", "u32", "match", "ip", way, str(port), "0xffff",
                   "flowid", "1:20")
        assert done.returncode == 0, done.stderr


def _mend(ns: str) -> None:
    done = _sh("ip", "netns", "exec", ns, "tc", "filter", "del", "dev", "lo", "parent", "1:",
               "prio", "1")
    assert done.returncode == 0, done.stderr


def _in_netns(ns: str, fn):
    """fn() on a thread that lives in ``ns`` (a namespace is per thread in Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    out: list = []

    def body() -> None:
        fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                out.append(OSError(ctypes.get_errno(), "setns"))
                return
        finally:
            os.close(fd)
        try:
            out.append(fn())
        except Exception as err:  # raised again on the caller's thread
            out.append(err)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if isinstance(out[0], Exception):
        raise out[0]
    return out[0]


class _Lines:
    """A pipe's lines, kept as they come, for waiting on what they say."""

    def __init__(self, pipe) -> None:
        self.all: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe) -> None:
        for line in pipe:
            with self._changed:
                self.all.append(line.rstrip("\n"))
                self._changed.notify_all()

    def count(self, text: str) -> int:
        return sum(text in line for line in self.all)

    def wait(self, until, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: until(self), timeout)


def _clients_gone(said: _Lines) -> bool:
    """Every client llama.cpp's RPC server took has been let go (it says both)."""
    return said.count("Client connection closed") == said.count("Accepted client connection") > 0


def test_a_pulled_cable_ends_the_reply_in_one_line_and_frees_the_worker(netns, smollm2):
    env = {**os.environ, rpc_liveness.DEAD_ENV: str(DEAD_S), "PYTHONUNBUFFERED": "1"}
    port = free_port()
    ep = f"127.0.0.1:{port}"
    here = ["ip", "netns", "exec", netns, sys.executable, "-m", "r1local"]
    worker = subprocess.Popen([*here, "worker", "--port", str(port)], cwd=ROOT, env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    run = None
    try:
        said = _Lines(worker.stdout)  # llama.cpp's server says when a client comes and goes
        deadline = time.monotonic() + 60
        while True:
            try:
                _in_netns(netns, lambda: rpc.hello(ep, timeout=2))
                break
            except rpc.RpcError:
                assert worker.poll() is None and time.monotonic() < deadline, "worker did not start"
                time.sleep(0.3)
        assert said.wait(_clients_gone, 10), said.all  # our hello came and went

        run = subprocess.Popen([*here, "run", str(smollm2), COUNTING, "--max-tokens", "600",
                                *GREEDY, "--rpc", ep], cwd=ROOT, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        first = run.stdout.readline()  # the reply has begun
        assert first.strip(), run.stderr.read()
        assert not _clients_gone(said)  # llama.cpp's connection from the run's process
        _cut(netns, port)
        # the client's kernel stops hearing the worker: the reply ends (without the guard
        # it would wait in llama.cpp's recv for ever, and this would time out)
        rest, err = run.communicate(timeout=60)
        assert run.returncode == 1 and "Traceback" not in err, (run.returncode, err)
        lines = err.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("r1local: layers "), err
        assert lines[1].startswith(f"r1local: error: lost RPC worker {ep} while running "
                                   f"{smollm2.name}: did not answer within"), err
        assert "check that machine and the network to it" in lines[1]
        assert len((first + rest).splitlines()) < 300  # it was cut short

        # the worker's kernel stops hearing the client too (its goodbye was lost on the
        # way): the worker lets the connection go while the cable is still out
        assert said.wait(_clients_gone, 30), said.all[-4:]
        _mend(netns)
        again = subprocess.run([*here, "run", str(smollm2), "Say hi.", "--max-tokens", "8",
                                *GREEDY, "--rpc", ep], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and again.stdout.strip(), again.stderr
    finally:
        for p in (run, worker):
            if p is not None and p.poll() is None:
                p.kill()
                p.communicate()
