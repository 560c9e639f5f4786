"""LoRA adapters at run time: loaded once with the model, chosen per request by name, no reload."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from edgekit.cli import main
from edgekit.convert.lora_gguf import convert_lora
from edgekit.engine import Engine, Request
from edgekit.engine.prompt_cache import PromptCacheConfig, disk_files
from edgekit.errors import BadRequest, EngineError, ModelFormatError
from edgekit.hardware import detect
from edgekit.plan import plan_for
from edgekit.profiles import load_profile
from edgekit.settings import LoraAdapter, Settings
from edgekit.serve.config import ModelConfig
from edgekit.serve.engines import settings_for as serve_settings
from edgekit.testmodels import make_test_lora
from tests.fixtures.models import checkpoint, converted

pytest.importorskip("llama_cpp")

PROMPT = "The lights in the kitchen"
SETTINGS = Settings(n_ctx=256, n_threads=2)
Capsys = pytest.CaptureFixture[str]


@pytest.fixture(scope="module")
def base(tiny_checkpoint: Path) -> Path:
    return converted(tiny_checkpoint, "f16")


@pytest.fixture(scope="module")
def adapters(tiny_adapters: dict[str, LoraAdapter]) -> dict[str, LoraAdapter]:
    return tiny_adapters


def _request(adapter: str | None = None, scale: float | None = None) -> Request:
    return Request(prompt=PROMPT, max_tokens=24, adapter=adapter, adapter_scale=scale)


@pytest.fixture(scope="module")
def alone(base: Path, adapters: dict[str, LoraAdapter]) -> dict[str | None, str]:
    """The greedy text of each choice from an engine that loaded only that adapter (or none)."""
    texts = {}
    for name in (None, "house", "garden"):
        with Engine(base, replace(SETTINGS, lora=(adapters[name],) if name else ())) as engine:
            texts[name] = engine.complete(_request(name)).text
    return texts


def test_requests_alternating_between_two_adapters_and_the_base_give_each_ones_own_text(
    base: Path, adapters: dict[str, LoraAdapter], alone: dict[str | None, str]
) -> None:
    assert len(set(alone.values())) == 3  # each adapter changes the answer
    with Engine(base, replace(SETTINGS, lora=tuple(adapters.values()))) as engine:
        assert engine.info.adapters == ("house", "garden")
        for name in ("house", None, "garden", "house", "garden", None, "house"):
            result = engine.complete(_request(name))
            assert (result.adapter, result.text) == (name, alone[name])
        assert result.adapter_scale == 1.0
        assert engine.load_count == 1  # switching never reloads the model


def test_request_scale_overrides_the_adapter_scale(base: Path, adapters: dict[str, LoraAdapter]) -> None:
    with Engine(base, replace(SETTINGS, lora=(adapters["garden"],))) as engine:
        bare = engine.complete(_request()).text
        assert engine.complete(_request("garden")).adapter_scale == 1.5
        off = engine.complete(_request("garden", scale=0.0))
        assert (off.text, off.adapter_scale) == (bare, 0.0)  # scale 0 adds nothing
        assert engine.complete(_request("garden", scale=0.5)).text != bare


def test_unknown_adapter_is_refused_naming_the_loaded_ones(base: Path, adapters: dict[str, LoraAdapter]) -> None:
    with Engine(base, replace(SETTINGS, lora=(adapters["house"],))) as engine:
        with pytest.raises(BadRequest, match="adapter 'attic' is not loaded; loaded: house"):
            engine.complete(_request("attic"))
        assert engine.complete(_request("house")).adapter == "house"  # the engine goes on


def test_a_model_file_is_refused_as_an_adapter(base: Path) -> None:
    with pytest.raises(ModelFormatError, match="not a GGUF LoRA adapter"):
        Engine(base, replace(SETTINGS, lora=(LoraAdapter("oops", str(base)),))).start()


def test_adapter_for_another_base_is_refused_when_loading(base: Path, tmp_path: Path) -> None:
    deeper = make_test_lora(tmp_path / "deeper", "tiny8", targets=("q_proj",))
    adapter = convert_lora(deeper, checkpoint("tiny8", "bf16", shard_size="10MB"), tmp_path / "deeper.gguf").path
    with pytest.raises((ModelFormatError, EngineError), match="another base model"):
        Engine(base, replace(SETTINGS, lora=(LoraAdapter("deeper", str(adapter)),))).start()


def test_plan_counts_the_adapters_memory(base: Path, adapters: dict[str, LoraAdapter]) -> None:
    hardware, profile = detect(Path(__file__).parent / "boards" / "rpi5-8gb"), load_profile("rpi5-8gb")
    without = plan_for(base, profile, hardware)
    lora = tuple(adapters.values())
    plan = plan_for(base, profile, hardware, lora=lora)
    size = sum(Path(a.path).stat().st_size for a in lora)
    assert plan.estimate.adapters == size and plan.estimate.ram == without.estimate.ram + size
    assert plan.settings.lora == lora
    assert any("adapters" in line for line in plan.describe())


def test_cli_run_with_a_lora(base: Path, adapters: dict[str, LoraAdapter], alone: dict[str | None, str], capsys: Capsys) -> None:
    house = adapters["house"].path
    assert main(["run", str(base), "--raw", "-p", PROMPT, "--max-tokens", "24", "--ctx", "256",
                 "--lora", f"house={house}"]) == 0
    assert capsys.readouterr().out.strip() == alone["house"].strip()
    assert main(["run", str(base), "--raw", "-p", PROMPT, "--lora", f"a={house}", "--lora", f"b={house}"]) != 0
    assert "choose one with --adapter NAME" in capsys.readouterr().err


# --- the prompt cache keyed on the adapter ------------------------------------------------------

LONG = "".join(f"Device {i}: {('kitchen light', 'hall heater', 'garage door')[i % 3]} is {('on', 'off')[i % 2]}. "
               for i in range(12))  # ~120 tokens: worth a saved state


def _long(adapter: str | None) -> Request:
    return Request(prompt=LONG, max_tokens=12, adapter=adapter)


def test_prompt_cache_keeps_each_adapters_states_apart_and_hits_for_each(
    base: Path, adapters: dict[str, LoraAdapter], tmp_path: Path
) -> None:
    settings = replace(SETTINGS, lora=tuple(adapters.values()), prompt_cache_mb=16)
    choices = (None, "house", "garden")
    with Engine(base, settings) as plain:  # no cache; every switch empties the context
        expected = {name: plain.complete(_long(name)).text for name in choices}
    assert len(set(expected.values())) == 3
    cache = PromptCacheConfig(dir=tmp_path, min_tokens=8)
    with Engine(base, settings, prompt_cache=cache) as engine:
        first = [engine.complete(_long(name)) for name in choices]
        again = [engine.complete(_long(name)) for name in choices]
        stats = engine.cache_stats()
    assert [r.text for r in first] == [r.text for r in again] == [expected[name] for name in choices]
    assert [r.timings.cached_prompt_tokens for r in first] == [0, 0, 0]  # no state of another adapter is used
    assert all(r.timings.cached_prompt_tokens >= first[0].prompt_tokens - 4 for r in again)
    assert (stats.hits, stats.misses, stats.restores, stats.saves) == (3, 3, 3, 3)
    labels = sorted(f.label for f in disk_files(tmp_path))
    assert [label.partition(" + ")[2] for label in labels] == ["", "LoRA garden x1.5", "LoRA house x1"]
    with Engine(base, settings, prompt_cache=cache) as restarted:  # an adapter's states are found on disk
        result = restarted.complete(_long("garden"))
    assert result.text == expected["garden"] and result.timings.cached_prompt_tokens >= result.prompt_tokens - 4


def test_serve_and_plan_count_the_adapters_given_with_lora(base: Path, adapters: dict[str, LoraAdapter], capsys: Capsys) -> None:
    specs = (f"house={adapters['house'].path}", f"garden={adapters['garden'].path}:1.5")
    settings = serve_settings(ModelConfig(path=base, profile="rpi5-8gb", lora=specs))  # what `serve --lora` plans
    assert settings.lora == tuple(adapters.values())
    assert main(["plan", str(base), "--profile", "rpi5-8gb", "--json", "--lora", specs[0], "--lora", specs[1]]) == 0
    planned = json.loads(capsys.readouterr().out)
    size_mb = sum(Path(a.path).stat().st_size for a in adapters.values()) / 2**20
    assert planned["estimate"]["adapters_mb"] == round(size_mb, 1) > 0
    assert [a["name"] for a in planned["settings"]["lora"]] == ["house", "garden"]
