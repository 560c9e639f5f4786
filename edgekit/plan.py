"""Memory estimate for a GGUF on a box, and the llama.cpp settings that fit it.

(Being written: the estimate and plan_for() come with the planning work. The
Settings dataclass below is the contract the engine already uses.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Resolved llama.cpp settings for one model on one box: what the engine is started with."""

    n_ctx: int = 2048
    n_threads: int | None = None  # generation threads; None = llama.cpp's default
    n_threads_batch: int | None = None  # prompt-processing threads
    n_gpu_layers: int = 0  # -1 = all
    n_batch: int = 512
    n_ubatch: int = 512
    flash_attn: bool = False
    type_k: str = "f16"  # KV-cache type, as llama.cpp names it: f16, q8_0, q4_0
    type_v: str = "f16"
    use_mmap: bool = True
    use_mlock: bool = False
    seed: int = 0
