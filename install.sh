#!/usr/bin/env bash
# Set r1local up on this machine: a .venv with llama-cpp-python built once for the best
# backend found here (the wheel is cached, so later installs do not compile again), then
# r1local itself.
#
#   ./install.sh                 install for use
#   ./install.sh --dev           also the test extra (pytest, transformers, torch, test models)
#   ./install.sh --backend cuda  force a backend: auto, cpu, cuda, metal, hip, vulkan
#   ./install.sh --rebuild       ignore the cached wheel and compile llama.cpp again
#
# Environment: PYTHON (interpreter to use), R1LOCAL_CACHE (cache dir), CMAKE_ARGS (added
# to the backend's own flags), LLAMA_CPP_PYTHON_VERSION (default below).
set -euo pipefail

LLAMA_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
BACKEND="auto"
DEV=0
REBUILD=0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
warn() { printf '\033[33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --dev) DEV=1 ;;
    --rebuild) REBUILD=1 ;;
    --backend) [ $# -ge 2 ] || die "--backend needs a value: auto, cpu, cuda, metal, hip or vulkan"
               BACKEND="$2"; shift ;;
    --backend=*) BACKEND="${1#*=}" ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see ./install.sh --help)" ;;
  esac
  shift
done
case "$BACKEND" in auto|cpu|cuda|metal|hip|vulkan) ;; *)
  die "unknown backend '$BACKEND': use auto, cpu, cuda, metal, hip or vulkan" ;; esac

# --- Python >= 3.10 ------------------------------------------------------------------
find_python() {
  local candidates=("${PYTHON:-}" python3 python3.13 python3.12 python3.11 python3.10 python)
  for py in "${candidates[@]}"; do
    [ -n "$py" ] || continue
    command -v "$py" >/dev/null 2>&1 || continue
    if "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then
      echo "$py"; return 0
    fi
  done
  return 1
}
PY="$(find_python)" || die "no Python >= 3.10 with venv found: install one (e.g. apt install python3-venv, brew install python) or set PYTHON=/path/to/python3"

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $("$PY" --version 2>&1)"
  "$PY" -m venv "$VENV" || die "could not create $VENV (on Debian/Ubuntu: apt install python3-venv)"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check)
LOG="$VENV/install.log"
: > "$LOG"
# pip's chatter goes to the log; on failure its tail is shown with the fix
pip_quiet() {
  if ! "${PIP[@]}" "$@" >>"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    die "pip $1 failed (full log: $LOG)"
  fi
}

# --- which llama.cpp backend -----------------------------------------------------------
OS="$(uname -s)"; ARCH="$(uname -m)"
has_nvidia_gpu() { [ -e /dev/nvidiactl ] || [ -e /dev/nvidia0 ] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; }
has_amd_gpu() { [ -e /dev/kfd ]; }
has_nvcc() { command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; }
has_hipcc() { command -v hipcc >/dev/null 2>&1 || [ -x /opt/rocm/bin/hipcc ]; }
has_vulkan_sdk() { command -v glslc >/dev/null 2>&1 && { pkg-config --exists vulkan 2>/dev/null || [ -n "${VULKAN_SDK:-}" ]; }; }

if [ "$BACKEND" = auto ]; then
  if [ "$OS" = Darwin ] && [ "$ARCH" = arm64 ]; then BACKEND=metal
  elif has_nvidia_gpu; then
    if has_nvcc; then BACKEND=cuda
    else
      warn "an NVIDIA GPU is present but the CUDA toolkit (nvcc) is not: install it (https://developer.nvidia.com/cuda-downloads, or apt install nvidia-cuda-toolkit) and run ./install.sh --rebuild --backend cuda to use the GPU. Installing the CPU build now."
      BACKEND=cpu
    fi
  elif has_amd_gpu; then
    if has_hipcc; then BACKEND=hip
    else
      warn "an AMD GPU is present but ROCm's hipcc is not: install ROCm and run ./install.sh --rebuild --backend hip to use the GPU. Installing the CPU build now."
      BACKEND=cpu
    fi
  elif has_vulkan_sdk; then BACKEND=vulkan
  else BACKEND=cpu
  fi
fi
case "$BACKEND" in
  cpu)    BACKEND_ARGS="" ;;
  cuda)   has_nvcc || die "--backend cuda needs the CUDA toolkit (nvcc) on PATH"
          export PATH="$PATH:/usr/local/cuda/bin"; BACKEND_ARGS="-DGGML_CUDA=on" ;;
  metal)  BACKEND_ARGS="-DGGML_METAL=on" ;;
  hip)    has_hipcc || die "--backend hip needs ROCm (hipcc)"; BACKEND_ARGS="-DGGML_HIP=on" ;;
  vulkan) BACKEND_ARGS="-DGGML_VULKAN=on" ;;
esac
export CMAKE_ARGS="$BACKEND_ARGS ${CMAKE_ARGS:-}"

# --- the cached llama-cpp-python wheel -------------------------------------------------
# The build is native to this CPU (-march=native), so the key holds the CPU's features.
if [ "$OS" = Darwin ]; then
  CACHE_ROOT="${R1LOCAL_CACHE:-$HOME/Library/Caches/r1local}"
  CPU_ID="$(sysctl -n machdep.cpu.brand_string 2>/dev/null; sysctl -n hw.optional 2>/dev/null | tr -d '\n')"
else
  CACHE_ROOT="${R1LOCAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/r1local}"
  CPU_ID="$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || true)"
fi
hash_of() { if command -v sha256sum >/dev/null; then sha256sum; else shasum -a 256; fi | cut -c1-12; }
CPU_KEY="$ARCH-$(printf '%s|%s' "$CPU_ID" "$CMAKE_ARGS" | hash_of)"
PY_TAG="$("$VPY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEEL_DIR="$CACHE_ROOT/wheels/llama-cpp-python-$LLAMA_VERSION/$BACKEND-$CPU_KEY-$PY_TAG"

installed_ok() {
  "$VPY" - "$LLAMA_VERSION" <<'PY' >/dev/null 2>&1
import sys, importlib.metadata as md
assert md.version("llama-cpp-python") == sys.argv[1]
import llama_cpp  # the shared library must load, not just the metadata exist
PY
}

WHEEL="$(ls "$WHEEL_DIR"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)"
if [ "$REBUILD" = 1 ] || [ -z "$WHEEL" ]; then
  say "building llama-cpp-python $LLAMA_VERSION for $BACKEND (once; cached in $WHEEL_DIR). This compiles llama.cpp: a few minutes."
  command -v cmake >/dev/null 2>&1 || warn "cmake not found on PATH: pip will fetch one for the build"
  command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || command -v clang >/dev/null 2>&1 \
    || die "no C/C++ compiler found: install one (apt install build-essential, or xcode-select --install)"
  BUILD_TMP="$(mktemp -d)"; trap 'rm -rf "$BUILD_TMP"' EXIT
  start=$(date +%s)
  if ! "${PIP[@]}" wheel --no-deps --no-cache-dir -w "$BUILD_TMP" "llama-cpp-python==$LLAMA_VERSION" > "$BUILD_TMP/build.log" 2>&1; then
    tail -n 30 "$BUILD_TMP/build.log" >&2
    die "building llama-cpp-python failed (full log above); for a CPU-only build try ./install.sh --backend cpu"
  fi
  mkdir -p "$WHEEL_DIR"
  built="$(ls "$BUILD_TMP"/llama_cpp_python-*.whl | head -n1)"
  cp "$built" "$WHEEL_DIR/.partial" && mv "$WHEEL_DIR/.partial" "$WHEEL_DIR/$(basename "$built")"
  WHEEL="$WHEEL_DIR/$(basename "$built")"
  say "built in $(( $(date +%s) - start )) s"
else
  say "using cached llama-cpp-python wheel ($BACKEND): $WHEEL"
fi
if ! installed_ok; then
  pip_quiet install --force-reinstall --no-deps "$WHEEL"
  pip_quiet install "$WHEEL"  # its own small dependencies (numpy, jinja2, ...)
fi
installed_ok || die "llama-cpp-python from $WHEEL does not import: run ./install.sh --rebuild"

# --- r1local itself --------------------------------------------------------------------
if [ "$DEV" = 1 ]; then
  say "installing r1local (editable) with the test extra"
  pip_quiet install -e "$HERE[test]"
else
  say "installing r1local"
  pip_quiet install -e "$HERE"
fi
installed_ok || die "installing r1local replaced llama-cpp-python: run ./install.sh --rebuild"
printf '%s\n' "$BACKEND" > "$VENV/.r1local-backend"

"$VENV/bin/r1local" --version >/dev/null || die "r1local did not install cleanly"
say "done: r1local $("$VENV/bin/r1local" --version | cut -d' ' -f2), llama.cpp backend: $BACKEND"
echo "    activate with:  source .venv/bin/activate"
echo "    then try:       r1local hw"
