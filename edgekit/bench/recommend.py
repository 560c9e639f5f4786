"""`edgekit recommend`: the quant level to deploy on a box, from fit, speed and quality.

Fit comes from the planner (edgekit.plan) for the profile's box. Speed is measured on
THIS machine (a short bench, or a bench JSON given with --bench-json): profiles declare
no speed factor, and scaling an x86 figure to a Cortex-A72 would be a guess, so every
speed figure is labelled with the machine it was measured on. Quality is the KL
divergence against the reference (f16/f32) file, measured or read from --quality-json.
The choice: of the levels that fit and meet every target (quality included: KL at most
--max-kl), the smallest: on memory-bound edge boxes the smallest file is the fastest and
leaves the most room. Without a reference, quality cannot be judged: the profile's own
level is taken if it qualifies, else the largest file that does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit import gguf_file
from edgekit.bench.quality import QualityResult, compare_quality
from edgekit.bench.results import BenchRun, Measurement
from edgekit.errors import DoesNotFit, UsageError
from edgekit.plan import Target, settings_for, target_for
from edgekit.profiles import Profile
from edgekit.quant_levels import LEVELS, UNQUANTIZED

SPEED_PROMPT_TOKENS = 128  # the prompt the TTFT target is judged on
SPEED_GEN_TOKENS = 32
DEFAULT_MAX_KL = 0.05  # nats/token: about what Q4_K_M costs a 7B Llama; above it answers visibly change


@dataclass(frozen=True)
class Targets:
    max_ttft_ms: float | None = None
    min_tokens_per_s: float | None = None
    max_kl: float = DEFAULT_MAX_KL


@dataclass(frozen=True)
class Option:
    """One file as a deployment option: does it fit, how fast, how close to the reference."""

    path: str
    file_type: str
    size_bytes: int
    fits: bool
    fit_note: str  # the planner's reason or refusal
    n_ctx: int | None = None
    ram_mb: float | None = None
    ttft_ms: float | None = None
    gen_tps: float | None = None
    kl_mean: float | None = None
    top1_agreement: float | None = None
    verdict: str = ""


@dataclass(frozen=True)
class Recommendation:
    profile: str
    target_box: str
    speed_measured_on: str
    chosen: Option
    options: tuple[Option, ...]
    reasons: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def gguf_files(inputs: Sequence[Path]) -> list[Path]:
    """Files as given, and the *.gguf files of any folder given."""
    files: list[Path] = []
    for item in inputs:
        files += sorted(item.glob("*.gguf")) if item.is_dir() else [item]
    if not files:
        raise UsageError(f"no GGUF files in {', '.join(map(str, inputs))}: give a folder of .gguf files or files")
    return files


def fit_options(files: Sequence[Path], target: Target) -> list[Option]:
    """Ask the planner about each file alone: fits or not, with its context and RAM."""
    options = []
    for path in files:
        info = gguf_file.validate(path)
        base = Option(str(path), info.file_type or "?", info.size, fits=False, fit_note="")
        try:
            plan = settings_for([info], target=target)
        except DoesNotFit as exc:
            options.append(dataclasses.replace(base, fit_note=str(exc)))
            continue
        options.append(dataclasses.replace(
            base, fits=True, fit_note=plan.reasons[-1] if plan.reasons else "fits",
            n_ctx=plan.settings.n_ctx, ram_mb=round(plan.estimate.ram / 2**20, 1),
        ))
    return options


def find_reference(files: Sequence[Path], given: Path | None) -> Path | None:
    """--reference, else the most precise unquantized (F32 > F16 > BF16) file among the inputs."""
    if given is not None:
        return given
    plain = [(_precision(t), p) for p in files if (t := gguf_file.validate(p).file_type or "") in UNQUANTIZED]
    return min(plain)[1] if plain else None


def _precision(level: str) -> tuple[float, bool]:
    """Most bits first; at equal size F16 before BF16 (it keeps more mantissa bits)."""
    return -LEVELS[level].bits_per_weight, level.startswith("BF")


def speed_from_run(run: BenchRun, path: str, prompt_tokens: int) -> tuple[float, float] | None:
    """(TTFT ms p50, generation tok/s mean) of ``path`` at one request at a time, nearest prompt size."""
    name = Path(path).name
    found = [m for m in run.measurements
             if m.model.file_name == name and m.concurrency == 1 and m.mode == "engine"]
    if not found:
        return None
    m: Measurement = min(found, key=lambda x: abs(x.prompt_tokens - prompt_tokens))
    return m.figure("ttft_ms").p50, m.figure("gen_tps").mean


def measure_speed(paths: Sequence[str], threads: int | None) -> BenchRun:
    """A short bench on this machine: one prompt size, two repeats."""
    from edgekit.bench.runner import BenchConfig, run_bench

    config = BenchConfig(models=tuple(Path(p) for p in paths), prompt_tokens=(SPEED_PROMPT_TOKENS,),
                         gen_tokens=SPEED_GEN_TOKENS, repeat=2, threads=threads)
    return run_bench(config)


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{what} {path}: cannot read it as JSON ({exc.__class__.__name__})") from None


def with_speed(options: list[Option], run: BenchRun) -> list[Option]:
    out = []
    for o in options:
        speed = speed_from_run(run, o.path, SPEED_PROMPT_TOKENS) if o.fits else None
        out.append(dataclasses.replace(o, ttft_ms=speed[0], gen_tps=speed[1]) if speed else o)
    return out


def with_quality(options: list[Option], results: Sequence[QualityResult | dict[str, Any]]) -> list[Option]:
    by_name = {}
    for r in results:
        data = r.to_dict() if isinstance(r, QualityResult) else r
        by_name[Path(data["path"]).name] = data
    out = []
    for o in options:
        q = by_name.get(Path(o.path).name)
        out.append(dataclasses.replace(o, kl_mean=q["kl_mean"], top1_agreement=q["top1_agreement"]) if q else o)
    return out


def choose(options: list[Option], targets: Targets, default_level: str) -> tuple[Option, list[Option], list[str]]:
    """The chosen option, every option with its verdict, and the reasons; DoesNotFit if none qualifies."""
    fitting = [o for o in options if o.fits]
    if not fitting:
        raise DoesNotFit("no file fits this box: " + "; ".join(f"{Path(o.path).name}: {o.fit_note}" for o in options))
    judged = [dataclasses.replace(o, verdict=_verdict(o, targets)) for o in options]
    good = [o for o in judged if o.verdict == "meets targets"]
    if not good:
        raise DoesNotFit(_refusal(fitting, targets))
    best = _pick(good, default_level)
    judged = [dataclasses.replace(o, verdict="chosen") if o.path == best.path else o for o in judged]
    return dataclasses.replace(best, verdict="chosen"), judged, _reasons(best, good, targets, default_level)


def _pick(good: list[Option], default_level: str) -> Option:
    if all(o.kl_mean is not None for o in good):
        return min(good, key=lambda o: o.size_bytes)
    own = [o for o in good if o.file_type == default_level]
    return own[0] if own else max(good, key=lambda o: o.size_bytes)


def _verdict(o: Option, t: Targets) -> str:
    if not o.fits:
        return "does not fit"
    if t.max_ttft_ms is not None and (o.ttft_ms is None or o.ttft_ms > t.max_ttft_ms):
        return "too slow to first token"
    if t.min_tokens_per_s is not None and (o.gen_tps is None or o.gen_tps < t.min_tokens_per_s):
        return "generates too slowly"
    if o.kl_mean is not None and o.kl_mean > t.max_kl:
        return "loses too much quality"
    return "meets targets"


def _refusal(fitting: list[Option], t: Targets) -> str:
    failed = []
    best_ttft = min((o for o in fitting if o.ttft_ms is not None), key=lambda o: o.ttft_ms or 0, default=None)
    best_tps = max((o for o in fitting if o.gen_tps is not None), key=lambda o: o.gen_tps or 0, default=None)
    if t.max_ttft_ms is not None and (best_ttft is None or (best_ttft.ttft_ms or 0) > t.max_ttft_ms):
        reached = f"{best_ttft.ttft_ms:.1f} ms ({best_ttft.file_type})" if best_ttft else "not measured"
        failed.append(f"--max-ttft-ms {t.max_ttft_ms:g}: the best time to first token is {reached}")
    if t.min_tokens_per_s is not None and (best_tps is None or (best_tps.gen_tps or 0) < t.min_tokens_per_s):
        reached = f"{best_tps.gen_tps:.1f} tokens/s ({best_tps.file_type})" if best_tps else "not measured"
        failed.append(f"--min-tokens-per-s {t.min_tokens_per_s:g}: the best generation rate is {reached}")
    kls = [o for o in fitting if o.kl_mean is not None]
    if kls and min(o.kl_mean or 0 for o in kls) > t.max_kl:
        closest = min(kls, key=lambda o: o.kl_mean or 0)
        failed.append(f"--max-kl {t.max_kl:g}: the lowest KL divergence is {closest.kl_mean:.5f} ({closest.file_type})")
    if not failed:
        failed.append("no single level meets all the targets together")
    return ("no level that fits meets the targets: " + "; ".join(failed)
            + " (measured on this machine): relax the target or use a smaller level or a faster box")


def _reasons(best: Option, good: list[Option], t: Targets, default_level: str) -> list[str]:
    reasons = [f"{best.file_type} fits the box with n_ctx {best.n_ctx} in about {best.ram_mb:.0f} MB of RAM"]
    wanted = []
    if t.max_ttft_ms is not None:
        wanted.append(f"time to first token <= {t.max_ttft_ms:g} ms")
    if t.min_tokens_per_s is not None:
        wanted.append(f">= {t.min_tokens_per_s:g} tokens/s")
    if best.kl_mean is not None:
        wanted.append(f"KL divergence <= {t.max_kl:g}")
        reasons.append(f"{len(good)} level(s) meet {', '.join(wanted)}; {best.file_type} is the smallest of them")
        reasons.append(f"its KL divergence is {best.kl_mean:.5f} nats/token, top-1 agreement "
                       f"{100 * (best.top1_agreement or 0):.1f}%")
    else:
        why = "the profile's own level" if best.file_type == default_level else "the largest that qualifies"
        reasons.append(f"no reference (f16/f32) file to measure quality against: {best.file_type} is {why}")
    if best.ttft_ms is not None:
        reasons.append(f"time to first token {best.ttft_ms:.1f} ms for {SPEED_PROMPT_TOKENS} prompt tokens, "
                       f"{best.gen_tps:.1f} tokens/s: measured on this machine, not on the target box")
    return reasons


def recommend(inputs: Sequence[Path], profile: Profile, targets: Targets, *, reference: Path | None = None,
              bench_json: Path | None = None, quality_json: Path | None = None, root: Path | None = None,
              threads: int | None = None, this_box: bool = False) -> Recommendation:
    """Plan, measure (or read) speed and quality, and choose; DoesNotFit when nothing qualifies."""
    files = gguf_files(inputs)
    target = target_for(profile, this_box=this_box, root=root)
    box = target.box
    options = fit_options(files, target)
    fitting = [o.path for o in options if o.fits]
    run = BenchRun.from_dict(read_json(bench_json, "--bench-json")) if bench_json else (
        measure_speed(fitting, threads) if fitting else None)
    if run is not None:
        options = with_speed(options, run)
    ref = find_reference(files, reference)
    if quality_json is not None:
        options = with_quality(options, read_json(quality_json, "--quality-json"))
    elif ref is not None and fitting:
        others = [Path(p) for p in fitting if Path(p).resolve() != ref.resolve()]
        quality = compare_quality(ref, others, ctx=128, chunks=4, threads=threads) if others else []
        options = with_quality(options, quality)
        options = [dataclasses.replace(o, kl_mean=0.0, top1_agreement=1.0) if Path(o.path).resolve() == ref.resolve()
                   else o for o in options]
    chosen, judged, reasons = choose(options, targets, profile.quant)
    measured_on = (run.host.get("cpu") or "?") + f", {run.host.get('cores')} cores" if run else "n/a"
    return Recommendation(profile.name, box, f"this machine: {measured_on}", chosen, tuple(judged),
                          tuple(reasons), {"reference": str(ref) if ref else None})


def table_rows(rec: Recommendation) -> list[dict[str, str]]:
    def num(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    return [
        {
            "file": Path(o.path).name, "type": o.file_type, "size MB": f"{o.size_bytes / 1e6:.0f}",
            "fits": "yes" if o.fits else "no", "n_ctx": str(o.n_ctx or "-"), "RAM MB": num(o.ram_mb, ".0f"),
            "TTFT ms": num(o.ttft_ms, ".1f"), "tg t/s": num(o.gen_tps, ".1f"),
            "KL": num(o.kl_mean, ".5f"), "top-1 %": num(None if o.top1_agreement is None else 100 * o.top1_agreement, ".1f"),
            "verdict": o.verdict,
        }
        for o in rec.options
    ]

