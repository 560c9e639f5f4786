"""Measure the fastest threads, batch sizes and GPU layers on this box; write them as a profile.

A short, bounded sweep through the engine (one worker per setting, a warm-up, then a
~100-token prompt and a short generation): thread counts first (generation and prompt
threads are chosen separately, as they peak at different counts on big.LITTLE boards),
then n_batch/n_ubatch with the best threads, then GPU layers on a discrete GPU. Every
setting tried comes from a plan that fits memory, so tuning never runs the box out of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from edgekit.atomic import check_writable_dir, write_text
from edgekit.hardware import Hardware
from edgekit.memory import estimate_memory
from edgekit.gguf_file import validate
from edgekit.plan import Plan, settings_for
from edgekit.profiles import Profile, profile_to_toml
from edgekit.settings import Settings, run_from_settings

log = logging.getLogger(__name__)

BATCH_SIZES = (128, 256, 512)
PROMPT_WORDS = 96  # about 100-130 tokens with a Llama tokenizer
GENERATE_TOKENS = 24
WARMUP_TOKENS = 2
TUNED = ("n_threads", "n_threads_batch", "n_batch", "n_ubatch", "n_gpu_layers")  # what a sweep measures


@dataclass(frozen=True)
class Sweep:
    """What to try; the defaults keep a Pi-class run within a few minutes."""

    threads: tuple[int, ...] | None = None  # None: 1, 2, 4, ... physical cores, plus the big cores
    batch_sizes: tuple[int, ...] = BATCH_SIZES  # n_batch = n_ubatch
    gpu_layers: tuple[int, ...] | None = None  # None: the plan's count and fewer, when a GPU is used
    prompt_words: int = PROMPT_WORDS
    generate_tokens: int = GENERATE_TOKENS
    repeats: int = 2  # measured requests per setting; the best counts (other load only slows)


@dataclass(frozen=True)
class SettingSpeed:
    """Speed of one setting: prompt processing and generation, tokens per second."""

    settings: Settings
    prompt_tokens_per_s: float
    generation_tokens_per_s: float


@dataclass(frozen=True)
class TuneResult:
    """The measured sweep and the profile built from the fastest settings."""

    plan: Plan
    settings: Settings
    measurements: tuple[SettingSpeed, ...]
    profile: Profile


Measure = Callable[[Path, Settings, Sweep], SettingSpeed]
Say = Callable[[str], None]  # one line of progress for a person


def tune(
    model: Path, base: Profile, hardware: Hardware, *, name: str = "local", sweep: Sweep = Sweep(),
    measure: Measure | None = None, progress: Say = log.info,
) -> TuneResult:
    """Sweep settings for ``model`` on this box, starting from ``base``; nothing is written."""
    measure = measure or measure_with_engine
    plan = settings_for(model, base, hardware=hardware)
    done: list[SettingSpeed] = []

    def run(settings: Settings) -> SettingSpeed:
        result = measure(plan.model, settings, sweep)
        done.append(result)
        progress(f"{_label(settings)}: prompt {result.prompt_tokens_per_s:.1f} tok/s, "
                 f"generation {result.generation_tokens_per_s:.1f} tok/s")
        return result

    by_threads = [run(replace(plan.settings, n_threads=t, n_threads_batch=t))
                  for t in thread_candidates(hardware, sweep)]
    best = replace(plan.settings,
                   n_threads=max(by_threads, key=_generation).settings.n_threads,
                   n_threads_batch=max(by_threads, key=_prompt).settings.n_threads_batch)
    batches = [s for s in _batch_settings(best, sweep, plan) if s != best]
    best = max([*(run(s) for s in batches), _lookup(done, best) or run(best)], key=_prompt).settings
    layers = _layer_settings(best, sweep, plan)
    if layers:
        best = max([run(s) for s in layers], key=_generation).settings
    profile = tuned_profile(base, best, name, hardware, plan.model)
    return TuneResult(plan, best, tuple(done), profile)


def write_profile(result: TuneResult, output: Path) -> Path:
    """Write the tuned profile as TOML, atomically."""
    return write_text(output, profile_to_toml(result.profile))


def check_output(output: Path) -> None:
    """Fail before minutes of measuring if the profile cannot be written there."""
    check_writable_dir(output)


def thread_candidates(hw: Hardware, sweep: Sweep) -> tuple[int, ...]:
    """1, 2, 4, ... up to the physical cores, plus the big-core count: a handful of runs."""
    if sweep.threads:
        return tuple(sorted(set(sweep.threads)))
    counts = {hw.big_cores, hw.physical_cores}
    n = 1
    while n < hw.physical_cores:
        counts.add(n)
        n *= 2
    return tuple(sorted(c for c in counts if c >= 1))


def _batch_settings(best: Settings, sweep: Sweep, plan: Plan) -> list[Settings]:
    """Batch sizes that the context allows and that keep the plan within its memory budget."""
    info = validate(plan.model)
    out = []
    for size in sweep.batch_sizes:
        candidate = replace(best, n_batch=min(size, best.n_ctx), n_ubatch=min(size, best.n_ctx))
        if candidate not in out and estimate_memory(info, candidate).ram_required <= plan.budget.ram:
            out.append(candidate)
    return out


def _layer_settings(best: Settings, sweep: Sweep, plan: Plan) -> list[Settings]:
    """On a discrete GPU, the plan's layer count and fewer (more never fit)."""
    if plan.budget.unified or best.n_gpu_layers == 0:
        return []
    top = plan.estimate.n_gpu_layers
    counts = sweep.gpu_layers or tuple(sorted({top, top * 3 // 4, top // 2}, reverse=True))
    return [replace(best, n_gpu_layers=-1 if c >= top and best.n_gpu_layers == -1 else c) for c in counts]


def _lookup(done: list[SettingSpeed], settings: Settings) -> SettingSpeed | None:
    return next((m for m in done if m.settings == settings), None)


def _generation(m: SettingSpeed) -> float:
    return m.generation_tokens_per_s


def _prompt(m: SettingSpeed) -> float:
    return m.prompt_tokens_per_s


def _label(s: Settings) -> str:
    layers = "all" if s.n_gpu_layers < 0 else s.n_gpu_layers
    return f"threads {s.n_threads}/{s.n_threads_batch}, batch {s.n_batch}/{s.n_ubatch}, gpu layers {layers}"


def tuned_profile(base: Profile, best: Settings, name: str, hw: Hardware, model: Path) -> Profile:
    """``base`` with the measured settings; it wins over ``base`` on the same kind of box."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    measured = TUNED if base.run.n_gpu_layers != 0 else tuple(n for n in TUNED if n != "n_gpu_layers")
    run = run_from_settings(base.run, best, measured)
    match = replace(base.match, priority=min(base.match.priority + 1, 100))
    description = f"tuned from {base.name} on {hw.summary()} with {model.name}, {when}"
    return replace(base, name=name, description=description, run=run, match=match, source=None)


# --- measuring through the engine -------------------------------------------------------------


def measure_with_engine(model: Path, settings: Settings, sweep: Sweep) -> SettingSpeed:
    """One worker with ``settings``: a warm-up request, then the measured one."""
    from edgekit.engine import Engine, Request

    prompt = " ".join(_WORDS[i % len(_WORDS)] for i in range(sweep.prompt_words))
    with Engine(model, settings, validate=False, restart=False) as engine:
        engine.complete(Request(prompt="Warm up the caches.", max_tokens=WARMUP_TOKENS, seed=0))
        timings = [engine.complete(Request(prompt=f"{i} {prompt}", max_tokens=sweep.generate_tokens, seed=0)).timings
                   for i in range(max(1, sweep.repeats))]
    return SettingSpeed(settings, max(t.prompt_tokens_per_s for t in timings),
                       max(t.generation_tokens_per_s for t in timings))


_WORDS = ("the sensor on the north wall reported a temperature of twenty one degrees while the "
          "humidity stayed near forty percent and the door remained closed all night").split()
