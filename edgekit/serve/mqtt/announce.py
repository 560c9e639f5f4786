"""What the daemon tells everyone besides answers: its status, Home Assistant discovery, metrics."""

from __future__ import annotations

import time
from typing import Any

import paho.mqtt.client as mqtt

from edgekit import __version__
from edgekit.serve.mqtt import discovery, protocol
from edgekit.serve.config import ServeConfig
from edgekit.serve.core import model_name
from edgekit.serve.mqtt.acks import is_published
from edgekit.serve.mqtt.protocol import Topics


def status_payload(config: ServeConfig, state: str, reason: str | None, engine: Any) -> bytes:
    """The retained {node}/status JSON (also the Last Will, with state offline and reason lost)."""
    info = getattr(engine, "info", None)
    return protocol.status_message(state, reason, config.device_id, model=model_name(config),
                                   quant=getattr(info, "quant", None), profile=config.model.profile,
                                   version=__version__, ts=round(time.time(), 3))


def publish_status(client: mqtt.Client, config: ServeConfig, topics: Topics, state: str, reason: str | None,
                   engine: Any) -> mqtt.MQTTMessageInfo:
    return client.publish(topics["status"], status_payload(config, state, reason, engine), qos=1, retain=True)


def publish_discovery(client: mqtt.Client, config: ServeConfig, topics: Topics, engine: Any) -> None:
    """Retained Home Assistant configs; sent on every connect and on Home Assistant's birth message."""
    if not config.topics.discovery:
        return
    info = getattr(engine, "info", None)
    for topic, payload, retain in discovery.discovery_messages(
            topics.node, config.device_id, model=model_name(config), quant=getattr(info, "quant", None),
            profile=config.model.profile, sw_version=__version__, discovery_prefix=config.topics.discovery_prefix):
        client.publish(topic, payload, qos=1, retain=retain)


def publish_metrics(client: mqtt.Client, topics: Topics, snapshot: dict[str, Any]) -> None:
    client.publish(topics["metrics"], protocol.metrics_message(snapshot), qos=1, retain=True)


def wait_published(info: mqtt.MQTTMessageInfo, timeout_s: float) -> bool:
    """Poll rather than info.wait_for_publish(), which raises when the publish was queued while offline."""
    end = time.monotonic() + timeout_s
    while not is_published(info) and time.monotonic() < end:
        time.sleep(0.01)
    return is_published(info)
