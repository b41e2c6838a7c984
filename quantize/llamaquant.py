"""The bridge to llama.cpp's own quantizer for K and IQ types.

The binding's llama_model_quantize runs in this process: the one-pass converter's dry run
(which type each tensor gets; with an importance matrix passed as llama-quantize passes it,
imatrix.py having read and normalised it the tool's way), and the two-pass way without a
matrix. The two-pass way with a matrix runs llama.cpp's llama-quantize tool, which reads the
file itself; `./install.sh --tools` builds it from the wheel's llama.cpp source into the
venv's bin.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

from quantize.errors import ConvertError
from quantize.progress import phase

TOOL = "llama-quantize"


def _venv_bins() -> list[str]:
    # not resolved: a venv's python is a link to the base interpreter, the tools sit in the venv
    dirs = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]
    return list(dict.fromkeys(d for d in dirs if d))


def find_tool(name: str = TOOL) -> Path | None:
    """``name`` in the running Python's bin first (built with our llama-cpp-python), then on PATH."""
    for d in _venv_bins():
        found = shutil.which(name, path=d)
        if found:
            return Path(found)
    found = shutil.which(name)
    return Path(found) if found else None


def require_tool(name: str = TOOL) -> Path:
    tool = find_tool(name)
    if tool is None:
        raise ConvertError(f"--imatrix needs llama.cpp's {name}, found neither in "
                           f"{' nor '.join(_venv_bins())} nor on PATH: run ./install.sh --tools "
                           f"(it builds {name} into the venv), or put llama.cpp's {name} on PATH")
    return tool


class _Child:
    """The tool's process, killable from the main thread at any moment, even before it starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._cancelled = False

    def start(self, cmd: list[str]) -> subprocess.Popen:
        with self._lock:
            if self._cancelled:
                raise KeyboardInterrupt
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT)
            return self._proc

    def kill(self) -> None:
        with self._lock:
            self._cancelled = True
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            # gone before the caller deletes the partial output, so nothing re-creates it
            proc.wait()


def quantize_file(src: Path, dst: Path, quant: str, *, threads: int | None, expected: int,
                  imatrix: Path | None, progress: bool) -> None:
    """``src`` (F16/BF16 GGUF) -> ``dst`` at ``quant``; progress follows the output's growth.
    ``dst`` should be a temporary name: the caller renames it once this returns."""
    done = threading.Event()
    result: dict[str, BaseException] = {}
    child = _Child()

    def work() -> None:
        try:
            if imatrix is None:
                _in_process(src, dst, quant, threads)
            else:
                _with_tool(src, dst, quant, threads, imatrix, child)
        except BaseException as err:  # reported on the calling thread
            result["err"] = err
        finally:
            done.set()

    thread = threading.Thread(target=work, name="llama-quantize", daemon=True)
    with phase(f"quantizing to {quant}", expected, progress) as advance:
        thread.start()
        seen = 0
        try:
            while not done.wait(0.25):
                size = dst.stat().st_size if dst.exists() else 0
                if size > seen:
                    advance(min(size, expected) - min(seen, expected))
                    seen = size
        except BaseException:
            child.kill()  # interrupted: the tool must not go on writing behind us
            raise
    thread.join()
    if "err" in result:
        raise result["err"]


def llama_ftype(quant: str) -> int:
    """llama.cpp's file type id for a quant name (general.file_type, the quantizer's ftype)."""
    import llama_cpp

    return int(getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}"))


def run_quantizer(src: Path, dst: Path, quant: str, threads: int | None, *,
                  dry_run: bool = False, imatrix=None) -> tuple[int, str]:
    """llama.cpp's llama_model_quantize in this process: (return code, its log). The log
    (dozens of lines a run) is kept for the caller, not printed. ``imatrix`` (an
    imatrix.Imatrix) is passed as llama-quantize passes it: some type rules depend on
    whether there is one."""
    import ctypes

    import llama_cpp
    from llama_cpp import _logger

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_ftype(quant)
    params.nthread = threads or os.cpu_count() or 1
    params.dry_run = dry_run
    if imatrix is not None and imatrix.data:
        entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix.data) + 1))()  # NULL-ended
        names = [name.encode() for name in imatrix.data]  # kept alive with the arrays below
        for e, name, values in zip(entries, names, imatrix.data.values()):
            e.name, e.size = name, values.size
            e.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    log: list[str] = []

    @llama_cpp.llama_log_callback
    def keep(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        log.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        rc = int(llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params))
    finally:  # llama-cpp-python's own logger again, for the rest of the process
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    return rc, "".join(log)


def _in_process(src: Path, dst: Path, quant: str, threads: int | None) -> None:
    rc, log = run_quantizer(src, dst, quant, threads)
    if rc != 0:
        reason = failure_reason(log) or f"code {rc}"
        raise ConvertError(f"llama.cpp's quantizer failed making {quant}: {_clip(reason)}")


def _with_tool(src: Path, dst: Path, quant: str, threads: int | None, imatrix: Path,
               child: _Child) -> None:
    tool = require_tool()
    # usage: llama-quantize [options] INPUT OUTPUT TYPE [THREADS]
    cmd = [str(tool), "--imatrix", str(imatrix), str(src), str(dst), quant,
           str(threads or os.cpu_count() or 1)]
    try:
        proc = child.start(cmd)
    except OSError as err:
        raise ConvertError(f"cannot run {tool}: {err.strerror or err}: run ./install.sh --tools again") from None
    # its log is kept for the error message only: on success the progress bar says enough
    out, _ = proc.communicate()
    if proc.returncode == 0 and dst.is_file():
        return
    log = out.decode("utf-8", "replace")
    if proc.returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-proc.returncode).name}"
        except ValueError:
            how = f"was killed by signal {-proc.returncode}"
    else:
        how = f"failed (exit code {proc.returncode})"
    reason = _clip(failure_reason(log))
    hint = ("; make the importance matrix with llama-imatrix from this same model"
            if "imatrix" in reason.lower() or "importance matrix" in reason.lower() else "")
    raise ConvertError(f"{tool.name} {how} making {quant}: {reason or 'no message'}{hint}")


# what llama-quantize prints when it gives up, most telling first
_REASONS = (
    re.compile(r"failed to quantize: (.+)"),
    re.compile(r"(failed to load imatrix from .+)"),
    re.compile(r"(missing imatrix metadata.*)"),
    re.compile(r"((?:invalid|missing) (?:ftype|nthread).*)"),
    re.compile(r"(error: .+)", re.IGNORECASE),
    re.compile(r"(.*(?:failed|error).*)", re.IGNORECASE),
)


def _clip(reason: str) -> str:
    """One readable line, whatever llama.cpp printed."""
    return reason if len(reason) <= 240 else reason[:237] + "..."


def failure_reason(log: str) -> str:
    """The one line of a llama-quantize log that says why it failed ('' if none)."""
    lines = [ln.strip(" =\t") for ln in log.splitlines()]
    lines = [ln for ln in lines if ln]
    for pattern in _REASONS:
        for line in lines:
            m = pattern.search(line)
            if m:
                return m.group(1).strip().rstrip(".")
    return lines[-1] if lines else ""
