"""The box: detect it, plan a model's memory and settings on it, tune its threads and batch sizes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgekit.cli.options import HelpFormatter, add_box_options, add_lora_option, comma_list, profile_help
from edgekit.cli.terminal import print_json


def cmd_detect(args: argparse.Namespace) -> int:
    from edgekit.hardware import detect
    from edgekit.profiles import choose_profile

    hardware = detect(args.root)
    profile, reason = choose_profile(hardware)
    if args.json:
        print_json({"hardware": hardware.to_dict(), "profile": profile.name, "reason": reason,
                    "cmake_args": profile.build.cmake_args})
        return 0
    print(f"profile:  {reason}")
    for line in hardware.describe():
        print(line)
    print(f"build:    CMAKE_ARGS=\"{profile.build.cmake_args}\"")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from edgekit.plan import lora_adapters, settings_for

    plan = settings_for(list(args.model), args.profile, ctx=args.ctx, this_box=args.this_box, root=args.root,
                        lora=lora_adapters(args.lora))
    if args.json:
        print_json(plan.to_dict())
        return 0
    for line in plan.describe():
        print(line)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from edgekit.plan import target_for
    from edgekit.profiles import user_profiles
    from edgekit.tune import Sweep, check_output, tune, write_profile

    output = args.output
    if output is None:  # the user's own folder, on the profile search path: --profile local finds it
        output = user_profiles() / "local.toml"
        output.parent.mkdir(parents=True, exist_ok=True)
    check_output(output)
    target = target_for(args.profile, this_box=True)  # tuning measures this machine, whatever the profile
    print(f"edgekit: tuning from {target.profile_reason}", file=sys.stderr)
    sweep = Sweep(threads=tuple(args.threads) if args.threads else None,
                  batch_sizes=tuple(args.batch) if args.batch else Sweep().batch_sizes)
    result = tune(args.model, target.profile, target.hardware, name=output.stem, sweep=sweep,
                  progress=lambda line: print(f"edgekit: {line}", file=sys.stderr))
    write_profile(result, output)
    s = result.settings
    use = output.stem if output.parent.resolve() == user_profiles().resolve() else output
    print(f"{output}: threads {s.n_threads}/{s.n_threads_batch}, batch {s.n_batch}/{s.n_ubatch}, "
          f"gpu layers {s.n_gpu_layers} (use it with --profile {use})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """The parsers of detect, plan, tune, each with its handler."""
    p = sub.add_parser("detect", help="describe this box and the profile edgekit would use",
                       formatter_class=HelpFormatter)
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("plan", help="estimate memory and resolve settings for a model on a box",
                       formatter_class=HelpFormatter)
    p.add_argument("model", type=Path, nargs="+", help="GGUF file(s); with several, pick the best that fits")
    add_box_options(p)
    p.add_argument("--ctx", type=int, default=None, help="context window in tokens (default: the profile's)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)  # a captured board's files
    add_lora_option(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("tune", help="measure the fastest threads/batch settings on this box",
                       formatter_class=HelpFormatter)
    p.add_argument("model", type=Path, help="the GGUF to measure with")
    p.add_argument("--profile", default=None, metavar="P", help=profile_help("start from"))
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="profile to write (default: ~/.config/edgekit/profiles/local.toml, then --profile local)")
    p.add_argument("--threads", type=comma_list(int), default=None,
                   help="thread counts to try, e.g. 2,4 (default: 1, 2, 4, ... the big cores and all cores)")
    p.add_argument("--batch", type=comma_list(int), default=None, help="n_batch=n_ubatch sizes to try, e.g. 128,512")
    p.set_defaults(func=cmd_tune)
