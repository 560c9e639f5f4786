"""The Ollama API of `edgekit serve --http`, driven by the official ``ollama`` client as a user's code would."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import ollama
import pytest

from tests.fixtures.http import DEVICE_SCHEMA, model_name
from tests.serve_support import DaemonProcess

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def client(http_daemon: DaemonProcess) -> ollama.Client:
    return ollama.Client(host=http_daemon.url, timeout=120)


@pytest.fixture
def name(tiny_tools_gguf: Path) -> str:
    return model_name(tiny_tools_gguf)


def test_list_names_the_served_model_as_home_assistant_reads_it(client: ollama.Client, name: str) -> None:
    models = client.list().models
    assert [m.model for m in models] == [f"{name}:latest"]
    assert models[0].details.format == "gguf" and models[0].details.quantization_level == "F16"
    assert models[0].size > 0


def test_show_gives_the_context_length_and_capabilities(client: ollama.Client, name: str) -> None:
    shown = client.show(name)
    arch = shown.modelinfo["general.architecture"]
    assert shown.modelinfo[f"{arch}.context_length"] > 0
    assert 0 < shown.modelinfo["edgekit.context_length"] <= 4096  # what the daemon runs (its ctx, or less)
    assert shown.capabilities == ["completion", "tools"]  # its chat template renders tools
    assert shown.template  # the GGUF's chat template


def test_ps_lists_the_loaded_model_with_its_context(client: ollama.Client, name: str) -> None:
    [loaded] = client.ps().models
    assert loaded.model == f"{name}:latest"
    assert loaded.context_length == client.show(name).modelinfo["edgekit.context_length"]


def test_chat_without_stream_returns_one_parsed_response(client: ollama.Client, name: str) -> None:
    response = client.chat(model=name, messages=HELLO, options={"num_predict": 3})
    assert response.done and response.done_reason in ("stop", "length")
    assert response.message.role == "assistant" and isinstance(response.message.content, str)
    assert response.eval_count <= 3 and response.prompt_eval_count > 0


def test_chat_streams_pieces_then_a_done_line(client: ollama.Client, name: str) -> None:
    parts = list(client.chat(model=name, messages=HELLO, stream=True, options={"num_predict": 4, "seed": 1}))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    text = "".join(p.message.content for p in parts)
    whole = client.chat(model=name, messages=HELLO, options={"num_predict": 4, "seed": 1})
    assert text == whole.message.content  # greedy: the same answer either way


def test_chat_with_a_format_schema_answers_json_valid_against_it(client: ollama.Client, name: str) -> None:
    response = client.chat(model=name, messages=[{"role": "user", "content": "kitchen light on"}],
                           format=DEVICE_SCHEMA, options={"num_predict": 200})
    assert response.done_reason == "stop"
    answer = json.loads(response.message.content)
    assert answer["device"] in ("kitchen_light", "hall_light") and answer["action"] in ("on", "off")


def test_chat_with_format_json_starts_a_json_object(client: ollama.Client, name: str) -> None:
    response = client.chat(model=name, messages=HELLO, format="json", options={"num_predict": 8})
    assert response.message.content.lstrip().startswith("{")  # 8 tokens: the object is begun, not ended


def test_generate_answers_a_prompt(client: ollama.Client, name: str) -> None:
    response = client.generate(model=name, prompt="Once upon a time", options={"num_predict": 3})
    assert response.done and isinstance(response.response, str) and response.eval_count <= 3


def test_options_map_to_the_request(client: ollama.Client, name: str) -> None:
    response = client.generate(model=name, prompt="Once upon a time", options={
        "num_predict": 2, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "min_p": 0.05, "seed": 7,
        "stop": ["\n\n"], "repeat_penalty": 1.1, "num_ctx": 8192, "num_thread": 2})
    assert response.done and response.eval_count <= 2


def test_pull_of_the_served_model_succeeds_and_of_another_is_a_clear_404(client: ollama.Client, name: str) -> None:
    assert client.pull(name).status == "success"
    with pytest.raises(ollama.ResponseError) as caught:
        client.pull("llama3.2:latest")
    assert caught.value.status_code == 404 and name in caught.value.error and "edgekit pull" in caught.value.error


def test_unknown_model_is_404_naming_the_served_one(client: ollama.Client, name: str) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="llama3.2:latest", messages=HELLO)
    assert caught.value.status_code == 404 and name in caught.value.error


def test_version_and_root_answer_as_ollama_does(http_daemon: DaemonProcess) -> None:
    assert httpx.get(f"{http_daemon.url}/").text.startswith("Ollama is running")
    assert httpx.get(f"{http_daemon.url}/api/version").json()["version"]


def test_home_assistant_agent_sequence_is_answered(client: ollama.Client, name: str,
                                                   http_daemon: DaemonProcess) -> None:
    """What Home Assistant's Ollama conversation agent sends: list (5 s limit), then chat with its
    tools, keep_alive -1, options.num_ctx 8192, think, stream; it reads message.content/tool_calls."""
    listed = {m["model"] for m in client.list().get("models", [])}
    assert f"{name}:latest" in listed
    messages = [{"role": "system", "content": "You are a voice assistant for Home Assistant."},
                {"role": "user", "content": "turn on the kitchen light"}]
    stream = client.chat(model=f"{name}:latest", messages=messages, tools=HA_TOOLS, stream=True, keep_alive=-1,
                         options={"num_ctx": 8192, "num_predict": 24}, think=False)
    parts = list(stream)
    assert parts[-1].done
    for part in parts:
        message = part["message"]
        assert message.get("content") is not None or message.get("tool_calls") is not None
        for call in message.get("tool_calls") or ():
            assert call["function"]["name"] in {"HassTurnOn", "HassTurnOff"}
            assert isinstance(call["function"]["arguments"], dict)
    assert "num_ctx 8192 asked" in http_daemon.log.read_text()  # clamped to the plan's context, and said so


# Two of Assist's intent tools, as Home Assistant formats them for Ollama (llm.Tool -> OpenAPI schema).
HA_TOOLS = [
    {"type": "function", "function": {
        "name": "HassTurnOn", "description": "Turns on/opens a device or entity",
        "parameters": {"type": "object", "properties": {
            "name": {"type": "string"}, "area": {"type": "string"},
            "domain": {"type": "array", "items": {"type": "string", "enum": ["light", "switch", "fan"]}}},
            "required": []}}},
    {"type": "function", "function": {
        "name": "HassTurnOff", "description": "Turns off/closes a device or entity",
        "parameters": {"type": "object", "properties": {
            "name": {"type": "string"}, "area": {"type": "string"}}, "required": []}}},
]


def test_keep_alive_0_unloads_the_model_and_the_next_request_loads_it(client: ollama.Client, name: str,
                                                                     http_daemon: DaemonProcess) -> None:
    assert engine_processes(http_daemon)  # the model lives in the engine's child process
    assert client.chat(model=name, messages=HELLO, keep_alive=0, options={"num_predict": 1}).done
    deadline = time.monotonic() + 30
    while (client.ps().models or engine_processes(http_daemon)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.ps().models == [] and engine_processes(http_daemon) == []  # its memory is freed
    assert client.chat(model=name, messages=HELLO, options={"num_predict": 1}).done  # loads it again
    assert [m.model for m in client.ps().models] == [f"{name}:latest"] and engine_processes(http_daemon)


def engine_processes(daemon: DaemonProcess) -> list[int]:
    """The daemon's child processes (the engine's worker is the only one)."""
    return [int(pid) for task in Path(f"/proc/{daemon.process.pid}/task").glob("*")
            for pid in (task / "children").read_text().split()]
