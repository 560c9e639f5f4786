#!/usr/bin/env bash
# Build llama.cpp's own llama-bench, llama-perplexity and llama-quantize from the
# exact llama.cpp that llama-cpp-python 0.3.36 vendors, so that `edgekit bench
# --compare-llama-bench` and the perplexity check compare against the same code.
#
# Same CPU flags as scripts/install.sh: AMX off on x86 (a default build crashes in
# the AMX matmul on quantized models), native otherwise.
#   usage: benchmarks/build_llama_tools.sh [DEST]   (default: ~/.cache/edgekit/llama-tools)
#   EDGEKIT_LLAMA_TOOLS_CMAKE_ARGS: more cmake arguments, e.g. "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90"
#   (benchmarks/gpu_check.sh builds a CUDA llama-bench so)
#   result: DEST/bin/llama-bench, DEST/bin/llama-perplexity, DEST/bin/llama-quantize
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_VERSION=0.3.36
DEST=$(realpath -m "${1:-${EDGEKIT_LLAMA_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/edgekit/llama-tools}}")
PIP=${PIP:-.venv/bin/pip}
TARGETS=(llama-bench llama-perplexity llama-quantize)

log() { printf '[llama-tools] %s\n' "$*" >&2; }

have_all() {
  for t in "${TARGETS[@]}"; do [ -x "$DEST/bin/$t" ] || return 1; done
}

fetch_source() {
  local work=$1 sdist
  "$PIP" download -q --no-binary :all: --no-deps -d "$work" "llama-cpp-python==$LLAMA_CPP_VERSION"
  sdist=$(ls "$work"/llama_cpp_python-*.tar.gz | head -1)
  tar -xzf "$sdist" -C "$work"
  echo "$work/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"
}

cpu_flags() {
  case "$(uname -m)" in
    x86_64|amd64) echo "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16";;
    *) echo "";;
  esac
}

build() {
  local src=$1 flags
  flags=$(cpu_flags)
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" ${EDGEKIT_LLAMA_TOOLS_CMAKE_ARGS:-} >/dev/null
  cmake --build "$src/build" --config Release -j "$(nproc)" --target "${TARGETS[@]}"
}

main() {
  if have_all; then log "already built in $DEST/bin"; return 0; fi
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  log "fetching llama-cpp-python $LLAMA_CPP_VERSION source"
  local src
  src=$(fetch_source "$WORK")
  log "building ${TARGETS[*]} (a few minutes)"
  build "$src"
  mkdir -p "$DEST/bin.tmp"
  for t in "${TARGETS[@]}"; do cp "$src/build/bin/$t" "$DEST/bin.tmp/"; done
  rm -rf "$DEST/bin"; mv "$DEST/bin.tmp" "$DEST/bin"
  log "done: $DEST/bin"
}
main "$@"
