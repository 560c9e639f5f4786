"""Home Assistant MQTT discovery: retained config payloads that make a box appear as a device.

Small pure functions, as flyte/mqtt-io's home_assistant.py has them. The daemon
publishes discovery_messages() retained on connect and again whenever Home
Assistant announces itself online on HA_BIRTH_TOPIC; removal_messages() (empty
retained payloads) make Home Assistant forget the entities.

Schema: https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery and
https://www.home-assistant.io/integrations/sensor.mqtt/ . We use the per-component
form, ``<discovery_prefix>/sensor/<node_id>/<object_id>/config``, which every Home
Assistant release since 0.40 reads (the newer device form needs 2024.11 or later).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from edgekit.serve.mqtt.protocol import TOPICS

HA_BIRTH_TOPIC = "homeassistant/status"
HA_BIRTH_ONLINE = "online"
MANUFACTURER = "edgekit"

Message = tuple[str, str, bool]  # (topic, payload, retain)


@dataclass(frozen=True)
class Sensor:
    """One Home Assistant sensor read from the daemon's retained JSON topics."""

    object_id: str
    name: str
    topic: str  # a name of protocol.TOPICS: "metrics" or "status"
    field: str  # the JSON field of that topic's payload
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = "measurement"
    icon: str | None = None
    diagnostic: bool = False


# Fields of the daemon's status and metrics payloads (protocol.status_message,
# metrics.Metrics.snapshot); tests check both sides agree.
SENSORS: tuple[Sensor, ...] = (
    # A text state: Home Assistant rejects state_class on non-numeric sensors.
    Sensor("status", "Status", "status", "state", state_class=None, icon="mdi:robot"),
    Sensor("queue_depth", "Queue depth", "metrics", "queue_depth", icon="mdi:tray-full"),
    Sensor("ttft", "Time to first token", "metrics", "last_ttft_ms", "ms", "duration", icon="mdi:timer-outline"),
    Sensor("tokens_per_s", "Tokens per second", "metrics", "tokens_per_s", "tok/s", icon="mdi:speedometer"),
    Sensor("memory", "Memory", "metrics", "memory_mb", "MB", "data_size", icon="mdi:memory", diagnostic=True),
    # A counter that only grows (until a restart): total_increasing, so HA's statistics handle resets.
    Sensor("requests", "Requests served", "metrics", "requests_served", state_class="total_increasing",
           icon="mdi:counter"),
    Sensor("cache_hits", "Prompt cache hits", "metrics", "cache_hits", state_class="total_increasing",
           icon="mdi:cached"),
    Sensor("cache_misses", "Prompt cache misses", "metrics", "cache_misses", state_class="total_increasing",
           icon="mdi:cached", diagnostic=True),
    Sensor("cache_disk", "Prompt cache on disk", "metrics", "cache_disk_mb", "MB", "data_size",
           icon="mdi:harddisk", diagnostic=True),
)


def safe_id(text: str) -> str:
    """Discovery node and object ids allow only [a-zA-Z0-9_-]; map anything else to '_'."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text) or "_"


def config_topic(discovery_prefix: str, device_id: str, object_id: str, component: str = "sensor") -> str:
    """``<discovery_prefix>/<component>/<node_id>/<object_id>/config``."""
    return f"{discovery_prefix}/{component}/edgekit_{safe_id(device_id)}/{safe_id(object_id)}/config"


def unique_id(device_id: str, object_id: str) -> str:
    """Stable across restarts and reloads: Home Assistant keys the entity's history on it."""
    return f"edgekit_{safe_id(device_id)}_{safe_id(object_id)}"


def device_block(device_id: str, *, model: str, quant: str | None, profile: str | None,
                 sw_version: str) -> dict[str, Any]:
    """The ``device`` map that groups all sensors of one box under one Home Assistant device."""
    details = ", ".join(part for part in (quant, f"profile {profile}" if profile else None) if part)
    return {
        "identifiers": [f"edgekit_{safe_id(device_id)}"],
        "name": f"edgekit {device_id}",
        "manufacturer": MANUFACTURER,
        "model": f"{model} ({details})" if details else model,
        "sw_version": sw_version,
    }


def node_topic(prefix: str, name: str) -> str:
    """A topic of the daemon's own: ``prefix`` is its node root (Topics.node: {prefix}/<device> in a fleet)."""
    return TOPICS[name].format(prefix=prefix, node=prefix)


def availability(prefix: str) -> list[dict[str, str]]:
    """Entities are available while the daemon's retained status says online (the Last Will says offline).

    Any other state (loading, stopped, ...) counts as offline: Home Assistant ignores payloads
    that match neither payload_available nor payload_not_available, which would leave a stale state.
    """
    return [{
        "topic": node_topic(prefix, "status"),
        "value_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }]


def sensor_config(prefix: str, device_id: str, sensor: Sensor, device: dict[str, Any],
                  sw_version: str) -> dict[str, Any]:
    """The discovery payload of one sensor."""
    config: dict[str, Any] = {
        "name": sensor.name,
        "unique_id": unique_id(device_id, sensor.object_id),
        "state_topic": node_topic(prefix, sensor.topic),
        "value_template": f"{{{{ value_json.{sensor.field} }}}}",
        "availability": availability(prefix),
        "availability_mode": "latest",
        "device": device,
        "origin": {"name": "edgekit", "sw_version": sw_version},
    }
    optional = {
        "unit_of_measurement": sensor.unit,
        "device_class": sensor.device_class,
        "state_class": sensor.state_class,
        "icon": sensor.icon,
        "entity_category": "diagnostic" if sensor.diagnostic else None,
    }
    config.update({key: value for key, value in optional.items() if value is not None})
    return config


def discovery_messages(prefix: str, device_id: str, *, model: str, quant: str | None, profile: str | None,
                       sw_version: str, discovery_prefix: str = "homeassistant") -> list[Message]:
    """Retained config messages for every sensor of this box; publish on connect and on HA's birth.

    ``prefix`` is the daemon's own topic root (Topics.node), where its status and metrics go.
    """
    device = device_block(device_id, model=model, quant=quant, profile=profile, sw_version=sw_version)
    return [
        (config_topic(discovery_prefix, device_id, sensor.object_id),
         json.dumps(sensor_config(prefix, device_id, sensor, device, sw_version), separators=(",", ":")),
         True)
        for sensor in SENSORS
    ]


def removal_messages(device_id: str, *, discovery_prefix: str = "homeassistant") -> list[Message]:
    """Empty retained payloads: Home Assistant removes the entities and the broker drops the retained configs."""
    return [(config_topic(discovery_prefix, device_id, sensor.object_id), "", True) for sensor in SENSORS]


def is_ha_birth(topic: str, payload: bytes | str, *, discovery_prefix: str = "homeassistant") -> bool:
    """True for Home Assistant's 'online' birth message on <discovery_prefix>/status: publish discovery again.

    HA's birth topic is configured apart from its discovery prefix; both default to "homeassistant".
    """
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    return topic == f"{discovery_prefix}/status" and text.strip() == HA_BIRTH_ONLINE
