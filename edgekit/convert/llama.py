"""The Llama family (Llama 2/3, Mistral, SmolLM) and Qwen2: hyperparameters, expected tensors, Q/K permutation, rope.

Follows llama.cpp's convert_hf_to_gguf.py (LlamaModel, Qwen2Model) for what goes into the GGUF.
Qwen2 is a Llama with biases on Q, K and V; llama.cpp runs it with NEOX-style rope, which
rotates the halves of each head just as Hugging Face stores them, so its Q/K rows stay put.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import gguf
import numpy as np

from edgekit.convert.checkpoint import TensorRef
from edgekit.errors import ModelFormatError, UnsupportedModel

log = logging.getLogger(__name__)

# Hugging Face architecture -> the llama.cpp architecture it becomes.
ARCHITECTURES: dict[str, gguf.MODEL_ARCH] = {
    "LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "MistralForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2,
}
# Architectures whose rope llama.cpp applies to interleaved pairs (the others rotate halves, as HF does).
INTERLEAVED_ROPE = (gguf.MODEL_ARCH.LLAMA,)
QWEN2_BIASES = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")  # no o_proj bias

# Expected tensors in Hugging Face layout ([out, in]); dims are LlamaParams.dims() names.
MODEL_TENSORS: dict[str, tuple[str, ...]] = {
    "model.embed_tokens.weight": ("vocab", "hidden"),
    "model.norm.weight": ("hidden",),
}
OUTPUT_TENSOR = "lm_head.weight"
LAYER_TENSORS: dict[str, tuple[str, ...]] = {
    "input_layernorm.weight": ("hidden",),
    "self_attn.q_proj.weight": ("q_dim", "hidden"),
    "self_attn.k_proj.weight": ("kv_dim", "hidden"),
    "self_attn.v_proj.weight": ("kv_dim", "hidden"),
    "self_attn.o_proj.weight": ("hidden", "q_dim"),
    "post_attention_layernorm.weight": ("hidden",),
    "mlp.gate_proj.weight": ("ffn", "hidden"),
    "mlp.up_proj.weight": ("ffn", "hidden"),
    "mlp.down_proj.weight": ("hidden", "ffn"),
}
BIAS_TENSORS: dict[str, tuple[str, ...]] = {  # Llama: only with "attention_bias": true; Qwen2: Q, K, V always
    "self_attn.q_proj.bias": ("q_dim",),
    "self_attn.k_proj.bias": ("kv_dim",),
    "self_attn.v_proj.bias": ("kv_dim",),
    "self_attn.o_proj.bias": ("hidden",),
}
# HF keeps rotary pairs as (first half, second half) of each head (rotate_half); llama.cpp
# wants them interleaved. The permutation groups rows by the projection's own head count:
# n_head for Q, n_head_kv for K (using n_head for K is the classic GQA conversion bug).
PERMUTED: dict[str, str] = {"self_attn.q_proj": "n_head", "self_attn.k_proj": "n_head_kv"}
# Tensors HF checkpoints sometimes carry that llama.cpp recomputes.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
SUPPORTED_ROPE = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class LlamaParams:
    """The hyperparameters of config.json that the GGUF needs, in either config style."""

    architecture: str
    vocab: int
    hidden: int
    ffn: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    context_length: int
    rms_eps: float
    rope_theta: float
    rope: dict[str, Any] = field(default_factory=dict)  # rope scaling parameters, {} when none
    tied: bool = False
    attention_bias: bool = False  # Llama's "attention_bias": biases on Q, K, V and O
    sliding_window: int | None = None
    dtype: str | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LlamaParams:
        """Build from config.json: both `rope_theta`/`rope_scaling`/`torch_dtype` and `rope_parameters`/`dtype`."""
        arch = _architecture(config)
        text = config.get("text_config", config)
        try:
            n_head = int(text["num_attention_heads"])
            hidden = int(text["hidden_size"])
            rope = _rope_parameters(text)
            params = cls(
                architecture=arch,
                vocab=int(text["vocab_size"]),
                hidden=hidden,
                ffn=int(text["intermediate_size"]),
                n_layer=int(text["num_hidden_layers"]),
                n_head=n_head,
                n_head_kv=int(text.get("num_key_value_heads") or n_head),
                head_dim=int(text.get("head_dim") or hidden // n_head),
                context_length=int(text.get("max_position_embeddings", 2048)),
                rms_eps=float(text.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope.pop("rope_theta", text.get("rope_theta", 10000.0))),
                rope=rope,
                tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
                attention_bias=bool(text.get("attention_bias", False)),
                sliding_window=text.get("sliding_window") if text.get("use_sliding_window", True) else None,
                dtype=config.get("dtype") or config.get("torch_dtype"),
            )
        except KeyError as exc:
            raise ModelFormatError(f"config.json lacks {exc.args[0]!r}, which a {arch} config must have") from None
        except (TypeError, ValueError) as exc:
            raise ModelFormatError(f"config.json has a malformed value: {exc}") from None
        params._check(text)
        return params

    @property
    def arch(self) -> gguf.MODEL_ARCH:
        return ARCHITECTURES[self.architecture]

    def bias_tensors(self) -> dict[str, tuple[str, ...]]:
        """The per-layer bias tensors this checkpoint must hold, with their dims."""
        if self.arch == gguf.MODEL_ARCH.QWEN2:
            return {name: BIAS_TENSORS[name] for name in QWEN2_BIASES}
        return BIAS_TENSORS if self.attention_bias else {}

    def dims(self) -> dict[str, int]:
        """Named sizes used by the tensor tables."""
        return {
            "vocab": self.vocab,
            "hidden": self.hidden,
            "ffn": self.ffn,
            "q_dim": self.n_head * self.head_dim,
            "kv_dim": self.n_head_kv * self.head_dim,
        }

    def _check(self, text: dict[str, Any]) -> None:
        if self.n_head % self.n_head_kv:
            raise ModelFormatError(
                f"config.json: num_attention_heads {self.n_head} is not a multiple of num_key_value_heads {self.n_head_kv}"
            )
        if self.head_dim % 2:
            raise ModelFormatError(f"config.json: head dim {self.head_dim} is odd; rotary embeddings need an even one")
        if text.get("mlp_bias"):
            raise UnsupportedModel("config.json sets mlp_bias; Llama checkpoints with MLP biases are not supported")
        if self.rope.get("rope_type", "default") not in SUPPORTED_ROPE:
            raise UnsupportedModel(
                f"rope scaling type {self.rope.get('rope_type')!r} is not supported (supported: {', '.join(SUPPORTED_ROPE)})"
            )
        if self.sliding_window is not None and self.sliding_window < self.context_length:
            log.warning("sliding_window %s is ignored by llama.cpp: keep the context at or under it", self.sliding_window)


def _architecture(config: dict[str, Any]) -> str:
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return name
    found = ", ".join(names) or f"none (model_type {config.get('model_type')!r})"
    raise UnsupportedModel(f"architecture {found} is not supported; supported: {', '.join(ARCHITECTURES)}")


def _rope_parameters(text: dict[str, Any]) -> dict[str, Any]:
    """Merge the newer `rope_parameters` and the older `rope_scaling` into one dict."""
    rope = dict(text.get("rope_parameters") or {})
    rope.update(text.get("rope_scaling") or {})
    if "type" in rope and "rope_type" not in rope:  # the pre-4.45 spelling
        rope["rope_type"] = rope.pop("type")
    return rope


def expected_tensors(params: LlamaParams) -> dict[str, tuple[int, ...]]:
    """Every tensor the checkpoint must hold, with its shape; lm_head is optional when tied."""
    dims = params.dims()
    layer = dict(LAYER_TENSORS, **params.bias_tensors())
    table = dict(MODEL_TENSORS)
    if not params.tied:
        table[OUTPUT_TENSOR] = ("vocab", "hidden")
    for i in range(params.n_layer):
        table.update({f"model.layers.{i}.{suffix}": shape for suffix, shape in layer.items()})
    return {name: tuple(dims[d] for d in shape) for name, shape in table.items()}


def check_tensors(params: LlamaParams, found: dict[str, TensorRef]) -> dict[str, TensorRef]:
    """The checkpoint's tensors to convert, after checking names and shapes against the config."""
    expected = expected_tensors(params)
    if params.tied and OUTPUT_TENSOR in found:
        expected[OUTPUT_TENSOR] = (params.vocab, params.hidden)
    missing = [name for name in expected if name not in found]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ModelFormatError(
            f"checkpoint lacks tensor(s) {', '.join(missing[:3])}{more}; is a shard missing or the config wrong?"
        )
    unknown = [name for name in found if name not in expected and not name.endswith(IGNORED_SUFFIXES)]
    if unknown:
        raise UnsupportedModel(f"checkpoint has tensors a {params.architecture} should not have: {', '.join(unknown[:3])}")
    for name, shape in expected.items():
        if found[name].shape != shape:
            raise ModelFormatError(
                f"tensor {name} has shape {list(found[name].shape)} but config.json implies {list(shape)}; "
                "the config does not match the weights"
            )
    return {name: found[name] for name in expected}


def permute_heads(params: LlamaParams, hf_name: str) -> int | None:
    """How many heads to permute this tensor's rows by (Q: n_head, K: n_head_kv), or None."""
    if params.arch not in INTERLEAVED_ROPE:
        return None
    for prefix, count in PERMUTED.items():
        if f".{prefix}." in hf_name:
            return getattr(params, count)
    return None


def permute_rows(rows: np.ndarray, n_groups: int) -> np.ndarray:
    """Reorder each head's rows from HF's halves layout to llama.cpp's interleaved pairs.

    rows: (n_groups * head_dim, ...) covering whole heads, as llama.cpp's LlamaModel.permute.
    """
    head_dim = rows.shape[0] // n_groups
    return (
        rows.reshape(n_groups, 2, head_dim // 2, *rows.shape[1:])  # (heads, half, pair, ...)
        .swapaxes(1, 2)  # (heads, pair, half, ...)
        .reshape(rows.shape)
    )


def add_hparams(writer: gguf.GGUFWriter, params: LlamaParams) -> None:
    """The <arch>.* keys llama.cpp reads for this architecture.

    key_length and value_length are written always (llama.cpp writes them only when config.json
    has head_dim): tools that read the file, such as memory estimators, need not guess them.
    """
    writer.add_vocab_size(params.vocab)
    writer.add_context_length(params.context_length)
    writer.add_embedding_length(params.hidden)
    writer.add_block_count(params.n_layer)
    writer.add_feed_forward_length(params.ffn)
    writer.add_head_count(params.n_head)
    writer.add_head_count_kv(params.n_head_kv)
    writer.add_layer_norm_rms_eps(params.rms_eps)
    writer.add_rope_dimension_count(params.head_dim)
    writer.add_rope_freq_base(params.rope_theta)
    writer.add_key_length(params.head_dim)
    writer.add_value_length(params.head_dim)
    _add_rope_scaling(writer, params.rope)


def _add_rope_scaling(writer: gguf.GGUFWriter, rope: dict[str, Any]) -> None:
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        if "original_max_position_embeddings" in rope:
            writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
        if "beta_fast" in rope:
            writer.add_rope_scaling_yarn_beta_fast(float(rope["beta_fast"]))
        if "beta_slow" in rope:
            writer.add_rope_scaling_yarn_beta_slow(float(rope["beta_slow"]))
    # llama3 scaling travels as the rope_freqs tensor (llama3_rope_factors), not as keys.


def llama3_rope_factors(params: LlamaParams) -> np.ndarray | None:
    """Per-frequency divisors for Llama 3.1 rope scaling, as convert_hf_to_gguf.py computes them."""
    rope = params.rope
    if rope.get("rope_type") != "llama3":
        return None
    dim = params.head_dim
    freqs = 1.0 / (params.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))  # (dim/2,)
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)
