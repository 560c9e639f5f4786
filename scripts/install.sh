#!/usr/bin/env bash
# Set up edgekit on this machine: system packages, a virtualenv in .venv, and
# llama-cpp-python built from source with flags that fit the CPU.
#
# Why build from source: PyPI ships llama-cpp-python as an sdist only, and a
# default build on CPUs that report AMX crashes (SIGSEGV in the AMX matmul) on
# every quantized model. We build with AMX off on x86, CUDA on when nvcc is
# present (or EDGEKIT_CUDA=1), and keep our own wheel cache keyed by the exact
# flags so that pip's cache can never hand back a wheel built otherwise.
#
# It also builds llama.cpp's own llama-bench, llama-perplexity and llama-quantize
# (benchmarks/build_llama_tools.sh, cached in ~/.cache/edgekit/llama-tools) that the tests
# and benchmarks compare against: here, once, never inside a test's time limit.
# EDGEKIT_SKIP_LLAMA_TOOLS=1 skips them (the tests that need them then fail and say so).
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_VERSION=0.3.36
VENV=${EDGEKIT_VENV:-.venv}
PY=${PYTHON:-python3}
WHEEL_CACHE=${EDGEKIT_WHEEL_CACHE:-$HOME/.cache/edgekit/wheels}

log() { printf '[install] %s\n' "$*" >&2; }

apt_packages() {
  local want=(mosquitto mosquitto-clients) missing=()
  [ "${EDGEKIT_WITH_BROWSER:-1}" = 1 ] && want+=(chromium)
  command -v systemd-analyze >/dev/null || want+=(systemd)
  for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
    log "missing system packages: ${missing[*]} (install them as root)"; return 0
  fi
  local SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  log "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian package enables a system-wide broker; edgekit's tests start their own.
  if [ -d /run/systemd/system ]; then $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi
}

cmake_args() {
  local args=""
  case "$(uname -m)" in
    x86_64|amd64)
      local f="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
      args="-DCMAKE_C_FLAGS='$f' -DCMAKE_CXX_FLAGS='$f'";;
  esac
  if [ "${EDGEKIT_CUDA:-auto}" = 1 ] || { [ "${EDGEKIT_CUDA:-auto}" = auto ] && command -v nvcc >/dev/null && nvidia-smi >/dev/null 2>&1; }; then
    args="$args -DGGML_CUDA=on"
    [ -n "${CUDA_ARCHITECTURES:-}" ] && args="$args -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES"
  fi
  [ -n "${EDGEKIT_EXTRA_CMAKE_ARGS:-}" ] && args="$args $EDGEKIT_EXTRA_CMAKE_ARGS"
  echo "${args# }"
}

install_llama_cpp() {
  local args key wheel_dir whl
  args=$(cmake_args)
  key=$(printf '%s|%s|%s|%s' "$LLAMA_CPP_VERSION" "$args" "$("$VENV/bin/python" -c 'import sys;print(sys.version_info[:2])')" "$(uname -m)" | sha256sum | cut -c1-16)
  if [ -f "$VENV/.llama-cpp-key" ] && [ "$(cat "$VENV/.llama-cpp-key")" = "$key" ] && "$VENV/bin/python" -c 'import llama_cpp' 2>/dev/null; then
    log "llama-cpp-python $LLAMA_CPP_VERSION already built with: $args"; return 0
  fi
  wheel_dir="$WHEEL_CACHE/$key"
  whl=$(ls "$wheel_dir"/llama_cpp_python-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$whl" ]; then
    log "building llama-cpp-python $LLAMA_CPP_VERSION from source (several minutes) with: $args"
    mkdir -p "$wheel_dir.tmp"
    CMAKE_ARGS="$args" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$VENV/bin/pip" wheel --no-cache-dir --no-binary llama-cpp-python --no-deps \
      -w "$wheel_dir.tmp" "llama-cpp-python==$LLAMA_CPP_VERSION"
    rm -rf "$wheel_dir"; mv "$wheel_dir.tmp" "$wheel_dir"
    whl=$(ls "$wheel_dir"/llama_cpp_python-*.whl | head -1)
  fi
  "$VENV/bin/pip" install -q --no-cache-dir --force-reinstall --no-deps "$whl"
  "$VENV/bin/pip" install -q "llama-cpp-python==$LLAMA_CPP_VERSION" # its pure-Python deps
  echo "$key" > "$VENV/.llama-cpp-key"
}

main() {
  [ "${EDGEKIT_SKIP_APT:-0}" = 1 ] || apt_packages
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
  "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
  install_llama_cpp
  log "installing edgekit and its dependencies"
  "$VENV/bin/pip" install -q -e ".[test]"
  if [ "${EDGEKIT_SKIP_LLAMA_TOOLS:-0}" != 1 ]; then
    PIP="$VENV/bin/pip" benchmarks/build_llama_tools.sh
  fi
  log "done: $VENV/bin/edgekit"
}
main "$@"
