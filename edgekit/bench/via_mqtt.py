"""Send benchmark requests through a running `edgekit serve` and read its timings back.

The client (edgekit.serve.mqtt.client.RequestClient) times each exchange from publish to
last message; the daemon's result carries the engine's own timings, with its queue
added to total_ms. So end-to-end minus the daemon's total is what MQTT cost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from edgekit.engine.records import Chunk, Request, Result
from edgekit.errors import UsageError


@contextlib.contextmanager
def mqtt_send(broker_url: str, prefix: str | None) -> Iterator[Any]:
    """A Send (see runner.Send) over one connection to the broker, for the daemon at ``prefix``."""
    from edgekit.serve.mqtt.client import RequestClient
    from edgekit.serve.config import load_config

    if not broker_url.startswith(("mqtt://", "mqtts://")):
        raise UsageError(f"--via {broker_url}: give the broker as mqtt://host:port or mqtts://host:port")
    config = load_config(None, flags={"broker": broker_url, "prefix": prefix})
    with RequestClient(config.broker.url, config.prefix, broker=config.broker) as client:

        def send(request: Request) -> tuple[list[Chunk], Result, float]:
            answer = client.ask(body_of(request))
            return records_of(answer.messages, answer.arrival_ms)

        yield send


def body_of(request: Request) -> dict[str, Any]:
    """The protocol's request for a raw-prompt benchmark request, streamed so chunks show ITL."""
    return {
        "id": request.id, "prompt": request.prompt, "max_tokens": request.max_tokens,
        "temperature": request.temperature, "seed": request.seed, "stream": True,
        # one message per token, so the client's arrival times give the inter-token latency
        "stream_interval_ms": 0,
    }


def records_of(messages: list[dict[str, Any]], arrival_ms: list[float]) -> tuple[list[Chunk], Result, float]:
    """Chunks timed by their arrival at the client, the daemon's Result, and the round trip.

    The messages are read by the protocol's own reader; only the clock changes: each chunk's time is
    its arrival (so the transport shows in the inter-token latency, and the engine's token times are
    dropped), and the first token came when the first chunk arrived, as an IoT backend sees it.
    """
    from edgekit.serve.mqtt.protocol import read_chunk, read_result

    arrived = [(m, ms) for m, ms in zip(messages, arrival_ms) if m.get("type") == "chunk"]
    chunks = [replace(read_chunk(m), index=i, elapsed_ms=ms, token_ms=()) for i, (m, ms) in enumerate(arrived)]
    result = read_result(messages[-1])
    if chunks:
        result = replace(result, timings=replace(result.timings, time_to_first_token_ms=chunks[0].elapsed_ms))
    return chunks, result, arrival_ms[-1]
