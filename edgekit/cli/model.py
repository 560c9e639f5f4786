"""Model files in, model files out: make-test-model, pull, convert, convert-lora, upscale, quantize, inspect."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgekit.cli.options import HelpFormatter, comma_list
from edgekit.cli.terminal import print_json, show_quantize, status


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
    from edgekit.atomic import check_writable_dir
    from edgekit.convert import convert_checkpoint, convert_to_levels

    def show(name: str, done: int, total: int) -> None:
        status(f"[{done}/{total}] {name:<40}", final=done == total)

    levels = comma_list(str)(args.quant) if args.quant else []
    if levels:  # -o names the quantized file, or the stem of one file per level
        for out, level in convert_to_levels(args.hf_dir, args.output, levels, args.outtype, progress=show,
                                            quantize_progress=show_quantize, merges=_merges(args.lora)):
            print(f"wrote {out} ({level}, {out.stat().st_size / 1e6:.1f} MB)")
        return 0
    check_writable_dir(args.output)  # before minutes of work
    result = convert_checkpoint(args.hf_dir, args.output, args.outtype, progress=show, merges=_merges(args.lora))
    print(f"wrote {result.path} ({result.outtype}, {result.tensor_count} tensors, "
          f"{result.size_bytes / 1e6:.1f} MB, {result.seconds:.1f} s)")
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
                       allow_requantize=args.allow_requantize, progress=show_quantize)
    for r in results:
        print(f"wrote {r.path} ({r.level}, {r.size / 1e6:.1f} MB, {r.bits_per_weight:.2f} bits/weight, {r.seconds:.1f} s)")
    if args.report:
        from edgekit.bench.output import format_table
        from edgekit.bench.quality import compare_quality, quality_table

        results = compare_quality(args.input, [r.path for r in results], threads=args.threads, progress=status)
        status("quality measured", final=True)
        print(format_table(quality_table(results)), end="")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from edgekit.gguf_file import validate

    info = validate(args.file)
    if args.json:
        print_json(info.to_dict(tensors=args.tensors))
        return 0
    for line in info.describe(tensors=args.tensors):
        print(line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """The parsers of make-test-model, pull, convert, convert-lora, upscale, quantize, inspect, each with its handler."""
    p = sub.add_parser("make-test-model", help="write a Llama-family checkpoint with seeded random weights",
                       formatter_class=HelpFormatter)
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
                       formatter_class=HelpFormatter)
    p.add_argument("repo", help="Hub repository, OWNER/NAME")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--file", help="one file of the repo (a .gguf)")
    g.add_argument("--quant", help="pick the repo's GGUF of this quant level, e.g. Q4_K_M")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.add_argument("--offline", action="store_true", help="use only the local cache")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("convert", help="convert a Hugging Face Llama-family checkpoint to GGUF",
                       formatter_class=HelpFormatter)
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
                       formatter_class=HelpFormatter)
    p.add_argument("peft_dir", type=Path, help="PEFT's folder: adapter_config.json and adapter_model.safetensors")
    p.add_argument("--base", type=Path, required=True, help="the base model: checkpoint folder or GGUF file")
    p.add_argument("-o", "--output", type=Path, required=True, help="the adapter GGUF to write")
    p.add_argument("--outtype", default="f32", choices=["f32", "f16"], help="type of the A/B tensors")
    p.set_defaults(func=cmd_convert_lora)

    p = sub.add_parser("upscale", help="depth up-scaling (SOLAR): stack a model's layers into a deeper model",
                       formatter_class=HelpFormatter)
    p.add_argument("source", type=Path, help="checkpoint folder (writes a folder) or GGUF file (writes a GGUF)")
    p.add_argument("-o", "--output", type=Path, required=True, help="the folder or GGUF file to write")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--drop", type=int, default=None,
                   help="layers dropped from the end of the first copy and the start of the second (default 8)")
    g.add_argument("--layers", default=None, help="explicit source layers, e.g. 0-23,8-31")
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("quantize", help="quantize a GGUF to one or more llama.cpp levels",
                       formatter_class=HelpFormatter)
    p.add_argument("input", type=Path, help="an f16/f32/bf16 GGUF")
    p.add_argument("levels", type=comma_list(str), help="e.g. Q4_K_M or Q8_0,Q4_K_M,Q2_K (llama.cpp's names)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-o", "--output", type=Path, help="output file, one level only (its folder must exist)")
    g.add_argument("--out-dir", type=Path, help="folder for the outputs, NAME-LEVEL.gguf (default: beside the input)")
    p.add_argument("--threads", type=int, default=None, help="quantizer threads (default: all CPUs)")
    p.add_argument("--allow-requantize", action="store_true", help="accept an already quantized input")
    p.add_argument("--report", action="store_true", help="measure quality of each level (edgekit quality)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("inspect", help="validate a GGUF file and describe it", formatter_class=HelpFormatter)
    p.add_argument("file", type=Path, help="a .gguf file")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--tensors", action="store_true", help="include the tensor table")
    p.set_defaults(func=cmd_inspect)
