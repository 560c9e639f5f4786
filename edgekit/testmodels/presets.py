"""Model shapes we generate, and the config.json each real model ships.

The shapes of ``tinyllama``, ``solar``, ``llama3.2-1b`` and ``qwen2.5-1.5b`` are
TinyLlama-1.1B-Chat-v1.0's, SOLAR-10.7B-Instruct-v1.0's, Llama-3.2-1B-Instruct's and
Qwen2.5-1.5B-Instruct's; ``tiny``, ``solar-mini``, ``tiny-llama3`` and ``tiny-qwen2`` keep a
family's files, vocabulary and quirks but are narrow and shallow, so tests stay fast.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

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
    family: str  # "tinyllama", "solar", "llama3", "qwen2" or "smollm2": which real repo's files we copy
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    explicit_head_dim: int | None = None  # config.json's "head_dim", for families that write it
    tied: bool = False  # the real model's tie_word_embeddings, the default of make_test_model
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden_size // self.num_attention_heads

    @property
    def qkv_bias(self) -> bool:
        """Qwen2 has biases on its Q, K and V projections (and nowhere else)."""
        return self.family == "qwen2"

    def n_params(self, tied: bool = False) -> int:
        """Parameter count, as transformers' num_parameters() reports it."""
        h, f = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        layer = 2 * h * q + 2 * h * kv + 3 * h * f + 2 * h + (q + 2 * kv) * self.qkv_bias
        heads = 1 if tied else 2
        return heads * self.vocab_size * h + self.num_hidden_layers * layer + h


# Llama-3.1/3.2's rope scaling (config.json "rope_scaling"): 3.2 stretches 32x, 3.1 8x.
LLAMA32_ROPE = {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}

PRESETS: dict[str, Preset] = {
    # 2 layers, GQA 8/2 (so a wrong K permutation shows), widths that are multiples of 256 (K-quants).
    "tiny": Preset("tiny", "tinyllama", 32000, 256, 768, 2, 8, 2, 2048),
    # tiny with 8 layers: depth up-scaling (SOLAR's recipe) needs layers to drop and stack.
    "tiny8": Preset("tiny8", "tinyllama", 32000, 256, 768, 8, 8, 2, 2048),
    "tinyllama": Preset("tinyllama", "tinyllama", 32000, 2048, 5632, 22, 32, 4, 2048),
    "solar-mini": Preset("solar-mini", "solar", 32000, 4096, 14336, 2, 32, 8, 4096),
    "solar": Preset("solar", "solar", 32000, 4096, 14336, 48, 32, 8, 4096),
    # The real vocabularies; head_dim 64 with 8 heads of a 256-wide model, so q_dim != hidden shows.
    "tiny-llama3": Preset("tiny-llama3", "llama3", 128256, 256, 768, 2, 8, 2, 131072, 1e-5, 500000.0,
                          explicit_head_dim=64, tied=True, rope_scaling=LLAMA32_ROPE),
    "llama3.2-1b": Preset("llama3.2-1b", "llama3", 128256, 2048, 8192, 16, 32, 8, 131072, 1e-5, 500000.0,
                          explicit_head_dim=64, tied=True, rope_scaling=LLAMA32_ROPE),
    "tiny-qwen2": Preset("tiny-qwen2", "qwen2", 151936, 256, 768, 2, 8, 2, 32768, 1e-6, 1000000.0, tied=True),
    "qwen2.5-1.5b": Preset("qwen2.5-1.5b", "qwen2", 151936, 1536, 8960, 28, 12, 2, 32768, 1e-6, 1000000.0, tied=True),
    # SmolLM2-1.7B-Instruct's files and full multi-head attention; StarCoder2's vocabulary (bpe_tokenizer.py).
    "tiny-smollm2": Preset("tiny-smollm2", "smollm2", 49152, 256, 768, 2, 8, 8, 8192, 1e-5, 130000.0, tied=True),
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
    build = {"llama3": _llama3_config, "qwen2": _qwen2_config, "smollm2": _smollm2_config}.get(preset.family, _llama2_config)
    config = {**_shape_config(preset, dtype, tied), **build(preset)}
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def _shape_config(preset: Preset, dtype: str, tied: bool) -> dict[str, object]:
    return {
        "hidden_act": "silu",
        "hidden_size": preset.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": preset.intermediate_size,
        "max_position_embeddings": preset.max_position_embeddings,
        "num_attention_heads": preset.num_attention_heads,
        "num_hidden_layers": preset.num_hidden_layers,
        "num_key_value_heads": preset.num_key_value_heads,
        "rms_norm_eps": preset.rms_norm_eps,
        "rope_theta": preset.rope_theta,
        "tie_word_embeddings": tied,
        "torch_dtype": DTYPES[dtype][0],
        "vocab_size": preset.vocab_size,
    }


def _llama3_config(preset: Preset) -> dict[str, object]:
    """Llama-3.2-1B-Instruct's own keys: explicit head_dim, llama3 rope scaling, three EOS ids."""
    return {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": preset.head_dim,
        "mlp_bias": False, "model_type": "llama", "pretraining_tp": 1, "rope_scaling": preset.rope_scaling,
        "transformers_version": "4.45.0.dev0", "use_cache": True,
    }


def _qwen2_config(preset: Preset) -> dict[str, object]:
    """Qwen2.5-Instruct's own keys: no attention_bias key (qwen2 always has Q/K/V biases), an unused sliding window."""
    return {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151645, "max_window_layers": 21, "model_type": "qwen2",
        "sliding_window": preset.max_position_embeddings, "transformers_version": "4.43.1",
        "use_cache": True, "use_sliding_window": False,
    }


def _smollm2_config(preset: Preset) -> dict[str, object]:
    """SmolLM2-1.7B-Instruct's own keys: a plain Llama whose BOS/EOS are the ChatML tokens 1 and 2."""
    return {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 1, "eos_token_id": 2, "mlp_bias": False, "model_type": "llama", "pad_token_id": 2,
        "pretraining_tp": 1, "rope_scaling": None, "transformers_version": "4.42.3", "use_cache": True,
    }


def _llama2_config(preset: Preset) -> dict[str, object]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "model_type": "llama",
        "pretraining_tp": 1,
        "rope_scaling": None,
        **_FAMILY_CONFIG[preset.family],
    }


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
