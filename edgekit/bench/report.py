"""The HTML report: one self-contained page with a summary table and inline SVG charts.

Nothing is fetched when the page opens (no CDN, no fonts, no script): edge boxes and
the networks around them are often offline, and a report must still open in ten years.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from html import escape
from pathlib import Path

from edgekit.atomic import write_text
from edgekit.bench.charts import (
    PALETTE, Bar, BoxPlot, Point, Series, bar_chart, box_chart, legend, line_chart, scatter_chart,
)
from edgekit.bench.output import llama_bench_ratios, table_rows
from edgekit.bench.quality import QualityResult, quality_table
from edgekit.bench.results import BenchRun, Measurement, file_label

_CSS = """
body{margin:0;background:#f9fafb;color:#1f2937;font:16px/1.55 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}
main{max-width:1180px;margin:0 auto;padding:32px 28px 64px}
h1{font-size:28px;margin:0 0 4px}h2{font-size:20px;margin:40px 0 8px}h3{font-size:15px;margin:0 0 6px;color:#374151}
.sub{color:#6b7280;margin:0 0 24px}
.note{color:#6b7280;font-size:14px;max-width:860px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:18px 22px;margin:18px 0}
table{border-collapse:collapse;font-size:13px;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:6px 10px;border-bottom:1px solid #e5e7eb;text-align:right;white-space:nowrap}
th{background:#f3f4f6;font-weight:600}th:first-child,td:first-child{text-align:left}
.scroll{overflow-x:auto}
.legend{display:flex;flex-wrap:wrap;gap:16px;margin:6px 0 10px;font-size:14px}
.swatch{display:inline-block;width:14px;height:14px;border-radius:3px;margin-right:6px;vertical-align:-2px}
.cards{display:flex;flex-wrap:wrap;gap:14px}
.card{flex:1 1 200px;background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:14px 18px}
.card b{display:block;font-size:24px}.card span{color:#6b7280;font-size:13px}
"""


def colours_by_level(run: BenchRun | None, quality: Sequence[QualityResult] = ()) -> dict[str, str]:
    """One colour per quant level, stable across all charts of the page."""
    levels = [m.model.file_type for m in (run.measurements if run else ())]
    levels += [q.file_type or "?" for q in quality]
    return {level: PALETTE[i % len(PALETTE)] for i, level in enumerate(dict.fromkeys(levels))}


def render_report(run: BenchRun | None, quality: Sequence[QualityResult] = (), title: str = "edgekit bench") -> str:
    """The whole page as a string."""
    colours = colours_by_level(run, quality)
    parts = [f"<h1>{escape(title)}</h1>", f'<p class="sub">{escape(_subtitle(run))}</p>']
    if run and run.measurements:
        parts += [_cards(run), legend(list(colours.items())), _speed_section(run, colours),
                  _latency_section(run, colours), _timeline_section(run, colours), _table_section(run)]
    if quality:
        parts.append(_quality_section(quality, colours))
    if run and run.measurements and quality:
        parts.append(_size_speed_note())
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>\n{body}\n</main></body></html>\n"
    )


def write_report(path: str | os.PathLike[str], run: BenchRun | None,
                 quality: Sequence[QualityResult] = (), title: str = "edgekit bench") -> Path:
    """Render and write the page atomically."""
    return write_text(path, render_report(run, quality, title))


def _subtitle(run: BenchRun | None) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if not run:
        return f"Generated {when}"
    host = run.host
    return (f"Measured on this machine: {host.get('cpu') or host.get('machine')}, {host.get('cores')} cores "
            f"({host.get('system', '')}). edgekit {run.edgekit_version}, llama-cpp-python "
            f"{run.llama_cpp_version}. Generated {when}.")


def _cards(run: BenchRun) -> str:
    """The headline figures: best generation rate, lowest TTFT, smallest peak memory."""
    ms = run.measurements
    best_tg = max(ms, key=lambda m: m.figure("gen_tps").mean)
    best_ttft = min(ms, key=lambda m: m.figure("ttft_ms").p50)
    rss = [m for m in ms if m.peak_rss_bytes]
    cards = [
        (f"{best_tg.figure('gen_tps').mean:.1f} tok/s", f"fastest generation: {best_tg.label}"),
        (f"{best_ttft.figure('ttft_ms').p50:.0f} ms", f"lowest median time to first token: {best_ttft.label}"),
    ]
    if rss:
        small = min(rss, key=lambda m: m.peak_rss_bytes or 0)
        cards.append((f"{(small.peak_rss_bytes or 0) / 2**20:.0f} MiB", f"smallest peak RSS: {small.model.file_name}"))
    items = "".join(f'<div class="card"><b>{escape(v)}</b><span>{escape(t)}</span></div>' for v, t in cards)
    return f'<div class="cards">{items}</div>'


def _bars(run: BenchRun, colours: dict[str, str], figure: str) -> list[Bar]:
    return [
        Bar(m.label, m.figure(figure).mean, m.figure(figure).stdev, colours[m.model.file_type])
        for m in run.measurements
    ]


def _speed_section(run: BenchRun, colours: dict[str, str]) -> str:
    gen = bar_chart(_bars(run, colours, "gen_tps"), "Generation tokens per second", "tokens/s (mean ± stdev)")
    pp = bar_chart(_bars(run, colours, "prompt_tps"), "Prompt tokens per second", "tokens/s (mean ± stdev)")
    return ("<h2>Throughput per quant level and setting</h2>"
            + _figure("Generation, tokens/s", gen) + _figure("Prompt processing, tokens/s", pp)
            + _llama_bench_note(run))


def _llama_bench_note(run: BenchRun) -> str:
    rows = [m for m in run.measurements if m.llama_bench_tg_ts]
    if not rows:
        return ""
    items = "".join(f"<li>{escape(m.label)}: {escape(_vs_llama_bench(m))}</li>" for m in rows)
    return (f'<p class="note">Against llama.cpp\'s own llama-bench on the same file and settings '
            f"(our rate / its rate; paired round by round when it ran between our rounds):</p>"
            f'<ul class="note">{items}</ul>')


def _vs_llama_bench(m: Measurement) -> str:
    r = llama_bench_ratios(m)
    parts = [f"generation {r['gen_ts_vs_llama_bench']:.2f}× its {m.llama_bench_tg_ts:.1f} tok/s"]
    if m.llama_bench_pp_ts and r["pp_ts_vs_llama_bench"] is not None:
        parts.append(f"prompt {r['pp_ts_vs_llama_bench']:.2f}× its {m.llama_bench_pp_ts:.1f} tok/s")
        if r["ttft_rate_vs_llama_bench_pp"] is not None:
            parts.append(f"{m.prompt_tokens} tokens / TTFT {r['ttft_rate_vs_llama_bench_pp']:.2f}× its pp rate")
    rounds = r["llama_bench_paired_rounds"]
    return ", ".join(parts) + (f" ({rounds} paired rounds)" if rounds else " (llama-bench run once, apart)")


def _boxes(run: BenchRun, colours: dict[str, str], pick) -> list[BoxPlot]:  # type: ignore[no-untyped-def]
    return [BoxPlot(m.label, tuple(pick(m)), colours[m.model.file_type]) for m in run.measurements]


def _latency_section(run: BenchRun, colours: dict[str, str]) -> str:
    itl = box_chart(_boxes(run, colours, lambda m: [g for s in m.samples for g in s.itl_ms]),
                    "Inter-token latency", "ms per token (box p25-p75, line p50, whiskers p5-p99)")
    ttft = box_chart(_boxes(run, colours, lambda m: [s.ttft_ms for s in m.samples]),
                     "Time to first token", "ms")
    e2e = box_chart(_boxes(run, colours, lambda m: [s.e2e_ms for s in m.samples]),
                    "End-to-end latency", "ms per request")
    return ("<h2>Latency distribution</h2>" + _figure("Inter-token latency", itl)
            + _figure("Time to first token (queue included)", ttft) + _figure("End-to-end latency per request", e2e))


# TimePoint field -> (chart title, unit) for the steady-load (--duration) charts
_TIME_SERIES = (
    ("tokens_per_s", "Generation over time", "tokens/s"),
    ("power_w", "Power over time", "W"),
    ("temp_c", "Temperature over time (hottest zone)", "°C"),
    ("cpu_mhz", "CPU clock over time (fastest core)", "MHz"),
)


def _timeline_section(run: BenchRun, colours: dict[str, str]) -> str:
    """Tokens/s, power, temperature and clock over a --duration run, throttling marked in red;
    a chart only for what some sensor measured."""
    timed = [m for m in run.measurements if m.timeline]
    if not timed:
        return ""
    marks = sorted({p.t_s for m in timed for p in m.timeline if p.throttled})
    parts = ["<h2>Steady load over time</h2>"]
    for name, title, unit in _TIME_SERIES:
        series = [Series(m.label, tuple((p.t_s, getattr(p, name)) for p in m.timeline), colours[m.model.file_type])
                  for m in timed]
        if any(y is not None for s in series for _, y in s.points):
            parts.append(_figure(title, line_chart(series, title, unit, marks)))
    note = ("Throttled moments are shaded red." if marks else "No throttling was seen.") + (
        " Power is the energy between two readings over their interval; tokens/s spreads each request's tokens "
        "evenly over its span.")
    return "".join(parts) + f'<p class="note">{escape(note)}</p>'


def _figure(title: str, svg: str) -> str:
    return f"<section><h3>{escape(title)}</h3>{svg}</section>"


def _html_table(rows: Sequence[dict[str, str]]) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(row.get(c, ''))}</td>" for c in columns) + "</tr>" for row in rows)
    return f'<div class="scroll"><table class="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _table_section(run: BenchRun) -> str:
    note = ("TTFT, tokens/s: mean ± sample stdev over all counted requests (warm-up runs excluded). "
            "Queue: time a request waited behind others (concurrency > 1). Peak RSS: VmHWM of the engine's "
            "worker process. Loads: cold after dropping the file from the page cache, warm on the second load. "
            "W, J/token: average power and energy per generated token over the requests' spans, from the box's "
            "sensors (n/a: no sensor). Max °C: the hottest thermal zone.")
    return f'<h2>Summary</h2><section>{_html_table(table_rows(run))}<p class="note">{escape(note)}</p></section>'


def _quality_section(quality: Sequence[QualityResult], colours: dict[str, str]) -> str:
    points = [
        Point(file_label(q.path, q.file_type), q.size_bytes / 1e6, q.kl_mean, colours[q.file_type or "?"])
        for q in quality if not q.is_reference
    ]
    chart = scatter_chart(points, "Size against quality", "file size, MB", "KL divergence vs reference (nats, log)",
                          log_y=True) if points else ""
    note = ("Perplexity as llama.cpp's llama-perplexity computes it; KL(reference ‖ level) per token over the "
            "same positions; top-1: how often the level's most likely next token is the reference's.")
    return (f"<h2>Size against quality</h2><section>{chart}{_html_table(quality_table(quality))}"
            f'<p class="note">{escape(note)}</p></section>')


def _size_speed_note() -> str:
    return ('<p class="note">Pick the smallest level whose KL divergence you can live with, then check its '
            "time to first token and tokens/s above.</p>")

