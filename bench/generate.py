"""Prompt and decode speed through r1local's Engine, side by side with llama.cpp's own
`llama-bench` built from the same llama.cpp source (the llama-cpp-python sdist that the
installed wheel came from) and run on the wheel's own shared libraries, on the same GGUF
and thread count. Also time to first token.

    .venv/bin/python bench/generate.py            # build llama-bench once (cached), run, write
    .venv/bin/python bench/generate.py --build-only

llama-bench is cached in ~/.cache/r1local/llama-bench/<version>/ (R1LOCAL_BENCH_CACHE).
The table goes to stdout and bench/results/generate.md. Target: r1local within 5% of
llama.cpp on both prompt processing and decoding.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from llama_tools import LLAMA_CPP_PYTHON  # noqa: E402

PROMPT_TOKENS = 128
DECODE_TOKENS = 64
REPS = 7
TARGET = 0.95  # r1local / llama.cpp


from llama_tools import bench_env, build_tool, wheel_lib_dir  # noqa: E402,F401


def build_llama_bench() -> Path:
    return build_tool("llama-bench")


def llama_bench(exe: Path, model: Path, threads: int, n_gen: int) -> dict[str, float]:
    """One llama-bench repetition: pp and tg tok/s. The decode test starts at a depth of
    PROMPT_TOKENS (-d), as r1local's decode follows its prompt: from an empty context each
    token would attend over fewer positions, which on a 135M model is a visible share."""
    base = [str(exe), "-m", str(model), "-t", str(threads), "-r", "1", "-fa", "off",
            "-ngl", "0", "-o", "json"]
    out = {}
    for key, extra in (("pp", ["-p", str(PROMPT_TOKENS), "-n", "0"]),
                       ("tg", ["-p", "0", "-n", str(n_gen), "-d", str(PROMPT_TOKENS)])):
        res = subprocess.run(base + extra, check=True, capture_output=True, text=True,
                             env=bench_env(exe))
        out[key] = float(json.loads(res.stdout)[0]["avg_ts"])
    return out


def prompt_text(engine, n_tokens: int, seed: int) -> str:
    """Plain words whose tokenization is close to n_tokens."""
    rng = random.Random(seed)
    words = ["the", "model", "runs", "on", "this", "machine", "with", "memory", "and", "time",
             "reasoning", "answers", "every", "question", "about", "numbers", "quickly"]
    text = ""
    while engine.count_tokens(text) < n_tokens - 1:
        text += rng.choice(words) + " "
    return text


def r1local_run(engine, seed: int, n_gen: int) -> dict[str, float]:
    from r1local.engine import GenerationSettings

    engine.reset()  # measure a cold prompt, as llama-bench does
    settings = GenerationSettings(max_tokens=n_gen, seed=seed, loop_guard=False)
    list(engine.complete(prompt_text(engine, PROMPT_TOKENS, seed), settings))
    st = engine.last_stats
    return {"pp": st.prompt_tok_s, "tg": st.decode_tok_s, "ttft": st.ttft_seconds,
            "n_prompt": st.prompt_eval_tokens, "n_gen": st.completion_tokens}


def samples_table(model: tuple[str, Path, int], threads: int, ks: list[int]) -> str:
    """Wall time of K samples of one prompt decoded together (`run --samples K`, OpenAI
    `n`) against one sample, on the same engine: target K = 4 in at most 2x the time."""
    from r1local.engine import Engine, GenerationSettings

    label, path, n_gen = model
    engine = Engine.load(path, n_ctx=PROMPT_TOKENS + n_gen + 64, n_threads=threads,
                         n_parallel=max(ks))
    chat = [{"role": "user", "content": prompt_text(engine, PROMPT_TOKENS, 0)}]

    def wall(k: int, rep: int) -> tuple[float, int]:
        engine.reset()
        t0 = time.perf_counter()
        streams = engine.chat_samples(chat, [GenerationSettings(max_tokens=n_gen, seed=100 * rep + i,
                                                                loop_guard=False) for i in range(k)])
        tokens = 0
        for st in streams:
            for _ in st:
                pass
            tokens += st.stats.completion_tokens
        return time.perf_counter() - t0, tokens

    wall(1, 0)  # warm-up
    runs = {k: [] for k in [1, *ks]}
    for rep in range(3):  # interleaved, so that drift in machine load hits every K
        for k in runs:
            runs[k].append(wall(k, rep + 1))
            print(f"samples K={k} rep {rep}: {runs[k][-1]}", file=sys.stderr, flush=True)
    engine.close()
    one = statistics.median(t for t, _ in runs[1])
    lines = [f"Samples on {label}: K replies to one chat prompt of ~{PROMPT_TOKENS} tokens, "
             f"{n_gen} tokens each, decoded together on one engine (--parallel {max(ks)}), "
             "median wall time of 3 (the prompt evaluated once for all K).", "",
             "| K | wall s | tokens | aggregate tok/s | time / one sample's |",
             "|---:|---:|---:|---:|---:|"]
    for k, rs in runs.items():
        t = statistics.median(t for t, _ in rs)
        n = rs[0][1]
        flag = " (target <= 2x)" if k == 4 else ""
        lines.append(f"| {k} | {t:.2f} | {n} | {n / t:.1f} | {t / one:.2f}x{flag} |")
    return "\n".join(lines)


def models() -> list[tuple[str, Path, int]]:
    """(label, GGUF, tokens to decode): fewer for the slow 1 GB model."""
    import model_fixtures as mf

    standin = mf.build_r1_standin(mf.shape_for_size(1 << 30))
    return [("SmolLM2-135M Q4_1", mf.smollm2_path(), DECODE_TOKENS),
            (f"R1 stand-in {standin.stat().st_size / 2**30:.2f} GiB F16", standin, DECODE_TOKENS // 2)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--samples", default="4,8",
                    help="K for the samples rows: K replies decoded together vs one (1 GB model)")
    args = ap.parse_args()
    exe = build_llama_bench()
    if args.build_only:
        print(exe)
        return 0
    from r1local.engine import Engine, _default_threads

    threads = args.threads or _default_threads()
    rows = []
    for label, path, n_gen in models():
        engine = Engine.load(path, n_ctx=PROMPT_TOKENS + DECODE_TOKENS + 64, n_threads=threads)
        ours, ref = [], []
        r1local_run(engine, 0, 8)  # warm-up: page the weights in
        for rep in range(REPS):  # interleaved, so drift in machine load hits both sides
            ref.append(llama_bench(exe, path, threads, n_gen))
            ours.append(r1local_run(engine, rep + 1, n_gen))
            print(f"{label} rep {rep}: llama.cpp {ref[-1]} r1local {ours[-1]}", file=sys.stderr,
                  flush=True)
        engine.close()
        # one sequence through the batch scheduler (serve's default engine): the same
        # decode, a thread hop and a queue per token more
        engine = Engine.load(path, n_ctx=PROMPT_TOKENS + DECODE_TOKENS + 64, n_threads=threads,
                             n_parallel=4)
        r1local_run(engine, 0, 8)
        batched = [r1local_run(engine, rep + 1, n_gen) for rep in range(REPS)]
        engine.close()
        for key, name in (("pp", f"prompt pp{PROMPT_TOKENS}"),
                          ("tg", f"decode tg{n_gen} @ depth {PROMPT_TOKENS}")):
            a = statistics.median(r[key] for r in ref)
            b = statistics.median(r[key] for r in ours)
            # the ratio of each back-to-back pair, then their median: a burst from another
            # process hits both halves of a pair, where the medians of each side diverge
            ratio = statistics.median(o[key] / r[key] for o, r in zip(ours, ref))
            rows.append((label, name, a, b, ratio))
        tg_ref = statistics.median(r["tg"] for r in ref)
        tg_one = statistics.median(r["tg"] for r in batched)
        rows.append((label, f"decode tg{n_gen}, one sequence, --parallel 4 engine", tg_ref,
                     tg_one, tg_one / tg_ref))
        ttft = statistics.median(r["ttft"] for r in ours)
        ref_ttft = PROMPT_TOKENS / statistics.median(r["pp"] for r in ref)
        ratio = statistics.median(PROMPT_TOKENS / r["pp"] / o["ttft"] for o, r in zip(ours, ref))
        rows.append((label, "time to first token (s)", ref_ttft, ttft, ratio))
        print(f"done {label}", file=sys.stderr)

    lines = [f"Threads: {threads}. llama.cpp = llama-bench from llama-cpp-python {LLAMA_CPP_PYTHON}'s "
             f"vendored llama.cpp, run on the installed wheel's own shared libllama/libggml (-fa off, -ngl 0, median of {REPS}); "
             f"r1local = Engine.complete with sampling (temperature 0.6, top-p 0.95), median of "
             f"{REPS}; the two are interleaved, one repetition each in turn, and the ratio is the "
             f"median of the {REPS} back-to-back pairs' ratios. llama.cpp's decode starts at a "
             f"depth of {PROMPT_TOKENS} tokens (-d), as r1local's follows its prompt. Time to "
             f"first token for llama.cpp is pp{PROMPT_TOKENS} time (its prompt rate), for "
             "r1local the measured time from the call to the first token.",
             "",
             "| model | test | llama.cpp | r1local | r1local / llama.cpp |",
             "|---|---|---:|---:|---:|"]
    for label, name, a, b, ratio in rows:
        unit = "" if "time" in name else " tok/s"
        fmt = "{:.3f}" if "time" in name else "{:.1f}"
        flag = "" if ratio >= TARGET else " (below 95%)"
        lines.append(f"| {label} | {name} | {fmt.format(a)}{unit} | {fmt.format(b)}{unit} | "
                     f"{ratio:.3f}{flag} |")
    table = "\n".join(lines) + "\n\n" + samples_table(models()[-1], threads,
                                                        [int(k) for k in args.samples.split(",")])
    print(table)
    out = ROOT / "bench" / "results" / "generate.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
