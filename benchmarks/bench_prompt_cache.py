"""The prompt cache on the TinyLlama-shaped model at Q4_K_M, a ~1,000-token system prompt, through the daemon.

Run: .venv/bin/python -m pytest benchmarks/bench_prompt_cache.py -q -s --benchmark-enable

Restart: each round clears the cache folder, starts `edgekit serve`, asks once (cold: no
state anywhere), stops it with SIGTERM, starts it again (the cache is warmed before
online: the time it adds is read from the daemon's log) and asks the same again. The two
requests of a round run under the same load, so the ratio is taken per round.
Alternation: one daemon, two system prompts A, B, A, B, ...: every request after the first
of each prefix against the cold first one of the same prefix.
Goals: warm / cold time to first token <= 0.1 in both; asserted only with EDGEKIT_BENCH_STRICT=1.

"same text" is reported, not asserted: on Q4_K_M llama.cpp's CPU matmuls take other paths
for a batch of a few rows than for a full one, so the last prompt tokens' logits move in
the last bits, and random weights have near-ties everywhere. Keeping the prefix in the
context (no prompt cache involved) changes the text the same way; tests/test_prompt_cache.py
shows restored text equal token for token on the tiny model.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import time
from pathlib import Path

import pytest

from edgekit.engine.records import Result
from edgekit.serve.mqtt.client import RequestClient
from tests.serve_support import DaemonProcess

ROUNDS = int(os.environ.get("EDGEKIT_BENCH_ROUNDS", "3"))
ALTERNATIONS = 8  # A, B, A, B, ...
GOAL = 0.1
STRICT = os.environ.get("EDGEKIT_BENCH_STRICT") == "1"
# EDGEKIT_BENCH_THREADS=1 runs the daemons with one thread: on a box loaded far beyond its
# cores, two llama.cpp threads wait for each other at every graph node (seconds per small batch).
THREADS = os.environ.get("EDGEKIT_BENCH_THREADS")


def system_prompt(kind: str, lines: int = 30) -> str:
    """A Home Assistant-like system prompt: instructions, then the exposed entities (~1,000 tokens)."""
    head = (f"You are the voice assistant of a smart home ({kind}). Answer in one short sentence. "
            "Use the tools to control devices; never invent an entity. Current state of the house:\n")
    rooms = ("kitchen", "hall", "living room", "bedroom", "office", "garage", "porch", "bathroom")
    body = "".join(f"- light.{rooms[i % 8].replace(' ', '_')}_{i} ({rooms[i % 8]} light {i}): "
                   f"{('on', 'off')[i % 2]}, brightness {i * 7 % 100} percent, area {rooms[(i * 3) % 8]}\n"
                   for i in range(lines))
    return head + body


def model_section(folder: Path) -> dict[str, object]:
    """[model] for the bench daemons: ctx 2048, and a profile with THREADS threads when asked."""
    if not THREADS:
        return {"ctx": 2048}
    folder.mkdir(parents=True, exist_ok=True)
    generic = (Path(__file__).resolve().parents[1] / "profiles" / "cpu-generic.toml").read_text()
    profile = folder.parent / f"bench-threads-{THREADS}.toml"
    profile.write_text(generic.replace('name = "cpu-generic"', f'name = "bench-threads-{THREADS}"')
                       .replace('threads = "auto"', f"threads = {THREADS}")
                       .replace('threads_batch = "auto"', f"threads_batch = {THREADS}"))
    return {"ctx": 2048, "profile": str(profile)}


def ask(client: RequestClient, system: str, question: str = "Is the kitchen light on?") -> Result:
    """The answer's Result (an error answer raises its error)."""
    body = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            "max_tokens": 4}
    return client.ask(body, timeout_s=600).result


def started(daemon: DaemonProcess) -> float:
    t0 = time.monotonic()
    daemon.start()
    return time.monotonic() - t0


def warm_ms(daemon: DaemonProcess) -> float:
    found = re.findall(r"prompt cache: warmed in (\d+) ms", daemon.log.read_text())
    return float(found[-1])


def restart_round(model: Path, broker, folder: Path) -> dict[str, float]:
    shutil.rmtree(folder, ignore_errors=True)
    daemon = DaemonProcess(folder, model, broker.url, "cachebench", model=model_section(folder),
                           daemon={"metrics_interval_s": 0.0, "drain_timeout_s": 5.0})
    start_cold = started(daemon)
    with RequestClient(broker.url, daemon.prefix) as client:
        cold = ask(client, system_prompt("A"))
    assert daemon.stop() == 0, daemon.output()
    start_warm = started(daemon)
    try:
        with RequestClient(broker.url, daemon.prefix) as client:
            warm = ask(client, system_prompt("A"))
    finally:
        assert daemon.stop() == 0, daemon.output()
    return {"same_text": warm.text == cold.text, "cold_ms": cold.timings.time_to_first_token_ms,
            "warm_ms": warm.timings.time_to_first_token_ms,
            "prompt_tokens": cold.prompt_tokens, "cached": warm.timings.cached_prompt_tokens,
            "warm_up_ms": warm_ms(daemon), "start_cold_s": start_cold, "start_warm_s": start_warm}


def alternation(model: Path, broker, folder: Path) -> list[tuple[str, float, int]]:
    """(prefix, TTFT ms, cached tokens) for A, B, A, B, ... on one daemon with an empty cache."""
    shutil.rmtree(folder, ignore_errors=True)
    daemon = DaemonProcess(folder, model, broker.url, "cachebench", model=model_section(folder),
                           daemon={"metrics_interval_s": 0.0})
    daemon.start()
    out = []
    try:
        with RequestClient(broker.url, daemon.prefix) as client:
            for i in range(ALTERNATIONS):
                kind = "AB"[i % 2]
                result = ask(client, system_prompt(kind), f"Question {i}: is the hall light on?")
                timings = result.timings
                out.append((kind, timings.time_to_first_token_ms, timings.cached_prompt_tokens))
                print(f"  {kind}: TTFT {out[-1][1]:.0f} ms, {out[-1][2]} cached, "
                      f"{result.prompt_tokens - out[-1][2]} evaluated in {timings.prompt_ms:.0f} ms", flush=True)
    finally:
        assert daemon.stop() == 0, daemon.output()
    return out


def report_round(i: int, r: dict[str, float]) -> None:
    print(f"round {i}: cold TTFT {r['cold_ms']:8.0f} ms | after SIGTERM + restart {r['warm_ms']:6.0f} ms "
          f"({r['cached']} of {r['prompt_tokens']} cached) ratio {r['warm_ms'] / r['cold_ms']:.3f} | "
          f"warm-up {r['warm_up_ms']:.0f} ms, start to online {r['start_cold_s']:.1f} s empty / "
          f"{r['start_warm_s']:.1f} s warm, same text: {r['same_text']}", flush=True)


@pytest.mark.timeout(3600)  # a cold 1,000-token prompt takes a minute on a loaded 2-core box
def test_prompt_cache_after_a_sigterm_restart(benchmark, mosquitto, tinyllama_q4_k_m: Path, tmp_path: Path) -> None:
    print(f"\n[prompt cache after SIGTERM + restart, {tinyllama_q4_k_m.name}, {ROUNDS} rounds, {os.cpu_count()} CPUs]")

    def run() -> list[dict[str, float]]:
        rounds = []
        for i in range(ROUNDS):
            rounds.append(restart_round(tinyllama_q4_k_m, mosquitto, tmp_path / "restart"))
            report_round(i, rounds[-1])
        return rounds

    rounds = benchmark.pedantic(run, rounds=1, iterations=1)
    ratios = [r["warm_ms"] / r["cold_ms"] for r in rounds]
    print(f"restart: median ratio {statistics.median(ratios):.3f}, worst {max(ratios):.3f} (goal <= {GOAL})")
    benchmark.extra_info.update(restart=rounds)
    if STRICT:
        assert max(ratios) <= GOAL


@pytest.mark.timeout(3600)
def test_prompt_cache_with_two_alternating_prefixes(benchmark, mosquitto, tinyllama_q4_k_m: Path, tmp_path: Path) -> None:
    alternating = benchmark.pedantic(lambda: alternation(tinyllama_q4_k_m, mosquitto, tmp_path / "alternate"),
                                     rounds=1, iterations=1)
    cold = {kind: ms for kind, ms, _c in alternating[:2]}
    later = [(kind, ms / cold[kind], cached) for kind, ms, cached in alternating[2:]]
    print(f"\n[prompt cache, A/B alternation, {tinyllama_q4_k_m.name}] cold A {cold['A']:.0f} ms, "
          f"B {cold['B']:.0f} ms; then " + ", ".join(f"{k} {ratio:.3f} ({c} cached)" for k, ratio, c in later))
    print(f"alternation: worst ratio {max(r for _k, r, _c in later):.3f} (goal <= {GOAL})")
    benchmark.extra_info.update(alternation=alternating)
    if STRICT:
        assert all(ratio <= GOAL for _k, ratio, _c in later)
