"""Tool-call generation speed against free generation, on the TinyLlama-shaped model.

Run: .venv/bin/python -m pytest benchmarks/bench_tools.py -q -s --benchmark-enable
(EDGEKIT_BENCH_TOOLS_MODEL=a.gguf measures a given file instead of the Q4_K_M fixture;
EDGEKIT_BENCH_THREADS sets the threads, 2 by default; EDGEKIT_BENCH_ROUNDS the rounds, 6.)

Every round, alternating on the same engine and the same prompt (the tools rendered by
edgekit's built-in tool prompt, since TinyLlama's template has none; one prompt, so its
KV cache is reused and only generation runs): a call to one of Home-Assistant-like
intent tools (HassLightSet, named in tool_choice), output constrained by a JSON schema
(tool_choice "none"), and text of the same length (tool_choice "none": a text answer, whose
grammar check costs one token test per token, well under 1 % here). Prints generation
tokens/s of each, the paired ratios against text (median of rounds, best against best),
and how many tokens each llama_decode carried in the call (the forced tokens' batching).

Goal: tool-call generation >= 1.0 x free generation (issue 12). Random weights cannot end
a free-form string, so the tools enumerate their names and areas (as Home Assistant can).
The goal is asserted only with EDGEKIT_BENCH_STRICT=1: on a shared box the rates move with
whatever else runs.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import pytest

from edgekit.bench.stats import compare_rounds
from edgekit.engine import Engine, Request, Result
from edgekit.settings import Settings

THREADS = int(os.environ.get("EDGEKIT_BENCH_THREADS", "2"))
ROUNDS = int(os.environ.get("EDGEKIT_BENCH_ROUNDS", "6"))
STRICT = os.environ.get("EDGEKIT_BENCH_STRICT") == "1"
NAMES = ["kitchen light", "hall light", "porch light", "heater", "garage door", "fan", "tv", "window blind"]
AREAS = ["kitchen", "hall", "living room", "bedroom", "garden", "garage"]
DOMAINS = ["light", "switch", "cover", "climate", "fan", "media_player"]
TARGET = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "enum": NAMES},
        "area": {"type": "string", "enum": AREAS},
        "domain": {"type": "array", "items": {"type": "string", "enum": DOMAINS}, "maxItems": 2},
    },
    "required": ["name"],
}
LEVEL = {**TARGET, "properties": {**TARGET["properties"], "brightness": {"type": "integer", "minimum": 0, "maximum": 100}}}
TOOLS = (
    {"type": "function", "function": {"name": "HassTurnOn", "description": "Turns on/opens a device or entity", "parameters": TARGET}},
    {"type": "function", "function": {"name": "HassTurnOff", "description": "Turns off/closes a device or entity", "parameters": TARGET}},
    {"type": "function", "function": {"name": "HassLightSet", "description": "Sets the brightness of a light", "parameters": LEVEL}},
    {"type": "function", "function": {"name": "GetLiveContext", "description": "The live state of the house", "parameters": {"type": "object", "properties": {}}}},
)
ASK = (
    {"role": "system", "content": "You are a voice assistant for Home Assistant. Answer in plain text, or call a tool."},
    {"role": "user", "content": "Turn on the porch light and dim it to 40 percent."},
)


@pytest.fixture(scope="module")
def engine(request):
    given = os.environ.get("EDGEKIT_BENCH_TOOLS_MODEL")
    path = Path(given) if given else request.getfixturevalue("tinyllama_q4_k_m")
    with Engine(path, Settings(n_ctx=2048, n_threads=THREADS, n_threads_batch=THREADS)) as e:
        e.warm_up()
        yield e


def _tokens_per_decode(engine: Engine, request: Request) -> tuple[Result, float]:
    """The result, and the tokens per llama_decode (tokens sharing one time came in one batch)."""
    times = [t for item in engine.stream(request) if not isinstance(item, Result) for t in item.token_ms]
    result = engine.complete(request)
    return result, len(times) / max(1, len(set(times)))


@pytest.mark.timeout(3600)
def test_tool_call_generation_against_free_generation(benchmark, engine):
    # One whole call (a named tool: random weights given "required" would go on calling until max_tokens).
    call = Request(messages=ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "HassLightSet"}}, max_tokens=160)
    first, per_decode = _tokens_per_decode(engine, call)
    n = first.completion_tokens
    schema = Request(messages=ASK, tools=TOOLS, tool_choice="none", json_schema=LEVEL, max_tokens=n)
    free = Request(messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=n)
    rates: dict[str, list[float]] = {"call": [], "schema": [], "free": []}
    for i in range(ROUNDS):  # alternating, the order rotated, so each kind sees the same load
        kinds = [("call", call), ("schema", schema), ("free", free)]
        for kind, request in kinds[i % 3 :] + kinds[: i % 3]:
            rates[kind].append(engine.complete(request).timings.generation_tokens_per_s)
    benchmark.pedantic(lambda: engine.complete(call), rounds=1, iterations=1)
    vs_call = compare_rounds(rates["call"], rates["free"])
    vs_schema = compare_rounds(rates["schema"], rates["free"])
    benchmark.extra_info.update(call=asdict(vs_call), schema=asdict(vs_schema), tokens=n, tokens_per_decode=per_decode)
    print(f"\n[tools, {THREADS} threads, {ROUNDS} rounds, {n} tokens: {first.tool_calls[0].name if first.tool_calls else 'no call'}"
          f" {first.tool_calls[0].arguments if first.tool_calls else ''}; {per_decode:.2f} tokens per decode in the call]"
          f"\n  tool call vs text, tok/s: {vs_call}\n  JSON schema vs text, tok/s: {vs_schema}"
          + "".join(f"\n  round {i + 1}: call {c:.2f}, schema {s:.2f}, text {f:.2f}"
                    for i, (c, s, f) in enumerate(zip(rates["call"], rates["schema"], rates["free"]))))
    assert first.finish_reason == "tool_calls"
    if STRICT:
        assert min(vs_call.median_ratio, vs_call.best_ratio) >= 1.0, vs_call
