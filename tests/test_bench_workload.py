"""`--workload assist`: Home Assistant's request, timed from the stream."""

from __future__ import annotations

import json

import pytest

from edgekit.bench.output import table_rows
from edgekit.bench.runner import BenchConfig, run_bench
from edgekit.bench.workload import (
    SPEECH_CHARS, assist_tools, complete_call, entities_overview, spoken, stream_times, system_prompt,
    tool_call_grammar,
)
from edgekit.engine.records import Chunk, Result, Timings

NAMES = {t["function"]["name"] for t in assist_tools()}


def _stream(pieces: list[tuple[str, float]], queue_ms: float = 5.0) -> tuple[list[Chunk], Result]:
    chunks = [Chunk("r", i, text, 1, ms) for i, (text, ms) in enumerate(pieces)]
    text = "".join(t for t, _ in pieces)
    return chunks, Result("r", text, "stop", 10, len(pieces), Timings(queue_ms=queue_ms, total_ms=999))


def test_home_assistants_intent_tools_and_entities_are_in_the_prompt():
    assert {"HassTurnOn", "HassTurnOff", "HassLightSet", "HassClimateSetTemperature"} <= NAMES
    overview = entities_overview(50)
    assert overview.count("- names: ") == 50 and len(set(overview.split("\n")[::4])) == 50  # unique names
    prompt = system_prompt(50, "12:00:00", assist_tools())
    assert prompt.startswith("Current time is 12:00:00.") and '"name":"HassLightSet"' in prompt


def test_the_grammar_holds_a_call_of_each_tool_then_the_answer():
    grammar = tool_call_grammar(assist_tools())
    assert grammar.startswith('root ::= "<tool_call>" call "</tool_call>" speech')
    assert all(f'\\"{name}\\"' in grammar for name in NAMES)


def test_times_come_from_the_chunk_where_each_thing_completes():
    call = '<tool_call>{"name": "HassTurnOn", "arguments": {"area": "Kitchen"}}</tool_call>'
    pieces = [("<tool_call>", 10), (call[11:40], 20), (call[40:], 30), ("Turned on the kitchen lights", 40),
              (" for you, and the hallway ones stay as they are.", 50), (" Anything else?", 60)]
    speech_ms, call_ms = stream_times(*_stream(pieces), NAMES)
    assert call_ms == 5 + 30  # queue + the chunk that closed the call
    assert len(spoken("".join(t for t, _ in pieces[:5]))) >= SPEECH_CHARS > len(spoken("".join(t for t, _ in pieces[:4])))
    assert speech_ms == 5 + 50


def test_no_call_and_a_short_answer_give_none():
    speech_ms, call_ms = stream_times(*_stream([("It is sunny.", 10)]), NAMES)
    assert speech_ms is None and call_ms is None
    assert not complete_call('<tool_call>{"name": "Unknown", "arguments": {}}</tool_call>', NAMES)
    assert not complete_call('<tool_call>{"name": "HassTurnOn"}</tool_call>', NAMES)  # no arguments
    assert spoken('<tool_call>{"name": "HassTu') == ""  # half a call is not spoken


@pytest.fixture(scope="module")
def assist_run(tiny_q4_k_m):
    config = BenchConfig(models=(tiny_q4_k_m,), repeat=1, warmup=0, threads=1, workload="assist", entities=4)
    return run_bench(config, progress=lambda _: None)


def test_assist_reports_the_four_times_cold_and_warm(assist_run):
    cold, warm = assist_run.measurements
    assert (cold.mode, warm.mode) == ("assist-cold", "assist-warm") and len(cold.samples) == 1
    for m in (cold, warm):
        for s in m.samples:
            assert s.prompt_tokens > 500 and s.gen_tokens > 20
            assert 0 < s.ttft_ms < s.tool_call_ms < s.speech_60_ms <= s.total_ms
    # the warm request differs only in the command: its instructions come from the prompt cache
    assert all(s.cached_prompt_tokens > 0.9 * s.prompt_tokens for s in warm.samples)
    assert all(s.cached_prompt_tokens < 0.1 * s.prompt_tokens for s in cold.samples)
    row = table_rows(assist_run)[0]
    assert row["60 chars ms"].isdigit() and row["tool call ms"].isdigit()


def test_assist_figures_are_in_the_json(assist_run):
    data = json.loads(json.dumps(assist_run.to_dict()))
    summary = data["measurements"][1]["summary"]
    assert summary["speech_60_ms"]["n"] == 1 and summary["tool_call_ms"]["n"] == 1
