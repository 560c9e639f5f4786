"""Memory estimate for a GGUF on a box, and the llama.cpp settings that fit it.

``plan_for(models, profile, hardware)`` starts from the profile's settings, resolves
"auto" against the detected box, and walks down a ladder until the model fits: the
profile's quant level, then the other files best quality first, then halved contexts
down to the profile's floor. Every decision leaves a sentence in ``Plan.reasons``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgekit.errors import DoesNotFit, UsageError
from edgekit.gguf_file import GGUFInfo, validate
from edgekit.hardware import GPU, Hardware, detect
from edgekit.memory import MiB, MemoryEstimate, estimate_memory, shape_of, smaller_level_that_fits
from edgekit.profiles import Profile, choose_profile, load_profile, matches
from edgekit.settings import LoraAdapter, Settings, auto_threads, settings_from_run

MIN_CTX = 64
HARDWARE_ROOT_ENV = "EDGEKIT_HARDWARE_ROOT"  # a captured board's /proc and /sys: plan for it, not this box

__all__ = ["lora_adapters", "Plan", "Budget", "Target", "MemoryEstimate", "estimate_memory", "plan_for",
           "budget_for", "settings_for", "target_for", "nominal_hardware"]


def lora_adapters(specs: tuple[str, ...] | list[str] | None) -> tuple[LoraAdapter, ...]:
    """``NAME=adapter.gguf[:SCALE]`` specs (`--lora`, ``[model] lora``) as adapters with unique names;
    UsageError naming a bad spec or a repeated name."""
    from edgekit.lora_spec import parse_lora_arg

    adapters = tuple(LoraAdapter(name, str(path), scale) for name, path, scale in map(parse_lora_arg, specs or ()))
    names = [a.name for a in adapters]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"LoRA adapter name {repeated[0]!r} is given twice: give each adapter its own NAME=")
    if "latest" in names:  # over HTTP BASE:latest is the bare model (Ollama's default tag)
        raise UsageError("LoRA adapter name 'latest' would be taken for the bare model over HTTP (BASE:latest): "
                         "give it another NAME=")
    return adapters


@dataclass(frozen=True)
class Budget:
    """Memory the model may take on this box, after the profile's headroom (bytes)."""

    ram: int
    vram: int  # free VRAM of the GPU llama.cpp uses; 0 without one; the pool itself when unified
    unified: bool
    headroom: int
    vram_headroom: int


@dataclass(frozen=True)
class Plan:
    """What to run, with which settings, what it will take, and why."""

    model: Path
    profile: str
    settings: Settings
    estimate: MemoryEstimate
    budget: Budget
    reasons: tuple[str, ...]
    box: str = ""  # the box the numbers are for, in words (settings_for fills it in)
    profile_reason: str = ""  # why this profile: named with --profile, or matched to the box

    def describe(self) -> list[str]:
        """Lines for `edgekit plan`: the box, the choice, the settings, the memory and the reasons."""
        e = self.estimate
        return [
            *([f"profile:  {self.profile_reason}"] if self.profile_reason else []),
            *([f"box:      {self.box}"] if self.box else []),
            f"model:    {self.model}",
            f"settings: {self.settings.summary()}",
            f"memory:   weights {_mb(e.weights_ram + e.repacked)} MB + kv {_mb(e.kv_ram)} + compute {_mb(e.compute_ram)}"
            f" + runtime {_mb(e.runtime)}" + (f" + prompt cache {_mb(e.prompt_cache)}" if e.prompt_cache else "")
            + (f" + adapters {_mb(e.adapters)}" if e.adapters else "")
            + f" = {_mb(e.ram)} MB RAM"
            + (f" ({_mb(e.reclaimable)} MB of it reclaimable page cache)" if e.reclaimable else ""),
            *([f"vram:     weights {_mb(e.weights_vram)} MB + kv {_mb(e.kv_vram)} + compute {_mb(e.compute_vram)}"
               f" = {_mb(e.vram)} MB"] if e.vram else []),
            *(f"why:      {r}" for r in self.reasons),
        ]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `edgekit plan --json`."""
        return {
            "model": str(self.model),
            "profile": self.profile,
            "box": self.box,
            "profile_reason": self.profile_reason,
            "settings": asdict(self.settings),
            "estimate": self.estimate.to_dict(),
            "budget": {k: (round(v / MiB, 1) if isinstance(v, int) and not isinstance(v, bool) else v)
                       for k, v in asdict(self.budget).items()},
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class Target:
    """The profile a command runs with and the box it plans for, with both in words."""

    profile: Profile
    profile_reason: str
    hardware: Hardware
    box: str


def settings_for(
    models: str | os.PathLike[str] | GGUFInfo | list[Any],
    profile: str | Profile | None = None,
    *,
    ctx: int | None = None,
    this_box: bool = False,
    root: Path | None = None,
    hardware: Hardware | None = None,
    target: Target | None = None,
    prompt_cache_mb: int = 0,
    lora: tuple[LoraAdapter, ...] = (),
) -> Plan:
    """The one way every command (plan, run, chat, serve, install-service, bench, tune, recommend)
    resolves its settings: the plan for ``profile``'s box (this machine without a profile, or with
    ``this_box``). ``target`` (from target_for) saves detecting the box again when planning several files."""
    target = target or target_for(profile, this_box=this_box, root=root, hardware=hardware)
    plan = plan_for(models, target.profile, target.hardware, ctx=ctx, prompt_cache_mb=prompt_cache_mb, lora=lora)
    return replace(plan, box=target.box, profile_reason=target.profile_reason)


def target_for(profile: str | Profile | None = None, *, this_box: bool = False, root: Path | None = None,
               hardware: Hardware | None = None) -> Target:
    """Which box to plan for: ``hardware`` when given (already detected), a captured root, this machine
    when it is one of ``profile``'s boxes (or when asked), else the profile's nominal box, so a Pi's plan
    is made with a Pi's memory. $EDGEKIT_HARDWARE_ROOT names a captured root for every command at once."""
    root = root or (Path(os.environ[HARDWARE_ROOT_ENV]) if os.environ.get(HARDWARE_ROOT_ENV) else None)
    here = hardware or detect(root or Path("/"))
    where = "as detected" if hardware else f"captured at {root}" if root else "this machine"
    if profile is None:
        chosen, reason = choose_profile(here)
        return Target(chosen, reason, here, f"{here.summary()} ({where})")
    named = profile if isinstance(profile, Profile) else load_profile(profile)
    reason = f"{named.name} (chosen with --profile)"
    if this_box or root or hardware or matches(named.match, here):
        return Target(named, reason, here, f"{here.summary()} ({where})")
    nominal = nominal_hardware(named)
    return Target(named, reason, nominal, (
        f"a {named.name} box ({nominal.memory_available_mb} MB usable, {nominal.physical_cores} cores"
        + (f", {nominal.gpus[0].total_mb} MB GPU" if nominal.gpus else "")
        + "): this machine is not one; --this-box plans for this machine"))


def nominal_hardware(profile: Profile) -> Hardware:
    """The smallest box the profile matches: its minimum memory (and VRAM), its [box] cores."""
    rule, cores = profile.match, profile.box.cores
    memory = rule.min_memory_mb or 4096
    gpus: tuple[GPU, ...] = ()
    if rule.gpu == "integrated":
        gpus = (GPU("integrated (nominal)", memory, memory, integrated=True),)
    elif rule.gpu == "cuda":
        vram = rule.min_vram_mb or 8192
        gpus = (GPU("CUDA GPU (nominal)", vram, vram),)
    return Hardware(
        arch=rule.arch[0] if rule.arch else "aarch64", cpu_model="nominal", logical_cpus=cores, physical_cores=cores,
        big_cores=cores, clusters=((1024, cores),), memory_total_mb=memory, memory_available_mb=memory,
        board=rule.boards[0] if rule.boards else None, gpus=gpus, unified_memory=rule.gpu == "integrated",
    )


@dataclass(frozen=True)
class _Attempt:
    info: GGUFInfo
    settings: Settings
    estimate: MemoryEstimate
    shortfall: int  # bytes over the budget; <= 0 means it fits
    note: str


def plan_for(
    models: str | os.PathLike[str] | GGUFInfo | list[Any],
    profile: Profile,
    hardware: Hardware,
    ctx: int | None = None,
    prompt_cache_mb: int = 0,
    lora: tuple[LoraAdapter, ...] = (),
) -> Plan:
    """Choose the file and settings that fit ``hardware``; DoesNotFit says by how much none did.

    ``prompt_cache_mb`` is the RAM the engine's prompt cache may hold: counted like the KV cache.
    ``lora`` adapters are loaded with the model, so their memory counts against the budget too.
    """
    if ctx is not None and ctx < MIN_CTX:
        raise UsageError(f"--ctx {ctx} is too small: give at least {MIN_CTX} tokens")
    infos = [m if isinstance(m, GGUFInfo) else validate(m) for m in (models if isinstance(models, list) else [models])]
    budget = budget_for(profile, hardware)
    base, reasons = _base_settings(profile, hardware, infos, ctx)
    base = replace(base, prompt_cache_mb=prompt_cache_mb)
    if lora:
        base = replace(base, lora=tuple(lora))
        reasons = [*reasons, f"{len(lora)} LoRA adapter(s) loaded beside the model: {', '.join(a.name for a in lora)}"]
    candidates = _by_preference(infos, profile.quant)
    attempts: list[_Attempt] = []
    for n_ctx in _context_ladder(base.n_ctx, min(profile.run.min_ctx, base.n_ctx)):
        for info in candidates:
            attempt = _fit(info, replace(base, n_ctx=n_ctx), profile, hardware, budget)
            attempts.append(attempt)
            if attempt.shortfall <= 0:
                return _accept(attempt, profile, budget, base, reasons, attempts, candidates)
    raise DoesNotFit(_refusal(attempts, budget))


def budget_for(profile: Profile, hw: Hardware) -> Budget:
    """RAM (and VRAM) left for the model once the profile's headroom is kept free."""
    headroom = profile.memory.headroom_mb * MiB
    vram_headroom = profile.memory.vram_headroom_mb * MiB
    ram = max(0, hw.usable_memory_mb * MiB - headroom)
    unified = profile.memory.unified or hw.unified_memory
    if unified:
        return Budget(ram, ram, True, headroom, 0)
    gpu = _main_gpu(hw)
    vram = max(0, gpu.free_mb * MiB - vram_headroom) if gpu else 0
    return Budget(ram, vram, False, headroom, vram_headroom if gpu else 0)


def _main_gpu(hw: Hardware) -> Any:
    discrete = [g for g in hw.gpus if not g.integrated]
    return discrete[0] if discrete else None  # llama.cpp's main_gpu 0


def _base_settings(profile: Profile, hw: Hardware, infos: list[GGUFInfo], ctx: int | None) -> tuple[Settings, list[str]]:
    run, reasons = profile.run, []
    threads, threads_batch = auto_threads(hw)
    if run.n_threads == "auto":
        reasons.append(f"{threads} generation threads: the big cores ({_cores(hw)}){_room(hw, threads < hw.big_cores)}")
    else:
        threads = run.n_threads
    if run.n_threads_batch == "auto":
        reasons.append(f"{threads_batch} prompt threads: all physical cores{_room(hw, threads_batch < hw.physical_cores)}")
    else:
        threads_batch = run.n_threads_batch
    n_ctx = ctx or run.n_ctx
    reasons.append(f"n_ctx {n_ctx} from {'--ctx' if ctx else 'profile ' + profile.name}")
    trained = min((shape_of(i).n_ctx_train for i in infos if shape_of(i).n_ctx_train), default=0)
    if trained and n_ctx > trained:
        reasons.append(f"n_ctx capped from {n_ctx} to {trained}, the context the model was trained for")
        n_ctx = trained
    settings = settings_from_run(run, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads_batch, n_gpu_layers=0,
                                 n_batch=min(run.n_batch, n_ctx), n_ubatch=min(run.n_ubatch, n_ctx))
    return settings, reasons


def _room(hw: Hardware, reduced: bool) -> str:
    return f", less {round(hw.busy_cores)} busy with other work (a profile's run.n_threads fixes the count)" if reduced else ""


def _cores(hw: Hardware) -> str:
    if hw.big_cores < hw.physical_cores:
        return f"{hw.cpu_model}: {hw.big_cores} big of {hw.physical_cores}"
    return hw.cpu_model


def _by_preference(infos: list[GGUFInfo], default_level: str) -> list[GGUFInfo]:
    """The profile's quant level first, then best quality (most bits per weight) first."""
    return sorted(infos, key=lambda i: (i.file_type != default_level, -i.bits_per_weight))


def _context_ladder(start: int, floor: int) -> list[int]:
    sizes = [start]
    while sizes[-1] // 2 >= floor:
        sizes.append(sizes[-1] // 2)
    return sizes


def _fit(info: GGUFInfo, settings: Settings, profile: Profile, hw: Hardware, budget: Budget) -> _Attempt:
    """Resolve GPU layers for one file at one context and measure it against the budget."""
    wanted = profile.run.n_gpu_layers
    has_gpu = bool(hw.gpus) if budget.unified else _main_gpu(hw) is not None
    arch = hw.arch
    if wanted == 0 or not has_gpu:
        note = "CPU only" if wanted == 0 else "CPU only: the profile offloads layers but no GPU was found"
        return _check(info, replace(settings, n_gpu_layers=0), budget, arch, note)
    if budget.unified:
        layers = -1 if wanted == "auto" else wanted
        note = "unified memory: GPU and CPU share one pool, counted once"
        return _check(info, replace(settings, n_gpu_layers=layers), budget, arch, note)
    if wanted != "auto":
        return _check(info, replace(settings, n_gpu_layers=wanted), budget, arch, f"{wanted} GPU layers from the profile")
    return _most_layers(info, settings, budget, arch)


def _most_layers(info: GGUFInfo, settings: Settings, budget: Budget, arch: str) -> _Attempt:
    """The most layers (counted from the last one) whose weights, KV and buffers fit in free VRAM."""
    n_layer = shape_of(info).n_layer
    for layers in range(n_layer + 1, -1, -1):
        estimate = estimate_memory(info, settings, layers, arch)
        if estimate.vram <= budget.vram:
            count = -1 if layers > n_layer else layers
            note = "all layers and the output on the GPU" if count == -1 else (
                f"{layers} of {n_layer} layers on the GPU (the last ones); the rest and the output on the CPU")
            return _check(info, replace(settings, n_gpu_layers=count), budget, arch, note)
    return _check(info, replace(settings, n_gpu_layers=0), budget, arch, "no layer fits in free VRAM: CPU only")


def _check(info: GGUFInfo, settings: Settings, budget: Budget, arch: str, note: str) -> _Attempt:
    estimate = estimate_memory(info, settings, arch=arch)
    if budget.unified:
        shortfall = estimate.total - estimate.reclaimable - budget.ram
    else:
        shortfall = max(estimate.ram_required - budget.ram, estimate.vram - budget.vram)
    return _Attempt(info, settings, estimate, shortfall, note)


def _accept(
    chosen: _Attempt, profile: Profile, budget: Budget, base: Settings,
    reasons: list[str], attempts: list[_Attempt], candidates: list[GGUFInfo],
) -> Plan:
    reasons = list(reasons)
    level = chosen.info.file_type or "unknown level"
    why = "the profile's default level" if chosen.info.file_type == profile.quant else "the best quality that fits"
    if len(candidates) > 1:
        reasons.append(f"chose {chosen.info.path.name} ({level}): {why}")
    for failed in attempts[:-1]:
        reasons.append(
            f"{failed.info.path.name} at n_ctx {failed.settings.n_ctx} does not fit: "
            f"{_gb(failed.shortfall)} GB short"
        )
    if chosen.settings.n_ctx < base.n_ctx:
        reasons.append(f"n_ctx reduced from {base.n_ctx} to {chosen.settings.n_ctx} to fit")
    reasons.append(chosen.note)
    reasons.append(_usage(chosen.estimate, budget))
    return Plan(chosen.info.path, profile.name, chosen.settings, chosen.estimate, budget, tuple(reasons))


def _usage(e: MemoryEstimate, budget: Budget) -> str:
    if budget.unified:
        return f"needs {_gb(e.total - e.reclaimable)} GB of the {_gb(budget.ram)} GB pool left after {_gb(budget.headroom)} GB headroom"
    text = f"needs {_gb(e.ram_required)} GB RAM of {_gb(budget.ram)} GB left after {_gb(budget.headroom)} GB headroom"
    if e.vram:
        text += f", {_gb(e.vram)} GB VRAM of {_gb(budget.vram)} GB free after {_gb(budget.vram_headroom)} GB headroom"
    return text


def _refusal(attempts: list[_Attempt], budget: Budget) -> str:
    closest = min(attempts, key=lambda a: a.shortfall)
    need, left, headroom, where = _binding_limit(closest.estimate, budget)
    return (
        f"{closest.info.path.name} needs {_gb(need)} GB (n_ctx {closest.settings.n_ctx}), {where} leaves "
        f"{_gb(left)} GB after {_gb(headroom)} GB headroom: {_gb(closest.shortfall)} GB short; {_way_out(closest)}"
    )


def _way_out(attempt: _Attempt) -> str:
    """A quant level whose smaller weights make up the shortfall, and/or a smaller context."""
    e, ctx = attempt.estimate, attempt.settings.n_ctx
    ways = []
    level = smaller_level_that_fits(attempt.info, attempt.shortfall)
    if level:
        ways.append(f"use {level}")
    if (e.kv_ram + e.kv_vram + e.compute_ram + e.compute_vram) * 3 // 4 >= attempt.shortfall:
        ways.append(f"a context below {ctx} (--ctx)")
    return " or ".join(ways) if ways else "use a smaller model or a box with more memory"


def _binding_limit(e: MemoryEstimate, budget: Budget) -> tuple[int, int, int, str]:
    """Which memory ran out: (needed, left, headroom, where)."""
    if budget.unified:
        return e.total - e.reclaimable, budget.ram, budget.headroom, "the box"
    if e.vram - budget.vram > e.ram_required - budget.ram:
        return e.vram, budget.vram, budget.vram_headroom, "the GPU"
    return e.ram_required, budget.ram, budget.headroom, "the box"


def _mb(n: int) -> str:
    return f"{n / MiB:.0f}"


def _gb(n: int) -> str:
    return f"{n / (1 << 30):.1f}"
