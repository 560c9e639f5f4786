"""Tool calls through the real engine: the tiny model with the tool-capable chat templates of
Llama 3.1 and Qwen2.5 (edgekit.testmodels.chat_templates) and with TinyLlama's own template,
which has no tools (edgekit's built-in tool prompt). Random weights: the grammar alone makes
the calls well-formed, which is what these tests show."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from edgekit.convert import convert
from edgekit.engine import Chunk, Engine, Request, Result
from edgekit.engine.records import ToolCall
from edgekit.engine.tool_output import CallStream, complete_calls
from edgekit.engine.tools import SYNTAXES, ToolPlan, ToolSpec, call_text, check_tools
from edgekit.errors import BadRequest
from edgekit.settings import Settings
from edgekit.testmodels.chat_templates import CHAT_TEMPLATES

SETTINGS = Settings(n_ctx=2048, n_threads=1, n_threads_batch=1)
LIGHT = {
    "type": "object",
    "properties": {
        "room": {"type": "string", "enum": ["kitchen", "living room", "hall"]},
        "brightness": {"type": "integer", "minimum": 0, "maximum": 100},
        "on": {"type": "boolean"},
    },
    "required": ["room", "on"],
}
TOOLS = (
    {"type": "function", "function": {"name": "set_light", "description": "Switch or dim a light", "parameters": LIGHT}},
    {"type": "function", "function": {"name": "get_time", "description": "The time of day", "parameters": {"type": "object", "properties": {}}}},
)
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = ({"role": "system", "content": "You control the house."}, {"role": "user", "content": "Turn on the kitchen light."})
NAMED = {"type": "function", "function": {"name": "set_light"}}


def templated_gguf(checkpoint: Path, folder: Path, template: str) -> Path:
    """The tiny checkpoint with ``template`` as its chat template, converted to a GGUF."""
    shutil.copytree(checkpoint, folder / "checkpoint")
    config_path = folder / "checkpoint" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = template
    config_path.write_text(json.dumps(config, indent=2))
    convert(folder / "checkpoint", folder / "model.gguf", "f16")
    return folder / "model.gguf"


@pytest.fixture(scope="module", params=["llama3.1", "qwen2.5", "builtin"])
def family_engine(request: pytest.FixtureRequest, tiny_checkpoint: Path, tiny_gguf_f16: Path, tmp_path_factory: pytest.TempPathFactory):
    family = request.param
    if family == "builtin":  # TinyLlama's template knows no tools
        gguf = tiny_gguf_f16
    else:
        gguf = templated_gguf(tiny_checkpoint, tmp_path_factory.mktemp(family), CHAT_TEMPLATES[family])
    with Engine(gguf, SETTINGS) as engine:
        yield family, engine


def collect(engine: Engine, request: Request) -> tuple[list[Chunk], Result]:
    items = list(engine.stream(request))
    assert isinstance(items[-1], Result)
    return items[:-1], items[-1]


def assert_valid(calls: tuple[ToolCall, ...]) -> None:
    assert calls
    for call in calls:
        assert call.id.startswith("call_") and call.name in SCHEMAS
        jsonschema.validate(call.arguments, SCHEMAS[call.name])


# --- with the model ------------------------------------------------------------------------


def test_a_template_that_renders_tools_is_detected(family_engine):
    family, engine = family_engine
    assert engine.info.supports_tools == (family != "builtin")


def test_the_prompt_shows_the_tools_in_the_family_s_own_words(family_engine):
    family, engine = family_engine
    prompt = engine.render_prompt(ASK, TOOLS)
    expected = {"llama3.1": '"parameters": dictionary of argument name', "qwen2.5": "<tools>", "builtin": "<tools>"}[family]
    assert expected in prompt and '"name": "set_light"' in prompt and "Turn on the kitchen light." in prompt
    assert '"name": "set_light"' not in engine.render_prompt(ASK)  # no tools, no tool prompt


def test_tool_choice_required_forces_a_call_with_arguments_valid_against_the_schema(family_engine):
    _, engine = family_engine
    result = engine.complete(Request(messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200))
    assert result.finish_reason == "tool_calls" and result.text == ""
    assert_valid(result.tool_calls)


def test_a_named_tool_choice_calls_that_tool(family_engine):
    _, engine = family_engine
    result = engine.complete(Request(messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=200))
    assert result.finish_reason == "tool_calls" and [c.name for c in result.tool_calls] == ["set_light"]
    assert_valid(result.tool_calls)
    assert result.tool_calls[0].arguments["room"] in LIGHT["properties"]["room"]["enum"]


def test_a_streamed_call_arrives_as_a_record_never_as_content(family_engine):
    _, engine = family_engine
    chunks, result = collect(engine, Request(messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=200, stream_interval_ms=0))
    assert all(c.text == "" for c in chunks)
    assert tuple(call for c in chunks for call in c.tool_calls) == result.tool_calls and result.tool_calls
    assert sum(c.tokens for c in chunks) == result.completion_tokens  # one call: all its tokens came


def test_forced_tokens_are_appended_in_batches(family_engine):
    """Keys, punctuation and the rest of a name come in one batch: several tokens share one time."""
    _, engine = family_engine
    chunks, result = collect(engine, Request(messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=200, stream_interval_ms=0))
    times = [t for c in chunks for t in c.token_ms]
    assert len(times) == result.completion_tokens and len(set(times)) < len(times) / 2


def test_a_call_cut_by_max_tokens_ends_by_length_with_no_call_and_no_text(family_engine):
    _, engine = family_engine
    chunks, result = collect(engine, Request(messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=6, stream_interval_ms=0))
    assert (result.finish_reason, result.tool_calls, result.text, result.completion_tokens) == ("length", (), "", 6)
    assert chunks == []


def test_a_tool_result_rendered_back_gives_a_text_answer(family_engine):
    family, engine = family_engine
    call = engine.complete(Request(messages=ASK, tools=TOOLS, tool_choice=NAMED, max_tokens=200)).tool_calls[0]
    # As an OpenAI client sends it back: arguments as a JSON string, the result in a tool message.
    turn = {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}]}
    result_message = {"role": "tool", "tool_call_id": call.id, "name": call.name, "content": '{"success": true, "state": "on"}'}
    messages = (*ASK, turn, result_message)
    prompt = engine.render_prompt(messages, TOOLS)
    assert '{"success": true, "state": "on"}' in prompt or '"{\\"success\\": true' in prompt  # Llama 3.1 tojson's it
    assert call_text(SYNTAXES["llama3" if family == "llama3.1" else "hermes"], call.name, call.arguments).strip() in prompt
    chunks, answer = collect(engine, Request(messages=messages, tools=TOOLS, max_tokens=24, stream_interval_ms=0))
    assert answer.tool_calls == () and answer.finish_reason in ("stop", "length") and answer.text
    assert "".join(c.text for c in chunks) == answer.text and "tool_call" not in answer.text


def test_tool_choice_none_keeps_the_tools_in_the_prompt_and_answers_in_text(family_engine):
    _, engine = family_engine
    with_tools = engine.complete(Request(messages=ASK, tools=TOOLS, max_tokens=1))
    result = engine.complete(Request(messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=8))
    assert result.tool_calls == () and result.finish_reason == "length" and result.text
    assert result.prompt_tokens == with_tools.prompt_tokens  # the same prompt: its cached prefix is reused
    assert result.timings.cached_prompt_tokens >= result.prompt_tokens - 4


@pytest.mark.parametrize(
    ("tools", "choice", "problem"),
    [
        (({"type": "function", "function": {"name": "broken", "parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}},), "auto", "tool 'broken'.*not a valid JSON schema"),
        (({"type": "function", "function": {"name": "listy", "parameters": {"type": "array"}}},), "auto", "tool 'listy'.*object"),
        (({"type": "function", "function": {"name": "has space"}},), "auto", "tool 'has space'"),
        (TOOLS + TOOLS[:1], "auto", "tool 'set_light' is offered twice"),
        (TOOLS, {"type": "function", "function": {"name": "open_door"}}, "names 'open_door'.*set_light, get_time"),
        ((), "required", "offers no tools"),
        (TOOLS, "always", "tool_choice must be"),
    ],
)
def test_bad_tools_are_refused_naming_the_problem(family_engine, tools, choice, problem):
    _, engine = family_engine
    with pytest.raises(BadRequest, match=problem):
        engine.complete(Request(messages=ASK, tools=tools, tool_choice=choice))


def test_tools_with_a_raw_prompt_or_a_json_schema_are_refused(family_engine):
    _, engine = family_engine
    with pytest.raises(BadRequest, match="raw prompt"):
        engine.complete(Request(prompt="hi", tools=TOOLS))
    with pytest.raises(BadRequest, match="not both"):
        engine.complete(Request(messages=ASK, tools=TOOLS, json_schema=LIGHT))


# --- parsing and streaming, no model ------------------------------------------------------------


def test_only_complete_calls_are_parsed():
    hermes = SYNTAXES["hermes"]
    text = call_text(hermes, "get_time", {}) + "\n" + call_text(hermes, "set_light", {"room": "hall", "on": True})
    assert [b["name"] for b in complete_calls(text, hermes)] == ["get_time", "set_light"]
    assert [b["name"] for b in complete_calls(text[:-1], hermes)] == ["get_time"]
    assert complete_calls('{"name": "get_time", "parameters": {}', SYNTAXES["llama3"]) == []


def test_the_first_characters_tell_text_from_a_call():
    plan = ToolPlan(SYNTAXES["llama3"], check_tools(TOOLS), required=False)
    text = CallStream(plan)
    assert [text.feed("It is"), text.feed(" 9 o'clock")] == [("It is", []), (" 9 o'clock", [])]
    call = CallStream(plan)
    pieces = ['{"name": "get', '_time", "parameters": {', "}", "}"]
    out = [call.feed(p) for p in pieces]
    assert [o[0] for o in out] == ["", "", "", ""] and out[-1][1][0].name == "get_time"


def test_a_call_whose_arguments_fail_the_schema_is_dropped():
    plan = ToolPlan(SYNTAXES["hermes"], (ToolSpec("set_light", LIGHT),), required=True)
    stream = CallStream(plan)
    assert stream.feed(call_text(plan.syntax, "set_light", {"room": "garage", "on": True})) == ("", [])
    assert stream.finish() == ("", []) and stream.calls == []
