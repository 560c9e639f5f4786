"""The ``--lora [NAME=]PATH[:SCALE]`` spec that `convert`, `run`, `serve`, `install-service` and
``[model] lora`` share: parsed here, in a module light enough for the daemon's config to import."""

from __future__ import annotations

import math
import re
from pathlib import Path

from edgekit.errors import UsageError


def parse_lora_arg(text: str) -> tuple[str, Path, float]:
    """``[NAME=]PATH[:SCALE]`` -> (name, path, scale); the name defaults to the file or folder stem."""
    name, sep, rest = text.partition("=")
    if not sep:
        name, rest = "", text
    path, scale = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", tail):
        path, scale = head, float(tail)
    if not path or (sep and not name):
        raise UsageError(f"bad --lora {text!r}: write PATH, PATH:SCALE or NAME=PATH[:SCALE]")
    if not math.isfinite(scale):
        raise UsageError(f"bad --lora {text!r}: the scale must be a finite number")
    return name or Path(path).stem, Path(path), scale
