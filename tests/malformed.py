"""Seeded malformed requests for the daemon's fuzz test and benchmark: each must be answered, none may run.

Every category of issue 10's attack is here (nesting past the parser's recursion limit,
integers past Python's 4,300 digits, lone surrogates in ids, keys and text, bytes that
are not UTF-8) beside the everyday mistakes (wrong types, ranges, unknown fields, bad
reply topics). None of them is a valid request, so each gets exactly one error answer.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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
