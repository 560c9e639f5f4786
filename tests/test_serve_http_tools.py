"""Tool calls through both HTTP APIs: offered tools -> structured calls valid against their schemas ->
a tool result -> a final text answer; streamed calls arrive as structured deltas, never as text.

The model has random weights and a Qwen2.5 (Hermes) template: the engine's grammar alone makes the
calls well-formed. Such a model never chooses a call by itself, so the first turn forces one
(OpenAI's tool_choice; for Ollama, edgekit reads tool_choice from options).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import ollama
import openai
import pytest

from tests.fixtures.http import model_name
from tests.serve_support import DaemonProcess

LIGHT = {
    "type": "object",
    "properties": {"room": {"type": "string", "enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}},
    "required": ["room", "on"],
}
TOOLS = [{"type": "function", "function": {"name": "set_light", "description": "Switch a light", "parameters": LIGHT}},
         {"type": "function", "function": {"name": "get_time", "description": "The time of day",
                                           "parameters": {"type": "object", "properties": {}}}}]
ASK = [{"role": "system", "content": "You control the house."}, {"role": "user", "content": "Kitchen light on."}]
SET_LIGHT = {"type": "function", "function": {"name": "set_light"}}


@pytest.fixture
def name(tiny_tools_gguf: Path) -> str:
    return model_name(tiny_tools_gguf)


@pytest.fixture
def oa(http_daemon: DaemonProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{http_daemon.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def ol(http_daemon: DaemonProcess) -> ollama.Client:
    return ollama.Client(host=http_daemon.url, timeout=120)


def test_openai_tool_call_round_trip(oa: openai.OpenAI, name: str) -> None:
    first = oa.chat.completions.create(model=name, messages=ASK, tools=TOOLS, tool_choice=SET_LIGHT, max_tokens=200)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "set_light" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), LIGHT)
    history = [*ASK, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": '{"ok": true}'}]
    final = oa.chat.completions.create(model=name, messages=history, tools=TOOLS, max_tokens=6)
    assert final.choices[0].message.tool_calls is None and isinstance(final.choices[0].message.content, str)
    assert final.choices[0].finish_reason in ("stop", "length")


def test_openai_streamed_call_arrives_as_tool_call_deltas(oa: openai.OpenAI, name: str) -> None:
    chunks = list(oa.chat.completions.create(model=name, messages=ASK, tools=TOOLS, tool_choice="required",
                                             max_tokens=200, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [call for d in deltas for call in d.tool_calls or ()]
    assert calls and [c.index for c in calls] == list(range(len(calls)))
    for call in calls:
        schema = LIGHT if call.function.name == "set_light" else TOOLS[1]["function"]["parameters"]
        jsonschema.validate(json.loads(call.function.arguments), schema)
    assert "".join(d.content or "" for d in deltas) == ""  # never as content text
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_ollama_tool_call_round_trip(ol: ollama.Client, name: str) -> None:
    first = ol.chat(model=name, messages=ASK, tools=TOOLS, options={"tool_choice": SET_LIGHT, "num_predict": 200})
    [call] = first.message.tool_calls
    assert call.function.name == "set_light"
    jsonschema.validate(dict(call.function.arguments), LIGHT)
    history = [*ASK, first.message, {"role": "tool", "content": '{"ok": true}', "tool_name": "set_light"}]
    final = ol.chat(model=name, messages=history, tools=TOOLS, options={"num_predict": 6})
    assert not final.message.tool_calls and isinstance(final.message.content, str) and final.done


def test_ollama_streamed_call_arrives_as_structured_tool_calls(ol: ollama.Client, name: str) -> None:
    parts = list(ol.chat(model=name, messages=ASK, tools=TOOLS, stream=True,
                         options={"tool_choice": "required", "num_predict": 200}))
    calls = [call for p in parts for call in p.message.tool_calls or ()]
    assert calls and all(c.function.name in ("set_light", "get_time") for c in calls)
    assert "".join(p.message.content or "" for p in parts) == ""  # never as content text
    assert parts[-1].done


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_an_invalid_tool_schema_is_400_naming_the_tool(http_daemon: DaemonProcess, name: str, path: str) -> None:
    broken = [{"type": "function", "function": {"name": "set_light", "parameters": {"type": "object",
                                                                                    "properties": "room"}}}]
    answer = httpx.post(f"{http_daemon.url}{path}", timeout=60,
                        json={"model": name, "messages": ASK, "tools": broken, "stream": False})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "set_light" in (error["message"] if path.startswith("/v1") else error)


def test_the_openai_setup_probe_with_tools_and_max_tokens_3_is_answered(oa: openai.OpenAI, name: str) -> None:
    """Home Assistant's OpenAI-compatible integrations check a server with a 3-token tool request."""
    completion = oa.chat.completions.create(model=name, messages=ASK, tools=TOOLS, max_tokens=3)
    assert completion.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert completion.usage.completion_tokens <= 3
