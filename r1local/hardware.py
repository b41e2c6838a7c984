"""What this machine has: CPU, RAM, GPUs, whether llama.cpp can offload, free disk.

``probe()`` looks at the real machine (fast: no llama.cpp import, NVML and psutil only
when present); ``hypothetical()`` builds a made-up one for "what if" questions and tests.
This module knows nothing about models. (It is longer than our other modules because each
platform's way of finding memory and GPUs is small but separate, and all of them build the
one Machine: splitting them would spread that one constructor over several files.)
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from r1local.errors import UsageError
from r1local.units import parse_size


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    vendor: str  # "nvidia" | "amd" | "apple" | "other"
    total_bytes: int
    free_bytes: int
    unified: bool = False  # shares system RAM (Apple Silicon, integrated GPUs)


@dataclass(frozen=True)
class Machine:
    cpu_name: str
    physical_cores: int
    logical_cores: int
    simd: tuple[str, ...]
    ram_total: int
    ram_available: int
    swap_total: int
    gpus: tuple[GPU, ...]
    gpu_offload: bool  # the installed llama.cpp build can offload to a GPU
    offload_note: str
    disk_free: int
    hypothetical: bool = False
    # memory bandwidth guesses (bytes/s) the planner turns into a speed range
    ram_bandwidth: tuple[float, float] = (0.0, 0.0)
    gpu_bandwidth: tuple[float, float] = (0.0, 0.0)

    @property
    def vram_total(self) -> int:
        return sum(g.total_bytes for g in self.gpus)

    @property
    def vram_free(self) -> int:
        return sum(g.free_bytes for g in self.gpus)

    @property
    def unified(self) -> bool:
        return any(g.unified for g in self.gpus)

    @property
    def usable_gpus(self) -> tuple[GPU, ...]:
        """GPUs llama.cpp can actually use (none on a CPU-only build)."""
        return self.gpus if self.gpu_offload else ()

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gpus"] = [asdict(g) for g in self.gpus]
        d["simd"] = list(self.simd)
        d["ram_bandwidth"] = list(self.ram_bandwidth)
        d["gpu_bandwidth"] = list(self.gpu_bandwidth)
        return d


# ---------------------------------------------------------------------------
# Tables kept apart from the mechanics.

GiB = 1 << 30

# SIMD features llama.cpp's CPU backend cares about, in the order we show them.
SIMD_FLAGS = ("sse3", "ssse3", "avx", "f16c", "fma", "avx2", "avx_vnni", "avx512f",
              "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8",
              "neon", "asimd", "asimddp", "sve", "i8mm", "dotprod")

# Metal's recommendedMaxWorkingSetSize, as macOS sets it: about 2/3 of RAM up to 36 GB,
# 3/4 above. llama.cpp refuses to allocate past it, so it is the GPU's usable size.
def metal_working_set(ram: int) -> int:
    return int(ram * (0.75 if ram > 36 * GiB else 2 / 3))

# Memory bandwidth ranges (bytes/s) by kind: decode speed is bandwidth / bytes per token.
# One DDR4-3200 channel is 25.6 GB/s, dual-channel DDR5 ~ 60-90; servers more; Apple
# unified 100-800. With few cores the cores are the limit: llama.cpp's decode streamed
# 14-18 GB/s on one Zen core and 26-28 GB/s on two (bench/fit_accuracy.py), i.e. ~20 GB/s
# raw per core at the planner's CPU efficiency.
CPU_BANDWIDTH_PER_CORE = 20e9
CPU_BANDWIDTH_RANGE = (25e9, 60e9)
GPU_BANDWIDTH_DEFAULT = (300e9, 900e9)
GPU_BANDWIDTH_BY_NAME = [  # (substring of the name, low, high)
    ("h200", 4.0e12, 4.8e12), ("h100", 2.0e12, 3.35e12), ("a100", 1.5e12, 2.0e12),
    ("4090", 0.9e12, 1.0e12), ("3090", 0.85e12, 0.94e12), ("4080", 0.7e12, 0.72e12),
    ("l40", 0.8e12, 0.86e12), ("a6000", 0.7e12, 0.77e12), ("t4", 0.28e12, 0.32e12),
    ("4060", 0.25e12, 0.27e12), ("3060", 0.33e12, 0.36e12), ("mi300", 4.0e12, 5.3e12),
    ("7900", 0.8e12, 0.96e12),
]
APPLE_BANDWIDTH = (100e9, 400e9)

BACKEND_FIX = {
    "nvidia": "./install.sh --rebuild --backend cuda",
    "amd": "./install.sh --rebuild --backend rocm",
    "apple": "./install.sh --rebuild --backend metal",
    "other": "./install.sh --rebuild --backend vulkan",
}

# ggml_backend_dev_type: CPU, GPU, IGPU, ACCEL
_DEV_GPU, _DEV_IGPU = 1, 2

# ---------------------------------------------------------------------------
# CPU

def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _cpu_linux() -> tuple[str, int, tuple[str, ...]]:
    text = _read("/proc/cpuinfo")
    name, flags = "", set()
    cores: set[tuple[str, str]] = set()
    phys = core = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Hardware", "cpu model") and not name:
            name = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
        elif not key and (phys or core):
            cores.add((phys, core))
            phys = core = ""
    if phys or core:
        cores.add((phys, core))
    simd = tuple(f for f in SIMD_FLAGS if f in flags)
    return name, len(cores), simd


def _cpu_info() -> tuple[str, int, int, tuple[str, ...]]:
    logical = os.cpu_count() or 1
    name, physical, simd = "", 0, ()
    if sys.platform.startswith("linux"):
        name, physical, simd = _cpu_linux()
    elif sys.platform == "darwin":
        name = _sysctl("machdep.cpu.brand_string") or platform.processor()
        physical = int(_sysctl("hw.perflevel0.physicalcpu") or _sysctl("hw.physicalcpu") or 0)
        simd = ("neon",) if platform.machine() == "arm64" else ()
    try:  # psutil knows physical cores on every OS (and inside containers)
        import psutil

        physical = physical or psutil.cpu_count(logical=False) or 0
    except ImportError:
        pass
    # a container limited by cpuset sees fewer CPUs than /proc/cpuinfo lists
    if hasattr(os, "sched_getaffinity"):
        logical = min(logical, len(os.sched_getaffinity(0)))
    physical = max(1, min(physical or logical, logical))
    return name or platform.processor() or platform.machine(), physical, logical, simd


def _sysctl(name: str) -> str:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True,
                             timeout=2)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


# ---------------------------------------------------------------------------
# Memory

def _cgroup_limit() -> int | None:
    """A container's memory limit (cgroup v2 or v1), when lower than the host's RAM."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        text = _read(path).strip()
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def _memory() -> tuple[int, int, int]:
    try:
        import psutil

        vm, sw = psutil.virtual_memory(), psutil.swap_memory()
        total, available, swap = int(vm.total), int(vm.available), int(sw.total)
    except ImportError:  # Linux without psutil
        info = {}
        for line in _read("/proc/meminfo").splitlines():
            k, _, v = line.partition(":")
            parts = v.split()
            if parts and parts[0].isdigit():
                info[k] = int(parts[0]) * 1024
        total = info.get("MemTotal", 0)
        available = info.get("MemAvailable", info.get("MemFree", 0))
        swap = info.get("SwapTotal", 0)
    limit = _cgroup_limit()
    if limit is not None and limit < total:
        total, available = limit, min(available, limit)
    return total, available, swap


# ---------------------------------------------------------------------------
# GPUs

def _nvidia_gpus() -> list[GPU]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no library: no NVIDIA GPU, not an error
        return []
    gpus = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            gpus.append(GPU(i, str(name), "nvidia", int(mem.total), int(mem.free)))
    except Exception:
        pass
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return gpus


def _amd_gpus(start: int) -> list[GPU]:
    gpus = []
    for card in sorted(Path("/sys/class/drm").glob("card[0-9]*")):
        dev = card / "device"
        total = _read(dev / "mem_info_vram_total").strip()
        if not total.isdigit() or _read(dev / "vendor").strip() != "0x1002":
            continue
        used = _read(dev / "mem_info_vram_used").strip()
        name = _read(dev / "product_name").strip() or f"AMD GPU ({card.name})"
        total_b = int(total)
        free_b = total_b - int(used) if used.isdigit() else total_b
        # an APU reports a small carve-out as VRAM; still a GPU llama.cpp can use
        gpus.append(GPU(start + len(gpus), name, "amd", total_b, max(0, free_b)))
    return gpus


def _apple_gpu(ram_total: int) -> list[GPU]:
    if sys.platform != "darwin" or platform.machine() != "arm64":
        return []
    # an explicit wired limit (sysctl iogpu.wired_limit_mb) overrides macOS's default
    wired = _sysctl("iogpu.wired_limit_mb")
    limit = int(wired) << 20 if wired.isdigit() and int(wired) > 0 else metal_working_set(ram_total)
    name = _sysctl("machdep.cpu.brand_string") or "Apple Silicon"
    return [GPU(0, f"{name} GPU", "apple", limit, limit, unified=True)]


def _llama_lib_dir() -> Path | None:
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    return lib if lib.is_dir() else None


# The names libggml goes by in the wheel, the one libllama links against first: pip keeps
# no symlinks, so libggml.so and libggml.so.0 are two copies, and a second copy loaded
# beside libllama's has a device registry of its own (an RPC worker registered there is a
# device llama.cpp never sees).
GGML_NAMES = ("libggml.so.0", "libggml.0.dylib", "libggml.so", "libggml.dylib", "ggml.dll")


def ggml_library(lib_dir: Path) -> Path | None:
    """The libggml file libllama loads, in llama_cpp's lib folder."""
    return next((lib_dir / n for n in GGML_NAMES if (lib_dir / n).exists()), None)


def _load_lib(lib_dir: Path, stem: str) -> ctypes.CDLL | None:
    names = GGML_NAMES if stem == "ggml" else (f"lib{stem}.so", f"lib{stem}.dylib", f"{stem}.dll")
    for name in names:
        if (lib_dir / name).exists():
            try:
                return ctypes.CDLL(str(lib_dir / name))
            except OSError:
                return None
    return None


def _llama_devices() -> tuple[bool | None, list[tuple[str, str, int, int, int]]]:
    """(can offload, [(name, description, type, free, total)]) from the installed
    llama.cpp, through its shared libraries directly: importing llama_cpp costs ~0.3 s."""
    lib_dir = _llama_lib_dir()
    if lib_dir is None:
        return None, []
    llama = _load_lib(lib_dir, "llama")
    if llama is None:
        return None, []
    try:
        llama.llama_supports_gpu_offload.restype = ctypes.c_bool
        offload = bool(llama.llama_supports_gpu_offload())
    except AttributeError:
        return None, []
    devices = []
    ggml = _load_lib(lib_dir, "ggml")
    try:
        if ggml is not None:
            ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
            ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
            ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
            for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
                getattr(ggml, fn).restype = ctypes.c_char_p
                getattr(ggml, fn).argtypes = [ctypes.c_void_p]
            ggml.ggml_backend_dev_type.restype = ctypes.c_int
            ggml.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
            ggml.ggml_backend_dev_memory.argtypes = [
                ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
            for i in range(ggml.ggml_backend_dev_count()):
                dev = ggml.ggml_backend_dev_get(i)
                kind = ggml.ggml_backend_dev_type(dev)
                if kind not in (_DEV_GPU, _DEV_IGPU):
                    continue
                # an RPC worker registered in this process is not this machine's GPU, and
                # asking a gone one for its memory aborts the process (llama.cpp's client)
                if (ggml.ggml_backend_dev_name(dev) or b"").startswith(b"RPC"):
                    continue
                free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
                ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
                devices.append((
                    (ggml.ggml_backend_dev_name(dev) or b"").decode(errors="replace"),
                    (ggml.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                    kind, int(free.value), int(total.value)))
    except (AttributeError, OSError):
        pass
    return offload, devices


def _vendor_of(text: str) -> str:
    t = text.lower()
    if any(k in t for k in ("nvidia", "geforce", "rtx", "tesla", "quadro", "cuda")):
        return "nvidia"
    if any(k in t for k in ("amd", "radeon", "instinct", "rocm", "hip")):
        return "amd"
    if any(k in t for k in ("apple", "metal", " m1", " m2", " m3", " m4")):
        return "apple"
    return "other"


def _gpu_bandwidth(gpus: Sequence[GPU]) -> tuple[float, float]:
    if not gpus:
        return (0.0, 0.0)
    g = gpus[0]
    if g.vendor == "apple":
        return APPLE_BANDWIDTH
    name = g.name.lower()
    for key, low, high in GPU_BANDWIDTH_BY_NAME:
        if key in name:
            return (low, high)
    return GPU_BANDWIDTH_DEFAULT


def _cpu_bandwidth(physical_cores: int) -> tuple[float, float]:
    low, high = CPU_BANDWIDTH_RANGE
    # fewer cores than it takes to saturate the bus: the cores are the limit
    cap = physical_cores * CPU_BANDWIDTH_PER_CORE
    return (min(low, cap), min(high, cap))


def _offload_note(gpus: Sequence[GPU], offload: bool | None) -> str:
    if offload is None:
        return "llama-cpp-python is not installed: run ./install.sh"
    if not gpus:
        return "no GPU found: CPU only" if not offload else "GPU build, but no GPU found: CPU only"
    if not offload:
        fix = BACKEND_FIX.get(gpus[0].vendor, BACKEND_FIX["other"])
        return f"CPU-only llama.cpp build on a GPU machine: run {fix}"
    return f"llama.cpp can offload to {len(gpus)} GPU(s)"


def _disk_free(models_dir: Path | None) -> int:
    if models_dir is None:
        from r1local.locations import models_dir as default_dir

        models_dir = default_dir()
    path = Path(models_dir)
    while not path.exists() and path != path.parent:  # not created yet: its nearest parent
        path = path.parent
    try:
        return int(shutil.disk_usage(path).free)
    except OSError:
        return 0


def probe(models_dir: Path | None = None) -> Machine:
    """This machine, as llama.cpp will see it. Fast (no llama_cpp import)."""
    cpu_name, physical, logical, simd = _cpu_info()
    ram_total, ram_available, swap = _memory()
    gpus = _nvidia_gpus()
    gpus += _amd_gpus(len(gpus))
    if not gpus:
        gpus = _apple_gpu(ram_total)
    offload, devices = _llama_devices()
    if not gpus and devices:  # e.g. Vulkan or SYCL devices NVML and sysfs do not list
        for i, (name, desc, kind, free, total) in enumerate(devices):
            gpus.append(GPU(i, desc or name, _vendor_of(f"{name} {desc}"), total, free,
                            unified=kind == _DEV_IGPU))
    return Machine(
        cpu_name=cpu_name, physical_cores=physical, logical_cores=logical, simd=simd,
        ram_total=ram_total, ram_available=ram_available, swap_total=swap,
        gpus=tuple(gpus), gpu_offload=bool(offload) and bool(gpus),
        offload_note=_offload_note(gpus, offload), disk_free=_disk_free(models_dir),
        ram_bandwidth=APPLE_BANDWIDTH if any(g.unified and g.vendor == "apple" for g in gpus)
        else _cpu_bandwidth(physical),
        gpu_bandwidth=_gpu_bandwidth(gpus),
    )


def hypothetical(ram: int, vram: int | Sequence[int] = 0, cores: int = 8,
                 disk: int = 1 << 40, unified: bool = False) -> Machine:
    """A made-up machine: ``ram`` bytes, one GPU per ``vram`` entry (0 = none).

    ``unified`` makes an Apple Silicon machine: one GPU sharing the RAM, its usable size
    ``vram`` if given, else Metal's default working-set limit.
    """
    if ram <= 0:
        raise UsageError("a hypothetical machine needs RAM more than zero (e.g. --ram 16G)")
    if cores <= 0:
        raise UsageError("--cores must be at least 1")
    sizes = [vram] if isinstance(vram, int) else list(vram)
    if any(v < 0 for v in sizes):
        raise UsageError("VRAM sizes cannot be negative")
    sizes = [v for v in sizes if v > 0]
    if unified:
        limit = sizes[0] if sizes else metal_working_set(ram)
        if limit > ram:
            raise UsageError("with --unified the GPU shares the RAM: --vram cannot exceed --ram")
        gpus = (GPU(0, "Apple Silicon GPU (hypothetical)", "apple", limit, limit, True),)
    else:
        gpus = tuple(GPU(i, f"GPU {i} (hypothetical)", "nvidia", v, v)
                     for i, v in enumerate(sizes))
    note = "hypothetical machine" + (f" with {len(gpus)} GPU(s)" if gpus else ", CPU only")
    return Machine(
        cpu_name=f"hypothetical {cores}-core CPU", physical_cores=cores, logical_cores=cores,
        simd=("avx2",) if not unified else ("neon",), ram_total=ram, ram_available=ram,
        swap_total=0, gpus=gpus, gpu_offload=bool(gpus), offload_note=note, disk_free=disk,
        hypothetical=True,
        ram_bandwidth=APPLE_BANDWIDTH if unified else _cpu_bandwidth(cores),
        gpu_bandwidth=APPLE_BANDWIDTH if unified else (GPU_BANDWIDTH_DEFAULT if gpus else (0.0, 0.0)),
    )


# ---------------------------------------------------------------------------
# Profiles: a hypothetical machine in a TOML or JSON file.

PROFILE_KEYS = {"ram", "vram", "cores", "disk", "unified", "name"}


def _size_value(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise UsageError(f"profile '{key}' must be a size like \"16G\", got {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str):
        return parse_size(value)
    raise UsageError(f"profile '{key}' must be a size like \"16G\", got {value!r}")


def load_profile(path: str | Path) -> Machine:
    """A machine profile: ``ram = "64G"``, ``vram = ["24G", "24G"]``, ``cores = 16``,
    ``unified = true``, ``disk = "2T"`` (TOML or JSON)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"profile {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read profile {p}: {err}") from None
    data: Any
    if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"profile {p} is not valid JSON: {err}") from None
    else:
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise UsageError(f"profile {p} is not valid TOML: {err}") from None
    if not isinstance(data, dict):
        raise UsageError(f"profile {p} must be a table of keys (ram, vram, cores, ...)")
    unknown = set(data) - PROFILE_KEYS
    if unknown:
        raise UsageError(f"profile {p} has unknown key(s): {', '.join(sorted(unknown))} "
                         f"(allowed: {', '.join(sorted(PROFILE_KEYS))})")
    if "ram" not in data:
        raise UsageError(f"profile {p} must give 'ram' (e.g. ram = \"32G\")")
    vram_raw = data.get("vram", 0)
    vram_list = vram_raw if isinstance(vram_raw, list) else [vram_raw]
    cores = data.get("cores", 8)
    if isinstance(cores, bool) or not isinstance(cores, int):
        raise UsageError(f"profile 'cores' must be an integer, got {cores!r}")
    unified = data.get("unified", False)
    if not isinstance(unified, bool):
        raise UsageError(f"profile 'unified' must be true or false, got {unified!r}")
    m = hypothetical(
        _size_value("ram", data["ram"]), [_size_value("vram", v) for v in vram_list],
        cores=cores, disk=_size_value("disk", data.get("disk", 1 << 40)), unified=unified)
    if isinstance(data.get("name"), str):
        m = replace(m, cpu_name=data["name"])
    return m
