"""run and chat: the engine in the terminal, the answer streamed as it comes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edgekit.cli.options import HelpFormatter, add_box_options, add_lora_option


def _run_settings(args: argparse.Namespace) -> Any:
    """Settings for `run`/`chat`: the plan for --profile's box (or this one), with --ctx if given;
    one line on stderr says which box and how many threads, and why."""
    from edgekit.plan import lora_adapters, settings_for

    plan = settings_for(args.model, args.profile, ctx=args.ctx, this_box=args.this_box,
                        lora=lora_adapters(getattr(args, "lora", None)))
    s = plan.settings
    threads = "; ".join(r for r in plan.reasons if " threads: " in r) or f"{s.n_threads} threads from the profile"
    print(f"edgekit: profile {plan.profile} for {plan.box}: {threads}; settings: {s.summary()}", file=sys.stderr)
    return s


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
        from edgekit.strict import read_json_object

        schema = read_json_object(args.json_schema, "--json-schema", UsageError, fix="give a JSON Schema")
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
    from edgekit.plan import lora_adapters

    names = [adapter.name for adapter in lora_adapters(args.lora)]
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


def register(sub: argparse._SubParsersAction) -> None:
    """The parsers of run, chat, each with its handler."""
    p = sub.add_parser("run", help="run one prompt and stream the answer", formatter_class=HelpFormatter)
    p.add_argument("model", type=Path, help="a GGUF file")
    p.add_argument("-p", "--prompt", required=True, help="the user message (with --raw: the whole text)")
    p.add_argument("--system", default=None, help="system message")
    p.add_argument("--json-schema", type=Path, default=None, help="JSON Schema file the answer must follow")
    add_box_options(p)
    p.add_argument("--ctx", type=int, default=None, help="context window in tokens (default: the profile's)")
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    p.add_argument("--raw", action="store_true", help="no chat template: the prompt is the text")
    add_lora_option(p)
    p.add_argument("--adapter", default=None, help="the --lora adapter this prompt runs with (default: the only one)")
    p.add_argument("--adapter-scale", type=float, default=None, help="scale for the adapter (default: its --lora scale)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="interactive chat in the terminal", formatter_class=HelpFormatter)
    p.add_argument("model", type=Path, help="a GGUF file")
    p.add_argument("--system", default=None, help="system message")
    add_box_options(p)
    p.add_argument("--ctx", type=int, default=None, help="context window in tokens (default: the profile's)")
    p.add_argument("--max-tokens", type=int, default=512, help="most tokens per answer")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature; 0 = greedy")
    p.set_defaults(func=cmd_chat)
