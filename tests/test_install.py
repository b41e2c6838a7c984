"""install.sh refuses bad options with one clear line, before touching anything; the llama.cpp
tools it installs run on the wheel's own libraries."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
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


# install.sh writes this into a venv it put llama.cpp's tools in, one name a line
TOOLS_MARK = Path(sys.prefix, ".r1local-tools")


@pytest.mark.skipif(not TOOLS_MARK.exists(), reason="this venv was not set up by install.sh")
def test_installed_tools_run_on_the_wheels_libraries():
    """The cached tools run from the venv and load llama.cpp from it: the wheel's libllama and
    libggml (the very ones llama_cpp loads), never the deleted build tree."""
    import llama_cpp

    names = TOOLS_MARK.read_text().split()
    assert {"llama-quantize", "llama-imatrix"} <= set(names)
    wheel_libs = Path(llama_cpp.__file__).parent / "lib"
    for name in names:
        tool = Path(sysconfig.get_path("scripts"), name)
        out = subprocess.run([str(tool), "--help"], capture_output=True, text=True, timeout=60)
        assert "usage" in (out.stdout + out.stderr).lower(), out.stdout[-500:] + out.stderr[-500:]
        if sys.platform != "linux" or not shutil.which("ldd"):
            continue
        ldd = subprocess.run(["ldd", str(tool)], capture_output=True, text=True, timeout=60).stdout
        resolved = dict(re.findall(r"^\s*(\S+) => (\S+)", ldd, re.M))
        assert "not found" not in ldd, ldd
        for lib in ("libllama.so.0", "libggml.so.0", "libggml-base.so.0"):
            assert Path(resolved[lib]).resolve().parent == wheel_libs.resolve(), ldd
        # every llama.cpp library the tool loads lives in the venv
        ours = [Path(p) for lib, p in resolved.items() if lib.startswith(("libllama", "libggml"))]
        for path in ours:
            assert path.resolve().is_relative_to(Path(sys.prefix).resolve()), path
        # and the search paths of the tool and its own libraries are relative to themselves: no
        # folder of the deleted build tree, no empty entry (the loader reads it as the current
        # directory, so a stray libllama-common.so.0 there would be loaded)
        if shutil.which("readelf"):
            for elf in [tool, *(p for p in ours if p.resolve().parent.name == "llama.cpp")]:
                dyn = subprocess.run(["readelf", "-d", str(elf)], capture_output=True, text=True).stdout
                for runpath in re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library r\w*path: \[(.*)\]", dyn):
                    assert all(e.startswith("$ORIGIN") for e in runpath.split(":")), (elf, runpath)
