"""edgekit's request object checked once for every front end: MQTT's payload and HTTP's translations."""

from __future__ import annotations

import pytest

from edgekit.errors import BadRequest, TooLarge
from edgekit.serve.config import LimitsConfig
from edgekit.serve.mqtt import protocol
from edgekit.serve.requests import check_request

LIMITS = LimitsConfig(max_prompt_chars=50, max_tokens=100, default_max_tokens=16, max_prompt_tokens=10)


def test_a_request_object_becomes_the_engines_request_with_the_limits_defaults() -> None:
    asked = check_request({"messages": [{"role": "user", "content": "Hi"}], "stream": True, "top_k": 5},
                          LIMITS, "id-1")
    assert asked.stream and asked.request.id == "id-1" and asked.request.top_k == 5
    assert asked.request.max_tokens == 16 and asked.request.messages == ({"role": "user", "content": "Hi"},)
    assert asked.request.max_prompt_tokens is None  # the daemon's core sets it: the engine checks it


def test_mqtts_envelope_is_not_a_request_field() -> None:
    with pytest.raises(BadRequest, match="unknown field 'reply_to'") as info:
        check_request({"prompt": "x", "reply_to": "edgekit/reply/t"}, LIMITS, "1")
    known = str(info.value).split("known: ")[1].rstrip(")").split(", ")
    assert "stream" in known and "id" not in known and "reply_to" not in known


@pytest.mark.parametrize("body", [
    {"prompt": "x", "temperature": 2.5}, {"prompt": "x", "max_tokens": 101}, {"prompt": "x", "stop": [""]},
    {"prompt": "x", "stream": "yes"}, {"messages": [{"role": "robot", "content": "x"}]}, {"prompt": "x" * 51},
    {"prompt": "x", "tools": {"switch": {}}}, {"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"},
])
def test_mqtt_and_http_refuse_a_bad_field_with_the_same_words(body: dict) -> None:
    with pytest.raises(BadRequest) as shared:
        check_request(body, LIMITS, "1")
    reply = protocol.reply_of(body, "edgekit/reply/t", None)
    with pytest.raises(BadRequest) as mqtt:
        protocol.parse(body, reply, LIMITS)
    assert (type(mqtt.value), str(mqtt.value)) == (type(shared.value), str(shared.value))


def test_a_prompt_over_the_character_limit_is_too_large_before_any_tokenizing() -> None:
    with pytest.raises(TooLarge, match="prompt is 51 characters, the limit is 50"):
        check_request({"prompt": "x" * 51}, LIMITS, "1")
