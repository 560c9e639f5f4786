"""What commands print on a terminal: JSON for scripts, progress redrawn in place."""

from __future__ import annotations

import json
import sys
from typing import Any


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def status(line: str, final: bool = False) -> None:
    """Progress on a terminal: one line redrawn in place. Nothing when stderr is a log or a pipe."""
    if sys.stderr.isatty():
        print(f"\r\033[K  {line}", end="\n" if final else "", file=sys.stderr, flush=True)


def show_quantize(p: Any) -> None:
    """quantize's per-tensor progress; a log gets only the start and the end of each level."""
    line = f"[{p.level_index}/{p.level_count}] {p.level:<7} tensor {p.tensor_index}/{p.tensor_count}  {p.elapsed_s:5.1f} s"
    if sys.stderr.isatty():
        status(line, final=p.done)
    elif p.tensor_index == 0 or p.done:
        print(line, file=sys.stderr, flush=True)
