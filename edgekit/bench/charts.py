"""Small inline-SVG charts for the HTML report: bars with error whiskers, box plots, scatter, lines.

Our own few functions instead of a charting library: the report must open on a box with
no internet, so nothing may come from a CDN, and four chart kinds are all it needs.
Every chart is a self-contained <svg> string with a <title> for screen readers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

# One colour per quant level or series, in the order they first appear (colour-blind safe-ish).
PALETTE = ("#2563eb", "#f97316", "#16a34a", "#dc2626", "#9333ea", "#0891b2", "#ca8a04", "#db2777")
INK, GRID, MUTED = "#1f2937", "#e5e7eb", "#6b7280"
FONT = "font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"

WIDTH = 860
LABEL_W = 250  # room for row labels left of the plot
ROW_H = 30
PAD = 16


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    spread: float  # drawn as a whisker of ± spread
    colour: str


@dataclass(frozen=True)
class BoxPlot:
    label: str
    values: tuple[float, ...]
    colour: str


@dataclass(frozen=True)
class Series:
    """One line over time: (seconds, value) points; None values leave a gap."""

    label: str
    points: tuple[tuple[float, float | None], ...]
    colour: str


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    colour: str


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high]: steps of 1, 2 or 5 times a power of ten."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    start = math.floor(low / step) * step
    ticks, t = [], start
    while t <= high + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < high:
        ticks.append(round(t, 12))
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.0f}"
    return f"{v:.3g}"


def _svg(height: int, title: str, body: list[str], css_class: str) -> str:
    return (
        f'<svg class="chart {css_class}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img" style="{FONT}">'
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def _x_axis(ticks: list[float], scale, top: int, bottom: int, unit: str) -> list[str]:  # type: ignore[no-untyped-def]
    parts = []
    for t in ticks:
        x = scale(t)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="{GRID}"/>')
        parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" font-size="12" fill="{MUTED}" text-anchor="middle">{_fmt(t)}</text>')
    parts.append(f'<text x="{WIDTH - PAD}" y="{bottom + 34}" font-size="12" fill="{MUTED}" text-anchor="end">{escape(unit)}</text>')
    return parts


def _linear(lo: float, hi: float, left: float, right: float):  # type: ignore[no-untyped-def]
    span = (hi - lo) or 1.0
    return lambda v: left + (v - lo) / span * (right - left)


def _row_label(y: float, text: str) -> str:
    return (f'<text x="{LABEL_W - 10}" y="{y + 4:.1f}" font-size="13" fill="{INK}" '
            f'text-anchor="end">{escape(text)}</text>')


def bar_chart(bars: Sequence[Bar], title: str, unit: str) -> str:
    """Horizontal bars, one row per bar, with a ± whisker: tokens/s per quant level and setting."""
    top, height = PAD, PAD * 2 + ROW_H * len(bars) + 40
    bottom = top + ROW_H * len(bars)
    ticks = nice_ticks(0.0, max((b.value + b.spread for b in bars), default=1.0))
    scale = _linear(0.0, ticks[-1], LABEL_W, WIDTH - PAD * 2)
    body = _x_axis(ticks, scale, top, bottom, unit)
    for i, b in enumerate(bars):
        y = top + i * ROW_H + ROW_H / 2
        x0, x1 = scale(0.0), scale(b.value)
        body.append(_row_label(y, b.label))
        body.append(f'<rect class="bar" x="{x0:.1f}" y="{y - 9:.1f}" width="{max(1.0, x1 - x0):.1f}" height="18" '
                    f'rx="3" fill="{b.colour}"><title>{escape(b.label)}: {_fmt(b.value)} ± {_fmt(b.spread)} {escape(unit)}</title></rect>')
        if b.spread > 0:
            lo, hi = scale(max(0.0, b.value - b.spread)), scale(b.value + b.spread)
            body.append(f'<line x1="{lo:.1f}" y1="{y:.1f}" x2="{hi:.1f}" y2="{y:.1f}" stroke="{INK}" stroke-width="1.5"/>')
        body.append(f'<text x="{x1 + 6:.1f}" y="{y - 11:.1f}" font-size="11" fill="{MUTED}">{_fmt(b.value)}</text>')
    return _svg(height, title, body, "bars")


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    rank = (len(sorted_values) - 1) * q
    low = math.floor(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def box_chart(boxes: Sequence[BoxPlot], title: str, unit: str) -> str:
    """Horizontal box plots (p25-p75 box, p50 line, p5-p99 whiskers) with every sample as a dot."""
    boxes = [b for b in boxes if b.values]
    top, height = PAD, PAD * 2 + ROW_H * len(boxes) + 40
    bottom = top + ROW_H * len(boxes)
    hi = max((max(b.values) for b in boxes), default=1.0)
    ticks = nice_ticks(0.0, hi)
    scale = _linear(0.0, ticks[-1], LABEL_W, WIDTH - PAD * 2)
    body = _x_axis(ticks, scale, top, bottom, unit)
    for i, b in enumerate(boxes):
        y = top + i * ROW_H + ROW_H / 2
        v = sorted(b.values)
        p5, p25, p50, p75, p99 = (scale(_quantile(v, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.99))
        body.append(_row_label(y, b.label))
        body.append(f'<line x1="{p5:.1f}" y1="{y:.1f}" x2="{p99:.1f}" y2="{y:.1f}" stroke="{b.colour}" stroke-width="1.5"/>')
        body.append(f'<rect class="box" x="{p25:.1f}" y="{y - 9:.1f}" width="{max(2.0, p75 - p25):.1f}" height="18" '
                    f'fill="{b.colour}" fill-opacity="0.35" stroke="{b.colour}" stroke-width="1.5"/>')
        body.append(f'<line x1="{p50:.1f}" y1="{y - 9:.1f}" x2="{p50:.1f}" y2="{y + 9:.1f}" stroke="{b.colour}" stroke-width="3"/>')
        for value in _thin(v, 200):
            body.append(f'<circle cx="{scale(value):.1f}" cy="{y:.1f}" r="1.6" fill="{b.colour}" fill-opacity="0.6"/>')
    return _svg(height, title, body, "boxes")


def _thin(values: Sequence[float], most: int) -> Sequence[float]:
    """At most ``most`` evenly spaced samples: thousands of dots add nothing but bytes."""
    if len(values) <= most:
        return values
    step = len(values) / most
    return [values[int(i * step)] for i in range(most)]


def scatter_chart(points: Sequence[Point], title: str, x_unit: str, y_unit: str, log_y: bool = False) -> str:
    """Labelled points: size against quality or against speed."""
    height, left, right, top, bottom = 380, 80, WIDTH - PAD * 2, PAD + 10, 320
    ys = [_y(p.y, log_y) for p in points] or [0.0, 1.0]
    xt = nice_ticks(0.0, 1.12 * max((p.x for p in points), default=1.0))  # room for the last label
    yt = nice_ticks(min(0.0, min(ys)) if not log_y else math.floor(min(ys)), max(ys))
    sx, sy = _linear(0.0, xt[-1], left, right), _linear(yt[0], yt[-1], bottom, top)
    body = _grid(xt, yt, sx, sy, left, right, top, bottom, (lambda t: _fmt(10**t)) if log_y else _fmt)
    body.append(f'<text x="{right}" y="{bottom + 36}" font-size="12" fill="{MUTED}" text-anchor="end">{escape(x_unit)}</text>')
    body.append(f'<text x="{left}" y="{top - 8}" font-size="12" fill="{MUTED}">{escape(y_unit)}</text>')
    for p, y in zip(points, ys):
        cx, cy = sx(p.x), sy(y)
        body.append(f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="7" fill="{p.colour}">'
                    f"<title>{escape(p.label)}: {_fmt(p.x)} {escape(x_unit)}, {p.y:.4g} {escape(y_unit)}</title></circle>")
        body.append(f'<text x="{cx + 10:.1f}" y="{cy - 8:.1f}" font-size="13" fill="{INK}">{escape(p.label)}</text>')
    return _svg(height, title, body, "scatter")


THROTTLE = "#dc2626"


def line_chart(series: Sequence[Series], title: str, unit: str, marks: Sequence[float] = ()) -> str:
    """Values over time, one line per series; ``marks`` (seconds) are drawn as red bands: throttling."""
    height, left, right, top, bottom = 260, 80, WIDTH - PAD * 2, PAD + 10, 210
    xs = [x for s in series for x, _ in s.points] or [1.0]
    ys = [y for s in series for _, y in s.points if y is not None] or [1.0]
    xt, yt = nice_ticks(0.0, max(xs)), nice_ticks(min(0.0, min(ys)), max(ys) * 1.05)
    sx, sy = _linear(0.0, xt[-1], left, right), _linear(yt[0], yt[-1], bottom, top)
    body = [f'<rect class="throttled" x="{sx(t) - 3:.1f}" y="{top}" width="6" height="{bottom - top}" '
            f'fill="{THROTTLE}" fill-opacity="0.25"><title>throttled at {_fmt(t)} s</title></rect>' for t in marks]
    body += _grid(xt, yt, sx, sy, left, right, top, bottom)
    body.append(f'<text x="{right}" y="{bottom + 36}" font-size="12" fill="{MUTED}" text-anchor="end">seconds</text>')
    body.append(f'<text x="{left}" y="{top - 8}" font-size="12" fill="{MUTED}">{escape(unit)}</text>')
    for s in series:
        for run in _unbroken(s.points):
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in run)
            body.append(f'<polyline class="line" points="{path}" fill="none" stroke="{s.colour}" stroke-width="2.5">'
                        f"<title>{escape(s.label)}</title></polyline>")
    return _svg(height, title, body, "line")


def _grid(xt, yt, sx, sy, left, right, top, bottom, y_label=_fmt) -> list[str]:  # type: ignore[no-untyped-def]
    """Grid lines and tick labels of a chart with two numeric axes."""
    parts = []
    for t in xt:
        parts.append(f'<line x1="{sx(t):.1f}" y1="{top}" x2="{sx(t):.1f}" y2="{bottom}" stroke="{GRID}"/>')
        parts.append(f'<text x="{sx(t):.1f}" y="{bottom + 16}" font-size="12" fill="{MUTED}" text-anchor="middle">{_fmt(t)}</text>')
    for t in yt:
        parts.append(f'<line x1="{left}" y1="{sy(t):.1f}" x2="{right}" y2="{sy(t):.1f}" stroke="{GRID}"/>')
        parts.append(f'<text x="{left - 8}" y="{sy(t) + 4:.1f}" font-size="12" fill="{MUTED}" text-anchor="end">{y_label(t)}</text>')
    return parts


def _unbroken(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """Runs of points without a None between them: a sensor that failed for a while is a gap, not 0."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if y is None:
            runs.append([])
        else:
            runs[-1].append((x, y))
    return [r if len(r) > 1 else r * 2 for r in runs if r]


def _y(value: float, log_y: bool) -> float:
    return math.log10(max(value, 1e-9)) if log_y else value


def legend(entries: Sequence[tuple[str, str]]) -> str:
    """A row of colour swatches as HTML, shared by the charts of one report."""
    items = "".join(
        f'<span class="key"><span class="swatch" style="background:{c}"></span>{escape(name)}</span>'
        for name, c in entries
    )
    return f'<div class="legend">{items}</div>'
