"""What the daemon tells everyone besides answers: its status, Home Assistant discovery, metrics.

Pure builders of retained messages; the front end sends them through its Outbox.
"""

from __future__ import annotations

import time
from typing import Any

from edgekit import __version__
from edgekit.serve.config import ServeConfig
from edgekit.serve.core import model_name
from edgekit.serve.mqtt import discovery, protocol
from edgekit.serve.mqtt.acks import Message
from edgekit.serve.mqtt.protocol import Topics


def status_payload(config: ServeConfig, state: str, reason: str | None, engine: Any) -> bytes:
    """The retained {node}/status JSON (also the Last Will, with state offline and reason lost)."""
    info = getattr(engine, "info", None)
    return protocol.status_message(state, reason, config.device_id, model=model_name(config),
                                   quant=getattr(info, "quant", None), profile=config.model.profile,
                                   version=__version__, ts=round(time.time(), 3))


def status(config: ServeConfig, topics: Topics, state: str, reason: str | None, engine: Any) -> Message:
    return Message(topics["status"], status_payload(config, state, reason, engine), retain=True)


def discovery_configs(config: ServeConfig, topics: Topics, engine: Any) -> list[Message]:
    """Retained Home Assistant configs; sent on every connect and on Home Assistant's birth message."""
    if not config.topics.discovery:
        return []
    info = getattr(engine, "info", None)
    return [Message(topic, payload.encode(), retain=retain) for topic, payload, retain in discovery.discovery_messages(
        topics.node, config.device_id, model=model_name(config), quant=getattr(info, "quant", None),
        profile=config.model.profile, sw_version=__version__, discovery_prefix=config.topics.discovery_prefix)]


def metrics(topics: Topics, snapshot: dict[str, Any]) -> Message:
    return Message(topics["metrics"], protocol.metrics_message(snapshot), retain=True)
