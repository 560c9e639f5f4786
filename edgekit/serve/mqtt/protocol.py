"""The MQTT wire format of `edgekit serve`: topics, reading requests, writing answers and reading them back.

Pure functions over bytes, dicts and paho's properties, no MQTT client: the daemon writes
what the request client and the benchmarks read, and docs/protocol.md describes the same
rules with examples. A request's fields are checked by serve/requests.py, as HTTP's are.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass, replace
from typing import Any

from edgekit.engine.records import Chunk, Request, Result, Timings, ToolCall
from edgekit.errors import (
    BadRequest,
    Busy,
    Cancelled,
    ContextOverflow,
    Duplicate,
    EdgekitError,
    EngineError,
    Expired,
    ProtocolError,
    TimedOut,
    TooLarge,
)
from edgekit.serve.config import LimitsConfig
from edgekit.serve.requests import check_request

# Topic names: {prefix} is the request prefix (shared by a fleet), {node} is this
# daemon's own prefix ({prefix} alone, or {prefix}/<device id> inside a fleet).
TOPICS: dict[str, str] = {
    "request": "{prefix}/request",  # requests in (JSON), also {prefix}/request/<client id>; a fleet shares them
    "cancel": "{prefix}/cancel",  # {"id": ...}, also {prefix}/cancel/<client id>: every daemon of a fleet hears it
    "status": "{node}/status",  # retained availability: online / stopping / offline
    "metrics": "{node}/metrics",  # periodic JSON counters
    "errors": "{node}/errors",  # errors of requests that named no (usable) reply topic
}

MAX_DEPTH = 32  # JSON nesting a request may use (a JSON schema included)
MAX_INT = 2**63  # integers beyond +-this are refused (Python would parse 4,300 digits, slowly)
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads lets "\\ud800" through: not UTF-8, cannot be echoed
ENVELOPE = frozenset({"id", "reply_to"})  # MQTT's own fields beside edgekit's request object (serve/requests.py)

# The error codes of error messages, and the exception each is read back as.
ERRORS: dict[str, type[EdgekitError]] = {
    "bad_request": BadRequest, "context_overflow": ContextOverflow, "busy": Busy, "expired": Expired,
    "cancelled": Cancelled, "too_large": TooLarge, "timeout": TimedOut, "duplicate": Duplicate,
    "internal": EngineError,
}
ERROR_CODES = tuple(ERRORS)


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
    """A request as it arrived: where it is answered, and the checked request or why it is refused."""

    reply: Reply  # topic None: no usable reply topic, so a refusal goes to {node}/errors
    request: Request | None = None  # None when refused
    stream: bool = False
    expiry_s: int | None = None  # MQTT 5 MessageExpiryInterval: "expired" if it waits in the queue longer
    error: BadRequest | None = None  # why it is refused

    def repeated(self, state: str) -> Incoming:
        """A fresh request repeating an id its requester used (``state``: "in progress" or "answered"):
        refused as a duplicate, unless its reply topic is refused already."""
        if self.reply.topic is None:
            return self
        error = Duplicate(f"id {self.reply.request_id!r} was already used by this requester ({state}): "
                          "give each request a new id")
        return replace(self, request=None, error=error)


def read_request(payload: bytes, properties: Any, owner: str | None, limits: LimitsConfig,
                 reply_prefix: str) -> Incoming:
    """A request's payload and MQTT 5 properties (paho's, or None) -> the request, or why it is refused.

    Never raises for bad input: every refusal names the route its error answer takes.
    ``owner`` is the client id of {prefix}/request/<client id>; ``reply_prefix`` the allowed reply topics'.
    """
    response_topic, correlation = _property(properties, "ResponseTopic"), _property(properties, "CorrelationData")
    try:
        data = decode(payload, limits)
    except BadRequest as exc:  # nothing read, nothing to deduplicate by
        reply = replace(reply_of({}, response_topic, correlation, owner), key=None)
        return Incoming(_routable(reply, reply_prefix)[0], error=exc)
    reply, problem = _routable(reply_of(data, response_topic, correlation, owner), reply_prefix)
    if problem is not None:
        return Incoming(reply, error=problem)
    try:
        incoming = parse(data, reply, limits)
    except BadRequest as exc:
        return Incoming(reply, error=exc)
    return replace(incoming, expiry_s=_property(properties, "MessageExpiryInterval"))


def read_cancel(payload: bytes, limits: LimitsConfig) -> str:
    """A cancel's payload -> the id of the request to cancel; BadRequest without one."""
    data = decode(payload, limits)
    if "id" not in data:
        raise BadRequest("a cancel needs the \"id\" of the request to cancel")
    return str(data["id"])


def _property(properties: Any, name: str) -> Any:
    """A PUBLISH property, or None (MQTT 3.1.1 senders have none)."""
    return getattr(properties, name, None) if properties is not None else None


def _routable(reply: Reply, reply_prefix: str) -> tuple[Reply, BadRequest | None]:
    """The reply itself, or, when its topic is missing or not allowed, the route to {node}/errors and why."""
    try:
        check_reply_topic(reply, reply_prefix)
    except BadRequest as exc:
        return replace(reply, topic=None), exc
    return reply, None


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
    """Check a request object against the limits (serve/requests.py's rules, beside MQTT's envelope);
    bad_request or too_large naming the field."""
    asked = check_request(data, limits, reply.request_id, ENVELOPE)
    return Incoming(reply, asked.request, asked.stream)


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


# --- answers read back (the request client, `edgekit bench --via mqtt://`, tests) ----------------------


def raise_for_error(message: dict[str, Any]) -> None:
    """An error message as the EdgekitError of its code; nothing for any other message."""
    if message.get("type") == "error":
        error = message.get("error", {})
        cls = ERRORS.get(error.get("code"), EdgekitError)
        raise cls(f"{error.get('code')}: {error.get('message')}")


def read_chunk(message: dict[str, Any]) -> Chunk:
    """A chunk message (chunk_message) back as its Chunk: elapsed_ms and token_ms on the engine's clock."""
    try:
        return Chunk(message["id"], message["seq"], message["text"], message["tokens"], message["elapsed_ms"],
                     tuple(message["token_ms"]), _tool_calls(message))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"not a chunk message ({type(exc).__name__}: {exc}): {_excerpt(message)}") from None


def read_result(message: dict[str, Any]) -> Result:
    """A final message (result_message) back as its Result; an error message raises its EdgekitError.

    timings.queue_ms is the daemon's queue and total_ms includes it, as sent.
    """
    raise_for_error(message)
    try:
        t, usage = message["timings"], message["usage"]
        timings = Timings(
            queue_ms=t["queue_ms"], time_to_first_token_ms=t["time_to_first_token_ms"],
            prompt_tokens=usage["prompt_tokens"], cached_prompt_tokens=usage["cached_prompt_tokens"],
            prompt_ms=t["prompt_ms"], prompt_tokens_per_s=t["prompt_tokens_per_s"],
            completion_tokens=usage["completion_tokens"], generation_ms=t["generation_ms"],
            generation_tokens_per_s=t["generation_tokens_per_s"], total_ms=t["total_ms"])
        return Result(message["id"], message["text"], message["finish_reason"], usage["prompt_tokens"],
                      usage["completion_tokens"], timings, _tool_calls(message), message.get("adapter"),
                      message.get("adapter_scale"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"not a result message ({type(exc).__name__}: {exc}): {_excerpt(message)}") from None


def _tool_calls(message: dict[str, Any]) -> tuple[ToolCall, ...]:
    return tuple(ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
                 for c in message.get("tool_calls", ()))


def _excerpt(message: Any) -> str:
    return json.dumps(message, default=str)[:200]


# --- status and metrics ------------------------------------------------------------------------


def status_message(state: str, reason: str | None, device_id: str, **info: Any) -> bytes:
    """{prefix}/status: state is online, stopping or offline; reason says why (stopped, lost, ...)."""
    body: dict[str, Any] = {"state": state, "device": device_id}
    if reason:
        body["reason"] = reason
    body.update({k: v for k, v in info.items() if v is not None})
    return _dump(body)


def metrics_message(metrics: dict[str, Any]) -> bytes:
    return _dump(metrics)
