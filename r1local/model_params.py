"""What llama_cpp.Llama does not let us set in llama_model_params: a load-progress callback
and tensor buffer-type overrides (a MoE model's routed experts kept in host RAM).

llama-cpp-python 0.3.36 builds the parameters and loads the model in one constructor, so
`with_model_params` makes a Llama subclass whose ``model_params``, the moment the
constructor assigns them, go through our edits before the model loads. Each edit keeps
what llama.cpp will read (callbacks, tables) alive as long as the class lives.
"""

from __future__ import annotations

import ctypes
from typing import Any, Callable, Sequence

Edit = Callable[[Any], None]  # changes a llama_model_params in place


def with_model_params(base: type, edits: Sequence[Edit]) -> type:
    """A subclass of ``base`` (llama_cpp.Llama) whose model_params get ``edits`` applied."""

    def get(self):
        return self.__dict__["model_params"]

    def put(self, params) -> None:
        for edit in edits:
            edit(params)
        self.__dict__["model_params"] = params

    return type("Llama", (base,), {"model_params": property(get, put),
                                   "_param_edits": tuple(edits)})


def load_progress(progress: Callable[[float], None]) -> Edit:
    """llama.cpp's own load fraction (0 to 1, per tensor) to ``progress``, on the loading
    thread. A failing watcher must not abort the load."""
    import llama_cpp

    def report(fraction: float, _user: Any) -> bool:
        try:
            progress(float(fraction))
        except Exception:
            pass
        return True  # False would abort the load

    callback = llama_cpp.llama_progress_callback(report)

    def edit(params: Any) -> None:
        params.progress_callback = callback

    edit.keep = callback  # type: ignore[attr-defined]
    return edit


class _Override(ctypes.Structure):
    # struct llama_model_tensor_buft_override { const char * pattern; ggml_backend_buffer_type_t buft; }
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


_DEV_CPU = 0  # enum ggml_backend_dev_type


def cpu_buffer_type() -> int:
    """ggml_backend_cpu_buffer_type(), reached through the device registry of the libggml
    that llama_cpp loaded (the CPU device's default buffer type is that one)."""
    from pathlib import Path

    import llama_cpp

    from r1local.hardware import ggml_library

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    path = ggml_library(lib_dir)
    if path is None:
        raise OSError(f"no libggml next to llama_cpp in {lib_dir}")
    lib = ctypes.CDLL(str(path))
    lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    lib.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
    lib.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
    dev = lib.ggml_backend_dev_by_type(_DEV_CPU)
    if not dev:
        raise OSError("llama.cpp reports no CPU device")
    return int(lib.ggml_backend_dev_buffer_type(dev))


def tensors_in_ram(patterns: Sequence[str]) -> Edit:
    """Tensors whose names match any of ``patterns`` stay in host RAM whatever their
    layer's device (what llama.cpp's `-ot` and `--cpu-moe` fill in): a NULL-terminated list
    of (pattern, CPU buffer type); llama.cpp matches each pattern with std::regex_search and
    still uses the CPU's repacked layouts where they apply."""
    names = [p.encode() for p in patterns]
    table = (_Override * (len(names) + 1))()  # the zeroed last entry ends the list
    buft = cpu_buffer_type()
    for entry, name in zip(table, names):
        entry.pattern, entry.buft = name, buft

    def edit(params: Any) -> None:
        params.tensor_buft_overrides = ctypes.addressof(table)

    edit.keep = (table, names)  # type: ignore[attr-defined]
    return edit
