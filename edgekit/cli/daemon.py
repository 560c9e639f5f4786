"""The daemon and its clients: serve, cache, request, install-service."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edgekit.cli.options import HelpFormatter, add_box_options, add_lora_option, profile_help
from edgekit.cli.terminal import print_json
from edgekit.serve.config import HTTP_DEFAULT_PORT


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
        print_json([{"file": str(f.path), "bytes": f.size, "tokens": f.tokens, "last_used": f.mtime,
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
        print_json(answer.final)
    else:
        print("" if show_chunks else answer.text, flush=True)
    print(timings_line(answer.final, answer.round_trip_ms), file=sys.stderr)
    return 0


def cmd_install_service(args: argparse.Namespace) -> int:
    from edgekit.serve.install_service import BoxSettings, plan_installation, write_installation

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


def register(sub: argparse._SubParsersAction) -> None:
    """The parsers of serve, cache, request, install-service, each with its handler."""
    p = sub.add_parser("serve", help="answer requests over MQTT and/or HTTP (run by systemd)",
                       formatter_class=HelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="GGUF file to serve (or EDGEKIT_MODEL, [model] path)")
    add_box_options(p)
    p.add_argument("--ctx", type=int, default=None,
                   help="context window in tokens, [model] ctx in edgekit.toml (default: the profile's)")
    p.add_argument("--broker", default=None,
                   help="mqtt://host:port or mqtts://host:port; none = HTTP only (default: mqtt://127.0.0.1:1883)")
    p.add_argument("--http", nargs="?", const=str(HTTP_DEFAULT_PORT), default=None, metavar="[HOST:]PORT",
                   help=f"also serve the Ollama and OpenAI APIs (default port {HTTP_DEFAULT_PORT}, host 127.0.0.1)")
    p.add_argument("--config", type=Path, default=None, help="edgekit.toml (or EDGEKIT_CONFIG); docs/protocol.md")
    p.add_argument("--prefix", default=None, help="topic prefix (default: edgekit/DEVICE_ID)")
    p.add_argument("--device-id", default=None, help="this box's id in topics (default: the hostname)")
    add_lora_option(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("cache", help="list or clear the daemon's saved prompt states (the prompt cache)",
                       formatter_class=HelpFormatter)
    p.add_argument("action", choices=["list", "clear"], help="list the saved states, or remove them")
    p.add_argument("--config", type=Path, default=None, help="edgekit.toml (finds [cache] dir / the state folder)")
    p.add_argument("--dir", type=Path, default=None, help="the cache folder itself")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("request", help="send a request to a running daemon and print the answer",
                       formatter_class=HelpFormatter)
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
                       formatter_class=HelpFormatter)
    p.add_argument("--profile", default=None, metavar="P", help=profile_help("run as"))
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
    add_lora_option(p)
    p.add_argument("--force", action="store_true", help="replace an existing config/env file that differs")
    p.add_argument("--dry-run", action="store_true", help="print what would be written")
    p.set_defaults(func=cmd_install_service)
