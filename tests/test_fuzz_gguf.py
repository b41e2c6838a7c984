"""Fuzz `r1local run` and `r1local serve` with a thousand truncated and mutated GGUF files.

Each file must end in a clean one-line error or a normal run: never a crash (signal),
an uncaught exception or a hang. One worker process runs the files one after another
through the CLI's own main(); the test feeds it one file at a time, so when the worker
dies or stops answering, the file that did it is known. The worker is then re-spawned.

Mutations aim at the GGUF structure (counts, string lengths, value types, array
counts, tensor dims, types and offsets) and at the numbers llama.cpp trusts (layer and head
counts, widths, the norm epsilon and rope base, as NaN, infinities, negatives, zeros and
huge values), where a bad value makes llama.cpp misbehave or abort, with some plain
truncations and random bytes for good measure. A server is fed a share of the same files
by path: it must answer every request and stay up.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import selectors
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASE_TIMEOUT = 30.0  # seconds for one file; the slowest normal run takes about 1 s
RUN_ARGS = ["hi", "--max-tokens", "2", "--think-budget", "0", "--ctx", "128", "--threads", "1",
            "--seed", "1"]
R1_CASES, SMOL_CASES = 600, 420
SERVE_CASES = 160  # of those, sent to one server

_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def structural_fields(data: bytes) -> list[tuple[int, int, str]]:
    """(offset, size, what) of every count, length, type and offset in a GGUF header.
    Of long string arrays only the first few lengths are listed."""
    fields = [(4, 4, "version"), (8, 8, "n_tensors"), (16, 8, "n_kv")]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def string(what: str, record: bool = True) -> None:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", data, pos)
        if record:
            fields.append((pos, 8, what))
        pos += 8 + n

    for _ in range(n_kv):
        key_at = pos
        string("key length")
        key = data[key_at + 8: pos].decode("utf-8", "replace")
        (vtype,) = struct.unpack_from("<I", data, pos)
        fields.append((pos, 4, f"type of {key}"))
        pos += 4
        if vtype == 8:
            string(f"length of {key}")
        elif vtype == 9:
            (etype,) = struct.unpack_from("<I", data, pos)
            fields.append((pos, 4, f"element type of {key}"))
            fields.append((pos + 4, 8, f"count of {key}"))
            (count,) = struct.unpack_from("<Q", data, pos + 4)
            pos += 12
            for i in range(count):
                if etype == 8:
                    string(f"{key}[{i}] length", record=i < 3)
                else:
                    pos += _SCALAR_SIZES[etype]
        else:
            if vtype in (4, 5, 10, 11):
                fields.append((pos, _SCALAR_SIZES[vtype], f"value of {key}"))
            elif vtype == 6:
                fields.append((pos, 4, f"float value of {key}"))
            pos += _SCALAR_SIZES[vtype]
    for _ in range(n_tensors):
        string("tensor name length")
        (n_dims,) = struct.unpack_from("<I", data, pos)
        fields.append((pos, 4, "n_dims"))
        pos += 4
        for d in range(n_dims):
            fields.append((pos, 8, f"dim {d}"))
            pos += 8
        fields.append((pos, 4, "tensor type"))
        fields.append((pos + 4, 8, "tensor offset"))
        pos += 12
    return fields


@dataclass
class Case:
    """A change to a base file: ``patch`` written at ``offset``, or cut at ``cut``."""

    base: str
    what: str
    offset: int = 0
    patch: bytes = b""
    cut: int | None = None

    def apply(self, path: Path, original: bytes) -> None:
        """Change the working copy in place (rewriting 100 MB per case would dominate)."""
        with open(path, "r+b") as f:
            if self.cut is not None:
                f.truncate(self.cut)
            else:
                f.seek(self.offset)
                f.write(self.patch)

    def undo(self, path: Path, original: bytes) -> None:
        with open(path, "r+b") as f:
            if self.cut is not None:
                f.seek(self.cut)
                f.write(original[self.cut:])
            else:
                f.seek(self.offset)
                f.write(original[self.offset: self.offset + len(self.patch)])


# what a float hyper-parameter is set to: the values llama.cpp asserts or divides on
BAD_FLOATS = (float("nan"), -float("nan"), float("inf"), -float("inf"), -1.0, -1e-30, 0.0, -0.0,
              1e30, 3.4e38, 1e-45)


def mutations(name: str, data: bytes, n: int, rng: random.Random, data_bytes: bool) -> list[Case]:
    fields = structural_fields(data)
    header_end = max(off + size for off, size, _ in fields)
    formats = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}
    values = [f for f in fields if f[2].startswith(("value of", "float value of"))]
    cases = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:  # a hyper-parameter (count, width, id, epsilon, base) gone bad
            off, size, what = rng.choice(values)
            if what.startswith("float"):
                new = rng.choice(BAD_FLOATS)
                cases.append(Case(name, f"{what} @{off}: -> {new}", off, struct.pack("<f", new)))
                continue
            (old,) = struct.unpack_from(formats[size], data, off)
            top = (1 << (8 * size)) - 1
            new = rng.choice([0, 1, 2, 3, 7, top, top >> 1, 1 << 31, 513, old * 3, old + 1,
                              max(0, old - 1), old // 2]) & top
            cases.append(Case(name, f"{what} @{off}: {old} -> {new}", off,
                              new.to_bytes(size, "little")))
        elif kind < 0.45:
            cut = rng.choice([rng.randrange(0, 64), rng.randrange(0, header_end + 64),
                              rng.randrange(header_end, len(data))])
            cases.append(Case(name, f"truncated at {cut}", cut=cut))
        elif kind < 0.88:
            off, size, what = rng.choice(fields)
            (old,) = struct.unpack_from(formats[size], data, off)
            top = (1 << (8 * size)) - 1
            new = rng.choice([0, 1, top, top >> 1, old + 1, max(0, old - 1), (old * 2) & top,
                              old ^ (1 << rng.randrange(8 * size)), rng.randrange(top + 1)]) & top
            cases.append(Case(name, f"{what} @{off}: {old} -> {new}", off,
                              new.to_bytes(size, "little")))
        elif kind < 0.95 or not data_bytes:
            off = rng.randrange(0, header_end)
            byte = rng.randrange(256)
            cases.append(Case(name, f"header byte @{off} = {byte}", off, bytes([byte])))
        else:
            off = rng.randrange(header_end, len(data) - 8)
            cases.append(Case(name, f"tensor data @{off} = ff*8", off, b"\xff" * 8))
    return cases


class Worker:
    """`python test_fuzz_gguf.py --worker`: reads file paths, answers one JSON line each."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)

    def run(self, path: Path) -> dict:
        try:
            self.proc.stdin.write(str(path) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return {"dead": self.proc.wait()}
        if not self.sel.select(CASE_TIMEOUT):
            self.stop()
            return {"hang": True}
        line = self.proc.stdout.readline()
        if not line:
            return {"dead": self.proc.wait()}
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.sel.close()


def test_fuzzed_gguf_files_never_crash_or_hang(tmp_path, r1_standin, smollm2):
    rng = random.Random(1234)
    originals = {"r1-standin": r1_standin.read_bytes(), "smollm2": smollm2.read_bytes()}
    cases = mutations("r1-standin", originals["r1-standin"], R1_CASES, rng, data_bytes=True)
    cases += mutations("smollm2", originals["smollm2"], SMOL_CASES, rng, data_bytes=False)
    targets = {}
    for name, data in originals.items():
        targets[name] = tmp_path / f"{name}.gguf"
        targets[name].write_bytes(data)
    worker = Worker()
    failures, outcomes = [], {"ok": 0, "error": 0}
    try:
        for i, case in enumerate(cases):
            target, original = targets[case.base], originals[case.base]
            case.apply(target, original)
            res = worker.run(target)
            if "dead" in res or "hang" in res:
                keep = tmp_path / f"failure-{i}.gguf"
                shutil.copyfile(target, keep)
                failures.append(f"{case.base} {case.what}: "
                                + (f"worker died ({res['dead']})" if "dead" in res else "hang")
                                + f" [{keep}]")
                worker.stop()
                worker = Worker()
            elif res["exc"]:
                failures.append(f"{case.base} {case.what}: uncaught {res['exc']}")
            elif res["rc"] == 0:
                outcomes["ok"] += 1
            else:
                lines = res["err"].strip().splitlines()
                if len(lines) == 1 and lines[0].startswith("r1local: error: "):
                    outcomes["error"] += 1
                else:
                    failures.append(f"{case.base} {case.what}: rc {res['rc']}, "
                                    f"stderr {res['err'][:300]!r}")
            case.undo(target, original)
    finally:
        worker.stop()
    assert not failures, "\n".join(failures)
    # the mutations must really exercise both paths
    assert outcomes["error"] > len(cases) // 3 and outcomes["ok"] > 10, outcomes


def test_fuzzed_files_sent_to_a_server_never_take_it_down(tmp_path, r1_standin):
    """The same kind of files by path to one `r1local serve` (paths allowed for this folder
    only): every request gets an answer, and the server is still up after each."""
    import re
    import time

    import httpx

    rng = random.Random(4321)
    original = r1_standin.read_bytes()
    cases = mutations("r1-standin", original, SERVE_CASES, rng, data_bytes=True)
    log = tmp_path / "server.log"
    env = dict(os.environ, R1LOCAL_HOME=str(tmp_path / "home"))
    with open(log, "w") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "r1local", "serve", "--port", "0", "--keep-alive", "0",
             "--threads", "1", "--allow-paths", str(tmp_path)],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not (m := re.search(r"serving on (http://\S+)", log.read_text())):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        url = m.group(1)
        statuses: dict[int, int] = {}
        for i, case in enumerate(cases):
            target = tmp_path / f"case-{i}.gguf"
            target.write_bytes(original)
            case.apply(target, original)
            r = httpx.post(f"{url}/api/generate", timeout=CASE_TIMEOUT, json={
                "model": str(target), "prompt": "hi", "stream": False,
                "options": {"num_predict": 2, "num_ctx": 256, "seed": 1}})
            assert server.poll() is None, f"{case.what}: the server died ({server.returncode})"
            assert r.status_code == 200 or "error" in r.json(), (case.what, r.text)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            target.unlink()
        assert httpx.get(f"{url}/api/version", timeout=10).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)
    # both outcomes really happen: files that load and answer, and files refused
    assert statuses.get(200, 0) > 10 and sum(statuses.values()) - statuses.get(200, 0) > 10, \
        statuses


def worker_main() -> None:
    """Run each path from stdin through the CLI; llama.cpp's own output goes nowhere."""
    import resource

    from r1local import cli

    # a mutated size must not take the machine's memory with it
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    out = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    requests = sys.stdin
    for line in requests:
        path = line.strip()
        err, exc, rc = io.StringIO(), None, None
        sys.stdin = io.StringIO("")  # `run` reads piped stdin: give it none
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                rc = cli.main(["run", path, *RUN_ARGS])
        except BaseException as e:  # anything but a clean exit is what we look for
            exc = f"{type(e).__name__}: {e}"
        finally:
            sys.stdin = requests
        out.write(json.dumps({"rc": rc, "err": err.getvalue(), "exc": exc}) + "\n")


if __name__ == "__main__" and "--worker" in sys.argv:
    worker_main()
