"""Seeded random Llama weights, streamed into safetensors files block by block.

Values depend only on (seed, tensor name, block index), never on the shard layout
or the thread count, so the same seed gives the same bytes however the model is split.
At most a few blocks of 4M values live in memory at once: SOLAR-10.7B (21 GB in
bf16) writes with a few hundred MB of RAM.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.atomic import atomic_path
from edgekit.testmodels.presets import DTYPES, Preset

BLOCK = 1 << 22  # values per random block: part of the seed, so changing it changes every model
STD = 0.02  # config.json's initializer_range; keeps a 48-layer forward pass well inside fp16
NORM_NOISE = 0.02  # RMSNorm weights are 1.0 plus this much noise
BIAS_STD = 0.5  # Qwen2's trained Q/K/V biases are large (|b| up to tens); these must visibly move the logits


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the checkpoint: its Hugging Face name, shape and how it is initialised."""

    name: str
    shape: tuple[int, ...]
    is_norm: bool = False
    is_bias: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def tensor_specs(preset: Preset, tied: bool = False) -> list[TensorSpec]:
    """Every tensor, in LlamaForCausalLM's (Qwen2ForCausalLM's) state_dict order (which decides the shard layout)."""
    h, f = preset.hidden_size, preset.intermediate_size
    q, kv = preset.num_attention_heads * preset.head_dim, preset.num_key_value_heads * preset.head_dim
    specs = [TensorSpec("model.embed_tokens.weight", (preset.vocab_size, h))]
    for i in range(preset.num_hidden_layers):
        p = f"model.layers.{i}"
        specs += [
            TensorSpec(f"{p}.self_attn.q_proj.weight", (q, h)),  # (out, in), as torch.nn.Linear stores it
            *_bias(preset, f"{p}.self_attn.q_proj.bias", q),
            TensorSpec(f"{p}.self_attn.k_proj.weight", (kv, h)),
            *_bias(preset, f"{p}.self_attn.k_proj.bias", kv),
            TensorSpec(f"{p}.self_attn.v_proj.weight", (kv, h)),
            *_bias(preset, f"{p}.self_attn.v_proj.bias", kv),
            TensorSpec(f"{p}.self_attn.o_proj.weight", (h, q)),
            TensorSpec(f"{p}.mlp.gate_proj.weight", (f, h)),
            TensorSpec(f"{p}.mlp.up_proj.weight", (f, h)),
            TensorSpec(f"{p}.mlp.down_proj.weight", (h, f)),
            TensorSpec(f"{p}.input_layernorm.weight", (h,), is_norm=True),
            TensorSpec(f"{p}.post_attention_layernorm.weight", (h,), is_norm=True),
        ]
    specs.append(TensorSpec("model.norm.weight", (h,), is_norm=True))
    if not tied:
        specs.append(TensorSpec("lm_head.weight", (preset.vocab_size, h)))
    return specs


def _bias(preset: Preset, name: str, size: int) -> list[TensorSpec]:
    return [TensorSpec(name, (size,), is_bias=True)] if preset.qkv_bias else []


# --- values ----------------------------------------------------------------------------------


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def _block_f32(spec: TensorSpec, seed: int, index: int) -> np.ndarray:
    """Block ``index`` of the tensor's flattened float32 values."""
    count = min(BLOCK, spec.numel - index * BLOCK)
    x = np.random.default_rng([seed, _name_key(spec.name), index]).standard_normal(count, dtype=np.float32)
    x *= NORM_NOISE if spec.is_norm else BIAS_STD if spec.is_bias else STD
    if spec.is_norm:
        x += 1.0
    return x


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 ``x``, rounded to nearest even. Clobbers ``x``."""
    u = x.view(np.uint32)
    rounding = np.right_shift(u, 16)
    rounding &= 1
    rounding += 0x7FFF
    u += rounding
    return x.view(np.uint16)[1::2].copy()  # the high halves (little-endian)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bit patterns (exact)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


_ENCODE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "f32": lambda x: x,
    "f16": lambda x: x.astype(np.float16),
    "bf16": f32_to_bf16_bits,
}


def _encoded_block(job: tuple[TensorSpec, int, int, str]) -> np.ndarray:
    spec, seed, index, dtype = job
    return _ENCODE[dtype](_block_f32(spec, seed, index))


def tensor_values(spec: TensorSpec, seed: int) -> np.ndarray:
    """The tensor's float32 values before rounding to the file's dtype (for tests and checks)."""
    blocks = [_block_f32(spec, seed, i) for i in range(math.ceil(spec.numel / BLOCK))]
    return np.concatenate(blocks).reshape(spec.shape)


def _ordered(pool: ThreadPoolExecutor, fn: Callable, jobs: Iterable, ahead: int) -> Iterator:
    """pool.map with at most ``ahead`` results pending, so memory stays bounded."""
    pending: deque[Future] = deque()
    for job in jobs:
        pending.append(pool.submit(fn, job))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# --- safetensors files -------------------------------------------------------------------------


def nbytes(spec: TensorSpec, dtype: str) -> int:
    return spec.numel * DTYPES[dtype][2]


def safetensors_header(specs: list[TensorSpec], dtype: str) -> tuple[bytes, list[TensorSpec]]:
    """The file's header bytes and the data order, laid out as the safetensors library does.

    safetensors sorts tensors by name (within one dtype), writes compact JSON with
    ``__metadata__`` first and pads it with spaces to a multiple of 8 bytes.
    """
    ordered = sorted(specs, key=lambda s: s.name)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in ordered:
        size = nbytes(spec, dtype)
        tag = DTYPES[dtype][1]
        header[spec.name] = {"dtype": tag, "shape": list(spec.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, ordered


def write_safetensors(path: Path, specs: list[TensorSpec], dtype: str, seed: int, workers: int | None = None) -> Path:
    """Stream ``specs``' seeded values into one safetensors file, atomically."""
    header, ordered = safetensors_header(specs, dtype)
    jobs = ((spec, seed, i, dtype) for spec in ordered for i in range(math.ceil(spec.numel / BLOCK)))
    workers = workers or min(8, os.cpu_count() or 1)
    with atomic_path(path) as tmp, open(tmp, "wb") as f, ThreadPoolExecutor(workers) as pool:
        f.write(header)
        for block in _ordered(pool, _encoded_block, jobs, ahead=2 * workers):
            f.write(block.data)
    return path


# --- shards, as huggingface_hub's split_state_dict_into_shards lays them out ------------------


def plan_shards(specs: list[TensorSpec], dtype: str, max_shard_size: int | None) -> list[list[TensorSpec]]:
    """Group tensors into shards in state_dict order; a tensor larger than the limit gets its own."""
    if max_shard_size is None:
        return [list(specs)]
    shards: list[list[TensorSpec]] = []
    current: list[TensorSpec] = []
    current_size = 0
    for spec in specs:
        size = nbytes(spec, dtype)
        if size > max_shard_size:
            shards.append([spec])
            continue
        if current_size + size > max_shard_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(spec)
        current_size += size
    if current:
        shards.append(current)
    return shards


def shard_filenames(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def index_json(shards: list[list[TensorSpec]], filenames: list[str], dtype: str) -> str:
    """model.safetensors.index.json as transformers writes it (sorted keys, indent 2)."""
    weight_map = {spec.name: filename for shard, filename in zip(shards, filenames) for spec in shard}
    total = sum(nbytes(spec, dtype) for shard in shards for spec in shard)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    return json.dumps(index, indent=2, sort_keys=True) + "\n"
