"""A plain numpy forward pass of a Hugging Face Llama checkpoint: the ground truth for the converter.

Reads the safetensors files itself (not through edgekit.convert) and follows Hugging Face's
LlamaForCausalLM and Qwen2ForCausalLM: RMSNorm, rotary embeddings with rotate_half on the HF
weight layout (with Llama 3's frequency scaling), grouped-query attention, projection biases
when the checkpoint has them, SwiGLU. Everything in float64. T = tokens, D = hidden size,
H = query heads, K = key/value heads, d = head dim, F = feed-forward size, V = vocab.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


def load_weights(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint as float64, bf16 included (numpy has no bf16)."""
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    weights: dict[str, np.ndarray] = {}
    for name in files:
        weights.update(read_safetensors(folder / name))
    return weights


def read_safetensors(file: Path) -> dict[str, np.ndarray]:
    data = file.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        raw = data[8 + n + begin : 8 + n + end]
        if info["dtype"] == "BF16":  # bf16 bits are the top half of a float32
            array = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            array = np.frombuffer(raw, dtype={"F32": "<f4", "F16": "<f2"}[info["dtype"]])
        out[name] = array.reshape(info["shape"]).astype(np.float64)
    return out


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x: (T, D) -> (T, D), scaled by 1/rms over D, then by weight."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def llama3_inv_freq(inv_freq: np.ndarray, scaling: dict) -> np.ndarray:
    """transformers' _compute_llama3_parameters: slow rotations stretched by `factor`, fast ones kept,
    the band between blended. inv_freq: (d/2,) -> (d/2,)."""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_ctx = scaling["original_max_position_embeddings"]
    wavelen = 2 * np.pi / inv_freq
    scaled = np.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
    return np.where(medium, blended, scaled)


def rotary(n_tokens: int, head_dim: int, theta: float, scaling: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin: (T, d), HF's layout: the d/2 frequencies repeated twice (halves, not pairs)."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)  # (d/2,)
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
        inv_freq = llama3_inv_freq(inv_freq, scaling)
    angles = np.outer(np.arange(n_tokens), inv_freq)  # (T, d/2)
    angles = np.concatenate([angles, angles], axis=-1)  # (T, d)
    return np.cos(angles), np.sin(angles)


def rotate_half(x: np.ndarray) -> np.ndarray:
    """(..., d) -> (..., d): [x1, x2] -> [-x2, x1], halves of the last axis."""
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def attention(h: np.ndarray, w: dict[str, np.ndarray], cfg: dict, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Causal grouped-query self-attention. h: (T, D) -> (T, D)."""
    T = h.shape[0]
    H = cfg["num_attention_heads"]
    K = cfg.get("num_key_value_heads") or H
    d = cfg.get("head_dim") or cfg["hidden_size"] // H
    q = _linear(h, w, "self_attn.q_proj").reshape(T, H, d)  # (T, H, d)
    k = _linear(h, w, "self_attn.k_proj").reshape(T, K, d)  # (T, K, d)
    v = _linear(h, w, "self_attn.v_proj").reshape(T, K, d)  # (T, K, d)
    q = q * cos[:, None, :] + rotate_half(q) * sin[:, None, :]
    k = k * cos[:, None, :] + rotate_half(k) * sin[:, None, :]
    k = np.repeat(k, H // K, axis=1)  # (T, H, d): query head i reads kv head i // (H/K)
    v = np.repeat(v, H // K, axis=1)  # (T, H, d)
    scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(d)  # (H, T, T)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)  # (H, T, T)
    out = np.einsum("hts,shd->thd", probs, v).reshape(T, H * d)  # (T, H*d)
    return _linear(out, w, "self_attn.o_proj")  # (T, D)


def _linear(x: np.ndarray, w: dict[str, np.ndarray], name: str) -> np.ndarray:
    """x @ W.T (+ bias, for checkpoints with "attention_bias": true). x: (T, in) -> (T, out)."""
    return x @ w[f"{name}.weight"].T + w.get(f"{name}.bias", 0.0)


def mlp(h: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """SwiGLU. h: (T, D) -> (T, D)."""
    gate = h @ w["mlp.gate_proj.weight"].T  # (T, F)
    up = h @ w["mlp.up_proj.weight"].T  # (T, F)
    return (gate / (1 + np.exp(-gate)) * up) @ w["mlp.down_proj.weight"].T  # (T, D)


def forward(folder: Path, tokens: list[int], weights: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Logits (T, V) of the checkpoint in ``folder`` (or of ``weights`` with its config) for ``tokens``."""
    cfg = json.loads((folder / "config.json").read_text())
    return forward_weights(cfg, load_weights(folder) if weights is None else weights, tokens)


def forward_weights(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """Logits (T, V) of a Llama with config ``cfg`` and Hugging Face-named ``weights`` for ``tokens``."""
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    cos, sin = rotary(len(tokens), head_dim, theta, scaling)  # (T, d) each
    x = weights["model.embed_tokens.weight"][tokens]  # (T, D)
    for i in range(cfg["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        w = {name[len(prefix) :]: value for name, value in weights.items() if name.startswith(prefix)}
        x = x + attention(rms_norm(x, w["input_layernorm.weight"], eps), w, cfg, cos, sin)
        x = x + mlp(rms_norm(x, w["post_attention_layernorm.weight"], eps), w)
    x = rms_norm(x, weights["model.norm.weight"], eps)  # (T, D)
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])  # tied: the embeddings
    return x @ head.T  # (T, V)
