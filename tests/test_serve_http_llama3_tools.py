"""A converted Llama-3.2-style model, with the chat template and special tokens its checkpoint ships,
answers a tool call through the daemon's OpenAI-compatible API, as Home Assistant's Assist would ask."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import openai
import pytest

from tests.fixtures.http import http_only_daemon, model_name
from tests.fixtures.models import converted
from tests.serve_support import DaemonProcess

LIGHT = {
    "type": "object",
    "properties": {"room": {"type": "string", "enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}},
    "required": ["room", "on"],
}
TOOLS = [{"type": "function", "function": {"name": "set_light", "description": "Switch a light", "parameters": LIGHT}}]
ASK = [{"role": "system", "content": "You control the house."}, {"role": "user", "content": "Kitchen light on."}]


@pytest.fixture(scope="module")
def llama3_gguf(tiny_llama3_checkpoint: Path) -> Path:
    return converted(tiny_llama3_checkpoint, "f16")


@pytest.fixture(scope="module")
def llama3_daemon(llama3_gguf: Path) -> Iterator[DaemonProcess]:
    yield from http_only_daemon(llama3_gguf, "llama3-http")


def test_converted_llama3_answers_a_tool_call_over_the_openai_api(llama3_daemon: DaemonProcess, llama3_gguf: Path) -> None:
    client = openai.OpenAI(base_url=f"{llama3_daemon.url}/v1", api_key="unused", max_retries=0, timeout=300)
    reply = client.chat.completions.create(model=model_name(llama3_gguf), messages=ASK, tools=TOOLS,
                                           tool_choice="required", max_tokens=64)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "set_light" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), LIGHT)
