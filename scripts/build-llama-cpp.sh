#!/usr/bin/env bash
# Builds the reference llama.cpp that the golden-file and benchmark scripts compare
# spillway against. A researcher tool: CI does not run it.
#
#   scripts/build-llama-cpp.sh [--configure-only] [--server]
#
# --server also builds llama-server (for bench/compare-serve.sh).
# llama.cpp comes vendored in the PyPI source distribution of llama-cpp-python (pinned
# version, sha256 checked), which also gives the Python bindings used by the scripts.
# Cached: the sdist is downloaded once, and nothing is rebuilt when the tools exist.
# Takes 10+ minutes on 2 cores the first time.
#
# Environment:
#   SPILLWAY_LLAMA_CPP_DIR   where to extract and build (default: .cache/llama.cpp)
#   SPILLWAY_PIP_CACHE       where the sdist is kept (default: .cache/pip)
#   JOBS                     parallel compile jobs (default: nproc)
#
# At the end it prints the library directory (for LLAMA_CPP_LIB_PATH) and the Python
# package directory (for PYTHONPATH).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LCPP_VERSION=0.3.36
SDIST_NAME=llama_cpp_python-$LCPP_VERSION.tar.gz
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
PIP_CACHE=${SPILLWAY_PIP_CACHE:-$ROOT/.cache/pip}
WORK=${SPILLWAY_LLAMA_CPP_DIR:-$ROOT/.cache/llama.cpp}
SRC=$WORK/llama_cpp_python-$LCPP_VERSION
BUILD=$WORK/build
JOBS=${JOBS:-$(nproc)}
TARGETS=(llama llama-bench llama-perplexity llama-tokenize)
TOOLS=(llama-bench llama-perplexity llama-tokenize)

configure_only=0
server=0
for arg in "$@"; do
  case $arg in
    --configure-only) configure_only=1 ;;
    --server) server=1 ;;
    -h | --help)
      sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "usage: $0 [--configure-only] [--server]" >&2
      exit 2
      ;;
  esac
done
if [[ $server -eq 1 ]]; then
  TARGETS+=(llama-server)
  TOOLS+=(llama-server)
fi

say() { printf 'build-llama-cpp: %s\n' "$*"; }
die() {
  printf 'build-llama-cpp: error: %s\n' "$*" >&2
  exit 1
}
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# Where the shared libraries end up: llama.cpp puts them next to the tools in bin/.
lib_dir() {
  local f
  f=$(find "$BUILD/" -name 'libllama.so' -print -quit 2>/dev/null || true)
  if [[ -n $f ]]; then dirname "$f"; else echo "$BUILD/bin"; fi
}

report() {
  local libdir t
  libdir=$(lib_dir)
  for t in "${TOOLS[@]}"; do echo "tool:           $BUILD/bin/$t"; done
  echo "lib dir:        $libdir"
  echo "python package: $SRC/llama_cpp"
  echo "use:            LLAMA_CPP_LIB_PATH=$libdir PYTHONPATH=$SRC python3 -c 'import llama_cpp'"
}

built() {
  local t
  for t in "${TOOLS[@]}"; do [[ -x $BUILD/bin/$t ]] || return 1; done
  [[ -n $(find "$BUILD/" -name 'libllama.so' -print -quit 2>/dev/null) ]]
}

if [[ $configure_only -eq 0 ]] && built; then
  say "already built in $BUILD"
  report
  exit 0
fi

# --- source distribution -----------------------------------------------------------------
sdist=$PIP_CACHE/$SDIST_NAME
if [[ ! -f $sdist ]] || [[ $(sha256_of "$sdist") != "$SDIST_SHA256" ]]; then
  rm -f "$sdist"
  mkdir -p "$PIP_CACHE"
  say "pip download llama-cpp-python==$LCPP_VERSION (sdist, ~75 MB) -> $PIP_CACHE"
  python3 -m pip download --quiet --no-deps --no-binary :all: \
    "llama-cpp-python==$LCPP_VERSION" -d "$PIP_CACHE" || die "pip download failed"
  [[ -f $sdist ]] || die "pip download did not produce $sdist"
  got=$(sha256_of "$sdist")
  [[ $got == "$SDIST_SHA256" ]] || die "$sdist: sha256 mismatch: expected $SDIST_SHA256, found $got"
fi
say "sdist: $sdist (sha256 ok)"

# --- sources -------------------------------------------------------------------------------
stamp=$SRC/.extracted-$SDIST_SHA256
if [[ ! -f $stamp ]]; then
  say "extracting into $WORK"
  rm -rf "$SRC"
  mkdir -p "$WORK"
  tar -xzf "$sdist" -C "$WORK"
  [[ -f $SRC/vendor/llama.cpp/CMakeLists.txt ]] || die "$sdist has no vendor/llama.cpp/CMakeLists.txt"
  touch "$stamp"
fi

# --- instruction sets --------------------------------------------------------------------
# GGML_NATIVE=ON compiles for everything the CPU flags list. On some x86 hosts the flags
# list AMX although AMX tile instructions fault there (a native build then dies with
# SIGILL in ggml's AMX code). Where AMX is listed, the sets are named one by one instead,
# AMX left out; elsewhere the native build is used. SPILLWAY_LLAMA_CPP_ISA=native|explicit
# overrides the choice.
isa_flags() {
  local flags mode=${SPILLWAY_LLAMA_CPP_ISA:-}
  flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
  if [[ -z $mode ]]; then
    if [[ $flags == *" amx_tile "* ]]; then mode=explicit; else mode=native; fi
  fi
  if [[ $mode == native ]]; then
    echo "-DGGML_NATIVE=ON"
    return
  fi
  has() { [[ $flags == *" $1 "* ]] && echo ON || echo OFF; }
  echo "-DGGML_NATIVE=OFF -DGGML_SSE42=$(has sse4_2) -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2)" \
    "-DGGML_BMI2=$(has bmi2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c)" \
    "-DGGML_AVX_VNNI=$(has avx_vnni) -DGGML_AVX512=$(has avx512f)" \
    "-DGGML_AVX512_VBMI=$(has avx512vbmi) -DGGML_AVX512_VNNI=$(has avx512_vnni)" \
    "-DGGML_AVX512_BF16=$(has avx512_bf16)" \
    "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
}

# --- configure and build ---------------------------------------------------------------------
# The server is configured in when asked for (a cached build without it is reconfigured).
server_flag=OFF
[[ $server -eq 1 ]] && server_flag=ON
if [[ ! -f $BUILD/CMakeCache.txt ]] ||
  { [[ $server -eq 1 ]] && ! grep -q '^LLAMA_BUILD_SERVER:BOOL=ON' "$BUILD/CMakeCache.txt"; }; then
  read -r -a isa <<<"$(isa_flags)"
  say "configuring $BUILD (${isa[*]}, server $server_flag)"
  cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON \
    -DLLAMA_CURL=OFF \
    "${isa[@]}" \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=$server_flag >"$WORK/configure.log" 2>&1 ||
    {
      tail -n 30 "$WORK/configure.log" >&2
      die "cmake configure failed (full log: $WORK/configure.log)"
    }
fi
if [[ $configure_only -eq 1 ]]; then
  say "configured; stopping before the build (--configure-only)"
  exit 0
fi
say "building ${TARGETS[*]} with $JOBS jobs (log: $WORK/build.log)"
cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}" >"$WORK/build.log" 2>&1 ||
  {
    tail -n 40 "$WORK/build.log" >&2
    die "build failed (full log: $WORK/build.log)"
  }
built || die "build finished but ${TOOLS[*]} or libllama.so are missing under $BUILD"
say "done"
report
