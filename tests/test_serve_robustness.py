"""Nothing lost, nothing answered twice: broker restarts, SIGKILL, SIGTERM, the Last Will.

Each test has its own broker (tests/fixtures/broker.py: fresh_broker) and its own daemon
process, since each one kills or restarts something.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from collections import Counter
from pathlib import Path

from tests.serve_support import LONG_CTX, DaemonProcess, Listener, finals

DEVICE = "robust"
PREFIX = f"edgekit/{DEVICE}"


def publish_requests(listener: Listener, reply_topic: str, count: int, max_tokens: int) -> list[str]:
    ids = [f"r{i}-{uuid.uuid4().hex[:6]}" for i in range(count)]
    for request_id in ids:
        body = {"id": request_id, "prompt": f"Request number {request_id}", "max_tokens": max_tokens,
                "reply_to": reply_topic}
        listener.publish(f"{PREFIX}/request", json.dumps(body))
    return ids


def collect_finals(listener: Listener, expected: int, timeout_s: float, settle_s: float = 2.0) -> list[dict]:
    """Finals until ``expected`` have come, then ``settle_s`` more to catch any duplicate."""
    got: list[dict] = []
    end = time.monotonic() + timeout_s
    while len({f["id"] for f in got}) < expected and time.monotonic() < end:
        got += finals(listener.collect(0.5))
    return got + finals(listener.collect(settle_s))


def test_broker_restart_with_20_requests_queued_answers_each_once(fresh_broker, tmp_path: Path, tiny_q8_0) -> None:
    daemon = DaemonProcess(tmp_path / "d", tiny_q8_0, fresh_broker.url, DEVICE, limits={"queue_size": 32},
                           broker={"reconnect_max_s": 1.0}).start()
    reply = f"edgekit/reply/{uuid.uuid4().hex}"
    listener = Listener(fresh_broker.url, reply, persistent=True)
    try:
        ids = publish_requests(listener, reply, 20, max_tokens=8)
        fresh_broker.restart()  # SIGTERM: Mosquitto saves sessions and queued messages
        got = collect_finals(listener, 20, timeout_s=90)
        # Answers go at QoS 1: one in flight when the broker stops can reach us twice (docs/protocol.md,
        # clients keep the first per id). The daemon answered each once: no id has two different answers.
        answers = Counter(f["id"] for f in {json.dumps(f, sort_keys=True): f for f in got}.values())
        assert set(answers) == set(ids), daemon.output()
        assert max(answers.values()) == 1, answers
        assert all(f["type"] == "result" for f in got)
        assert "disconnected from the broker" in daemon.output()
    finally:
        listener.close()
        daemon.stop()


def test_daemon_killed_with_requests_queued_answers_each_exactly_once_after_restart(
        fresh_broker, tmp_path: Path, tiny_q8_0) -> None:
    daemon = DaemonProcess(tmp_path / "d", tiny_q8_0, fresh_broker.url, DEVICE, limits={"queue_size": 32}).start()
    reply = f"edgekit/reply/{uuid.uuid4().hex}"
    listener = Listener(fresh_broker.url, reply, persistent=True)
    try:
        ids = publish_requests(listener, reply, 12, max_tokens=16)
        first = listener.until(lambda m: m.json.get("type") == "result", timeout_s=60)
        daemon.kill()  # SIGKILL: whatever was queued or unacknowledged stays with the broker
        daemon.start()
        got = [first.json] + collect_finals(listener, 11, timeout_s=90)
        counts = Counter(f["id"] for f in got)
        assert set(counts) == set(ids), daemon.output()
        assert max(counts.values()) == 1, counts
    finally:
        listener.close()
        daemon.stop()


def test_sigterm_mid_generation_answers_the_request_and_goes_offline_without_the_will(
        fresh_broker, tmp_path: Path, tiny_q8_0) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    daemon = DaemonProcess(tmp_path / "d", tiny_q8_0, fresh_broker.url, DEVICE, daemon={"drain_timeout_s": 1.0})
    daemon.start(env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"})
    reply = f"edgekit/reply/{uuid.uuid4().hex}"
    listener = Listener(fresh_broker.url, reply, f"{PREFIX}/status")
    try:
        body = {"id": "long-1", "prompt": "Once", "max_tokens": LONG_CTX - 64, "stream": True, "reply_to": reply}
        listener.publish(f"{PREFIX}/request", json.dumps(body))
        listener.until(lambda m: m.topic == reply and m.json["type"] == "chunk")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(30) == 0, daemon.output()
        messages = listener.collect(1.0)
    finally:
        listener.close()
    answers = [m.json for m in messages if m.topic == reply and m.json["type"] != "chunk"]
    assert len(answers) == 1 and answers[0]["id"] == "long-1"
    assert answers[0]["type"] == "result" or answers[0]["error"]["code"] == "cancelled"
    states = [(m.json["state"], m.json.get("reason")) for m in messages if m.topic.endswith("/status")]
    assert states == [("stopping", "draining"), ("offline", "stopped")]
    told_systemd = received_datagrams(notify)
    ready = next(i for i, d in enumerate(told_systemd) if "READY=1" in d)
    stopping = next(i for i, d in enumerate(told_systemd) if "STOPPING=1" in d)
    assert ready < stopping and any("WATCHDOG=1" in d for d in told_systemd[ready:stopping])


def received_datagrams(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    datagrams = []
    while True:
        try:
            datagrams.append(sock.recv(4096).decode())
        except BlockingIOError:
            return datagrams


def test_last_will_says_offline_within_one_and_a_half_keepalives(fresh_broker, tmp_path: Path, tiny_q8_0) -> None:
    """SIGKILL closes the socket, so the broker publishes the will at once, well within the keepalive bound."""
    death = signal.SIGKILL
    keepalive = 2
    daemon = DaemonProcess(tmp_path / "d", tiny_q8_0, fresh_broker.url, DEVICE,
                           broker={"keepalive_s": keepalive}).start()
    listener = Listener(fresh_broker.url, f"{PREFIX}/status")
    try:
        listener.until(lambda m: m.json["state"] == "online")
        died = time.monotonic()
        daemon.signal(death)
        will = listener.until(lambda m: m.json["state"] == "offline", timeout_s=10)
        assert will.at - died <= 1.5 * keepalive
        assert will.json["reason"] == "lost"
        later = Listener(fresh_broker.url, f"{PREFIX}/status")
        retained = later.next(5)
        later.close()
        assert retained.retain and retained.json["reason"] == "lost"
    finally:
        listener.close()
        daemon.kill()
