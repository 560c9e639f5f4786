"""Read a Hugging Face checkpoint folder: config.json and safetensors, lazily.

We parse the safetensors headers ourselves and read tensor rows with ``os.preadv`` into
small buffers, because numpy has no bfloat16 (safetensors' numpy loader refuses bf16) and
because a memory map of a 2 GB checkpoint shows up in the process's RSS as it is touched.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.convert.halfcast import to_float32_from_half
from edgekit.errors import ModelFormatError
from edgekit.strict import read_json_object

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit

# safetensors dtype -> (numpy dtype holding the raw bits, bytes per element)
RAW_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # bfloat16 bits; widened to float32 by to_float32()
}


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live; nothing is read until read_rows()."""

    name: str
    file: Path
    dtype: str  # safetensors dtype: F32, F16 or BF16
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in file

    @property
    def row_size(self) -> int:
        """Elements per row (per first-axis index); a 1-D tensor is one row."""
        return int(np.prod(self.shape[1:])) if len(self.shape) > 1 else int(self.shape[0]) if self.shape else 1

    @property
    def n_rows(self) -> int:
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * RAW_DTYPES[self.dtype].itemsize

    def read_rows(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Raw rows [start, stop) as a (rows, row_size) array of the on-disk dtype, into ``out`` if given."""
        raw = RAW_DTYPES[self.dtype]
        if out is None:
            out = np.empty((stop - start, self.row_size), dtype=raw)
        begin = self.offset + start * self.row_size * raw.itemsize
        fd = os.open(self.file, os.O_RDONLY)
        try:
            got = os.preadv(fd, [memoryview(out).cast("B")], begin)
        finally:
            os.close(fd)
        if got != out.nbytes:
            raise ModelFormatError(f"{self.file}: truncated while reading {self.name} (re-download the checkpoint)")
        return out


def to_float32(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Widen raw F32/F16/BF16 rows to float32 (into ``out`` if given); bf16 is the top half of a float32's bits."""
    if raw.dtype == np.uint16:
        bits = np.left_shift(raw, np.uint32(16), dtype=np.uint32, out=None if out is None else out.view(np.uint32))
        return bits.view(np.float32)
    if raw.dtype == np.float16:
        return to_float32_from_half(raw, out)
    return raw.astype(np.float32, copy=False)


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder: its config and every tensor it holds, by Hugging Face name."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorRef]


def open_checkpoint(path: Path) -> Checkpoint:
    """Read config.json and every safetensors header; fail on anything missing or corrupt."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFormatError(f"{path} is not a folder (give the checkpoint folder with config.json)")
    config = read_json(path / "config.json", what="the model config")
    tensors: dict[str, TensorRef] = {}
    for file in _weight_files(path):
        tensors.update(read_header(file))
    return Checkpoint(path=path, config=config, tensors=tensors)


def read_json(file: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``file``, or ModelFormatError naming the file."""
    if not file.is_file():
        raise ModelFormatError(f"{file} is missing ({what}); is this a Hugging Face checkpoint folder?")
    return read_json_object(file, what, ModelFormatError, fix="re-download it")


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files of the checkpoint: the index's shards, or the single file."""
    index = path / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index, what="the shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFormatError(f"{index} has no weight_map; re-download it")
        files = [path / name for name in sorted(set(weight_map.values()))]
        for file in files:
            if not file.is_file():
                raise ModelFormatError(f"shard {file.name} named in {INDEX_FILE} is missing from {path} (re-download it)")
        return files
    if (path / SINGLE_FILE).is_file():
        return [path / SINGLE_FILE]
    if any(path.glob("*.bin")) or any(path.glob("*.pth")):
        raise ModelFormatError(
            f"{path} holds PyTorch .bin/.pth weights; only safetensors are supported (pull the safetensors revision)"
        )
    raise ModelFormatError(f"{path} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def read_header(file: Path) -> dict[str, TensorRef]:
    """Parse one safetensors header: 8-byte little-endian length, then a JSON table of tensors."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFormatError(f"{file} is too short to be safetensors (re-download it)")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise ModelFormatError(f"{file} has a broken safetensors header (length {n}); re-download it")
        try:
            table = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelFormatError(f"{file} has a broken safetensors header (not JSON); re-download it") from None
    if not isinstance(table, dict):
        raise ModelFormatError(f"{file} has a broken safetensors header (not a table); re-download it")
    table.pop("__metadata__", None)
    return {name: _tensor_ref(file, name, info, 8 + n, size) for name, info in table.items()}


def _tensor_ref(file: Path, name: str, info: Any, data_start: int, size: int) -> TensorRef:
    try:
        dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
    except (TypeError, KeyError, ValueError):
        raise ModelFormatError(f"{file}: tensor {name} has a broken header entry; re-download it") from None
    if dtype not in RAW_DTYPES:
        raise ModelFormatError(f"{file}: tensor {name} has dtype {dtype}; only {', '.join(RAW_DTYPES)} are supported")
    ref = TensorRef(name=name, file=file, dtype=dtype, shape=shape, offset=data_start + int(begin))
    if int(end) - int(begin) != ref.nbytes or data_start + int(end) > size:
        raise ModelFormatError(f"{file}: tensor {name} lies outside the file or has the wrong size (truncated? re-download it)")
    return ref
