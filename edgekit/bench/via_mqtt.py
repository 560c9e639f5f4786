"""Send benchmark requests through a running `edgekit serve` and read its timings back.

The client (edgekit.serve.mqtt.client.RequestClient) times each exchange from publish to
last message; the daemon's result carries the engine's own timings, with its queue
added to total_ms. So end-to-end minus the daemon's total is what MQTT cost.
The result message has rates, not durations, for the prompt and generation phases:
their durations here are token counts divided by those rates.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from edgekit.engine.records import Chunk, Request, Result, Timings
from edgekit.errors import UsageError


@contextlib.contextmanager
def mqtt_send(broker_url: str, prefix: str | None) -> Iterator[Any]:
    """A Send (see runner.Send) over one connection to the broker, for the daemon at ``prefix``."""
    from edgekit.serve.mqtt.client import RequestClient, raise_for_error
    from edgekit.serve.config import load_config

    if not broker_url.startswith(("mqtt://", "mqtts://")):
        raise UsageError(f"--via {broker_url}: give the broker as mqtt://host:port or mqtts://host:port")
    config = load_config(None, flags={"broker": broker_url, "prefix": prefix})
    with RequestClient(config.broker.url, config.prefix, broker=config.broker) as client:

        def send(request: Request) -> tuple[list[Chunk], Result, float]:
            answer = client.ask(body_of(request))
            raise_for_error(answer.final)
            return records_of(request, answer.messages, answer.arrival_ms)

        yield send


def body_of(request: Request) -> dict[str, Any]:
    """The protocol's request for a raw-prompt benchmark request, streamed so chunks show ITL."""
    return {
        "id": request.id, "prompt": request.prompt, "max_tokens": request.max_tokens,
        "temperature": request.temperature, "seed": request.seed, "stream": True,
        # one message per token, so the client's arrival times give the inter-token latency
        "stream_interval_ms": 0,
    }


def records_of(request: Request, messages: list[dict[str, Any]],
               arrival_ms: list[float]) -> tuple[list[Chunk], Result, float]:
    """Chunks timed by their arrival at the client, the daemon's Result, and the round trip."""
    chunks = [
        Chunk(request.id, i, m.get("text", ""), int(m.get("tokens", 1)), ms)
        for i, (m, ms) in enumerate((m, ms) for m, ms in zip(messages, arrival_ms) if m.get("type") == "chunk")
    ]
    final = messages[-1]
    t, usage = final.get("timings", {}), final.get("usage", {})
    prompt_tokens, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    pp_rate, tg_rate = float(t.get("prompt_tokens_per_s", 0)), float(t.get("generation_tokens_per_s", 0))
    timings = Timings(
        queue_ms=float(t.get("queue_ms", 0)),
        # the client saw the first token when the first chunk arrived: TTFT as an IoT backend sees it
        time_to_first_token_ms=chunks[0].elapsed_ms if chunks else float(t.get("time_to_first_token_ms", 0)),
        prompt_tokens=prompt_tokens,
        cached_prompt_tokens=int(usage.get("cached_prompt_tokens", 0)),
        prompt_ms=float(t["prompt_ms"]) if "prompt_ms" in t else 1000 * prompt_tokens / pp_rate if pp_rate else 0.0,
        prompt_tokens_per_s=pp_rate,
        completion_tokens=completion,
        generation_ms=float(t["generation_ms"]) if "generation_ms" in t
        else 1000 * max(0, completion - 1) / tg_rate if tg_rate else 0.0,
        generation_tokens_per_s=tg_rate,
        total_ms=float(t.get("total_ms", 0)),
    )
    result = Result(request.id, final.get("text", ""), final.get("finish_reason", "stop"),
                    prompt_tokens, completion, timings)
    return chunks, result, arrival_ms[-1]
