"""The daemon serving two LoRA adapters beside one model ([model] lora): requests pick one by name over
MQTT (field ``adapter``) and HTTP (model ``<name>:<adapter>``, through the official clients),
alternating with the bare model. Greedy, each answer is the text an engine with only that adapter
gives (the settings `edgekit run --lora` plans), and the model is loaded once (``model_loads``
in the metrics, over MQTT and HTTP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from edgekit.engine import Engine, Request
from edgekit.plan import LoraAdapter, settings_for
from edgekit.serve.mqtt.client import RequestClient
from edgekit.serve.mqtt.mosquitto import free_port
from tests.fixtures.http import model_name
from tests.serve_support import LONG_CTX, DaemonProcess, Listener, running

pytest.importorskip("llama_cpp")

DEVICE = "lorabox"
PREFIX = f"edgekit/{DEVICE}"
PROMPT = "The lights in the kitchen"
MAX_TOKENS = 24
ORDER = ("house", None, "garden", "house", "garden", None)  # every switch: adapter -> base -> other adapter


@pytest.fixture(scope="module")
def alone(tiny_gguf_f16: Path, tiny_adapters: dict[str, LoraAdapter]) -> dict[str | None, str]:
    """The greedy text of each choice from an engine that loaded only that adapter (or none), with the
    settings `edgekit run --lora NAME=... --ctx LONG_CTX` plans for this box."""
    texts = {}
    for name in (None, "house", "garden"):
        lora = (tiny_adapters[name],) if name else ()
        with Engine(tiny_gguf_f16, settings_for(tiny_gguf_f16, ctx=LONG_CTX, lora=lora).settings) as engine:
            texts[name] = engine.complete(Request(prompt=PROMPT, max_tokens=MAX_TOKENS, adapter=name)).text
    assert len(set(texts.values())) == 3  # each adapter changes the answer
    return texts


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, mosquitto, tiny_gguf_f16: Path,
           tiny_adapters: dict[str, LoraAdapter]) -> Iterator[DaemonProcess]:
    lora = [f"house={tiny_adapters['house'].path}", f"garden={tiny_adapters['garden'].path}:1.5"]
    yield from running(DaemonProcess(tmp_path_factory.mktemp("lora-daemon"), tiny_gguf_f16, mosquitto.url, DEVICE,
                                     http_port=free_port(), model={"lora": lora}))


@pytest.fixture(scope="module")
def mqtt(daemon: DaemonProcess, mosquitto) -> Iterator[RequestClient]:
    """One MQTT connection for the module's requests."""
    client = RequestClient(mosquitto.url, PREFIX, timeout_s=120)
    with client:
        yield client


@pytest.fixture
def name(tiny_gguf_f16: Path) -> str:
    return model_name(tiny_gguf_f16)


def _published_metrics(broker_url: str) -> dict:
    """A {node}/metrics payload published after this call (not the retained one from before)."""
    listener = Listener(broker_url, f"{PREFIX}/metrics")
    try:
        listener.next(5.0)  # the retained one
        return listener.next(5.0).json
    finally:
        listener.close()


def test_requests_alternating_between_two_adapters_and_the_base_give_each_ones_own_text_over_mqtt_and_http(
    daemon: DaemonProcess, mqtt: RequestClient, mosquitto, alone: dict[str | None, str], name: str
) -> None:
    ollama_client = ollama.Client(host=daemon.url)
    openai_client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="none", max_retries=0)
    for adapter in ORDER:
        model = f"{name}:{adapter}" if adapter else name
        final = mqtt.ask({"prompt": PROMPT, "max_tokens": MAX_TOKENS, **({"adapter": adapter} if adapter else {})}).final
        assert (final["type"], final["adapter"], final["text"]) == ("result", adapter, alone[adapter]), final
        generated = ollama_client.generate(model=model, prompt=PROMPT, raw=True, options={"num_predict": MAX_TOKENS})
        assert (generated.model, generated.response) == (model, alone[adapter])
        completion = openai_client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS)
        assert (completion.model, completion.choices[0].text) == (model, alone[adapter])
    assert final["adapter"] is None and "adapter_scale" not in final
    over_http = httpx.get(f"{daemon.url}/edgekit/metrics", timeout=30).json()
    assert over_http["model_loads"] == 1 and over_http["by_front_end"]["http"]["served"] >= 2 * len(ORDER)
    assert _published_metrics(mosquitto.url)["model_loads"] == 1  # switching never reloaded the model


def test_a_request_scale_overrides_the_adapters_and_the_answer_says_which_ran(
    daemon: DaemonProcess, mqtt: RequestClient, alone: dict[str | None, str], name: str
) -> None:
    garden = mqtt.ask({"prompt": PROMPT, "max_tokens": MAX_TOKENS, "adapter": "garden"}).final
    assert (garden["adapter"], garden["adapter_scale"], garden["text"]) == ("garden", 1.5, alone["garden"])
    off = mqtt.ask({"prompt": PROMPT, "max_tokens": MAX_TOKENS, "adapter": "garden", "adapter_scale": 0}).final
    assert (off["adapter"], off["adapter_scale"], off["text"]) == ("garden", 0.0, alone[None])  # scale 0 adds nothing
    body = {"model": f"{name}:garden", "prompt": PROMPT, "raw": True, "stream": False,
            "options": {"num_predict": MAX_TOKENS, "adapter_scale": 0}}
    assert httpx.post(f"{daemon.url}/api/generate", json=body, timeout=120).json()["response"] == alone[None]
    refused = mqtt.ask({"prompt": PROMPT, "adapter_scale": 0.5}).final
    assert refused["error"]["code"] == "bad_request" and "needs 'adapter'" in refused["error"]["message"]


def test_the_apis_list_the_adapter_variants_and_refuse_an_unknown_one_naming_those_served(
    daemon: DaemonProcess, mqtt: RequestClient, name: str
) -> None:
    assert "2 LoRA adapter(s) loaded beside the model: house, garden" in daemon.output()  # the plan counted them
    assert [m.model for m in ollama.Client(host=daemon.url).list().models] == [
        f"{name}:latest", f"{name}:house", f"{name}:garden"]
    openai_client = openai.OpenAI(base_url=f"{daemon.url}/v1", api_key="none", max_retries=0)
    assert [m.id for m in openai_client.models.list()] == [name, f"{name}:house", f"{name}:garden"]
    assert openai_client.models.retrieve(f"{name}:house").id == f"{name}:house"

    final = mqtt.ask({"prompt": PROMPT, "max_tokens": 2, "adapter": "attic"}).final
    assert final["error"]["code"] == "bad_request"
    assert "adapter 'attic' is not loaded; loaded: house, garden" in final["error"]["message"]
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=daemon.url).generate(model=f"{name}:attic", prompt=PROMPT)
    assert caught.value.status_code == 404 and f"'{name}:house', '{name}:garden'" in caught.value.error
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.completions.create(model=f"{name}:attic", prompt=PROMPT, max_tokens=2)
    assert missing.value.body["type"] == "not_found_error" and f"'{name}:garden'" in missing.value.body["message"]
