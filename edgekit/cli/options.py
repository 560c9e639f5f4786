"""Argument pieces that several commands share: comma lists, the help format, the box options."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """argparse type for comma-separated lists: "32,256,1024" -> [32, 256, 1024]."""

    def parse(text: str) -> list[Any]:
        try:
            return [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    return parse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, when it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default in (None, False, argparse.SUPPRESS) or "default" in text
                or isinstance(action, argparse._VersionAction)):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def profile_help(what: str = "plan for") -> str:
    from edgekit.profiles import profile_names

    names = ", ".join(profile_names()) or "none found"
    return (f"profile name or .toml path: {what} that box (its memory, GPU, cores) unless --this-box; "
            f"default: the profile that matches this machine. Known: {names}")


def add_lora_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="append", metavar="NAME=ADAPTER.gguf[:SCALE]",
                   help="load a GGUF LoRA adapter beside the model (repeatable; edgekit convert-lora makes one); "
                        "a request picks it by NAME")


def add_box_options(p: argparse.ArgumentParser, what: str = "plan for", required: bool = False) -> None:
    p.add_argument("--profile", required=required, default=None, metavar="P", help=profile_help(what))
    p.add_argument("--this-box", action="store_true", default=None,
                   help="with --profile: plan for this machine's memory and cores, not the profile's box")
