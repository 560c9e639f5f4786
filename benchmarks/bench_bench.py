"""`edgekit bench` on the TinyLlama-shaped Q4_K_M and Q8_0: every figure, every output format.

Run: .venv/bin/python -m pytest benchmarks/bench_bench.py -q -s --benchmark-enable
Writes bench-results/bench.{json,csv,jsonl,html} and prints the table. With llama-bench
built (benchmarks/build_llama_tools.sh; built here when missing unless
EDGEKIT_BENCH_NO_BUILD=1) the rates are shown as a ratio to llama-bench's on the same
files and threads. Checks, measured in EDGEKIT_BENCH_ROUNDS (6) alternating rounds and
given both as the median of the paired round ratios and best round against best round;
printed, and asserted only with EDGEKIT_BENCH_STRICT=1 (a shared box moves every figure):
  generation rate within 5% of llama-bench's tg rate (the pp32 setting: depth 32, near
  llama-bench's depth 0), and time to first token of the 256-token prompt within 10% of
  256 / llama-bench's pp256 rate.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import asdict
from pathlib import Path

from edgekit.bench.llama_bench import LLAMA_TOOLS
from edgekit.bench.output import format_table, table_rows, to_csv, to_json, to_jsonl
from edgekit.bench.report import write_report
from edgekit.bench.runner import BenchConfig, run_bench
from edgekit.bench.stats import Comparison, compare_rounds

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench-results"
TOOLS = LLAMA_TOOLS / "bin"
THREADS = int(os.environ.get("EDGEKIT_BENCH_THREADS", "2"))
STRICT = os.environ.get("EDGEKIT_BENCH_STRICT") == "1"


def _llama_bench() -> Path | None:
    binary = TOOLS / "llama-bench"
    if not binary.exists() and os.environ.get("EDGEKIT_BENCH_NO_BUILD") != "1":
        subprocess.run([str(REPO / "benchmarks" / "build_llama_tools.sh"), str(LLAMA_TOOLS)], check=True)
    return binary if binary.exists() else None


def test_edgekit_bench_tinyllama(benchmark, tinyllama_q4_k_m, tinyllama_q8_0):
    config = BenchConfig(
        models=(tinyllama_q4_k_m, tinyllama_q8_0), prompt_tokens=(32, 256), gen_tokens=128, repeat=3,
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
    """The two acceptance checks per model, as printed lines; asserted when STRICT."""
    lines = []
    for m in run.measurements:
        name = m.model.file_type
        if m.prompt_tokens == 32 and m.llama_bench_tg_ts:
            ratio = m.figure("gen_tps").mean / m.llama_bench_tg_ts
            lines.append(f"[accept {name}] generation {m.figure('gen_tps').mean:.2f} tok/s vs llama-bench tg"
                         f"{m.gen_tokens} {m.llama_bench_tg_ts:.2f}: {ratio:.3f}")
            if STRICT:
                assert abs(ratio - 1) <= 0.05, lines[-1]
        if m.prompt_tokens == 256 and m.llama_bench_pp_ts:
            expected = 1000 * 256 / m.llama_bench_pp_ts
            ttft = m.figure("ttft_ms").mean
            lines.append(f"[accept {name}] TTFT pp256 {ttft:.1f} ms vs 256 / llama-bench pp256 "
                         f"({m.llama_bench_pp_ts:.1f} t/s) = {expected:.1f} ms: {ttft / expected:.3f}")
            if STRICT:
                assert abs(ttft / expected - 1) <= 0.10, lines[-1]
    return lines


ROUNDS = int(os.environ.get("EDGEKIT_BENCH_ROUNDS", "6"))
RUNS = 3  # runs of each tool per round


def interleaved_acceptance(path: Path, llama_bench: Path, rounds: int = ROUNDS) -> dict[str, Comparison]:
    """edgekit bench's rates and llama-bench's, measured in alternation so both see the same load.

    Each round: RUNS engine requests per setting, then llama-bench -r RUNS; each tool's best
    run of the round makes that round's figure. The time to first token of the 256-token
    prompt is compared as the rate 256 / TTFT against llama-bench's pp256.
    """
    from edgekit import gguf_file
    from edgekit.bench.llama_bench import llama_bench_command, run_llama_bench
    from edgekit.bench.prompts import PromptMaker
    from edgekit.bench.quality import calibration_text
    from edgekit.bench.runner import MeasureContext, engine_send, measure, model_facts, resolve_settings
    from edgekit.engine import Engine

    info = gguf_file.validate(path)
    config = BenchConfig(models=(path,), prompt_tokens=(256,), gen_tokens=64, repeat=RUNS, warmup=0, threads=THREADS)
    settings = resolve_settings(info, config)
    argv = llama_bench_command(llama_bench, path, [256], 64, THREADS, RUNS, settings.n_batch, settings.n_ubatch, 0)
    gen, ttft_rate, tg, pp = [], [], [], []
    with Engine(path, settings) as engine:
        engine.warm_up()
        maker = PromptMaker(calibration_text(), lambda t: engine.tokenize(t, add_bos=True, special=True))
        ctx = MeasureContext(model_facts(info), settings, None, None, "engine", config)
        for _ in range(rounds):
            gen.append(max(s.gen_tps for s in measure(ctx, engine_send(engine), maker, 32, 1, lambda _: None).samples))
            ttfts = [s.ttft_ms for s in measure(ctx, engine_send(engine), maker, 256, 1, lambda _: None).samples]
            ttft_rate.append(256_000 / min(ttfts))
            records = run_llama_bench(argv).records
            tg.append(max(max(r["samples_ts"]) for r in records if r["n_gen"]))
            pp.append(max(max(r["samples_ts"]) for r in records if r["n_prompt"]))
    return {"generation": compare_rounds(gen, tg), "ttft_256": compare_rounds(ttft_rate, pp)}


def test_acceptance_against_llama_bench_interleaved(benchmark, tinyllama_q4_k_m, tinyllama_q8_0):
    binary = _llama_bench()
    if binary is None:
        import pytest

        pytest.skip("llama-bench is not built (benchmarks/build_llama_tools.sh)")
    results = benchmark.pedantic(
        lambda: {p.name: interleaved_acceptance(p, binary) for p in (tinyllama_q4_k_m, tinyllama_q8_0)},
        rounds=1, iterations=1)
    for name, r in results.items():
        gen, ttft = r["generation"], r["ttft_256"]
        print(f"[accept {name}] generation tok/s, edgekit bench vs llama-bench tg64: {gen}")
        print(f"[accept {name}] 256 / TTFT(256) vs llama-bench pp256: {ttft} "
              f"(TTFT / (256 / pp256): paired {1 / ttft.median_ratio:.3f}, best {1 / ttft.best_ratio:.3f})")
        if STRICT:
            assert all(abs(x - 1) <= 0.05 for x in (gen.median_ratio, gen.best_ratio)), gen
            assert all(abs(1 / x - 1) <= 0.10 for x in (ttft.median_ratio, ttft.best_ratio)), ttft
    benchmark.extra_info.update({name: {k: asdict(v) for k, v in r.items()} for name, r in results.items()})
