"""Home Assistant discovery: the payloads HA would read, rendered against the daemon's real messages."""

from __future__ import annotations

import json
import re
from typing import Any

import jinja2
import pytest

from edgekit.engine.records import Result, Timings
from edgekit.serve.mqtt import discovery
from edgekit.serve.mqtt.discovery import SENSORS, discovery_messages, is_ha_birth, removal_messages
from edgekit.serve.metrics import Metrics
from edgekit.serve.mqtt.protocol import Topics, metrics_message, status_message

TOPIC = re.compile(r"^homeassistant/sensor/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+/config$")
DEVICE_KEYS = {"identifiers", "name", "model", "manufacturer", "sw_version"}


def configs(prefix: str = "edgekit/kitchen", device_id: str = "kitchen", **kw: Any) -> dict[str, dict[str, Any]]:
    args = {"model": "tinyllama", "quant": "Q4_K_M", "profile": "rpi5-8gb", "sw_version": "0.1.0"} | kw
    messages = discovery_messages(prefix, device_id, **args)
    assert all(retain for _, _, retain in messages)
    return {topic: json.loads(payload) for topic, payload, _ in messages}


def render(template: str, payload: bytes) -> str:
    """Render a value_template as Home Assistant does; a field the payload lacks is an error here."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(value_json=json.loads(payload), value=payload.decode())


def served_metrics() -> bytes:
    metrics = Metrics()
    metrics.served(Result("r1", "hi", "stop", 5, 3, Timings(time_to_first_token_ms=41.5,
                                                             generation_tokens_per_s=12.25)))
    return metrics_message(metrics.snapshot(queue_depth=2, running=True))


def test_one_retained_config_per_sensor_on_the_documented_topic() -> None:
    found = configs()
    assert len(found) == len(SENSORS)
    assert all(TOPIC.match(topic) for topic in found), list(found)
    assert "homeassistant/sensor/edgekit_kitchen/ttft/config" in found


def test_every_payload_names_its_device_and_availability() -> None:
    for config in configs().values():
        assert {"name", "unique_id", "state_topic", "value_template", "availability", "device"} <= set(config)
        assert DEVICE_KEYS <= set(config["device"])
        assert config["device"]["manufacturer"] == "edgekit"
        assert config["device"]["model"] == "tinyllama (Q4_K_M, profile rpi5-8gb)"
        assert config["availability"][0]["topic"] == "edgekit/kitchen/status"
        assert config["availability"][0]["payload_available"] == "online"


def test_unique_ids_are_unique_and_stable() -> None:
    first = [c["unique_id"] for c in configs().values()]
    again = [c["unique_id"] for c in configs(model="other", quant="Q8_0", sw_version="9.9").values()]
    other_box = [c["unique_id"] for c in configs("edgekit/garage", "garage").values()]
    assert len(set(first)) == len(first)
    assert first == again  # a new model or release must not make HA create new entities
    assert not set(first) & set(other_box)


def test_value_templates_read_fields_the_daemon_publishes() -> None:
    metrics = served_metrics()
    values = {c["unique_id"].removeprefix("edgekit_kitchen_"): render(c["value_template"], metrics)
              for c in configs().values() if c["state_topic"].endswith("/metrics")}
    assert values["queue_depth"] == "2"
    assert values["ttft"] == "41.5"
    assert values["tokens_per_s"] == "12.25"
    assert values["requests"] == "1"
    assert float(values["memory"]) > 10  # this test process's resident memory, in MB


def test_status_sensor_and_availability_follow_the_status_message() -> None:
    status = next(c for c in configs().values() if c["state_topic"].endswith("/status"))
    availability = status["availability"][0]
    for state, available in (("online", "online"), ("stopping", "offline"), ("offline", "offline")):
        payload = status_message(state, None, "kitchen")
        assert render(status["value_template"], payload) == state
        assert render(availability["value_template"], payload) == available


def test_numeric_sensors_have_state_classes_and_the_text_one_has_none() -> None:
    for config in configs().values():
        if config["state_topic"].endswith("/status"):
            assert "state_class" not in config and "unit_of_measurement" not in config
        else:
            assert config["state_class"] in ("measurement", "total_increasing")
    by_id = {c["unique_id"]: c for c in configs().values()}
    assert by_id["edgekit_kitchen_ttft"]["unit_of_measurement"] == "ms"
    assert by_id["edgekit_kitchen_ttft"]["device_class"] == "duration"
    assert by_id["edgekit_kitchen_requests"]["state_class"] == "total_increasing"


def test_fleet_member_points_at_its_own_node_topics() -> None:
    topics = Topics.for_device("edgekit/fleet", "box7", share_group="edgekit")
    for config in configs(topics.node, "box7").values():
        assert config["state_topic"] in (topics["metrics"], topics["status"])
        assert config["availability"][0]["topic"] == topics["status"]


def test_odd_device_ids_become_valid_topic_levels() -> None:
    found = configs("edgekit/pi.lab", "pi.lab #2")
    assert all(TOPIC.match(topic) for topic in found)
    assert all(" " not in c["unique_id"] and "#" not in c["unique_id"] for c in found.values())


def test_optional_model_details_are_left_out_cleanly() -> None:
    config = next(iter(configs(quant=None, profile=None).values()))
    assert config["device"]["model"] == "tinyllama"


def test_custom_discovery_prefix() -> None:
    messages = discovery_messages("p", "d", model="m", quant=None, profile=None, sw_version="1",
                                  discovery_prefix="ha")
    assert all(topic.startswith("ha/sensor/edgekit_d/") for topic, _, _ in messages)


def test_removal_empties_exactly_the_published_topics() -> None:
    published = {topic for topic, _, _ in discovery_messages("edgekit/kitchen", "kitchen", model="m", quant=None,
                                                             profile=None, sw_version="1")}
    removed = removal_messages("kitchen")
    assert {topic for topic, _, _ in removed} == published
    assert all(payload == "" and retain for _, payload, retain in removed)


@pytest.mark.parametrize(("topic", "payload", "expected"), [
    ("homeassistant/status", b"online", True),
    ("homeassistant/status", "online\n", True),
    ("homeassistant/status", b"offline", False),
    ("homeassistant/sensor/x/status", b"online", False),
])
def test_home_assistant_birth_message(topic: str, payload: bytes | str, expected: bool) -> None:
    assert is_ha_birth(topic, payload) is expected
    assert discovery.HA_BIRTH_TOPIC == "homeassistant/status"


def test_birth_topic_follows_a_custom_discovery_prefix() -> None:
    assert is_ha_birth("ha/status", b"online", discovery_prefix="ha")
    assert not is_ha_birth("homeassistant/status", b"online", discovery_prefix="ha")
