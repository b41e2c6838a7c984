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


# ---- the progress line while compiling ------------------------------------------------------

def _tiny_project(root: Path, steps: int, fail: bool = False) -> Path:
    """A CMake project whose build takes ``steps`` one-second steps (and fails at the last)."""
    src = root / "src"
    src.mkdir()
    lines = ["cmake_minimum_required(VERSION 3.16)", "project(tiny NONE)"]
    for i in range(steps):
        cmd = "false" if fail and i == steps - 1 else "sleep 1"
        lines.append(f'add_custom_command(OUTPUT s{i} COMMAND {cmd} COMMAND touch s{i} '
                     f'COMMENT "step {i}")')
    lines.append(f"add_custom_target(all_steps ALL DEPENDS {' '.join(f's{i}' for i in range(steps))})")
    (src / "CMakeLists.txt").write_text("\n".join(lines) + "\n")
    return src


def _build_through_run_step(tmp_path: Path, fail: bool) -> subprocess.CompletedProcess:
    src = _tiny_project(tmp_path, 4, fail)
    log = tmp_path / "build.log"
    script = (f'R1LOCAL_INSTALL_FUNCTIONS=1 source "{SCRIPT}"; '
              f'cmake -S "{src}" -B "{tmp_path}/b" -G Ninja >/dev/null && '
              f'run_step "compiling tiny" "{log}" "try again" -- cmake --build "{tmp_path}/b" -j 1')
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "R1LOCAL_PROGRESS_EVERY": "0.5"})


@pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("ninja")), reason="no cmake/ninja")
def test_a_build_shows_its_step_elapsed_time_and_estimate(tmp_path):
    out = _build_through_run_step(tmp_path, fail=False)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    steps = [ln for ln in lines if re.match(r"  compiling tiny: step \d/\d, \d+ s so far", ln)]
    assert len(steps) >= 3, out.stderr  # a line every half second over ~4 s
    assert any(re.search(r"about \d+ s left \(log: .*build\.log\)$", ln) for ln in steps), steps
    assert int(re.search(r"step (\d)/4", steps[-1]).group(1)) > int(
        re.search(r"step (\d)/4", steps[0]).group(1))  # it moves


@pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("ninja")), reason="no cmake/ninja")
def test_a_failed_build_shows_its_last_lines_and_the_fix(tmp_path):
    out = _build_through_run_step(tmp_path, fail=True)
    assert out.returncode != 0
    assert "FAILED" in out.stderr  # ninja's own words, from the log's tail
    assert re.search(r"error:\S* compiling tiny failed: try again \(full log: .*build\.log\)",
                     out.stderr.strip().splitlines()[-1])
