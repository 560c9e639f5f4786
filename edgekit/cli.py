"""The `edgekit` command: parse argv, call one library function, print for humans.

Every command is a thin shell over functions that the tests call directly. Errors
of our own become one line on stderr and a non-zero exit; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgekit import __version__
from edgekit.errors import EdgekitError

Handler = Callable[[argparse.Namespace], int | None]


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False, default=str))


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
    raise NotImplementedError("make-test-model")


def cmd_pull(args: argparse.Namespace) -> int:
    raise NotImplementedError("pull")


def cmd_convert(args: argparse.Namespace) -> int:
    raise NotImplementedError("convert")


def cmd_quantize(args: argparse.Namespace) -> int:
    raise NotImplementedError("quantize")


def cmd_inspect(args: argparse.Namespace) -> int:
    raise NotImplementedError("inspect")


# --- hardware: detect, plan, tune ---------------------------------------------------------


def cmd_detect(args: argparse.Namespace) -> int:
    raise NotImplementedError("detect")


def cmd_plan(args: argparse.Namespace) -> int:
    raise NotImplementedError("plan")


def cmd_tune(args: argparse.Namespace) -> int:
    raise NotImplementedError("tune")


# --- engine: run, chat ----------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    raise NotImplementedError("run")


def cmd_chat(args: argparse.Namespace) -> int:
    raise NotImplementedError("chat")


# --- daemon: serve, request, install-service ------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    raise NotImplementedError("serve")


def cmd_request(args: argparse.Namespace) -> int:
    raise NotImplementedError("request")


def cmd_install_service(args: argparse.Namespace) -> int:
    raise NotImplementedError("install-service")


# --- measurement: bench, quality, recommend -----------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    raise NotImplementedError("bench")


def cmd_quality(args: argparse.Namespace) -> int:
    raise NotImplementedError("quality")


def cmd_recommend(args: argparse.Namespace) -> int:
    raise NotImplementedError("recommend")


# --- the parser ---------------------------------------------------------------------------


def _add_pipeline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-test-model", help="write a Llama checkpoint with seeded random weights")
    p.add_argument("dir", type=Path)
    p.add_argument("--preset", default="tiny", help="tiny, tinyllama, solar-mini or solar")
    p.add_argument("--dtype", default="bf16", choices=["f32", "f16", "bf16"])
    p.add_argument("--shard-size", default=None, help="max shard size, e.g. 500MB (default: one file)")
    p.add_argument("--tied", action="store_true", help="tie lm_head to the embeddings")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_test_model)

    p = sub.add_parser("pull", help="fetch a GGUF file or a checkpoint from the Hugging Face Hub")
    p.add_argument("repo")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--file", help="one file of the repo (a .gguf)")
    g.add_argument("--quant", help="pick the repo's GGUF of this quant level, e.g. Q4_K_M")
    p.add_argument("--revision", default=None)
    p.add_argument("--offline", action="store_true", help="use only the local cache")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("convert", help="convert a Hugging Face Llama-family checkpoint to GGUF")
    p.add_argument("hf_dir", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--outtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"])
    p.add_argument("--quant", default=None, help="also quantize to these levels, e.g. Q4_K_M")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("quantize", help="quantize a GGUF to one or more llama.cpp levels")
    p.add_argument("input", type=Path)
    p.add_argument("levels", type=_csv(str), help="e.g. Q4_K_M or Q8_0,Q4_K_M,Q2_K")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-o", "--output", type=Path, help="output file (one level only)")
    g.add_argument("--out-dir", type=Path, help="folder for the outputs (default: beside the input)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--allow-requantize", action="store_true")
    p.add_argument("--report", action="store_true", help="measure quality of each level (edgekit quality)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("inspect", help="validate a GGUF file and describe it")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--tensors", action="store_true", help="include the tensor table")
    p.set_defaults(func=cmd_inspect)


def _add_hardware(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="describe this box and the profile edgekit would use")
    p.add_argument("--json", action="store_true")
    p.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("plan", help="estimate memory and resolve settings for a model on this box")
    p.add_argument("model", type=Path, nargs="+", help="GGUF file(s); with several, pick the best that fits")
    p.add_argument("--profile", default=None)
    p.add_argument("--ctx", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("tune", help="measure the fastest threads/batch settings on this box")
    p.add_argument("model", type=Path)
    p.add_argument("--profile", default=None)
    p.add_argument("-o", "--output", type=Path, default=None)
    p.set_defaults(func=cmd_tune)


def _add_engine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run one prompt and stream the answer")
    p.add_argument("model", type=Path)
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("--system", default=None)
    p.add_argument("--json-schema", type=Path, default=None)
    p.add_argument("--profile", default=None)
    p.add_argument("--ctx", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--raw", action="store_true", help="no chat template: the prompt is the text")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("chat", help="interactive chat in the terminal")
    p.add_argument("model", type=Path)
    p.add_argument("--system", default=None)
    p.add_argument("--profile", default=None)
    p.add_argument("--ctx", type=int, default=None)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.7)
    p.set_defaults(func=cmd_chat)


def _add_daemon(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="answer requests over MQTT (run by systemd)")
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--profile", default=None)
    p.add_argument("--broker", default=None, help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--config", type=Path, default=None, help="edgekit.toml")
    p.add_argument("--prefix", default=None)
    p.add_argument("--device-id", default=None)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("request", help="send a request to a running daemon and print the answer")
    p.add_argument("prompt")
    p.add_argument("--broker", default=None)
    p.add_argument("--prefix", default=None)
    p.add_argument("--system", default=None)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--json-schema", type=Path, default=None)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--json", action="store_true", help="print the final message as JSON")
    p.set_defaults(func=cmd_request)

    p = sub.add_parser("install-service", help="render the systemd unit and env file for this box")
    p.add_argument("--profile", default=None)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--broker", default=None)
    p.add_argument("--instance", default=None, help="render the template unit edgekit@INSTANCE")
    p.add_argument("--dest", type=Path, default=Path("/etc/systemd/system"))
    p.add_argument("--env-dir", type=Path, default=Path("/etc/edgekit"))
    p.add_argument("--dry-run", action="store_true", help="print what would be written")
    p.set_defaults(func=cmd_install_service)


def _add_measurement(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure latency and throughput")
    p.add_argument("models", type=Path, nargs="+")
    p.add_argument("--profile", default=None)
    p.add_argument("--prompt-tokens", type=_csv(int), default=[32, 256])
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--concurrency", type=_csv(int), default=[1])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--via", default=None, help="mqtt://host:port: also measure end to end through a daemon")
    p.add_argument("--prefix", default=None, help="daemon topic prefix, with --via")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", action="store_true")
    out.add_argument("--jsonl", action="store_true")
    p.add_argument("--output", type=Path, default=None, help="write JSON/CSV/JSONL here instead of stdout")
    p.add_argument("--report", type=Path, default=None, help="write an HTML report")
    p.add_argument("--compare-llama-bench", type=Path, default=None, metavar="PATH")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("quality", help="perplexity and KL divergence of quantized files against a reference")
    p.add_argument("reference", type=Path)
    p.add_argument("candidates", type=Path, nargs="+")
    p.add_argument("--text", type=Path, default=None)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--chunks", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_quality)

    p = sub.add_parser("recommend", help="name the quant level to deploy on a box")
    p.add_argument("models", type=Path, nargs="+", help="a folder of GGUF files, or files")
    p.add_argument("--profile", required=True)
    p.add_argument("--max-ttft-ms", type=float, default=None)
    p.add_argument("--min-tokens-per-s", type=float, default=None)
    p.add_argument("--reference", type=Path, default=None, help="f16/f32 file for quality")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recommend)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgekit", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_pipeline(sub)
    _add_hardware(sub)
    _add_engine(sub)
    _add_daemon(sub)
    _add_measurement(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except EdgekitError as exc:
        if args.debug:
            raise
        print(f"edgekit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: still one line, traceback on request
        if args.debug:
            raise
        print(f"edgekit: internal error: {type(exc).__name__}: {exc} (run with --debug for details)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
