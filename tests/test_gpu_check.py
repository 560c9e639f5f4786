"""benchmarks/gpu_check.sh: the parts that run without a GPU (the script itself needs one)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_without_a_gpu_it_stops_at_once_and_says_why(tmp_path):
    if shutil.which("nvidia-smi"):
        return  # a GPU box runs the whole check instead
    done = subprocess.run([str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GPU_CHECK_ALLOW_CPU": "0"})
    assert done.returncode == 2 and "no NVIDIA GPU" in done.stderr
    assert not (tmp_path / "out" / "summary.json").exists()
