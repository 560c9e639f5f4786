"""llama.cpp's settings in their two forms, and the default thread counts.

``Run`` is what a profile says (``[run]`` in profiles/*.toml): "auto" allowed, not yet
checked against a box or a model. ``Settings`` is what the engine is started with, once
edgekit.plan has resolved a ``Run`` for one model on one box. The settings both hold have
the same names, so resolving is a copy plus decisions, and `edgekit tune` writes measured
settings back into a profile the same way, with no table translating names.

Both live here, apart from the planner, so that the engine, the memory estimate and the
profile loader can use them without importing the planner (and the planner them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from edgekit.hardware import Hardware

Auto = Literal["auto"]

# llama.cpp's accepted KV-cache types (common/arg.cpp kv_cache_types), lower-case as it names them.
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


@dataclass(frozen=True)
class LoraAdapter:
    """A GGUF LoRA adapter loaded once beside the model (edgekit convert-lora); requests pick it by name."""

    name: str
    path: str
    scale: float = 1.0  # the scale a request gets unless it gives its own


@dataclass(frozen=True)
class Run:
    """llama.cpp settings before they are resolved against the box and the model (a profile's [run])."""

    n_threads: int | Auto = field(default="auto", metadata={"range": (1, 1024)})
    n_threads_batch: int | Auto = field(default="auto", metadata={"range": (1, 1024)})
    n_gpu_layers: int | Auto = field(default=0, metadata={"range": (-1, 100_000)})
    n_ctx: int = field(default=2048, metadata={"range": (64, 1 << 20)})
    min_ctx: int = field(default=512, metadata={"range": (64, 1 << 20)})  # the planner's floor, not a llama.cpp setting
    n_batch: int = field(default=512, metadata={"range": (1, 1 << 16)})
    n_ubatch: int = field(default=512, metadata={"range": (1, 1 << 16)})
    flash_attn: bool = True
    type_k: str = field(default="f16", metadata={"choices": KV_CACHE_TYPES})
    type_v: str = field(default="f16", metadata={"choices": KV_CACHE_TYPES})
    use_mmap: bool = True
    use_mlock: bool = False


@dataclass(frozen=True)
class Settings:
    """Resolved llama.cpp settings for one model on one box: what the engine is started with."""

    n_ctx: int = 2048
    n_threads: int | None = None  # generation threads; None = default_threads() (the plan's rule)
    n_threads_batch: int | None = None  # prompt-processing threads
    n_gpu_layers: int = 0  # -1 = all
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: bool = True  # llama.cpp's own default (auto) on CPU: faster prompt and generation here
    type_k: str = "f16"  # KV-cache type, as llama.cpp names it: f16, q8_0, q4_0
    type_v: str = "f16"
    use_mmap: bool = True
    use_mlock: bool = False
    seed: int = 0
    lora: tuple[LoraAdapter, ...] = ()  # run-time adapters (llama_adapter_lora_init), none applied by default
    prompt_cache_mb: int = 0  # RAM the engine's prompt cache may hold saved KV states in (part of the plan)

    def summary(self) -> str:
        """The resolved settings in one line: what `plan`, `run`, `serve` and `bench` print."""
        layers = "all" if self.n_gpu_layers < 0 else str(self.n_gpu_layers)
        return (f"n_ctx {self.n_ctx}, threads {self.n_threads}/{self.n_threads_batch}, gpu layers {layers}, "
                f"batch {self.n_batch}/{self.n_ubatch}, flash_attn {self.flash_attn}, "
                f"kv {self.type_k}/{self.type_v}, mmap {self.use_mmap}")


# The settings a profile's [run] and the engine's Settings share, by the one name both use.
SHARED = tuple(f.name for f in fields(Run) if f.name in {g.name for g in fields(Settings)})


def settings_from_run(run: Run, **resolved: Any) -> Settings:
    """A Run's settings as Settings; ``resolved`` gives the values of its "auto" fields (and overrides)."""
    return Settings(**{**{name: getattr(run, name) for name in SHARED}, **resolved})


def run_from_settings(run: Run, settings: Settings, names: tuple[str, ...] = SHARED) -> Run:
    """``run`` with ``names`` taken from resolved ``settings`` (what `edgekit tune` writes back)."""
    return replace(run, **{name: getattr(settings, name) for name in names})


def auto_threads(hw: Hardware) -> tuple[int, int]:
    """Generation and prompt threads for "auto": the big cores and all physical cores, less the
    cores other work keeps busy. llama.cpp's threads wait for each other at every step, so one
    thread sharing its core with a busy process slows them all (25 -> 9 tok/s beside `yes`).

    The one rule for a default thread count: the planner, the engine (given no count), the
    quantizer and the perplexity runs all use it."""
    busy = round(hw.busy_cores)
    free = max(1, hw.physical_cores - busy)
    return max(1, min(hw.big_cores, free)), free


def default_threads(root: Path = Path("/")) -> tuple[int, int]:
    """auto_threads for this machine, read without watching its load (callers given no count:
    a caller that wants the load counted plans with edgekit.plan.settings_for)."""
    from edgekit.hardware import detect

    return auto_threads(detect(root, gpus=[], watch_load=False))
