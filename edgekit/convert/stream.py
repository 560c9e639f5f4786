"""Tensors converted chunk by chunk as GGUFWriter writes them, so memory stays small.

A StreamedTensor looks to GGUFWriter like the numpy array it expects (shape, dtype, nbytes,
tofile); tofile() reads a few rows of the checkpoint at a time, permutes, converts, writes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

import gguf
import numpy as np
from gguf.quants import quant_shape_to_byte_shape, quantize

from edgekit.convert.checkpoint import RAW_DTYPES, TensorRef, to_float32
from edgekit.convert.halfcast import to_float16
from edgekit.convert.llama import permute_rows
from edgekit.quant_levels import LEVELS

Q = gguf.GGMLQuantizationType
# edgekit/llama.cpp output type name -> (GGML type of 2-D weights, llama.cpp file type), from the level table
OUTTYPES: dict[str, tuple[gguf.GGMLQuantizationType, int]] = {
    name: (Q[LEVELS[name.upper()].main_type], LEVELS[name.upper()].file_type)
    for name in ("f32", "f16", "bf16", "q8_0")
}
CHUNK_ELEMENTS = 1 << 20  # ~4 MB of float32 per step: cache-friendly, and RSS stays flat
NATIVE = {Q.F32: np.dtype(np.float32), Q.F16: np.dtype(np.float16)}  # types GGUFWriter infers from the dtype


def tensor_type(ref: TensorRef, outtype: str) -> gguf.GGMLQuantizationType:
    """The GGML type a tensor gets: 1-D tensors (norms, biases) stay F32 as in llama.cpp;
    rows that do not fill whole Q8_0 blocks fall back to F16, as llama.cpp's converter does."""
    qtype = OUTTYPES[outtype][0]
    if len(ref.shape) < 2:
        return Q.F32
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    return qtype if ref.row_size % block == 0 else Q.F16


class Workspace:
    """Chunk buffers reused from tensor to tensor: fresh ones cost a page fault per 4 KB."""

    def __init__(self) -> None:
        self._slots: dict[str, np.ndarray] = {}

    def array(self, slot: str, shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if slot not in self._slots or self._slots[slot].nbytes < nbytes:
            self._slots[slot] = np.empty(nbytes, dtype=np.uint8)
        return self._slots[slot][:nbytes].view(dtype).reshape(shape)


@dataclass
class StreamedTensor:
    """One checkpoint tensor, converted to ``qtype`` while it is written."""

    source: TensorRef
    qtype: gguf.GGMLQuantizationType
    permute_heads: int | None = None  # Q/K: rows are regrouped per head (see llama.permute_rows)
    delta: Callable[[int, int], np.ndarray] | None = None  # rows [start, stop) to add: a merged LoRA
    on_written: Callable[[], None] | None = None  # progress reporting
    workspace: Workspace = field(default_factory=Workspace)
    chunk_elements: int = CHUNK_ELEMENTS

    @property
    def dtype(self) -> np.dtype:
        return NATIVE.get(self.qtype, np.dtype(np.uint8))

    @property
    def shape(self) -> tuple[int, ...]:
        """Element shape for F32/F16; byte shape for BF16 and quantized types, as GGUFWriter expects."""
        if self.qtype in NATIVE:
            return self.source.shape
        return tuple(quant_shape_to_byte_shape(self.source.shape, self.qtype))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def tofile(self, fout: IO[bytes]) -> None:
        for start, stop in self._row_chunks():
            raw = self.workspace.array("raw", (stop - start, self.source.row_size), RAW_DTYPES[self.source.dtype])
            rows = self.source.read_rows(start, stop, out=raw)  # (rows, row_size), on-disk dtype
            if self.delta is not None:  # added in HF's row order, before the permutation
                rows = to_float32(rows) + self.delta(start, stop)  # (rows, row_size)
            if len(self.source.shape) < 2:
                rows = rows.reshape(-1, 1)  # (n, 1): a bias permutes element by element
            if self.permute_heads:
                rows = permute_rows(rows, self.permute_heads * (stop - start) // self.source.n_rows)
            self._encode(rows).tofile(fout)
        if self.on_written is not None:
            self.on_written()

    def _row_chunks(self) -> list[tuple[int, int]]:
        """Row ranges of about CHUNK_ELEMENTS; for Q/K, whole heads at a time."""
        n_rows = self.source.n_rows
        step = max(1, self.chunk_elements // self.source.row_size)
        if self.permute_heads and len(self.source.shape) > 1:
            head_rows = n_rows // self.permute_heads
            step = max(head_rows, step - step % head_rows)
        elif self.permute_heads:
            step = n_rows  # a 1-D bias: one read
        return [(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]

    def _encode(self, rows: np.ndarray) -> np.ndarray:
        """Raw rows -> bytes of ``qtype``, skipping the float32 detour when the types already match."""
        if self.qtype == Q.BF16 and rows.dtype == RAW_DTYPES["BF16"]:
            return rows
        if self.qtype == Q.F16 and rows.dtype == RAW_DTYPES["F16"]:
            return rows
        wide = to_float32(rows, out=self.workspace.array("f32", rows.shape, np.float32))  # (rows, row_size)
        if self.qtype == Q.F16:
            return to_float16(wide, out=self.workspace.array("f16", rows.shape, np.float16))
        if self.qtype == Q.F32:
            return wide
        return quantize(wide, self.qtype)
