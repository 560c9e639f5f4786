"""The sensor sampler's cost: generation rate with sampling on against off, in paired rounds.

Run: .venv/bin/python -m pytest benchmarks/bench_sampler.py -q -s --benchmark-enable
One engine; each round runs the same requests once with the sampler reading the sensors and
once without, the order alternating round by round, so a drift of the box's speed touches
both alike. The sensors are the captured Jetson Orin Nano's (the most files of the captured
boards: nine thermal zones, six cpufreq policies, the INA3221 and the GPU's devfreq), or this
box's with EDGEKIT_SAMPLER_ROOT=/. Also printed: one read's time, and the share of one core
the sampler takes at its interval. Goal: paired median ratio >= 0.99 (asserted only with
EDGEKIT_BENCH_STRICT=1: on a shared box the rounds move by more than 1 %).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from edgekit.bench.prompts import PromptMaker
from edgekit.bench.quality import calibration_text
from edgekit.bench.runner import engine_send
from edgekit.bench.sampler import INTERVAL_S, Sampler, read_cost_s
from edgekit.bench.stats import compare_rounds
from edgekit.engine import Engine
from edgekit.engine.records import Request
from edgekit.settings import Settings

REPO = Path(__file__).resolve().parents[1]
ROOT = Path(os.environ.get("EDGEKIT_SAMPLER_ROOT") or REPO / "tests/boards/jetson-orin-nano-8gb")
ROUNDS = int(os.environ.get("EDGEKIT_SAMPLER_ROUNDS", "16"))
REQUESTS, GEN = 8, 128  # about four seconds a round on the tiny model: several sampling intervals
STRICT = os.environ.get("EDGEKIT_BENCH_STRICT") == "1"


def _rate(send, maker: PromptMaker, sampling: bool) -> float:  # type: ignore[no-untyped-def]
    """Generated tokens per second of generation over one round's requests."""
    tokens = ms = 0.0
    with Sampler(ROOT) if sampling else _Nothing():
        for _ in range(REQUESTS):
            _, result, _ = send(Request(prompt=maker.next(32), max_tokens=GEN, temperature=0.0, seed=0))
            tokens += result.timings.completion_tokens - 1  # the first token is the prompt's
            ms += result.timings.generation_ms
    return 1000 * tokens / ms


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_sampler_cost(benchmark, tiny_q4_k_m):
    on: list[float] = []
    off: list[float] = []
    with Engine(tiny_q4_k_m, Settings(n_threads=1, n_threads_batch=1, n_ctx=512)) as engine:
        send = engine_send(engine)
        maker = PromptMaker(calibration_text(), lambda text: engine.tokenize(text, add_bos=True, special=True))
        _rate(send, maker, False)  # warm-up

        def rounds() -> None:
            for r in range(ROUNDS):
                for sampling in (True, False) if r % 2 else (False, True):
                    (on if sampling else off).append(_rate(send, maker, sampling))

        benchmark.pedantic(rounds, rounds=1, iterations=1)
    result = compare_rounds(on, off)
    read_s = read_cost_s(ROOT)
    started = time.process_time()
    with Sampler(ROOT):
        time.sleep(5)
    share = (time.process_time() - started) / 5
    print(f"\nsampler on / off, generation tok/s: {result}")
    print(f"one read of every sensor under {ROOT}: {read_s * 1e6:.0f} µs; at one read per {INTERVAL_S} s that is "
          f"{100 * read_s / INTERVAL_S:.3f} % of one core; measured while idle: {100 * share:.3f} % of one core")
    if STRICT:
        assert result.median_ratio >= 0.99, result
