"""The Ollama API of `edgekit serve --http`, driven by the official ``ollama`` client as a user's code would."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from edgekit.serve.mqtt.mosquitto import free_port
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
    wait_unloaded(client, http_daemon)
    assert client.ps().models == [] and engine_processes(http_daemon) == []  # its memory is freed
    assert client.chat(model=name, messages=HELLO, options={"num_predict": 1}).done  # loads it again
    assert [m.model for m in client.ps().models] == [f"{name}:latest"] and engine_processes(http_daemon)


def test_show_answers_from_the_file_while_the_model_is_unloaded(client: ollama.Client, name: str,
                                                               http_daemon: DaemonProcess) -> None:
    loaded = client.show(name)
    assert client.chat(model=name, messages=[], keep_alive=0).done_reason == "unload"
    wait_unloaded(client, http_daemon)
    shown = client.show(name)  # read from the GGUF's header: no engine to ask
    arch = shown.modelinfo["general.architecture"]
    assert shown.modelinfo[f"{arch}.context_length"] == loaded.modelinfo[f"{arch}.context_length"] > 0
    assert shown.capabilities == loaded.capabilities == ["completion", "tools"]
    assert shown.template == loaded.template and shown.details == loaded.details
    assert "edgekit.context_length" not in shown.modelinfo  # the context it runs with is known once loaded
    assert client.ps().models == []  # show did not load it
    reloaded = client.chat(model=name, messages=[])  # Ollama's load request
    assert reloaded.done and reloaded.done_reason == "load" and reloaded.message.content == ""
    assert [m.model for m in client.ps().models] == [f"{name}:latest"]


def entities(home: str, count: int = 20) -> str:
    """A Home-Assistant-like system prompt, long enough for the prompt cache (min_tokens 64)."""
    return f"Home {home}: you control it. " + "".join(
        f"Entity light.room_{i} is {('on', 'off')[i % 2]} at {i * 9 % 100} percent. " for i in range(count))


def test_a_chat_load_request_with_a_system_prompt_warms_it_for_the_next_chat(client: ollama.Client, name: str,
                                                                            http_daemon: DaemonProcess) -> None:
    warmed, fresh = entities(uuid.uuid4().hex), entities(uuid.uuid4().hex)
    load = client.chat(model=name, messages=[{"role": "system", "content": warmed}])
    assert load.done and load.done_reason == "load" and load.message.content == "" and load.eval_count is None
    assert load.prompt_eval_count > 64  # the system prompt was evaluated into the prompt cache
    question = {"role": "user", "content": "Is room 3 on?"}
    cold = chat_counts(http_daemon, name, [{"role": "system", "content": fresh}, question])  # never warmed
    hot = chat_counts(http_daemon, name, [{"role": "system", "content": warmed}, question])
    assert cold["prompt_eval_cached_count"] < 16
    assert hot["prompt_eval_cached_count"] >= load.prompt_eval_count - 8  # all but the turn's header
    assert hot["prompt_eval_count"] > hot["prompt_eval_cached_count"]  # the question itself was evaluated
    usage = openai.OpenAI(base_url=f"{http_daemon.url}/v1", api_key="none").chat.completions.create(
        model=name, messages=[{"role": "system", "content": warmed}, question], max_tokens=1).usage
    assert usage.prompt_tokens_details.cached_tokens >= load.prompt_eval_count - 8  # OpenAI's name for it


def test_a_generate_load_request_warms_its_system_field(client: ollama.Client, name: str,
                                                        http_daemon: DaemonProcess) -> None:
    warmed = entities(uuid.uuid4().hex)
    load = client.generate(model=name, prompt="", system=warmed)
    assert load.done and load.done_reason == "load" and load.response == "" and load.prompt_eval_count > 64
    body = {"model": name, "prompt": "Is room 3 on?", "system": warmed, "stream": False, "options": {"num_predict": 1}}
    hot = httpx.post(f"{http_daemon.url}/api/generate", json=body, timeout=120).json()
    assert hot["prompt_eval_cached_count"] >= load.prompt_eval_count - 8


def test_a_load_request_without_a_system_prompt_warms_the_daemons_warm_prompts(tmp_path: Path,
                                                                              tiny_tools_gguf: Path) -> None:
    warm, name = entities("of the warm_prompts"), model_name(tiny_tools_gguf)
    daemon = DaemonProcess(tmp_path, tiny_tools_gguf, "none", "warm-prompts", http_port=free_port(),
                           cache={"warm_prompts": [warm]})
    daemon.start()
    try:
        client = ollama.Client(host=daemon.url, timeout=120)
        chat_counts(daemon, name, [{"role": "system", "content": entities("elsewhere")}, HELLO[0]])  # context moves on
        load = client.chat(model=name, messages=[])
        assert load.done_reason == "load" and load.prompt_eval_count > 64  # the warm prompt, as a system message
        question = {"role": "user", "content": "Is room 3 on?"}
        hot = chat_counts(daemon, name, [{"role": "system", "content": warm}, question])
        assert hot["prompt_eval_cached_count"] >= load.prompt_eval_count - 8
    finally:
        assert daemon.stop() == 0, daemon.output()


def chat_counts(daemon: DaemonProcess, name: str, messages: list[dict]) -> dict:
    """An /api/chat answer's prompt counts, with prompt_eval_cached_count (newer Ollama's field, which the
    ollama client 0.6 does not keep)."""
    body = {"model": name, "messages": messages, "stream": False, "options": {"num_predict": 1}}
    answer = httpx.post(f"{daemon.url}/api/chat", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_unloaded(client: ollama.Client, daemon: DaemonProcess) -> None:
    """Until /api/ps is empty and the engine's process has exited (keep_alive 0 unloads after the answer)."""
    deadline = time.monotonic() + 30
    while (client.ps().models or engine_processes(daemon)) and time.monotonic() < deadline:
        time.sleep(0.1)


def engine_processes(daemon: DaemonProcess) -> list[int]:
    """The daemon's child processes (the engine's worker is the only one)."""
    return [int(pid) for task in Path(f"/proc/{daemon.process.pid}/task").glob("*")
            for pid in (task / "children").read_text().split()]
