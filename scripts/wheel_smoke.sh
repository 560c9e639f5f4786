#!/usr/bin/env bash
# Build edgekit's wheel, install it (not editable) into a fresh virtualenv, and run the CLI's smoke
# path there from a folder outside the checkout, so nothing can be imported from the source tree:
# detect, plan --profile rpi5-8gb (the profiles must come from the wheel), make-test-model,
# convert, quantize, run.
#
# The wheel goes in with --no-deps; its dependencies come from the main virtualenv's
# site-packages (a path line, so that venv's editable edgekit is not picked up), because
# llama-cpp-python is built from source by scripts/install.sh and must not be rebuilt here.
# Usage: scripts/wheel_smoke.sh  (after scripts/install.sh; PYTHON=... picks another venv's python)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
work="$(mktemp -d "${TMPDIR:-/tmp}/edgekit-wheel.XXXXXX")"
trap 'rm -rf "$work"' EXIT
say() { echo "[wheel-smoke] $*"; }

say "building the wheel from $repo"
"$python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$work/dist" "$repo"
wheel="$(ls "$work"/dist/edgekit-*.whl)"
"$python" -c 'import sys, zipfile; sys.exit("edgekit/data/profiles/rpi5-8gb.toml" not in zipfile.ZipFile(sys.argv[1]).namelist())' "$wheel" \
  || { say "the wheel holds no profiles"; exit 1; }

say "installing $(basename "$wheel") into a fresh virtualenv"
"$python" -m venv "$work/venv"
deps="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
fresh="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$deps" > "$fresh/edgekit-deps.pth"
"$work/venv/bin/python" -m pip install --quiet --no-deps --no-index "$wheel"

mkdir "$work/run" && cd "$work/run"
export XDG_CONFIG_HOME="$work/config" PYTHONNOUSERSITE=1
unset EDGEKIT_PROFILES EDGEKIT_HARDWARE_ROOT PYTHONPATH
where="$("$work/venv/bin/python" -c 'import edgekit; print(edgekit.__file__)')"
case "$where" in "$fresh"/*) say "edgekit imported from the wheel: $where" ;;
                 *) say "edgekit imported from $where, not the wheel's install"; exit 1 ;; esac

edgekit="$work/venv/bin/edgekit"
set -x
"$edgekit" detect
"$edgekit" make-test-model tiny-checkpoint --preset tiny
"$edgekit" convert tiny-checkpoint -o tiny-f16.gguf
"$edgekit" quantize tiny-f16.gguf Q4_K_M -o tiny-Q4_K_M.gguf
"$edgekit" plan tiny-Q4_K_M.gguf --profile rpi5-8gb
"$edgekit" run tiny-Q4_K_M.gguf -p "Turn on the porch light" --max-tokens 8
set +x
say "ok"
