"""Seeded malformed requests for the daemon's fuzz test and benchmark: each must be answered, none may run.

Every category of issue 10's attack is here (nesting past the parser's recursion limit,
integers past Python's 4,300 digits, lone surrogates in ids, keys and text, bytes that
are not UTF-8) beside the everyday mistakes (wrong types, ranges, unknown fields, bad
reply topics). None of them is a valid request, so each gets exactly one error answer.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import BadRequest
from edgekit.serve.config import LimitsConfig
from edgekit.serve.mqtt import protocol

FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop", "stream",
          "stream_interval_ms", "json_schema", "messages", "prompt", "id")


@dataclass(frozen=True)
class Malformed:
    category: str
    payload: bytes
    bad_reply_topic: str | None = None  # set: the request names this topic, so the answer goes to {node}/errors


def _deep(rng: random.Random) -> Malformed:
    depth = rng.choice([33, 64, 999, 1001, 1500, 1990])
    return Malformed("nesting", b'{"prompt":"x","max_tokens":1,"stop":' + b"[" * depth + b"]" * depth + b"}")


def _huge_int(rng: random.Random) -> Malformed:
    digits = rng.choice([20, 64, 4300, 4301, 5000])
    field = rng.choice(["max_tokens", "seed", "top_k", "id"])
    number = str(rng.randint(1, 9)) + "".join(rng.choice("0123456789") for _ in range(digits - 1))
    return Malformed("huge_int", f'{{"prompt":"x","{field}":{number}}}'.encode())


def _surrogate(rng: random.Random) -> Malformed:
    lone = rng.choice(["\\ud800", "\\udfff", "\\udbff", "\\udc00"])
    where = rng.choice([
        f'{{"id":"{lone}x","prompt":"hi","max_tokens":2}}',
        f'{{"id":"ok","prompt":"a{lone}","max_tokens":2}}',
        f'{{"id":"ok","prompt":"hi","{lone}":1}}',
        f'{{"messages":[{{"role":"user","content":"{lone}"}}],"max_tokens":2}}',
        f'{{"prompt":"hi","stop":["{lone}"],"max_tokens":2}}',
        f'{{"id":"{lone}","prompt":"hi","temperature":99}}',
    ])
    return Malformed("surrogate", where.encode())


def _not_utf8(rng: random.Random) -> Malformed:
    raw = rng.choice([b"\xff\xfe", b'{"prompt":"\xc3\x28"}', b'{"id":"\xed\xa0\x80","prompt":"x"}', b"\x80" * 10])
    return Malformed("not_utf8", raw)


def _not_object(rng: random.Random) -> Malformed:
    return Malformed("not_object", rng.choice([b"[1,2]", b'"prompt"', b"42", b"null", b"true", b"", b" ", b"{",
                                               b'{"prompt":', b'{"prompt":"x"', b"{}}", b"NaN"]))


def _bad_number(rng: random.Random) -> Malformed:
    value = rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e999"])
    return Malformed("bad_number", f'{{"prompt":"x","temperature":{value}}}'.encode())


def _wrong_type(rng: random.Random) -> Malformed:
    field = rng.choice(FIELDS[:-2])
    body = {"prompt": "x", field: rng.choice([[], {}, "text", True, None, [1], {"a": 1}, -1, 1.5])}
    if _parses(body):  # a value the field takes after all: spoil the request another way
        body["max_tokens"] = -5
    return Malformed("wrong_type", json.dumps(body).encode())


def _parses(body: dict) -> bool:
    try:
        protocol.parse(body, protocol.reply_of(body, "edgekit/reply/x", b"c"), LimitsConfig())
    except BadRequest:
        return False
    return True


def _out_of_range(rng: random.Random) -> Malformed:
    field, value = rng.choice([("max_tokens", 0), ("max_tokens", 10**9), ("temperature", -1), ("top_p", 2),
                               ("top_k", -3), ("seed", -1), ("stream_interval_ms", 10**7), ("min_p", 9)])
    return Malformed("out_of_range", json.dumps({"prompt": "x", field: value}).encode())


def _unknown_field(rng: random.Random) -> Malformed:
    name = rng.choice(["colour", "model", "n", "Prompt", "", "\u00e9t\u00e9", "max_tokens "])
    return Malformed("unknown_field", json.dumps({"prompt": "x", name: 1}).encode())


def _messages(rng: random.Random) -> Malformed:
    value = rng.choice([[], [{}], [{"role": "robot", "content": "x"}], [{"role": "user"}], "hi",
                        [{"role": "user", "content": 5}], [{"role": "user", "content": "x", "extra": 1}]])
    return Malformed("messages", json.dumps({"messages": value}).encode())


def _too_large(rng: random.Random) -> Malformed:
    return Malformed("too_large", json.dumps({"prompt": "x" * rng.choice([9000, 20000]), "max_tokens": 1}).encode())


def _bad_reply(rng: random.Random) -> Malformed:
    topic = rng.choice(["elsewhere/x", "edgekit/reply/+", "edgekit/reply/#", "$SYS/x", "lights/kitchen/set"])
    return Malformed("bad_reply_topic", b'{"prompt":"x","max_tokens":1}', bad_reply_topic=topic)


CATEGORIES: tuple[Callable[[random.Random], Malformed], ...] = (
    _deep, _huge_int, _surrogate, _not_utf8, _not_object, _bad_number, _wrong_type, _out_of_range,
    _unknown_field, _messages, _too_large, _bad_reply,
)


def malformed_requests(seed: int, count: int) -> Iterator[Malformed]:
    """``count`` malformed requests, the same for the same seed, every category in turn."""
    rng = random.Random(seed)
    for i in range(count):
        yield CATEGORIES[i % len(CATEGORIES)](rng)


@dataclass(frozen=True)
class FuzzRun:
    """What a fuzz run found: every request should have exactly one answer, an error."""

    sent: int
    unanswered: Counter  # category -> requests with no answer
    answered_twice: int
    codes: Counter  # answer type or error code -> count
    seconds: float
    rss_growth_mb: float  # the daemon process's resident memory, after minus before


def run_fuzz(listener: Any, request_topic: str, reply: str, pid: int, seed: int, count: int) -> FuzzRun:
    """Send ``count`` malformed requests through ``listener`` (tests.serve_support.Listener, subscribed to
    ``reply`` and the daemon's errors topic) and count the answers, matched by correlation data."""
    rss_before, started = _rss_kb(pid), time.monotonic()
    sent: dict[bytes, str] = {}
    for i, bad in enumerate(malformed_requests(seed, count)):
        correlation = f"fuzz-{seed}-{i}".encode()
        sent[correlation] = bad.category
        listener.publish(request_topic, bad.payload, ResponseTopic=bad.bad_reply_topic or reply,
                         CorrelationData=correlation)
    answers: Counter = Counter()
    codes: Counter = Counter()
    end = time.monotonic() + 60 + count / 20
    settle_until = None
    while time.monotonic() < (settle_until or end):
        for m in listener.collect(0.5):
            answers[m.correlation] += 1
            codes[m.json["type"] if m.json["type"] != "error" else m.json["error"]["code"]] += 1
        if settle_until is None and len(answers) >= len(sent):
            settle_until = time.monotonic() + 2.0  # catch any second answer
    unanswered = Counter(category for c, category in sent.items() if c not in answers)
    return FuzzRun(count, unanswered, sum(1 for n in answers.values() if n > 1), codes,
                   time.monotonic() - started, (_rss_kb(pid) - rss_before) / 1024)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
