"""`edgekit bench` on the TinyLlama-shaped Q4_K_M and Q8_0: every figure, every output format.

Run: .venv/bin/python -m pytest benchmarks/bench_bench.py -q -s --benchmark-enable
Writes bench-results/bench.{json,csv,jsonl,html} and prints the table. With llama-bench
built (by scripts/install.sh, which `make bench` runs first; or benchmarks/build_llama_tools.sh)
edgekit bench runs it after each of its EDGEKIT_BENCH_ROUNDS (12)
rounds, on the same files and settings, and shows the rates as paired ratios. Checks,
given both as the median of the paired round ratios and best round against best round;
printed, and asserted (on the paired median) only with EDGEKIT_BENCH_STRICT=1:
  generation rate within 5% of llama-bench's tg rate (the pp32 setting: depth 32, near
  llama-bench's depth 0), and time to first token of the 256-token prompt within 10% of
  256 / llama-bench's pp256 rate.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgekit.bench.llama_bench import LLAMA_TOOLS
from edgekit.bench.output import format_table, table_rows, to_csv, to_json, to_jsonl
from edgekit.bench.report import write_report
from edgekit.bench.runner import BenchConfig, run_bench
from edgekit.bench.stats import compare_rounds

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench-results"
TOOLS = LLAMA_TOOLS / "bin"
THREADS = int(os.environ.get("EDGEKIT_BENCH_THREADS", "2"))
STRICT = os.environ.get("EDGEKIT_BENCH_STRICT") == "1"


def _llama_bench() -> Path | None:
    binary = TOOLS / "llama-bench"
    if not binary.exists():
        print(f"\n[bench] no {binary}: no llama-bench comparison (the install step builds it: make install)")
    return binary if binary.exists() else None


ROUNDS = int(os.environ.get("EDGEKIT_BENCH_ROUNDS", "12"))


@pytest.mark.timeout(3600)  # rounds of edgekit and llama-bench on two files: about 15 minutes at 2 threads
def test_edgekit_bench_tinyllama(benchmark, tinyllama_q4_k_m, tinyllama_q8_0):
    config = BenchConfig(
        models=(tinyllama_q4_k_m, tinyllama_q8_0), prompt_tokens=(32, 256), gen_tokens=64, repeat=ROUNDS,
        concurrency=(1,), threads=THREADS, llama_bench=_llama_bench(),
    )
    run = benchmark.pedantic(lambda: run_bench(config, progress=lambda s: print(f"[bench] {s}", flush=True)),
                             rounds=1, iterations=1)
    OUT.mkdir(exist_ok=True)
    for suffix, render in (("json", to_json), ("csv", to_csv), ("jsonl", to_jsonl)):
        (OUT / f"bench.{suffix}").write_text(render(run))
    write_report(OUT / "bench.html", run, title="edgekit bench: TinyLlama-shaped Q4_K_M and Q8_0")
    print("\n" + format_table(table_rows(run)))
    for line in acceptance_lines(run):
        print(line)
    benchmark.extra_info["measurements"] = len(run.measurements)
    assert all(m.samples for m in run.measurements)


def acceptance_lines(run) -> list[str]:  # type: ignore[no-untyped-def]
    """The two acceptance checks per model, from the rounds edgekit bench ran in alternation with
    llama-bench; printed, and asserted when STRICT."""
    lines = []
    for m in run.measurements:
        if not m.llama_bench_tg_samples:
            continue
        name = m.model.file_type
        if m.prompt_tokens == 32:
            gen = compare_rounds(m.round_means("gen_tps"), m.llama_bench_tg_samples)
            lines.append(f"[accept {name}] generation tok/s, edgekit bench vs llama-bench tg{m.gen_tokens}: {gen}")
            if STRICT:
                assert abs(gen.median_ratio - 1) <= 0.05, lines[-1]
        if m.prompt_tokens == 256:
            rate = [256_000 / ms for ms in m.round_means("ttft_ms")]
            ttft = compare_rounds(rate, m.llama_bench_pp_samples)
            lines.append(f"[accept {name}] 256 / TTFT(256) vs llama-bench pp256: {ttft} "
                         f"(TTFT / (256 / pp256): paired {1 / ttft.median_ratio:.3f}, best {1 / ttft.best_ratio:.3f})")
            if STRICT:
                assert abs(1 / ttft.median_ratio - 1) <= 0.10, lines[-1]
    return lines
