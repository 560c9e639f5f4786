"""`edgekit bench` on the tiny model: every figure measured, repeats counted, outputs parseable."""

import contextlib
import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.bench import output
from edgekit.bench.prompts import PromptMaker
from edgekit.bench.quality import calibration_text
from edgekit.bench.results import BenchRun
from edgekit.bench.llama_bench import fits_beside, llama_bench_commands
from edgekit.bench.runner import (
    BenchConfig, MeasureContext, engine_send, measure, model_facts, resolve_settings,
)
from edgekit.cli import main
from edgekit.engine import Engine
from edgekit import gguf_file, hardware
from edgekit.memory import KV_PAD, MiB, kv_bytes_per_layer, shape_of
from edgekit.settings import Settings
from tests.fixtures.models import announce

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
    announce(f"running `edgekit {' '.join(argv[:1])}` on the tiny model ({REPEAT} rounds) for the bench tests")
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


def _measure_recording(model, config, record, after_round=None):
    """measure() on a real engine; record(engine, request) sees every request as it is sent."""
    info = gguf_file.validate(model)
    settings = resolve_settings(info, config)
    with Engine(model, settings) as engine:
        real = engine_send(engine)
        maker = PromptMaker(calibration_text(), lambda t: engine.tokenize(t, add_bos=True, special=True))
        ctx = MeasureContext(model_facts(info), settings, None, None, "engine", config)

        def send(request):
            record(engine, request)
            return real(request)

        return measure(ctx, send, maker, progress=lambda _: None, after_round=after_round)


def test_warm_up_runs_are_sent_but_not_counted(tiny_q4_k_m):
    config = BenchConfig(models=(tiny_q4_k_m,), prompt_tokens=(16,), gen_tokens=4, repeat=3, warmup=2)
    sent = []
    [m] = _measure_recording(tiny_q4_k_m, config, lambda _engine, request: sent.append(request))
    assert len(sent) == 2 + 3 and len(m.samples) == 3
    assert len({r.prompt for r in sent}) == 5  # every request had a prompt of its own
    assert [s.repeat_index for s in m.samples] == [0, 1, 2]


def test_rounds_run_every_setting_then_the_reference(tiny_q4_k_m):
    """A round runs each (prompt size, concurrency) once, then after_round: llama-bench's turn
    sees the same moment of the box as the round it is paired with."""
    config = BenchConfig(models=(tiny_q4_k_m,), prompt_tokens=(8, 24), gen_tokens=3, repeat=2, warmup=1,
                         concurrency=(1, 2))
    events = []
    found = _measure_recording(
        tiny_q4_k_m, config,
        lambda engine, request: events.append(len(engine.tokenize(request.prompt, add_bos=True, special=True))),
        after_round=lambda r: events.append(f"after {r}"),
    )
    warmups, rounds = events[:2], events[2:]
    assert warmups == [8, 24]
    # each round: pp8 c1, pp8 c2 (two requests at once), pp24 c1, pp24 c2; then the reference
    assert [sorted(rounds[0:3]), sorted(rounds[3:6]), rounds[6]] == [[8, 8, 8], [24, 24, 24], "after 0"]
    assert [sorted(rounds[7:10]), sorted(rounds[10:13]), rounds[13:]] == [[8, 8, 8], [24, 24, 24], ["after 1"]]
    for m in found:
        assert [s.repeat_index for s in m.samples] == [r for r in (0, 1) for _ in range(m.concurrency)]


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


@pytest.mark.slow  # llama-bench, built by the install step (tests/fixtures/llama_tools.py)
def test_compare_llama_bench_runs_it_after_each_round_and_pairs_the_rates(tiny_q4_k_m, llama_tools, tmp_path):
    out = tmp_path / "b.json"
    argv = ["bench", str(tiny_q4_k_m), "--prompt-tokens", "32", "--gen-tokens", "16", "--repeat", "3",
            "--threads", "2", "--json", "--output", str(out), "--compare-llama-bench", str(llama_tools / "llama-bench")]
    assert main(argv) == 0
    [m] = BenchRun.from_dict(json.loads(out.read_text())).measurements
    assert len(m.llama_bench_pp_samples) == len(m.llama_bench_tg_samples) == 3  # one llama-bench run per round
    assert min(m.llama_bench_pp_samples) > 0 and min(m.llama_bench_tg_samples) > 0
    assert m.llama_bench_tg_ts == pytest.approx(np.mean(m.llama_bench_tg_samples))
    gen = [s.gen_tps for s in sorted(m.samples, key=lambda s: s.repeat_index)]
    assert m.vs_llama_bench("gen_tps") == pytest.approx(np.median(np.divide(gen, m.llama_bench_tg_samples)))
    row = next(csv.DictReader(io.StringIO(output.to_csv(BenchRun.from_dict(json.loads(out.read_text()))))))
    assert float(row["gen_ts_vs_llama_bench"]) == pytest.approx(m.vs_llama_bench("gen_tps"), abs=1e-3)
    assert float(row["ttft_rate_vs_llama_bench_pp"]) > 0 and row["llama_bench_paired_rounds"] == "3"


def test_llama_bench_ratios_pair_rounds_or_fall_back_to_means(bench_run):
    m = next(m for m in bench_run.measurements if m.concurrency == 2)
    pp, tg = (50.0, 100.0), (10.0, 40.0)
    paired = dataclasses.replace(m, llama_bench_pp_ts=75.0, llama_bench_tg_ts=25.0,
                                 llama_bench_pp_samples=pp, llama_bench_tg_samples=tg)
    rounds = [[s for s in m.samples if s.repeat_index == r] for r in (0, 1)]
    gen = [np.mean([s.gen_tps for s in r]) for r in rounds]
    ttft_rate = [m.prompt_tokens * 1000 / np.mean([s.ttft_ms for s in r]) for r in rounds]
    assert paired.vs_llama_bench("gen_tps") == pytest.approx(np.median(np.divide(gen, tg)))
    assert paired.vs_llama_bench("ttft_ms") == pytest.approx(np.median(np.divide(ttft_rate, pp)))
    apart = dataclasses.replace(paired, llama_bench_pp_samples=(), llama_bench_tg_samples=())
    assert apart.vs_llama_bench("prompt_tps") == pytest.approx(np.mean([s.prompt_tps for s in m.samples]) / 75.0)
    assert m.vs_llama_bench("gen_tps") is None
    assert "n/a" not in output.table_rows(BenchRun(bench_run.edgekit_version, "", {}, (paired,)))[0]["vs llama-bench pp/tg/TTFT"]


def test_missing_llama_bench_is_refused_before_measuring(tiny_q4_k_m, tmp_path, capsys):
    assert main(["bench", str(tiny_q4_k_m), "--compare-llama-bench", str(tmp_path / "llama-bench")]) == 2
    err = capsys.readouterr().err
    assert "llama-bench" in err and "build_llama_tools.sh" in err and "[bench]" not in err


def test_llama_bench_beside_the_engine_only_when_a_second_copy_fits(tiny_q4_k_m):
    info = gguf_file.validate(tiny_q4_k_m)
    assert fits_beside(info, Settings(n_ctx=512))
    kv_per_token = kv_bytes_per_layer(shape_of(info), Settings(n_ctx=KV_PAD)) * info.block_count // KV_PAD
    too_long = 2 * hardware.detect().memory_total_mb * MiB // kv_per_token  # its KV cache alone is twice the RAM
    assert not fits_beside(info, Settings(n_ctx=too_long))


def test_llama_bench_commands_match_the_settings_and_measure_generation_at_the_prompts_depth(tiny_q4_k_m):
    settings = Settings(n_threads=3, n_batch=256, n_ubatch=128, flash_attn=False, type_k="q8_0", type_v="q8_0")
    pp, tg = llama_bench_commands(Path("llama-bench"), tiny_q4_k_m, (32, 256), 64, settings, 1)
    common = {"-m": str(tiny_q4_k_m), "-t": "3", "-r": "1", "-b": "256", "-ub": "128", "-ngl": "0", "-fa": "off",
              "-ctk": "q8_0", "-ctv": "q8_0", "-o": "json"}
    assert dict(zip(pp[1::2], pp[2::2])) == {**common, "-p": "32,256", "-n": "0"}
    assert dict(zip(tg[1::2], tg[2::2])) == {**common, "-p": "0", "-n": "64", "-d": "32,256"}


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


def test_chart_labels_name_the_file_not_only_the_level(bench_run):
    from edgekit.bench.results import file_label

    assert file_label("tinyllama-Q4_K_M.gguf", "Q4_K_M") == "tinyllama-Q4_K_M"
    assert file_label("/models/solar.gguf", "Q4_K_M") == "solar Q4_K_M"  # two models, one level: still apart
    m = bench_run.measurements[0]
    assert m.label.startswith(Path(m.model.file_name).stem)


def test_via_http_measures_ttft_and_inter_token_latency_end_to_end(tiny_q4_k_m, tmp_path):
    from edgekit.serve.mqtt.mosquitto import free_port
    from tests.serve_support import DaemonProcess

    daemon = DaemonProcess(tmp_path / "daemon", tiny_q4_k_m, "none", "bench-http", http_port=free_port()).start()
    out = tmp_path / "via.json"
    try:
        argv = ["bench", str(tiny_q4_k_m), "--prompt-tokens", "16", "--gen-tokens", "8", "--repeat", "2",
                "--threads", "2", "--via", daemon.url, "--json", "--output", str(out)]
        assert main(argv) == 0
    finally:
        daemon.stop()
    run = BenchRun.from_dict(json.loads(out.read_text()))
    assert [m.mode for m in run.measurements] == ["engine", "http"]
    for s in run.measurements[1].samples:
        assert s.e2e_ms > s.total_ms > 0 and s.transport_ms > 0
        assert s.ttft_ms > 0 and s.gen_tps > 0 and s.prompt_tokens == 16 and len(s.itl_ms) >= 1
    assert "HTTP ms" in output.format_table(output.table_rows(run))
