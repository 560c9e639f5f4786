"""One settings path: `plan`, `run`, `serve` and `bench` resolve the same llama.cpp settings for
the same model on the same box, and each prints them on a `settings:` line.

The box is a captured RK3588 board (4 Cortex-A76 + 4 Cortex-A55, tests/boards), named to every
command through $EDGEKIT_HARDWARE_ROOT: generation must get the 4 big cores and prompts all 8.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgekit.cli import main
from edgekit.serve.mqtt.mosquitto import free_port
from tests.serve_support import DaemonProcess, daemon_toml

BIG_LITTLE = Path(__file__).parent / "boards" / "rk3588-rock5b-8gb"
SETTINGS = re.compile(r"settings: (n_ctx \d+, threads .*?, mmap (?:True|False))")


def test_plan_run_serve_and_bench_resolve_the_same_settings_on_a_big_little_board(
        tiny_q4_k_m, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEKIT_HARDWARE_ROOT", str(BIG_LITTLE))
    model = str(tiny_q4_k_m)
    printed = {}
    assert main(["plan", model]) == 0
    printed["plan"] = capsys.readouterr().out
    assert main(["run", model, "-p", "Turn on the light", "--max-tokens", "2"]) == 0
    printed["run"] = capsys.readouterr().err
    assert main(["bench", model, "--prompt-tokens", "8", "--gen-tokens", "4", "--repeat", "1", "--no-sensors"]) == 0
    printed["bench"] = capsys.readouterr().err
    printed["serve"] = _serve_start_log(tiny_q4_k_m, tmp_path / "serve")

    found = {command: SETTINGS.findall(text) for command, text in printed.items()}
    assert all(len(lines) == 1 for lines in found.values()), printed
    lines = {lines[0] for lines in found.values()}
    assert len(lines) == 1, found
    assert "threads 4/8" in lines.pop()  # the A76s generate; all eight cores read the prompt


def _serve_start_log(model: Path, folder: Path) -> str:
    """`edgekit serve` (HTTP only) on the captured board, with no --ctx (as the other commands): its log."""
    daemon = DaemonProcess(folder, model, "none", "settings-path", http_port=free_port())
    config = daemon_toml(folder / "state", "settings-path")
    daemon.config.write_text("".join(line + "\n" for line in config.splitlines() if not line.startswith("ctx =")))
    daemon.start(env={"EDGEKIT_HARDWARE_ROOT": str(BIG_LITTLE)})
    try:
        return daemon.log.read_text(errors="replace")
    finally:
        daemon.stop()
