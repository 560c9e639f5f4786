"""Bench results kept per box (a JSONL history) and compared run against run.

``edgekit bench --save`` appends the run to a JSONL file, one run a line; ``edgekit bench
compare OLD NEW`` matches settings by file, mode, prompt, generation and concurrency, and
gives each figure's change with a 95 % bootstrap interval of the ratio of means. A figure is a
regression only when the whole interval lies beyond the threshold on the worse side, so noise
inside one run does not fail a CI job; drift between runs on a busy box (10-20 %) is what the
threshold is for.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.atomic import append_line
from edgekit.bench.results import BenchRun, Measurement
from edgekit.bench.stats import mean
from edgekit.errors import UsageError

DEFAULT_THRESHOLD = 0.10
BOOTSTRAP_DRAWS = 2000
# figure -> (what the reader sees, True when higher is better); per-request figures get an interval
FIGURES: dict[str, tuple[str, bool]] = {
    "gen_tps": ("generation tok/s", True),
    "prompt_tps": ("prompt tok/s", True),
    "ttft_ms": ("TTFT ms", False),
    "e2e_ms": ("end to end ms", False),
}
DEVICE_FIGURES: dict[str, tuple[str, bool]] = {"j_per_token": ("J/token", False), "avg_power_w": ("avg W", False)}


def default_history() -> Path:
    """Per box: $XDG_DATA_HOME/edgekit/bench/<hostname>.jsonl."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local/share")
    return base / "edgekit" / "bench" / f"{socket.gethostname()}.jsonl"


def save(run: BenchRun, path: Path) -> Path:
    """Append ``run`` as one JSON line; the folder is made if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return append_line(path, json.dumps(run.to_dict(), separators=(",", ":")))


def load(spec: str) -> BenchRun:
    """A run from ``FILE.json`` (`bench --json --output`), or from a history: ``FILE.jsonl`` is its
    last run, ``FILE.jsonl#N`` its N-th (0 first, -1 last)."""
    name, _, index = spec.partition("#")
    path = Path(name)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{name}: cannot read it ({exc.strerror}); give a bench JSON or a --save history") from None
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        if path.suffix == ".jsonl" or index:
            return BenchRun.from_dict(json.loads(lines[int(index or -1)]))
        return BenchRun.from_dict(json.loads(text))
    except IndexError:
        raise UsageError(f"{spec}: the history has {len(lines)} runs (count from 0, or -1 for the last)") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{spec}: not an edgekit bench result ({exc})") from None


@dataclass(frozen=True)
class Change:
    """One figure of one setting, old against new."""

    setting: str
    figure: str
    old: float
    new: float
    change: float  # new / old - 1
    low: float | None  # 95 % bootstrap interval of the change; None for one value per run
    high: float | None
    verdict: str  # "regression", "improvement" or "within threshold"


@dataclass(frozen=True)
class RunComparison:
    changes: tuple[Change, ...]
    unmatched: tuple[str, ...]  # settings only one of the runs has
    threshold: float

    @property
    def regressions(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.verdict == "regression")


def compare(old: BenchRun, new: BenchRun, threshold: float = DEFAULT_THRESHOLD) -> RunComparison:
    """Every figure of every setting both runs measured."""
    if not 0 < threshold < 1:
        raise UsageError(f"--threshold {threshold}: give a fraction between 0 and 1, e.g. 0.1 for 10 %")
    olds, news = _by_setting(old), _by_setting(new)
    changes = [change for key in olds if key in news for change in _changes(olds[key], news[key], threshold)]
    if not changes:
        raise UsageError("the two runs share no setting (model file, mode, prompt and generation tokens, "
                         "concurrency): compare runs of the same benchmark")
    unmatched = [_label(k) for k in [*olds, *news] if (k in olds) != (k in news)]
    return RunComparison(tuple(changes), tuple(unmatched), threshold)


def _by_setting(run: BenchRun) -> dict[tuple, Measurement]:
    return {(m.model.file_name, m.mode, m.prompt_tokens, m.gen_tokens, m.concurrency): m for m in run.measurements}


def _label(key: tuple) -> str:
    name, mode, pp, tg, c = key
    return f"{name} pp{pp} tg{tg} c{c} {mode}"


def _changes(old: Measurement, new: Measurement, threshold: float) -> list[Change]:
    label = _label((old.model.file_name, old.mode, old.prompt_tokens, old.gen_tokens, old.concurrency))
    out = []
    for figure, (name, higher) in FIGURES.items():
        a, b = [getattr(s, figure) for s in old.samples], [getattr(s, figure) for s in new.samples]
        if a and b and mean(a) > 0:
            low, high = bootstrap_change(a, b)
            out.append(_change(label, name, mean(a), mean(b), low, high, higher, threshold))
    for figure, (name, higher) in DEVICE_FIGURES.items():
        a, b = getattr(old.device, figure), getattr(new.device, figure)
        if a and b:
            out.append(_change(label, name, a, b, None, None, higher, threshold))
    return out


def bootstrap_change(old: Sequence[float], new: Sequence[float], draws: int = BOOTSTRAP_DRAWS,
                     seed: int = 0) -> tuple[float, float]:
    """95 % interval of mean(new) / mean(old) - 1, resampling each run's requests (seeded: a CI
    job gives the same verdict for the same files)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(old, dtype=float), np.asarray(new, dtype=float)
    ratios = (rng.choice(b, (draws, len(b))).mean(axis=1) / rng.choice(a, (draws, len(a))).mean(axis=1)) - 1
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def _change(setting: str, figure: str, old: float, new: float, low: float | None, high: float | None,
            higher_is_better: bool, threshold: float) -> Change:
    change = new / old - 1
    lo, hi = (low, high) if low is not None and high is not None else (change, change)
    worse_by, better_by = (-hi, lo) if higher_is_better else (lo, -hi)  # how far the whole interval is on each side
    verdict = "regression" if worse_by > threshold else "improvement" if better_by > threshold else "within threshold"
    return Change(setting, figure, old, new, change, low, high, verdict)


def comparison_rows(result: RunComparison) -> list[dict[str, str]]:
    """Rows for the terminal table."""
    rows = []
    for c in result.changes:
        interval = "one value per run" if c.low is None else f"{c.low:+.1%} .. {c.high:+.1%}"
        rows.append({"setting": c.setting, "figure": c.figure, "old": f"{c.old:.4g}", "new": f"{c.new:.4g}",
                     "change": f"{c.change:+.1%}", "95% interval": interval, "verdict": c.verdict})
    return rows
