"""edgekit's request object (docs/protocol.md) checked against the daemon's limits: one set of rules
for every front end.

MQTT sends this object as its payload; the HTTP APIs translate Ollama's and OpenAI's JSON into
it. Either way the fields are checked here, so a request is refused with the same words whichever
way it came; what is a wire format's own (payload bytes, reply topics, HTTP bodies) stays in its
front end. Checks that are about the model (the prompt's tokens, the context) are the engine's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edgekit.engine import tools as toolcalls
from edgekit.engine.records import Request
from edgekit.errors import BadRequest, TooLarge
from edgekit.serve.config import LimitsConfig

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_FIELDS = {"role", "content", "tool_calls", "tool_call_id", "name"}
MAX_ADAPTER_SCALE = 16.0  # |adapter_scale| beyond this only makes noise (1 is the adapter as trained)

# Numeric fields (sampling, how often to stream, the LoRA adapter's scale): (type, lowest,
# highest); a str bound names a LimitsConfig field.
SAMPLING: dict[str, tuple[type, float, float | str]] = {
    "max_tokens": (int, 1, "max_tokens"),
    "temperature": (float, 0.0, "max_temperature"),
    "top_p": (float, 0.0, 1.0),
    "top_k": (int, 0, "max_top_k"),
    "min_p": (float, 0.0, 1.0),
    "repeat_penalty": (float, 0.0, 10.0),
    "seed": (int, 0, 2**32 - 1),
    "stream_interval_ms": (float, 0.0, 60000.0),
    "adapter_scale": (float, -MAX_ADAPTER_SCALE, MAX_ADAPTER_SCALE),
}
FIELDS = frozenset(SAMPLING) | {"messages", "prompt", "stop", "json_schema", "tools", "tool_choice", "warm", "stream",
                                         "adapter"}


@dataclass(frozen=True)
class Asked:
    """A checked request: what the engine runs, and whether the answer is streamed."""

    request: Request
    stream: bool


def check_request(data: dict[str, Any], limits: LimitsConfig, request_id: str,
                  envelope: frozenset[str] = frozenset()) -> Asked:
    """edgekit's request object -> an engine Request within ``limits``; BadRequest or TooLarge naming the field.

    ``envelope``: the front end's own fields beside the request's (MQTT's id and reply_to), read there.
    """
    known = FIELDS | envelope
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    messages, prompt = _messages(data.get("messages")), data.get("prompt")
    if (messages is None) == (prompt is None):
        raise BadRequest("give exactly one of 'messages' (chat) or 'prompt' (raw text)")
    if prompt is not None and not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string")
    tools = _tools(data.get("tools"))
    _check_chars(prompt, messages, tools, limits)
    stream, warm = data.get("stream", False), data.get("warm", False)
    if not isinstance(stream, bool) or not isinstance(warm, bool):
        raise BadRequest("'stream' and 'warm' must be true or false")
    sampling = {name: _number(data, name, limits) for name in SAMPLING if data.get(name) is not None}
    sampling.setdefault("max_tokens", limits.default_max_tokens)
    request = Request(messages=messages, prompt=prompt, stop=_stop(data.get("stop"), limits),
                      json_schema=_schema(data.get("json_schema")), tools=tools, adapter=_adapter(data),
                      tool_choice=data.get("tool_choice", "auto"), id=request_id, warm=warm, **sampling)
    toolcalls.tool_plan(request, None)  # tool_choice and the tools' schemas: bad_request now, not after the queue
    return Asked(request, stream)


def _check_chars(prompt: str | None, messages: tuple[dict[str, Any], ...] | None,
                 tools: tuple[dict[str, Any], ...], limits: LimitsConfig) -> None:
    """limits.max_prompt_chars, before any tokenizing: tools and earlier calls are rendered into the prompt."""
    chars = len(prompt or "") + sum(len(m.get("content") or "") + len(json.dumps(m.get("tool_calls", "")))
                                    for m in messages or ())
    chars += len(json.dumps(tools)) if tools else 0
    if chars > limits.max_prompt_chars:
        raise TooLarge(f"prompt is {chars} characters, the limit is {limits.max_prompt_chars}")


def _messages(value: Any) -> tuple[dict[str, Any], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise BadRequest("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not {"role", "content"} <= set(m) <= MESSAGE_FIELDS:
            raise BadRequest(f"messages[{i}] must have 'role' and 'content' (and only {', '.join(sorted(MESSAGE_FIELDS))})")
        if m["role"] not in ROLES:
            raise BadRequest(f"messages[{i}]: role must be one of {', '.join(ROLES)}")
    toolcalls.check_messages(tuple(value))
    return tuple(dict(m) for m in value)


def _tools(value: Any) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRequest('\'tools\' must be a list of {"type": "function", "function": {"name", "description", "parameters"}}')
    return tuple(value)


def _number(data: dict[str, Any], name: str, limits: LimitsConfig) -> int | float:
    kind, low, high = SAMPLING[name]
    high = getattr(limits, high) if isinstance(high, str) else high
    value = data[name]
    ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not low <= value <= high:
        raise BadRequest(f"'{name}' must be {'an integer' if kind is int else 'a number'} from {low} to {high}")
    return kind(value)


def _stop(value: Any, limits: LimitsConfig) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise BadRequest("'stop' must be a string or a list of non-empty strings")
    if len(stops) > limits.max_stop or any(len(s) > limits.max_stop_chars for s in stops):
        raise BadRequest(f"'stop': at most {limits.max_stop} strings of {limits.max_stop_chars} characters")
    return tuple(stops)


def _adapter(data: dict[str, Any]) -> str | None:
    """The LoRA adapter a request names (one loaded with --lora / [model] lora; the engine checks which)."""
    name = data.get("adapter")
    if name is not None and (not isinstance(name, str) or not name):
        raise BadRequest("'adapter' must be the name of a loaded LoRA adapter (a non-empty string)")
    if name is None and data.get("adapter_scale") is not None:
        raise BadRequest("'adapter_scale' needs 'adapter': the name of the LoRA adapter to scale")
    return name


def _schema(value: Any) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise BadRequest("'json_schema' must be a JSON Schema object")
    return value
