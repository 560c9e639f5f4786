"""The prompt cache on the tiny preset: saved states restored across engine restarts, bad files refused.

The baseline is an engine without a cache whose context holds nothing of the prompt, so
"equal text" compares a restored state with a full evaluation.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from edgekit.engine import Engine, Request, Result
from edgekit.engine import cache_file
from edgekit.engine.prompt_cache import PromptCacheConfig, clear, disk_files
from edgekit.settings import Settings

SETTINGS = Settings(n_ctx=1024, n_threads=1, n_threads_batch=1, prompt_cache_mb=16)
# A stand-in for Home Assistant's system prompt (~410 tokens); varied text, so the random
# weights answer each prompt differently and a wrong state shows in the text.
PREFIX = "".join(f"Device {i}: {('kitchen light', 'hall heater', 'garage door', 'porch lamp')[i % 4]} in room "
                 f"{i * 37 % 11} is {('on', 'off', 'open')[i % 3]}. " for i in range(24))
OTHER = "".join(f"Sensor {i} in zone {i * 13 % 7} reads {i * 1.5:.1f} degrees. " for i in range(30))
ASK = dict(max_tokens=12)


def cached_engine(model: Path, folder: Path, settings: Settings = SETTINGS, **config) -> Engine:
    return Engine(model, settings, prompt_cache=PromptCacheConfig(dir=folder, min_tokens=8, **config))


def fill(model: Path, folder: Path, prompt: str = PREFIX, settings: Settings = SETTINGS) -> Path:
    """Warm ``prompt`` into ``folder`` with an engine that then exits; the one file it wrote."""
    with cached_engine(model, folder, settings) as engine:
        result = engine.warm(Request(prompt=prompt))
        assert result.completion_tokens == 0 and result.text == ""
    (path,) = cache_file.files_in(folder)
    return path


@pytest.fixture(scope="module")
def baseline(tiny_gguf_f16: Path):
    """Answers of an engine with no cache, the context emptied before each prompt."""
    answers: dict[str, Result] = {}
    with Engine(tiny_gguf_f16, SETTINGS) as engine:
        def answer(prompt: str) -> Result:
            if prompt not in answers:
                engine.complete(Request(prompt="\n9\n9", max_tokens=1))  # nothing of the prompt stays
                answers[prompt] = engine.complete(Request(prompt=prompt, **ASK))
                assert answers[prompt].timings.cached_prompt_tokens <= 1  # at most the BOS
            return answers[prompt]
        yield answer


@pytest.fixture(scope="module")
def filled(tiny_gguf_f16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding PREFIX's state; tests copy it."""
    folder = tmp_path_factory.mktemp("filled")
    fill(tiny_gguf_f16, folder)
    return folder


def copy_of(filled: Path, tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "cache"
    shutil.copytree(filled, folder)
    (path,) = cache_file.files_in(folder)
    return folder, path


@pytest.mark.parametrize("shared", ["none", "some", "all", "all and more"])
def test_greedy_text_after_a_restart_equals_the_text_without_a_cache(
    tiny_gguf_f16: Path, filled: Path, tmp_path: Path, baseline, shared: str
):
    prompt = {"none": "Zebras " + PREFIX, "some": PREFIX[: len(PREFIX) // 2] + " zebra crossing",
              "all": PREFIX, "all and more": PREFIX + " Turn off the heater."}[shared]
    folder, _path = copy_of(filled, tmp_path)
    with cached_engine(tiny_gguf_f16, folder) as engine:
        result = engine.complete(Request(prompt=prompt, **ASK))
        stats = engine.cache_stats()
    assert result.text == baseline(prompt).text and result.finish_reason == baseline(prompt).finish_reason
    if shared == "none":
        assert result.timings.cached_prompt_tokens <= 1 and stats.restores == 0 and stats.misses == 1
    else:
        assert stats.restores == 1 and stats.hits == 1
        assert result.timings.cached_prompt_tokens >= (150 if shared == "some" else 400)


def test_alternating_prefixes_are_each_restored_after_their_first_request(tiny_gguf_f16: Path, tmp_path: Path, baseline):
    a, b = PREFIX + " A?", OTHER + " B?"
    with cached_engine(tiny_gguf_f16, tmp_path) as engine:
        results = [engine.complete(Request(prompt=p, **ASK)) for p in (a, b, a, b, a)]
        stats = engine.cache_stats()
    assert [r.text for r in results] == [baseline(p).text for p in (a, b, a, b, a)]
    assert [r.timings.cached_prompt_tokens > 300 for r in results] == [False, False, True, True, True]
    assert stats.restores == 3 and stats.saves == 2


def test_a_warm_request_evaluates_the_prompt_once_and_generates_nothing(tiny_gguf_f16: Path, tmp_path: Path):
    with cached_engine(tiny_gguf_f16, tmp_path) as engine:
        first = engine.warm(Request(prompt=PREFIX))
        again = engine.warm(Request(prompt=PREFIX))
    assert first.finish_reason == "stop" and first.completion_tokens == 0 and first.timings.cached_prompt_tokens <= 1
    assert again.timings.cached_prompt_tokens >= first.prompt_tokens - 3


def test_warming_at_boot_restores_the_most_recent_state_into_the_context(tiny_gguf_f16: Path, filled: Path, tmp_path: Path):
    folder, _path = copy_of(filled, tmp_path)
    with cached_engine(tiny_gguf_f16, folder) as engine:
        warmed = engine.warm_cache(recent=4)
        result = engine.complete(Request(prompt=PREFIX + " Hello", **ASK))
        stats = engine.cache_stats()
    assert warmed["states"] == 1 and warmed["bytes"] > 0
    assert stats.restores == 1  # at boot; the request found the prefix in the context
    assert result.timings.cached_prompt_tokens >= result.prompt_tokens - 6


def truncate(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(0, len(data))])


def flip(path: Path, rng: random.Random, where: str) -> None:
    data = bytearray(path.read_bytes())
    header_end = cache_file.read_header(path, bytes(data[12:44])).payload_offset
    at = rng.randrange(8, header_end) if where == "header" else rng.randrange(header_end, len(data))
    data[at] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated-1", "truncated-2", "truncated-3", "header-flip", "payload-flip-1",
                                    "payload-flip-2", "garbage"])
def test_a_damaged_file_is_ignored_with_a_warning_deleted_and_the_answer_is_unchanged(
    tiny_gguf_f16: Path, filled: Path, tmp_path: Path, baseline, capfd, damage: str
):
    folder, path = copy_of(filled, tmp_path)
    rng = random.Random(damage)
    if damage.startswith("truncated"):
        truncate(path, rng)
    elif damage == "garbage":
        path.write_bytes(rng.randbytes(path.stat().st_size))
    else:
        flip(path, rng, "header" if damage == "header-flip" else "payload")
    prompt = PREFIX + " Is it on?"
    with cached_engine(tiny_gguf_f16, folder) as engine:
        result = engine.complete(Request(prompt=prompt, **ASK))
        stats = engine.cache_stats()
    assert result.text == baseline(prompt).text
    assert stats.dropped == 1 and stats.restores == 0
    assert capfd.readouterr().err.count("prompt cache: ignoring and deleting") == 1
    assert not path.exists()


@pytest.mark.parametrize("other", ["another model", "other cache types"])
def test_a_state_made_for_another_model_or_kv_type_is_never_restored(
    tiny_gguf_f16: Path, tiny_q8_0: Path, tmp_path: Path, baseline, capfd, other: str
):
    model, settings = (tiny_q8_0, SETTINGS) if other == "another model" else (
        tiny_gguf_f16, Settings(**{**SETTINGS.__dict__, "type_k": "q8_0", "type_v": "q8_0"}))
    foreign = fill(model, tmp_path / "foreign", settings=settings)
    ours = fill(tiny_gguf_f16, tmp_path / "ours")
    foreign.replace(ours)  # the foreign state under our name: only its header can tell
    prompt = PREFIX + " Is it on?"
    with cached_engine(tiny_gguf_f16, tmp_path / "ours") as engine:
        result = engine.complete(Request(prompt=prompt, **ASK))
        stats = engine.cache_stats()
    assert result.text == baseline(prompt).text and stats.restores == 0 and stats.dropped == 1
    assert "made for another model or other KV-cache settings" in capfd.readouterr().err


def test_two_models_share_a_folder_without_touching_each_others_states(tiny_gguf_f16: Path, tiny_q8_0: Path, tmp_path: Path):
    fill(tiny_q8_0, tmp_path)
    with cached_engine(tiny_gguf_f16, tmp_path) as engine:
        result = engine.complete(Request(prompt=PREFIX + " Hi", **ASK))
        stats = engine.cache_stats()
    assert stats.restores == 0 and stats.dropped == 0 and result.timings.cached_prompt_tokens <= 1
    assert len(cache_file.files_in(tmp_path)) == 2  # theirs kept, ours added


def test_the_ram_budget_and_the_disk_cap_hold_over_50_prefixes(tiny_gguf_f16: Path, tmp_path: Path):
    from edgekit.gguf_file import validate
    from edgekit.memory import estimate_memory, process_memory_bytes

    settings = Settings(**{**SETTINGS.__dict__, "prompt_cache_mb": 1})
    state_bytes = 512 * 200  # tiny: 2 layers x (K + V) x 64 f16 values per token, ~200 tokens
    disk_mb = 2
    with cached_engine(tiny_gguf_f16, tmp_path, settings, disk_mb=disk_mb) as engine:
        for i in range(50):
            engine.complete(Request(prompt=f"{i} {i * 7919} " + " of" * 190, max_tokens=1))
            stats = engine.cache_stats()
            assert stats.ram_bytes <= 1 << 20
        engine.complete(Request(prompt="flush", max_tokens=1))
        rss = process_memory_bytes(engine.pid)
        stats = engine.cache_stats()
    assert stats.saves == 50 and stats.entries >= (disk_mb << 20) // state_bytes - 2
    on_disk = sum(f.size for f in disk_files(tmp_path))
    assert on_disk <= disk_mb << 20 and len(disk_files(tmp_path)) < 50
    planned = estimate_memory(validate(tiny_gguf_f16), settings).ram
    # The plan is calibrated on llama.cpp in-process (tests/test_plan.py); the engine's worker also holds
    # its own Python imports (jinja2, the tool-call grammar code, the cache): ~16 MiB more.
    assert rss <= planned * 1.15 + 16 * 2**20, (rss, planned)


def test_listing_and_clearing_a_folder(tiny_gguf_f16: Path, filled: Path, tmp_path: Path):
    folder, path = copy_of(filled, tmp_path)
    (listed,) = disk_files(folder)
    assert listed.path == path and listed.tokens > 200 and tiny_gguf_f16.name in listed.label
    assert clear(folder) == (1, listed.size)
    assert disk_files(folder) == []


def test_edgekit_cache_list_and_clear_find_the_daemons_folder_from_its_config(
    tiny_gguf_f16: Path, filled: Path, tmp_path: Path, capsys
):
    from edgekit.cli import main

    shutil.copytree(filled, tmp_path / "state" / "prompt-cache")
    config = tmp_path / "edgekit.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n')
    assert main(["cache", "list", "--config", str(config)]) == 0
    listed = capsys.readouterr().out
    assert "1 saved states" in listed and tiny_gguf_f16.name in listed and "tokens" in listed
    assert main(["cache", "clear", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("removed 1 saved states")
    assert main(["cache", "list", "--dir", str(tmp_path / "state" / "prompt-cache")]) == 0
    assert "0 saved states" in capsys.readouterr().out


def test_a_state_saved_while_a_request_runs_reaches_the_disk_only_after_it(tmp_path: Path):
    from edgekit.engine.prompt_cache import Counters, PromptCache

    cache = PromptCache(PromptCacheConfig(dir=tmp_path, min_tokens=8), b"k" * 32, "label", 64 << 20, Counters())
    state = bytearray(random.Random(0).randbytes(9 << 20))  # three pieces of cache_file.PIECE
    cache.hold_writes()
    cache.save(np.arange(100, dtype=np.int32), state)
    time.sleep(0.5)
    assert cache_file.files_in(tmp_path) == [] and list(tmp_path.glob(".*.tmp")) == []
    cache.release_writes()
    cache.close()
    (path,) = cache_file.files_in(tmp_path)
    header = cache_file.read_header(path, b"k" * 32)
    assert cache_file.read_payload(path, header) == state and list(header.tokens) == list(range(100))
