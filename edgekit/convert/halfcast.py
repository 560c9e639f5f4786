"""float32 <-> float16 casts through ggml's SIMD row converters when llama-cpp-python is installed.

numpy's float32 -> float16 cast is scalar (about 4 ns an element here: 4.4 s for TinyLlama,
most of the conversion); ggml's F16C/AVX-512 loop is 20x faster and bit-identical (both
round to nearest even). Without llama-cpp-python, or on an unknown platform, numpy does it.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RowCast = Callable[[int, int, int], None]  # (src pointer, dst pointer, element count)
LIB_NAMES = {"linux": "libggml-cpu.so", "darwin": "libggml-cpu.dylib", "win32": "ggml-cpu.dll"}


@functools.cache
def _ggml_cast(symbol: str) -> RowCast | None:
    """ggml-cpu's ``symbol`` from llama-cpp-python's bundled libraries, without importing llama_cpp."""
    try:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            return None
        lib = Path(next(iter(spec.submodule_search_locations))) / "lib" / LIB_NAMES.get(sys.platform, "")
        fn = getattr(ctypes.CDLL(str(lib)), symbol)
    except (OSError, AttributeError, StopIteration) as exc:
        log.debug("ggml %s unavailable (%s); numpy casts instead", symbol, exc)
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64], None
    return fn


def _cast(x: np.ndarray, dtype: type, symbol: str, out: np.ndarray | None) -> np.ndarray:
    if out is None:
        out = np.empty(x.shape, dtype=dtype)
    fn = _ggml_cast(symbol)
    if fn is None:
        np.copyto(out, x, casting="unsafe")
        return out
    src = np.ascontiguousarray(x)
    assert out.flags.c_contiguous and out.shape == src.shape and out.dtype == dtype
    fn(src.ctypes.data, out.ctypes.data, src.size)
    return out


def to_float16(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 array -> float16 array of the same shape (written into ``out`` if given)."""
    return _cast(np.asarray(x, dtype=np.float32), np.float16, "ggml_cpu_fp32_to_fp16", out)


def to_float32_from_half(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float16 array -> float32 array of the same shape (written into ``out`` if given)."""
    return _cast(np.asarray(x, dtype=np.float16), np.float32, "ggml_cpu_fp16_to_fp32", out)
