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
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

LLAMA_CPP_PYTHON = "0.3.36"
PROMPT_TOKENS = 128
DECODE_TOKENS = 64
REPS = 7
TARGET = 0.95  # r1local / llama.cpp


def cache_dir() -> Path:
    base = os.environ.get("R1LOCAL_BENCH_CACHE") or Path.home() / ".cache" / "r1local" / "llama-bench"
    path = Path(base) / LLAMA_CPP_PYTHON
    path.mkdir(parents=True, exist_ok=True)
    return path


def wheel_lib_dir() -> Path:
    """The shared libraries of the installed llama-cpp-python wheel: what the engine runs."""
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def build_llama_bench() -> Path:
    """llama-bench from the vendored llama.cpp of the llama-cpp-python sdist, built against
    shared libraries and with no rpath, so that it runs on the installed wheel's own
    libllama/libggml (LD_LIBRARY_PATH, see bench_env): both sides execute the very same
    ggml machine code, and the ratio measures r1local's overhead, not two builds' flags.
    Only llama-bench and the helper libraries it links (not in the wheel) are kept; built once and cached."""
    out_dir = cache_dir() / "shared"
    out = out_dir / "llama-bench"
    if out.exists():
        return out
    work = cache_dir()
    sdist = work / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(work)],
                       check=True)
    src = work / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    if not src.exists():
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
    build = work / "build-shared"
    cmake = ["cmake", "-S", str(src / "vendor" / "llama.cpp"), "-B", str(build),
             "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=ON",
             "-DCMAKE_SKIP_RPATH=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON"]
    if shutil.which("ninja"):
        cmake += ["-G", "Ninja"]
    subprocess.run(cmake, check=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-bench", "-j",
                    str(os.cpu_count() or 1)], check=True)
    stage = out_dir.with_name("shared.partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    shutil.copy2(build / "bin" / "llama-bench", stage)
    for lib in (build / "bin").glob("libllama-*"):  # common, bench-impl: not in the wheel
        shutil.copy2(lib, stage, follow_symlinks=False)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(stage, out_dir)
    return out


def bench_env(exe: Path) -> dict[str, str]:
    """The wheel's libraries first, then the helper libraries built beside llama-bench."""
    paths = [str(wheel_lib_dir()), str(exe.parent), os.environ.get("LD_LIBRARY_PATH", "")]
    return dict(os.environ, LD_LIBRARY_PATH=":".join(p for p in paths if p))


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
        for key, name in (("pp", f"prompt pp{PROMPT_TOKENS}"),
                          ("tg", f"decode tg{n_gen} @ depth {PROMPT_TOKENS}")):
            a = statistics.median(r[key] for r in ref)
            b = statistics.median(r[key] for r in ours)
            # the ratio of each back-to-back pair, then their median: a burst from another
            # process hits both halves of a pair, where the medians of each side diverge
            ratio = statistics.median(o[key] / r[key] for o, r in zip(ours, ref))
            rows.append((label, name, a, b, ratio))
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
    table = "\n".join(lines)
    print(table)
    out = ROOT / "bench" / "results" / "generate.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
