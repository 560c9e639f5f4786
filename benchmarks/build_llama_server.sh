#!/usr/bin/env bash
# Build llama.cpp's llama-server from the llama.cpp that llama-cpp-python 0.3.36 vendors,
# so that benchmarks/bench_prompt_cache.py can run its restart scenario against
# `llama-server --slot-save-path` beside edgekit's prompt cache, on the same code.
# Nothing runs it for you (install.sh does not; the benchmark says how when it is missing).
#
# Same CPU flags as scripts/install.sh (AMX off on x86: a default build crashes in the AMX
# matmul on quantized models); no curl and no web UI (neither is needed, and both would
# download at build time).
#   usage: benchmarks/build_llama_server.sh [DEST]   (default: ~/.cache/edgekit/llama-server)
#   result: DEST/bin/llama-server; cached by version and flags (DEST/bin/.key); one build at
#   a time (DEST/.lock); the build folder is removed when the script ends, however it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_VERSION=0.3.36
DEST=$(realpath -m "${1:-${XDG_CACHE_HOME:-$HOME/.cache}/edgekit/llama-server}")
PIP=${PIP:-.venv/bin/pip}
WORK=""

log() { printf '[llama-server] %s\n' "$*" >&2; }

flags() {
  case "$(uname -m)" in x86_64|amd64) echo "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16";; esac
}

key() { printf 'server|%s|%s|%s' "$LLAMA_CPP_VERSION" "$(flags)" "$(uname -m)" | sha256sum | cut -c1-16; }

is_current() { [ -x "$DEST/bin/llama-server" ] && [ "$(cat "$DEST/bin/.key" 2>/dev/null)" = "$(key)" ]; }

build() {
  local src f
  f=$(flags)
  log "fetching llama-cpp-python $LLAMA_CPP_VERSION source"
  "$PIP" download -q --no-binary :all: --no-deps -d "$WORK" "llama-cpp-python==$LLAMA_CPP_VERSION"
  tar -xzf "$(ls "$WORK"/llama_cpp_python-*.tar.gz | head -1)" -C "$WORK"
  src="$WORK/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DCMAKE_C_FLAGS="$f" -DCMAKE_CXX_FLAGS="$f" >/dev/null
  log "building llama-server with $(nproc) jobs (several minutes on 2 cores)"
  cmake --build "$src/build" --config Release -j "$(nproc)" --target llama-server
  mkdir -p "$DEST/bin"
  cp "$src/build/bin/llama-server" "$DEST/bin/llama-server.tmp"
  mv "$DEST/bin/llama-server.tmp" "$DEST/bin/llama-server"
  key > "$DEST/bin/.key"
}

main() {
  mkdir -p "$DEST"
  exec 9>"$DEST/.lock"
  flock 9
  if is_current; then log "already built: $DEST/bin/llama-server"; return 0; fi
  rm -rf "$DEST"/.build-*  # a killed build's leftovers: we hold the lock
  WORK=$(mktemp -d "$DEST/.build-XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  local started=$SECONDS
  build
  log "done in $((SECONDS - started)) s: $DEST/bin/llama-server"
}
main "$@"
