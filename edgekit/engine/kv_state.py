"""One sequence's KV state out of and into a llama.cpp context (child side), for the prompt cache.

llama.cpp keeps no logits in a sequence state, so a restored prefix always has its last
token evaluated again (Runner._reuse_prefix keeps at most all but one prompt token).
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
import numpy as np


def capture_state(llm: Any) -> bytes:
    """The KV state of the context's sequence (llama_state_seq_get_data), as bytes."""
    size = llama_cpp.llama_state_seq_get_size(llm.ctx, 0)
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_state_seq_get_data(llm.ctx, ctypes.cast(buf, ctypes.POINTER(ctypes.c_uint8)), size, 0)
    return buf.raw[:n]


def restore_state(llm: Any, tokens: np.ndarray, data: bytes) -> bool:
    """Put a saved state (checked by the cache) into the context; False if llama.cpp refuses it."""
    llm._ctx.kv_cache_seq_rm(0, 0, -1)
    llm.n_tokens = 0
    if len(tokens) > len(llm.input_ids):
        return False
    src = ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))
    if llama_cpp.llama_state_seq_set_data(llm.ctx, src, len(data), 0) == 0:
        llm._ctx.kv_cache_seq_rm(0, 0, -1)
        return False
    llm.input_ids[: len(tokens)] = tokens
    llm.n_tokens = len(tokens)
    return True
