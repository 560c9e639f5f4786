"""The MQTT protocol of `edgekit serve`: topics, request parsing, reply building.

Pure functions over bytes and dicts, no MQTT client: the daemon and the request
client both use them, and docs/protocol.md describes the same rules with examples.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

from edgekit.engine import tools as toolcalls
from edgekit.engine.records import Chunk, Request, Result
from edgekit.errors import BadRequest, TooLarge
from edgekit.serve.config import LimitsConfig

# Topic names: {prefix} is the request prefix (shared by a fleet), {node} is this
# daemon's own prefix ({prefix} alone, or {prefix}/<device id> inside a fleet).
TOPICS: dict[str, str] = {
    "request": "{prefix}/request",  # requests in (JSON), also {prefix}/request/<client id>; a fleet shares them
    "cancel": "{prefix}/cancel",  # {"id": ...}, also {prefix}/cancel/<client id>: every daemon of a fleet hears it
    "status": "{node}/status",  # retained availability: online / stopping / offline
    "metrics": "{node}/metrics",  # periodic JSON counters
    "errors": "{node}/errors",  # errors of requests that named no (usable) reply topic
}

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_FIELDS = {"role", "content", "tool_calls", "tool_call_id", "name"}
ERROR_CODES = ("bad_request", "context_overflow", "busy", "expired", "cancelled", "too_large", "timeout",
               "duplicate", "internal")
MAX_DEPTH = 32  # JSON nesting a request may use (a JSON schema included)
MAX_ADAPTER_SCALE = 16.0  # |adapter_scale| beyond this only makes noise (1 is the adapter as trained)
MAX_INT = 2**63  # integers beyond +-this are refused (Python would parse 4,300 digits, slowly)
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads lets "\\ud800" through: not UTF-8, cannot be echoed

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
ENVELOPE_FIELDS = ("id", "reply_to", "stream")
REQUEST_FIELDS = (set(SAMPLING) | {"messages", "prompt", "stop", "json_schema", "tools", "tool_choice", "warm", "adapter"}
                  | set(ENVELOPE_FIELDS))


@dataclass(frozen=True)
class Topics:
    """The concrete topic names of one daemon."""

    prefix: str
    node: str
    share_group: str | None = None

    @classmethod
    def for_device(cls, prefix: str, device_id: str, share_group: str | None = None) -> Topics:
        return cls(prefix, f"{prefix}/{device_id}" if share_group else prefix, share_group)

    def __getitem__(self, name: str) -> str:
        return TOPICS[name].format(prefix=self.prefix, node=self.node)

    @property
    def subscriptions(self) -> list[str]:
        """Requests (shared inside a fleet, so the broker hands each to one daemon) and cancels, both with
        the per-client form ``.../<client id>`` that a broker ACL with %c binds to the sender."""
        share = f"$share/{self.share_group}/" if self.share_group else ""
        request, cancel = self["request"], self["cancel"]
        return [f"{share}{request}", f"{share}{request}/+", cancel, f"{cancel}/+"]

    def owner_of(self, topic: str, name: str) -> tuple[bool, str | None]:
        """Is ``topic`` our ``name`` topic ("request" or "cancel"), and the client id it names, if any."""
        base = self[name]
        if topic == base:
            return True, None
        rest = topic.removeprefix(base + "/")
        return (True, rest) if rest != topic and rest and "/" not in rest else (False, None)


@dataclass(frozen=True)
class Reply:
    """Where and how a request is answered: echoed on every message of the answer."""

    topic: str | None  # None: the request named no usable reply topic; errors go to {node}/errors
    correlation: bytes | None  # MQTT 5 CorrelationData, echoed as a property
    request_id: str  # echoed as "id"
    key: str | None = None  # deduplication key; None when the client gave neither id nor correlation data
    owner: str | None = None  # the client id of {prefix}/request/<client id>; None on {prefix}/request


@dataclass(frozen=True)
class Incoming:
    """A parsed, validated request."""

    reply: Reply
    request: Request
    stream: bool


def decode(payload: bytes, limits: LimitsConfig) -> dict[str, Any]:
    """Payload bytes -> the request's JSON object; too_large or bad_request otherwise.

    Bounded so that no payload can outrun the parser: nesting, integer sizes, non-finite
    numbers and lone surrogates (valid JSON escapes, but not text: nothing could echo them).
    """
    if len(payload) > limits.max_payload_bytes:
        raise TooLarge(f"payload is {len(payload)} bytes, the limit is {limits.max_payload_bytes}")
    try:
        data = json.loads(payload, parse_int=_bounded_int, parse_constant=_no_constant)
    except RecursionError:
        raise BadRequest(f"payload nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and ours
        raise BadRequest(f"payload is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadRequest("payload must be a JSON object")
    _check_values(data)
    return data


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 19 or abs(value := int(text)) >= MAX_INT:
        raise ValueError(f"integer {text[:24]}{'...' if len(text) > 24 else ''} is too large")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _check_values(data: Any) -> None:
    """Nesting depth, finite floats and real text, over every value and key (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadRequest(f"payload nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack += [(k, depth) for k in value] + [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
        elif isinstance(value, str) and LONE_SURROGATE.search(value):
            raise BadRequest("payload holds a lone UTF-16 surrogate (\\ud800-\\udfff): not valid text")
        elif isinstance(value, float) and not math.isfinite(value):
            raise BadRequest("payload holds a number too large for a float")


def reply_of(data: dict[str, Any], response_topic: str | None, correlation: bytes | None,
             owner: str | None = None) -> Reply:
    """The reply route: MQTT 5 ResponseTopic wins over the payload's reply_to (MQTT 3.1.1 clients).

    The key (dedup, cancel) is the requester's: its client id when it sent on
    {prefix}/request/<client id>, and its reply topic, with the id or correlation data.
    """
    topic = response_topic or data.get("reply_to")
    topic = topic if isinstance(topic, str) and topic else None
    given_id = data.get("id")
    has_id = isinstance(given_id, (str, int)) and not isinstance(given_id, bool) and str(given_id) != ""
    request_id = str(given_id) if has_id else correlation.hex() if correlation else uuid.uuid4().hex
    key = f"{owner or ''}\0{topic}\0{request_id}" if has_id or correlation else None
    return Reply(topic, correlation, request_id, key, owner)


def check_reply_topic(reply: Reply, allowed_prefix: str) -> None:
    """Publish answers only to a plain topic under the allowed prefix: the requester's own, when it is known.

    A request on {prefix}/request/<client id> is answered only under <allowed prefix><client id>/,
    so with the documented ACL (docs/fleet.md) no client can make us publish into another's replies.
    """
    topic = reply.topic
    if topic is None:
        raise BadRequest("no reply topic: set the MQTT 5 ResponseTopic property (or \"reply_to\" for MQTT 3.1.1)")
    if any(c in topic for c in "#+\0") or topic.startswith("$"):
        raise BadRequest(f"reply topic {topic!r} is not a plain topic name")
    if not topic.startswith(allowed_prefix):
        raise BadRequest(f"reply topic {topic!r} is outside the allowed prefix {allowed_prefix!r}")
    own = f"{allowed_prefix}{reply.owner}/"
    if allowed_prefix and reply.owner is not None and not topic.startswith(own):
        raise BadRequest(f"reply topic {topic!r}: a request from client {reply.owner!r} is answered under {own!r}")


def parse(data: dict[str, Any], reply: Reply, limits: LimitsConfig) -> Incoming:
    """Validate a request object against the limits; bad_request or too_large naming the field."""
    unknown = sorted(set(data) - REQUEST_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(REQUEST_FIELDS))})")
    messages, prompt = _messages(data.get("messages")), data.get("prompt")
    if (messages is None) == (prompt is None):
        raise BadRequest("give exactly one of 'messages' (chat) or 'prompt' (raw text)")
    if prompt is not None and not isinstance(prompt, str):
        raise BadRequest("'prompt' must be a string")
    tools = _tools(data.get("tools"))
    # Tools and earlier calls are rendered into the prompt: they count as its text.
    chars = len(prompt or "") + sum(len(m.get("content") or "") + len(json.dumps(m.get("tool_calls", ""))) for m in messages or ())
    chars += len(json.dumps(tools)) if tools else 0
    if chars > limits.max_prompt_chars:
        raise TooLarge(f"prompt is {chars} characters, the limit is {limits.max_prompt_chars}")
    stream, warm = data.get("stream", False), data.get("warm", False)
    if not isinstance(stream, bool) or not isinstance(warm, bool):
        raise BadRequest("'stream' and 'warm' must be true or false")
    sampling = {name: _number(data, name, limits) for name in SAMPLING if data.get(name) is not None}
    sampling.setdefault("max_tokens", limits.default_max_tokens)
    request = Request(messages=messages, prompt=prompt, stop=_stop(data.get("stop"), limits),
                      json_schema=_schema(data.get("json_schema")), tools=tools, adapter=_adapter(data),
                      tool_choice=data.get("tool_choice", "auto"), id=reply.request_id, warm=warm, **sampling)
    toolcalls.tool_plan(request, None)  # tool_choice and the tools' schemas: bad_request now, not after the queue
    return Incoming(reply, request, stream)


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


# --- replies --------------------------------------------------------------------------------


def _dump(message: dict[str, Any]) -> bytes:
    """UTF-8 JSON; any text that is not valid Unicode (a bug upstream) is escaped, never fatal."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(message, separators=(",", ":")).encode("ascii")


def chunk_message(request_id: str, seq: int, chunk: Chunk) -> bytes:
    """One streamed piece (text, or complete tool calls); elapsed_ms is the engine's clock since
    the request started running."""
    body = {"id": request_id, "type": "chunk", "seq": seq, "text": chunk.text,
            "tokens": chunk.tokens, "elapsed_ms": round(chunk.elapsed_ms, 3),
            "token_ms": [round(ms, 3) for ms in chunk.token_ms]}
    if chunk.tool_calls:
        body["tool_calls"] = [call.to_message() for call in chunk.tool_calls]
    return _dump(body)


def result_message(request_id: str, result: Result, device_id: str, queue_ms: float) -> bytes:
    """The final message; queue_ms is the daemon's (time in its queue), the rest the engine's timings."""
    t = result.timings
    return _dump({
        "id": request_id, "type": "result", "text": result.text, "finish_reason": result.finish_reason,
        **({"tool_calls": [call.to_message() for call in result.tool_calls]} if result.tool_calls else {}),
        "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                  "cached_prompt_tokens": t.cached_prompt_tokens},
        "timings": {
            "queue_ms": round(queue_ms, 3),
            "time_to_first_token_ms": round(t.time_to_first_token_ms, 3),
            "prompt_ms": round(t.prompt_ms, 3),
            "prompt_tokens_per_s": round(t.prompt_tokens_per_s, 2),
            "generation_ms": round(t.generation_ms, 3),
            "generation_tokens_per_s": round(t.generation_tokens_per_s, 2),
            "total_ms": round(t.total_ms + queue_ms, 3),
        },
        "device": device_id,
        "adapter": result.adapter,  # the LoRA adapter that ran; null: the bare model
        **({"adapter_scale": result.adapter_scale} if result.adapter is not None else {}),
    })


def error_message(request_id: str | None, code: str, message: str) -> bytes:
    assert code in ERROR_CODES, code
    return _dump({"id": request_id, "type": "error", "error": {"code": code, "message": message}})


def status_message(state: str, reason: str | None, device_id: str, **info: Any) -> bytes:
    """{prefix}/status: state is online, stopping or offline; reason says why (stopped, lost, ...)."""
    body: dict[str, Any] = {"state": state, "device": device_id}
    if reason:
        body["reason"] = reason
    body.update({k: v for k, v in info.items() if v is not None})
    return _dump(body)


def metrics_message(metrics: dict[str, Any]) -> bytes:
    return _dump(metrics)
