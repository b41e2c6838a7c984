"""install.sh refuses bad options with one clear line, before touching anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "install.sh"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30)


def test_help():
    out = run("--help")
    assert out.returncode == 0
    assert "--backend" in out.stdout and "--dev" in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--backend", "tpu"], "unknown backend 'tpu'"),
    (["--backend"], "--backend needs a value"),
    (["--frobnicate"], "unknown option '--frobnicate'"),
])
def test_bad_options(args, message):
    out = run(*args)
    assert out.returncode != 0
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
