"""One seam to open a model (r1local/session.py): every command that plans, picks a quant or
loads a model says the same thing about it. Through the real CLI, the real server and real
llama.cpp, on the R1 stand-in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from model_fixtures import cache_dir, rewrite_gguf
from test_rpc import rpc_build, workers  # noqa: F401  (fixtures: real worker processes)
from r1local.ggufinfo import read_header
from r1local.store import Store, StoredModel

ROOT = Path(__file__).resolve().parent.parent
SPLIT_NAME = "70b:Q6_K"  # a split file in the catalog: the stand-in plays it here


@pytest.fixture
def env(tmp_path) -> dict:
    """A store of its own, and a fixed machine (a profile) so every process plans alike."""
    profile = tmp_path / "machine.toml"
    profile.write_text('ram = "24G"\ncores = 2\n')
    return dict(os.environ, R1LOCAL_HOME=str(tmp_path / "r1"), R1LOCAL_PROFILE=str(profile),
                NO_COLOR="1", COLUMNS="200", HF_HUB_DISABLE_TELEMETRY="1")


def r1local(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "r1local", *args], env=env, cwd=ROOT,
                          text=True, capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def json_of(p: subprocess.CompletedProcess):
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def store_split(env: dict, parts: list[Path]) -> Store:
    """The parts registered in the store as the catalog's split 70b:Q6_K."""
    store = Store(Path(env["R1LOCAL_HOME"]) / "models")
    folder = store.model_dir(SPLIT_NAME)
    folder.mkdir(parents=True)
    files = [Path(shutil.copy(p, folder / p.name)) for p in parts]
    store.add(StoredModel(name=SPLIT_NAME, tag="70b", quant="Q6_K", files=tuple(files), size=0,
                          source="test", revision=None, sha256=(), added_at=""))
    return store


# ---- a split GGUF is planned from every part, the same way everywhere -------------------------

def test_a_split_model_gets_one_plan_from_run_show_hw_and_the_server(env, r1_standin,
                                                                      monkeypatch):
    parts = rewrite_gguf(r1_standin, "standin-split2", parts=2)
    assert [p.name for p in parts] == ["standin-split2-00001-of-00002.gguf",
                                       "standin-split2-00002-of-00002.gguf"]
    every_tensor = sum(t.nbytes for p in parts for t in read_header(p).tensors)
    part_one = sum(t.nbytes for t in read_header(parts[0]).tensors)
    assert part_one < every_tensor  # planning from part 1 alone would understate it
    store_split(env, parts)

    show = json_of(r1local(env, "show", SPLIT_NAME, "--json"))["plan"]
    ran = json_of(r1local(env, "run", SPLIT_NAME, "hi", "--json", "--max-tokens", "2",
                          "--think-budget", "0", "--seed", "1"))["plan"]
    hw = json_of(r1local(env, "hw", "--json", "--all-quants"))
    row = next(r for r in hw["plans"] if r["tag"] == "70b" and r["quant"] == "Q6_K")
    assert row["downloaded"]

    from r1local.server.background import BackgroundServer
    from r1local.server.config import ServerConfig

    for key in ("R1LOCAL_HOME", "R1LOCAL_PROFILE"):
        monkeypatch.setenv(key, env[key])
    # one sequence, as run loads it (--parallel N plans the KV cache of N contexts)
    with BackgroundServer(ServerConfig(port=0, parallel=1)) as srv:
        r = httpx.post(f"{srv.url}/api/generate", timeout=120, json={
            "model": SPLIT_NAME, "prompt": "hi", "stream": False,
            "options": {"num_predict": 2, "seed": 1}})
        assert r.status_code == 200, r.text
        served = httpx.get(f"{srv.url}/api/ps").json()["models"][0]["plan"]

    assert show["weights_bytes"] == every_tensor
    keys = sorted(k for k in show if k != "summary")
    for other in (ran, row, served):
        assert {k: other[k] for k in keys} == {k: show[k] for k in keys}


def test_a_missing_part_is_named_in_one_line(env, r1_standin):
    parts = rewrite_gguf(r1_standin, "standin-split2", parts=2)
    lonely = Path(env["R1LOCAL_HOME"]) / parts[0].name
    lonely.parent.mkdir(parents=True)
    shutil.copy(parts[0], lonely)
    p = r1local(env, "run", str(lonely), "hi")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        f"r1local: error: {lonely.name} is part 1 of 2, but part 2 ({parts[1].name}) is "
        "missing (put every part in the same folder (r1local pull does))"]


# ---- one answer to "which quant" ------------------------------------------------------------

def test_hw_show_pull_and_run_pick_the_same_quant(env, loopback_hub, r1_standin):
    from loopback_hub import layout_variant
    from r1local.catalog import load_catalog

    env = dict(env, HF_ENDPOINT=loopback_hub.url, HF_HOME=str(Path(env["R1LOCAL_HOME"]) / "hf"))
    rec = json_of(r1local(env, "hw", "--json"))["recommendation"]
    tag, quant = rec["model"], rec["quant"]
    assert rec["fits"]

    assert json_of(r1local(env, "show", tag, "--json"))["quant"] == quant

    layout_variant(loopback_hub, load_catalog().resolve(tag).variant, r1_standin)
    pulled = r1local(env, "pull", tag, "--trust-hub")  # the stand-in is not the pinned file
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip() == f"{tag}:{quant}"
    assert f"chose {tag}:{quant} for this machine" in pulled.stderr

    ran = r1local(env, "run", "hi there", "--max-tokens", "2", "--think-budget", "0", "--seed", "1")
    assert ran.returncode == 0, ran.stderr
    assert f"using {tag}:{quant}, the recommended model for this machine" in ran.stderr
    assert len(loopback_hub.body_gets()) == 1  # run found what pull fetched


# ---- one rule for "is this a reasoning model" ------------------------------------------------

def test_the_listing_and_the_engine_agree_on_reasoning(smollm2, r1_standin, monkeypatch,
                                                       tmp_path):
    from r1local.server.background import BackgroundServer
    from r1local.server.config import ServerConfig

    # the stand-in without a chat template: only its vocabulary (<think> is one token) tells
    bare = rewrite_gguf(r1_standin, "standin-no-template", drop=("tokenizer.chat_template",))[0]
    # SmolLM2 whose template names </think> (as R1's does) though its vocabulary has no <think>
    template = read_header(smollm2).get("tokenizer.chat_template")
    tagged = rewrite_gguf(smollm2, "smollm2-think-template", values={
        "tokenizer.chat_template": template + "{# a reply's </think> part is dropped #}"})[0]
    monkeypatch.setenv("R1LOCAL_HOME", str(tmp_path))
    with BackgroundServer(ServerConfig(port=0, allow_paths=(str(cache_dir()),))) as srv:
        for model in (bare, tagged):
            caps = httpx.post(f"{srv.url}/api/show", json={"model": str(model)}).json()
            r = httpx.post(f"{srv.url}/api/chat", timeout=120, json={
                "model": str(model), "think": True, "stream": False,
                "messages": [{"role": "user", "content": "hi"}],
                "options": {"num_predict": 2, "seed": 1}})
            assert "thinking" in caps["capabilities"], model.name
            assert r.status_code == 200, (model.name, r.text)  # the engine says so too


# ---- over RPC workers: show plans what run loads ---------------------------------------------

def test_show_and_run_over_workers_plan_alike(env, workers, smollm2):
    """`show --rpc` and `run --rpc` both plan the cluster in session (planner.plan_cluster):
    the same context, the same split, the same memory per device."""
    w = workers("--mem", "1G")
    shown = json_of(r1local(env, "show", str(smollm2), "--rpc", w.endpoint, "--json"))["plan"]
    ran = json_of(r1local(env, "run", str(smollm2), "hi", "--json", "--max-tokens", "2",
                          "--seed", "1", "--rpc", w.endpoint))["plan"]
    assert shown["rpc"]["parts"] and shown["rpc"] == ran["rpc"]
    for key in ("n_ctx", "n_gpu_layers", "ram_bytes", "kv_bytes", "verdict", "experts_on"):
        assert shown[key] == ran[key], key
    assert shown["rpc"]["parts"][-1]["where"] == w.endpoint and shown["rpc"]["parts"][-1]["output"]
