"""The family chat templates render tool requests in each family's documented prompt format,
with jinja2 set up as transformers' apply_chat_template sets it up."""

from __future__ import annotations

import json
from typing import Any

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgekit.testmodels.chat_templates import CHAT_TEMPLATES

LIGHT_TOOL = {
    "type": "function",
    "function": {
        "name": "turn_on",
        "description": "Turn on a light",
        "parameters": {"type": "object", "properties": {"entity": {"type": "string"}}, "required": ["entity"]},
    },
}
CALL = {"type": "function", "function": {"name": "turn_on", "arguments": {"entity": "light.kitchen"}}}
TOOL_TURN = [
    {"role": "system", "content": "You control the house."},
    {"role": "user", "content": "Kitchen light on, please"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": "ok"},
]


class _TemplateError(Exception):
    pass


def _raise(message: str) -> None:
    raise _TemplateError(message)


def render(family: str, messages: list[dict[str, Any]], **extra: Any) -> str:
    """apply_chat_template(tokenize=False, add_generation_prompt=True) as transformers renders it."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = _raise
    bos = "<|begin_of_text|>" if family.startswith("llama") else ""
    return env.from_string(CHAT_TEMPLATES[family]).render(
        messages=messages, add_generation_prompt=True, bos_token=bos, eos_token="", **extra
    )


def test_every_family_is_a_template_jinja2_compiles():
    assert set(CHAT_TEMPLATES) == {"llama3.1", "llama3.2", "qwen2.5", "smollm2"}
    for text in CHAT_TEMPLATES.values():
        jinja2.Environment().parse(text)


@pytest.mark.parametrize("family", ["llama3.1", "llama3.2"])
def test_llama3_puts_tools_in_the_first_user_turn_and_calls_as_json(family):
    prompt = render(family, TOOL_TURN, tools=[LIGHT_TOOL])
    tool_json = json.dumps(LIGHT_TOOL, indent=4)
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You control the house.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call "
        "with its proper arguments that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
        "Do not use variables.\n\n" + tool_json + "\n\nKitchen light on, please<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "turn_on", "parameters": {"entity": "light.kitchen"}}<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n"ok"<|eot_id|>'  # a string result is JSON-quoted, as shipped
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_tools_go_into_the_system_turn_when_asked():
    prompt = render("llama3.2", TOOL_TURN[:2], tools=[LIGHT_TOOL], tools_in_user_message=False)
    system, user = prompt.split("<|eot_id|>")[:2]
    assert "You have access to the following functions." in system and '"name": "turn_on"' in system
    assert user == "<|start_header_id|>user<|end_header_id|>\n\nKitchen light on, please"


def test_llama31_calls_builtin_tools_with_python_tag_and_eom():
    call = {"function": {"name": "brave_search", "arguments": {"query": "weather Oslo"}}}
    messages = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "tool_calls": [call]}]
    prompt = render("llama3.1", messages, builtin_tools=["brave_search", "code_interpreter"])
    assert "Environment: ipython\nTools: brave_search\n\n" in prompt
    assert '<|python_tag|>brave_search.call(query="weather Oslo")<|eom_id|>' in prompt


def test_llama3_without_tools_is_a_plain_chat():
    prompt = render("llama3.2", [{"role": "user", "content": " Hi "}])
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama3_refuses_parallel_calls():
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [CALL, CALL]}]
    with pytest.raises(_TemplateError, match="single tool-calls"):
        render("llama3.2", messages)


def test_qwen25_lists_tools_in_the_system_turn_and_wraps_calls_and_responses():
    messages = [*TOOL_TURN, {"role": "tool", "content": "done"}]
    prompt = render("qwen2.5", messages, tools=[LIGHT_TOOL])
    assert prompt == (
        "<|im_start|>system\nYou control the house.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + json.dumps(LIGHT_TOOL)
        + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nKitchen light on, please<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "turn_on", "arguments": {"entity": "light.kitchen"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nok\n</tool_response>\n<tool_response>\ndone\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen25_default_system_prompt_without_tools():
    prompt = render("qwen2.5", [{"role": "user", "content": "Hi"}])
    assert prompt == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_smollm2_is_chatml_with_its_default_system_turn():
    assert render("smollm2", [{"role": "user", "content": "Hi"}]) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    with_system = render("smollm2", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi")
