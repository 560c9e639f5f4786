"""benchmarks/build_llama_tools.sh: cached by version and flags, one build under a lock, no leftovers.

The real build takes minutes, so these tests stand a fake `pip` in for the download step
(the script's PIP variable): what is checked is the script's own bookkeeping.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.llama_tools import TOOLS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "build_llama_tools.sh"


def fake_pip(tmp_path: Path, body: str) -> Path:
    pip = tmp_path / "pip"
    pip.write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'pip.pid'}\n{body}\n")
    pip.chmod(0o755)
    return pip


def start(dest: Path, pip: Path) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SCRIPT), str(dest)], env={**os.environ, "PIP": str(pip)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def built_tools(dest: Path) -> None:
    (dest / "bin").mkdir(parents=True)
    for tool in TOOLS:
        (dest / "bin" / tool).write_text("#!/bin/sh\n")
        (dest / "bin" / tool).chmod(0o755)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_stops_the_build_at_once_and_removes_its_folder(tmp_path, sig, code):
    dest = tmp_path / "tools"
    build = start(dest, fake_pip(tmp_path, "exec sleep 60"))
    wait_for(tmp_path / "pip.pid")
    child = int((tmp_path / "pip.pid").read_text())
    assert list(dest.glob(".build-*"))
    build.send_signal(sig)
    build.wait(timeout=5)  # not after the 60 s step: the script waits on it interruptibly
    assert build.returncode == code
    assert not list(dest.glob(".build-*")) and not (dest / "bin").exists()
    time.sleep(0.2)
    assert not alive(child), "the step the script started outlived it"


def test_a_failed_step_leaves_no_build_folder(tmp_path):
    dest = tmp_path / "tools"
    done = subprocess.run(["bash", str(SCRIPT), str(dest)], env={**os.environ, "PIP": str(fake_pip(tmp_path, "exit 3"))},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert not list(dest.glob(".build-*"))


def test_tools_built_before_the_cache_key_existed_are_reused(tmp_path):
    dest = tmp_path / "tools"
    built_tools(dest)  # as the earlier script left them: no .key
    done = subprocess.run(["bash", str(SCRIPT), str(dest)], env={**os.environ, "PIP": "/nonexistent/pip"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "already built" in done.stderr
    assert (dest / "bin" / ".key").read_text().strip()


def test_other_flags_rebuild(tmp_path):
    dest = tmp_path / "tools"
    built_tools(dest)
    (dest / "bin" / ".key").write_text("built-with-other-flags\n")
    done = subprocess.run(["bash", str(SCRIPT), str(dest)], env={**os.environ, "PIP": str(fake_pip(tmp_path, "exit 3"))},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "fetching" in done.stderr
    assert (dest / "bin" / "llama-bench").exists()  # the old tools stay until new ones are in place


def test_a_second_caller_waits_for_the_first_build_and_reuses_it(tmp_path):
    dest = tmp_path / "tools"
    dest.mkdir()
    with open(dest / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a first build in progress
        second = start(dest, Path("/nonexistent/pip"))
        time.sleep(1)
        assert second.poll() is None  # waiting, not building beside it
        built_tools(dest)
        (dest / "bin" / ".key").unlink(missing_ok=True)
        fcntl.flock(lock, fcntl.LOCK_UN)
    _, err = second.communicate(timeout=30)
    assert second.returncode == 0
    assert "another build is running" in err and "already built" in err
