"""The daemon's work in flight: accepted requests, their bounded queue, and their acknowledgement.

A request's MQTT PUBACK is held back (paho manual_ack) until its answer is published
and the broker has acknowledged that publish: a daemon that dies before then gets the
request again from the broker. Job.mids collects every delivery of the same request
(the first, and the broker's redeliveries after a reconnect), tagged with the connection
generation they arrived on: a packet id means something only on its own session.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import Busy
from edgekit.serve.protocol import Incoming

log = logging.getLogger(__name__)

POLL_S = 0.02  # how often unconfirmed publishes are re-checked (paho flags them just after on_publish)


@dataclass
class Job:
    """One accepted request, from receipt to acknowledgement."""

    incoming: Incoming
    received: float  # time.monotonic() at receipt
    deadline: float | None  # MQTT 5 Message Expiry, as a monotonic time; None = no deadline
    mids: list[tuple[int, int]] = field(default_factory=list)  # (connection generation, packet id)
    cancelled: bool = False

    @property
    def request_id(self) -> str:
        return self.incoming.request.id

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now or time.monotonic()) > self.deadline


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
            if len(self._jobs) >= self.size:
                raise Busy(f"the queue is full ({self.size} waiting): try again later")
            self._jobs.append(job)
            self._cond.notify()

    def take(self) -> Job | None:
        """The next job, or None once closed (queued jobs stay unanswered and unacknowledged)."""
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

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class _Pending:
    info: Any  # paho MQTTMessageInfo of the final reply
    on_confirmed: Callable[[], None]


class Confirmations:
    """Runs a callback once the broker has acknowledged a publish, on a thread of its own.

    The callback journals and acknowledges requests (an fsync): it must not run on
    paho's network thread, where it would delay every other message.
    """

    def __init__(self) -> None:
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="edgekit-confirm", daemon=True)
        self._stopped = False

    def start(self) -> None:
        self._thread.start()

    def add(self, info: Any, on_confirmed: Callable[[], None]) -> None:
        with self._lock:
            self._pending[info.mid] = _Pending(info, on_confirmed)
        self._events.put(-1)  # look now: the PUBACK may have come before we registered

    def published(self, mid: int) -> None:
        """paho's on_publish (network thread): hand over, do nothing slow here."""
        self._events.put(mid)

    def __len__(self) -> int:
        return len(self._pending)

    def wait_empty(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < end:
            time.sleep(POLL_S)
        return not self._pending

    def stop(self) -> None:
        self._stopped = True
        self._events.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped:
            try:
                mid = self._events.get(timeout=POLL_S)
            except queue.Empty:
                mid = -1
            if mid is None:
                return
            for pending in self._confirmed(mid):
                try:
                    pending.on_confirmed()
                except Exception:  # a bug must not stop every later acknowledgement
                    log.exception("confirming a reply failed")

    def _confirmed(self, mid: int) -> list[_Pending]:
        with self._lock:
            done = [m for m, p in self._pending.items() if m == mid or is_published(p.info)]
            return [self._pending.pop(m) for m in done]


def is_published(info: Any) -> bool:
    """paho's is_published() raises for a message first sent while offline; paho still sends it later."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


Delivery = list[tuple[int, int]]  # (connection generation, packet id) of each delivery to acknowledge


class Ledger:
    """Accepted requests until they are acknowledged: who is in progress, and which deliveries to PUBACK.

    ``ack`` is the client's ack(mid, qos); ``journal`` the answered-keys journal (journal.py).
    """

    def __init__(self, ack: Callable[[int, int], Any], journal: Any) -> None:
        self._send_ack = ack
        self.journal = journal
        self._lock = threading.Lock()  # guards _active, _generation and every job.mids
        self._active: dict[str, Job] = {}
        self._generation = 0

    def new_connection(self) -> None:
        """A (re)connect: packet ids of earlier connections mean nothing any more."""
        with self._lock:
            self._generation += 1

    def delivery(self, qos: int, mid: int) -> Delivery:
        """What to acknowledge for one received message: nothing at QoS 0."""
        return [(self._generation, mid)] if qos > 0 else []

    def ack(self, delivery: Delivery) -> None:
        with self._lock:
            current = [mid for generation, mid in delivery if generation == self._generation]
        for mid in current:
            self._send_ack(mid, 1)

    def add(self, job: Job) -> None:
        with self._lock:
            self._active[_key(job)] = job

    def drop(self, job: Job) -> None:
        with self._lock:
            self._active.pop(_key(job), None)

    def with_id(self, request_id: str) -> list[Job]:
        with self._lock:
            return [job for job in self._active.values() if job.request_id == request_id]

    def duplicate(self, key: str | None, delivery: Delivery) -> str | None:
        """Whether ``key`` is "in progress" (acked with its first delivery) or "answered" (acked now); else None."""
        if key is None:
            return None
        with self._lock:
            job = self._active.get(key)
            if job is not None:
                job.mids.extend(delivery)
                return "in progress"
        if key in self.journal:
            self.journal.sync()
            self.ack(delivery)
            return "answered"
        return None

    def commit(self, job: Job, remembered: bool) -> None:
        """The broker has the answer: make the journal durable, then acknowledge every delivery."""
        if remembered:
            self.journal.sync()
        with self._lock:
            self._active.pop(_key(job), None)
            mids = list(job.mids)
        self.ack(mids)


def _key(job: Job) -> str:
    return job.incoming.reply.key or f"\0{job.request_id}"
