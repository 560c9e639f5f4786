"""The worker process seen from the parent: start it, talk to it, tell when it died, stop it.

The worker is a fresh interpreter (``python -m edgekit.engine``), never a fork: llama.cpp's
threads and fork do not mix, and unlike multiprocessing's spawn it never re-imports the
caller's __main__. It gets two socket pipes (requests; ping) and the memfd of the shared
cancel flag as inherited file descriptors.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from multiprocessing.connection import Pipe
from pathlib import Path
from typing import Any

from edgekit import errors
from edgekit.engine.records import ModelInfo
from edgekit.errors import EngineError
from edgekit.settings import Settings

POLL_S = 0.5  # how often a waiting recv() checks that the worker still lives

# After each graph llama.cpp's OpenMP threads (libgomp) spin before they sleep: 300,000 pauses by
# default, ~10 ms on an x86 server core. After every answer, then, all the engine's threads burn
# the cores that the daemon, its front end and the client need to hand that answer on (on a
# 2-core box it was most of the HTTP front end's p99: benchmarks/bench_http.py), and an edge box
# spends the energy for nothing. 20,000 (~0.6 ms on that box) still spans the gap between two
# tokens' graphs, so decoding keeps its speed (README, "Measured on this project's build box").
# A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
OPENMP_SPIN_COUNT = "20000"


class WorkerDied(Exception):
    """The worker process ended (a crash or a kill) while we waited for it."""


class WorkerProcess:
    """One worker process with its request pipe and its heartbeat pipe."""

    def __init__(self, model: Path, settings: Settings, cancel_fd: int, prompt_cache: Any = None) -> None:
        self.model = model
        self.conn, child_conn = Pipe()
        self.heartbeat, child_heartbeat = Pipe()
        fds = (child_conn.fileno(), child_heartbeat.fileno(), cancel_fd)
        self.process = subprocess.Popen(
            # -P: the working directory is not put on sys.path, so a folder named edgekit there cannot
            # shadow the package (PYTHONPATH still counts: -I would drop it too).
            [sys.executable, "-P", "-m", "edgekit.engine", *map(str, fds)], pass_fds=fds, stdin=subprocess.DEVNULL,
            env=worker_environment(os.environ),
        )
        child_conn.close()  # so that our recv() sees EOF when the worker dies
        child_heartbeat.close()
        self.conn.send((str(model), settings, prompt_cache))
        self.ready = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout_s: float) -> ModelInfo:
        """Wait for the model to load; ModelFormatError or EngineError if it does not."""
        try:
            message = self.recv(time.monotonic() + timeout_s)
        except TimeoutError:
            self.stop()
            raise EngineError(f"{self.model} did not load within {timeout_s:.0f} s: raise start_timeout_s") from None
        except WorkerDied:
            raise errors.ModelFormatError(
                f"llama.cpp crashed while loading {self.model} ({self.reap()}): the file is probably corrupt; "
                f"check it with `edgekit inspect {self.model}`"
            ) from None
        if is_error(message):
            self.reap()
        info = unwrap(message, "ready")
        self.ready = True
        return info

    def send(self, message: Any) -> None:
        try:
            self.conn.send(message)
        except OSError:
            raise WorkerDied from None

    def recv(self, deadline: float | None = None) -> Any:
        """The next message; WorkerDied if the worker ends, TimeoutError past ``deadline``."""
        while not self.conn.poll(POLL_S):
            if not self.running():
                raise WorkerDied
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            raise WorkerDied from None

    def ping(self, timeout_s: float) -> bool:
        """True if the worker's heartbeat thread answers within ``timeout_s`` (one caller at a time)."""
        if not self.running():
            return False
        try:
            self.heartbeat.send("ping")
            return self.heartbeat.poll(timeout_s) and self.heartbeat.recv() == "pong"
        except (EOFError, OSError):
            return False

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the worker to exit; terminate it if it does not within ``timeout_s``."""
        try:
            self.conn.send(("close",))
        except OSError:
            pass
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.terminate()
        self.reap()

    def reap(self) -> str:
        """Collect the ended worker (killing it if it lingers); say how it ended."""
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.conn.close()
        self.heartbeat.close()
        return describe_exit(self.process.returncode)


def worker_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The worker's environment: ours, with OpenMP's spin after each graph cut short (OPENMP_SPIN_COUNT)."""
    if "GOMP_SPINCOUNT" in env or "OMP_WAIT_POLICY" in env:
        return dict(env)
    return {**env, "GOMP_SPINCOUNT": OPENMP_SPIN_COUNT}


def is_error(message: Any) -> bool:
    return isinstance(message, tuple) and message[:1] == ("error",)


def unwrap(message: Any, expected: str) -> Any:
    """The payload of an expected reply, or the worker's error raised as our own exception."""
    if is_error(message):
        _, name, text = message
        kind = getattr(errors, name, EngineError)
        if not (isinstance(kind, type) and issubclass(kind, errors.EdgekitError)):
            kind = EngineError
        raise kind(text)
    if not isinstance(message, tuple) or message[0] != expected:
        raise EngineError(f"the engine's worker sent {message!r:.80} instead of {expected!r}")
    return message[1]


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
