#!/usr/bin/env bash
# Build llama.cpp's own llama-bench, llama-perplexity and llama-quantize from the
# exact llama.cpp that llama-cpp-python 0.3.36 vendors, so that `edgekit bench
# --compare-llama-bench` and the perplexity check compare against the same code.
# scripts/install.sh runs it (so `make test` and `make bench` find the tools); tests
# never build them.
#
# Same CPU flags as scripts/install.sh: AMX off on x86 (a default build crashes in
# the AMX matmul on quantized models), native otherwise.
#   usage: benchmarks/build_llama_tools.sh [DEST]   (default: ~/.cache/edgekit/llama-tools)
#   EDGEKIT_LLAMA_TOOLS_CMAKE_ARGS: more cmake arguments, e.g. "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90"
#   (benchmarks/gpu_check.sh builds a CUDA llama-bench so)
#   result: DEST/bin/llama-bench, DEST/bin/llama-perplexity, DEST/bin/llama-quantize
#
# Cached by version and flags (DEST/bin/.key); built once under a lock (DEST/.lock) when
# two callers ask at the same time; the build folder (DEST/.build-*) is removed on
# failure, Ctrl-C, SIGTERM and SIGHUP, together with the compilers it started, and a
# leftover of a killed (SIGKILL) build is removed by the next run.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_VERSION=0.3.36
DEST=$(realpath -m "${1:-${EDGEKIT_LLAMA_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/edgekit/llama-tools}}")
PIP=${PIP:-.venv/bin/pip}
TARGETS=(llama-bench llama-perplexity llama-quantize)
WORK=""
CHILD=""

log() { printf '[llama-tools] %s\n' "$*" >&2; }

cpu_flags() {
  case "$(uname -m)" in
    x86_64|amd64) echo "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16";;
    *) echo "";;
  esac
}

cache_key() {
  printf '%s|%s|%s' "$LLAMA_CPP_VERSION" "$(cpu_flags)" "$(uname -m)" | sha256sum | cut -c1-16
}

have_all() {
  for t in "${TARGETS[@]}"; do [ -x "$DEST/bin/$t" ] || return 1; done
}

is_current() {
  have_all || return 1
  # A folder built by this script before it kept a key has the same version and flags.
  [ -f "$DEST/bin/.key" ] || cache_key > "$DEST/bin/.key"
  [ "$(cat "$DEST/bin/.key")" = "$(cache_key)" ]
}

cleanup() {
  # Stop the compilers with their parent: a killed script must not leave a build running.
  if [ -n "$CHILD" ]; then kill -TERM -- "-$CHILD" 2>/dev/null || true; wait "$CHILD" 2>/dev/null || true; fi
  [ -n "$WORK" ] && rm -rf "$WORK" "$DEST/bin.tmp"
  return 0
}

# Run a step in its own process group and wait for it: bash runs a trap only between
# commands, so waiting on a background job lets Ctrl-C/SIGTERM stop the build at once.
step() {
  set -m
  "$@" &
  CHILD=$!
  set +m
  wait "$CHILD"
  CHILD=""
}

fetch_source() {
  local work=$1
  step "$PIP" download -q --no-binary :all: --no-deps -d "$work" "llama-cpp-python==$LLAMA_CPP_VERSION"
  tar -xzf "$(ls "$work"/llama_cpp_python-*.tar.gz | head -1)" -C "$work"
}

build() {
  local src=$1 flags
  flags=$(cpu_flags)
  step cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" ${EDGEKIT_LLAMA_TOOLS_CMAKE_ARGS:-} >/dev/null
  # cmake prints "[ nn%] Building ..." lines: the progress of the few minutes this takes.
  step cmake --build "$src/build" --config Release -j "$(nproc)" --target "${TARGETS[@]}"
}

build_locked() {
  if is_current; then log "already built in $DEST/bin"; return 0; fi
  rm -rf "$DEST"/.build-* "$DEST/bin.tmp"  # we hold the lock: these are a killed build's leftovers
  WORK=$(mktemp -d "$DEST/.build-XXXXXX")
  trap cleanup EXIT
  trap 'log "interrupted: removing $WORK"; exit 130' INT
  trap 'log "terminated: removing $WORK"; exit 143' TERM
  trap 'log "hung up: removing $WORK"; exit 129' HUP
  local started=$SECONDS src
  log "fetching llama-cpp-python $LLAMA_CPP_VERSION source"
  fetch_source "$WORK"
  src="$WORK/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"
  log "building ${TARGETS[*]} with $(nproc) jobs (about 10 minutes on 2 cores, 700 MB of temporary files)"
  build "$src"
  mkdir -p "$DEST/bin.tmp"
  for t in "${TARGETS[@]}"; do cp "$src/build/bin/$t" "$DEST/bin.tmp/"; done
  cache_key > "$DEST/bin.tmp/.key"
  rm -rf "$DEST/bin"; mv "$DEST/bin.tmp" "$DEST/bin"
  log "done in $((SECONDS - started)) s: $DEST/bin"
}

main() {
  mkdir -p "$DEST"
  if is_current; then log "already built in $DEST/bin"; return 0; fi
  exec 9>"$DEST/.lock"
  if ! flock -n 9; then
    log "another build is running (lock $DEST/.lock): waiting for it"
    flock 9
  fi
  build_locked
}
main "$@"
