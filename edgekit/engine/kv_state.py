"""One sequence's KV state out of and into a llama.cpp context (child side), for the prompt cache.

llama.cpp keeps no logits in a sequence state, so a restored prefix always has its last
token evaluated again (Runner._reuse_prefix keeps at most all but one prompt token).
A state is tens of megabytes (22 MB for TinyLlama's 1,000 tokens): each is copied once
out of llama.cpp into a bytearray it fills in place, and handed back by pointer.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
import numpy as np


def capture_state(llm: Any) -> bytearray:
    """The KV state of the context's sequence (llama_state_seq_get_data), written straight into a bytearray."""
    size = llama_cpp.llama_state_seq_get_size(llm.ctx, 0)
    data = bytearray(size)
    view = _view(data)
    n = llama_cpp.llama_state_seq_get_data(llm.ctx, view, size, 0)
    del view  # the bytearray cannot shrink while ctypes holds its buffer
    del data[n:]  # in place (llama.cpp writes at most what get_size said)
    return data


def restore_state(llm: Any, tokens: np.ndarray, data: bytes | bytearray) -> bool:
    """Put a saved state (checked by the cache) into the context; False if llama.cpp refuses it."""
    llm._ctx.kv_cache_seq_rm(0, 0, -1)
    llm.n_tokens = 0
    if len(tokens) > len(llm.input_ids):
        return False
    if llama_cpp.llama_state_seq_set_data(llm.ctx, _view(data), len(data), 0) == 0:
        llm._ctx.kv_cache_seq_rm(0, 0, -1)
        return False
    llm.input_ids[: len(tokens)] = tokens
    llm.n_tokens = len(tokens)
    return True


def _view(data: bytes | bytearray) -> Any:
    """``data``'s own buffer as a uint8 array llama.cpp can take for a pointer, no copy."""
    if isinstance(data, bytearray):
        return (ctypes.c_uint8 * len(data)).from_buffer(data)
    return ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8))  # immutable bytes: read only
