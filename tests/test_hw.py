"""`r1local hw` through the real CLI: tables, --json, hypothetical machines, bad flags."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_rpc import rpc_build, workers  # noqa: F401  (fixtures: real worker processes)

ROOT = Path(__file__).resolve().parent.parent


def hw(*args: str, env_home: Path | None = None, columns: int = 160,
       command: str = "hw") -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, COLUMNS=str(columns))
    if env_home is not None:
        env["R1LOCAL_HOME"] = str(env_home)
    return subprocess.run([sys.executable, "-m", "r1local", command, *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=60)


def test_hw_json_on_this_machine(tmp_path):
    out = hw("--json", env_home=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    m = report["machine"]
    assert m["physical_cores"] >= 1 and m["ram_total"] > 0
    rec = report["recommendation"]
    assert rec["fits"] and rec["ram_bytes"] <= m["ram_total"]
    tags = {r["tag"] for r in report["plans"]}
    assert {"1.5b", "7b", "8b", "14b", "32b", "70b", "671b"} <= tags
    marked = [r for r in report["plans"] if r["recommended"]]
    assert len(marked) == 1 and marked[0]["tag"] == rec["model"]
    assert any(r["verdict"] == "no-fit" for r in report["plans"])  # 671b here


def test_hw_table_shows_machine_verdicts_and_recommendation(tmp_path):
    out = hw("--ram", "32G", "--vram", "8G", env_home=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "hypothetical machine" in text
    assert "layers on GPU" in text and "does not fit" in text and "all on GPU" in text
    assert "Recommended:" in text and "r1local pull" in text


def test_hw_hypothetical_json_matches_flags(tmp_path):
    out = hw("--ram", "128G", "--vram", "24G", "--vram", "24G", "--cores", "16", "--json",
             env_home=tmp_path)
    report = json.loads(out.stdout)
    assert report["machine"]["hypothetical"]
    assert [g["total_bytes"] for g in report["machine"]["gpus"]] == [24 << 30, 24 << 30]
    for r in report["plans"]:
        if r["fits"]:
            assert r["vram_bytes"] <= 48 << 30 and r["ram_bytes"] <= 128 << 30
    apple = json.loads(hw("--ram", "64G", "--unified", "--json", env_home=tmp_path).stdout)
    assert apple["machine"]["gpus"][0]["unified"]


def test_hw_profile(tmp_path):
    prof = tmp_path / "server.toml"
    prof.write_text('ram = "192G"\nvram = "24G"\ncores = 16\n')
    report = json.loads(hw("--profile", str(prof), "--json", env_home=tmp_path).stdout)
    assert report["machine"]["ram_total"] == 192 << 30
    assert report["recommendation"]["model"] == "671b"


def test_671b_on_a_24_gb_gpu_and_192_gb_ram_keeps_the_experts_in_ram(tmp_path):
    """The typical big-MoE box: every layer's attention, shared expert and (MLA) KV cache
    on the 24 GB GPU, the routed experts in RAM; --experts-on gpu gets only a few layers
    on the GPU and is slower."""
    flags = ("--vram", "24G", "--ram", "192G", "--cores", "16")
    report = json.loads(hw(*flags, "--json", env_home=tmp_path).stdout)
    rec = report["recommendation"]
    assert rec["model"] == "671b" and rec["experts_on"] == "cpu" and rec["fits"]
    rows = {r["quant"]: r for r in report["plans"] if r["tag"] == "671b"}
    iq1 = rows["UD-IQ1_S"]
    assert iq1["verdict"] == "gpu" and iq1["n_gpu_layers"] == 62 and iq1["experts_on"] == "cpu"
    assert iq1["vram_bytes"] < 24 << 30 < iq1["ram_bytes"] < 192 << 30
    # the VRAM left after every layer's rest takes the last layers' experts
    n = iq1["experts_in_ram"]
    assert 50 < n < 61 and iq1["placement"] == f"all on GPU, experts of layers 0-{n - 1} in RAM"
    kept = json.loads(hw(*flags, "--experts-on", "cpu", "--json", env_home=tmp_path).stdout)
    iq1_kept = next(r for r in kept["plans"] if r["tag"] == "671b" and r["quant"] == "UD-IQ1_S")
    assert iq1_kept["placement"] == "all on GPU, experts in RAM"
    assert iq1_kept["tok_s_high"] < iq1["tok_s_high"]
    assert not rows["Q4_K_M"]["fits"]  # 377 GiB: more than the whole machine
    along = json.loads(hw(*flags, "--experts-on", "gpu", "--json", env_home=tmp_path).stdout)
    iq1_along = next(r for r in along["plans"] if r["tag"] == "671b" and r["quant"] == "UD-IQ1_S")
    assert iq1_along["verdict"] == "partial" and iq1_along["n_gpu_layers"] < 20
    assert iq1_along["tok_s_high"] < iq1["tok_s_high"] and iq1_along["tok_s_low"] < iq1["tok_s_low"]
    text = hw(*flags, env_home=tmp_path, columns=200).stdout
    assert re.search(r"experts of layers 0-\d+ in RAM|layers 0-\d+'s routed experts", text), text
    assert "Recommended: 671b:" in text
    narrow = hw(*flags, env_home=tmp_path, columns=80).stdout
    assert "GPU+exp RAM" in narrow


# ---- hw and show over RPC workers (real `r1local worker` processes) -------------------------

def test_hw_and_show_plan_the_whole_cluster_with_a_row_per_device(tmp_path, workers, smollm2):
    a, b = workers("--mem", "2G"), workers("--mem", "6G")
    rpc = f"{a.endpoint},{b.endpoint}"
    report = json.loads(hw("--ram", "8G", "--rpc", rpc, "--json", env_home=tmp_path).stdout)
    assert [(w["endpoint"], w["offered_bytes"]) for w in report["workers"]] == [
        (a.endpoint, 2 << 30), (b.endpoint, 6 << 30)]
    rec = report["recommendation"]
    parts = rec["rpc"]["parts"]
    assert [p["where"] for p in parts] == ["local CPU", a.endpoint, b.endpoint]
    assert parts[-1]["output"] and all(p["bytes"] <= p["budget"] for p in parts)
    assert [p["budget"] for p in parts[1:]] == [2 << 30, 6 << 30]
    # the cluster holds what this machine alone does not
    alone = json.loads(hw("--ram", "8G", "--json", env_home=tmp_path).stdout)
    order = [r["tag"] for r in alone["plans"]]
    assert order.index(rec["model"]) >= order.index(alone["recommendation"]["model"])
    fits_alone = {(r["tag"], r["quant"]) for r in alone["plans"] if r["fits"]}
    assert any(r["fits"] and (r["tag"], r["quant"]) not in fits_alone for r in report["plans"])
    text = hw("--ram", "8G", "--rpc", rpc, env_home=tmp_path, columns=160).stdout
    assert "where the layers go" in text and f"--rpc {rpc}" in text
    assert text.count(a.endpoint) >= 2 and text.count(b.endpoint) >= 2  # machine rows, devices
    # show: the same split for a file, one line per device
    shown = hw(str(smollm2), "--rpc", rpc, command="show", env_home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = [x for x in shown.stdout.splitlines() if x.startswith(" " * 14)]
    assert [x.split()[0] for x in lines] == ["local", a.endpoint, b.endpoint]
    assert "+ output" in lines[-1] and "split over 3 devices" in shown.stdout


def test_hw_with_an_unreachable_worker_is_one_line(tmp_path, rpc_build):
    from test_rpc import free_port

    port = free_port()
    out = hw("--rpc", f"127.0.0.1:{port}", env_home=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode != 0 and len(lines) == 1 and "Traceback" not in out.stderr
    assert f"cannot reach RPC worker 127.0.0.1:{port}" in lines[0]


@pytest.mark.parametrize("args, message", [
    (["--ram", "lots"], "cannot read size"),
    (["--vram", "8G"], "needs --ram"),
    (["--ram", "16G", "--profile", "x.toml"], "either --profile"),
    (["--profile", "/nonexistent/p.toml"], "does not exist"),
    (["--ram", "16G", "--unified", "--vram", "8G", "--vram", "8G"], "at most one --vram"),
    (["--ctx", "10"], "too small"),
    (["--min-speed", "-1"], "--min-speed -1 is out of range"),
])
def test_bad_flags_give_one_line_errors(tmp_path, args, message):
    out = hw(*args, env_home=tmp_path)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.stderr


# ---- the table fits the terminal it is shown in ---------------------------------------------

def _table_rows(text: str, report: dict) -> list[str]:
    tags = {r["tag"] for r in report["plans"]}
    return [ln for ln in text.splitlines()
            if ln.strip(" │┃").split(" ")[0].lstrip("★ ") in tags or "★" in ln]


def test_hw_fits_80_columns_without_cutting_names(tmp_path):
    report = json.loads(hw("--ram", "64G", "--vram", "12G", "--json", env_home=tmp_path).stdout)
    out = hw("--ram", "64G", "--vram", "12G", env_home=tmp_path, columns=80)
    assert out.returncode == 0, out.stderr
    assert max(len(line) for line in out.stdout.splitlines()) <= 80
    rows = _table_rows(out.stdout, report)
    assert len(rows) == len(report["plans"])  # one line per plan: nothing wrapped
    assert "8b-llama" in out.stdout and "…" not in out.stdout
    assert "1k reply" in out.stdout and "Recommended:" in out.stdout


def test_hw_shows_every_column_when_there_is_room_or_with_wide(tmp_path):
    headers = ("model", "quant", "fits", "tok/s", "1k reply", "RAM", "VRAM", "context", "file")
    for out in (hw("--ram", "64G", "--vram", "12G", env_home=tmp_path, columns=200),
                hw("--ram", "64G", "--vram", "12G", "--wide", env_home=tmp_path, columns=80)):
        assert out.returncode == 0, out.stderr
        head = next(line for line in out.stdout.splitlines() if "quant" in line)
        assert all(h in head for h in headers), head
        assert "layers on GPU" in out.stdout  # the long form of the verdict


def test_vram_0_means_no_gpu(tmp_path):
    report = json.loads(hw("--ram", "16G", "--vram", "0", "--json", env_home=tmp_path).stdout)
    assert report["machine"]["gpus"] == [] and report["recommendation"]["verdict"] == "cpu"


def test_min_speed_is_one_setting_for_hw_and_show(tmp_path):
    """--min-speed changes the pick, and hw and show pick alike with it."""
    import os

    prof = tmp_path / "desk.toml"
    prof.write_text('ram = "24G"\ncores = 2\n')
    picks = {}
    for speed in ("2", "0"):
        rec = json.loads(hw("--profile", str(prof), "--min-speed", speed, "--json",
                            env_home=tmp_path).stdout)["recommendation"]
        os.environ["R1LOCAL_PROFILE"] = str(prof)
        try:
            shown = json.loads(hw(rec["model"], "--min-speed", speed, "--json", command="show",
                                  env_home=tmp_path).stdout)
        finally:
            del os.environ["R1LOCAL_PROFILE"]
        assert shown["quant"] == rec["quant"]
        picks[speed] = (rec["model"], rec["quant"])
    assert picks["2"] != picks["0"]  # a 2-core machine: the fastest pick is not the best one


@pytest.mark.parametrize("verb", ["hw", "pull", "run", "serve", "convert", "list", "show", "rm",
                                  "import"])
def test_every_help_has_an_example(verb):
    out = hw("--help", command=verb)
    assert out.returncode == 0 and "example:\n  r1local " in out.stdout
