"""A BenchRun as a terminal table, JSON, CSV, or JSON lines in llama-bench's field names.

JSONL gives two records per measurement, as llama-bench does for ``-p N -n M``: a pp
record (n_prompt = N, n_gen = 0) and a tg record (n_prompt = 0, n_gen = M, n_depth = N:
generation ran after an N-token prompt). Field names are llama-bench's
(tools/llama-bench/llama-bench.cpp, test::get_fields) where the figure is the same;
figures llama-bench does not have are added under ``edgekit_*`` names.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from edgekit.bench.results import SUMMARY_FIGURES, BenchRun, Measurement
from edgekit.bench.stats import mean, stdev


def to_json(run: BenchRun) -> str:
    return json.dumps(run.to_dict(), indent=2) + "\n"


# --- CSV: one flat row per measurement -----------------------------------------------------

_SETTING_COLUMNS = (
    "mode", "prompt_tokens", "gen_tokens", "concurrency", "repeats", "warmup", "n_threads",
    "n_batch", "n_ubatch", "n_ctx", "n_gpu_layers", "type_k", "type_v", "flash_attn",
    "load_cold_ms", "load_warm_ms", "peak_rss_bytes", "gpu_memory_bytes",
    "llama_bench_pp_ts", "llama_bench_tg_ts", "measured_on", "test_time",
)
_STATS = ("mean", "stdev", "min", "max", "p50", "p95", "p99")
# DeviceFigures fields as CSV columns; "n/a" where the box has no sensor (docs/bench-fields.md)
_DEVICE_COLUMNS = (
    "avg_power_w", "energy_j", "j_per_token", "tokens_per_j", "temp_max_c", "cpu_mhz_min", "cpu_max_mhz",
    "throttled", "throttle_reasons", "power_sources", "power_mode", "governor",
)


def csv_row(m: Measurement) -> dict[str, Any]:
    row: dict[str, Any] = {
        "model_filename": m.model.file_name, "file_type": m.model.file_type,
        "model_size": m.model.tensor_bytes, "model_n_params": m.model.n_params,
    }
    row.update({name: getattr(m, name) for name in _SETTING_COLUMNS})
    for figure in SUMMARY_FIGURES:
        summary = m.figure(figure).to_dict()
        row.update({f"{figure}_{stat}": round(summary[stat], 4) if summary["n"] else "n/a" for stat in _STATS})
    row.update(llama_bench_ratios(m))
    row.update(device_columns(m))
    return row


def device_columns(m: Measurement) -> dict[str, Any]:
    """The power and heat figures, flat: lists joined with "+", missing ones "n/a" (never 0)."""
    row: dict[str, Any] = {}
    for name in _DEVICE_COLUMNS:
        value = getattr(m.device, name)
        if isinstance(value, tuple):
            value = "+".join(value) if value else ("n/a" if name == "power_sources" else "")
        row[name] = "n/a" if value is None else round(value, 4) if isinstance(value, float) else value
    return row


def llama_bench_ratios(m: Measurement) -> dict[str, Any]:
    """Our rates over llama-bench's (>1: faster), paired round by round when it ran between our rounds."""
    return {
        "gen_ts_vs_llama_bench": _rounded(m.vs_llama_bench("gen_tps")),
        "pp_ts_vs_llama_bench": _rounded(m.vs_llama_bench("prompt_tps")),
        # prompt_tokens / TTFT against llama-bench's pp rate: 1.0 when the first token costs no more than the prompt
        "ttft_rate_vs_llama_bench_pp": _rounded(m.vs_llama_bench("ttft_ms")),
        "llama_bench_paired_rounds": len(m.llama_bench_pp_samples or m.llama_bench_tg_samples),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def to_csv(run: BenchRun) -> str:
    rows = [csv_row(m) for m in run.measurements]
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


# --- JSONL in llama-bench's names ------------------------------------------------------------


def llama_bench_records(m: Measurement, run: BenchRun) -> list[dict[str, Any]]:
    """The pp and tg records of one measurement, as llama-bench -o jsonl writes them."""
    pp_ns = [s.prompt_ms * 1e6 for s in m.samples]
    tg_ns = [s.generation_ms * 1e6 for s in m.samples]
    pp = _record(m, run, n_prompt=m.prompt_tokens, n_gen=0, n_depth=0,
                 samples_ns=pp_ns, samples_ts=[s.prompt_tps for s in m.samples])
    tg = _record(m, run, n_prompt=0, n_gen=m.gen_tokens, n_depth=m.prompt_tokens,
                 samples_ns=tg_ns, samples_ts=[s.gen_tps for s in m.samples])
    return [pp, tg]


def _record(m: Measurement, run: BenchRun, *, n_prompt: int, n_gen: int, n_depth: int,
            samples_ns: Sequence[float], samples_ts: Sequence[float]) -> dict[str, Any]:
    return {
        "build_commit": f"llama-cpp-python-{run.llama_cpp_version}",
        "cpu_info": run.host.get("cpu", ""),
        "gpu_info": run.host.get("gpu", ""),
        "backends": run.host.get("backend", "CPU"),
        "model_filename": m.model.path,
        "model_type": f"{m.model.architecture} {_params_label(m.model.n_params)} {m.model.file_type}",
        "model_size": m.model.tensor_bytes,
        "model_n_params": m.model.n_params,
        "n_batch": m.n_batch,
        "n_ubatch": m.n_ubatch,
        "n_threads": m.n_threads,
        "type_k": m.type_k,
        "type_v": m.type_v,
        "n_gpu_layers": m.n_gpu_layers,
        "flash_attn": int(m.flash_attn),
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "n_depth": n_depth,
        "test_time": m.test_time,
        "avg_ns": int(mean(samples_ns)),
        "stddev_ns": int(stdev(samples_ns)),
        "avg_ts": mean(samples_ts),
        "stddev_ts": stdev(samples_ts),
        "samples_ns": [int(ns) for ns in samples_ns],
        "samples_ts": list(samples_ts),
        "edgekit_mode": m.mode,
        "edgekit_concurrency": m.concurrency,
        "edgekit_summary": {name: m.figure(name).to_dict() for name in SUMMARY_FIGURES},
        "edgekit_load_cold_ms": m.load_cold_ms,
        "edgekit_load_warm_ms": m.load_warm_ms,
        "edgekit_peak_rss_bytes": m.peak_rss_bytes,
    }


def _params_label(n: int) -> str:
    """llama.cpp-style size label: 1.1B, 25M."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def to_jsonl(run: BenchRun) -> str:
    lines = [json.dumps(rec) for m in run.measurements for rec in llama_bench_records(m, run)]
    return "".join(line + "\n" for line in lines)


# --- the terminal table --------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def _p50(m: Measurement, figure: str) -> str:
    summary = m.figure(figure)
    return f"{summary.p50:.0f}" if summary.n == len(m.samples) and summary.n else f"{summary.n} of {len(m.samples)}"


def _na(value: Any, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def table_rows(run: BenchRun) -> list[dict[str, str]]:
    """One row per measurement, with the spread shown beside each mean."""
    rows = []
    for m in run.measurements:
        ttft, pp, tg = m.figure("ttft_ms"), m.figure("prompt_tps"), m.figure("gen_tps")
        itl, e2e = m.figure("itl_ms"), m.figure("e2e_ms")
        row = {
            "model": f"{m.model.file_name}", "mode": m.mode,
            "pp": str(m.prompt_tokens), "tg": str(m.gen_tokens), "c": str(m.concurrency),
            "load cold/warm ms": f"{_ms(m.load_cold_ms)}/{_ms(m.load_warm_ms)}",
            "TTFT ms": f"{ttft.mean:.1f} ± {ttft.stdev:.1f}",
            "pp t/s": f"{pp.mean:.1f} ± {pp.stdev:.1f}",
            "tg t/s": f"{tg.mean:.1f} ± {tg.stdev:.1f}",
            "ITL p50/95/99 ms": f"{itl.p50:.1f}/{itl.p95:.1f}/{itl.p99:.1f}",
            "e2e p50/95/99 ms": f"{e2e.p50:.0f}/{e2e.p95:.0f}/{e2e.p99:.0f}",
            "queue ms": f"{m.figure('queue_ms').mean:.0f}",
            "peak RSS MB": _mb(m.peak_rss_bytes),
            "W": _na(m.device.avg_power_w, "{:.1f}"),
            "J/token": _na(m.device.j_per_token, "{:.3f}"),
            "max °C": _na(m.device.temp_max_c, "{:.0f}"),
            "throttled": _na(m.device.throttled, "{}").replace("True", "yes").replace("False", "no"),
        }
        if m.mode.startswith("assist"):
            row["60 chars ms"] = _p50(m, "speech_60_ms")
            row["tool call ms"] = _p50(m, "tool_call_ms")
        if m.mode in ("mqtt", "http"):  # through a daemon: what its transport cost beyond the engine
            row[f"{m.mode.upper()} ms"] = f"{m.figure('transport_ms').p50:.1f}"
        if m.llama_bench_tg_ts:
            r = llama_bench_ratios(m)
            row["vs llama-bench pp/tg/TTFT"] = "/".join(
                "n/a" if r[k] is None else f"{r[k]:.2f}"
                for k in ("pp_ts_vs_llama_bench", "gen_ts_vs_llama_bench", "ttft_rate_vs_llama_bench_pp")
            )
        rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, str]]) -> str:
    """Left-aligned text table; columns are the union of the rows' keys in first-seen order."""
    if not rows:
        return "(no measurements)\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    widths = {c: max(len(c), *(len(row.get(c, "")) for row in rows)) for c in columns}
    line = "  ".join(c.ljust(widths[c]) for c in columns)
    out = [line, "  ".join("-" * widths[c] for c in columns)]
    out += ["  ".join(row.get(c, "").ljust(widths[c]) for c in columns) for row in rows]
    return "\n".join(s.rstrip() for s in out) + "\n"


# --- choosing the format -------------------------------------------------------------------

FORMATS = {"json": to_json, "csv": to_csv, "jsonl": to_jsonl}


def output_format(json_flag: bool, csv_flag: bool, jsonl_flag: bool, output: str | None) -> str:
    """The format asked for by flag, else by the output file's suffix, else the table."""
    for name, flag in (("json", json_flag), ("csv", csv_flag), ("jsonl", jsonl_flag)):
        if flag:
            return name
    suffix = (output or "").rsplit(".", 1)[-1].lower() if output and "." in output else ""
    return suffix if suffix in FORMATS else "table"


def render(run: BenchRun, fmt: str) -> str:
    """The run in one format: "table", "json", "csv" or "jsonl"."""
    return format_table(table_rows(run)) if fmt == "table" else FORMATS[fmt](run)
