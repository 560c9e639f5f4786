"""Send benchmark requests through a running `edgekit serve --http` (its Ollama API) and time them.

Each request is a raw-prompt /api/generate streamed as NDJSON with a line per token (edgekit's
``stream_interval_ms`` option set to 0), so each line's arrival at the client gives the TTFT and
the inter-token latency end to end. The last line carries the engine's own durations: e2e minus
the engine's total is what HTTP (and the queue) cost. Standard library only: no extra dependency.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from edgekit.engine.records import Chunk, Request, Result, Timings
from edgekit.errors import BadRequest, EngineError, UsageError

TIMEOUT_S = 600.0


@contextlib.contextmanager
def http_send(url: str) -> Iterator[Any]:
    """A Send (see runner.Send) over one keep-alive connection to the daemon at ``url``."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise UsageError(f"--via {url}: give the daemon as http://host:port")
    connection = http.client.HTTPConnection(parts.hostname, parts.port or 11434, timeout=TIMEOUT_S)
    try:
        name = _served_model(connection, url)

        def send(request: Request) -> tuple[list[Chunk], Result, float]:
            return _generate(connection, name, request)

        yield send
    finally:
        connection.close()


def body_of(name: str, request: Request) -> dict[str, Any]:
    options = {"num_predict": request.max_tokens, "temperature": request.temperature, "seed": request.seed,
               "stream_interval_ms": 0}
    return {"model": name, "prompt": request.prompt, "raw": True, "stream": True,
            "options": {k: v for k, v in options.items() if v is not None}}


def _served_model(connection: http.client.HTTPConnection, url: str) -> str:
    try:
        connection.request("GET", "/api/tags")
        response = connection.getresponse()
        tags = json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--via {url}: no edgekit serve --http answers there ({exc})") from None
    if response.status != 200 or not tags.get("models"):
        raise UsageError(f"--via {url}: /api/tags answered {response.status}: {tags}")
    return tags["models"][0]["model"]


def _generate(connection: http.client.HTTPConnection, name: str, request: Request) -> tuple[list[Chunk], Result, float]:
    t0 = time.perf_counter()
    connection.request("POST", "/api/generate", body=json.dumps(body_of(name, request)),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise BadRequest(f"the daemon answered {response.status}: {response.read().decode(errors='replace')}")
    chunks: list[Chunk] = []
    while line := response.readline():
        arrived_ms = (time.perf_counter() - t0) * 1000
        message = json.loads(line)
        if "error" in message:
            raise EngineError(f"the daemon failed the request: {message['error']}")
        if message.get("done"):
            response.read()  # the end of the chunked body: the connection is free for the next request
            return chunks, result_of(request, message, chunks), arrived_ms
        chunks.append(Chunk(request.id, len(chunks), message.get("response", ""), 1, arrived_ms))
    raise EngineError("the daemon closed the stream before its last line")


def result_of(request: Request, done: dict[str, Any], chunks: list[Chunk]) -> Result:
    """The engine's timings from Ollama's last line (nanoseconds); TTFT as the client saw it."""
    prompt_ms, generation_ms = done.get("prompt_eval_duration", 0) / 1e6, done.get("eval_duration", 0) / 1e6
    prompt_tokens, completion = int(done.get("prompt_eval_count", 0)), int(done.get("eval_count", 0))
    timings = Timings(
        time_to_first_token_ms=chunks[0].elapsed_ms if chunks else 0.0,
        prompt_tokens=prompt_tokens, prompt_ms=prompt_ms,
        prompt_tokens_per_s=1000 * prompt_tokens / prompt_ms if prompt_ms else 0.0,
        completion_tokens=completion, generation_ms=generation_ms,
        generation_tokens_per_s=1000 * max(0, completion - 1) / generation_ms if generation_ms else 0.0,
        total_ms=done.get("total_duration", 0) / 1e6,
    )
    reason = "length" if done.get("done_reason") == "length" else "stop"
    return Result(request.id, "".join(c.text for c in chunks), reason, prompt_tokens, completion, timings)
