"""The `edgekit` command: parse argv, call one library function, print for humans.

Every command is a thin shell over functions that the tests call directly. Errors
of our own become one line on stderr and a non-zero exit; --debug shows the traceback.
Each module here registers one group of commands and their handlers, in the pipeline's
order: model (files in and out), box (detect, plan, tune), run (run, chat), daemon
(serve, cache, request, install-service), measure (bench, quality, recommend).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from edgekit import __version__
from edgekit.cli import box, daemon, measure, model, run
from edgekit.cli.options import HelpFormatter
from edgekit.errors import EdgekitError


DESCRIPTION = """edgekit: put open LLMs on edge boxes and serve them over MQTT.

The pipeline, one command a stage: pull or make-test-model -> convert -> quantize ->
inspect -> detect / plan / tune -> run / chat -> serve (install-service) -> bench /
quality / recommend. `edgekit COMMAND --help` shows each command's options and defaults;
the README and docs/ show them at work."""


def _route(argv: Sequence[str]) -> list[str]:
    """`bench compare OLD NEW` is the bench-compare command (bench itself takes model paths)."""
    argv = list(argv)
    first = next((i for i, word in enumerate(argv) if not word.startswith("-")), None)
    if first is not None and argv[first:first + 2] == ["bench", "compare"]:
        argv[first:first + 2] = ["bench-compare"]
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgekit", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for group in (model, box, run, daemon, measure):  # the pipeline's order, as --help lists them
        group.register(sub)
    for choice in sub._choices_actions:  # each command's --help opens with what it does
        sub.choices[choice.dest].description = choice.help
    return parser


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so that every `with` and `finally`
    on the way out (temporary files, engine children) cleans up as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: Any) -> None:
    raise Stopped(signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_route(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    main_thread = threading.current_thread() is threading.main_thread()  # signals can be set only there
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGHUP) if main_thread}
    try:
        return _run(args)
    finally:  # main() is also called in-process (tests): leave the handlers as they were
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace) -> int:
    """The command, with our errors as one line and an exit code."""
    try:
        return int(args.func(args) or 0)
    except EdgekitError as exc:
        if args.debug:
            raise
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C (130), SIGTERM (143), SIGHUP (129): cleaned up on the way here
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        print(f"\nedgekit: {'interrupted' if signum == signal.SIGINT else 'stopped by ' + str(exc)}", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:  # `edgekit detect --json | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as exc:  # a bug of ours: still one line, traceback on request
        if args.debug:
            raise
        print(f"edgekit: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return 70
