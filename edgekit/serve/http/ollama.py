"""Ollama's API (docs/api.md of ollama/ollama) as Home Assistant's Ollama integration and the
``ollama`` Python client use it: version, tags, ps, show, chat, generate, pull.

Each route translates Ollama's JSON to edgekit's request fields (checked by the same rules as
an MQTT request) and the engine's records back. Streams are NDJSON, one object a line, the
last with ``"done": true``; an error after the first line is a line ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from edgekit import __version__
from edgekit.engine.records import Chunk, Result
from edgekit.serve.engines import warm_request
from edgekit.serve.http import models
from edgekit.serve.http.app import check_model, engine_request, json_body
from edgekit.serve.http.jobs import ApiError, Finished, HttpJob, finished_of, first_event, result_of
from edgekit.serve.requests import ROLES

log = logging.getLogger(__name__)

# Ollama's options -> edgekit's request fields. num_ctx is the plan's (clamped, see _context);
# the rest of Ollama's options (num_thread, num_batch, mirostat, ...) are the box's plan, not a request's.
# stream_interval_ms is edgekit's own (0: a line per token, as `edgekit bench --via http://` asks), and so is
# adapter_scale (the scale of the LoRA adapter that the model name "<model>:<adapter>" picks).
OPTIONS = {"num_predict": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
           "min_p": "min_p", "seed": "seed", "stop": "stop", "repeat_penalty": "repeat_penalty",
           "stream_interval_ms": "stream_interval_ms", "adapter_scale": "adapter_scale"}
JSON_OBJECT = {"type": "object"}  # format "json": any JSON object


async def root(http: HttpRequest) -> Response:
    return PlainTextResponse("Ollama is running (edgekit)")  # clients probe GET / for this


async def version(http: HttpRequest) -> Response:
    return JSONResponse({"version": __version__})


async def tags(http: HttpRequest) -> Response:
    return JSONResponse({"models": models.ollama_entries(http, *await models.described(http))})


async def ps(http: HttpRequest) -> Response:
    """The loaded model with its context; empty after keep_alive 0 unloaded it."""
    header, info = await models.described(http)
    if info is None:
        return JSONResponse({"models": []})
    loaded = {"expires_at": "2318-01-01T00:00:00Z", "size_vram": 0, "context_length": info.n_ctx}
    return JSONResponse({"models": [{**entry, **loaded} for entry in models.ollama_entries(http, header, info)]})


async def show(http: HttpRequest) -> Response:
    data = await json_body(http)
    check_model(http, data.get("model") or data.get("name"))
    return JSONResponse(models.ollama_show(http, *await models.described(http)))


async def pull(http: HttpRequest) -> Response:
    """Nothing to download: the served model is here; any other is a 404 that says how to add one."""
    data = await json_body(http)
    asked = data.get("model") or data.get("name")
    try:
        check_model(http, asked)
    except ApiError as exc:
        raise ApiError(404, f"{exc.message}; edgekit pulls no models over this API: "
                            "fetch one with `edgekit pull`, then serve it with --model", "not_found_error") from None
    if data.get("stream", True) is False:
        return JSONResponse({"status": "success"})
    return Response(b'{"status":"success"}\n', media_type="application/x-ndjson")


async def chat(http: HttpRequest) -> Response:
    data = await json_body(http)
    name, adapter = check_model(http, data.get("model"))
    options = data.get("options") if isinstance(data.get("options"), dict) else {}
    # tool_choice is not Ollama's: edgekit reads it from options (the ollama client passes options through).
    fields = {"messages": _messages(data.get("messages")), "tools": data.get("tools") or None,
              "tool_choice": options.get("tool_choice") if data.get("tools") else None, "adapter": adapter,
              **_common(http, data)}
    if all(m["role"] == "system" for m in fields["messages"] or ()):  # nothing to answer: Ollama's load request
        system = fields["messages"] or []
        return await _load_only(http, data, name, {"message": {"role": "assistant", "content": ""}}, system)
    return await _answer(http, data, name, fields, _chat_piece, _chat_final)


async def generate(http: HttpRequest) -> Response:
    data = await json_body(http)
    name, adapter = check_model(http, data.get("model"))
    prompt = data.get("prompt")
    if not prompt:  # Ollama's load request (keep_alive 0: unload)
        system = [{"role": "system", "content": data["system"]}] if data.get("system") else []
        return await _load_only(http, data, name, {"response": ""}, system)
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string")
    if data.get("images"):
        raise ApiError(400, "images are not supported: edgekit serves text models")
    if data.get("raw"):
        text = {"prompt": prompt}
    else:
        system = data.get("system")
        text = {"messages": ([{"role": "system", "content": system}] if system else [])
                + [{"role": "user", "content": prompt}]}
    fields = {**text, "adapter": adapter, **_common(http, data)}
    return await _answer(http, data, name, fields, _generate_piece, _generate_final)


ROUTES: list[tuple[str, list[str], Callable[..., Any]]] = [
    ("/", ["GET", "HEAD"], root), ("/api/version", ["GET"], version), ("/api/tags", ["GET"], tags),
    ("/api/ps", ["GET"], ps), ("/api/show", ["POST"], show), ("/api/pull", ["POST"], pull),
    ("/api/chat", ["POST"], chat), ("/api/generate", ["POST"], generate),
]


# --- requests in ------------------------------------------------------------------------------


def _common(http: HttpRequest, data: dict[str, Any]) -> dict[str, Any]:
    """The request fields chat and generate share: options, format, stream."""
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'options' must be an object")
    _context(http, options.get("num_ctx"))
    fields = {ours: options.get(theirs) for theirs, ours in OPTIONS.items()}
    if isinstance(fields["max_tokens"], int) and fields["max_tokens"] < 0:  # -1 endless, -2 fill the context:
        fields["max_tokens"] = None  # the daemon's default, so that the prompt and the answer fit the context
    return {**fields, "json_schema": _format(data.get("format")), "stream": _stream(data)}


def _stream(data: dict[str, Any]) -> bool:
    stream = data.get("stream", True)  # Ollama streams unless told not to
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false")
    return stream


def _format(value: Any) -> dict[str, Any] | None:
    if value in (None, ""):
        return None
    if value == "json":
        return JSON_OBJECT
    if isinstance(value, dict):
        return value
    raise ApiError(400, "'format' must be \"json\" or a JSON schema object")


def _context(http: HttpRequest, num_ctx: Any) -> None:
    """num_ctx larger than the plan's context is clamped to it, not refused (Home Assistant sends 8192);
    logged once per value, not on every request of an agent that always sends it."""
    info = models.loaded_info(http)
    logged = http.app.state.num_ctx_logged
    if isinstance(num_ctx, int) and info is not None and num_ctx > info.n_ctx and num_ctx not in logged:
        logged.add(num_ctx)
        log.info("http: num_ctx %d asked; this box's plan serves %d tokens of context (clamped)", num_ctx, info.n_ctx)


def _messages(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ApiError(400, "'messages' must be a list of {\"role\", \"content\"} objects")
    return [_message(i, m) for i, m in enumerate(value)]


def _message(i: int, m: Any) -> dict[str, Any]:
    """An Ollama message as edgekit's: tool_calls get ids and OpenAI's shape; tool_name becomes name."""
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise ApiError(400, f"messages[{i}] needs a role of {', '.join(ROLES)}")
    if m.get("images"):
        raise ApiError(400, f"messages[{i}] has images: edgekit serves text models")
    message: dict[str, Any] = {"role": m["role"], "content": m.get("content") or ""}
    calls = m.get("tool_calls")
    if calls:
        if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                                  for c in calls):
            raise ApiError(400, f"messages[{i}].tool_calls must be a list of {{\"function\": {{name, arguments}}}}")
        message["tool_calls"] = [{"id": c.get("id") or f"call_{i}_{n}", "type": "function",
                                  "function": {"name": c["function"].get("name"),
                                               "arguments": c["function"].get("arguments") or {}}}
                                 for n, c in enumerate(calls)]
    if m["role"] == "tool" and m.get("tool_name"):
        message["name"] = m["tool_name"]
    return message


def keep_alive_s(value: Any) -> float | None:
    """Ollama's keep_alive: seconds (a number) or a duration ("5m", "1h30m", "10s"); negative = forever."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    parts = re.fullmatch(r"(-)?((?:\d+(?:\.\d+)?(?:ms|s|m|h))+|\d+(?:\.\d+)?)", text)
    if parts is None:
        raise ApiError(400, f"keep_alive {value!r}: give seconds, or a duration such as \"5m\" or \"-1\"")
    if parts.group(2).replace(".", "").isdigit():
        seconds = float(parts.group(2))
    else:
        unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
        seconds = sum(float(n) * unit[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", parts.group(2)))
    return -seconds if parts.group(1) else seconds


# --- answers out ------------------------------------------------------------------------------


async def _answer(http: HttpRequest, data: dict[str, Any], name: str, fields: dict[str, Any],
                  piece: Callable[[Chunk], dict[str, Any] | None],
                  final: Callable[[Result, bool], dict[str, Any]]) -> Response:
    """Submit the request; answer with one object, or an NDJSON stream once the first piece is there."""
    keep_alive = keep_alive_s(data.get("keep_alive"))
    request = engine_request(http, fields)
    job = HttpJob(http.app.state.core, request, fields["stream"])
    if not fields["stream"]:
        try:
            done = await finished_of(http, job)
        finally:
            job.close()
            models.after_request(http, keep_alive)
        return JSONResponse(_stamp(name, final(done.result, False)), headers=done.server_timing())
    first = await first_event(http, job)  # an error before any text keeps its status (400, 503, ...)
    if isinstance(first, Finished) and first.error is not None:
        models.after_request(http, keep_alive)
        raise first.error
    lines = _lines(http, job, first, name, piece, final, keep_alive)
    return StreamingResponse(lines, media_type="application/x-ndjson")


async def _lines(http: HttpRequest, job: HttpJob, event: Chunk | Finished, name: str,
                 piece: Callable[[Chunk], dict[str, Any] | None], final: Callable[[Result, bool], dict[str, Any]],
                 keep_alive: float | None) -> AsyncIterator[bytes]:
    try:
        while True:
            if isinstance(event, Finished):
                body = {"error": event.error.message} if event.error else _stamp(name, final(event.result, True))
                yield _line(body)
                return
            body = piece(event)
            if body is not None:
                yield _line(_stamp(name, {**body, "done": False}))
            event = await job.next()
    finally:  # the client went away mid-stream (the task is cancelled) or we are done
        job.close()
        models.after_request(http, keep_alive)


async def _load_only(http: HttpRequest, data: dict[str, Any], name: str, empty: dict[str, Any],
                     system: list[dict[str, Any]]) -> Response:
    """Ollama's load request (a chat with no messages but system ones, a generate with no prompt): load the
    model and warm the prompt cache with the request's system prompt, else with the daemon's warm_prompts,
    as MQTT's warm request does; keep_alive 0 unloads it instead. Answered as Ollama does, with no text."""
    keep_alive = keep_alive_s(data.get("keep_alive"))
    if keep_alive == 0:
        await models.load_or_unload(http, unload=True)
        return JSONResponse(_stamp(name, {**empty, "done": True, "done_reason": "unload"}))
    requests = [engine_request(http, {"messages": system, "warm": True})] if system else _warm_prompts(http)
    if not requests:
        await models.load_or_unload(http, unload=False)
    warmed = [await _run_warm(http, request) for request in requests]  # each loads the model if it must
    counts = {"prompt_eval_count": sum(r.prompt_tokens for r in warmed),
              "prompt_eval_cached_count": sum(r.timings.cached_prompt_tokens for r in warmed)} if warmed else {}
    return JSONResponse(_stamp(name, {**empty, "done": True, "done_reason": "load", **counts}))


def _warm_prompts(http: HttpRequest) -> list[Any]:
    """The daemon's [cache] warm_prompts as warm requests (none when the prompt cache is off)."""
    config = getattr(http.app.state.core, "config", None)
    cache = getattr(config, "cache", None)
    if cache is None or not cache.enabled or not cache.warm_prompts:
        return []
    header = models.file_info(models.model_path(http))
    chat = bool(header.chat_template) if header is not None else True
    return [warm_request(text, chat) for text in cache.warm_prompts]


async def _run_warm(http: HttpRequest, request: Any) -> Result:
    """One warm request through the daemon's queue, like any other (busy, cancel on disconnect, metrics)."""
    job = HttpJob(http.app.state.core, request, False)
    try:
        return await result_of(http, job)
    finally:
        job.close()


def _chat_piece(chunk: Chunk) -> dict[str, Any] | None:
    calls = getattr(chunk, "tool_calls", ())
    if calls:
        return {"message": {"role": "assistant", "content": "", "tool_calls": _tool_calls(calls)}}
    return {"message": {"role": "assistant", "content": chunk.text}} if chunk.text else None


def _chat_final(result: Result, streamed: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "" if streamed else result.text}
    calls = getattr(result, "tool_calls", ())
    if calls and not streamed:
        message["tool_calls"] = _tool_calls(calls)
    return {"message": message, **_done(result)}


def _generate_piece(chunk: Chunk) -> dict[str, Any] | None:
    return {"response": chunk.text} if chunk.text else None


def _generate_final(result: Result, streamed: bool) -> dict[str, Any]:
    return {"response": "" if streamed else result.text, **_done(result)}


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    return [{"id": call.id, "function": {"index": i, "name": call.name, "arguments": call.arguments}}
            for i, call in enumerate(calls)]


def _done(result: Result) -> dict[str, Any]:
    """The last object's fields: why it stopped, and Ollama's counts and durations (nanoseconds)."""
    t = result.timings
    reason = "length" if result.finish_reason == "length" else "stop"  # Ollama says stop after tool calls too
    return {"done": True, "done_reason": reason, "total_duration": _ns(t.total_ms), "load_duration": 0,
            "prompt_eval_count": result.prompt_tokens, "prompt_eval_cached_count": t.cached_prompt_tokens,
            "prompt_eval_duration": _ns(t.prompt_ms),
            "eval_count": result.completion_tokens, "eval_duration": _ns(t.generation_ms)}


def _stamp(name: str, body: dict[str, Any]) -> dict[str, Any]:
    created = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return {"model": name, "created_at": created, **body}


def _line(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _ns(ms: float) -> int:
    return int(ms * 1_000_000)
