"""`edgekit bench` on the tiny model: every figure measured, repeats counted, outputs parseable."""

import contextlib
import csv
import io
import json


import pytest

from edgekit.bench import output
from edgekit.bench.prompts import PromptMaker
from edgekit.bench.quality import calibration_text
from edgekit.bench.results import BenchRun
from edgekit.bench.runner import BenchConfig, MeasureContext, engine_send, measure, model_facts, resolve_settings
from edgekit.cli import main
from edgekit.engine import Engine
from edgekit import gguf_file
from tests.test_bench_quality import llama_tools  # noqa: F401  (shared session fixture)

PROMPTS, GEN, REPEAT, CONCURRENCY = (16, 48), 40, 2, (1, 2)  # 40 tokens: long enough that a thread start is noise
LLAMA_BENCH_FIELDS = {
    "build_commit", "model_filename", "model_type", "model_size", "model_n_params", "n_batch", "n_ubatch",
    "n_threads", "type_k", "type_v", "n_gpu_layers", "n_prompt", "n_gen", "n_depth", "test_time",
    "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "samples_ns", "samples_ts",
}


@pytest.fixture(scope="session")
def bench_json(tiny_q4_k_m, tmp_path_factory):
    """One `edgekit bench --json --output` run on the tiny model; returns (path, stdout, stderr)."""
    folder = tmp_path_factory.mktemp("bench")
    out, err = io.StringIO(), io.StringIO()
    argv = ["bench", str(tiny_q4_k_m), "--prompt-tokens", ",".join(map(str, PROMPTS)), "--gen-tokens", str(GEN),
            "--repeat", str(REPEAT), "--concurrency", ",".join(map(str, CONCURRENCY)), "--threads", "2",
            "--json", "--output", str(folder / "bench.json")]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(argv) == 0, err.getvalue()
    return folder / "bench.json", out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def bench_run(bench_json) -> BenchRun:
    return BenchRun.from_dict(json.loads(bench_json[0].read_text()))


def test_one_measurement_per_prompt_size_and_concurrency(bench_run):
    got = [(m.prompt_tokens, m.concurrency, m.mode) for m in bench_run.measurements]
    assert got == [(n, c, "engine") for n in PROMPTS for c in CONCURRENCY]


def test_repeats_times_concurrency_samples_are_counted(bench_run):
    for m in bench_run.measurements:
        assert len(m.samples) == REPEAT * m.concurrency
        assert (m.repeats, m.warmup) == (REPEAT, 1)


def test_every_figure_is_present_and_positive(bench_run):
    for m in bench_run.measurements:
        assert m.load_cold_ms > 0 and m.load_warm_ms > 0
        assert m.peak_rss_bytes > 10 * 2**20  # the worker holds llama.cpp and the model
        for s in m.samples:
            assert s.ttft_ms > 0 and s.prompt_tps > 0 and s.gen_tps > 0 and s.e2e_ms > 0
            assert s.prompt_ms > 0 and s.generation_ms > 0
            assert len(s.itl_ms) >= 1 and all(gap >= 0 for gap in s.itl_ms)
        for name in ("ttft_ms", "prompt_tps", "gen_tps", "itl_ms", "e2e_ms"):
            summary = m.figure(name)
            assert summary.min > 0 and summary.min <= summary.p50 <= summary.p99 <= summary.max


def test_prompts_are_exactly_n_tokens_and_not_served_from_the_cache(bench_run):
    for m in bench_run.measurements:
        for s in m.samples:
            assert s.prompt_tokens == m.prompt_tokens
            assert s.cached_prompt_tokens <= 1  # at most the shared BOS: every prompt starts elsewhere


def test_concurrent_requests_wait_in_the_queue(bench_run):
    for m in bench_run.measurements:
        waits = sorted(s.queue_ms for s in m.samples)
        if m.concurrency == 1:
            assert waits[-1] < min(s.total_ms for s in m.samples)
        else:  # of two requests sent at once, one waits for (most of) the whole run of the other
            assert waits[-1] > 0.5 * min(s.total_ms - s.queue_ms for s in m.samples)


def test_warm_up_runs_are_sent_but_not_counted(tiny_q4_k_m):
    config = BenchConfig(models=(tiny_q4_k_m,), prompt_tokens=(16,), gen_tokens=4, repeat=3, warmup=2)
    info = gguf_file.validate(tiny_q4_k_m)
    settings = resolve_settings(info, config)
    sent = []
    with Engine(tiny_q4_k_m, settings) as engine:
        real = engine_send(engine)
        maker = PromptMaker(calibration_text(), lambda t: engine.tokenize(t, add_bos=True, special=True))
        ctx = MeasureContext(facts=model_facts(info), settings=settings, cold_ms=None, warm_ms=None, mode="engine", config=config)
        m = measure(ctx, lambda r: sent.append(r) or real(r), maker, 16, 1, progress=lambda _: None)
    assert len(sent) == 2 + 3 and len(m.samples) == 3
    assert len({r.prompt for r in sent}) == 5  # every request had a prompt of its own


def test_terminal_table_and_progress(bench_json):
    _, stdout, stderr = bench_json
    assert "TTFT ms" in stdout and "tg t/s" in stdout and "ITL p50/95/99 ms" in stdout
    assert "warm-up" in stderr and f"repeat {REPEAT}/{REPEAT}" in stderr


def test_csv_has_one_row_per_measurement(bench_run, tmp_path):
    rows = list(csv.DictReader(io.StringIO(output.to_csv(bench_run))))
    assert len(rows) == len(bench_run.measurements)
    assert float(rows[0]["gen_tps_mean"]) == pytest.approx(bench_run.measurements[0].figure("gen_tps").mean, rel=1e-3)
    assert {"ttft_ms_p99", "itl_ms_p95", "e2e_ms_p50", "load_cold_ms", "peak_rss_bytes"} <= set(rows[0])


def test_jsonl_uses_llama_bench_field_names(bench_run):
    lines = output.to_jsonl(bench_run).splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2 * len(bench_run.measurements)
    for rec in records:
        assert LLAMA_BENCH_FIELDS <= set(rec)
    pp, tg = records[0], records[1]
    m = bench_run.measurements[0]
    assert (pp["n_prompt"], pp["n_gen"]) == (m.prompt_tokens, 0)
    assert (tg["n_prompt"], tg["n_gen"], tg["n_depth"]) == (0, m.gen_tokens, m.prompt_tokens)
    assert tg["avg_ts"] == pytest.approx(m.figure("gen_tps").mean)
    assert len(tg["samples_ns"]) == len(m.samples)


def test_json_round_trips(bench_json, bench_run):
    assert json.loads(output.to_json(bench_run)) == json.loads(bench_json[0].read_text())


def test_missing_model_is_one_line_error(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope.gguf"), "--repeat", "1"]) == 3
    err = capsys.readouterr().err.strip()
    assert "nope.gguf" in err and "\n" not in err


def test_unwritable_output_fails_before_measuring(tiny_q4_k_m, capsys):
    assert main(["bench", str(tiny_q4_k_m), "--json", "--output", "/nonexistent-dir/bench.json"]) == 1
    captured = capsys.readouterr()
    assert "does not exist" in captured.err and "[bench]" not in captured.err


@pytest.mark.slow  # needs llama-bench, built once into .cache/llama-tools by benchmarks/build_llama_tools.sh
def test_compare_llama_bench_gives_ratios(tiny_q4_k_m, llama_tools, tmp_path):
    out = tmp_path / "b.csv"
    argv = ["bench", str(tiny_q4_k_m), "--prompt-tokens", "32", "--gen-tokens", "16", "--repeat", "2",
            "--threads", "2", "--csv", "--output", str(out), "--compare-llama-bench", str(llama_tools / "llama-bench")]
    assert main(argv) == 0
    row = next(csv.DictReader(io.StringIO(out.read_text())))
    assert float(row["llama_bench_tg_ts"]) > 0 and float(row["llama_bench_pp_ts"]) > 0
    assert float(row["gen_ts_vs_llama_bench"]) > 0 and float(row["pp_ts_vs_llama_bench"]) > 0


def test_via_mqtt_measures_end_to_end_and_shows_the_transport_apart(tiny_q4_k_m, mosquitto, tmp_path):
    from tests.serve_support import DaemonProcess

    daemon = DaemonProcess(tmp_path / "daemon", tiny_q4_k_m, mosquitto.url, "bench-via").start()
    out = tmp_path / "via.json"
    try:
        argv = ["bench", str(tiny_q4_k_m), "--prompt-tokens", "16", "--gen-tokens", "8", "--repeat", "2",
                "--threads", "2", "--via", mosquitto.url, "--prefix", daemon.prefix, "--json", "--output", str(out)]
        assert main(argv) == 0
    finally:
        daemon.stop()
    run = BenchRun.from_dict(json.loads(out.read_text()))
    assert [m.mode for m in run.measurements] == ["engine", "mqtt"]
    via = run.measurements[1]
    assert len(via.samples) == 2
    for s in via.samples:
        assert s.e2e_ms > s.total_ms > 0 and s.transport_ms > 0
        assert s.ttft_ms > 0 and s.gen_tps > 0 and s.prompt_tokens == 16 and len(s.itl_ms) >= 1
    assert "MQTT ms" in output.format_table(output.table_rows(run))
