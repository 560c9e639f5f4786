"""The OpenAI API of `edgekit serve --http`, driven by the official ``openai`` client as a user's code would."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.fixtures.http import DEVICE_SCHEMA, model_name
from tests.serve_support import DaemonProcess

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def client(http_daemon: DaemonProcess) -> openai.OpenAI:
    # No retries: a test sees each answer as the server gave it.
    return openai.OpenAI(base_url=f"{http_daemon.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def name(tiny_tools_gguf: Path) -> str:
    return model_name(tiny_tools_gguf)


def test_models_list_names_the_served_model(client: openai.OpenAI, name: str) -> None:
    assert [m.id for m in client.models.list()] == [name]
    assert client.models.retrieve(name).owned_by == "edgekit"


def test_chat_completion_returns_a_parsed_completion_with_usage(client: openai.OpenAI, name: str) -> None:
    completion = client.chat.completions.create(model=name, messages=HELLO, max_tokens=3)
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens <= 3 and completion.usage.prompt_tokens > 0
    assert completion.object == "chat.completion" and completion.model == name


def test_max_completion_tokens_is_honoured(client: openai.OpenAI, name: str) -> None:
    completion = client.chat.completions.create(model=name, messages=HELLO, max_completion_tokens=2)
    assert completion.usage.completion_tokens <= 2


def test_streamed_chat_has_the_role_first_then_content_then_usage(client: openai.OpenAI, name: str) -> None:
    chunks = list(client.chat.completions.create(model=name, messages=HELLO, max_tokens=4, seed=1, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 4
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(model=name, messages=HELLO, max_tokens=4, seed=1)
    assert text == whole.choices[0].message.content  # greedy: the same answer either way


def test_response_format_json_schema_answers_json_valid_against_it(client: openai.OpenAI, name: str) -> None:
    completion = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "kitchen light on"}], max_tokens=200,
        response_format={"type": "json_schema", "json_schema": {"name": "device", "schema": DEVICE_SCHEMA}})
    assert completion.choices[0].finish_reason == "stop"
    answer = json.loads(completion.choices[0].message.content)
    assert answer["device"] in ("kitchen_light", "hall_light") and answer["action"] in ("on", "off")


def test_content_parts_and_developer_role_are_accepted(client: openai.OpenAI, name: str) -> None:
    completion = client.chat.completions.create(model=name, max_tokens=2, messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]}])
    assert completion.choices[0].message.role == "assistant"


def test_completions_answers_a_raw_prompt(client: openai.OpenAI, name: str) -> None:
    completion = client.completions.create(model=name, prompt="Once upon a time", max_tokens=3)
    assert completion.choices[0].finish_reason in ("stop", "length") and completion.usage.completion_tokens <= 3
    streamed = list(client.completions.create(model=name, prompt="Once upon a time", max_tokens=3, stream=True))
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text


def test_unknown_model_is_not_found_naming_the_served_one(client: openai.OpenAI, name: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert name in caught.value.body["message"]


def test_out_of_range_value_is_a_bad_request_naming_the_field(client: openai.OpenAI, name: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=name, messages=HELLO, temperature=9)
    assert "temperature" in caught.value.body["message"]
