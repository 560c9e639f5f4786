"""The package as users install it: a wheel in a fresh virtualenv, run from outside the checkout.

scripts/wheel_smoke.sh builds the wheel, installs it (not editable) and runs detect, plan with a
shipped profile, make-test-model, convert, quantize and run; it fails if edgekit is imported from
anywhere but the wheel's install or the wheel holds no profiles.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_installs_and_runs_the_smoke_path_outside_the_checkout(tmp_path):
    done = subprocess.run([str(ROOT / "scripts" / "wheel_smoke.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
                               "PYTHON": sys.executable}, timeout=540)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "edgekit imported from the wheel" in output
    assert "rpi5-8gb" in output and "[wheel-smoke] ok" in output
