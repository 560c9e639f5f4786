"""Hardware profiles: profiles/*.toml, loaded strictly and chosen from detected facts.

A profile is data, not code: the settings a kind of box runs llama.cpp with, the memory
it keeps free, how it builds llama-cpp-python, and the facts that select it.
docs/profiles.md describes every field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from edgekit.errors import ConfigError
from edgekit.quant_levels import LEVELS
from edgekit.settings import Run
from edgekit.strict import Source, build, read_toml

if TYPE_CHECKING:
    from edgekit.hardware import Hardware

GpuRule = Literal["any", "none", "cuda", "integrated"]

# The shipped profiles: package data, so a wheel install finds them as a checkout does.
PACKAGE_PROFILES = Path(__file__).resolve().parent / "data" / "profiles"
SECTIONS = ("match", "run", "memory", "build", "box")
# Keys a profile had once: a file naming them gets the new name, not just "unknown key".
RENAMED = {f"run.{old}": f"renamed run.n_{old} (the name the engine's settings use): rename the key"
           for old in ("threads", "threads_batch")}


def _quant_level(value: str) -> str | None:
    return None if value in LEVELS else "is not a llama.cpp quant level (e.g. Q4_K_M)"


@dataclass(frozen=True)
class Match:
    """The detected facts that select a profile; unset rules match anything."""

    boards: tuple[str, ...] = ()  # Hardware.board ids, e.g. "raspberry-pi-5"
    arch: tuple[str, ...] = ()  # "x86_64", "aarch64"
    gpu: GpuRule = "any"  # "none": no discrete GPU; "cuda": an NVIDIA card; "integrated": Jetson
    min_memory_mb: int | None = field(default=None, metadata={"range": (0, 1 << 24)})
    max_memory_mb: int | None = field(default=None, metadata={"range": (0, 1 << 24)})
    min_vram_mb: int | None = field(default=None, metadata={"range": (0, 1 << 24)})
    max_vram_mb: int | None = field(default=None, metadata={"range": (0, 1 << 24)})
    priority: int = field(default=0, metadata={"range": (-100, 100)})


@dataclass(frozen=True)
class Memory:
    """How much memory to leave free, and whether CPU and GPU share it."""

    headroom_mb: int = field(default=512, metadata={"range": (0, 1 << 20)})
    vram_headroom_mb: int = field(default=512, metadata={"range": (0, 1 << 20)})
    unified: bool = False  # Jetson: GPU and CPU allocate from one pool


@dataclass(frozen=True)
class Build:
    """How llama-cpp-python is built for this box."""

    cmake_args: str = ""


@dataclass(frozen=True)
class Box:
    """The box itself, for planning from another machine: memory comes from [match]'s minimums."""

    cores: int = field(default=4, metadata={"range": (1, 1024)})  # physical cores, all taken as big


@dataclass(frozen=True)
class Profile:
    """One kind of box: its settings, memory rules, build flags and matching rules."""

    name: str
    description: str = ""
    quant: str = field(default="Q4_K_M", metadata={"check": _quant_level})  # default quant level
    match: Match = Match()
    run: Run = Run()
    memory: Memory = Memory()
    build: Build = Build()
    box: Box = Box()
    source: Path | None = field(default=None, metadata={"internal": True})


def user_profiles() -> Path:
    """The user's own profiles (`edgekit tune` writes here): $XDG_CONFIG_HOME/edgekit/profiles."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "edgekit" / "profiles"


def search_path() -> list[Path]:
    """Folders searched for NAME.toml, first hit wins: $EDGEKIT_PROFILES, the user's, /etc, the package's."""
    env = [Path(p) for p in os.environ.get("EDGEKIT_PROFILES", "").split(os.pathsep) if p]
    return [*env, user_profiles(), Path("/etc/edgekit/profiles"), PACKAGE_PROFILES]


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """Load a profile by name (searched) or by path to a .toml file."""
    text = os.fspath(name_or_path)
    if text.endswith(".toml") or os.sep in text:
        return _load_file(Path(text))
    for folder in search_path():
        candidate = folder / f"{text}.toml"
        if candidate.is_file():
            return _load_file(candidate)
    known = ", ".join(p.name for p in list_profiles()) or "none"
    raise ConfigError(f"no profile named {text!r} (known: {known}); give a name or a path to a .toml file")


def list_profiles() -> list[Profile]:
    """Every profile on the search path, earlier folders shadowing later ones, sorted by name."""
    return [_load_file(path) for _, path in sorted(_profile_files().items())]


def profile_names() -> list[str]:
    """The names --profile accepts, without loading the files (for help text)."""
    return sorted(_profile_files())


def _profile_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in search_path():
        if folder.is_dir():
            for path in sorted(folder.glob("*.toml")):
                found.setdefault(path.stem, path)
    return found


def choose_profile(hardware: Hardware, profiles: list[Profile] | None = None) -> tuple[Profile, str]:
    """The best-matching profile for ``hardware`` and a sentence saying why."""
    candidates = [p for p in (profiles if profiles is not None else list_profiles()) if matches(p.match, hardware)]
    if not candidates:
        raise ConfigError("no profile matches this box and there is no catch-all; add cpu-generic.toml")
    best = max(candidates, key=lambda p: (p.match.priority, _specificity(p.match), p.name))
    if _specificity(best.match) == 0:
        return best, f"no specific profile matches {hardware.summary()} -> {best.name}"
    return best, f"{hardware.summary()} -> {best.name}"


def matches(rule: Match, hw: Hardware) -> bool:
    """Whether every rule that is set holds for ``hw``."""
    vram = hw.largest_vram_mb
    checks = (
        not rule.boards or hw.board in rule.boards,
        not rule.arch or hw.arch in rule.arch,
        _gpu_matches(rule.gpu, hw),
        rule.min_memory_mb is None or hw.memory_total_mb >= rule.min_memory_mb,
        rule.max_memory_mb is None or hw.memory_total_mb <= rule.max_memory_mb,
        rule.min_vram_mb is None or (vram is not None and vram >= rule.min_vram_mb),
        rule.max_vram_mb is None or (vram is not None and vram <= rule.max_vram_mb),
    )
    return all(checks)


def _gpu_matches(rule: GpuRule, hw: Hardware) -> bool:
    discrete = any(not g.integrated for g in hw.gpus)
    return {
        "any": True,
        "none": not discrete,
        "cuda": discrete,
        "integrated": hw.unified_memory,
    }[rule]


def _specificity(rule: Match) -> int:
    """How many rules a profile sets: a Pi 5 rule beats a bare memory rule."""
    default = Match()
    return sum(getattr(rule, f.name) != getattr(default, f.name) for f in fields(Match) if f.name != "priority")


def profile_to_toml(profile: Profile) -> str:
    """TOML text that load_profile reads back to an equal profile (less ``source``)."""
    lines = [f"{f.name} = {_toml_value(getattr(profile, f.name))}" for f in _plain_fields(Profile)]
    for section in SECTIONS:
        table = getattr(profile, section)
        lines += ["", f"[{section}]"]
        lines += [f"{f.name} = {_toml_value(getattr(table, f.name))}" for f in _plain_fields(type(table))
                  if getattr(table, f.name) is not None]
    return "\n".join(lines) + "\n"


def _plain_fields(cls: type) -> list[Any]:
    return [f for f in fields(cls) if not f.metadata.get("internal") and f.name not in SECTIONS]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- strict loading -------------------------------------------------------------------------


def _load_file(path: Path) -> Profile:
    source = Source(f"profile {path}: ", retired=RENAMED)
    profile = build(Profile, read_toml(path, "profile"), source)
    _check_profile(profile, path)
    return replace(profile, source=path)


def _check_profile(p: Profile, path: Path) -> None:
    """Rules across fields, which llama.cpp would otherwise reject at load time."""
    if p.run.n_ubatch > p.run.n_batch:
        raise ConfigError(f"profile {path}: run.n_ubatch ({p.run.n_ubatch}) must not exceed run.n_batch ({p.run.n_batch})")
    if p.run.min_ctx > p.run.n_ctx:
        raise ConfigError(f"profile {path}: run.min_ctx ({p.run.min_ctx}) must not exceed run.n_ctx ({p.run.n_ctx})")
    if p.run.type_v not in ("f32", "f16", "bf16") and not p.run.flash_attn:
        raise ConfigError(
            f"profile {path}: run.type_v = {p.run.type_v!r} needs run.flash_attn = true "
            "(llama.cpp quantizes the V cache only with flash attention)"
        )
    if p.name != path.stem and not path.name.startswith("."):
        raise ConfigError(f"profile {path}: name = {p.name!r} must match the file name {path.stem!r}")
