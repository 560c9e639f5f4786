"""How much memory a GGUF takes with given llama.cpp settings: weights, KV cache, compute, runtime.

Read from the GGUF's own tensor table (edgekit.gguf_file), so a Q4_K_M file and an F16 file
of one model get their true sizes. Calibrated against llama.cpp 0.3.36's own log lines
("CPU compute buffer size", "KV buffer size") and against VmRSS of loaded models; see
docs/profiles.md ("How the planner counts memory").
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, Keys

from edgekit.errors import UnsupportedModel
from edgekit.gguf_file import GGUFInfo
from edgekit.quant_levels import LEVELS

if TYPE_CHECKING:
    from edgekit.settings import Settings

_STATUS_UNITS = {"kB": 1 << 10, "mB": 1 << 20}


def process_memory_bytes(pid: int, field: str = "VmRSS", proc: Path = Path("/proc")) -> int | None:
    """A memory line of /proc/<pid>/status (VmRSS now, VmHWM the peak), in bytes; None if unreadable."""
    try:
        status = (proc / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            value, unit = line.split()[1:3]
            return int(value) * _STATUS_UNITS.get(unit, 1)
    return None

MiB = 1 << 20
F32 = 4
KV_PAD = 256  # llama.cpp rounds the KV cache's cell count up to a multiple of 256
ACTIVATION_ROWS = 6  # live n_embd-wide f32 rows per token in a layer (residual, norm, Q, attn out, ...)
FFN_ROWS = 3  # live n_ff-wide f32 rows per token in the FFN (gate, up, gate*up)
# The process before weights: Python, llama-cpp-python and libllama loaded, the vocabulary's
# tables, thread pools (measured: 40 MiB after `import llama_cpp`, ~10 MiB more at load).
RUNTIME_BASE = 48 * MiB
VOCAB_BYTES_PER_TOKEN = 200  # token strings, piece cache and maps, per vocabulary entry
CUDA_RUNTIME_RAM = 400 * MiB  # libcudart/cuBLAS pages and pinned staging buffers in host RAM
# ggml types llama.cpp's CPU back end repacks into interleaved copies for faster matmuls
# (ggml-cpu/repack.cpp, with AVX2 on x86 and dot-product NEON on Arm). With mmap the file's
# pages of those tensors stay resident after the copy is made, as clean (reclaimable) page cache.
REPACKED_TYPES: dict[str, frozenset[str]] = {
    "x86_64": frozenset({"Q4_0", "Q4_K", "IQ4_NL", "Q2_K"}),
    "aarch64": frozenset({"Q4_0", "Q4_K", "IQ4_NL", "Q8_0"}),
}
# Levels a refusal may suggest, best quality first (llama.cpp's names; sizes come from gguf-py).
SUGGESTED_LEVELS = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")


@dataclass(frozen=True)
class Shape:
    """The few hyperparameters the estimate needs, read from a GGUF."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_embd_k_gqa: int  # K width per token per layer: head_dim * n_head_kv
    n_embd_v_gqa: int
    n_vocab: int
    n_ctx_train: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model takes, split by where they live; ``ram`` and ``vram`` are the totals."""

    weights_ram: int  # the file's tensors kept on the CPU (mapped pages count once touched)
    weights_vram: int
    repacked: int  # CPU copies of repacked tensors (see REPACKED_TYPES)
    reclaimable: int  # mapped pages of repacked tensors: resident, but the kernel may drop them
    kv_ram: int
    kv_vram: int
    compute_ram: int  # CPU compute pages touched at the worst serving case (a full context)
    compute_vram: int  # CUDA compute buffer: allocated up front, all of it physical
    compute_reserved: int  # llama.cpp's CPU compute buffer; resident only if every logit is kept
    runtime: int  # process baseline: Python, libllama, vocabulary, CUDA runtime
    n_gpu_layers: int  # resolved: 0..n_layer+1 (n_layer+1 = every layer and the output)
    adapters: int = 0  # LoRA adapters (Settings.lora): read into buffers of their own, never mapped
    prompt_cache: int = 0  # saved KV states the prompt cache may hold in RAM (Settings.prompt_cache_mb)

    @property
    def ram(self) -> int:
        """Expected resident size (VmRSS) of the serving process."""
        return self.weights_ram + self.repacked + self.kv_ram + self.compute_ram + self.runtime + self.adapters + self.prompt_cache

    @property
    def ram_required(self) -> int:
        """RAM that must be free: the resident size less page cache the kernel can drop."""
        return self.ram - self.reclaimable

    @property
    def vram(self) -> int:
        return self.weights_vram + self.kv_vram + self.compute_vram

    @property
    def total(self) -> int:
        return self.ram + self.vram

    def to_dict(self) -> dict[str, float | int]:
        """MiB figures for JSON and humans."""
        names = ("weights_ram", "weights_vram", "repacked", "reclaimable", "kv_ram", "kv_vram", "compute_ram", "compute_vram",
                 "compute_reserved", "runtime", "adapters", "prompt_cache", "ram", "ram_required", "vram", "total")
        data: dict[str, float | int] = {f"{n}_mb": round(getattr(self, n) / MiB, 1) for n in names}
        data["n_gpu_layers"] = self.n_gpu_layers
        return data


def shape_of(info: GGUFInfo) -> Shape:
    """Hyperparameters from the GGUF metadata; UnsupportedModel when a needed one is missing."""
    needed = {
        "block_count": info.block_count, "embedding_length": info.embedding_length,
        "head_count": info.head_count, "vocab_size": info.vocab_size,
    }
    missing = [k for k, v in needed.items() if not v]
    if missing:
        raise UnsupportedModel(f"{info.path}: no {', '.join(missing)} in the metadata; the planner cannot size it")
    head_dim = info.embedding_length // info.head_count
    n_head_kv = info.head_count_kv or info.head_count
    key_length = info.metadata.get(Keys.Attention.KEY_LENGTH.format(arch=info.architecture), head_dim)
    value_length = info.metadata.get(Keys.Attention.VALUE_LENGTH.format(arch=info.architecture), head_dim)
    return Shape(
        n_layer=info.block_count,
        n_embd=info.embedding_length,
        n_ff=info.feed_forward_length or 4 * info.embedding_length,
        n_head=info.head_count,
        n_embd_k_gqa=key_length * n_head_kv,
        n_embd_v_gqa=value_length * n_head_kv,
        n_vocab=info.vocab_size,
        n_ctx_train=info.context_length or 0,
    )


def estimate_memory(
    info: GGUFInfo, settings: Settings, n_gpu_layers: int | None = None, arch: str | None = None
) -> MemoryEstimate:
    """Memory for ``info`` loaded with ``settings`` (an edgekit.plan.Settings) on a CPU of ``arch``.

    ``n_gpu_layers`` overrides the settings' count; -1 means every layer and the output.
    """
    shape = shape_of(info)
    layers = settings.n_gpu_layers if n_gpu_layers is None else n_gpu_layers
    on_gpu = shape.n_layer + 1 if layers < 0 else min(layers, shape.n_layer + 1)
    gpu_blocks = min(on_gpu, shape.n_layer)
    weights_vram = _gpu_weights(info, shape, on_gpu)
    kv_layer = kv_bytes_per_layer(shape, settings)
    kv_vram = kv_layer * gpu_blocks
    compute_vram = compute_reserved_bytes(shape, settings) if on_gpu else 0
    repacked = _repacked_bytes(info, shape, on_gpu, arch or platform.machine())
    return MemoryEstimate(
        weights_ram=info.tensor_bytes - weights_vram - (0 if settings.use_mmap else repacked),
        weights_vram=weights_vram,
        repacked=repacked,
        reclaimable=repacked if settings.use_mmap and not settings.use_mlock else 0,
        kv_ram=kv_layer * (shape.n_layer - gpu_blocks),
        kv_vram=kv_vram,
        compute_ram=_compute_ram(shape, settings, on_gpu),
        compute_vram=compute_vram,
        compute_reserved=compute_reserved_bytes(shape, settings),
        runtime=runtime_bytes(shape, gpu=on_gpu > 0),
        n_gpu_layers=on_gpu,
        # Counted on the CPU: llama.cpp puts a pair beside its weight, so offloaded layers' go to VRAM.
        adapters=sum(os.path.getsize(a.path) for a in settings.lora),
        prompt_cache=settings.prompt_cache_mb * MiB,
    )


def _gpu_weights(info: GGUFInfo, shape: Shape, on_gpu: int) -> int:
    """llama.cpp offloads the last ``on_gpu`` blocks, and the output layer past n_layer."""
    first = shape.n_layer - min(on_gpu, shape.n_layer)
    blocks = sum(b for i, b in info.layer_bytes.items() if i >= first)
    if on_gpu > shape.n_layer:  # the token embeddings always stay on the CPU
        blocks += info.non_layer_bytes - info.token_embd_bytes
    return blocks


def _repacked_bytes(info: GGUFInfo, shape: Shape, on_gpu: int, arch: str) -> int:
    """Matmul weights left on the CPU in a type the CPU back end repacks (not the embeddings,
    which are read by row lookup)."""
    types = REPACKED_TYPES.get(arch, frozenset())
    first_gpu_block = shape.n_layer - min(on_gpu, shape.n_layer)
    total = 0
    for t in info.tensors:
        if t.type not in types or len(t.shape) < 2 or t.name == "token_embd.weight":
            continue
        block = _block_index(t.name)
        on_cpu = block < first_gpu_block if block is not None else on_gpu <= shape.n_layer
        total += t.nbytes if on_cpu else 0
    return total


def _block_index(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blk" and parts[1].isdigit() else None


def kv_bytes_per_layer(shape: Shape, settings: Settings) -> int:
    """n_ctx cells of K and V for one layer, in the cache's ggml types."""
    cells = -(-settings.n_ctx // KV_PAD) * KV_PAD
    return cells * (_row_bytes(settings.type_k, shape.n_embd_k_gqa) + _row_bytes(settings.type_v, shape.n_embd_v_gqa))


def _row_bytes(cache_type: str, n: int) -> int:
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[cache_type.upper()]]
    except KeyError:
        raise UnsupportedModel(f"unknown KV-cache type {cache_type!r}; use f16, q8_0 or q4_0") from None
    return n // block * size


def _layer_peak(shape: Shape, settings: Settings, score_copies: int) -> int:
    """The graph's biggest moment inside a layer: KQ scores (without flash attention) or the FFN."""
    ub, n_ctx = settings.n_ubatch, settings.n_ctx
    activations = ub * shape.n_embd * F32 * ACTIVATION_ROWS
    scores = 0 if settings.flash_attn else ub * n_ctx * shape.n_head * F32 * score_copies
    ffn = ub * shape.n_ff * F32 * FFN_ROWS
    return activations + max(scores, ffn)


def _mask_bytes(settings: Settings) -> int:
    """The KQ mask is an input tensor, live through the whole graph: f16 with flash attention."""
    return settings.n_ubatch * settings.n_ctx * (2 if settings.flash_attn else F32)


def compute_reserved_bytes(shape: Shape, settings: Settings) -> int:
    """llama.cpp's compute buffer: sized for a full ubatch whose every token returns logits.

    The allocator softmaxes KQ in place, so one copy of the scores; the logits of the whole
    ubatch are the other candidate for the peak (they dominate at small contexts).
    """
    logits = settings.n_ubatch * (shape.n_vocab + 2 * shape.n_embd) * F32
    return max(_layer_peak(shape, settings, 1) + _mask_bytes(settings), logits)


def compute_resident_bytes(shape: Shape, settings: Settings) -> int:
    """The part of the CPU compute buffer a long-running server touches: ubatches of every
    KV length are placed at different offsets (measured: scores and softmax both resident),
    but with one row of logits per request the logits region past that stays untouched."""
    touched = _layer_peak(shape, settings, 2) + _mask_bytes(settings) + shape.n_vocab * F32
    return min(touched, compute_reserved_bytes(shape, settings))


def _compute_ram(shape: Shape, settings: Settings, on_gpu: int) -> int:
    if on_gpu > shape.n_layer:  # all on the GPU: the host keeps only the input embeddings' staging
        return settings.n_ubatch * shape.n_embd * F32 * 2
    return compute_resident_bytes(shape, settings)


def runtime_bytes(shape: Shape, gpu: bool) -> int:
    """The process baseline besides the model's buffers."""
    return RUNTIME_BASE + shape.n_vocab * VOCAB_BYTES_PER_TOKEN + (CUDA_RUNTIME_RAM if gpu else 0)


def smaller_level_that_fits(info: GGUFInfo, shortfall: int) -> str | None:
    """The best level below ``info``'s whose smaller weights would make up ``shortfall`` bytes."""
    for level in SUGGESTED_LEVELS:
        bits = LEVELS[level].bits_per_weight
        saving = info.tensor_bytes - info.parameter_count * bits / 8
        if bits < info.bits_per_weight - 0.25 and saving >= shortfall:
            return level
    return None
