"""The CLI as a new user meets it: help on every command and option, one line per box and thread choice."""

from __future__ import annotations

import argparse
import signal

import pytest

from edgekit.cli import build_parser, main
from edgekit.profiles import profile_names


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_top_level_help_speaks_to_users(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "thin shell" not in out and "parse argv" not in out
    assert "put open LLMs on edge boxes" in out and "COMMAND --help" in out


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_option_has_help_and_shows_its_default(command):
    parser = _subcommands()[command]
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"{command} {action.option_strings or action.dest}: no help text"
        if action.option_strings and action.default not in (None, False):
            shown = ",".join(map(str, action.default)) if isinstance(action.default, list) else str(action.default)
            assert f"default: {shown}" in " ".join(text.split()), f"{command} {action.option_strings}: default not shown"


@pytest.mark.parametrize("command", ["plan", "run", "chat", "serve", "bench", "recommend", "install-service", "tune"])
def test_profile_option_lists_the_profile_names(command):
    text = " ".join(_subcommands()[command].format_help().split())
    for name in profile_names():
        assert name in text.replace("- ", "-"), f"{command} --profile does not name {name}"


def test_main_leaves_the_signal_handlers_as_it_found_them(tiny_gguf_f16, capsys):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    assert main(["inspect", str(tiny_gguf_f16)]) == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


def test_run_says_which_box_and_how_many_threads(tiny_q4_k_m, capsys):
    code = main(["run", str(tiny_q4_k_m), "-p", "hi", "--max-tokens", "2", "--profile", "rpi4-4gb"])
    err = capsys.readouterr().err
    assert code == 0, err
    line = next(l for l in err.splitlines() if l.startswith("edgekit: profile rpi4-4gb"))
    assert "for a rpi4-4gb box" in line and "4 generation threads" in line


@pytest.mark.slow  # converts the TinyLlama-shaped checkpoint (about 20 s) until the signal
def test_ctrl_c_stops_convert_at_once_and_leaves_no_file(tinyllama_checkpoint, tmp_path):
    import subprocess
    import sys
    import time

    out = tmp_path / "out.gguf"
    run = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "convert", str(tinyllama_checkpoint), "-o", str(out),
                            "--quant", "Q4_K_M"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.is_file() and p.stat().st_size > 0 for p in tmp_path.rglob("*.tmp")):  # writing the f16
        assert run.poll() is None and time.monotonic() < deadline, "no temporary file appeared"
        time.sleep(0.05)
    sent = time.monotonic()
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=30)
    took = time.monotonic() - sent
    assert run.returncode == 130 and "interrupted" in err, err
    assert took < 3, f"took {took:.1f} s to stop"
    assert list(tmp_path.iterdir()) == []


def test_serve_takes_the_ctx_and_this_box_that_the_advice_names():
    from edgekit.serve.config import load_config

    args = build_parser().parse_args(["serve", "--ctx", "1024", "--this-box", "--profile", "rpi4-4gb"])
    model = load_config(None, flags=vars(args)).model
    assert (model.ctx, model.this_box, model.profile) == (1024, True, "rpi4-4gb")
    unset = load_config(None, flags=vars(build_parser().parse_args(["serve"]))).model
    assert (unset.ctx, unset.this_box) == (None, False)  # an absent flag leaves the config file's value
