"""The client side of the protocol: `edgekit request`, tests and end-to-end benchmarks.

RequestClient connects once and sends many requests, each with MQTT 5 CorrelationData
on the client's own reply topic, and times each exchange from publish to last message.
It sends on {prefix}/request/<client id> and listens under edgekit/reply/<client id>/:
the daemon answers an owned request only there, and the broker ACL in docs/fleet.md
(%c) makes sure nobody else can send as, or listen for, this client.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edgekit.engine.records import Result
from edgekit.errors import BrokerError, UsageError
from edgekit.serve.config import BrokerConfig
from edgekit.strict import read_json_object
from edgekit.serve.mqtt.link import connect_blocking, message_property, new_client, publish_properties, quick_ack
from edgekit.serve.mqtt.protocol import raise_for_error, read_result

__all__ = ["Answer", "RequestClient", "chat_body", "raise_for_error", "read_schema", "request", "timings_line"]

REPLY_ROOT = "edgekit/reply"  # under the daemon's default allowed reply prefix


@dataclass
class Answer:
    """One exchange: the messages in order, the final one, and when each arrived."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    arrival_ms: list[float] = field(default_factory=list)  # since the publish

    @property
    def final(self) -> dict[str, Any]:
        return self.messages[-1]

    @property
    def text(self) -> str:
        return self.final.get("text", "")

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "chunk"]

    @property
    def result(self) -> Result:
        """The final message read back as the engine's Result (protocol.read_result); an error raises."""
        return read_result(self.final)

    @property
    def round_trip_ms(self) -> float:
        return self.arrival_ms[-1]

    @property
    def first_message_ms(self) -> float:
        return self.arrival_ms[0]


class RequestClient:
    """``with RequestClient(url, prefix) as c: c.ask({"prompt": "Hi", "max_tokens": 8})``."""

    def __init__(self, broker_url: str, prefix: str, *, broker: BrokerConfig | None = None,
                 timeout_s: float = 120.0, reply_root: str = REPLY_ROOT) -> None:
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.broker = broker or BrokerConfig(url=broker_url)
        self.client_id = f"edgekit-request-{uuid.uuid4().hex[:12]}"
        self.reply_topic = f"{reply_root}/{self.client_id}/{uuid.uuid4().hex[:8]}"
        self._inboxes: dict[bytes, queue.SimpleQueue[tuple[float, dict[str, Any]]]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = new_client(self.client_id, self.broker)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_publish = lambda client, *_: quick_ack(client)

    def __enter__(self) -> RequestClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        connect_blocking(self.client, self.broker.url, keepalive_s=30)
        self.client.loop_start()
        if not self._subscribed.wait(self.timeout_s):
            raise BrokerError(f"the broker at {self.broker.url} did not confirm our subscription")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def send(self, body: dict[str, Any], *, expiry_s: int | None = None, topic: str | None = None) -> bytes:
        """Publish one request; returns its correlation data (the key to its messages)."""
        correlation = uuid.uuid4().bytes
        with self._lock:
            self._inboxes[correlation] = queue.SimpleQueue()
        props = publish_properties(correlation, self.reply_topic, expiry_s)
        payload = json.dumps(body).encode()
        self.client.publish(topic or f"{self.prefix}/request/{self.client_id}", payload, qos=1, properties=props)
        return correlation

    def messages(self, correlation: bytes, t0: float, timeout_s: float | None = None) -> Iterator[tuple[float, dict]]:
        """(ms since t0, message) as they arrive, until the final result or error."""
        inbox = self._inboxes[correlation]
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            try:
                arrived, message = inbox.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BrokerError(f"no answer within {timeout_s or self.timeout_s:.0f} s: is `edgekit serve` "
                                  f"running with prefix {self.prefix!r} on {self.broker.url}?") from None
            final = message.get("type") in ("result", "error")
            if final:
                with self._lock:
                    self._inboxes.pop(correlation, None)
            yield (arrived - t0) * 1000, message
            if final:
                return

    def stream(self, body: dict[str, Any], *, expiry_s: int | None = None,
               timeout_s: float | None = None) -> Iterator[dict[str, Any]]:
        """Send one request and yield its messages (chunks when body asks to stream, then the final one)."""
        t0 = time.perf_counter()
        correlation = self.send(body, expiry_s=expiry_s)
        for _ms, message in self.messages(correlation, t0, timeout_s):
            yield message

    def ask(self, body: dict[str, Any], *, expiry_s: int | None = None, timeout_s: float | None = None,
            on_chunk: Callable[[str], None] | None = None) -> Answer:
        """Send one request, wait for its final message; the Answer keeps every message and its timing.

        on_chunk gets each streamed chunk's text as it arrives (for printing).
        """
        t0 = time.perf_counter()
        correlation = self.send(body, expiry_s=expiry_s)
        answer = Answer()
        for ms, message in self.messages(correlation, t0, timeout_s):
            answer.messages.append(message)
            answer.arrival_ms.append(ms)
            if on_chunk is not None and message.get("type") == "chunk":
                on_chunk(message["text"])
        return answer

    def cancel(self, request_id: str) -> None:
        """Cancel one of our own requests (the daemon matches the id among this client's only)."""
        self.client.publish(f"{self.prefix}/cancel/{self.client_id}", json.dumps({"id": request_id}).encode(), qos=1)

    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        """Subscribe on every connect: after a broker restart without our session, the old one is gone."""
        if not reason.is_failure:
            client.subscribe(self.reply_topic, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        arrived = time.perf_counter()
        quick_ack(_c)
        correlation = message_property(message, "CorrelationData")
        with self._lock:
            inbox = self._inboxes.get(correlation)
        if inbox is not None:
            inbox.put((arrived, json.loads(message.payload)))


def request(broker_url: str, prefix: str, body: dict[str, Any], *, timeout_s: float = 120.0) -> Iterator[dict]:
    """One request on a connection of its own; yields its messages, the last one final."""
    with RequestClient(broker_url, prefix, timeout_s=timeout_s) as client:
        yield from client.stream(body)


def chat_body(prompt: str, *, system: str | None = None, max_tokens: int | None = None, stream: bool = False,
              json_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request object `edgekit request` sends."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    body: dict[str, Any] = {"messages": messages, "stream": stream}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if json_schema is not None:
        body["json_schema"] = json_schema
    return body


def read_schema(path: Path) -> dict[str, Any]:
    """--json-schema FILE: a JSON Schema object, or a UsageError saying what is wrong with the file."""
    return read_json_object(path, "--json-schema", UsageError, fix="give a JSON Schema")


def timings_line(final: dict[str, Any], round_trip_ms: float) -> str:
    """One line for stderr: where the time went (``final``: a result message)."""
    result = read_result(final)
    t = result.timings
    return (f"{result.prompt_tokens} prompt + {result.completion_tokens} generated tokens; "
            f"queue {t.queue_ms:.1f} ms, first token {t.time_to_first_token_ms:.1f} ms, "
            f"{t.generation_tokens_per_s:.1f} tok/s; round trip {round_trip_ms:.1f} ms"
            f" ({final.get('device', '?')})")
