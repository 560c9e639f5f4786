"""Energy, heat and clocks in bench results: the arithmetic on readings, and a real run on the
tiny model with a captured board's sensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.bench.energy import device_figures, energy_over, merged_spans, timeline
from edgekit.bench.output import csv_row, table_rows
from edgekit.bench.results import BenchRun, Sample
from edgekit.bench.runner import BenchConfig, run_bench
from edgekit.bench.sensors import DeviceFacts, Reading

BOARDS = Path(__file__).parent / "boards"
FACTS = DeviceFacts(("RAPL package-0",), "thermal zones", None, None, "performance")


def _reading(t: float, joules: float | None, temp: float | None = 60.0) -> Reading:
    return Reading(t, joules, temp, 3000.0, 3500.0, None, None, None)


def _sample(start: float, end: float, tokens: int) -> Sample:
    return Sample(ttft_ms=1, prompt_tokens=8, cached_prompt_tokens=0, prompt_ms=1, prompt_tps=1, gen_tokens=tokens,
                  generation_ms=1, gen_tps=1, queue_ms=0, total_ms=1, e2e_ms=1, started_s=start, ended_s=end)


def test_energy_is_interpolated_at_each_requests_start_and_end():
    readings = [_reading(0, 0.0), _reading(1, 10.0), _reading(2, 30.0)]  # 10 W, then 20 W
    assert energy_over([(0.5, 1.5)], readings) == pytest.approx(5 + 10)
    assert energy_over([(0.5, 2.5)], readings) is None  # after the last reading: not known


def test_concurrent_requests_are_counted_once():
    assert merged_spans([(0, 2), (1, 3), (5, 6)]) == [(0, 3), (5, 6)]


def test_joules_per_token_watts_and_tokens_per_joule():
    readings = [_reading(t, 12.0 * t, temp=50 + t) for t in range(0, 5)]  # a steady 12 W; t=4 lies past the last span
    samples = [_sample(0.0, 1.0, 40), _sample(2.0, 3.0, 20)]
    fig = device_figures(samples, readings, FACTS, 0.5)
    assert (fig.energy_j, fig.seconds, fig.avg_power_w) == pytest.approx((24.0, 2.0, 12.0))
    assert fig.j_per_token == pytest.approx(24 / 60) and fig.tokens_per_j == pytest.approx(60 / 24)
    assert fig.temp_max_c == 53 and fig.governor == "performance" and fig.throttled is None


def test_no_sensor_gives_none_never_zero():
    readings = [Reading(t, None, None, None, None, None, None, None) for t in range(3)]
    fig = device_figures([_sample(0.2, 1.5, 10)], readings, DeviceFacts((), None, None, None, None), 0.5)
    assert fig.energy_j is None and fig.avg_power_w is None and fig.j_per_token is None and fig.tokens_per_j is None
    assert fig.temp_max_c is None and fig.throttled is None


def test_timeline_spreads_each_requests_tokens_over_its_span():
    readings = [_reading(t, 10.0 * t) for t in (0, 1, 2)]
    points = timeline([_sample(0.0, 2.0, 100)], readings)
    assert [v for p in points for v in (p.t_s, p.tokens_per_s, p.power_w)] == pytest.approx([1, 50, 10, 2, 50, 10])


@pytest.fixture(scope="module")
def pi_run(tiny_q4_k_m) -> BenchRun:
    """The tiny model measured with the captured Pi 5's sensors: PMIC watts, temperature, clocks."""
    config = BenchConfig(models=(tiny_q4_k_m,), prompt_tokens=(16,), gen_tokens=16, repeat=2, threads=2,
                         sensors_root=BOARDS / "rpi5-8gb")
    return run_bench(config, progress=lambda _: None)


def test_a_run_reports_energy_per_token_from_the_boards_sensors(pi_run):
    (m,) = pi_run.measurements
    d = m.device
    tokens = sum(s.gen_tokens for s in m.samples)
    assert d.power_sources == ("Pi 5 PMIC",) and d.governor == "ondemand"
    assert d.avg_power_w == pytest.approx(3.9565, rel=1e-3)  # the capture's steady PMIC total
    assert d.j_per_token == pytest.approx(d.energy_j / tokens) and d.tokens_per_j == pytest.approx(tokens / d.energy_j)
    assert d.temp_max_c == 67.35 and d.throttled is False and d.readings >= 2
    assert pi_run.host["sensors"]["power_sources"] == ["Pi 5 PMIC"] or pi_run.host["sensors"]["power_sources"] == ("Pi 5 PMIC",)


def test_energy_fields_survive_json_and_show_in_csv_and_table(pi_run):
    again = BenchRun.from_dict(json.loads(json.dumps(pi_run.to_dict())))
    assert again.measurements[0].device == pi_run.measurements[0].device
    row = csv_row(pi_run.measurements[0])
    assert row["avg_power_w"] > 0 and row["j_per_token"] > 0 and row["throttled"] is False
    assert "J/token" in table_rows(pi_run)[0]


def test_this_vm_has_no_power_sensor_so_the_fields_say_n_a(tiny_q4_k_m):
    if Path("/sys/class/powercap").exists():
        pytest.skip("this machine has RAPL")
    config = BenchConfig(models=(tiny_q4_k_m,), prompt_tokens=(16,), gen_tokens=8, repeat=1, threads=2)
    run = run_bench(config, progress=lambda _: None)
    m = run.measurements[0]
    assert m.device.avg_power_w is None and m.device.j_per_token is None
    assert csv_row(m)["j_per_token"] == "n/a" and table_rows(run)[0]["J/token"] == "n/a"


def test_cli_duration_runs_until_the_time_and_csv_says_n_a(tiny_q4_k_m, tmp_path):
    import contextlib
    import csv
    import io

    from edgekit.cli import main

    out = tmp_path / "steady.csv"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["bench", str(tiny_q4_k_m), "--duration", "2", "--prompt-tokens", "16", "--gen-tokens", "8",
                     "--threads", "1", "--output", str(out)])
    assert code == 0, err.getvalue()
    (row,) = list(csv.DictReader(out.open()))
    assert int(row["repeats"]) >= 2 and "s left" in err.getvalue()
    if not Path("/sys/class/powercap").exists():
        assert row["avg_power_w"] == "n/a" and row["j_per_token"] == "n/a" and row["throttled"] == "n/a"


@pytest.mark.parametrize("argv, message", [
    (["--duration", "0"], "--duration takes a positive number"),
    (["--workload", "assist", "--entities", "-1"], "--entities a count from 0"),
])
def test_bad_profiling_options_are_one_line_errors(tiny_q4_k_m, argv, message, capsys):
    from edgekit.cli import main

    assert main(["bench", str(tiny_q4_k_m), *argv]) != 0
    assert message in capsys.readouterr().err
