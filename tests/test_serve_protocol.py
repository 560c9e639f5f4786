"""The protocol's pure parts: topics, request validation against limits, reply messages."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgekit.engine.records import Chunk, Result, Timings, ToolCall
from edgekit.errors import BadRequest, Busy, ContextOverflow, Duplicate, EngineError, ProtocolError, TooLarge
from edgekit.serve.mqtt import protocol
from edgekit.serve.config import LimitsConfig
from edgekit.serve.mqtt.protocol import Reply, Topics

LIMITS = LimitsConfig(max_payload_bytes=200, max_prompt_chars=50, max_tokens=100, default_max_tokens=16)


def parse(body: dict, response_topic: str | None = "edgekit/reply/t", correlation: bytes | None = b"c1"):
    reply = protocol.reply_of(body, response_topic, correlation)
    return protocol.parse(body, reply, LIMITS)


def test_a_single_daemon_uses_its_prefix_for_every_topic() -> None:
    topics = Topics.for_device("edgekit/box", "box")
    assert topics["request"] == "edgekit/box/request" and topics["status"] == "edgekit/box/status"
    assert topics.subscriptions == ["edgekit/box/request", "edgekit/box/request/+", "edgekit/box/cancel",
                                    "edgekit/box/cancel/+"]


def test_a_fleet_shares_the_request_topic_and_keeps_status_per_device() -> None:
    topics = Topics.for_device("edgekit/fleet", "pi-3", share_group="g")
    assert topics.subscriptions[:2] == ["$share/g/edgekit/fleet/request", "$share/g/edgekit/fleet/request/+"]
    assert topics["cancel"] == "edgekit/fleet/cancel"
    assert topics["status"] == "edgekit/fleet/pi-3/status" and topics["metrics"] == "edgekit/fleet/pi-3/metrics"


def test_chat_request_is_parsed_with_defaults_and_the_given_id() -> None:
    incoming = parse({"id": "a1", "messages": [{"role": "user", "content": "Hi"}], "stream": True, "seed": 3})
    request = incoming.request
    assert request.id == "a1" and request.messages == ({"role": "user", "content": "Hi"},)
    assert request.max_tokens == 16 and request.seed == 3 and incoming.stream
    assert request.stream_interval_ms == 100.0  # the engine's default: a few chunks a second
    assert parse({"prompt": "x", "stream_interval_ms": 0}).request.stream_interval_ms == 0.0
    assert incoming.reply == Reply("edgekit/reply/t", b"c1", "a1", "\0edgekit/reply/t\0a1")


def test_response_topic_property_wins_over_reply_to_and_correlation_gives_the_id() -> None:
    reply = protocol.reply_of({"reply_to": "x/y"}, "edgekit/reply/z", b"\x01\x02")
    assert reply.topic == "edgekit/reply/z" and reply.request_id == "0102" and reply.key is not None


def test_a_request_with_neither_id_nor_correlation_cannot_be_deduplicated() -> None:
    reply = protocol.reply_of({"reply_to": "edgekit/reply/q"}, None, None)
    assert reply.key is None and len(reply.request_id) == 32


@pytest.mark.parametrize("body, words", [
    ({"prompt": "x", "temperature": 2.5}, "temperature"),
    ({"prompt": "x", "max_tokens": 101}, "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"prompt": "x", "top_p": -0.1}, "top_p"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "stream_interval_ms": -5}, "stream_interval_ms"),
    ({"prompt": "x", "json_schema": "{}"}, "json_schema"),
    ({"prompt": "x", "colour": "red"}, "colour"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
    ({"messages": []}, "messages"),
    ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "exactly one"),
    ({}, "exactly one"),
])
def test_out_of_range_or_malformed_fields_are_bad_request_naming_the_field(body: dict, words: str) -> None:
    with pytest.raises(BadRequest, match=words) as info:
        parse(body)
    assert info.value.code == "bad_request"


def test_a_long_prompt_is_too_large() -> None:
    with pytest.raises(TooLarge) as info:
        parse({"prompt": "x" * 51})
    assert info.value.code == "too_large"


def test_payload_over_the_byte_limit_is_too_large_before_parsing() -> None:
    with pytest.raises(TooLarge):
        protocol.decode(b"{" + b" " * 300 + b"}", LIMITS)


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_payload_that_is_not_a_json_object_is_bad_request(payload: bytes) -> None:
    with pytest.raises(BadRequest):
        protocol.decode(payload, LIMITS)


@pytest.mark.parametrize("topic", ["lights/kitchen/set", "edgekit/reply/#", "$SYS/x"])
def test_reply_topics_outside_the_prefix_or_with_wildcards_are_refused(topic: str) -> None:
    with pytest.raises(BadRequest, match="reply topic"):
        protocol.check_reply_topic(Reply(topic, None, "1"), "edgekit/reply/")


def test_an_empty_allowed_prefix_allows_any_plain_topic() -> None:
    protocol.check_reply_topic(Reply("lights/kitchen/answer", None, "1"), "")


def test_result_message_carries_usage_timings_and_device() -> None:
    timings = Timings(time_to_first_token_ms=12.5, prompt_tokens_per_s=100.0, generation_tokens_per_s=50.0,
                      total_ms=40.0, cached_prompt_tokens=3, prompt_ms=20.0, generation_ms=18.0)
    result = Result("r1", "hello", "stop", 5, 2, timings)
    message = json.loads(protocol.result_message("r1", result, "box", queue_ms=2.0))
    assert message["type"] == "result" and message["text"] == "hello" and message["finish_reason"] == "stop"
    assert message["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "cached_prompt_tokens": 3}
    assert message["timings"]["queue_ms"] == 2.0 and message["timings"]["total_ms"] == 42.0
    assert message["timings"]["prompt_ms"] == 20.0 and message["timings"]["generation_ms"] == 18.0
    assert message["device"] == "box"


def test_error_and_chunk_messages_have_the_documented_shape() -> None:
    assert json.loads(protocol.error_message("r1", "busy", "full")) == {
        "id": "r1", "type": "error", "error": {"code": "busy", "message": "full"}}
    chunk = Chunk("r1", 5, "ab", 2, 12.3456, (3.0001, 9.5))
    assert json.loads(protocol.chunk_message("r1", 3, chunk)) == {
        "id": "r1", "type": "chunk", "seq": 3, "text": "ab", "tokens": 2, "elapsed_ms": 12.346,
        "token_ms": [3.0, 9.5]}


def test_the_client_id_in_a_request_or_cancel_topic_is_its_owner() -> None:
    topics = Topics.for_device("edgekit/box", "box")
    assert topics.owner_of("edgekit/box/request", "request") == (True, None)
    assert topics.owner_of("edgekit/box/request/kitchen", "request") == (True, "kitchen")
    assert topics.owner_of("edgekit/box/cancel/kitchen", "cancel") == (True, "kitchen")
    assert topics.owner_of("edgekit/box/request/a/b", "request") == (False, None)
    assert topics.owner_of("edgekit/box/requests", "request") == (False, None)


def test_an_owned_request_is_answered_only_under_its_own_reply_folder() -> None:
    protocol.check_reply_topic(Reply("edgekit/reply/kitchen/1", None, "1", owner="kitchen"), "edgekit/reply/")
    with pytest.raises(BadRequest, match="answered under 'edgekit/reply/kitchen/'"):
        protocol.check_reply_topic(Reply("edgekit/reply/hall/1", None, "1", owner="kitchen"), "edgekit/reply/")


def test_the_same_id_from_two_owners_has_two_keys() -> None:
    a = protocol.reply_of({"id": "1"}, "edgekit/reply/x", None, "kitchen")
    b = protocol.reply_of({"id": "1"}, "edgekit/reply/x", None, "hall")
    assert a.key != b.key


def test_a_request_without_a_reply_topic_is_refused() -> None:
    with pytest.raises(BadRequest, match="no reply topic"):
        protocol.check_reply_topic(Reply(None, None, "1"), "edgekit/reply/")


@pytest.mark.parametrize("payload, words", [
    (b'{"prompt": "x", "n": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nests deeper"),
    (b'{"prompt": "x", "n": ' + b"[" * 40 + b"]" * 40 + b"}", "nests deeper"),
    (b'{"prompt": "x", "max_tokens": 1' + b"0" * 5000 + b"}", "too large"),
    (b'{"prompt": "x", "max_tokens": 99999999999999999999}', "too large"),
    (b'{"prompt": "x", "temperature": 1e400}', "too large"),
    (b'{"prompt": "x", "temperature": NaN}', "not a JSON number"),
    (b'{"id": "\\ud800x", "prompt": "hi"}', "surrogate"),
    (b'{"prompt": "hi", "\\udfff": 1}', "surrogate"),
])
def test_payloads_that_could_outrun_the_parser_are_bad_request(payload: bytes, words: str) -> None:
    limits = LimitsConfig(max_payload_bytes=400_000)
    with pytest.raises(BadRequest, match=words):
        protocol.decode(payload, limits)


def test_an_error_about_text_that_is_not_unicode_is_still_encoded() -> None:
    message = json.loads(protocol.error_message("\ud800", "internal", "x"))
    assert message["error"]["code"] == "internal"


# --- tools ------------------------------------------------------------------------------------

SWITCH = {"type": "function", "function": {"name": "switch", "parameters": {
    "type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}}}
TOOL_LIMITS = LimitsConfig(max_payload_bytes=4096, max_prompt_chars=2000, max_tokens=100, default_max_tokens=16)


def test_a_request_with_tools_and_a_tool_round_trip_is_parsed() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "switch", "arguments": '{"on": true}'}}
    body = {"messages": [{"role": "user", "content": "Light on"},
                         {"role": "assistant", "content": None, "tool_calls": [call]},
                         {"role": "tool", "tool_call_id": "call_1", "content": "done"}],
            "tools": [SWITCH], "tool_choice": "required"}
    request = protocol.parse(body, protocol.reply_of(body, "edgekit/reply/t", None), TOOL_LIMITS).request
    assert request.tools == (SWITCH,) and request.tool_choice == "required"
    assert request.messages[1]["tool_calls"] == [call] and request.messages[2]["role"] == "tool"


@pytest.mark.parametrize("body, words", [
    ({"tools": [{"type": "function", "function": {"name": "bad", "parameters": {"type": "object", "properties": {"x": {"type": 5}}}}}]},
     "tool 'bad'"),
    ({"tools": {"switch": {}}}, "'tools' must be a list"),
    ({"tools": [SWITCH], "tool_choice": {"type": "function", "function": {"name": "open"}}}, "names 'open'"),
    ({"tool_choice": "required"}, "offers no tools"),
    ({"tools": [SWITCH], "messages": [{"role": "assistant", "content": None}]}, "null only beside"),
    ({"tools": [SWITCH], "messages": [{"role": "tool", "content": "x", "extra": 1}]}, "and only"),
])
def test_bad_tools_are_bad_request_naming_the_problem(body: dict, words: str) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], **body}
    with pytest.raises(BadRequest, match=words):
        protocol.parse(body, protocol.reply_of(body, "edgekit/reply/t", None), TOOL_LIMITS)


def test_tool_calls_go_out_as_objects_in_chunks_and_results() -> None:
    call = ToolCall("call_9", "switch", {"on": True})
    wire = {"id": "call_9", "type": "function", "function": {"name": "switch", "arguments": {"on": True}}}
    chunk = json.loads(protocol.chunk_message("r1", 0, Chunk("r1", 0, "", 7, 5.0, (5.0,) * 7, (call,))))
    assert chunk["tool_calls"] == [wire] and chunk["text"] == ""
    result = Result("r1", "", "tool_calls", 5, 7, Timings(), (call,))
    message = json.loads(protocol.result_message("r1", result, "box", 0.0))
    assert message["finish_reason"] == "tool_calls" and message["tool_calls"] == [wire]
    assert "tool_calls" not in json.loads(protocol.result_message("r1", Result("r1", "x", "stop", 1, 1, Timings()), "box", 0.0))


# --- a request as it arrives, and answers read back ------------------------------------------------


def properties(**values: object) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def read(payload: bytes, props: Properties | None, owner: str | None = None) -> protocol.Incoming:
    return protocol.read_request(payload, props, owner, LIMITS, "edgekit/reply/")


def test_a_request_is_read_from_its_payload_and_properties() -> None:
    props = properties(ResponseTopic="edgekit/reply/t", CorrelationData=b"c1", MessageExpiryInterval=30)
    incoming = read(b'{"id": "a1", "prompt": "Hi", "stream": true}', props)
    assert incoming.error is None and incoming.request.prompt == "Hi" and incoming.request.id == "a1"
    assert incoming.stream and incoming.expiry_s == 30
    assert incoming.reply == Reply("edgekit/reply/t", b"c1", "a1", "\0edgekit/reply/t\0a1")


def test_an_mqtt_3_request_names_its_reply_topic_in_the_payload() -> None:
    incoming = read(b'{"id": "b", "prompt": "Hi", "reply_to": "edgekit/reply/old"}', None)
    assert incoming.error is None and incoming.reply.topic == "edgekit/reply/old" and incoming.expiry_s is None


def test_a_payload_that_is_not_json_is_refused_on_its_reply_topic_and_never_deduplicated() -> None:
    incoming = read(b"{not json", properties(ResponseTopic="edgekit/reply/t", CorrelationData=b"c2"))
    assert isinstance(incoming.error, BadRequest) and "not JSON" in str(incoming.error)
    assert incoming.request is None and incoming.reply.topic == "edgekit/reply/t"
    assert incoming.reply.request_id == b"c2".hex() and incoming.reply.key is None


def test_a_reply_topic_outside_the_prefix_is_refused_towards_the_errors_topic() -> None:
    incoming = read(b'{"id": "e", "prompt": "Hi"}', properties(ResponseTopic="lights/kitchen/set"))
    assert incoming.reply.topic is None and "outside the allowed prefix" in str(incoming.error)
    assert incoming.repeated("answered") is incoming  # its route's refusal stands


def test_bad_fields_are_refused_on_the_reply_topic_naming_the_field() -> None:
    incoming = read(b'{"prompt": "Hi", "temperature": 9}', properties(ResponseTopic="edgekit/reply/t"))
    assert incoming.reply.topic == "edgekit/reply/t" and "temperature" in str(incoming.error)


def test_a_repeated_id_is_refused_as_a_duplicate_naming_it() -> None:
    incoming = read(b'{"id": "r", "prompt": "Hi"}', properties(ResponseTopic="edgekit/reply/t")).repeated("in progress")
    assert isinstance(incoming.error, Duplicate) and incoming.request is None
    assert str(incoming.error) == "id 'r' was already used by this requester (in progress): give each request a new id"


def test_a_cancel_names_the_request_id() -> None:
    assert protocol.read_cancel(b'{"id": 7}', LIMITS) == "7"
    with pytest.raises(BadRequest, match="id"):
        protocol.read_cancel(b'{"request": "7"}', LIMITS)


def test_a_result_message_reads_back_as_the_result_with_the_queue_in_its_total() -> None:
    call = ToolCall("call_1", "switch", {"on": True})
    timings = Timings(time_to_first_token_ms=12.5, prompt_tokens=5, cached_prompt_tokens=3, prompt_ms=20.0,
                      prompt_tokens_per_s=100.0, completion_tokens=2, generation_ms=18.0,
                      generation_tokens_per_s=50.0, total_ms=40.0)
    result = Result("r1", "hi", "tool_calls", 5, 2, timings, (call,))
    back = protocol.read_result(json.loads(protocol.result_message("r1", result, "box", queue_ms=2.0)))
    assert back == replace(result, timings=replace(timings, queue_ms=2.0, total_ms=42.0))


def test_a_chunk_message_reads_back_as_the_chunk() -> None:
    chunk = Chunk("r1", 3, "ab", 2, 12.5, (3.0, 9.5), (ToolCall("call_2", "switch", {"on": False}),))
    assert protocol.read_chunk(json.loads(protocol.chunk_message("r1", 3, chunk))) == chunk


@pytest.mark.parametrize("code, error", [("busy", Busy), ("context_overflow", ContextOverflow),
                                         ("too_large", TooLarge), ("internal", EngineError)])
def test_an_error_message_reads_back_as_its_error(code: str, error: type) -> None:
    with pytest.raises(error, match=f"{code}: why"):
        protocol.read_result(json.loads(protocol.error_message("r1", code, "why")))


def test_a_message_that_is_not_a_result_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="not a result message"):
        protocol.read_result({"id": "r1", "type": "result", "text": "hi"})
