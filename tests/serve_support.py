"""What the serve tests share: a daemon run as a real subprocess, and an MQTT 5 listener."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parents[1]
LONG_CTX = 2048  # daemons under test run with this context (the tiny models' trained one), so a "long" request runs for seconds


@dataclass
class Received:
    topic: str
    payload: bytes
    correlation: bytes | None
    retain: bool
    at: float

    @property
    def json(self) -> Any:
        return json.loads(self.payload)


class Listener:
    """An MQTT 5 subscriber that records everything it receives, with properties and arrival times."""

    def __init__(self, url: str, *topics: str, persistent: bool = False, client_id: str | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        """persistent: a session that survives a broker restart (fixed client id, Clean Start off)."""
        host, port = url.removeprefix("mqtt://").split(":")
        self.topics = topics
        self.inbox: queue.SimpleQueue[Received] = queue.SimpleQueue()
        self.client_id = client_id or f"listener-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.granted: list[int] = []  # SUBACK reason codes, in order
        self.acks: dict[int, int] = {}  # PUBACK reason codes by packet id
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc.value)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.reconnect_delay_set(1, 1)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600 if persistent else 0
        self._subscribed = threading.Event()
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(host, int(port), clean_start=not persistent, properties=props)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the listener's subscription was not confirmed"

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        client.subscribe([(topic, 2) for topic in self.topics])  # QoS 2: exactly once from the broker

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        self.granted += [code.value for code in codes]
        self._subscribed.set()

    def subscribe(self, topic: str, timeout_s: float = 10.0) -> int:
        """Subscribe to one more topic; the SUBACK's reason code (0x87: not authorized)."""
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(timeout_s), f"no SUBACK for {topic}"
        return self.granted[-1]

    def publish(self, topic: str, payload: bytes | str, **properties: Any) -> int:
        """Publish at QoS 1 and wait until the broker has it; its PUBACK reason code (0x87: not authorized)."""
        props = None
        if properties:
            props = Properties(PacketTypes.PUBLISH)
            for name, value in properties.items():
                setattr(props, name, value)
        info = self.client.publish(topic, payload, qos=1, properties=props)
        info.wait_for_publish(10)
        end = time.monotonic() + 5
        while info.mid not in self.acks and time.monotonic() < end:
            time.sleep(0.001)
        return self.acks.pop(info.mid, 0)

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        correlation = getattr(m.properties, "CorrelationData", None) if m.properties else None
        self.inbox.put(Received(m.topic, m.payload, correlation, bool(m.retain), time.monotonic()))

    def next(self, timeout_s: float = 30.0) -> Received:
        return self.inbox.get(timeout=timeout_s)

    def until(self, predicate: Any, timeout_s: float = 30.0) -> Received:
        """The first message that satisfies ``predicate`` (others are dropped)."""
        end = time.monotonic() + timeout_s
        while True:
            message = self.inbox.get(timeout=max(0.01, end - time.monotonic()))
            if predicate(message):
                return message

    def collect(self, seconds: float) -> list[Received]:
        end, out = time.monotonic() + seconds, []
        while (left := end - time.monotonic()) > 0:
            try:
                out.append(self.inbox.get(timeout=left))
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def running(daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """A module fixture's body: start ``daemon``, yield it, then check that it stopped cleanly."""
    daemon.start()
    yield daemon
    assert daemon.stop() == 0, daemon.output()


def finals(messages: list[Received]) -> list[dict[str, Any]]:
    return [m.json for m in messages if m.json.get("type") in ("result", "error")]


def daemon_toml(state_dir: Path, device_id: str, **sections: dict[str, Any]) -> str:
    """An edgekit.toml for a test daemon: fast metrics, its own state folder, long context."""
    tree: dict[str, dict[str, Any]] = {
        "model": {"ctx": LONG_CTX},
        "topics": {"device_id": device_id},
        "limits": {"max_tokens": LONG_CTX},
        "daemon": {"state_dir": str(state_dir), "metrics_interval_s": 1.0, "drain_timeout_s": 5.0},
    }
    for name, values in sections.items():
        tree.setdefault(name, {}).update(values)
    lines = []
    for name, values in tree.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


class DaemonProcess:
    """`edgekit serve` as a subprocess, with its own config file and state folder."""

    def __init__(self, folder: Path, gguf: Path, broker_url: str, device_id: str, *, http_port: int | None = None,
                 **sections: dict[str, Any]) -> None:
        """broker_url "none": HTTP only; http_port: also serve HTTP on 127.0.0.1:<port> (--http)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.http_port = http_port
        self.folder, self.model, self.broker_url, self.device_id = folder, gguf, broker_url, device_id
        self.config = folder / "edgekit.toml"
        self.config.write_text(daemon_toml(folder / "state", device_id, **sections))
        prefix = sections.get("topics", {}).get("prefix")
        self.prefix = prefix or f"edgekit/{device_id}"
        self.node = f"{self.prefix}/{device_id}" if sections.get("topics", {}).get("share_group") else self.prefix
        self.log = folder / "daemon.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True, env: dict[str, str] | None = None) -> DaemonProcess:
        """Start it; with wait, return once it says online on its status topic (HTTP only: answers /api/version)."""
        mqtt_wait = wait and self.broker_url != "none"
        listener = Listener(self.broker_url, f"{self.node}/status") if mqtt_wait else None
        http_args = ["--http", f"127.0.0.1:{self.http_port}"] if self.http_port else []
        started = time.time()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgekit.cli", "-v", "serve", "--model", str(self.model),
                 "--broker", self.broker_url, "--config", str(self.config), *http_args],
                stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        if listener is not None:
            try:
                self._wait_online(listener, started)
            finally:
                listener.close()
        elif wait:
            self._wait_http()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _wait_http(self) -> None:
        end = time.monotonic() + 120
        while time.monotonic() < end and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/api/version", timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # it answers (401 without the key)
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"daemon {self.device_id} did not answer HTTP:\n{self.output()}")

    def _wait_online(self, listener: Listener, started: float) -> None:
        end = time.monotonic() + 120
        while time.monotonic() < end and self.process.poll() is None:
            try:
                listener.until(lambda m: m.json.get("state") == "online" and m.json.get("ts", 0) >= started - 1,
                               timeout_s=0.5)
                return
            except queue.Empty:
                continue
        raise AssertionError(f"daemon {self.device_id} did not come online:\n{self.output()}")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout_s: float = 30.0) -> int:
        return self.process.wait(timeout=timeout_s)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
