#!/usr/bin/env bash
# Set r1local up on this machine: a .venv with llama-cpp-python built once for the best
# backend found here (cached, so later installs do not compile again), then r1local itself.
#
#   ./install.sh                 install for use
#   ./install.sh --tools         also llama.cpp's llama-quantize and llama-imatrix, from the
#                                same build (what `r1local convert --imatrix` needs)
#   ./install.sh --dev           --tools and the test extra (pytest, transformers, torch, models)
#   ./install.sh --backend cuda  force a backend: auto, cpu, cuda, metal, hip, vulkan
#   ./install.sh --rebuild       ignore the cached build and compile llama.cpp again
#
# Environment: PYTHON (interpreter to use), R1LOCAL_CACHE (cache dir), CMAKE_ARGS (added
# to the backend's own flags), LLAMA_CPP_PYTHON_VERSION (default below).
set -euo pipefail

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
warn() { printf '\033[33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# --- a long step with a progress line -------------------------------------------------------
# run_step LABEL LOG FIX -- COMMAND...: runs COMMAND with its output appended to LOG, and
# shows the build's step N/M (ninja's "[N/M]" lines in LOG), the time so far and an estimate
# of what is left: one live line at a terminal, a line every R1LOCAL_PROGRESS_EVERY seconds
# (default 30) elsewhere. If COMMAND fails: the log's last lines, then FIX.
fmt_secs() { local s=$1; if (( s >= 60 )); then printf '%d min %02d s' $((s / 60)) $((s % 60)); else printf '%d s' "$s"; fi; }
run_step() {
  local label="$1" log="$2" fix="$3"; shift 4
  local every="${R1LOCAL_PROGRESS_EVERY:-30}" live=0 start=$SECONDS last=-1 pid step n m el text
  [ -t 2 ] && live=1
  "$@" >>"$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep "$( ((live)) && echo 1 || awk -v e="$every" 'BEGIN { print (e < 1 ? e : 1) }')"
    el=$((SECONDS - start))
    if (( !live )) && awk -v el="$el" -v last="$last" -v e="$every" 'BEGIN { exit !(el - last < e) }'; then
      continue
    fi
    last=$el
    # (pip -v indents the build's lines)
    step="$(grep -aoE '^ *\[[0-9]+/[0-9]+\]' "$log" 2>/dev/null | tail -n 1 | tr -d '[] ')" || true
    text="$label: $(fmt_secs "$el") so far"
    if [ -n "$step" ]; then
      n=${step%/*}; m=${step#*/}
      text="$label: step $n/$m, $(fmt_secs "$el") so far"
      (( n > 0 && n < m )) && text+=", about $(fmt_secs $(( el * (m - n) / n ))) left"
    fi
    if ((live)); then printf '\r\033[K  %s' "$text" >&2; else printf '  %s (log: %s)\n' "$text" "$log" >&2; fi
  done
  ((live)) && printf '\r\033[K' >&2
  if ! wait "$pid"; then
    tail -n 30 "$log" >&2
    die "$label failed: $fix (full log: $log)"
  fi
}
# `R1LOCAL_INSTALL_FUNCTIONS=1 source install.sh` defines the functions above and stops
# (the tests build a small project through run_step)
if [ "${R1LOCAL_INSTALL_FUNCTIONS:-}" = 1 ]; then return 0 2>/dev/null || exit 0; fi

LLAMA_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
BACKEND="auto"
DEV=0
WITH_TOOLS=0
REBUILD=0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"

while [ $# -gt 0 ]; do
  case "$1" in
    --dev) DEV=1; WITH_TOOLS=1 ;;
    --tools) WITH_TOOLS=1 ;;
    --rebuild) REBUILD=1 ;;
    --backend) [ $# -ge 2 ] || die "--backend needs a value: auto, cpu, cuda, metal, hip or vulkan"
               BACKEND="$2"; shift ;;
    --backend=*) BACKEND="${1#*=}" ;;
    -h|--help) awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; exit 0 ;;
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
# LLAVA_BUILD=OFF: llama-cpp-python's multimodal library (mtmd), which r1local never loads.
# GGML_RPC=ON: llama.cpp's RPC backend (libggml-rpc, client and server), for every backend:
# what `r1local worker` and `--rpc` use to spread one model over several machines.
export CMAKE_ARGS="$BACKEND_ARGS -DGGML_RPC=ON -DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}"
# ccache, when the machine has it, makes a rebuild (--rebuild, a new cache key) quick; it does
# not change what is built, so it stays out of the cache key
LAUNCHER=""
if command -v ccache >/dev/null 2>&1; then
  LAUNCHER="-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
  [ "$BACKEND" = cuda ] && LAUNCHER+=" -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache"
fi

# --- the cached llama-cpp-python wheel and llama.cpp tools -------------------------------
# With --tools, beside the wheel, two of llama.cpp's own tools from the same source:
# llama-quantize (what `r1local convert --imatrix` runs) and llama-imatrix (makes the
# importance matrix). They are not built by default: they need llama.cpp's common library,
# almost half of the whole compile, and nothing else in r1local does (plain K-quants go
# through the binding). A cache with the tools serves an install without them too.
TOOLS=(llama-quantize llama-imatrix)
# The build is native to this CPU (-march=native), so the key holds the CPU's features.
if [ "$OS" = Darwin ]; then
  CACHE_ROOT="${R1LOCAL_CACHE:-$HOME/Library/Caches/r1local}"
  CPU_ID="$(sysctl -n machdep.cpu.brand_string 2>/dev/null; sysctl -n hw.optional 2>/dev/null | tr -d '\n')"
  ORIGIN='@loader_path'
else
  CACHE_ROOT="${R1LOCAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/r1local}"
  CPU_ID="$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || true)"
  ORIGIN='$ORIGIN'
fi
# The tools go to .venv/bin and the few shared libraries only they use (llama-common, ...)
# to .venv/lib/llama.cpp; both load the wheel's libllama/libggml from site-packages, so the
# runtime path names that folder relative to each of the two places.
TOOL_LIB="$VENV/lib/llama.cpp"
read -r BIN_TO_SITE LIB_TO_SITE < <("$VPY" - "$TOOL_LIB" <<'PY'
import os, sys, sysconfig as s
site = s.get_path("platlib")
print(os.path.relpath(site, s.get_path("scripts")), os.path.relpath(site, sys.argv[1]))
PY
) || true
[ -n "${LIB_TO_SITE:-}" ] || die "$VPY cannot tell where its site-packages are: remove $VENV and run ./install.sh again"
TOOLS_RPATH="$ORIGIN/../lib/llama.cpp;$ORIGIN/$BIN_TO_SITE/llama_cpp/lib;$ORIGIN/$LIB_TO_SITE/llama_cpp/lib"
# The tools step reconfigures the wheel's tree with these. -U: without the hook that kept
# llama.cpp's common library out (the tools need it). LLAVA_BUILD=OFF: with the tools on,
# llama.cpp's tools/ adds the mtmd target itself. BUILD_RPATH_USE_ORIGIN: the tree's own
# folders go in as $ORIGIN, not as temporary paths.
TOOLS_CMAKE=(-UCMAKE_PROJECT_INCLUDE -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF -DLLAVA_BUILD=OFF
             -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON "-DCMAKE_BUILD_RPATH=$TOOLS_RPATH")
# On ELF, each cached file then gets exactly the path for where it is installed: CMake pads
# the build path of a target it could install with ':' (for rewriting it in place later), and
# the loader reads an empty entry as the current directory.
ELF_RPATH_BIN="\$ORIGIN/../lib/llama.cpp:\$ORIGIN/$BIN_TO_SITE/llama_cpp/lib"
ELF_RPATH_LIB="\$ORIGIN:\$ORIGIN/$LIB_TO_SITE/llama_cpp/lib"
# the hook that keeps llama.cpp's common library out of the wheel's build (see build_llama)
NO_COMMON='if(PROJECT_NAME STREQUAL "llama.cpp")
  set(LLAMA_BUILD_COMMON OFF CACHE BOOL "r1local: the wheel does not need it" FORCE)
endif()'
# RECIPE names what the cache holds: it changes with the build steps, so that an older cache
# (a wheel without tools, say) is never taken for a complete one.
RECIPE="wheel, tools optional 7: $NO_COMMON ${TOOLS[*]} ${TOOLS_CMAKE[*]} elf=$ELF_RPATH_BIN;$ELF_RPATH_LIB"
hash_of() { if command -v sha256sum >/dev/null; then sha256sum; else shasum -a 256; fi | cut -c1-12; }
CPU_KEY="$ARCH-$(printf '%s|%s|%s' "$CPU_ID" "$CMAKE_ARGS" "$RECIPE" | hash_of)"
PY_TAG="$("$VPY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEEL_DIR="$CACHE_ROOT/wheels/llama-cpp-python-$LLAMA_VERSION/$BACKEND-$CPU_KEY-$PY_TAG"
JOBS="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"

installed_ok() {
  "$VPY" - "$LLAMA_VERSION" <<'PY' >/dev/null 2>&1
import sys, importlib.metadata as md
assert md.version("llama-cpp-python") == sys.argv[1]
import llama_cpp  # the shared library must load, not just the metadata exist
PY
}
# A cache dir appears only by renaming a complete one into place (see build_llama), so these
# check for the pieces rather than their contents.
cache_has_wheel() { ls "$WHEEL_DIR"/llama_cpp_python-*.whl >/dev/null 2>&1; }
cache_has_tools() {
  [ -d "$WHEEL_DIR/lib" ] || return 1
  for t in "${TOOLS[@]}"; do [ -x "$WHEEL_DIR/bin/$t" ] || return 1; done
}
cache_complete() { cache_has_wheel && { [ "$WITH_TOOLS" = 0 ] || cache_has_tools; }; }
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# cmake >= 3.21 and ninja on PATH for both steps below. Otherwise pip's isolated build would
# fetch its own, configure the tree with them and delete them, and the tools step could not
# reuse that tree.
build_tools_on_path() {
  local have
  have="$(cmake --version 2>/dev/null | sed -n '1s/[^0-9]*\([0-9.]*\).*/\1/p')"
  if [ -n "$have" ] && version_ge "$have" 3.21 && command -v ninja >/dev/null 2>&1; then return 0; fi
  say "fetching cmake and ninja for the build (none suitable on PATH)"
  "$PY" -m venv "$BUILD_TMP/buildenv" || die "could not create a venv for cmake and ninja"
  if ! "$BUILD_TMP/buildenv/bin/python" -m pip install -q --disable-pip-version-check cmake ninja >>"$LOG" 2>&1; then
    tail -n 20 "$LOG" >&2; die "could not install cmake and ninja from PyPI (install them: apt install cmake ninja-build)"
  fi
  export PATH="$BUILD_TMP/buildenv/bin:$PATH"
}

# The wheel, then (--tools) the tools from the same CMake build tree. llama-cpp-python forces
# llama.cpp's common library on, only to install it beside the package where nothing loads
# it, and it is almost half of the compile: NO_COMMON (above) turns it back off, from a hook
# CMake runs right after llama.cpp's project() call. The tools step reconfigures that tree
# without the hook and with the tools on, so llama and ggml are not compiled again (one
# configure with the tools on from the start would build and ship tools/mtmd's library too).
BUILD_LOG="$WHEEL_DIR.log"  # one per cache key: installs in other checkouts may build at once
build_failed() { tail -n 30 "$BUILD_LOG" >&2; die "$1 (full log: $BUILD_LOG)"; }
build_llama() {
  local src="$BUILD_TMP/llama_cpp_python-$LLAMA_VERSION" tree="$BUILD_TMP/build" t0 t1
  mkdir -p "$(dirname "$WHEEL_DIR")"; : > "$BUILD_LOG"
  build_tools_on_path
  { "${PIP[@]}" download --no-deps --no-binary :all: -d "$BUILD_TMP" "llama-cpp-python==$LLAMA_VERSION" \
      && tar -xzf "$BUILD_TMP/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$BUILD_TMP" && [ -d "$src" ]; } >>"$BUILD_LOG" 2>&1 \
    || build_failed "downloading the llama-cpp-python $LLAMA_VERSION source failed"

  t0=$(date +%s)
  # -v: the build's own "[N/M]" lines reach the log, for run_step's progress line
  printf '%s\n' "$NO_COMMON" > "$BUILD_TMP/no-common.cmake"
  CMAKE_ARGS="$CMAKE_ARGS $LAUNCHER -DCMAKE_PROJECT_INCLUDE=$BUILD_TMP/no-common.cmake" \
    run_step "compiling llama.cpp" "$BUILD_LOG" "for a CPU-only build try ./install.sh --backend cpu" -- \
      "${PIP[@]}" wheel -v --no-deps --no-cache-dir -w "$BUILD_TMP/dist" \
      --config-settings=build-dir="$tree" "$src"
  t1=$(date +%s)
  say "wheel built in $(( t1 - t0 )) s"
  local stage="$WHEEL_DIR.partial.$$" shipped
  rm -rf "$stage"; mkdir -p "$stage"
  cp "$BUILD_TMP"/dist/llama_cpp_python-*.whl "$stage/"
  if [ "$WITH_TOOLS" = 1 ]; then build_tools "$src" "$tree" "$stage"; fi
  cp "$tree/.ninja_log" "$WHEEL_DIR.ninja_log" 2>/dev/null || true  # where the time went
  # into the cache under a temporary name, renamed when complete
  rm -rf "$WHEEL_DIR"; mv "$stage" "$WHEEL_DIR"
}
build_tools() {
  local src="$1" tree="$2" stage="$3" t1 f r shipped
  t1=$(date +%s)
  # shellcheck disable=SC2086  # $LAUNCHER is a list of flags
  run_step "compiling ${TOOLS[*]}" "$BUILD_LOG" "run ./install.sh --rebuild --tools" -- \
      bash -c 'cmake -S "$1" -B "$2" "${@:5}" && cmake --build "$2" -j "$3" --target $4' _ \
      "$src" "$tree" "$JOBS" "${TOOLS[*]}" "${TOOLS_CMAKE[@]}" $LAUNCHER
  say "tools built in $(( $(date +%s) - t1 )) s"
  mkdir -p "$stage/bin" "$stage/lib"
  for t in "${TOOLS[@]}"; do cp "$tree/bin/$t" "$stage/bin/"; done
  # the tree's shared libraries that the wheel does not ship are the tools' own
  shipped="$("$VPY" -c 'import sys, zipfile, os.path as p; print("\n".join(p.basename(n) for n in zipfile.ZipFile(sys.argv[1]).namelist() if "/lib/" in n))' "$stage"/llama_cpp_python-*.whl)"
  for f in "$tree"/bin/lib*; do
    case "$f" in *.so|*.so.*|*.dylib) ;; *) continue ;; esac
    grep -qxF "$(basename "$f")" <<<"$shipped" || cp -P "$f" "$stage/lib/"
  done
  if [ "$OS" != Darwin ]; then
    echo 'file(RPATH_SET FILE "${F}" NEW_RPATH "${R}")' > "$BUILD_TMP/rpath.cmake"  # CMake >= 3.21
    for f in "$stage"/bin/* "$stage"/lib/*; do
      [ -L "$f" ] && continue
      case "$f" in "$stage"/bin/*) r="$ELF_RPATH_BIN" ;; *) r="$ELF_RPATH_LIB" ;; esac
      cmake "-DF=$f" "-DR=$r" -P "$BUILD_TMP/rpath.cmake" >>"$BUILD_LOG" 2>&1 \
        || build_failed "setting the runtime path of $(basename "$f") failed"
    done
  fi
}

if [ "$REBUILD" = 1 ] || ! cache_complete; then
  if [ "$WITH_TOOLS" = 1 ]; then what="llama-cpp-python $LLAMA_VERSION and llama.cpp's tools"
  else what="llama-cpp-python $LLAMA_VERSION"; fi
  if [ "$REBUILD" = 0 ] && cache_has_wheel; then say "the cached build has no tools: building it again with them"; fi
  say "building $what for $BACKEND (once; cached in $WHEEL_DIR). This compiles llama.cpp: a few minutes."
  command -v cc >/dev/null 2>&1 || command -v gcc >/dev/null 2>&1 || command -v clang >/dev/null 2>&1 \
    || die "no C/C++ compiler found: install one (apt install build-essential, or xcode-select --install)"
  BUILD_TMP="$(mktemp -d)"; trap 'rm -rf "$BUILD_TMP"' EXIT
  start=$(date +%s)
  build_llama
  say "built in $(( $(date +%s) - start )) s"
else
  say "using cached llama-cpp-python wheel and tools ($BACKEND): $WHEEL_DIR"
fi
WHEEL="$(ls "$WHEEL_DIR"/llama_cpp_python-*.whl | head -n1)"
# The tools must run against the libllama of this very build: a venv that holds another
# build of the same version (another backend, an older cache) gets this one.
WHEEL_ID="$(hash_of < "$WHEEL")"
STAMP="$VENV/.r1local-wheel"
if ! installed_ok || [ "$(cat "$STAMP" 2>/dev/null)" != "$WHEEL_ID" ]; then
  pip_quiet install --force-reinstall --no-deps "$WHEEL"
  pip_quiet install "$WHEEL"  # its own small dependencies (numpy, jinja2, ...)
  printf '%s\n' "$WHEEL_ID" > "$STAMP"
fi
installed_ok || die "llama-cpp-python from $WHEEL does not import: run ./install.sh --rebuild"
# the tools when the cache has them (it may, from an earlier --tools), even without --tools;
# otherwise none, not ones from an older build left without their libraries
rm -rf "$TOOL_LIB" "$VENV/.r1local-tools"
for t in "${TOOLS[@]}"; do rm -f "$VENV/bin/$t"; done
if cache_has_tools; then
  mkdir -p "$TOOL_LIB"
  if compgen -G "$WHEEL_DIR/lib/*" >/dev/null; then cp -P "$WHEEL_DIR"/lib/* "$TOOL_LIB/"; fi
  for t in "${TOOLS[@]}"; do
    # copied beside, then renamed: cp onto a running binary fails ("text file busy")
    cp "$WHEEL_DIR/bin/$t" "$VENV/bin/.$t.new" && mv -f "$VENV/bin/.$t.new" "$VENV/bin/$t"
    # each prints its usage once its libraries load (some exit 1 after it)
    case "$("$VENV/bin/$t" --help 2>&1 || true)" in *[Uu]sage*) ;; *)
      die "$VENV/bin/$t does not run (its llama.cpp libraries did not load): run ./install.sh --rebuild --tools" ;; esac
  done
  # tells the tests that these tools belong here, so their absence is a failure, not a skip
  printf '%s\n' "${TOOLS[@]}" > "$VENV/.r1local-tools"
fi

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
