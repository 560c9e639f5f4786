"""`edgekit bench --workload assist`: the exchange Home Assistant's voice assistant has with an LLM.

Home Assistant (helpers/llm.py) sends its instructions, the date and time, an overview of the
exposed entities, the intent tools (HassTurnOn, HassLightSet, ...) and the spoken command; it runs
the tool call the model makes, sends the result back, and starts text-to-speech once 60 characters
of the answer have streamed in. Each round does that twice: once with a new time line at the top
of the instructions (as Home Assistant's prompt changes every minute: nothing after the chat header
comes from the prompt cache) and once with only the command changed (the instructions are cached).

Measured from the first request's call, read off the engine's stream: time to first token, time to
the complete tool call (the chunk that carries it), time to the 60th character of the spoken answer
(in the second request's stream) and the total. The first request asks for a call (tool_choice
"required"): random weights would not choose one on their own; Home Assistant sends "auto".
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from importlib import resources
from typing import Any

from edgekit.bench.results import Measurement, Sample
from edgekit.engine.records import Chunk, Request, Result

SPEECH_CHARS = 60  # Home Assistant starts streaming text-to-speech after this many characters
CALL_TOKENS = 512  # a cap: the call's grammar ends it first (strings of at most 24 characters, some char by char)
ANSWER_TOKENS = 48  # the spoken answer after the tool's result: well past 60 characters
TOOL_RESULT = '{"success": true}'

COMMANDS = ("Turn on the kitchen lights", "Set the living room to 21 degrees", "Pause the music in the office",
            "Turn off all the lights upstairs", "Open the garage door", "Set the bedroom light to 30 percent")
_DOMAINS = (("light", "on"), ("switch", "off"), ("climate", "heat"), ("media_player", "playing"),
            ("cover", "closed"), ("sensor", "21.5"), ("binary_sensor", "off"), ("fan", "off"), ("lock", "locked"))
_AREAS = ("Kitchen", "Living Room", "Office", "Bedroom", "Hallway", "Garage", "Bathroom", "Garden")
_INSTRUCTIONS = (
    "You are a voice assistant for Home Assistant.\nAnswer questions about the world truthfully.\n"
    "Answer in plain text. Keep it simple and to the point.\n"
    "When controlling Home Assistant always call the intent tools. Use HassTurnOn to lock and HassTurnOff to "
    "unlock a lock. When controlling a device, prefer passing just name and domain. When controlling an area, "
    "prefer passing just area name and domain.\n"
)


def assist_tools() -> list[dict[str, Any]]:
    """Home Assistant's intent tools in OpenAI's shape (edgekit/data/assist_tools.json)."""
    return json.loads(resources.files("edgekit").joinpath("data/assist_tools.json").read_text())


def entities_overview(count: int) -> str:
    """``count`` exposed entities as Home Assistant lists them to the model (YAML lines)."""
    lines = []
    for i in range(count):
        domain, state = _DOMAINS[i % len(_DOMAINS)]
        area = _AREAS[(i // len(_DOMAINS)) % len(_AREAS)]
        name = f"{area} {domain.replace('_', ' ').title()} {i // (len(_DOMAINS) * len(_AREAS)) + 1}"
        lines.append(f"- names: {name}\n  domain: {domain}\n  state: '{state}'\n  areas: {area}")
    return "\n".join(lines)


def system_prompt(entities: int, clock: str) -> str:
    """Instructions, time and entities, as Home Assistant words them (the tools go in Request.tools)."""
    return (
        f"Current time is {clock}. Today's date is {time.strftime('%Y-%m-%d')}.\n{_INSTRUCTIONS}"
        "Static Context: An overview of the areas and the devices in this smart home:\n"
        f"{entities_overview(entities)}\n"
    )


def call_request(entities: int, command: str, clock: str, tools: list[dict[str, Any]]) -> Request:
    """The first request: the command, answered with a call."""
    return Request(
        messages=({"role": "system", "content": system_prompt(entities, clock)}, {"role": "user", "content": command}),
        tools=tuple(tools), tool_choice="required", max_tokens=CALL_TOKENS, temperature=0.0, seed=0,
        stream_interval_ms=0,  # every token's text as it comes: the times are exact
    )


def answer_request(first: Request, result: Result) -> Request:
    """The second request: the call and the tool's result sent back; the model answers in words."""
    turn = {"role": "assistant", "content": None, "tool_calls": [c.to_message() for c in result.tool_calls]}
    results = tuple({"role": "tool", "tool_call_id": c.id, "name": c.name, "content": TOOL_RESULT}
                    for c in result.tool_calls)
    return replace(first, messages=(*(first.messages or ()), turn, *results), tool_choice="none",
                   max_tokens=ANSWER_TOKENS)


def prompt_chars(entities: int) -> int:
    """Characters of the exchange (tools included), for sizing the context before the tokenizer loads."""
    return (len(system_prompt(entities, "00:00:00")) + len(json.dumps(assist_tools())) + max(map(len, COMMANDS))
            + CALL_TOKENS * 4 + len(TOOL_RESULT))


def call_ms(chunks: list[Chunk], result: Result) -> float | None:
    """When the first complete tool call arrived, from the call; None without one."""
    at = next((c.elapsed_ms for c in chunks if c.tool_calls), None)
    if at is None and result.tool_calls:
        return result.timings.total_ms
    return None if at is None else result.timings.queue_ms + at  # chunks count from the start of the run


def speech_ms(chunks: list[Chunk], result: Result) -> float | None:
    """When the 60th character of the answer arrived, from the call; None for a shorter answer."""
    text = ""
    for chunk in chunks:
        text += chunk.text
        if len(text) >= SPEECH_CHARS:
            return result.timings.queue_ms + chunk.elapsed_ms
    return None


def measure_assist(ctx: Any, engine: Any, progress: Any) -> list[Measurement]:
    """Cold and warm prompt-cache exchanges, one of each per round; two measurements."""
    from edgekit.bench.runner import engine_send, rounds_of, timed

    config, tools = ctx.config, assist_tools()
    send = timed(engine_send(engine))
    samples: dict[str, list[Sample]] = {"assist-cold": [], "assist-warm": []}
    for r, of in rounds_of(replace(config, repeat=config.repeat + config.warmup)):
        clock = time.strftime("%H:%M:%S") + f".{r}"  # a new first line: the cache holds nothing after it
        for mode, command in (("assist-cold", COMMANDS[r % 3]), ("assist-warm", COMMANDS[3 + r % 3])):
            progress(f"{ctx.facts.file_name} {mode} {config.entities} entities: round {r + 1}/{of}")
            sample = exchange(send, call_request(config.entities, command, clock, tools), r - config.warmup)
            if r >= config.warmup:  # the first rounds allocate the long prompt's buffers: not counted
                samples[mode].append(sample)
    return [_measurement(ctx, mode, found) for mode, found in samples.items()]


def exchange(send: Any, first: Request, index: int) -> Sample:
    """The call, then the answer: one Sample whose span, tokens and e2e cover both requests."""
    from edgekit.bench.runner import sample_from

    chunks, result, e2e_ms, started, ended = send(first)
    sample = sample_from(chunks, result, e2e_ms, started, ended, index)
    speech = None
    if result.tool_calls:
        more, answer, _, answer_started, ended = send(answer_request(first, result))
        gen_tokens = sample.gen_tokens + answer.completion_tokens
        spoken = speech_ms(more, answer)
        speech = None if spoken is None else (answer_started - started) * 1000 + spoken
        sample = replace(sample, gen_tokens=gen_tokens)
    return replace(sample, tool_call_ms=call_ms(chunks, result), speech_60_ms=speech, ended_s=ended,
                   e2e_ms=(ended - started) * 1000)


def _measurement(ctx: Any, mode: str, samples: list[Sample]) -> Measurement:
    from edgekit.bench.runner import measurement_from

    prompt = sorted(s.prompt_tokens for s in samples)[len(samples) // 2] if samples else 0
    return replace(measurement_from(replace(ctx, mode=mode), prompt, 1, samples),
                   gen_tokens=CALL_TOKENS + ANSWER_TOKENS, repeats=len(samples))
