"""link.py's QoS 2 hooks into paho, against a real Mosquitto: what a killed daemon's answers rely on.

The daemon-level kills (each step of an answer's flow) are in test_serve_attack.py; these
show the packet-level facts underneath, fast and without a model.
"""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt
import paho.mqtt.client as mqtt
import pytest

from edgekit.serve.config import BrokerConfig
from edgekit.serve.mqtt.link import connect_properties, new_client
from edgekit.serve.mqtt.mosquitto import Broker
from tests.serve_support import Listener


class CutOff(Exception):
    """Raised in the PUBREC hook: the process 'dies' after the broker has the PUBLISH, before the PUBREL."""


def test_paho_is_the_version_whose_internals_link_relies_on() -> None:
    assert paho.mqtt.__version__.startswith("2.1."), (
        f"paho-mqtt {paho.mqtt.__version__}: link._Client uses paho 2.1's internals; check each one named in this "
        "test against the new source, then widen the pin in pyproject.toml")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    for name in ("_out_messages", "_out_message_mutex", "_mid_generate_mutex", "_last_mid", "_in_packet"):
        assert hasattr(client, name), name
    for name in ("_mid_generate", "_handle_pubrec", "_do_on_publish", "_send_pubrel", "_messages_reconnect_reset_out"):
        assert callable(getattr(mqtt.Client, name, None)), name
    assert {mqtt.mqtt_ms_wait_for_pubrec, mqtt.mqtt_ms_wait_for_pubcomp, mqtt.mqtt_ms_resend_pubrel}


class Side:
    """One process's client: a fixed client id and a persistent session, as the daemon's."""

    def __init__(self, broker: Broker, client_id: str) -> None:
        self.client = new_client(client_id, BrokerConfig(url=broker.url))
        self.results: dict[int, int] = {}  # on_publish reason codes by packet id
        self.done = threading.Event()
        self.client.on_publish = self._published
        self.host, self.port = "127.0.0.1", broker.port

    def _published(self, _c: object, _u: object, mid: int, reason: object, _p: object) -> None:
        self.results[mid] = reason.value
        self.done.set()

    def connect(self) -> Side:
        self.client.connect(self.host, self.port, clean_start=False, properties=connect_properties(600))
        return self

    def wait_results(self, count: int, timeout_s: float = 10.0) -> dict[int, int]:
        end = time.monotonic() + timeout_s
        while len(self.results) < count and time.monotonic() < end:
            time.sleep(0.01)
        return self.results


def cut_after_pubrec(broker: Broker, client_id: str, topic: str, payload: bytes) -> int:
    """Publish at QoS 2 and stop dead once the broker's PUBREC is in: its packet id."""
    side = Side(broker, client_id).connect()
    seen: list[int] = []

    def die(mid: int) -> None:
        seen.append(mid)
        raise CutOff

    side.client.on_pubrec = die
    side.client.publish(topic, payload, qos=2)
    with pytest.raises(CutOff):
        for _ in range(200):
            side.client.loop(0.05)
    side.client.socket().close()  # no PUBREL, no DISCONNECT: as a SIGKILL leaves it
    return seen[0]


@pytest.mark.parametrize("released", [False, True], ids=["resumed-as-sent", "resumed-as-released"])
def test_a_flow_cut_off_after_the_brokers_pubrec_is_delivered_once_by_the_next_process(
        fresh_broker: Broker, released: bool) -> None:
    topic = f"edgekit/reply/{uuid.uuid4().hex}"
    listener = Listener(fresh_broker.url, topic)
    client_id = f"daemon-{uuid.uuid4().hex[:6]}"
    try:
        mid = cut_after_pubrec(fresh_broker, client_id, topic, b"the answer")
        assert listener.collect(1.0) == []  # Mosquitto holds a QoS 2 message until its PUBREL
        again = Side(fresh_broker, client_id)
        again.client.resume(mid, topic, b"the answer", None, released=released)
        # A new message never takes the id the broker still holds (it would be swallowed as a repeat).
        new_mid = again.client.publish(topic, b"next", qos=2).mid
        assert new_mid != mid
        again.connect().client.loop_start()
        assert again.wait_results(2) == {mid: 0, new_mid: 0}  # PUBCOMPs: both flows finished
        got = listener.collect(2.0)
        assert sorted(m.payload for m in got) == [b"next", b"the answer"]
        again.client.disconnect()
        again.client.loop_stop()
    finally:
        listener.close()


def test_before_send_sees_the_packet_id_before_the_publish_and_new_ids_skip_resumed_ones(
        mosquitto: Broker) -> None:
    side = Side(mosquitto, f"daemon-{uuid.uuid4().hex[:6]}")
    side.client.resume(1, "edgekit/reply/unused", b"old", None, released=True)  # a PUBREL for an id never sent
    side.connect()
    seen: list[tuple[int, bool]] = []
    info = side.client.publish("edgekit/reply/x", b"new", qos=2,
                               before_send=lambda mid: seen.append((mid, mid in side.client._out_messages)))
    assert seen == [(info.mid, False)] and info.mid != 1
    side.client.loop_start()
    results = side.wait_results(2)
    # Id 1 was never sent: MQTT 5 says PUBCOMP 0x92 "packet identifier not found"; Mosquitto 2.0 says 0.
    assert results[info.mid] == 0 and results[1] in (0, 0x92), results
    side.client.disconnect()
    side.client.loop_stop()


def test_a_pubrec_refusal_ends_the_flow_and_reaches_on_publish_with_its_reason(tmp_path) -> None:
    with Broker(tmp_path / "broker", extra="max_inflight_messages 1\n") as broker:
        side = Side(broker, f"daemon-{uuid.uuid4().hex[:6]}")
        side.connect().client.loop_start()
        mids = [side.client.publish("edgekit/reply/x", b"%d" % i, qos=2).mid for i in range(5)]
        results = side.wait_results(5)
        side.client.disconnect()
        side.client.loop_stop()
    assert set(results) == set(mids) and 0 in results.values(), results
    assert set(results.values()) <= {0, 0x97}, results  # quota exceeded, not paho's PUBCOMP 0x92
    assert 0x97 in results.values(), results
