"""Converter throughput, peak memory and peak disk on a synthetic >= 4 GB checkpoint, side by
side with a plain copy of the same bytes and with llama.cpp's convert_hf_to_gguf.py (same
version); for Q4_K_M also our one pass against two passes (our F16 file, then llama.cpp's
quantizer) and against convert_hf_to_gguf.py + llama-quantize.

    .venv/bin/python bench/convert.py [--gb 4] [--llama-cpp-src DIR | --no-llama-cpp]
                                      [--quants F16,BF16,Q8_0,Q4_K_M] [--keep]
    .venv/bin/python bench/convert.py --checkpoint deepseek-fp8 [--gb 4] [--no-two-pass]

The default checkpoint has real DeepSeek-R1-Distill-Qwen-7B shapes (hidden 3584, ffn 18944,
28/4 heads, 152064-token vocabulary, untied head), as many layers as reach the size, BF16 in
~1 GB shards with an index, and the real R1 tokenizer. ``deepseek-fp8`` is the 671B R1's
own layers in FP8 (bench/synthetic_v3.py), converted to Q4_K_M by default. Weights are
random (one random block tiled). Each tool runs in its own process; its peak RSS is polled
with psutil. The table is printed and written to bench/results/convert.md (one section per
checkpoint kind; a run replaces its own); the checkpoint is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

SHAPE = dict(hidden=3584, ffn=18944, heads=28, kv_heads=4, vocab=152064)
QUANTS = ("F16", "BF16", "Q8_0", "Q4_K_M")
STREAMED = ("F16", "BF16", "Q8_0")  # convert_hf_to_gguf.py writes these itself
SHARD_BYTES = 1 << 30


def layer_tensors(i: int) -> list[tuple[str, tuple[int, ...]]]:
    h, f, kv = SHAPE["hidden"], SHAPE["ffn"], SHAPE["kv_heads"] * SHAPE["hidden"] // SHAPE["heads"]
    p = f"model.layers.{i}."
    return [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.q_proj.bias", (h,)), (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.k_proj.bias", (kv,)), (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.bias", (kv,)), (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)), (p + "mlp.gate_proj.weight", (f, h)),
            (p + "mlp.up_proj.weight", (f, h)), (p + "mlp.down_proj.weight", (h, f))]


def _nbytes(shape) -> int:
    return int(np.prod(shape)) * 2


def make_checkpoint(folder: Path, target_bytes: int) -> int:
    h, v = SHAPE["hidden"], SHAPE["vocab"]
    outer = [("model.embed_tokens.weight", (v, h)), ("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    per_layer = sum(_nbytes(s) for _, s in layer_tensors(0))
    layers = max(1, -(-(target_bytes - sum(_nbytes(s) for _, s in outer)) // per_layer))
    tensors = outer[:1] + [t for i in range(layers) for t in layer_tensors(i)] + outer[1:]
    # shards of ~1 GB
    shards: list[list] = [[]]
    size = 0
    for name, shape in tensors:
        if size and size + _nbytes(shape) > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += _nbytes(shape)
    rng = np.random.default_rng(0)
    tile = (rng.standard_normal(8 << 20, dtype=np.float32) * 0.02).view(np.uint32)
    tile = ((tile + 0x7FFF + ((tile >> 16) & 1)) >> 16).astype(np.uint16)  # bf16
    weight_map = {}
    total = 0
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {}, 0
        for name, shape in shard:
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + _nbytes(shape)]}
            off += _nbytes(shape)
            weight_map[name] = fname
        blob = json.dumps(header).encode()
        blob += b" " * (-len(blob) % 8)
        with open(folder / fname, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob)
            for name, shape in shard:
                left = int(np.prod(shape))
                while left:
                    n = min(left, tile.size)
                    f.write(tile[:n].tobytes())
                    left -= n
        total += off
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}))
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": v,
              "hidden_size": h, "intermediate_size": SHAPE["ffn"], "num_hidden_layers": layers,
              "num_attention_heads": SHAPE["heads"], "num_key_value_heads": SHAPE["kv_heads"],
              "max_position_embeddings": 131072, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
              "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": "bfloat16",
              "bos_token_id": 151646, "eos_token_id": 151643, "use_sliding_window": False}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    import hf_checkpoints

    hf_checkpoints.write_r1_tokenizer(folder)
    return total


def _disk(folder: Path) -> int:
    """Bytes the files under ``folder`` occupy on disk (sparse holes count as nothing)."""
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_blocks * 512
        except OSError:
            pass
    return total


def measure(cmd: list[str], env: dict | None = None,
            outputs: Path | None = None) -> tuple[float, int, int, int, str, float]:
    """(seconds, peak RSS bytes of the process tree, peak disk under ``outputs``, exit code,
    last stderr line, CPU seconds of the tree as last polled: on a shared machine the wall
    time says more about the neighbours than about the tool)."""
    start = time.perf_counter()
    proc = psutil.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True)
    peak = disk = 0
    cpu = 0.0
    polls = 0
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
            times = [p.cpu_times() for p in tree]
            cpu = max(cpu, sum(t.user + t.system for t in times))
        except psutil.Error:
            pass
        if outputs is not None and polls % 10 == 0:
            disk = max(disk, _disk(outputs))
        polls += 1
        time.sleep(0.05)
    elapsed = time.perf_counter() - start
    if outputs is not None:
        disk = max(disk, _disk(outputs))
    err = proc.stderr.read().strip().splitlines() if proc.stderr else []
    return elapsed, peak, disk, proc.returncode, err[-1] if err else "", cpu


def llama_cpp_source(given: str | None) -> Path | None:
    if given:
        return Path(given)
    cache = Path(tempfile.gettempdir()) / "r1local-llama-cpp-sdist"
    found = list(cache.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if found:
        return found[0]
    cache.mkdir(exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "llama-cpp-python==0.3.36", "-d", str(cache)], capture_output=True)
    tars = list(cache.glob("llama_cpp_python-*.tar.gz"))
    if r.returncode or not tars:
        return None
    shutil.unpack_archive(str(tars[0]), str(cache))
    found = list(cache.glob("llama_cpp_python-*/vendor/llama.cpp"))
    return found[0] if found else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=4.0, help="checkpoint size in GB (default 4)")
    ap.add_argument("--llama-cpp-src", help="vendor/llama.cpp of the llama-cpp-python 0.3.36 sdist")
    ap.add_argument("--workdir", default=str(ROOT / "bench" / "results" / "convert-work"))
    ap.add_argument("--no-llama-cpp", action="store_true",
                    help="skip convert_hf_to_gguf.py's rows (minutes each, and ~3.5 GB of memory)")
    ap.add_argument("--checkpoint", choices=("qwen-bf16", "deepseek-fp8"), default="qwen-bf16",
                    help="qwen-bf16: R1-Distill-Qwen-7B shapes in BF16 (default); deepseek-fp8: "
                         "the 671B R1's layers in FP8 with block scales")
    ap.add_argument("--quants", help=f"which rows (default {','.join(QUANTS)}; Q4_K_M for deepseek-fp8)")
    ap.add_argument("--no-two-pass", action="store_true", help="skip the --two-pass rows")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint")
    args = ap.parse_args()
    fp8 = args.checkpoint == "deepseek-fp8"
    wanted = args.quants or ("Q4_K_M" if fp8 else ",".join(QUANTS))
    quants = [q.strip().upper() for q in wanted.split(",") if q.strip()]

    load_before = " / ".join(f"{a:.1f}" for a in os.getloadavg())
    work = Path(args.workdir)
    src = work / "ckpt"
    shutil.rmtree(work, ignore_errors=True)
    src.mkdir(parents=True)
    rows = []
    try:
        t = time.perf_counter()
        if fp8:
            from synthetic_v3 import make_fp8_v3

            size, what = make_fp8_v3(src, int(args.gb * 1e9))
        else:
            size = make_checkpoint(src, int(args.gb * 1e9))
            what = "BF16 checkpoint (R1-Distill-Qwen-7B shapes, ~1 GB shards)"
        print(f"synthetic checkpoint: {size / 1e9:.2f} GB ({what}) in {time.perf_counter() - t:.0f} s",
              flush=True)
        py = sys.executable
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        outs = work / "out"  # every run writes here only, so its disk use can be watched
        outs.mkdir()
        runs = [("copy (cp of the same shards)", None, ["cp", "-r", str(src), str(outs / "copy")], env)]
        for q in quants:
            out = outs / f"ours-{q}.gguf"
            ours = [py, "-m", "quantize", str(src), "--quant", q, "-o", str(out), "--no-progress"]
            runs.append((f"quantize → {q}" + ("" if q in STREAMED else " (one pass)"), q, ours, env))
            if q not in STREAMED and not args.no_two_pass:
                runs.append((f"quantize --two-pass → {q}", q, [*ours, "--two-pass"], env))
        lc = None if args.no_llama_cpp else llama_cpp_source(args.llama_cpp_src)
        from quantize.llamaquant import find_tool

        tool = find_tool()
        if lc is not None and (lc / "convert_hf_to_gguf.py").exists():
            lenv = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(lc / "gguf-py"), os.environ.get("PYTHONPATH")]))}
            for q in quants:
                out = outs / f"llamacpp-{q}.gguf"
                hf = [py, str(lc / "convert_hf_to_gguf.py"), str(src), "--outfile"]
                if q in STREAMED:
                    runs.append((f"convert_hf_to_gguf.py → {q}", q, [*hf, str(out), "--outtype", q.lower()], lenv))
                elif tool is not None:
                    mid = outs / "llamacpp-BF16.gguf"
                    chain = (f"{' '.join(map(str, hf))} {mid} --outtype bf16 && {tool} {mid} {out} {q} "
                             f"{os.cpu_count()} && rm {mid}")
                    runs.append((f"convert_hf_to_gguf.py + llama-quantize → {q}", q, ["bash", "-c", chain], lenv))
                else:
                    print(f"no llama-quantize (./install.sh --tools): the convert_hf_to_gguf.py row for {q} is skipped")
        else:
            print("llama.cpp's convert_hf_to_gguf.py not available: its rows are skipped")
        for label, quant, cmd, e in runs:
            sec, peak, disk, rc, last, cpu = measure(cmd, e, outs)
            ok = rc == 0
            rows.append((label, quant, sec, size / 1e6 / sec if ok else None, peak, disk,
                         "ok" if ok else f"failed: {last[:80]}", cpu))
            print(f"{label}: {sec:.1f} s ({cpu:.0f} CPU s), {size / 1e6 / sec:.0f} MB/s "
                  f"({size / 1e9 / sec:.3f} GB/s), peak RSS {peak / 2**20:.0f} MiB, "
                  f"peak disk {disk / 1e9:.2f} GB, {rows[-1][6]}", flush=True)
            shutil.rmtree(outs, ignore_errors=True)
            outs.mkdir()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    copy_rate = rows[0][3]
    ref = {r[1]: r[3] for r in rows if r[0].startswith("convert_hf")}
    two = {r[1]: r[2] for r in rows if "--two-pass" in r[0]}
    load = " / ".join(f"{a:.1f}" for a in os.getloadavg())
    lines = [f"Converter benchmark: {size / 1e9:.2f} GB {what}, {os.cpu_count()} cores, page cache "
             f"warm; load average (1/5/15 min) {load_before} before, {load} after",
             "", "| run | seconds | CPU seconds | MB/s (source bytes) | × copy | × convert_hf_to_gguf | "
                 "speed-up over two passes | peak RSS MiB | peak disk GB | status |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for label, q, sec, rate, peak, disk, status, cpu in rows:
        vs_copy = f"{rate / copy_rate:.2f}" if rate and copy_rate else "–"
        vs_ref = f"{rate / ref[q]:.2f}" if rate and q and ref.get(q) else "–"
        vs_two = f"{two[q] / sec:.2f}" if rate and q in two and "one pass" in label else "–"
        lines.append(f"| {label} | {sec:.1f} | {cpu:.0f} | {rate:.0f} | {vs_copy} | {vs_ref} | {vs_two} | "
                     f"{peak / 2**20:.0f} | {disk / 1e9:.2f} | {status} |" if rate else
                     f"| {label} | {sec:.1f} | {cpu:.0f} | – | – | – | – | {peak / 2**20:.0f} | "
                     f"{disk / 1e9:.2f} | {status} |")
    table = "\n".join(lines)
    print("\n" + table)
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    write_section(res / "convert.md", args.checkpoint, table)
    return 0


def write_section(path: Path, key: str, text: str) -> None:
    """Replace (or add) the section ``key`` of the results file, keeping the other kinds'."""
    sections: dict[str, str] = {}
    old = path.read_text() if path.exists() else ""
    if old and not old.startswith("<!-- checkpoint: "):
        old = "<!-- checkpoint: qwen-bf16 -->\n" + old  # a file from before the sections
    for part in old.split("<!-- checkpoint: ")[1:]:
        name, _, body = part.partition(" -->\n")
        sections[name] = body.strip()
    sections[key] = text.strip()
    path.write_text("\n\n".join(f"<!-- checkpoint: {k} -->\n{v}" for k, v in sections.items()) + "\n")


if __name__ == "__main__":
    sys.exit(main())
