"""tune: a real (tiny) sweep through the engine, and the choice rules on a big.LITTLE board."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekit.cli import main
from edgekit.errors import OutputError
from edgekit.hardware import detect
from edgekit.profiles import load_profile
from edgekit.settings import Settings
from edgekit.tune import SettingSpeed, Sweep, thread_candidates, tune, write_profile

BOARDS = Path(__file__).parent / "boards"
SMALL = Sweep(threads=(1, 2), batch_sizes=(64, 128), prompt_words=40, generate_tokens=8, repeats=1)


def test_tiny_sweep_writes_the_fastest_settings_as_a_profile(tiny_gguf_f16, tmp_path):
    lines: list[str] = []
    hw = detect()
    result = tune(tiny_gguf_f16, load_profile("cpu-generic"), hw, name="bench-box", sweep=SMALL,
                  progress=lines.append)
    assert len(result.measurements) == len(lines) >= 4  # 2 thread counts + 2 batch sizes
    assert all(m.prompt_tokens_per_s > 0 and m.generation_tokens_per_s > 0 for m in result.measurements)
    by_threads = [m for m in result.measurements if m.settings.n_batch == result.plan.settings.n_batch][:2]
    fastest_generation = max(by_threads, key=lambda m: m.generation_tokens_per_s).settings.n_threads
    assert result.settings.n_threads == fastest_generation
    batch_runs = [m for m in result.measurements if m.settings.n_threads == result.settings.n_threads
                  and m.settings.n_threads_batch == result.settings.n_threads_batch]
    assert result.settings.n_batch == max(batch_runs, key=lambda m: m.prompt_tokens_per_s).settings.n_batch

    out = write_profile(result, tmp_path / "bench-box.toml")
    written = load_profile(out)
    assert written.name == "bench-box"
    assert (written.run.n_threads, written.run.n_threads_batch) == (result.settings.n_threads, result.settings.n_threads_batch)
    assert written.run.n_batch == written.run.n_ubatch == result.settings.n_batch
    assert written.match.priority == load_profile("cpu-generic").match.priority + 1
    assert [p.name for p in tmp_path.iterdir()] == ["bench-box.toml"]  # no temp file left


def test_tune_command_reports_progress_on_stderr(tiny_gguf_f16, tmp_path, capsys):
    out = tmp_path / "mine.toml"
    code = main(["tune", str(tiny_gguf_f16), "--threads", "1", "--batch", "64", "-o", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert "tok/s" in captured.err and str(out) in captured.out
    assert load_profile(out).run.n_threads == 1


def test_tune_refuses_an_unwritable_output_before_measuring(tiny_gguf_f16, tmp_path, capsys):
    code = main(["tune", str(tiny_gguf_f16), "-o", str(tmp_path / "missing" / "x.toml")])
    assert code == OutputError.exit_code
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("board, expected", [("rk3588-rock5b-8gb", (1, 2, 4, 8)), ("rpi5-8gb", (1, 2, 4)),
                                             ("jetson-orin-nano-8gb", (1, 2, 4, 6))])
def test_thread_sweep_covers_powers_of_two_the_big_cores_and_all_cores(board, expected):
    assert thread_candidates(detect(BOARDS / board), Sweep()) == expected


def test_big_little_board_gets_generation_on_big_cores_and_prompts_on_all(tiny_gguf_f16):
    """On an RK3588, decode is memory-bound and slows when A55s join; prompts gain from all eight."""
    hw = detect(BOARDS / "rk3588-rock5b-8gb")

    def rk3588_speeds(model: Path, s: Settings, sweep: Sweep) -> SettingSpeed:
        big = min(s.n_threads, 4)
        little = max(0, s.n_threads - 4)
        generation = 2.0 * big - 3.0 * little  # stragglers on A55s hold back every token
        prompt = 20.0 * big + 8.0 * little + s.n_batch / 64
        return SettingSpeed(s, prompt, generation)

    result = tune(tiny_gguf_f16, load_profile("cpu-generic"), hw, sweep=Sweep(batch_sizes=(128, 512)),
                  measure=rk3588_speeds, progress=lambda _: None)
    assert (result.settings.n_threads, result.settings.n_threads_batch) == (4, 8)
    assert result.settings.n_batch == 512
    assert result.profile.run.n_threads == 4 and result.profile.run.n_threads_batch == 8


def test_tune_writes_to_the_users_config_folder_by_default(tiny_gguf_f16, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)  # outside any checkout: no profiles/ folder here
    assert main(["tune", str(tiny_gguf_f16), "--threads", "1", "--batch", "64"]) == 0
    written = tmp_path / "config" / "edgekit" / "profiles" / "local.toml"
    out = capsys.readouterr().out
    assert out.startswith(f"{written}:") and "use it with --profile local" in out
    assert load_profile("local").source == written
