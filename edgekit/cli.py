"""The `edgekit` command: parse argv, call one library function, print for humans.

Every command is a thin shell over functions that the tests call directly. Errors
of our own become one line on stderr and a non-zero exit; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgekit import __version__
from edgekit.errors import EdgekitError
from edgekit.serve.config import HTTP_DEFAULT_PORT

Handler = Callable[[argparse.Namespace], int | None]


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


def _status(line: str, final: bool = False) -> None:
    """Progress on a terminal: one line redrawn in place. Nothing when stderr is a log or a pipe."""
    if sys.stderr.isatty():
        print(f"\r\033[K  {line}", end="\n" if final else "", file=sys.stderr, flush=True)


def _show_quantize(p: Any) -> None:
    """quantize's per-tensor progress; a log gets only the start and the end of each level."""
    line = f"[{p.level_index}/{p.level_count}] {p.level:<7} tensor {p.tensor_index}/{p.tensor_count}  {p.elapsed_s:5.1f} s"
    if sys.stderr.isatty():
        _status(line, final=p.done)
    elif p.tensor_index == 0 or p.done:
        print(line, file=sys.stderr, flush=True)


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """argparse type for comma-separated lists: "32,256,1024" -> [32, 256, 1024]."""

    def parse(text: str) -> list[Any]:
        try:
            return [kind(part.strip()) for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    return parse


# --- pipeline: make-test-model, pull, convert, quantize, inspect -------------------------


def cmd_make_test_model(args: argparse.Namespace) -> int:
    from edgekit.testmodels import make_test_model

    folder = make_test_model(args.dir, args.preset, args.dtype, args.shard_size, args.tied, args.seed)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    for path in files:
        print(f"{path.stat().st_size:>14,}  {path}")
    print(f"wrote {args.preset} ({args.dtype}) to {folder}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from edgekit.hub import pull

    # Only the path on stdout, for scripts: MODEL=$(edgekit pull ...); progress bars go to stderr.
    print(pull(args.repo, file=args.file, quant=args.quant, revision=args.revision, offline=args.offline))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    import tempfile

    from edgekit.atomic import check_writable_dir
    from edgekit.convert import convert_checkpoint

    def show(name: str, done: int, total: int) -> None:
        _status(f"[{done}/{total}] {name:<40}", final=done == total)

    levels = _csv(str)(args.quant) if args.quant else []
    if levels:
        from edgekit.quantize import level_name, quantize_file

        levels = [level_name(level) for level in levels]  # a typo fails now, not after the conversion
    check_writable_dir(args.output)  # before minutes of work
    with tempfile.TemporaryDirectory(dir=args.output.resolve().parent, prefix=".edgekit-convert-") as scratch:
        # With --quant the converted file is an intermediate: -o names the quantized output
        # (one level) or the stem of one output per level (OUT-Q4_K_M.gguf, ...).
        converted = Path(scratch) / f"model.{args.outtype}.gguf" if levels else args.output
        result = convert_checkpoint(args.hf_dir, converted, args.outtype, progress=show, merges=_merges(args.lora))
        if not levels:
            print(f"wrote {result.path} ({result.outtype}, {result.tensor_count} tensors, "
                  f"{result.size_bytes / 1e6:.1f} MB, {result.seconds:.1f} s)")
            return 0
        for level in levels:
            out = args.output if len(levels) == 1 else args.output.with_name(f"{args.output.stem}-{level}{args.output.suffix}")
            quantize_file(converted, level, out, progress=_show_quantize)
            print(f"wrote {out} ({level}, {out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _merges(specs: list[str] | None) -> tuple[Any, ...]:
    """--lora PEFT_DIR[:SCALE] (repeatable) as the adapters convert merges."""
    from edgekit.convert.lora import LoraMerge, open_peft
    from edgekit.lora_spec import parse_lora_arg

    return tuple(LoraMerge(open_peft(path), scale) for _, path, scale in map(parse_lora_arg, specs or []))


def cmd_convert_lora(args: argparse.Namespace) -> int:
    from edgekit.convert.lora_gguf import convert_lora

    r = convert_lora(args.peft_dir, args.base, args.output, args.outtype)
    print(f"wrote {r.path} (LoRA adapter, {r.tensor_pairs} weights, rank {r.rank}, alpha {r.alpha:g}, "
          f"{r.path.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from edgekit.upscale import describe_layers, upscale

    r = upscale(args.source, args.output, drop=args.drop, layers=args.layers)
    print(f"wrote {r.path} ({len(r.layers)} layers from {r.source_layers}: {describe_layers(r.layers)}, "
          f"{r.tensor_count} tensors)")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from edgekit.quantize import quantize

    results = quantize(args.input, args.levels, out_dir=args.out_dir, output=args.output, threads=args.threads,
                       allow_requantize=args.allow_requantize, progress=_show_quantize)
    for r in results:
        print(f"wrote {r.path} ({r.level}, {r.size / 1e6:.1f} MB, {r.bits_per_weight:.2f} bits/weight, {r.seconds:.1f} s)")
    if args.report:
        from edgekit.bench.output import format_table
        from edgekit.bench.quality import compare_quality, quality_table

        results = compare_quality(args.input, [r.path for r in results], threads=args.threads, progress=_status)
        _status("quality measured", final=True)
        print(format_table(quality_table(results)), end="")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from edgekit.gguf_file import validate

    info = validate(args.file)
    if args.json:
        _print_json(info.to_dict(tensors=args.tensors))
        return 0
    for label, value in _inspect_rows(info):
        print(f"{label:<15}{value}")
    if args.tensors:
        print()
        for t in info.tensors:
            print(f"{t.name:<40} {t.type:<7} {str(list(t.shape)):<22} {t.nbytes:>14,}")
    return 0


def _inspect_rows(info: Any) -> list[tuple[str, str]]:
    """The human summary of a GGUFInfo, one (label, value) row per line."""
    template = (info.chat_template or "").splitlines()
    mix = "; ".join(f"{name} x{q.count} {q.nbytes / 1e6:.1f} MB" for name, q in info.quant_mix.items())
    rows = [
        ("file", f"{info.path} ({info.size / 1e6:.1f} MB, GGUF v{info.version})"),
        ("architecture", f"{info.architecture}" + (f" ({info.name})" if info.name else "")),
        ("parameters", _human_count(info.parameter_count)),
        ("file type", f"{info.file_type or '?'}, {info.bits_per_weight:.2f} bits/weight"),
        ("quant mix", mix),
        ("context", f"{info.context_length}  (embedding {info.embedding_length}, {info.block_count} blocks, "
                    f"{info.head_count}/{info.head_count_kv} heads, vocab {info.vocab_size})"),
        ("tokenizer", str(info.tokenizer_model)),
        ("chat template", (template[0] + (f"  (+{len(template) - 1} lines)" if len(template) > 1 else "")) if template else "none"),
    ]
    rows += [("provenance", f"{key} = {value}") for key, value in info.provenance.items()]
    return rows


def _human_count(n: int) -> str:
    for size, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


# --- hardware: detect, plan, tune ---------------------------------------------------------


def cmd_detect(args: argparse.Namespace) -> int:
    from edgekit.hardware import detect
    from edgekit.profiles import choose_profile

    hardware = detect(args.root)
    profile, reason = choose_profile(hardware)
    if args.json:
        _print_json({"hardware": hardware.to_dict(), "profile": profile.name, "reason": reason,
                     "cmake_args": profile.build.cmake_args})
        return 0
    print(f"profile:  {reason}")
    for line in hardware.describe():
        print(line)
    print(f"build:    CMAKE_ARGS=\"{profile.build.cmake_args}\"")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from edgekit.plan import settings_for

    plan = settings_for(list(args.model), args.profile, ctx=args.ctx, this_box=args.this_box, root=args.root,
                        lora=_adapters(args.lora))
    if args.json:
        _print_json(plan.to_dict())
        return 0
    for line in plan.describe():
        print(line)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from edgekit.hardware import detect
    from edgekit.profiles import resolve_profile
    from edgekit.tune import Sweep, check_output, tune, write_profile

    from edgekit.profiles import user_profiles

    output = args.output
    if output is None:  # the user's own folder, on the profile search path: --profile local finds it
        output = user_profiles() / "local.toml"
        output.parent.mkdir(parents=True, exist_ok=True)
    check_output(output)
    hardware = detect()
    base, reason = resolve_profile(args.profile, hardware)
    print(f"edgekit: tuning from {reason}", file=sys.stderr)
    sweep = Sweep(threads=tuple(args.threads) if args.threads else None,
                  batch_sizes=tuple(args.batch) if args.batch else Sweep().batch_sizes)
    result = tune(args.model, base, hardware, name=output.stem, sweep=sweep,
                  progress=lambda line: print(f"edgekit: {line}", file=sys.stderr))
    write_profile(result, output)
    s = result.settings
    use = output.stem if output.parent.resolve() == user_profiles().resolve() else output
    print(f"{output}: threads {s.n_threads}/{s.n_threads_batch}, batch {s.n_batch}/{s.n_ubatch}, "
          f"gpu layers {s.n_gpu_layers} (use it with --profile {use})")
    return 0


# --- engine: run, chat ----------------------------------------------------------------------


def _run_settings(args: argparse.Namespace) -> Any:
    """Settings for `run`/`chat`: the plan for --profile's box (or this one), with --ctx if given;
    one line on stderr says which box and how many threads, and why."""
    from edgekit.plan import settings_for

    plan = settings_for(args.model, args.profile, ctx=args.ctx, this_box=args.this_box,
                        lora=_adapters(getattr(args, "lora", None)))
    s = plan.settings
    threads = "; ".join(r for r in plan.reasons if " threads: " in r) or f"{s.n_threads} threads from the profile"
    print(f"edgekit: profile {plan.profile} for {plan.box}: n_ctx {s.n_ctx}, {threads}", file=sys.stderr)
    return s


def _adapters(specs: list[str] | None) -> tuple[Any, ...]:
    """--lora NAME=adapter.gguf[:SCALE] (repeatable) as the adapters the engine loads."""
    from edgekit.plan import lora_adapters

    return lora_adapters(specs)


def _timings_line(result: Any) -> str:
    t = result.timings
    return (
        f"[{result.completion_tokens} tokens, {result.finish_reason}] "
        f"prompt {t.prompt_tokens} tok ({t.cached_prompt_tokens} cached) {t.prompt_tokens_per_s:.1f} tok/s | "
        f"first token {t.time_to_first_token_ms:.0f} ms | generation {t.generation_tokens_per_s:.1f} tok/s | "
        f"total {t.total_ms:.0f} ms"
    )


def _stream_answer(engine: Any, request: Any) -> Any:
    """Print the answer as it comes, then its timings on stderr; Ctrl-C cancels it (None)."""
    from edgekit.engine import Result

    stream = engine.stream(request)
    try:
        for item in stream:
            if isinstance(item, Result):
                print(file=sys.stdout, flush=True)
                print(_timings_line(item), file=sys.stderr)
                return item
            sys.stdout.write(item.text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        engine.cancel(request.id)
        stream.close()  # lets the engine finish the cancel before the next request
        print("\n[cancelled]", file=sys.stderr)
    return None


def cmd_run(args: argparse.Namespace) -> int:
    from edgekit.engine import Engine, Request
    from edgekit.errors import UsageError

    if args.raw and args.system:
        raise UsageError("--system needs the chat template: with --raw, put the system text in the prompt")
    schema = None
    if args.json_schema is not None:
        try:
            schema = json.loads(args.json_schema.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"--json-schema {args.json_schema}: {exc}") from None
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [{"role": "user", "content": args.prompt}]
    request = Request(
        prompt=args.prompt if args.raw else None,
        messages=None if args.raw else tuple(messages),
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        json_schema=schema,
        adapter=_adapter_choice(args),
        adapter_scale=args.adapter_scale,
    )
    with Engine(args.model, _run_settings(args)) as engine:
        return 0 if _stream_answer(engine, request) is not None else 130


def _adapter_choice(args: argparse.Namespace) -> str | None:
    """--adapter NAME, or the one adapter given with --lora."""
    if args.adapter is not None or not args.lora:
        return args.adapter
    names = [adapter.name for adapter in _adapters(args.lora)]
    if len(names) > 1:
        from edgekit.errors import UsageError

        raise UsageError(f"several --lora adapters ({', '.join(names)}): choose one with --adapter NAME")
    return names[0]


def cmd_chat(args: argparse.Namespace) -> int:
    from edgekit.engine import Engine, Request
    from edgekit.errors import BadRequest

    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    with Engine(args.model, _run_settings(args)) as engine:
        print(f"{args.model.name}: context {engine.info.n_ctx} tokens. /reset starts over, /exit (or Ctrl-D) ends.", file=sys.stderr)
        while True:
            try:
                line = input("> ").strip()
            except EOFError:
                print(file=sys.stderr)
                return 0
            if line == "/exit":
                return 0
            if line == "/reset":
                messages = list(start)
                print("[conversation reset]", file=sys.stderr)
                continue
            if not line:
                continue
            messages.append({"role": "user", "content": line})
            request = Request(messages=tuple(messages), max_tokens=args.max_tokens, temperature=args.temperature)
            try:
                result = _stream_answer(engine, request)
            except BadRequest as exc:  # e.g. the conversation outgrew the context
                print(f"edgekit: {exc} (or /reset)", file=sys.stderr)
                result = None
            if result is None or result.finish_reason == "cancelled":
                messages.pop()  # the question stays unanswered: forget it
            else:
                messages.append({"role": "assistant", "content": result.text})


# --- daemon: serve, request, install-service ------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from edgekit.serve.config import load_config
    from edgekit.serve.core import Core, front_ends_for

    config = load_config(args.config, flags=vars(args))
    if not (args.debug or args.verbose):  # a daemon logs its normal events (journald keeps them)
        logging.getLogger("edgekit").setLevel(config.daemon.log_level.upper())
    Core(config, front_ends_for(config), reread=lambda: load_config(args.config, flags=vars(args))).run()
    return 0


def _cache_dir(args: argparse.Namespace) -> Path:
    """--dir, else the daemon's: [cache] dir or <state_dir>/prompt-cache from its config."""
    from edgekit.serve.config import load_config

    return args.dir or load_config(args.config).cache_dir


def cmd_cache(args: argparse.Namespace) -> int:
    import time

    from edgekit.engine.prompt_cache import clear, disk_files

    folder = _cache_dir(args)
    if args.action == "clear":
        count, size = clear(folder)
        print(f"removed {count} saved states ({size / 2**20:.1f} MB) from {folder}")
        return 0
    files = disk_files(folder)
    if args.json:
        _print_json([{"file": str(f.path), "bytes": f.size, "tokens": f.tokens, "last_used": f.mtime,
                      "model": f.label} for f in files])
        return 0
    print(f"{folder}: {len(files)} saved states, {sum(f.size for f in files) / 2**20:.1f} MB")
    for f in files:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(f.mtime))
        print(f"  {f.path.name}  {f.tokens if f.tokens is not None else '?':>6} tokens  "
              f"{f.size / 2**20:8.1f} MB  used {used}  {f.label}")
    return 0


def cmd_request(args: argparse.Namespace) -> int:
    from edgekit.serve.mqtt.client import RequestClient, chat_body, raise_for_error, read_schema, timings_line
    from edgekit.serve.config import load_config

    config = load_config(None, flags={"broker": args.broker, "prefix": args.prefix})
    schema = read_schema(args.json_schema) if args.json_schema else None
    body = chat_body(args.prompt, system=args.system, max_tokens=args.max_tokens, stream=args.stream,
                     json_schema=schema)
    show_chunks = args.stream and not args.json
    with RequestClient(config.broker.url, config.prefix, broker=config.broker, timeout_s=args.timeout) as client:
        answer = client.ask(body, on_chunk=(lambda text: print(text, end="", flush=True)) if show_chunks else None)
    raise_for_error(answer.final)
    if args.json:
        _print_json(answer.final)
    else:
        print("" if show_chunks else answer.text, flush=True)
    print(timings_line(answer.final, answer.round_trip_ms), file=sys.stderr)
    return 0


def cmd_install_service(args: argparse.Namespace) -> int:
    from edgekit.serve.service import BoxSettings, plan_installation, write_installation

    box = BoxSettings(model=args.model, profile=args.profile, broker=args.broker, instance=args.instance,
                      device_id=args.device_id, password_file=args.password_file, http=args.http,
                      api_key_file=args.api_key_file, lora=tuple(args.lora or ()))
    installation = plan_installation(box, dest=args.dest, env_dir=args.env_dir)
    for warning in installation.warnings:
        print(f"edgekit: warning: {warning}", file=sys.stderr)
    if args.dry_run:
        for file in installation.files:
            print(f"# --- {file.path} (mode {file.mode:o}; not written: --dry-run)\n{file.text}")
    else:
        written = write_installation(installation, force=args.force)
        for file in installation.files:
            kept = file.path not in written
            print(f"kept  {file.path} (yours differs; --force replaces it)" if kept else f"wrote {file.path}")
    print("\nnext:\n" + "\n".join(f"  {command}" for command in installation.next_commands))
    return 0


# --- measurement: bench, quality, recommend -----------------------------------------------


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
                              progress=lambda line: None if args.json else _status(line))
    if not args.json:
        _status("quality measured", final=True)
    if args.json:
        _print_json([r.to_dict() for r in results])
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
        _print_json(rec.to_dict())
        return 0
    print(f"box:       {rec.target_box}\nspeed:     {rec.speed_measured_on}\n")
    print(format_table(table_rows(rec)))
    print(f"recommend: {rec.chosen.path} ({rec.chosen.file_type})")
    for reason in rec.reasons:
        print(f"why:       {reason}")
    return 0


# --- the parser ---------------------------------------------------------------------------


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, when it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default in (None, False, argparse.SUPPRESS) or "default" in text
                or isinstance(action, argparse._VersionAction)):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def _profile_help(what: str = "plan for") -> str:
    from edgekit.profiles import profile_names

    names = ", ".join(profile_names()) or "none found"
    return (f"profile name or .toml path: {what} that box (its memory, GPU, cores) unless --this-box; "
            f"default: the profile that matches this machine. Known: {names}")


def _add_box_options(p: argparse.ArgumentParser, what: str = "plan for", required: bool = False) -> None:
    p.add_argument("--profile", required=required, default=None, metavar="P", help=_profile_help(what))
    p.add_argument("--this-box", action="store_true", default=None,
                   help="with --profile: plan for this machine's memory and cores, not the profile's box")


def _add_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-test-model", help="write a Llama-family checkpoint with seeded random weights",
                       formatter_class=_HelpFormatter)
    p.add_argument("dir", type=Path, help="folder to write the checkpoint into (created)")
    p.add_argument("--preset", default="tiny", help="shape: tiny, tiny8 (8 layers, for upscale), tinyllama, solar-mini, solar, tiny-llama3, "
                   "llama3.2-1b, tiny-qwen2, qwen2.5-1.5b or tiny-smollm2")
    p.add_argument("--dtype", default="bf16", choices=["f32", "f16", "bf16"], help="weight type")
    p.add_argument("--shard-size", default=None, help="max shard size, e.g. 500MB (default: one file)")
    p.add_argument("--tied", action=argparse.BooleanOptionalAction, default=None,
                   help="tie lm_head to the embeddings (default: as the real model does)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    p.set_defaults(func=cmd_make_test_model)

    p = sub.add_parser("pull", help="fetch a GGUF file or a checkpoint from the Hugging Face Hub",
                       formatter_class=_HelpFormatter)
    p.add_argument("repo", help="Hub repository, OWNER/NAME")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--file", help="one file of the repo (a .gguf)")
    g.add_argument("--quant", help="pick the repo's GGUF of this quant level, e.g. Q4_K_M")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.add_argument("--offline", action="store_true", help="use only the local cache")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("convert", help="convert a Hugging Face Llama-family checkpoint to GGUF",
                       formatter_class=_HelpFormatter)
    p.add_argument("hf_dir", type=Path, help="checkpoint folder (config.json, *.safetensors, tokenizer)")
    p.add_argument("-o", "--output", type=Path, required=True, help="GGUF file to write (its folder must exist)")
    p.add_argument("--outtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"], help="tensor type")
    p.add_argument("--quant", default=None,
                   help="quantize to these levels, e.g. Q4_K_M: -o is then the quantized file "
                        "(several levels: OUT-LEVEL.gguf each); the converted file is not kept")
    p.set_defaults(func=cmd_convert)

    p.add_argument("--lora", action="append", metavar="PEFT_DIR[:SCALE]",
                   help="merge this PEFT LoRA/QLoRA adapter into the weights (repeatable; SCALE defaults to 1)")

    p = sub.add_parser("convert-lora", help="convert a PEFT LoRA/QLoRA adapter to a llama.cpp GGUF adapter",
                       formatter_class=_HelpFormatter)
    p.add_argument("peft_dir", type=Path, help="PEFT's folder: adapter_config.json and adapter_model.safetensors")
    p.add_argument("--base", type=Path, required=True, help="the base model: checkpoint folder or GGUF file")
    p.add_argument("-o", "--output", type=Path, required=True, help="the adapter GGUF to write")
    p.add_argument("--outtype", default="f32", choices=["f32", "f16"], help="type of the A/B tensors")
    p.set_defaults(func=cmd_convert_lora)

    p = sub.add_parser("upscale", help="depth up-scaling (SOLAR): stack a model's layers into a deeper model",
                       formatter_class=_HelpFormatter)
    p.add_argument("source", type=Path, help="checkpoint folder (writes a folder) or GGUF file (writes a GGUF)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the folder or GGUF file to write")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--drop", type=int, default=None,
                   help="layers dropped from the end of the first copy and the start of the second (default 8)")
    g.add_argument("--layers", default=None, help="explicit source layers, e.g. 0-23,8-31")
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("quantize", help="quantize a GGUF to one or more llama.cpp levels",
                       formatter_class=_HelpFormatter)
    p.add_argument("input", type=Path, help="an f16/f32/bf16 GGUF")
    p.add_argument("levels", type=_csv(str), help="e.g. Q4_K_M or Q8_0,Q4_K_M,Q2_K (llama.cpp's names)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-o", "--output", type=Path, help="output file, one level only (its folder must exist)")
    g.add_argument("--out-dir", type=Path, help="folder for the outputs, NAME-LEVEL.gguf (default: beside the input)")
    p.add_argument("--threads", type=int, default=None, help="quantizer threads (default: all CPUs)")
    p.add_argument("--allow-requantize", action="store_true", help="accept an already quantized input")
    p.add_argument("--report", action="store_true", help="measure quality of each level (edgekit quality)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("inspect", help="validate a GGUF file and describe it", formatter_class=_HelpFormatter)
    p.add_argument("file", type=Path, help="a .gguf file")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--tensors", action="store_true", help="include the tensor table")
    p.set_defaults(func=cmd_inspect)


def _add_hardware(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="describe this box and the profile edgekit would use",
                       formatter_class=_HelpFormatter)
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("plan", help="estimate memory and resolve settings for a model on a box",
                       formatter_class=_HelpFormatter)
    p.add_argument("model", type=Path, nargs="+", help="GGUF file(s); with several, pick the best that fits")
    _add_box_options(p)
    p.add_argument("--ctx", type=int, default=None, help="context window in tokens (default: the profile's)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)  # a captured board's files
    _add_lora_option(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("tune", help="measure the fastest threads/batch settings on this box",
                       formatter_class=_HelpFormatter)
    p.add_argument("model", type=Path, help="the GGUF to measure with")
    p.add_argument("--profile", default=None, metavar="P", help=_profile_help("start from"))
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="profile to write (default: ~/.config/edgekit/profiles/local.toml, then --profile local)")
    p.add_argument("--threads", type=_csv(int), default=None,
                   help="thread counts to try, e.g. 2,4 (default: 1, 2, 4, ... the big cores and all cores)")
    p.add_argument("--batch", type=_csv(int), default=None, help="n_batch=n_ubatch sizes to try, e.g. 128,512")
    p.set_defaults(func=cmd_tune)


def _add_engine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run one prompt and stream the answer", formatter_class=_HelpFormatter)
    p.add_argument("model", type=Path, help="a GGUF file")
    p.add_argument("-p", "--prompt", required=True, help="the user message (with --raw: the whole text)")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--json-schema", type=Path, default=None, help="JSON Schema file the answer must follow")
    _add_box_options(p)
    p.add_argument("--ctx", type=int, default=None, help="context window in tokens (default: the profile's)")
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--raw", action="store_true", help="no chat template: the prompt is the text")
    _add_lora_option(p)
    p.add_argument("--adapter", default=None, help="the --lora adapter this prompt runs with (default: the only one)")
    p.add_argument("--adapter-scale", type=float, default=None, help="scale for the adapter (default: its --lora scale)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="interactive chat in the terminal", formatter_class=_HelpFormatter)
    p.add_argument("model", type=Path, help="a GGUF file")
    p.add_argument("--system", default=None, help="system message")
    _add_box_options(p)
    p.add_argument("--ctx", type=int, default=None, help="context window in tokens (default: the profile's)")
    p.add_argument("--max-tokens", type=int, default=512, help="most tokens per answer")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy")
    p.set_defaults(func=cmd_chat)


def _add_lora_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="append", metavar="NAME=ADAPTER.gguf[:SCALE]",
                   help="load a GGUF LoRA adapter beside the model (repeatable; edgekit convert-lora makes one); "
                        "a request picks it by NAME")


def _add_daemon(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="answer requests over MQTT and/or HTTP (run by systemd)",
                       formatter_class=_HelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="GGUF file to serve (or EDGEKIT_MODEL, [model] path)")
    _add_box_options(p)
    p.add_argument("--ctx", type=int, default=None,
                   help="context window in tokens, [model] ctx in edgekit.toml (default: the profile's)")
    p.add_argument("--broker", default=None,
                   help="mqtt://host:port or mqtts://host:port; none = HTTP only (default: mqtt://127.0.0.1:1883)")
    p.add_argument("--http", nargs="?", const=str(HTTP_DEFAULT_PORT), default=None, metavar="[HOST:]PORT",
                   help=f"also serve the Ollama and OpenAI APIs (default port {HTTP_DEFAULT_PORT}, host 127.0.0.1)")
    p.add_argument("--config", type=Path, default=None, help="edgekit.toml (or EDGEKIT_CONFIG); docs/protocol.md")
    p.add_argument("--prefix", default=None, help="topic prefix (default: edgekit/DEVICE_ID)")
    p.add_argument("--device-id", default=None, help="this box's id in topics (default: the hostname)")
    _add_lora_option(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("cache", help="list or clear the daemon's saved prompt states (the prompt cache)",
                       formatter_class=_HelpFormatter)
    p.add_argument("action", choices=["list", "clear"], help="list the saved states, or remove them")
    p.add_argument("--config", type=Path, default=None, help="edgekit.toml (finds [cache] dir / the state folder)")
    p.add_argument("--dir", type=Path, default=None, help="the cache folder itself")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("request", help="send a request to a running daemon and print the answer",
                       formatter_class=_HelpFormatter)
    p.add_argument("prompt", help="the user message")
    p.add_argument("--broker", default=None, help="mqtt://host:port (default: mqtt://127.0.0.1:1883)")
    p.add_argument("--prefix", default=None, help="the daemon's topic prefix (default: edgekit/HOSTNAME)")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--stream", action="store_true", help="print the answer as it comes")
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate")
    p.add_argument("--json-schema", type=Path, default=None, help="JSON Schema file the answer must follow")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the answer")
    p.add_argument("--json", action="store_true", help="print the final message as JSON")
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("install-service", help="render the systemd unit and env file for this box",
                       formatter_class=_HelpFormatter)
    p.add_argument("--profile", default=None, metavar="P", help=_profile_help("run as"))
    p.add_argument("--model", type=Path, default=None, help="GGUF file the service serves")
    p.add_argument("--broker", default=None, help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--instance", default=None, help="render the template unit edgekit@INSTANCE")
    p.add_argument("--dest", type=Path, default=Path("/etc/systemd/system"), help="folder for the unit")
    p.add_argument("--env-dir", type=Path, default=Path("/etc/edgekit"),
                   help="folder for edgekit.toml and the env file (made absolute)")
    p.add_argument("--device-id", default=None, help="default: the hostname (plus -INSTANCE with --instance)")
    p.add_argument("--password-file", type=Path, default=None,
                   help="broker password, loaded as a systemd credential (default: ENV_DIR/mqtt-password if present)")
    p.add_argument("--http", nargs="?", const=str(HTTP_DEFAULT_PORT), default=None, metavar="[HOST:]PORT",
                   help="also serve the Ollama and OpenAI APIs (written to the config's [http] listen)")
    p.add_argument("--api-key-file", type=Path, default=None,
                   help="HTTP API key, loaded as a systemd credential (default: ENV_DIR/http-api-key if present)")
    _add_lora_option(p)
    p.add_argument("--force", action="store_true", help="replace an existing config/env file that differs")
    p.add_argument("--dry-run", action="store_true", help="print what would be written")
    p.set_defaults(func=cmd_install_service)


def _add_measurement(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure latency and throughput", formatter_class=_HelpFormatter)
    p.add_argument("models", type=Path, nargs="+", help="GGUF files")
    _add_box_options(p, "use the settings planned for")
    p.add_argument("--prompt-tokens", type=_csv(int), default=[32, 256], help="prompt sizes, e.g. 32,256")
    p.add_argument("--gen-tokens", type=int, default=128, help="tokens generated per request")
    p.add_argument("--repeat", type=int, default=3, help="rounds of each setting")
    p.add_argument("--concurrency", type=_csv(int), default=[1], help="requests at once, e.g. 1,4")
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

    p = sub.add_parser("bench-compare", prog="edgekit bench compare", formatter_class=_HelpFormatter,
                       description="Each figure's change from OLD to NEW with a 95% bootstrap interval; "
                       "exits 1 on a regression beyond the threshold.")
    p.add_argument("old", help="a bench JSON, or a --save history (FILE.jsonl: its last run, FILE.jsonl#N: run N)")
    p.add_argument("new", help="the run to judge: a bench JSON or a history, as OLD")
    p.add_argument("--threshold", type=float, default=0.10,
                   help="a change counts when its whole interval lies beyond this fraction")
    p.set_defaults(func=cmd_bench_compare)

    p = sub.add_parser("quality", help="perplexity and KL divergence of quantized files against a reference",
                       formatter_class=_HelpFormatter)
    p.add_argument("reference", type=Path, help="the f16/f32 GGUF")
    p.add_argument("candidates", type=Path, nargs="+", help="quantized GGUFs of the same model")
    p.add_argument("--text", type=Path, default=None, help="UTF-8 text to score (default: edgekit's calibration text)")
    p.add_argument("--ctx", type=int, default=256, help="tokens per chunk")
    p.add_argument("--chunks", type=int, default=None, help="chunks to score (default: all the text holds)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_quality)

    p = sub.add_parser("recommend", help="name the quant level to deploy on a box", formatter_class=_HelpFormatter)
    p.add_argument("models", type=Path, nargs="+", help="a folder of GGUF files, or files")
    _add_box_options(p, required=True)
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


DESCRIPTION = """edgekit: put open LLMs on edge boxes and serve them over MQTT.

The pipeline, one command a stage: pull or make-test-model -> convert -> quantize ->
inspect -> detect / plan / tune -> run / chat -> serve (install-service) -> bench /
quality / recommend. `edgekit COMMAND --help` shows each command's options and defaults;
the README and docs/ show them at work."""


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


def _route(argv: Sequence[str]) -> list[str]:
    """`bench compare OLD NEW` is the bench-compare command (bench itself takes model paths)."""
    argv = list(argv)
    first = next((i for i, word in enumerate(argv) if not word.startswith("-")), None)
    if first is not None and argv[first:first + 2] == ["bench", "compare"]:
        argv[first:first + 2] = ["bench-compare"]
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgekit", description=DESCRIPTION, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_pipeline(sub)
    _add_hardware(sub)
    _add_engine(sub)
    _add_daemon(sub)
    _add_measurement(sub)
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


if __name__ == "__main__":
    sys.exit(main())
