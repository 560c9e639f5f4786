"""Run llama.cpp's llama-bench on the same file and settings, to compare rates with ours.

llama-bench reports one record per test: a pp test (n_prompt = N, n_gen = 0) whose
samples_ts are prompt tokens per second, and a tg test (n_prompt = 0, n_gen = M, after
n_depth tokens already in the cache) whose samples_ts are generated tokens per second
(tools/llama-bench/llama-bench.cpp, test::get_ts).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit import gguf_file
from edgekit.bench.results import Measurement
from edgekit.bench.stats import mean
from edgekit.errors import EngineError, UsageError
from edgekit.settings import Settings

log = logging.getLogger(__name__)

_TIMEOUT_S = 3600
# Where benchmarks/build_llama_tools.sh puts llama-bench and llama-perplexity: outside the
# checkout, so a fresh clone on the same box reuses a build that takes minutes.
LLAMA_TOOLS = Path(os.environ.get("EDGEKIT_LLAMA_TOOLS") or
                   Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit" / "llama-tools")


@dataclass(frozen=True)
class LlamaBenchFigures:
    """llama-bench's records for one model: pp tests by prompt size, tg tests by KV depth."""

    records: tuple[dict, ...] = ()

    def pp_samples(self, n_prompt: int) -> tuple[float, ...]:
        """The rate of each repetition of the pp test of ``n_prompt`` tokens (from an empty cache)."""
        return self._samples(lambda r: r.get("n_gen", 0) == 0 and r.get("n_prompt") == n_prompt
                             and r.get("n_depth", 0) == 0)

    def tg_samples(self, depth: int) -> tuple[float, ...]:
        """The rate of each repetition of the tg test that starts after ``depth`` tokens in the cache."""
        return self._samples(lambda r: r.get("n_prompt", 0) == 0 and r.get("n_gen", 0) > 0
                             and r.get("n_depth", 0) == depth)

    def _samples(self, match: Callable[[dict], bool]) -> tuple[float, ...]:
        return next((tuple(float(x) for x in r.get("samples_ts", ())) for r in self.records if match(r)), ())


def llama_bench_commands(binary: Path, model: Path, prompt_tokens: Sequence[int], gen_tokens: int,
                         settings: Settings, repeat: int) -> list[list[str]]:
    """The llama-bench runs that measure what an edgekit bench run with ``settings`` does.

    Two runs: the pp tests from an empty cache, and the tg tests at a KV depth of each
    prompt size (``-d``), because our generation runs after the prompt and attention over a
    deeper cache costs more per token. (One run with ``-d`` would repeat every pp test at
    every depth too.)
    """
    common = [
        str(binary), "-m", str(model),
        "-t", str(settings.n_threads or 1), "-r", str(repeat),
        "-b", str(settings.n_batch), "-ub", str(settings.n_ubatch),
        "-ngl", str(99 if settings.n_gpu_layers < 0 else settings.n_gpu_layers),
        "-fa", "on" if settings.flash_attn else "off",
        "-ctk", settings.type_k, "-ctv", settings.type_v,
        "-o", "json",
    ]
    sizes = ",".join(str(n) for n in prompt_tokens)
    return [
        common + ["-p", sizes, "-n", "0"],
        common + ["-p", "0", "-n", str(gen_tokens), "-d", sizes],
    ]


def run_llama_bench(argvs: Sequence[list[str]]) -> LlamaBenchFigures:
    """Run llama-bench once per argv and gather the records; errors name the binary and what it said."""
    records: list[dict] = []
    for argv in argvs:
        records += _run_one(argv)
    return LlamaBenchFigures(records=tuple(records))


def _run_one(argv: list[str]) -> list[dict]:
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


def parse_llama_bench_json(text: str) -> list[dict]:
    """llama-bench -o json output -> its records (one per test)."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EngineError(f"llama-bench printed something that is not JSON ({exc})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise EngineError("llama-bench's JSON is not a list of test records")
    return records


class LlamaBenchRounds:
    """llama-bench -r 1 on the same file and settings, run after each of our rounds."""

    def __init__(self, argvs: list[list[str]], name: str, progress: Callable[[str], None]) -> None:
        self.argvs, self.name, self.progress = argvs, name, progress
        self.figures: list[LlamaBenchFigures] = []

    def __call__(self, index: int) -> None:
        self.progress(f"{self.name}: llama-bench, round {index + 1}")
        self.figures.append(run_llama_bench(self.argvs))


def fits_beside(info: gguf_file.GGUFInfo, settings: Settings) -> bool:
    """Whether a second process with this model and settings fits in the memory free now."""
    from edgekit import hardware  # reads /proc and asks the GPU: only with --compare-llama-bench
    from edgekit.memory import MiB, estimate_memory

    need = estimate_memory(info, settings)
    box = hardware.detect()
    discrete = [g for g in box.gpus if not g.integrated]
    if discrete and need.vram:
        return need.ram_required <= box.usable_memory_mb * MiB and need.vram <= max(g.free_mb for g in discrete) * MiB
    return need.ram_required + need.vram <= box.usable_memory_mb * MiB  # CPU only, or memory shared with the GPU


def attach_llama_bench(found: list[Measurement], figures: list[LlamaBenchFigures], alternated: bool) -> list[Measurement]:
    """llama-bench's rates on every measurement (pp of its prompt size; tg at its prompt size's
    depth): the mean over its runs, and, when it ran after each of our rounds, its rate in each
    round, which the engine's measurements pair with."""
    out = []
    for m in found:
        pp = [x for f in figures for x in f.pp_samples(m.prompt_tokens)]
        tg = [x for f in figures for x in f.tg_samples(m.prompt_tokens)]
        paired = alternated and m.mode == "engine" and len(figures) == m.repeats
        out.append(dataclasses.replace(
            m, llama_bench_pp_ts=mean(pp) if pp else None, llama_bench_tg_ts=mean(tg) if tg else None,
            llama_bench_pp_samples=tuple(pp) if paired else (), llama_bench_tg_samples=tuple(tg) if paired else (),
        ))
    return out
