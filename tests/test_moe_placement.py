"""A MoE model's routed experts kept in this machine's RAM while the rest of every layer
runs elsewhere (llama.cpp's tensor buffer-type overrides), and where llama.cpp really puts
each layer for n_gpu_layers. An `r1local worker` process stands in for the GPU: llama.cpp
treats a worker as an offload device, and its load log says how much went to each device.

The model is a tiny random DeepSeek-V3 (deepseek2: MLA, one dense layer, two MoE layers of
8 experts with a shared expert) converted by our own quantize/."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import hf_checkpoints as hfc
import model_fixtures
from r1local.ggufinfo import read_model_header
from r1local.hardware import hypothetical
from r1local.planner import plan_gguf, plan_rpc
from r1local.shapes import shape_from_gguf
from test_rpc import GREEDY, r1local, rpc_build, workers  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
G = 1 << 30
FIXTURE_VERSION = 1
EXPERT_NAME = re.compile(r"\.ffn_(gate|up|down)_exps\.")


@pytest.fixture(scope="module")
def tiny_moe() -> Path:
    """The tiny DeepSeek-V3 as an F16 GGUF, converted once and cached."""
    from quantize import convert

    src = hfc.deepseek_v3_checkpoint(dtype="bfloat16")
    out = model_fixtures.cache_dir() / f"tiny-moe-{src.name}-v{FIXTURE_VERSION}-F16.gguf"
    if not out.exists():
        tmp = out.with_name(out.name + ".partial.gguf")
        convert(src, tmp, "F16", force=True, progress=False)
        tmp.replace(out)
    return out


def _parse(log: str) -> dict[str, float]:
    """llama.cpp's buffer sizes in MiB from its load log, by kind and device: {"model RPC0":
    2.75, "KV CPU": 3.75, ...} (a worker's address left out)."""
    found: dict[str, float] = {}
    for dev, kind, mib in re.findall(
            r":\s+(\S+?)(?:\[[^\]]*\])?\s+(model|KV|compute) buffer size = +([\d.]+) MiB", log):
        found[f"{kind} {dev}"] = found.get(f"{kind} {dev}", 0.0) + float(mib)
    return found


LOAD = """
import sys
from r1local import rpc
rpc.connect([sys.argv[2]])
from r1local.model_params import tensors_in_ram, with_model_params
import llama_cpp
cls = (with_model_params(llama_cpp.Llama, [tensors_in_ram(sys.argv[5:])]) if sys.argv[5:]
       else llama_cpp.Llama)
llm = cls(model_path=sys.argv[1], n_gpu_layers=int(sys.argv[3]), n_ctx=int(sys.argv[4]),
          flash_attn=True, verbose=True)
llm.close()
"""


def load_log(path: Path, endpoint: str, n_gpu_layers: int, n_ctx: int,
             cpu_tensors: tuple[str, ...] = ()) -> str:
    """llama.cpp's load log for ``path`` with one worker as its only offload device."""
    p = subprocess.run([sys.executable, "-c", LOAD, str(path), endpoint, str(n_gpu_layers),
                        str(n_ctx), *cpu_tensors], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stderr


def mib(n: int) -> float:
    return n / MiB


# ---- the shape of a MoE file ---------------------------------------------------------------

def test_shape_finds_the_routed_experts_and_the_mla_cache(tiny_moe):
    h = read_model_header(tiny_moe)
    s = shape_from_gguf(h)
    per_block = [sum(t.nbytes for t in h.tensors
                     if t.name.startswith(f"blk.{i}.") and EXPERT_NAME.search(t.name))
                 for i in range(s.n_layers)]
    assert s.block_experts == tuple(per_block) and per_block[0] == 0 and per_block[1] > 0
    assert s.experts_used == 2 / 8
    # MLA as llama.cpp caches it: the latent and the rope part (key_length), no V rows
    assert s.kv_width == h.arch_value("attention.key_length") == 160


# ---- the real load: experts here, the rest on the worker -----------------------------------

def test_experts_stay_in_ram_and_the_rest_goes_to_the_worker(workers, tiny_moe):
    """`run --rpc W --experts-on cpu`: every routed expert is in this process's RAM, every
    other weight of every block, the output matrix and the whole KV cache are on the worker,
    as much as the planner said; the greedy tokens are the all-local run's."""
    w = workers()
    prompt = ("The quick brown fox", "--max-tokens", "40", "--json", *GREEDY)
    alone = r1local("run", str(tiny_moe), *prompt)
    assert alone.returncode == 0, alone.stderr
    split = r1local("run", str(tiny_moe), *prompt, "--rpc", w.endpoint, "--experts-on", "cpu",
                    "--verbose")
    assert split.returncode == 0, split.stderr[-2000:]
    log = split.stderr
    moved = re.findall(r"tensor (\S+) \(.*\) buffer type overridden to CPU", log)
    h = read_model_header(tiny_moe)
    experts = [t for t in h.tensors if EXPERT_NAME.search(t.name)]
    assert sorted(moved) == sorted(t.name for t in experts) and len(moved) == 6
    got = _parse(log)
    # the worker holds all but the experts and the input embedding (always on the CPU)
    on_worker = h.tensor_bytes - sum(t.nbytes for t in experts) - h.tensor("token_embd.weight").nbytes
    assert got["model RPC0"] == pytest.approx(mib(on_worker), abs=0.01)
    shape = shape_from_gguf(h)  # and the planner counts what the worker holds the same way
    assert sum(shape.block_bytes) - sum(shape.block_experts) + shape.out_bytes == on_worker
    report = json.loads(split.stdout)
    plan = report["plan"]
    assert plan["experts_on"] == "cpu"
    assert got["KV RPC0"] == pytest.approx(mib(plan["kv_bytes"]), abs=0.01)
    assert "KV CPU" not in got  # no layer's cache stayed here
    # the split the planner made for it, as the start line says
    assert f"layers 0-2 + output on {w.endpoint}" in log and "routed experts local CPU" in log
    local = json.loads(alone.stdout)
    assert (report["thinking"], report["answer"]) == (local["thinking"], local["answer"])
    assert report["stats"]["completion_tokens"] == 40


def test_without_the_override_the_experts_go_with_their_layer(workers, tiny_moe):
    """The control: without the override, every offloaded layer takes its experts along."""
    w = workers()
    log = load_log(tiny_moe, w.endpoint, 4, 512)  # every block and the output
    h = read_model_header(tiny_moe)
    got = _parse(log)
    assert got["model RPC0"] == pytest.approx(
        mib(h.tensor_bytes - h.tensor("token_embd.weight").nbytes), abs=0.01)
    assert "overridden" not in log


def test_vram_left_over_takes_the_last_blocks_experts_as_planned(workers, tiny_moe):
    """A GPU (the worker stands in) with room for every block's rest and for one MoE
    block's experts: the planner keeps only block 1's experts in RAM, and llama.cpp, given
    the plan's pattern, overrides exactly those and puts on the device what the plan says."""
    from r1local.planner import _split

    h = read_model_header(tiny_moe)
    shape = shape_from_gguf(h)
    L = shape.n_layers
    assert L == 3 and shape.experts(0) == 0 and shape.experts(1) and shape.experts(2)
    # VRAM the planner may use: between what keeping block 1's experts and keeping none needs
    one_kept = _split(shape, L + 1, 512, "f16", True, 1, False, True, 2).vram
    none_kept = _split(shape, L + 1, 512, "f16", True, 1, False, True, 1).vram
    assert one_kept < none_kept
    box = hypothetical(8 * G, (one_kept + none_kept) // 2 + 400 * MiB)
    plan = plan_gguf(h, box, n_ctx=512)
    assert plan.fits and plan.verdict == "gpu" and plan.experts_on == "cpu"
    assert plan.experts_in_ram == 2  # blocks 0 (dense: none) and 1
    forced = plan_gguf(h, box, n_ctx=512, experts_on="cpu")
    assert forced.experts_in_ram == L and forced.vram_bytes < plan.vram_bytes

    w = workers()
    log = load_log(tiny_moe, w.endpoint, plan.n_gpu_layers, plan.n_ctx, plan.cpu_tensors)
    moved = re.findall(r"tensor (\S+) \(.*\) buffer type overridden to CPU", log)
    assert sorted(moved) == sorted(t.name for t in h.tensors
                                   if EXPERT_NAME.search(t.name) and t.name.startswith("blk.1."))
    got = _parse(log)
    assert got["model RPC0"] == pytest.approx(mib(plan.vram_weights_bytes), abs=0.01)
    assert got["model RPC0"] > mib(forced.vram_weights_bytes)


# ---- llama.cpp's n_gpu_layers rule, against the planner ------------------------------------

@pytest.mark.parametrize("n_gpu", [1, 5, 31])
def test_n_gpu_layers_puts_the_output_and_the_last_blocks_where_the_planner_says(workers, smollm2, n_gpu):
    """n_gpu_layers = g offloads the output matrix and the last g - 1 blocks (llama-model.cpp:
    i_gpu_start = n_layer + 1 - g); the planner's VRAM weights and KV cache for g match what
    llama.cpp puts on the device (the worker)."""
    w = workers()
    h = read_model_header(smollm2)
    plan = plan_gguf(h, hypothetical(16 * G, 8 * G), n_ctx=1024, n_gpu_layers=n_gpu)
    assert plan.layers_on_gpu == n_gpu - 1
    got = _parse(load_log(smollm2, w.endpoint, n_gpu, 1024))
    # tied embeddings: the output is a copy of token_embd on the device (+ its small norm)
    assert got["model RPC0"] == pytest.approx(mib(plan.vram_weights_bytes), abs=0.02)
    kv_one = plan.kv_bytes / plan.n_layers
    assert got.get("KV RPC0", 0.0) == pytest.approx(mib(kv_one * (n_gpu - 1)), abs=0.01)
    assert got.get("KV CPU", 0.0) == pytest.approx(mib(kv_one * (30 - (n_gpu - 1))), abs=0.01)


# ---- the planner's RPC split for a MoE model ------------------------------------------------

def test_plan_rpc_keeps_experts_here_and_fills_the_worker(tiny_moe):
    h = read_model_header(tiny_moe)
    shape = shape_from_gguf(h)
    plan = plan_gguf(h, hypothetical(8 * G), n_ctx=4096, experts_on="cpu")
    split = plan_rpc(shape, plan, [("w:1", 1 * G)], experts_on="cpu")
    assert split.fits and split.cpu_tensors and split.parts[0].n_blocks == 0
    assert split.parts[1].first == 0 and split.parts[1].last == 2 and split.parts[1].output
    assert split.n_gpu_layers == shape.n_layers + 1
    # with the experts along, the same worker gets its share by memory, experts included
    along = plan_rpc(shape, plan, [("w:1", 1 * G)], experts_on="gpu")
    assert not along.cpu_tensors and along.parts[0].n_blocks > 0
    # auto: the experts go along while that fits (the worker above had room), and stay
    # here when only that fits: room here for the experts, the worker for the rest only
    plan = plan_gguf(h, hypothetical(8 * G), n_ctx=4096)  # no GPU here: experts "along"
    assert plan.experts_on == "gpu" and not plan.cpu_tensors
    assert not plan_rpc(shape, plan, [("w:1", 1 * G)]).cpu_tensors
    here, there = split.parts[0].bytes, split.parts[1].bytes
    tight = replace(plan, ram_budget=here)
    auto = plan_rpc(shape, tight, [("w:1", there)])
    assert auto.cpu_tensors and auto.fits and auto.parts[1].bytes == there
    assert not plan_rpc(shape, tight, [("w:1", there)], experts_on="gpu").fits


def test_serve_experts_on_cpu_keeps_them_here_for_a_model_over_a_worker(workers, tiny_moe,
                                                                       tmp_path):
    """`serve --rpc W --experts-on cpu`: a MoE model that does not fit here alone loads over
    the worker with its routed experts in this machine's RAM, the server's log says the
    split, and the reply is the all-local run's."""
    import os

    import httpx

    from r1local import session

    w = workers()
    prompt = "The quick brown fox"
    alone = r1local("run", str(tiny_moe), prompt, "--max-tokens", "24", "--json", *GREEDY)
    assert alone.returncode == 0, alone.stderr
    model = session.locate(str(tiny_moe))
    cores = os.cpu_count() or 1
    ram = max(m for m in range(16, 4096, 8)  # the most RAM in which it does not fit alone
              if not session.plan_model(model, hypothetical(ram=m * MiB, cores=cores)).fits)
    profile = tmp_path / "machine.toml"
    profile.write_text(f'ram = "{ram}M"\ncores = {cores}\n')
    env = {**os.environ, "R1LOCAL_HOME": str(tmp_path / "home"), "R1LOCAL_PROFILE": str(profile),
           "PYTHONUNBUFFERED": "1"}
    env.pop("R1LOCAL_API_KEY", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "r1local", "serve", "--port", "0", "--rpc", w.endpoint,
         "--experts-on", "cpu", "--allow-paths", str(tiny_moe.parent)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        url = next(m.group(1) for line in server.stderr
                   if (m := re.search(r"serving on (http://127\.0\.0\.1:\d+)", line)))
        body = {"model": str(tiny_moe), "stream": False,
                "messages": [{"role": "user", "content": prompt}],
                "options": {"temperature": 0, "top_k": 1, "seed": 7, "num_predict": 24}}
        r = httpx.post(url + "/api/chat", json=body, timeout=120)
        assert r.status_code == 200, r.text
        got = r.json()["message"]
    finally:
        server.terminate()
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    assert "Traceback" not in err
    loaded = [x for x in err.splitlines() if x.startswith("r1local: loaded ") and tiny_moe.name in x]
    assert len(loaded) == 1 and f"on {w.endpoint}" in loaded[0], err
    assert loaded[0].endswith("routed experts local CPU"), loaded[0]
    local = json.loads(alone.stdout)
    assert (got.get("thinking", ""), got["content"]) == (local["thinking"], local["answer"])
