"""The bridge to llama.cpp's own quantizer (llama_model_quantize) for K and IQ types."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

from quantize.errors import ConvertError
from quantize.progress import phase


def quantize_file(src: Path, dst: Path, quant: str, *, threads: int | None, expected: int,
                  imatrix: Path | None, progress: bool) -> None:
    """``src`` (F16/BF16 GGUF) -> ``dst`` at ``quant``; progress follows the output's growth."""
    done = threading.Event()
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["rc"] = _run(src, dst, quant, threads, imatrix)
        except BaseException as err:  # reported on the calling thread
            result["err"] = err
        finally:
            done.set()

    thread = threading.Thread(target=work, name="llama-quantize", daemon=True)
    with phase(f"quantizing to {quant}", expected, progress) as advance:
        thread.start()
        seen = 0
        while not done.wait(0.25):
            size = dst.stat().st_size if dst.exists() else 0
            if size > seen:
                advance(min(size, expected) - min(seen, expected))
                seen = size
    thread.join()
    if "err" in result:
        raise result["err"]  # type: ignore[misc]
    if result.get("rc") != 0:
        raise ConvertError(f"llama.cpp's quantizer failed on {quant} (code {result.get('rc')}); "
                           "see the messages above")


def _run(src: Path, dst: Path, quant: str, threads: int | None, imatrix: Path | None) -> int:
    if imatrix is not None:
        # llama_model_quantize takes the importance matrix as a C++ map that Python cannot build:
        # hand the job to llama.cpp's own llama-quantize tool
        tool = shutil.which("llama-quantize")
        if tool is None:
            raise ConvertError("--imatrix needs llama.cpp's llama-quantize tool on PATH (the Python "
                               "binding cannot pass an importance matrix): build llama.cpp's tools")
        cmd = [tool, "--imatrix", str(imatrix), str(src), str(dst), quant, str(threads or os.cpu_count() or 1)]
        return subprocess.run(cmd, stdout=subprocess.DEVNULL).returncode
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.nthread = threads or os.cpu_count() or 1
    return int(llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params))
