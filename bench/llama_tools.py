"""llama.cpp's own programs (llama-bench, llama-server) for the benchmarks, built from the
vendored llama.cpp of the llama-cpp-python sdist the installed wheel came from.

They are built against shared libraries and with no rpath, so that they run on the
installed wheel's own libllama/libggml (LD_LIBRARY_PATH, see bench_env): both sides of a
comparison execute the very same ggml machine code, and a ratio measures r1local, not two
builds' flags. Only the programs and the helper libraries they link (not in the wheel) are
kept; each is built once and cached in ~/.cache/r1local/llama-bench/<version>/
(R1LOCAL_BENCH_CACHE).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"


def cache_dir() -> Path:
    base = os.environ.get("R1LOCAL_BENCH_CACHE") or Path.home() / ".cache" / "r1local" / "llama-bench"
    path = Path(base) / LLAMA_CPP_PYTHON
    path.mkdir(parents=True, exist_ok=True)
    return path


def wheel_lib_dir() -> Path:
    """The shared libraries of the installed llama-cpp-python wheel: what the engine runs."""
    import llama_cpp

    return Path(llama_cpp.__file__).parent / "lib"


def _source() -> Path:
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
    return src


def build_tool(target: str) -> Path:
    """The program ``target`` (llama-bench, llama-server), built once and cached."""
    out_dir = cache_dir() / "shared"
    out = out_dir / target
    if out.exists():
        return out
    src = _source()
    build = cache_dir() / "build-shared"
    cmake = ["cmake", "-S", str(src / "vendor" / "llama.cpp"), "-B", str(build),
             "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=ON",
             "-DCMAKE_SKIP_RPATH=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON"]
    if shutil.which("ninja"):
        cmake += ["-G", "Ninja"]
    subprocess.run(cmake, check=True)
    subprocess.run(["cmake", "--build", str(build), "--target", target, "-j",
                    str(os.cpu_count() or 1)], check=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for lib in (build / "bin").glob("lib*"):  # common, mtmd, bench-impl: not in the wheel
        if not lib.name.startswith(("libllama.", "libggml")):
            dst = out_dir / lib.name
            if dst.is_symlink() or dst.exists():  # a second tool: the first one copied it
                dst.unlink()
            shutil.copy2(lib, dst, follow_symlinks=False)
    partial = out.with_name(out.name + ".partial")
    shutil.copy2(build / "bin" / target, partial)
    os.replace(partial, out)  # complete or absent: never a half-copied program
    return out


def bench_env(exe: Path) -> dict[str, str]:
    """The wheel's libraries first, then the helper libraries built beside the program."""
    paths = [str(wheel_lib_dir()), str(exe.parent), os.environ.get("LD_LIBRARY_PATH", "")]
    return dict(os.environ, LD_LIBRARY_PATH=":".join(p for p in paths if p))
