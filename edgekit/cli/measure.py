"""Measurement: bench (and bench compare), quality, recommend."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edgekit.cli.options import HelpFormatter, add_box_options, comma_list
from edgekit.cli.terminal import print_json, status


def cmd_bench(args: argparse.Namespace) -> int:
    from edgekit.atomic import check_writable_dir, write_text
    from edgekit.bench.output import output_format, render
    from edgekit.bench.report import write_report
    from edgekit.bench.runner import BenchConfig, run_bench

    for path in (args.output, args.report):
        if path is not None:
            check_writable_dir(path)  # fail before minutes of measuring, not after
    config = BenchConfig(
        models=tuple(args.models), prompt_tokens=tuple(args.prompt_tokens), gen_tokens=args.gen_tokens,
        repeat=args.repeat, concurrency=tuple(args.concurrency), threads=args.threads, profile=args.profile,
        this_box=args.this_box, via=args.via, prefix=args.prefix, llama_bench=args.compare_llama_bench,
        **_profiling_options(args),
    )
    run = run_bench(config, progress=lambda line: print(f"[bench] {line}", file=sys.stderr, flush=True))
    fmt = output_format(args.json, args.csv, args.jsonl, str(args.output) if args.output else None)
    if args.output:  # the file gets the data; the terminal still gets the table
        write_text(args.output, render(run, fmt if fmt != "table" else "json"))
        print(f"[bench] wrote {args.output}", file=sys.stderr)
    print(render(run, "table" if args.output else fmt), end="")
    if args.report:
        write_report(args.report, run)
        print(f"[bench] wrote {args.report}", file=sys.stderr)
    if args.save:
        from edgekit.bench.history import save

        print(f"[bench] saved to {save(run, args.save)}", file=sys.stderr)
    return 0


def _profiling_options(args: argparse.Namespace) -> dict[str, Any]:
    """Sensors, steady load and the workload: BenchConfig's fields from issue 17's options."""
    return {"sensors": not args.no_sensors, "sensors_root": args.sensors_root, "duration_s": args.duration,
            "workload": args.workload, "entities": args.entities}


def cmd_bench_compare(args: argparse.Namespace) -> int:
    from edgekit.bench.history import compare, comparison_rows, load
    from edgekit.bench.output import format_table

    result = compare(load(args.old), load(args.new), args.threshold)
    print(format_table(comparison_rows(result)), end="")
    for label in result.unmatched:
        print(f"not compared (in one run only): {label}")
    bad = result.regressions
    print(f"{len(bad)} regression(s) beyond {result.threshold:.0%}" if bad
          else f"no regression beyond {result.threshold:.0%}")
    return 1 if bad else 0


def cmd_quality(args: argparse.Namespace) -> int:
    from edgekit.bench.output import format_table
    from edgekit.bench.quality import compare_quality, quality_table, read_text

    text = read_text(args.text) if args.text else None
    results = compare_quality(args.reference, args.candidates, text=text, ctx=args.ctx, chunks=args.chunks,
                              progress=lambda line: None if args.json else status(line))
    if not args.json:
        status("quality measured", final=True)
    if args.json:
        print_json([r.to_dict() for r in results])
    else:
        print(format_table(quality_table(results)), end="")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from edgekit.bench.output import format_table
    from edgekit.bench.recommend import Targets, recommend, table_rows
    from edgekit.profiles import load_profile

    targets = Targets(args.max_ttft_ms, args.min_tokens_per_s, args.max_kl)
    rec = recommend(args.models, load_profile(args.profile), targets, reference=args.reference,
                    bench_json=args.bench_json, quality_json=args.quality_json, root=args.root, threads=args.threads,
                    this_box=args.this_box)
    if args.json:
        print_json(rec.to_dict())
        return 0
    print(f"box:       {rec.target_box}\nspeed:     {rec.speed_measured_on}\n")
    print(format_table(table_rows(rec)))
    print(f"recommend: {rec.chosen.path} ({rec.chosen.file_type})")
    for reason in rec.reasons:
        print(f"why:       {reason}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """The parsers of bench, bench compare, quality, recommend, each with its handler."""
    p = sub.add_parser("bench", help="measure latency and throughput", formatter_class=HelpFormatter)
    p.add_argument("models", type=Path, nargs="+", help="GGUF files")
    add_box_options(p, "use the settings planned for")
    p.add_argument("--prompt-tokens", type=comma_list(int), default=[32, 256], help="prompt sizes, e.g. 32,256")
    p.add_argument("--gen-tokens", type=int, default=128, help="tokens generated per request")
    p.add_argument("--repeat", type=int, default=3, help="rounds of each setting")
    p.add_argument("--concurrency", type=comma_list(int), default=[1], help="requests at once, e.g. 1,4")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the plan's, else all CPUs)")
    p.add_argument("--via", default=None,
                   help="mqtt://host:port or http://host:port: also measure end to end through a daemon")
    p.add_argument("--prefix", default=None, help="daemon topic prefix, with --via")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON")
    out.add_argument("--csv", action="store_true", help="print CSV")
    out.add_argument("--jsonl", action="store_true", help="print one JSON record a line")
    p.add_argument("--output", type=Path, default=None, help="write JSON/CSV/JSONL here instead of stdout")
    p.add_argument("--report", type=Path, default=None, help="write an HTML report")
    p.add_argument("--compare-llama-bench", type=Path, default=None, metavar="PATH",
                   help="llama.cpp's llama-bench binary: run it on the same file and settings after each round "
                        "and show our rates as paired ratios to its (the install step builds it into "
                        "~/.cache/edgekit/llama-tools/bin)")
    _add_profiling_options(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("bench-compare", prog="edgekit bench compare", formatter_class=HelpFormatter,
                       description="Each figure's change from OLD to NEW with a 95% bootstrap interval; "
                       "exits 1 on a regression beyond the threshold.")
    p.add_argument("old", help="a bench JSON, or a --save history (FILE.jsonl: its last run, FILE.jsonl#N: run N)")
    p.add_argument("new", help="the run to judge: a bench JSON or a history, as OLD")
    p.add_argument("--threshold", type=float, default=0.10,
                   help="a change counts when its whole interval lies beyond this fraction")
    p.set_defaults(func=cmd_bench_compare)

    p = sub.add_parser("quality", help="perplexity and KL divergence of quantized files against a reference",
                       formatter_class=HelpFormatter)
    p.add_argument("reference", type=Path, help="the f16/f32 GGUF")
    p.add_argument("candidates", type=Path, nargs="+", help="quantized GGUFs of the same model")
    p.add_argument("--text", type=Path, default=None, help="UTF-8 text to score (default: edgekit's calibration text)")
    p.add_argument("--ctx", type=int, default=256, help="tokens per chunk")
    p.add_argument("--chunks", type=int, default=None, help="chunks to score (default: all the text holds)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_quality)

    p = sub.add_parser("recommend", help="name the quant level to deploy on a box", formatter_class=HelpFormatter)
    p.add_argument("models", type=Path, nargs="+", help="a folder of GGUF files, or files")
    add_box_options(p, required=True)
    p.add_argument("--max-ttft-ms", type=float, default=None,
                   help="most time to first token for a 128-token prompt (measured on this machine)")
    p.add_argument("--min-tokens-per-s", type=float, default=None, help="least generation rate (this machine)")
    p.add_argument("--reference", type=Path, default=None, help="f16/f32 file for quality (default: found among MODELS)")
    p.add_argument("--max-kl", type=float, default=0.05, help="most KL divergence vs the reference (nats/token)")
    p.add_argument("--bench-json", type=Path, default=None, help="speed from an `edgekit bench --json` file")
    p.add_argument("--quality-json", type=Path, default=None, help="quality from an `edgekit quality --json` file")
    p.add_argument("--threads", type=int, default=None, help="threads for the speed measurement")
    p.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)  # a captured board's files
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_recommend)


def _add_profiling_options(p: argparse.ArgumentParser) -> None:
    from edgekit.bench.history import default_history

    p.add_argument("--save", type=Path, nargs="?", const=default_history(), default=None, metavar="HISTORY",
                   help=f"append the run to a JSONL history (default {default_history()}) for `bench compare`")
    p.add_argument("--duration", type=float, default=None, metavar="S",
                   help="steady load for S seconds (rounds until then) with power, temperature and clocks over time")
    p.add_argument("--workload", choices=("prompts", "assist"), default="prompts",
                   help="assist: Home Assistant's request (instructions, entities, intent tools, a spoken command)")
    p.add_argument("--entities", type=int, default=50, help="exposed entities in the assist workload")
    p.add_argument("--no-sensors", action="store_true", help="do not sample power, heat and clocks")
    p.add_argument("--sensors-root", type=Path, default=Path("/"), help=argparse.SUPPRESS)  # a captured board
