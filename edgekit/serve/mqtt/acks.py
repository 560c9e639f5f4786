"""MQTT acknowledgements: a request's PUBACK waits until its answer is with the broker.

A request's PUBACK is held back (paho manual_ack) until its answer is published and
the broker has acknowledged that publish: a daemon that dies before then gets the
request again from the broker. Pending.mids collects every delivery of the same request
(the first, and the broker's redeliveries after a reconnect), tagged with the connection
generation they arrived on: a packet id means something only on its own session.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 0.02  # how often unconfirmed publishes are re-checked (paho flags them just after on_publish)

Delivery = list[tuple[int, int]]  # (connection generation, packet id) of each delivery to acknowledge


@dataclass(eq=False)
class Pending:
    """An accepted request until it is acknowledged: the deliveries to PUBACK once it is answered."""

    mids: Delivery = field(default_factory=list)


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


class Ledger:
    """Accepted requests until they are acknowledged: who is in progress, and which deliveries to PUBACK.

    ``ack`` is the client's ack(mid, qos); ``journal`` the answered-keys journal (journal.py).
    """

    def __init__(self, ack: Callable[[int, int], Any], journal: Any) -> None:
        self._send_ack = ack
        self.journal = journal
        self._lock = threading.Lock()  # guards _active, _generation and every job.mids
        self._active: dict[str, Pending] = {}
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

    def add(self, key: str, pending: Pending) -> None:
        with self._lock:
            self._active[key] = pending

    def drop(self, key: str) -> None:
        with self._lock:
            self._active.pop(key, None)

    def duplicate(self, key: str | None, delivery: Delivery) -> str | None:
        """Whether ``key`` is "in progress" (acked with its first delivery) or "answered" (acked now); else None."""
        if key is None:
            return None
        with self._lock:
            pending = self._active.get(key)
            if pending is not None:
                pending.mids.extend(delivery)
                return "in progress"
        if key in self.journal:
            self.journal.sync()
            self.ack(delivery)
            return "answered"
        return None

    def commit(self, key: str, pending: Pending, remembered: bool) -> None:
        """The broker has the answer: make the journal durable, then acknowledge every delivery."""
        if remembered:
            self.journal.sync()
        with self._lock:
            if self._active.get(key) is pending:
                del self._active[key]
            mids = list(pending.mids)
        self.ack(mids)
