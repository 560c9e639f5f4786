"""The prompt cache on the TinyLlama-shaped model at Q4_K_M, a ~1,000-token system prompt, through the daemon.

Run: .venv/bin/python -m pytest benchmarks/bench_prompt_cache.py -q -s --benchmark-enable

Restart: each round clears the cache folder, starts `edgekit serve`, asks once (cold: no
state anywhere), stops it with SIGTERM, starts it again (the cache is warmed before
online: the time it adds is read from the daemon's log) and asks the same again. The two
requests of a round run under the same load, so the ratio is taken per round. In the same
round, where benchmarks/build_llama_server.sh has built llama.cpp's llama-server (from the
llama.cpp that llama-cpp-python vendors), the same scenario runs against
`llama-server --slot-save-path`: ask, POST /slots/0?action=save, SIGTERM, start,
POST /slots/0?action=restore, ask again; its figures are the server's own `timings` and the
wall clock of the request (max_tokens 1, so the wall clock is the time to the first token
plus the answer's way back). Without the binary that part says why and is skipped.
Alternation: ALT_ROUNDS fresh daemons, each asked with two system prompts A, B, A, B, ...:
every request after the first of each prefix against the cold first one of the same prefix,
in the same round. Every line carries the box's 1-minute load average: the box is shared.
Goals: warm / cold time to first token <= 0.1 in both; asserted only with EDGEKIT_BENCH_STRICT=1.

"same text" is reported, not asserted: on Q4_K_M llama.cpp's CPU matmuls take other paths
for a batch of a few rows than for a full one, so the last prompt tokens' logits move in
the last bits, and random weights have near-ties everywhere. Keeping the prefix in the
context (no prompt cache involved) changes the text the same way; tests/test_prompt_cache.py
shows restored text equal token for token on the tiny model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from edgekit.serve.mqtt.client import RequestClient
from edgekit.serve.mqtt.mosquitto import free_port
from tests.serve_support import DaemonProcess

ROUNDS = int(os.environ.get("EDGEKIT_BENCH_ROUNDS", "3"))
ALT_ROUNDS = int(os.environ.get("EDGEKIT_BENCH_ALT_ROUNDS", "2"))
ALTERNATIONS = 8  # A, B, A, B, ...
GOAL = 0.1
STRICT = os.environ.get("EDGEKIT_BENCH_STRICT") == "1"
# EDGEKIT_BENCH_THREADS=1 runs the daemons with one thread: on a box loaded far beyond its
# cores, two llama.cpp threads wait for each other at every graph node (seconds per small batch).
THREADS = os.environ.get("EDGEKIT_BENCH_THREADS")
CTX = 2048
LLAMA_SERVER = Path(os.environ.get("EDGEKIT_LLAMA_SERVER")
                    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit/llama-server/bin/llama-server")
QUESTION = "Is the kitchen light on?"


def system_prompt(kind: str, lines: int = 30) -> str:
    """A Home Assistant-like system prompt: instructions, then the exposed entities (~1,000 tokens)."""
    head = (f"You are the voice assistant of a smart home ({kind}). Answer in one short sentence. "
            "Use the tools to control devices; never invent an entity. Current state of the house:\n")
    rooms = ("kitchen", "hall", "living room", "bedroom", "office", "garage", "porch", "bathroom")
    body = "".join(f"- light.{rooms[i % 8].replace(' ', '_')}_{i} ({rooms[i % 8]} light {i}): "
                   f"{('on', 'off')[i % 2]}, brightness {i * 7 % 100} percent, area {rooms[(i * 3) % 8]}\n"
                   for i in range(lines))
    return head + body


def messages(system: str, question: str = QUESTION) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def load() -> float:
    """The box's 1-minute load average: the figures below mean little without it on a shared box."""
    return os.getloadavg()[0]


def model_section(folder: Path) -> dict[str, object]:
    """[model] for the bench daemons: ctx 2048, and a profile with THREADS threads when asked."""
    if not THREADS:
        return {"ctx": CTX}
    folder.mkdir(parents=True, exist_ok=True)
    generic = (Path(__file__).resolve().parents[1] / "profiles" / "cpu-generic.toml").read_text()
    profile = folder.parent / f"bench-threads-{THREADS}.toml"
    profile.write_text(generic.replace('name = "cpu-generic"', f'name = "bench-threads-{THREADS}"')
                       .replace('threads = "auto"', f"threads = {THREADS}")
                       .replace('threads_batch = "auto"', f"threads_batch = {THREADS}"))
    return {"ctx": CTX, "profile": str(profile)}


def ask(client: RequestClient, system: str, question: str = QUESTION) -> dict:
    body = {"messages": messages(system, question), "max_tokens": 4}
    final = client.ask(body, timeout_s=1200).final
    assert final["type"] == "result", final
    return final


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
    return {"same_text": warm["text"] == cold["text"], "cold_ms": cold["timings"]["time_to_first_token_ms"],
            "warm_ms": warm["timings"]["time_to_first_token_ms"], "warm_prompt_ms": warm["timings"]["prompt_ms"],
            "prompt_tokens": cold["usage"]["prompt_tokens"], "cached": warm["usage"]["cached_prompt_tokens"],
            "warm_up_ms": warm_ms(daemon), "start_cold_s": start_cold, "start_warm_s": start_warm, "load": load()}


def report_round(i: int, r: dict[str, float]) -> None:
    print(f"round {i} edgekit: cold TTFT {r['cold_ms']:8.0f} ms | after SIGTERM + restart {r['warm_ms']:6.0f} ms "
          f"({r['cached']} of {r['prompt_tokens']} cached, {r['warm_prompt_ms']:.0f} ms prompt) ratio {r['warm_ms'] / r['cold_ms']:.3f} | "
          f"warm-up {r['warm_up_ms']:.0f} ms, start to online {r['start_cold_s']:.1f} s empty / "
          f"{r['start_warm_s']:.1f} s warm, same text: {r['same_text']}, load {r['load']:.1f}", flush=True)


# --- llama.cpp's llama-server, the same restart scenario --------------------------------------------


def llama_server_missing() -> str | None:
    """Why llama-server's half of the benchmark cannot run, or None when it can."""
    if LLAMA_SERVER.is_file() and os.access(LLAMA_SERVER, os.X_OK):
        return None
    return (f"no llama-server at {LLAMA_SERVER}: build it with benchmarks/build_llama_server.sh "
            "(llama.cpp as llama-cpp-python vendors it; an hour on a busy 2-core box) or set EDGEKIT_LLAMA_SERVER")


class LlamaServer:
    """llama.cpp's server on a free loopback port, with our daemon's context, threads, batch and KV settings."""

    def __init__(self, model: Path, slots: Path, log: Path) -> None:
        from edgekit.plan import settings_for

        s = settings_for(model, None, ctx=CTX).settings  # what the daemon's plan picks on this box
        threads = int(THREADS) if THREADS else s.n_threads or len(os.sched_getaffinity(0))
        slots.mkdir(parents=True, exist_ok=True)
        self.port, self.log = free_port(), log
        self.argv = [str(LLAMA_SERVER), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                     "-c", str(CTX), "-np", "1", "-t", str(threads), "-tb", str(THREADS or s.n_threads_batch or threads),
                     "-b", str(s.n_batch), "-ub", str(s.n_ubatch), "-fa", "on" if s.flash_attn else "off",
                     "-ctk", s.type_k, "-ctv", s.type_v, "--slot-save-path", str(slots)]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        """Start it and wait until /health says ok; the seconds that took."""
        t0 = time.monotonic()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        while time.monotonic() - t0 < 300 and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"llama-server did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        """SIGTERM, as systemd stops a service."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def post(self, path: str, body: dict) -> tuple[dict, float]:
        """The JSON answer and the wall clock in ms."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(request, timeout=1200) as r:
            answer = json.loads(r.read())
        return answer, (time.perf_counter() - t0) * 1000

    def ask(self, system: str) -> dict[str, float]:
        answer, wall_ms = self.post("/v1/chat/completions", {"messages": messages(system), "max_tokens": 1,
                                                             "temperature": 0})
        t = answer["timings"]
        return {"wall_ms": wall_ms, "prompt_ms": t["prompt_ms"], "evaluated": t["prompt_n"], "cached": t.get("cache_n", 0)}


def llama_server_round(model: Path, folder: Path) -> dict[str, float]:
    """Ask, save slot 0, SIGTERM, start, restore slot 0, ask the same again."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    server = LlamaServer(model, folder / "slots", folder / "llama-server.log")
    start_cold = server.start()
    try:
        cold = server.ask(system_prompt("A"))
        saved, save_ms = server.post("/slots/0?action=save", {"filename": "a.bin"})
    finally:
        assert server.stop() == 0, server.log.read_text()[-3000:]
    start_warm = server.start()
    try:
        restored, restore_ms = server.post("/slots/0?action=restore", {"filename": "a.bin"})
        warm = server.ask(system_prompt("A"))
    finally:
        assert server.stop() == 0, server.log.read_text()[-3000:]
    return {"cold": cold, "warm": warm, "save_ms": saved["timings"]["save_ms"], "save_wall_ms": save_ms,
            "restore_ms": restored["timings"]["restore_ms"], "restore_wall_ms": restore_ms,
            "restored_tokens": restored["n_restored"], "start_cold_s": start_cold, "start_warm_s": start_warm,
            "load": load()}


def report_server_round(i: int, r: dict) -> None:
    cold, warm = r["cold"], r["warm"]
    print(f"round {i} llama-server: cold {cold['wall_ms']:8.0f} ms wall, {cold['prompt_ms']:.0f} ms prompt "
          f"({cold['evaluated']} evaluated) | after SIGTERM + restart + restore {warm['wall_ms']:6.0f} ms wall, "
          f"{warm['prompt_ms']:.0f} ms prompt ({warm['cached']} cached, {warm['evaluated']} evaluated) "
          f"ratio {warm['wall_ms'] / cold['wall_ms']:.3f} | restore {r['restore_ms']:.0f} ms "
          f"({r['restored_tokens']} tokens; {r['restore_wall_ms']:.0f} ms wall), save {r['save_ms']:.0f} ms, "
          f"start {r['start_cold_s']:.1f} s / {r['start_warm_s']:.1f} s, load {r['load']:.1f}", flush=True)


@pytest.mark.timeout(7200)  # a cold 1,000-token prompt takes minutes on a heavily loaded 2-core box
def test_prompt_cache_after_a_sigterm_restart(benchmark, mosquitto, tinyllama_q4_k_m: Path, tmp_path: Path) -> None:
    missing = llama_server_missing()
    print(f"\n[prompt cache after SIGTERM + restart, {tinyllama_q4_k_m.name}, {ROUNDS} rounds, {os.cpu_count()} CPUs]")
    if missing:
        print(f"llama-server's half skipped: {missing}")

    def run() -> list[dict]:
        rounds = []
        for i in range(ROUNDS):
            ours = restart_round(tinyllama_q4_k_m, mosquitto, tmp_path / "restart")
            report_round(i, ours)
            theirs = None if missing else llama_server_round(tinyllama_q4_k_m, tmp_path / "llama-server")
            if theirs:
                report_server_round(i, theirs)
            rounds.append({"edgekit": ours, "llama_server": theirs})
        return rounds

    rounds = benchmark.pedantic(run, rounds=1, iterations=1)
    summarize_restart(rounds)
    benchmark.extra_info.update(restart=rounds)
    if STRICT:
        assert max(r["edgekit"]["warm_ms"] / r["edgekit"]["cold_ms"] for r in rounds) <= GOAL


def spread(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.0f}, max {max(values):.0f}"


def summarize_restart(rounds: list[dict]) -> None:
    ours = [r["edgekit"] for r in rounds]
    ratios = [r["warm_ms"] / r["cold_ms"] for r in ours]
    print(f"edgekit restart: cold TTFT ms {spread([r['cold_ms'] for r in ours])}; warm {spread([r['warm_ms'] for r in ours])}; "
          f"ratio median {statistics.median(ratios):.3f}, worst {max(ratios):.3f} (goal <= {GOAL}); "
          f"warm-up at start ms {spread([r['warm_up_ms'] for r in ours])}")
    theirs = [r["llama_server"] for r in rounds if r["llama_server"]]
    if theirs:
        ratios = [r["warm"]["wall_ms"] / r["cold"]["wall_ms"] for r in theirs]
        print(f"llama-server restart: cold wall ms {spread([r['cold']['wall_ms'] for r in theirs])}; "
              f"warm wall {spread([r['warm']['wall_ms'] for r in theirs])}; ratio median {statistics.median(ratios):.3f}, "
              f"worst {max(ratios):.3f}; restore ms {spread([r['restore_ms'] for r in theirs])}")


# --- two prefixes, alternating ------------------------------------------------------------------------


def alternation(model: Path, broker, folder: Path) -> list[dict]:
    """One daemon with an empty cache asked A, B, A, B, ...: each request's kind, TTFT, cached tokens and load."""
    shutil.rmtree(folder, ignore_errors=True)
    daemon = DaemonProcess(folder, model, broker.url, "cachebench", model=model_section(folder),
                           daemon={"metrics_interval_s": 0.0})
    daemon.start()
    out = []
    try:
        with RequestClient(broker.url, daemon.prefix) as client:
            for i in range(ALTERNATIONS):
                kind = "AB"[i % 2]
                final = ask(client, system_prompt(kind), f"Question {i}: is the hall light on?")
                usage, timings = final["usage"], final["timings"]
                out.append({"kind": kind, "ttft_ms": timings["time_to_first_token_ms"], "load": load(),
                            "cached": usage["cached_prompt_tokens"], "evaluated": usage["prompt_tokens"] - usage["cached_prompt_tokens"],
                            "prompt_ms": timings["prompt_ms"]})
                r = out[-1]
                print(f"  {kind}: TTFT {r['ttft_ms']:.0f} ms, {r['cached']} cached, {r['evaluated']} evaluated "
                      f"in {r['prompt_ms']:.0f} ms, load {r['load']:.1f}", flush=True)
    finally:
        assert daemon.stop() == 0, daemon.output()
    return out


@pytest.mark.timeout(7200)
def test_prompt_cache_with_two_alternating_prefixes(benchmark, mosquitto, tinyllama_q4_k_m: Path, tmp_path: Path) -> None:
    print(f"\n[prompt cache, A/B alternation, {tinyllama_q4_k_m.name}, {ALT_ROUNDS} rounds of {ALTERNATIONS}]")
    rounds = benchmark.pedantic(lambda: [alternation(tinyllama_q4_k_m, mosquitto, tmp_path / "alternate")
                                         for _ in range(ALT_ROUNDS)], rounds=1, iterations=1)
    cold, warm, ratios = [], [], []
    for i, requests in enumerate(rounds):
        first = {r["kind"]: r["ttft_ms"] for r in requests[:2]}
        later = [(r, r["ttft_ms"] / first[r["kind"]]) for r in requests[2:]]
        cold += first.values()
        warm += [r["ttft_ms"] for r, _ in later]
        ratios += [ratio for _, ratio in later]
        print(f"round {i}: cold A {first['A']:.0f} ms, B {first['B']:.0f} ms; then "
              + ", ".join(f"{r['kind']} {ratio:.3f}" for r, ratio in later))
    print(f"alternation: cold TTFT ms {spread(cold)}; warm {spread(warm)}; ratio median {statistics.median(ratios):.3f}, "
          f"worst {max(ratios):.3f} (goal <= {GOAL}); load {min(r['load'] for rs in rounds for r in rs):.1f}"
          f"-{max(r['load'] for rs in rounds for r in rs):.1f}")
    benchmark.extra_info.update(alternation=rounds)
    if STRICT:
        assert max(ratios) <= GOAL
