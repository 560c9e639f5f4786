"""`edgekit bench --workload assist`: the request Home Assistant's voice assistant sends.

Home Assistant (helpers/llm.py) sends its instructions, the date and time, an overview of the
exposed entities, the intent tools (HassTurnOn, HassLightSet, ...) and the spoken command, and
starts text-to-speech once 60 characters of the answer have streamed in. Each round sends two
requests: one with a new time line at the top of the instructions (as Home Assistant's prompt
changes every minute: nothing after the chat header can come from the prompt cache) and one
that differs only in the command (the instructions come from the cache).

The engine of this branch has no tool calls, so the model is held to a tool call by a grammar:
``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` (one of Home Assistant's intent
schemas) and then at least 60 characters of spoken answer. The times come from the stream:
time to first token, to the 60th character of the answer, to the end of a complete, parseable
tool call, and the total.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from importlib import resources
from typing import Any

from edgekit.bench.results import Measurement, Sample
from edgekit.engine.records import Chunk, Request, Result

SPEECH_CHARS = 60  # Home Assistant starts streaming text-to-speech after this many characters
ANSWER_TOKENS = 320  # a cap: the grammar ends the answer first (a call's strings are at most 24 characters)
SPEECH_MAX_CHARS = 120  # "Turned on the kitchen lights." is shorter; random weights need a bound
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


def system_prompt(entities: int, clock: str, tools: list[dict[str, Any]]) -> str:
    """Instructions, time, entities and the tools as text (the engine has no `tools` field yet)."""
    listed = "\n".join(json.dumps(t["function"], separators=(",", ":")) for t in tools)
    return (
        f"Current time is {clock}. Today's date is {time.strftime('%Y-%m-%d')}.\n{_INSTRUCTIONS}"
        "Static Context: An overview of the areas and the devices in this smart home:\n"
        f"{entities_overview(entities)}\n\n# Tools\nYou may call one of these functions:\n<tools>\n{listed}\n</tools>\n"
        'Call it as <tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call>, '
        "then say in one sentence what you did."
    )


def tool_call_grammar(tools: list[dict[str, Any]]) -> str:
    """GBNF: one call of one of ``tools`` in <tool_call> tags, then 60 to 120 characters of answer
    (the grammar's end leaves only end-of-text: random weights would not stop on their own)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf  # llama.cpp's own schema converter

    calls = {"oneOf": [{
        "type": "object", "required": ["name", "arguments"],
        "properties": {"name": {"const": t["function"]["name"]}, "arguments": t["function"]["parameters"]},
    } for t in tools]}
    rules = re.sub(r"^root ::=", "call ::=", json_schema_to_gbnf(json.dumps(calls)), flags=re.MULTILINE)
    return (f'root ::= "<tool_call>" call "</tool_call>" speech\n'
            f"speech ::= [^<]{{{SPEECH_CHARS},{SPEECH_MAX_CHARS}}}\n{rules}")


def assist_request(entities: int, command: str, clock: str, tools: list[dict[str, Any]], grammar: str) -> Request:
    return Request(
        messages=({"role": "system", "content": system_prompt(entities, clock, tools)},
                  {"role": "user", "content": command}),
        max_tokens=ANSWER_TOKENS, temperature=0.0, seed=0, grammar=grammar,
        stream_interval_ms=0,  # every token's text as it comes: the 60th character's time is exact
    )


def prompt_chars(entities: int) -> int:
    """Characters of the request, for sizing the context before the tokenizer is loaded."""
    tools = assist_tools()
    return len(system_prompt(entities, "00:00:00", tools)) + max(len(c) for c in COMMANDS)


def stream_times(chunks: list[Chunk], result: Result, tool_names: set[str]) -> tuple[float | None, float | None]:
    """(ms to the 60th character of the spoken answer, ms to a complete tool call), from the call,
    read off the stream's chunks; None for what never came."""
    speech_ms = call_ms = None
    text = ""
    for chunk in chunks:
        at = result.timings.queue_ms + chunk.elapsed_ms  # chunks count from the start of the run
        text += chunk.text
        if call_ms is None and (getattr(chunk, "tool_calls", ()) or complete_call(text, tool_names)):
            call_ms = at
        if speech_ms is None and len(spoken(text)) >= SPEECH_CHARS:
            speech_ms = at
    return speech_ms, call_ms


def complete_call(text: str, tool_names: set[str]) -> bool:
    """The text holds a whole <tool_call> whose JSON names a known tool and has arguments."""
    match = re.search(r"<tool_call>(.*?)</tool_call>", text, re.DOTALL)
    if not match:
        return False
    try:
        call = json.loads(match.group(1))
    except ValueError:
        return False
    return isinstance(call, dict) and call.get("name") in tool_names and isinstance(call.get("arguments"), dict)


def spoken(text: str) -> str:
    """The answer a person hears: the text outside tool-call tags (an open call is not spoken)."""
    return re.sub(r"<tool_call>.*?(</tool_call>|$)", "", text, flags=re.DOTALL)


def measure_assist(ctx: Any, engine: Any, progress: Any) -> list[Measurement]:
    """Cold and warm prompt-cache requests, one of each per round; two measurements."""
    from edgekit.bench.runner import engine_send, rounds_of, sample_from, timed

    config, tools = ctx.config, assist_tools()
    grammar, names = tool_call_grammar(tools), {t["function"]["name"] for t in tools}
    send = timed(engine_send(engine))
    samples: dict[str, list[Sample]] = {"assist-cold": [], "assist-warm": []}
    for r, of in rounds_of(replace(config, repeat=config.repeat + config.warmup)):
        clock = time.strftime("%H:%M:%S") + f".{r}"  # a new first line: the cache holds nothing after it
        for mode, command in (("assist-cold", COMMANDS[r % 3]), ("assist-warm", COMMANDS[3 + r % 3])):
            progress(f"{ctx.facts.file_name} {mode} {config.entities} entities: round {r + 1}/{of}")
            chunks, result, e2e_ms, started, ended = send(assist_request(config.entities, command, clock, tools, grammar))
            speech_ms, call_ms = stream_times(chunks, result, names)
            if r >= config.warmup:  # the first rounds allocate the long prompt's buffers: not counted
                sample = sample_from(chunks, result, e2e_ms, started, ended, r - config.warmup)
                samples[mode].append(replace(sample, speech_60_ms=speech_ms, tool_call_ms=call_ms))
    return [_measurement(ctx, mode, found) for mode, found in samples.items()]


def _measurement(ctx: Any, mode: str, samples: list[Sample]) -> Measurement:
    from edgekit.bench.runner import measurement_from

    prompt = sorted(s.prompt_tokens for s in samples)[len(samples) // 2] if samples else 0
    return replace(measurement_from(replace(ctx, mode=mode), prompt, 1, samples),
                   gen_tokens=ANSWER_TOKENS, repeats=len(samples))
