"""Converted Llama-3.2- and Qwen2.5-style test models answer tool calls through the engine, with
the chat template and special tokens their checkpoints ship (no template swapped in): the prompt
is the family's own, and the call comes back parsed and valid against the tool's schema."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest

from edgekit.engine import Engine, Request
from edgekit.settings import Settings
from tests.fixtures.models import converted

SETTINGS = Settings(n_ctx=2048, n_threads=2, n_threads_batch=2)
LIGHT = {
    "type": "object",
    "properties": {"room": {"type": "string", "enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}},
    "required": ["room", "on"],
}
TOOLS = ({"type": "function", "function": {"name": "set_light", "description": "Switch a light", "parameters": LIGHT}},)
ASK = ({"role": "system", "content": "You control the house."}, {"role": "user", "content": "Turn on the kitchen light."})
# What each family's own template puts in the prompt for the tools (Llama 3.2: in the first user turn).
TOOL_PROMPT = {
    "llama3": ("<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions", "Environment: ipython"),
    "qwen2": ("<|im_start|>system\nYou control the house.\n\n# Tools", "<tools>\n{"),
}


@pytest.fixture(scope="module", params=["llama3", "qwen2"])
def family_engine(request: pytest.FixtureRequest):
    checkpoint: Path = request.getfixturevalue(f"tiny_{request.param}_checkpoint")
    with Engine(converted(checkpoint, "f16"), SETTINGS) as engine:
        yield request.param, engine


def test_the_shipped_template_renders_the_tools(family_engine) -> None:
    family, engine = family_engine
    assert engine.info.supports_tools
    prompt = engine.render_prompt(ASK, TOOLS)
    for expected in TOOL_PROMPT[family]:
        assert expected in prompt
    assert '"name": "set_light"' in prompt


def test_a_tool_call_comes_back_parsed_and_valid(family_engine) -> None:
    _, engine = family_engine
    result = engine.complete(Request(messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=64))
    assert result.finish_reason == "tool_calls" and result.text == ""
    assert [call.name for call in result.tool_calls] == ["set_light"]
    jsonschema.validate(result.tool_calls[0].arguments, LIGHT)
