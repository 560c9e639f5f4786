"""`--workload assist`: Home Assistant's exchange (call, tool result, spoken answer), timed from the stream."""

from __future__ import annotations

import json

import pytest

from edgekit.bench.output import table_rows
from edgekit.bench.runner import BenchConfig, run_bench
from edgekit.bench.workload import (
    SPEECH_CHARS, TOOL_RESULT, answer_request, assist_tools, call_ms, call_request, entities_overview, speech_ms,
    system_prompt,
)
from edgekit.engine.records import Chunk, Result, Timings, ToolCall

NAMES = {t["function"]["name"] for t in assist_tools()}
CALL = ToolCall("call_1", "HassTurnOn", {"area": "Kitchen", "domain": ["light"]})


def _result(pieces: list[tuple[str, float]], calls: tuple[ToolCall, ...] = (), queue_ms: float = 5.0) -> Result:
    return Result("r", "".join(t for t, _ in pieces), "tool_calls" if calls else "stop", 10, len(pieces),
                  Timings(queue_ms=queue_ms, total_ms=999), tool_calls=calls)


def test_home_assistants_intent_tools_and_entities_are_in_the_request():
    assert {"HassTurnOn", "HassTurnOff", "HassLightSet", "HassClimateSetTemperature"} <= NAMES
    overview = entities_overview(50)
    assert overview.count("- names: ") == 50 and len(set(overview.split("\n")[::4])) == 50  # unique names
    request = call_request(50, "Turn on the kitchen lights", "12:00:00", assist_tools())
    assert request.messages[0]["content"].startswith("Current time is 12:00:00.")
    assert request.tool_choice == "required" and len(request.tools) == len(NAMES)
    assert system_prompt(50, "12:00:00") == request.messages[0]["content"]


def test_the_tool_result_goes_back_and_the_answer_is_text():
    first = call_request(3, "Turn on the kitchen lights", "12:00:00", assist_tools())
    second = answer_request(first, _result([], (CALL,)))
    turn, result = second.messages[-2:]
    assert turn["tool_calls"][0]["function"]["name"] == "HassTurnOn"
    assert result == {"role": "tool", "tool_call_id": "call_1", "name": "HassTurnOn", "content": TOOL_RESULT}
    assert second.tool_choice == "none" and second.messages[:2] == first.messages


def test_times_come_from_the_chunk_where_each_thing_arrives():
    chunks = [Chunk("r", 0, "", 30, 40.0, tool_calls=(CALL,))]
    assert call_ms(chunks, _result([], (CALL,))) == 5 + 40  # queue + the chunk that carried the call
    pieces = [("Turned on the kitchen lights", 10), (" for you, and the hallway ones stay as they are.", 20),
              (" Anything else?", 30)]
    answer = [Chunk("r", i, text, 1, ms) for i, (text, ms) in enumerate(pieces)]
    assert len(pieces[0][0]) < SPEECH_CHARS <= len(pieces[0][0] + pieces[1][0])
    assert speech_ms(answer, _result(pieces)) == 5 + 20


def test_no_call_and_a_short_answer_give_none():
    assert call_ms([Chunk("r", 0, "It is sunny.", 3, 10.0)], _result([("It is sunny.", 10)])) is None
    assert speech_ms([Chunk("r", 0, "It is sunny.", 3, 10.0)], _result([("It is sunny.", 10)])) is None


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
            assert 0 < s.ttft_ms < s.tool_call_ms < s.speech_60_ms <= s.e2e_ms
    # the warm request differs only in the command: its instructions come from the prompt cache
    assert all(s.cached_prompt_tokens > 0.9 * s.prompt_tokens for s in warm.samples)
    assert all(s.cached_prompt_tokens < 0.1 * s.prompt_tokens for s in cold.samples)
    row = table_rows(assist_run)[0]
    assert row["60 chars ms"].isdigit() and row["tool call ms"].isdigit()


def test_assist_figures_are_in_the_json(assist_run):
    data = json.loads(json.dumps(assist_run.to_dict()))
    summary = data["measurements"][1]["summary"]
    assert summary["speech_60_ms"]["n"] == 1 and summary["tool_call_ms"]["n"] == 1
