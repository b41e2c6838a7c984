"""`r1local hw` through the real CLI: tables, --json, hypothetical machines, bad flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    prof.write_text('ram = "512G"\ncores = 64\n')
    report = json.loads(hw("--profile", str(prof), "--json", env_home=tmp_path).stdout)
    assert report["recommendation"]["model"] == "671b"


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
