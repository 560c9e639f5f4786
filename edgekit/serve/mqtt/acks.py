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


# PUBACK reason codes worth sending the same message again for (MQTT 5, 3.4.2.1): the broker's
# in-flight window was full, or it had a passing problem. Others (not authorized, topic name
# invalid, ...) would be refused again.
RETRY_REASONS = {0x97: "quota exceeded", 0x80: "unspecified error", 0x83: "implementation specific error"}
RETRY_S = 0.2  # wait before sending a refused message again
FIRST_WINDOW = 10  # in flight until the broker's CONNACK tells its Receive Maximum


# PUBCOMP reason code that still ends a QoS 2 flow well: the broker no longer holds the packet id,
# because it completed the flow before (a restart resuming it) or lost our session (docs/protocol.md).
FLOW_FINISHED = 0x92


@dataclass
class Message:
    """One publish of ours (QoS 1, or 2 for a final answer), and what to do once the broker has it."""

    topic: str
    payload: bytes
    retain: bool = False
    properties: Any = None
    on_confirmed: Callable[[], None] | None = None
    retry_at: float = 0.0
    qos: int = 1
    before_send: Callable[[int], None] | None = None  # journals the flow under its packet id before it leaves


class Outbox:
    """Every QoS 1 and 2 message we publish, kept within the broker's Receive Maximum, confirmed on a thread of its own.

    The broker says in its CONNACK how many QoS>0 messages it takes from us unacknowledged
    (Mosquitto: max_inflight_messages, 20 by default); past that it refuses with 0x97.
    We never exceed it: the rest wait here in order. A message refused anyway (a PUBACK,
    or at QoS 2 a PUBREC, reason code >= 0x80) is not confirmed: quota and passing errors
    are sent again (at QoS 2 as a new flow: before_send journals its new packet id), others
    are logged and confirmed (acknowledging a request whose answer can never be delivered
    beats having it redelivered forever). Confirmations journal and acknowledge requests
    (an fsync): they run here, never on paho's network thread. One thread owns all state,
    fed by one queue, so a PUBACK can never overtake the registration of its publish.
    """

    def __init__(self, publish: Callable[..., Any]) -> None:
        self._publish = publish  # paho Client.publish
        self.window = FIRST_WINDOW
        self._in_flight: dict[int, Message] = {}
        self._waiting: list[Message] = []
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="edgekit-outbox", daemon=True)
        self._count = 0  # messages sent and not yet confirmed (read by other threads)
        self._count_lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def send(self, message: Message) -> None:
        self._add_count(1)
        self._events.put(("send", message))

    def _add_count(self, n: int) -> None:
        with self._count_lock:
            self._count += n

    def set_window(self, receive_maximum: int) -> None:
        """From the broker's CONNACK (paho's network thread)."""
        self._events.put(("window", receive_maximum))

    def published(self, mid: int, reason: int = 0) -> None:
        """paho's on_publish (network thread): hand over, do nothing slow here."""
        self._events.put(("acked", (mid, reason)))

    def resume(self, mid: int, message: Message) -> None:
        """A message already in paho's store under ``mid`` (a resumed QoS 2 flow): in flight, confirmed as any other."""
        self._add_count(1)
        self._events.put(("resume", (mid, message)))

    def __len__(self) -> int:
        return self._count

    def wait_empty(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while self._count and time.monotonic() < end:
            time.sleep(POLL_S)
        return not self._count

    def stop(self) -> None:
        self._events.put(("stop", None))
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            try:
                kind, value = self._events.get(timeout=RETRY_S)
            except queue.Empty:
                kind, value = "tick", None
            if kind == "stop":
                return
            try:
                self._handle(kind, value)
                self._flush()
            except Exception:  # a bug must not stop every later answer and acknowledgement
                log.exception("the outbox failed on %s", kind)

    def _handle(self, kind: str, value: Any) -> None:
        if kind == "send":
            self._waiting.append(value)
        elif kind == "window":
            self.window = max(1, value)
        elif kind == "resume":
            mid, message = value
            self._in_flight[mid] = message
        elif kind == "acked":
            mid, reason = value
            message = self._in_flight.pop(mid, None)
            if message is not None:
                self._settle(message, reason)

    def _settle(self, message: Message, reason: int) -> None:
        if reason >= 0x80 and reason in RETRY_REASONS:
            log.info("the broker refused a message to %s (%s): sending it again", message.topic,
                     RETRY_REASONS[reason])
            message.retry_at = time.monotonic() + RETRY_S
            self._waiting.insert(0, message)
            return
        if reason >= 0x80 and not (message.qos == 2 and reason == FLOW_FINISHED):
            log.warning("the broker refused a message to %s (reason code 0x%02x: check its ACL); "
                        "going on without it", message.topic, reason)
        self._done(message)

    def _done(self, message: Message) -> None:
        self._add_count(-1)
        if message.on_confirmed is not None:
            message.on_confirmed()

    def _flush(self) -> None:
        """Publish waiting messages, in order, while the broker's window has room."""
        now = time.monotonic()
        while self._waiting and len(self._in_flight) < self.window and self._waiting[0].retry_at <= now:
            message = self._waiting.pop(0)
            try:
                info = self._publish_one(message)
            except (ValueError, TypeError) as exc:  # paho refuses the topic (too long, say): never deliverable
                log.warning("cannot publish to %.80s: %s; going on without it", message.topic, exc)
                self._done(message)
                continue
            self._in_flight[info.mid] = message

    def _publish_one(self, message: Message) -> Any:
        """Publish; a QoS 2 flow whose journal cannot be written goes at QoS 1 (at least once) rather than not at all.

        Never at QoS 2 unjournaled: a packet id the broker holds and a restart does not know of
        would swallow a later message that reuses it.
        """
        try:
            return self._publish(message.topic, message.payload, qos=message.qos, retain=message.retain,
                                 properties=message.properties, before_send=message.before_send)
        except OSError as exc:
            log.error("cannot journal the answer to %.80s (%s): sending it at QoS 1, so a daemon restart may "
                      "repeat it", message.topic, exc)
            message.qos, message.before_send = 1, None
            return self._publish(message.topic, message.payload, qos=1, retain=message.retain,
                                 properties=message.properties, before_send=None)


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

    def duplicate(self, key: str | None, delivery: Delivery, redelivered: bool) -> str | None:
        """Whether ``key`` is "in progress" or "answered"; else None.

        A broker's redelivery (DUP set) of one of those is folded in: acknowledged with the first
        delivery's answer, or at once when answered. A fresh request repeating the key is the
        caller's to refuse (``duplicate``), since its sender waits for an answer of its own.
        """
        if key is None:
            return None
        with self._lock:
            pending = self._active.get(key)
            if pending is not None:
                if redelivered:
                    pending.mids.extend(delivery)
                return "in progress"
        if key in self.journal:
            if redelivered:
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
