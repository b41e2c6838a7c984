"""Planner accuracy: predicted vs measured memory of real llama.cpp loads.

Each row loads one GGUF in a fresh subprocess with the planner's settings (context, flash
attention, threads, batch), evaluates a full micro-batch prompt and decodes a few tokens,
then reads the process's resident set. Measured = RSS then minus the RSS of the same
process before loading (python + llama_cpp imported). Predicted = Plan.rss_bytes (what the
planner expects resident, reclaimable mapped pages included). GPU memory is read through
NVML where a GPU is present. Target: |error| <= 10% in every row. Decode speed is the
median of single-token steps after a few warm-up steps, next to the planner's range.

    .venv/bin/python bench/fit_accuracy.py            # prints the table, writes bench/results/fit_accuracy.md
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

MiB = 1 << 20
PROMPT_TOKENS = 512   # one full micro-batch: touches the compute buffer's worst case
DECODE_TOKENS = 32
DECODE_WARMUP = 4     # the first steps after a long prompt run cold (caches, thread wake-up)


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _gpu_used() -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        used = sum(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).used
                   for i in range(pynvml.nvmlDeviceGetCount()))
        pynvml.nvmlShutdown()
        return int(used)
    except Exception:
        return None


def child(path: str, n_ctx: int, n_gpu_layers: int, flash: bool, threads: int) -> None:
    import llama_cpp

    base, gpu0 = _status(), _gpu_used()
    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers,
                          n_threads=threads, n_threads_batch=threads, n_batch=512,
                          n_ubatch=512, flash_attn=flash, verbose=False)
    loaded = _status()
    prompt = list(range(1000, 1000 + min(PROMPT_TOKENS, n_ctx // 2)))
    llm.eval(prompt)
    for i in range(DECODE_WARMUP):
        llm.eval([2000 + i])
    steps = []  # per token: the median shrugs off a burst from another process
    for i in range(DECODE_TOKENS):
        t0 = time.perf_counter()
        llm.eval([3000 + i])
        steps.append(time.perf_counter() - t0)
    decode = statistics.median(steps)
    after = _status()
    gpu1 = _gpu_used()
    print(json.dumps({
        "base": base, "loaded": loaded, "after": after,
        "gpu": (gpu1 - gpu0) if gpu0 is not None and gpu1 is not None else None,
        "tok_s": 1.0 / decode,
    }))


def cases():
    import model_fixtures as mf

    smol = mf.smollm2_path()
    rows = [("SmolLM2-135M", smol, c) for c in (2048, 8192)]
    for target in (100 * MiB, 400 * MiB, 1000 * MiB):
        f16 = mf.build_r1_standin(mf.shape_for_size(target))
        label = f"R1 stand-in {target // MiB}M"
        rows += [(label, f16, c) for c in (2048, 8192)]
        if target >= 400 * MiB:
            for q in ("Q8_0", "Q4_K_M"):
                rows.append((label, mf.quantized_copy(f16, q), 4096))
    return rows


def main() -> int:
    from r1local.ggufinfo import read_header
    from r1local.hardware import probe
    from r1local.planner import plan_gguf

    machine = probe()
    lines = ["| model | quant | file | ctx | predicted RSS | measured RSS | error | "
             "predicted need | KV + compute | decode tok/s (pred) | decode tok/s (measured) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    print(lines[0]); print(lines[1])
    worst = 0.0
    for label, path, ctx in cases():
        header = read_header(path, max_array=0)
        plan = plan_gguf(header, machine, n_ctx=ctx)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(path), str(ctx), str(plan.n_gpu_layers),
             "1" if plan.flash_attn else "0", str(plan.n_threads)],
            capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            print(f"{label} ctx {ctx}: child failed: {out.stderr.strip()[-300:]}")
            return 1
        m = json.loads(out.stdout.strip().splitlines()[-1])
        measured = m["after"]["VmRSS"] - m["base"]["VmRSS"]
        if m["gpu"] is not None and plan.vram_bytes:
            measured_gpu = m["gpu"]
        err = (plan.rss_bytes - measured) / measured
        worst = max(worst, abs(err))
        row = (f"| {label} | {plan.quant} | {path.stat().st_size / MiB:.0f} MiB | {ctx} | "
               f"{plan.rss_bytes / MiB:.0f} MiB | {measured / MiB:.0f} MiB | {err * 100:+.1f}% | "
               f"{plan.ram_bytes / MiB:.0f} MiB | {(plan.kv_bytes + plan.compute_bytes) / MiB:.0f} MiB | "
               f"{plan.tok_s_low:.1f}-{plan.tok_s_high:.1f} | {m['tok_s']:.1f} |")
        lines.append(row)
        print(row, flush=True)
    summary = (f"\nworst error {worst * 100:.1f}% (target 10%) on {machine.cpu_name}, "
               f"{machine.physical_cores} cores, llama.cpp CPU build")
    print(summary)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fit_accuracy.md").write_text("\n".join(lines) + "\n" + summary + "\n")
    return 0 if worst <= 0.10 else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, p, c, g, fa, th = sys.argv
        child(p, int(c), int(g), fa == "1", int(th))
    else:
        raise SystemExit(main())
