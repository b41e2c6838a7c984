"""Prompt and decode speed of a >= 1 GB GGUF (a) in this process, as `r1local run` loads
it, and (b) split over two `r1local worker`s on loopback, as `r1local run --rpc` loads it
(the model in a child process, r1local.rpc_child), side by side in one run.

    .venv/bin/python bench/cluster.py [--threads N] [--reps N]

The model is the R1 stand-in of about 1 GiB (F16) that bench/generate.py uses, built once
into the test-fixture cache. The two setups are measured in turn, one repetition each, so
that a burst of other load hits both. The table goes to stdout and bench/results/cluster.md.
Target: (b) decodes at >= 0.85x (a).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

DECODE_TOKENS = 48
CTX = 1024  # the same small context on both sides: the KV cache is not what is measured
TARGET = 0.85


# one measurement, as bench/generate.py takes it (cold prompt of PROMPT_TOKENS, then decode)
from generate import PROMPT_TOKENS, r1local_run as measure  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="threads on every side")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import model_fixtures as mf
    from test_rpc import WorkerProcess

    from r1local import rpc_child, session
    from r1local.engine import _default_threads
    from r1local.units import fmt_bytes

    threads = args.threads or _default_threads()
    path = mf.build_r1_standin(mf.shape_for_size(1 << 30))
    label = f"R1 stand-in {fmt_bytes(path.stat().st_size)} F16"
    load_before = os.getloadavg()[0]
    workers = [WorkerProcess("--threads", str(threads)) for _ in range(2)]
    try:
        local, _, _ = session.open_model(str(path), ctx=CTX, threads=threads)
        split, _, _ = rpc_child.open_model(str(path), rpc=[w.endpoint for w in workers],
                                           ctx=CTX, threads=threads)
        setups = [("(a) local, this process", local), (f"(b) {split.rpc_split.line()}", split)]
        for _, engine in setups:
            measure(engine, 0, 8)  # warm-up: every page of the weights in
        runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in setups}
        for rep in range(args.reps):
            for name, engine in setups:
                t0 = time.perf_counter()
                runs[name].append(measure(engine, rep + 1, DECODE_TOKENS))
                print(f"rep {rep} {name[:3]}: {runs[name][-1]} ({time.perf_counter() - t0:.1f} s)",
                      file=sys.stderr, flush=True)
        split.close()
        local.close()
    finally:
        for w in workers:
            w.stop()
    load_after = os.getloadavg()[0]

    base = {k: statistics.median(r[k] for r in runs[setups[0][0]]) for k in ("pp", "tg")}
    lines = [f"{label}, context {CTX}, {threads} threads on every side (this process, the "
             f"child and each worker), {os.cpu_count()} CPUs, load average {load_before:.2f} "
             f"before, {load_after:.2f} after. Median of {args.reps} repetitions, the setups "
             f"in turn; prompt pp{PROMPT_TOKENS} from a cold cache, decode tg{DECODE_TOKENS} "
             "after it. (b) runs the model in r1local's child process, as `run --rpc` and "
             "`serve --rpc` do, with the two workers on this machine's loopback.",
             "",
             "| setup | prompt tok/s | decode tok/s | prompt vs (a) | decode vs (a) |",
             "|---|---:|---:|---:|---:|"]
    for name, _ in setups:
        pp = statistics.median(r["pp"] for r in runs[name])
        tg = statistics.median(r["tg"] for r in runs[name])
        flag = "" if tg / base["tg"] >= TARGET else f" (below {TARGET:.2f}x)"
        lines.append(f"| {name} | {pp:.1f} | {tg:.1f} | {pp / base['pp']:.3f}x | "
                     f"{tg / base['tg']:.3f}x{flag} |")
    table = "\n".join(lines)
    print(table)
    out = ROOT / "bench" / "results" / "cluster.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
