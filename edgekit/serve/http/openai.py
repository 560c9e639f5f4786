"""OpenAI's API as the ``openai`` Python client and Home Assistant's OpenAI-compatible integrations
use it: GET /v1/models, POST /v1/chat/completions, POST /v1/completions.

Streams are server-sent events: ``data: <chunk JSON>`` lines, the first chat delta carrying
the role, tool calls as ``delta.tool_calls`` (never as content text), a last chunk with the
finish_reason, a usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response, StreamingResponse

from edgekit.engine.records import Chunk, Result
from edgekit.serve.http import models
from edgekit.serve.http.app import check_model, engine_request, json_body
from edgekit.serve.http.jobs import ApiError, Finished, HttpJob, finished_of, first_event

log = logging.getLogger(__name__)

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


async def list_models(http: HttpRequest) -> Response:
    return JSONResponse({"object": "list", "data": models.openai_models(http)})


async def get_model(http: HttpRequest) -> Response:
    name, _adapter = check_model(http, http.path_params["model"])
    return JSONResponse(models.openai_model(http, name))


async def chat_completions(http: HttpRequest) -> Response:
    data = await json_body(http)
    name, adapter = check_model(http, data.get("model"))
    fields = {"adapter": adapter, "messages": _messages(data.get("messages")), "tools": data.get("tools") or None,
              "tool_choice": data.get("tool_choice") if data.get("tools") else None,
              "json_schema": _response_format(data.get("response_format")),
              "max_tokens": data.get("max_completion_tokens") or data.get("max_tokens"), **_sampling(data)}
    return await _answer(http, data, name, fields, ChatStream, _chat_object)


async def completions(http: HttpRequest) -> Response:
    data = await json_body(http)
    name, adapter = check_model(http, data.get("model"))
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "'prompt' must be a non-empty string (one prompt per request)", "invalid_request_error")
    fields = {"adapter": adapter, "prompt": prompt, "max_tokens": data.get("max_tokens") or COMPLETIONS_DEFAULT_MAX_TOKENS,
              **_sampling(data)}
    return await _answer(http, data, name, fields, TextStream, _text_object)


ROUTES: list[tuple[str, list[str], Callable[..., Any]]] = [
    ("/v1/models", ["GET"], list_models), ("/v1/models/{model:path}", ["GET"], get_model),
    ("/v1/chat/completions", ["POST"], chat_completions), ("/v1/completions", ["POST"], completions),
]


# --- requests in ------------------------------------------------------------------------------


def _sampling(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("n") not in (None, 1):
        raise ApiError(400, "'n' must be 1: edgekit answers one choice per request")
    stream = data.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false")
    return {"temperature": data.get("temperature"), "top_p": data.get("top_p"), "seed": data.get("seed"),
            "stop": data.get("stop"), "stream": stream,
            "adapter_scale": data.get("adapter_scale")}  # edgekit's own (extra_body): the LoRA adapter's scale


def _response_format(value: Any) -> dict[str, Any] | None:
    kind = value.get("type") if isinstance(value, dict) else value
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "object"}
    schema = value.get("json_schema", {}).get("schema") if kind == "json_schema" else None
    if not isinstance(schema, dict):
        raise ApiError(400, "response_format: give {\"type\": \"json_object\"} or "
                            "{\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}")
    return schema


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    return [_message(i, m) for i, m in enumerate(value)]


def _message(i: int, m: Any) -> dict[str, Any]:
    """An OpenAI message as edgekit's: content parts joined, tool call arguments parsed from JSON."""
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise ApiError(400, f"messages[{i}] needs a role of {', '.join(ROLES)}")
    message: dict[str, Any] = {"role": ROLES[m["role"]], "content": _text(i, m.get("content"))}
    if m.get("tool_calls"):
        message["tool_calls"] = [_call(i, call) for call in m["tool_calls"]]
    for key in ("tool_call_id", "name"):
        if isinstance(m.get(key), str):
            message[key] = m[key]
    return message


def _text(i: int, content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise ApiError(400, f"messages[{i}].content: give a string or text parts (edgekit serves text models)")


def _call(i: int, call: Any) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise ApiError(400, f"messages[{i}].tool_calls: each needs a function with name and arguments")
    arguments = function.get("arguments") or "{}"
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            raise ApiError(400, f"messages[{i}].tool_calls: arguments are not JSON: {arguments[:80]!r}") from None
    return {"id": call.get("id") or f"call_{i}", "type": "function",
            "function": {"name": function.get("name"), "arguments": arguments}}


# --- answers out ------------------------------------------------------------------------------


async def _answer(http: HttpRequest, data: dict[str, Any], name: str, fields: dict[str, Any],
                  stream_type: type[Stream], whole: Callable[[Result], dict[str, Any]]) -> Response:
    request = engine_request(http, fields)
    job = HttpJob(http.app.state.core, request, fields["stream"])
    head = {"id": f"{stream_type.prefix}-{request.id}", "created": int(time.time()), "model": name}
    if not fields["stream"]:
        try:
            done = await finished_of(http, job)
        finally:
            job.close()
        return JSONResponse({**head, "object": stream_type.whole_object, **whole(done.result)},
                            headers=done.server_timing())
    first = await first_event(http, job)  # an error before any text keeps its status (400, 503, ...)
    if isinstance(first, Finished) and first.error is not None:
        raise first.error
    include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
    stream = stream_type(head, include_usage)
    return StreamingResponse(_events(job, first, stream), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _events(job: HttpJob, event: Chunk | Finished, stream: Stream) -> AsyncIterator[bytes]:
    try:
        for body in stream.opening():
            yield _sse(body)
        while not isinstance(event, Finished):
            for body in stream.pieces(event):
                yield _sse(body)
            event = await job.next()
        if event.error is not None:
            yield _sse({"error": {"message": event.error.message, "type": event.error.kind, "code": event.error.kind}})
        else:
            for body in stream.closing(event.result):
                yield _sse(body)
        yield b"data: [DONE]\n\n"
    finally:  # the client went away mid-stream (the task is cancelled) or we are done
        job.close()


def _sse(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def _usage(result: Result) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": result.timings.cached_prompt_tokens}}


def _finish_reason(result: Result) -> str:
    return "tool_calls" if getattr(result, "tool_calls", ()) else "length" if result.finish_reason == "length" else "stop"


def _call_object(call: Any, index: int | None = None) -> dict[str, Any]:
    body = {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}
    return body if index is None else {"index": index, **body}


def _chat_object(result: Result) -> dict[str, Any]:
    calls = getattr(result, "tool_calls", ())
    message: dict[str, Any] = {"role": "assistant", "content": result.text if result.text or not calls else None}
    if calls:
        message["tool_calls"] = [_call_object(call) for call in calls]
    return {"choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(result), "logprobs": None}],
            "usage": _usage(result)}


def _text_object(result: Result) -> dict[str, Any]:
    return {"choices": [{"index": 0, "text": result.text, "finish_reason": _finish_reason(result), "logprobs": None}],
            "usage": _usage(result)}


class Stream:
    """The SSE chunks of one streamed answer (chat.completion.chunk or text_completion)."""

    prefix = "cmpl"
    object = "text_completion"
    whole_object = "text_completion"

    def __init__(self, head: dict[str, Any], include_usage: bool) -> None:
        self.head = {**head, "object": self.object}
        self.include_usage = include_usage

    def chunk(self, choice: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        body = {**self.head, "choices": [{"index": 0, **choice, "logprobs": None, "finish_reason": finish_reason}]}
        return {**body, "usage": None} if self.include_usage else body

    def opening(self) -> list[dict[str, Any]]:
        return []

    def pieces(self, chunk: Chunk) -> list[dict[str, Any]]:
        return [self.chunk({"text": chunk.text})] if chunk.text else []

    def closing(self, result: Result) -> list[dict[str, Any]]:
        last = [self.chunk(self.final_choice(), _finish_reason(result))]
        return last + ([{**self.head, "choices": [], "usage": _usage(result)}] if self.include_usage else [])

    def final_choice(self) -> dict[str, Any]:
        return {"text": ""}


class TextStream(Stream):
    pass


class ChatStream(Stream):
    prefix = "chatcmpl"
    object = "chat.completion.chunk"
    whole_object = "chat.completion"

    def __init__(self, head: dict[str, Any], include_usage: bool) -> None:
        super().__init__(head, include_usage)
        self.calls = 0  # tool calls sent so far: each gets the next index

    def opening(self) -> list[dict[str, Any]]:
        return [self.chunk({"delta": {"role": "assistant", "content": ""}})]

    def pieces(self, chunk: Chunk) -> list[dict[str, Any]]:
        calls = getattr(chunk, "tool_calls", ())
        deltas = [{"content": chunk.text}] if chunk.text else []
        for call in calls:
            deltas.append({"tool_calls": [_call_object(call, self.calls)]})
            self.calls += 1
        return [self.chunk({"delta": delta}) for delta in deltas]

    def final_choice(self) -> dict[str, Any]:
        return {"delta": {}}
