"""Model shapes we generate, and the config.json each real model ships.

The shapes of ``tinyllama`` and ``solar`` are TinyLlama-1.1B-Chat-v1.0's and
SOLAR-10.7B-Instruct-v1.0's; ``tiny`` and ``solar-mini`` keep a family's files and
width but few layers, so tests and GPU checks stay fast.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from edgekit.errors import UsageError

# torch_dtype names in config.json, and the safetensors dtype tag and byte width per dtype.
DTYPES: dict[str, tuple[str, str, int]] = {
    "f32": ("float32", "F32", 4),
    "f16": ("float16", "F16", 2),
    "bf16": ("bfloat16", "BF16", 2),
}


@dataclass(frozen=True)
class Preset:
    """One generated model: its family (whose real files we mirror) and its shape."""

    name: str
    family: str  # "tinyllama" or "solar": which real repo's config and tokenizer files we copy
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def n_params(self, tied: bool = False) -> int:
        """Parameter count, as transformers' num_parameters() reports it."""
        h, f, kv = self.hidden_size, self.intermediate_size, self.num_key_value_heads * self.head_dim
        layer = 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h
        heads = 1 if tied else 2
        return heads * self.vocab_size * h + self.num_hidden_layers * layer + h


PRESETS: dict[str, Preset] = {
    # 2 layers, GQA 8/2 (so a wrong K permutation shows), widths that are multiples of 256 (K-quants).
    "tiny": Preset("tiny", "tinyllama", 32000, 256, 768, 2, 8, 2, 2048),
    # tiny with 8 layers: depth up-scaling (SOLAR's recipe) needs layers to drop and stack.
    "tiny8": Preset("tiny8", "tinyllama", 32000, 256, 768, 8, 8, 2, 2048),
    "tinyllama": Preset("tinyllama", "tinyllama", 32000, 2048, 5632, 22, 32, 4, 2048),
    "solar-mini": Preset("solar-mini", "solar", 32000, 4096, 14336, 2, 32, 8, 4096),
    "solar": Preset("solar", "solar", 32000, 4096, 14336, 48, 32, 8, 4096),
}

# The keys of the real config.json files that do not depend on the shape.
# TinyLlama-1.1B-Chat-v1.0 has no pad_token_id; SOLAR-10.7B-Instruct-v1.0 pads with </s>.
_FAMILY_CONFIG: dict[str, dict[str, object]] = {
    "tinyllama": {"use_cache": False, "transformers_version": "4.35.0"},
    "solar": {"pad_token_id": 2, "use_cache": True, "transformers_version": "4.35.2"},
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``, or a UsageError that lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return dtype


def config_json(preset: Preset, dtype: str, tied: bool) -> str:
    """config.json as transformers writes it (sorted keys, indent 2, trailing newline)."""
    config: dict[str, object] = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": preset.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": preset.intermediate_size,
        "max_position_embeddings": preset.max_position_embeddings,
        "model_type": "llama",
        "num_attention_heads": preset.num_attention_heads,
        "num_hidden_layers": preset.num_hidden_layers,
        "num_key_value_heads": preset.num_key_value_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": preset.rms_norm_eps,
        "rope_scaling": None,
        "rope_theta": preset.rope_theta,
        "tie_word_embeddings": tied,
        "torch_dtype": DTYPES[dtype][0],
        "vocab_size": preset.vocab_size,
        **_FAMILY_CONFIG[preset.family],
    }
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str | int) -> int:
    """Bytes in "500MB", "2GB", "1.5GiB" or "1048576"; decimal units as transformers reads them."""
    if isinstance(text, int):
        size = text
    else:
        match = _SIZE.match(text)
        if not match:
            raise UsageError(f"bad size {text!r}: write a byte count or a number with KB, MB, GB (or KiB, MiB, GiB)")
        unit = (match.group(2) or "").lower()
        unit = unit[:-1] if unit.endswith("b") and unit != "b" else unit
        size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise UsageError(f"bad size {text!r}: it must be more than 0 bytes")
    return size
