"""Run llama.cpp's llama-bench on the same file and settings, to compare rates with ours.

llama-bench reports one record per test: a pp test (n_prompt = N, n_gen = 0) whose
avg_ts is prompt tokens per second, and a tg test (n_prompt = 0, n_gen = M) whose
avg_ts is generated tokens per second (tools/llama-bench/llama-bench.cpp, test::get_ts).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import EngineError, UsageError

log = logging.getLogger(__name__)

_TIMEOUT_S = 3600
# Where benchmarks/build_llama_tools.sh puts llama-bench and llama-perplexity: outside the
# checkout, so a fresh clone on the same box reuses a build that takes minutes.
LLAMA_TOOLS = Path(os.environ.get("EDGEKIT_LLAMA_TOOLS") or
                   Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit" / "llama-tools")


@dataclass(frozen=True)
class LlamaBenchFigures:
    """llama-bench's mean rates for one model: pp by prompt size, and tg."""

    pp_ts: dict[int, float] = field(default_factory=dict)  # n_prompt -> tokens/s
    tg_ts: float = 0.0
    tg_n_gen: int = 0
    build_commit: str = ""
    records: tuple[dict, ...] = ()


def llama_bench_command(binary: Path, model: Path, prompt_tokens: Sequence[int], gen_tokens: int,
                        threads: int, repeat: int, n_batch: int, n_ubatch: int, n_gpu_layers: int) -> list[str]:
    """The llama-bench argv that matches an edgekit bench run."""
    return [
        str(binary), "-m", str(model),
        "-p", ",".join(str(n) for n in prompt_tokens), "-n", str(gen_tokens),
        "-t", str(threads), "-r", str(repeat),
        "-b", str(n_batch), "-ub", str(n_ubatch),
        "-ngl", str(99 if n_gpu_layers < 0 else n_gpu_layers),
        "-o", "json",
    ]


def run_llama_bench(argv: list[str]) -> LlamaBenchFigures:
    """Run llama-bench and read its JSON; errors name the binary and what it said."""
    binary = Path(argv[0])
    if not binary.is_file():
        raise UsageError(f"--compare-llama-bench {binary}: no such file (build it: benchmarks/build_llama_tools.sh)")
    log.info("running %s", " ".join(argv))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except OSError as exc:
        raise UsageError(f"--compare-llama-bench {binary}: cannot run it ({exc})") from None
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no message"]
        raise EngineError(f"llama-bench exited with {done.returncode}: {tail[0]}")
    return parse_llama_bench_json(done.stdout)


def parse_llama_bench_json(text: str) -> LlamaBenchFigures:
    """llama-bench -o json output -> its pp and tg rates."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineError(f"llama-bench printed something that is not JSON ({exc})") from None
    pp: dict[int, float] = {}
    tg, n_gen = 0.0, 0
    for rec in records:
        if rec.get("n_gen", 0) == 0 and rec.get("n_prompt", 0) > 0:
            pp[int(rec["n_prompt"])] = float(rec["avg_ts"])
        elif rec.get("n_prompt", 0) == 0 and rec.get("n_gen", 0) > 0:
            tg, n_gen = float(rec["avg_ts"]), int(rec["n_gen"])
    commit = str(records[0].get("build_commit", "")) if records else ""
    return LlamaBenchFigures(pp_ts=pp, tg_ts=tg, tg_n_gen=n_gen, build_commit=commit, records=tuple(records))
