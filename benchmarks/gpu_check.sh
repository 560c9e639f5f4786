#!/usr/bin/env bash
# Prepared check for a machine with an NVIDIA GPU, in under 10 minutes (issue 17):
#   1. builds the CUDA wheel of llama-cpp-python (scripts/install.sh, EDGEKIT_CUDA=1, this GPU's
#      architecture only: the minutes are in the CUDA kernels) into its own venv, with nvidia-ml-py,
#      and beside it llama.cpp's llama-bench with CUDA from the same vendored llama.cpp;
#   2. `edgekit detect --json`;
#   3. `edgekit plan` for the TinyLlama-shaped Q4_K_M (generated, random weights) and a
#      SOLAR-10.7B-shaped Q4_K_M (a valid GGUF whose tensor data is a sparse hole): every layer on the GPU?
#   4. `edgekit bench` of the TinyLlama file with the profile's settings (all layers on the GPU), NVML
#      power and energy per token, llama-bench run after each round on the same file and settings;
#   5. one JSON summary: OUT/summary.json (each step's seconds and exit status, the checks, the figures).
# usage: benchmarks/gpu_check.sh [OUT]            (default: gpu-check/)
# Offline: PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse (holding the llama-cpp-python sdist and the wheels).
# Testing on a CPU box: GPU_CHECK_ALLOW_CPU=1 GPU_CHECK_SKIP_BUILD=1 EDGEKIT_GPU_VENV=.venv GPU_CHECK_PRESET=tiny
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=$(realpath -m "${1:-gpu-check}")
VENV=${EDGEKIT_GPU_VENV:-.venv-cuda}
TOOLS=${GPU_CHECK_TOOLS:-$OUT/llama-tools}
PRESET=${GPU_CHECK_PRESET:-tinyllama}
ROUNDS=${GPU_CHECK_ROUNDS:-5}
EK="$VENV/bin/python -m edgekit.cli"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$OUT/models"
STEPS="$OUT/steps.tsv"; : > "$STEPS"
T0=$(date +%s)

log() { printf '[gpu-check] %s\n' "$*" >&2; }

step() {  # step NAME TIMEOUT_S COMMAND...: stdout to OUT/NAME.out, stderr to OUT/NAME.log; seconds and status kept
  local name=$1 limit=$2 start rc; shift 2
  start=$(date +%s); log "$name"
  timeout "$limit" bash -c '"$@"' _ "$@" > "$OUT/$name.out" 2> "$OUT/$name.log"; rc=$?  # bash -c: functions too
  printf '%s\t%s\t%s\n' "$name" "$(( $(date +%s) - start ))" "$rc" >> "$STEPS"
  [ "$rc" -eq 0 ] || log "$name failed ($rc): see $OUT/$name.log"
  return "$rc"
}

gpu_arch() {  # "9.0" -> "90"; empty without a GPU
  nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. '
}

build() {  # the CUDA wheel and a CUDA llama-bench, side by side
  local arch=$1 cuda=1
  [ -z "$arch" ] && cuda=0
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel setuptools
  EDGEKIT_VENV=$VENV EDGEKIT_CUDA=$cuda CUDA_ARCHITECTURES=$arch EDGEKIT_SKIP_APT=1 scripts/install.sh &
  local wheel=$!
  PIP=$VENV/bin/pip EDGEKIT_LLAMA_TOOLS_CMAKE_ARGS=${arch:+"-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch"} \
    benchmarks/build_llama_tools.sh "$TOOLS" &
  local tools=$!
  wait "$wheel" || return 1
  wait "$tools" || return 1
  "$VENV/bin/pip" install -q -e ".[gpu]"  # nvidia-ml-py: NVML power, temperature, clocks
}

models() {  # the TinyLlama-shaped Q4_K_M, and a SOLAR-10.7B-shaped Q4_K_M without data on disk
  $EK make-test-model "$OUT/models/$PRESET" --preset "$PRESET" --dtype bf16 &&
  $EK convert "$OUT/models/$PRESET" --outtype f16 --quant Q4_K_M -o "$OUT/models/$PRESET.Q4_K_M.gguf" &&
  "$VENV/bin/python" -c "
from pathlib import Path
from tests.test_plan import sized_gguf  # one writer of shape-only GGUFs, shared with the planner's tests
sized_gguf(Path('$OUT/models/solar-10.7b.Q4_K_M.gguf'), 'Q4_K_M', n_layer=48, n_embd=4096, n_ff=14336,
           n_head=32, n_head_kv=8, n_ctx=4096)"
}

export OUT VENV TOOLS PRESET EK
export -f log build models

main() {
  local arch; arch=$(gpu_arch)
  if [ -z "$arch" ] && [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; then
    log "no NVIDIA GPU (nvidia-smi found none): this check is for a GPU machine"; exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
  if [ "${GPU_CHECK_SKIP_BUILD:-0}" != 1 ]; then step build 420 build "$arch"; fi
  step detect 60 $EK detect --json
  step models 180 models
  local model="$OUT/models/$PRESET.Q4_K_M.gguf" profile
  step plan-tinyllama 60 $EK plan "$model" --json
  step plan-solar 60 $EK plan "$OUT/models/solar-10.7b.Q4_K_M.gguf" --json
  profile=$("$VENV/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['profile'])" "$OUT/plan-tinyllama.out" 2>/dev/null)
  local bench_args=("$model" --prompt-tokens 512 --gen-tokens 128 --repeat "$ROUNDS" --json --output "$OUT/bench.json"
                    --report "$OUT/bench.html")
  [ -n "$profile" ] && bench_args+=(--profile "$profile")
  [ -x "$TOOLS/bin/llama-bench" ] && bench_args+=(--compare-llama-bench "$TOOLS/bin/llama-bench")
  step bench 240 $EK bench "${bench_args[@]}"
  "$VENV/bin/python" benchmarks/gpu_check_summary.py "$OUT" "$(( $(date +%s) - T0 ))" > "$OUT/summary.json"
  cat "$OUT/summary.json"
}

main "$@"
