"""docs/mosquitto-fleet.conf and .acl on a real Mosquitto: TLS, passwords, shared requests, per-box ACLs."""

from __future__ import annotations

import os
import queue
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.properties import Properties

from tests.fixtures.broker import MOSQUITTO, free_port

DOCS = Path(__file__).resolve().parent.parent / "docs"
USERS = ("box1", "box2", "backend", "homeassistant")
PASSWORD = "pw-for-tests"

pytestmark = pytest.mark.skipif(not (shutil.which("mosquitto_passwd") and shutil.which("openssl")),
                                reason="needs mosquitto_passwd and openssl")


class FleetBroker:
    def __init__(self, folder: Path) -> None:
        self.folder, self.tls_port, self.port = folder, free_port(), free_port()
        self.ca = folder / "ca.crt"

    def write(self) -> Path:
        f = self.folder
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(f / "broker.key"),
                        "-out", str(self.ca)], check=True, capture_output=True)
        passwd = f / "edgekit.passwd"
        for user in USERS:
            subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if user == USERS[0] else []), str(passwd), user,
                            PASSWORD], check=True, capture_output=True)
        (f / "data").mkdir()
        conf = (DOCS / "mosquitto-fleet.conf").read_text()
        for old, new in (("listener 8883", f"listener {self.tls_port} 127.0.0.1"),
                         ("listener 1883 127.0.0.1", f"listener {self.port} 127.0.0.1"),
                         ("/etc/mosquitto/certs/broker.crt", str(self.ca)),
                         ("/etc/mosquitto/certs/broker.key", str(f / "broker.key")),
                         ("/etc/mosquitto/certs/ca.crt", str(self.ca)),
                         ("/etc/mosquitto/edgekit.passwd", str(passwd)),
                         ("/etc/mosquitto/edgekit.acl", str(DOCS / "mosquitto-fleet.acl")),
                         ("/var/lib/mosquitto/", f"{f / 'data'}/"),
                         ("log_dest syslog", "log_dest stderr")):
            assert old in conf, old
            conf = conf.replace(old, new)
        if os.geteuid() == 0:  # mosquitto started as root drops to user "mosquitto", who cannot read tmp_path
            conf += "user root\n"
        (f / "mosquitto.conf").write_text(conf)
        return f / "mosquitto.conf"


@pytest.fixture(scope="module")
def fleet_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetBroker]:
    broker = FleetBroker(tmp_path_factory.mktemp("fleet"))
    log = open(broker.folder / "mosquitto.log", "wb")  # noqa: SIM115
    process = subprocess.Popen([MOSQUITTO, "-c", str(broker.write())], stdout=log, stderr=log)
    try:
        _wait_for(lambda: _connects(broker), f"mosquitto with the fleet config: {broker.folder}/mosquitto.log")
        yield broker
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def _wait_for(check: object, what: str, timeout_s: float = 10) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Client:
    """A blocking MQTT 5 test client over TLS that collects messages and acknowledgement codes."""

    def __init__(self, broker: FleetBroker, user: str | None, password: str = PASSWORD) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.granted: queue.Queue[list[int]] = queue.Queue()
        self.acks: dict[int, int] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{user}-{time.monotonic_ns()}",
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=str(broker.ca), cert_reqs=ssl.CERT_REQUIRED)
        if user:
            self.client.username_pw_set(user, password)
        self.connected: queue.Queue[int] = queue.Queue()
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.connected.put(rc.value)
        self.client.on_message = lambda _c, _u, m: self.messages.put(m)
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: self.granted.put([c.value for c in codes])
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc.value)
        self.client.connect("127.0.0.1", broker.tls_port)
        self.client.loop_start()
        self.rc = self.connected.get(timeout=10)

    def subscribe(self, topic: str) -> int:
        self.client.subscribe(topic, qos=1)
        return self.granted.get(timeout=5)[0]

    def publish(self, topic: str, payload: str) -> int:
        info = self.client.publish(topic, payload, qos=1, properties=Properties(3))  # PUBLISH properties
        _wait_for(lambda: info.mid in self.acks, f"PUBACK for {topic}", 5)
        return self.acks[info.mid]

    def drain(self, wait_s: float = 0.5) -> list[str]:
        time.sleep(wait_s)
        out = []
        while not self.messages.empty():
            out.append(self.messages.get().payload.decode())
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _connects(broker: FleetBroker) -> bool:
    try:
        client = Client(broker, "backend")
    except (OSError, queue.Empty):
        return False
    client.close()
    return client.rc == 0


NOT_AUTHORIZED = 0x87


@pytest.fixture
def clients(fleet_broker: FleetBroker) -> Iterator[dict[str, Client]]:
    made = {user: Client(fleet_broker, user) for user in USERS}
    yield made
    for client in made.values():
        client.close()


def test_anonymous_and_wrong_passwords_are_refused(fleet_broker: FleetBroker) -> None:
    for user, password in ((None, PASSWORD), ("box1", "wrong")):
        client = Client(fleet_broker, user, password)
        assert client.rc != 0
        client.close()


def test_shared_subscription_hands_each_request_to_one_box(clients: dict[str, Client]) -> None:
    for box in ("box1", "box2"):
        assert clients[box].subscribe("$share/edgekit/edgekit/fleet/request") == 1
    for i in range(6):
        assert clients["backend"].publish("edgekit/fleet/request", f"r{i}") == 0
    got = clients["box1"].drain() + clients["box2"].drain(0)
    assert sorted(got) == [f"r{i}" for i in range(6)]  # every request once, none twice


def test_a_box_writes_only_its_own_node_topics(clients: dict[str, Client]) -> None:
    assert clients["homeassistant"].subscribe("edgekit/fleet/+/status") == 1
    assert clients["box1"].publish("edgekit/fleet/box1/status", "box1 online") == 0
    assert clients["box1"].publish("edgekit/fleet/box2/status", "forged") == NOT_AUTHORIZED
    assert clients["box1"].publish("edgekit/fleet/request", "a box may not inject requests") == NOT_AUTHORIZED
    assert clients["homeassistant"].drain() == ["box1 online"]


def test_replies_reach_only_the_backend_that_asked(clients: dict[str, Client]) -> None:
    # Mosquitto grants a wildcard subscription and filters each message by the read ACL.
    assert clients["backend"].subscribe("edgekit/reply/#") == 1
    assert clients["box2"].publish("edgekit/reply/homeassistant/7", "not yours") == 0
    assert clients["box2"].publish("edgekit/reply/backend/42", "answer") == 0
    assert clients["backend"].drain() == ["answer"]


def test_a_box_may_publish_its_home_assistant_discovery(clients: dict[str, Client]) -> None:
    assert clients["homeassistant"].subscribe("homeassistant/sensor/#") == 1
    assert clients["box1"].publish("homeassistant/sensor/edgekit_box1/ttft/config", "{}") == 0
    assert clients["box1"].publish("homeassistant/sensor/edgekit_box2/ttft/config", "{}") == NOT_AUTHORIZED
    assert clients["homeassistant"].drain() == ["{}"]
