"""The core's work in flight: accepted jobs and their bounded queue (no front end's details).

A Job is what Core.submit() returns: the engine Request, where its output goes (its
Sink, the front end that took it), and what may end it early (a cancel, its expiry).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from edgekit.engine.records import Request
from edgekit.errors import Busy


@dataclass(eq=False)  # identity: two jobs with equal fields are still two requests
class Job:
    """One accepted request, from submit() to its Sink's finish()."""

    request: Request
    sink: Any  # core.Sink
    front_end: str  # "mqtt" | "http": metrics are counted per front end
    stream: bool = False  # the Sink wants chunks as they come
    expires_at: float | None = None  # time.monotonic() past which it is not run (MQTT 5 Message Expiry)
    owner: str | None = None  # who asked (a client id): cancel and dedup are per owner
    received: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    started: float | None = None  # time.monotonic() when the worker took it
    time_limit_s: float | None = None  # set when it starts: past it, the job ends "timeout"
    timed_out: bool = False
    engine_ms: float = 0.0  # how long the engine's call took, as the core saw it (set when it returns a Result)

    @property
    def request_id(self) -> str:
        return self.request.id

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.monotonic()) > self.expires_at


class JobQueue:
    """A bounded FIFO: put() raises Busy when full; take() blocks until work or close()."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise Busy("the daemon is stopping: try again (another daemon of the fleet may take it)")
            if len(self._jobs) >= self.size:
                raise Busy(f"the queue is full ({self.size} waiting): try again later")
            self._jobs.append(job)
            self._cond.notify()

    def take(self) -> Job | None:
        """The next job, or None once closed."""
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            return None if self._closed else self._jobs.popleft()

    def remove(self, job: Job) -> bool:
        with self._cond:
            try:
                self._jobs.remove(job)
            except ValueError:
                return False
            return True

    def snapshot(self) -> list[Job]:
        with self._cond:
            return list(self._jobs)

    def close(self) -> list[Job]:
        """Take no more; returns the jobs still waiting (the core finishes them "draining")."""
        with self._cond:
            self._closed = True
            left, self._jobs = list(self._jobs), deque()
            self._cond.notify_all()
            return left
