"""The engine on the tiny preset: real llama.cpp in a real child process, random weights.

Random weights make greedy output arbitrary but deterministic, with byte tokens that
split UTF-8 characters: good material for the streaming tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import jinja2
import pytest
from gguf import GGUFReader
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgekit.engine import Chunk, Engine, Request, Result
from edgekit.engine.process import OPENMP_SPIN_COUNT, worker_environment
from edgekit.engine.text import TextAssembler
from edgekit.errors import BadRequest, ContextOverflow, EngineError, ModelFormatError, TooLarge
from edgekit.settings import Settings

# One thread: the suite shares two cores with everything else, and llama.cpp's spinning
# thread pool stalls badly when its threads are descheduled.
SETTINGS = Settings(n_ctx=1024, n_threads=1, n_threads_batch=1)
SYSTEM = "You are the assistant of a smart home. Answer briefly. " * 12
DEVICE_SCHEMA = {
    "type": "object",
    "properties": {
        "device": {"enum": ["kitchen_light", "hall_light", "heater"]},
        "action": {"enum": ["on", "off"]},
    },
    "required": ["device", "action"],
    "additionalProperties": False,
}


@pytest.fixture(scope="session")
def engine(tiny_gguf_f16: Path):
    with Engine(tiny_gguf_f16, SETTINGS) as e:
        yield e


@pytest.fixture
def own_engine(tiny_gguf_f16: Path):
    """An engine of its own, for tests that kill or starve it."""
    with Engine(tiny_gguf_f16, Settings(n_ctx=128, n_threads=1, n_threads_batch=1)) as e:
        yield e


def collect(engine: Engine, request: Request) -> tuple[list[Chunk], Result]:
    items = list(engine.stream(request))
    assert isinstance(items[-1], Result) and all(isinstance(c, Chunk) for c in items[:-1])
    return items[:-1], items[-1]


def raw_prompt_of(engine: Engine, n_tokens: int) -> str:
    """A raw prompt that is exactly ``n_tokens`` tokens (BOS included)."""
    for unit in (" the", " a", " and", " of", "."):
        base = len(engine.tokenize(unit * 10, special=True))
        if len(engine.tokenize(unit * 11, special=True)) == base + 1:  # one token per repeat
            text = unit * (10 + n_tokens - base)
            if len(engine.tokenize(text, special=True)) == n_tokens:
                return text
    raise AssertionError("no unit tokenizes to one token per repeat")


# --- text assembly (no model) --------------------------------------------------------------


def test_an_emoji_split_across_tokens_is_emitted_whole():
    text = TextAssembler()
    pieces = [text.feed(bytes([b])) for b in "a😀".encode()]
    assert pieces == ["a", "", "", "", "😀"]


def test_a_stop_string_split_across_tokens_is_never_emitted():
    text = TextAssembler(stop=("<END>",))
    out = [text.feed(p.encode()) for p in ["Hi <", "EN", "D> more"]]
    assert out == ["Hi ", "", ""] and text.stopped and text.finish() == ""


def test_a_held_stop_prefix_is_released_when_it_does_not_complete():
    text = TextAssembler(stop=("<END>",))
    assert [text.feed(b"a <E"), text.feed(b"x"), text.finish()] == ["a ", "<Ex", ""]


# --- the engine ------------------------------------------------------------------------------


def test_the_engine_describes_its_model(engine: Engine, tiny_gguf_f16: Path):
    info = engine.info
    assert info.path == str(tiny_gguf_f16) and info.n_ctx == SETTINGS.n_ctx
    assert info.architecture == "llama" and info.quant == "F16" and info.n_vocab > 0
    assert engine.alive()


def test_streamed_text_equals_complete_text_and_chunks_are_whole_characters(engine: Engine):
    request = dict(prompt="The kitchen light is", max_tokens=48)
    chunks, result = collect(engine, Request(**request))
    assert "".join(c.text for c in chunks) == result.text
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        chunk.text.encode("utf-8")  # a lone surrogate (half a character) would raise
        assert chunk.request_id == result.request_id and chunk.tokens >= 1
    assert result.finish_reason == "length" and result.completion_tokens == 48
    assert engine.complete(Request(**request)).text == result.text


def test_with_an_infinite_stream_interval_no_chunk_is_sent_and_the_result_has_it_all(engine: Engine):
    """Engine.complete and a daemon's whole answers: nobody reads chunks, so none costs a send and a wake-up."""
    request = Request(prompt="The kitchen light is", max_tokens=48)
    _, streamed = collect(engine, request)
    items = list(engine.stream(dataclasses.replace(request, stream_interval_ms=math.inf)))
    assert len(items) == 1 and isinstance(items[0], Result)
    assert items[0].text == streamed.text and items[0].completion_tokens == 48
    assert items[0].timings.time_to_first_token_ms > 0


def test_a_cancel_made_before_the_engine_knew_the_request_still_stops_it(engine: Engine):
    """The daemon's job flag is read once the request is registered: a cancel() that came first returned
    False (the generator had not started) and must not be lost."""
    request = Request(prompt="Tell me a long story:", max_tokens=300)
    assert not engine.cancel(request.id)  # too early: the engine does not know it yet
    items = list(engine.stream(request, cancelled=lambda: True))
    assert [type(i) for i in items] == [Result] and items[0].finish_reason == "cancelled"
    assert items[0].completion_tokens == 0
    assert engine.complete(Request(prompt="hello", max_tokens=3)).completion_tokens == 3  # and the engine is free


def test_the_first_chunk_goes_at_once_and_later_text_is_gathered_by_the_stream_interval(engine: Engine):
    every_token, _ = collect(engine, Request(prompt="The kitchen light is", max_tokens=64, stream_interval_ms=0))
    gathered, result = collect(engine, Request(prompt="The kitchen light is", max_tokens=64, stream_interval_ms=60_000))
    assert len(every_token) > 2 and len(gathered) == 2  # the first piece, then the rest at the end
    assert "".join(c.text for c in gathered) == result.text == "".join(c.text for c in every_token)
    # The first chunk left before any later token was made; every token keeps its own time.
    assert gathered[0].elapsed_ms <= gathered[1].token_ms[0]
    for chunk in gathered:
        assert len(chunk.token_ms) == chunk.tokens and list(chunk.token_ms) == sorted(chunk.token_ms)
        assert chunk.token_ms[-1] <= chunk.elapsed_ms


def test_gathered_chunks_are_at_least_the_stream_interval_apart(engine: Engine):
    chunks, result = collect(engine, Request(prompt="Tell me a long story:", max_tokens=400, stream_interval_ms=20))
    assert "".join(c.text for c in chunks) == result.text and len(chunks) >= 3
    sends = [c.elapsed_ms for c in chunks[:-1]]  # the last one goes when generation ends
    assert all(b - a >= 20 for a, b in zip(sends, sends[1:])), sends


def test_a_negative_stream_interval_is_a_bad_request(engine: Engine):
    with pytest.raises(BadRequest, match="stream_interval_ms"):
        list(engine.stream(Request(prompt="Hi", stream_interval_ms=-1)))


def test_a_prompt_one_token_over_the_context_is_refused_with_the_counts(own_engine: Engine):
    n_ctx = own_engine.info.n_ctx
    with pytest.raises(ContextOverflow, match=f"prompt is {n_ctx} tokens, context is {n_ctx}"):
        own_engine.complete(Request(prompt=raw_prompt_of(own_engine, n_ctx)))


def test_a_prompt_that_exactly_fits_runs_and_the_answer_is_capped_by_the_context(own_engine: Engine):
    n_ctx = own_engine.info.n_ctx
    result = own_engine.complete(Request(prompt=raw_prompt_of(own_engine, n_ctx - 1), max_tokens=50))
    assert result.prompt_tokens == n_ctx - 1
    assert result.completion_tokens <= 1 and result.finish_reason in ("length", "stop")


def test_a_prompt_over_its_max_prompt_tokens_is_too_large_with_the_counts(engine: Engine):
    prompt = raw_prompt_of(engine, 12)
    with pytest.raises(TooLarge, match="prompt is 12 tokens, the limit is 11"):
        engine.complete(Request(prompt=prompt, max_tokens=1, max_prompt_tokens=11))
    assert engine.complete(Request(prompt=prompt, max_tokens=1, max_prompt_tokens=12)).prompt_tokens == 12


def test_with_max_tokens_must_fit_the_context_holds_the_whole_answer_or_refuses(own_engine: Engine):
    n_ctx = own_engine.info.n_ctx
    prompt = raw_prompt_of(own_engine, n_ctx - 10)
    with pytest.raises(ContextOverflow, match=f"prompt \\({n_ctx - 10} tokens\\) plus max_tokens \\(11\\)"):
        own_engine.complete(Request(prompt=prompt, max_tokens=11, max_tokens_must_fit=True))
    assert own_engine.complete(Request(prompt=prompt, max_tokens=10, max_tokens_must_fit=True)).prompt_tokens == n_ctx - 10


def test_a_json_schema_constrains_the_output(engine: Engine):
    result = engine.complete(Request(prompt="turn on the kitchen light", json_schema=DEVICE_SCHEMA, max_tokens=200))
    assert result.finish_reason == "stop"
    answer = json.loads(result.text)
    assert set(answer) == {"device", "action"}
    assert answer["device"] in DEVICE_SCHEMA["properties"]["device"]["enum"]
    assert answer["action"] in ("on", "off")


def test_a_gbnf_grammar_constrains_the_output(engine: Engine):
    result = engine.complete(Request(prompt="Say yes or no:", grammar='root ::= "yes" | "no"', max_tokens=20))
    assert result.text in ("yes", "no") and result.finish_reason == "stop"


def test_a_broken_grammar_is_a_bad_request(engine: Engine):
    with pytest.raises(BadRequest, match="grammar"):
        engine.complete(Request(prompt="x", grammar="root ::= (", max_tokens=5))


def test_stop_sequences_end_the_answer_and_are_never_emitted(engine: Engine):
    free = engine.complete(Request(prompt="Once upon a time", max_tokens=40)).text
    stop = next(free[i : i + 3] for i in range(8, len(free) - 3) if "\ufffd" not in free[i : i + 3])
    chunks, result = collect(engine, Request(prompt="Once upon a time", max_tokens=40, stop=(stop,)))
    assert result.finish_reason == "stop"
    assert result.text == free[: free.index(stop)] == "".join(c.text for c in chunks)


def test_max_tokens_caps_the_answer(engine: Engine):
    result = engine.complete(Request(prompt="The kitchen light is", max_tokens=5))
    assert (result.completion_tokens, result.finish_reason) == (5, "length")


def test_the_prompt_is_the_chat_template_stored_in_the_gguf(engine: Engine, tiny_gguf_f16: Path):
    field = GGUFReader(tiny_gguf_f16).fields["tokenizer.chat_template"]
    source = bytes(field.parts[field.data[0]]).decode()
    env = ImmutableSandboxedEnvironment(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Lights on?"}]
    expected = env.from_string(source).render(
        messages=messages, bos_token=engine.info.bos_token, eos_token="</s>", add_generation_prompt=True
    )
    assert engine.render_prompt(messages) == expected
    result = engine.complete(Request(messages=tuple(messages), max_tokens=1))
    assert result.prompt_tokens == len(engine.tokenize(expected, add_bos=False, special=True))


def test_a_repeated_system_prompt_is_not_evaluated_again(engine: Engine):
    def ask(question: str) -> Result:
        messages = ({"role": "system", "content": SYSTEM}, {"role": "user", "content": question})
        return engine.complete(Request(messages=messages, max_tokens=2))

    ask("Is the hall light on?")
    second = ask("Turn off the heater.")
    system_tokens = len(engine.tokenize(engine.render_prompt([{"role": "system", "content": SYSTEM}]), add_bos=False))
    assert second.timings.cached_prompt_tokens >= system_tokens - 5
    assert second.timings.cached_prompt_tokens < second.prompt_tokens


def test_cancelling_during_generation_stops_within_one_token(engine: Engine):
    request = Request(prompt="Tell me a long story:", max_tokens=600, stream_interval_ms=0)
    t_before = time.perf_counter()
    stream = engine.stream(request)
    chunks: list[Chunk] = []
    t_cancel = 0.0
    for item in stream:
        if isinstance(item, Result):
            result = item
            break
        chunks.append(item)
        if len(chunks) == 3:
            assert engine.alive()  # the worker answers pings while it generates
            t_cancel = time.perf_counter()
            assert engine.cancel(request.id)
    assert result.finish_reason == "cancelled" and result.completion_tokens < 600
    assert "".join(c.text for c in chunks) == result.text
    # Tokens made (child clock) after the cancel: at most the one being evaluated when it came.
    start = t_before + result.timings.queue_ms / 1000
    late = [ms for c in chunks for ms in c.token_ms if start + ms / 1000 > t_cancel]
    assert len(late) <= 1, late


def test_cancelling_during_prompt_processing_stops_the_prompt(engine: Engine):
    prompt = raw_prompt_of(engine, 900)  # two n_batch pieces
    uncached = engine.complete(Request(prompt="." + prompt, max_tokens=1))  # how long the whole prompt takes
    request = Request(prompt=prompt, max_tokens=5)
    timer = threading.Timer(uncached.timings.prompt_ms / 1000 / 4, engine.cancel, args=(request.id,))
    timer.start()
    result = engine.complete(request)
    timer.join()
    assert result.finish_reason == "cancelled"
    assert result.prompt_tokens == 900 and result.completion_tokens == 0
    assert result.timings.prompt_ms < uncached.timings.prompt_ms
    full = engine.complete(Request(prompt=prompt, max_tokens=1))
    # Only whole batches stay in the KV cache: the aborted one left nothing half-done. (Before
    # it, the cache held the uncached request, which shares a short prefix with this prompt.)
    a, b = engine.tokenize("." + prompt, special=True), engine.tokenize(prompt, special=True)
    shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    extra = -(900 - shared) % 4  # re-evaluated so the batch makes whole rows of 4, when 1 or 2 do it
    assert full.timings.cached_prompt_tokens in (shared - extra if extra <= 2 else shared, SETTINGS.n_batch)


@pytest.mark.parametrize("tail", [1, 2, 3, 4, 5, 6])
def test_a_cached_prefix_is_cut_so_the_batch_makes_whole_rows_of_four(engine: Engine, tail: int):
    """llama.cpp's repacked matmuls run leftover batch rows (beyond a multiple of 4) one by one,
    each as slow as a generated token: re-evaluating 1 or 2 cached tokens is cheaper."""
    prompt = raw_prompt_of(engine, 40 + tail)
    engine.complete(Request(prompt=raw_prompt_of(engine, 40) + " zebra", max_tokens=1))
    result = engine.complete(Request(prompt=prompt, max_tokens=1))
    cached, evaluated = result.timings.cached_prompt_tokens, result.prompt_tokens - result.timings.cached_prompt_tokens
    assert result.prompt_tokens == 40 + tail and 36 <= cached <= 40
    assert evaluated % 4 in (0, 1)  # a leftover of 1 would need 3 more tokens: kept as it is
    assert evaluated <= tail + 2


def test_cancelling_a_request_that_waits_returns_a_cancelled_result(engine: Engine):
    first = Request(prompt="Tell me a long story:", max_tokens=300)
    waiting = Request(prompt="hello", max_tokens=5)
    stream = engine.stream(first)
    next(stream)  # the first request now holds the engine
    results: list[Result] = []
    worker = threading.Thread(target=lambda: results.append(engine.complete(waiting)))
    worker.start()
    while not engine.cancel(waiting.id):
        time.sleep(0.01)
    engine.cancel(first.id)
    assert list(stream)[-1].finish_reason == "cancelled"
    worker.join(timeout=30)
    assert results[0].finish_reason == "cancelled" and results[0].completion_tokens == 0


def test_abandoning_a_stream_leaves_the_engine_ready(engine: Engine):
    stream = engine.stream(Request(prompt="Tell me a long story:", max_tokens=500))
    next(stream)
    stream.close()
    assert engine.complete(Request(prompt="hello", max_tokens=3)).completion_tokens == 3


def test_a_killed_worker_fails_the_request_and_the_next_one_succeeds(own_engine: Engine):
    old_pid = own_engine.pid
    stream = own_engine.stream(Request(prompt="Tell me a long story:", max_tokens=100))
    next(stream)
    os.kill(old_pid, signal.SIGKILL)
    with pytest.raises(EngineError, match="SIGKILL"):
        list(stream)
    result = own_engine.complete(Request(prompt="hello", max_tokens=3))
    assert result.completion_tokens == 3 and own_engine.pid != old_pid and own_engine.alive()


def test_a_killed_worker_is_not_alive(own_engine: Engine):
    os.kill(own_engine.pid, signal.SIGKILL)
    time.sleep(0.2)
    assert not own_engine.alive()


def threads_cpu_ns(pid: int) -> int:
    """CPU time of all of a process's threads so far, in ns (schedstat: finer than clock ticks)."""
    return sum(int((task / "schedstat").read_text().split()[0]) for task in Path(f"/proc/{pid}/task").iterdir())


def cpu_after_an_answer_ns(engine: Engine) -> int:
    """What the worker's threads burn in the 0.3 s after an answer: OpenMP's spin-wait, nothing else."""
    engine.complete(Request(prompt="hello", max_tokens=2))
    before = threads_cpu_ns(engine.pid)
    time.sleep(0.3)
    return threads_cpu_ns(engine.pid) - before


def test_the_engines_threads_stop_spinning_soon_after_an_answer(tiny_gguf_f16: Path, monkeypatch):
    """libgomp's own spin (300,000 pauses, ~10 ms on x86) burns every core after each answer, the
    cores that the daemon and its client need then (benchmarks/bench_http.py); ours is 1/15 of it."""
    two_threads = Settings(n_ctx=128, n_threads=2, n_threads_batch=2)
    with Engine(tiny_gguf_f16, two_threads) as ours:
        environment = Path(f"/proc/{ours.pid}/environ").read_bytes().split(b"\0")
        assert f"GOMP_SPINCOUNT={OPENMP_SPIN_COUNT}".encode() in environment
        ours_ns = min(cpu_after_an_answer_ns(ours) for _ in range(3))
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")  # libgomp's default, as a user may set it: left alone
    with Engine(tiny_gguf_f16, two_threads) as libgomps:
        default_ns = min(cpu_after_an_answer_ns(libgomps) for _ in range(3))
    if default_ns < 2_000_000:
        pytest.skip(f"this CPU's spin-wait is short anyway ({default_ns / 1e6:.1f} ms of CPU after an answer)")
    assert ours_ns < default_ns / 4, (ours_ns, default_ns)


def test_a_users_own_openmp_settings_win():
    assert "GOMP_SPINCOUNT" not in worker_environment({"OMP_WAIT_POLICY": "active"})
    assert worker_environment({"GOMP_SPINCOUNT": "7", "PATH": "/bin"}) == {"GOMP_SPINCOUNT": "7", "PATH": "/bin"}
    assert worker_environment({"PATH": "/bin"}) == {"PATH": "/bin", "GOMP_SPINCOUNT": OPENMP_SPIN_COUNT}


def test_a_request_needs_exactly_one_of_messages_and_prompt(engine: Engine):
    with pytest.raises(BadRequest, match="exactly one"):
        engine.complete(Request(prompt="x", messages=({"role": "user", "content": "y"},)))


def test_timings_add_up(engine: Engine):
    result = engine.complete(Request(prompt="The hall light is", max_tokens=16))
    t = result.timings
    assert t.prompt_tokens == result.prompt_tokens and t.completion_tokens == result.completion_tokens
    assert 0 <= t.queue_ms <= t.time_to_first_token_ms <= t.total_ms
    assert t.prompt_tokens_per_s > 0 and t.generation_tokens_per_s > 0
    assert t.prompt_ms + t.generation_ms <= t.total_ms


def test_a_file_that_is_not_gguf_is_refused_before_loading(tmp_path: Path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelFormatError):
        Engine(bad).start()
