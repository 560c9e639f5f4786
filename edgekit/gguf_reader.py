"""Read a GGUF file's header, metadata and tensor table through bounds-checked reads.

llama.cpp trusts its input: a truncated or corrupt file can crash it or make it read
past the end. This reader never reads tensor data, and checks every length against what
is left of the file before it allocates or seeks, so a bogus length fails as one
ModelFormatError naming the file and the place, never as a crash or a huge allocation.
edgekit.gguf_file turns what it reads into a GGUFInfo.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import gguf
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, Keys

from edgekit.errors import ModelFormatError

# struct formats of GGUF's fixed-size value types (all little-endian).
_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.FLOAT64: "<d",
    GGUFValueType.BOOL: "<?",
}
_SUPPORTED_VERSIONS = (2, 3)
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NAME = 64  # GGML_MAX_NAME: llama.cpp refuses longer tensor names
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, smallest value
_MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dim, type, offset
_SMALL_ARRAY = 64  # arrays up to this length are kept in metadata; longer ones by length
_BIG_STRING = 16 << 20  # strings longer than this are skipped, not read
_MAX_ARRAY_DEPTH = 2  # arrays of arrays: llama.cpp's own reader takes none; recursion must stay bounded
_MAX_ARRAY_ITEMS = 1 << 24  # the largest vocabularies and merge lists hold well under a million

# First bytes of files people mistake for GGUF, with what to tell them.
_FOREIGN_MAGICS: list[tuple[bytes, str]] = [
    (b"\x89PNG", "a PNG image"),
    (b"PK\x03\x04", "a zip archive (a PyTorch .bin/.pt checkpoint?); convert it with `edgekit convert`"),
    (b"version https://git-lfs", "a Git LFS pointer, not the model; fetch the real file (git lfs pull)"),
    (b"<!DOCTYPE", "an HTML page (a failed download?)"),
    (b"<html", "an HTML page (a failed download?)"),
    (b"lmgg", "a legacy GGML file; re-convert it to GGUF"),
    (b"fmgg", "a legacy GGMF file; re-convert it to GGUF"),
    (b"tjgg", "a legacy GGJT file; re-convert it to GGUF"),
]


@dataclass(frozen=True)
class GGUFArray:
    """A metadata array too long to keep: its item type and length."""

    item_type: str
    length: int


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the table; ``shape`` is in GGUF order (fastest dimension first)."""

    name: str
    type: str
    shape: tuple[int, ...]
    offset: int  # absolute, in bytes from the start of the file
    nbytes: int
    n_elements: int


@dataclass(frozen=True)
class GGUFTables:
    """What a file holds before anyone interprets it: checked, not yet described."""

    path: Path
    size: int
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]


def read_tables(path: Path) -> GGUFTables:
    """The header, metadata and tensor table of ``path``; ModelFormatError names what is wrong."""
    try:
        size = path.stat().st_size
        with open(path, "rb", buffering=1 << 20) as f:
            version, metadata, tensors = _read_file(_Reader(f, path, size))
    except IsADirectoryError:
        raise ModelFormatError(f"{path}: is a folder, not a GGUF file") from None
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except PermissionError:
        raise ModelFormatError(f"{path}: cannot read it (permission denied)") from None
    return GGUFTables(path, size, version, metadata, tensors)


class _Reader:
    """Bounds-checked little-endian reads from a buffered file; errors name the file and place."""

    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self.f, self.path, self.size, self.pos = f, path, size, 0
        self.where = "the header"
        self.depth = 0  # arrays being read inside one another

    def fail(self, problem: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {problem}")

    def remaining(self) -> int:
        return self.size - self.pos

    def take(self, n: int) -> bytes:
        if n > self.remaining():
            raise self.fail(
                f"truncated in {self.where}: needs bytes up to {self.pos + n:,} but the file has "
                f"{self.size:,}; re-download or re-convert"
            )
        data = self.f.read(n)
        if len(data) != n:
            raise self.fail(f"could not read {self.where} (file changed while reading?)")
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        if n > self.remaining():
            self.take(n)  # raises the truncation error
        self.f.seek(n, os.SEEK_CUR)
        self.pos += n

    def skip_strings(self, count: int) -> None:
        """Skip ``count`` length-prefixed strings, walking 1 MiB windows (vocabularies hold 100k+)."""
        while count:
            window = self.f.read(min(1 << 20, self.remaining()))
            end, done = 0, 0
            while done < count and end + 8 <= len(window):
                after = end + 8 + int.from_bytes(window[end : end + 8], "little")
                if after > len(window):
                    break
                end, done = after, done + 1
            self.f.seek(self.pos)
            if done == 0:  # one string longer than the window, or the file ends: checked reads
                self.skip(self.u64())
                done = 1
            else:
                self.skip(end)
            count -= done

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def u32(self) -> int:
        return self.scalar("<I")

    def u64(self) -> int:
        return self.scalar("<Q")

    def string(self, limit: int | None = None) -> str:
        length = self.u64()
        if length > self.remaining():
            raise self.fail(
                f"corrupt {self.where}: a string claims {length:,} bytes but only "
                f"{self.remaining():,} are left in the file; re-download or re-convert"
            )
        if limit is not None and length > limit:
            self.skip(length)
            return f"<{length:,} bytes>"
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"corrupt {self.where}: a string is not valid UTF-8") from None


def _read_file(r: _Reader) -> tuple[int, dict[str, Any], list[TensorInfo]]:
    version, n_tensors, n_kv = _read_header(r)
    metadata = {}
    for i in range(n_kv):
        r.where = f"metadata key #{i}"
        key = r.string(limit=1 << 16)
        if key in metadata:
            raise r.fail(f"corrupt metadata: key {key!r} appears twice")
        r.where = f"metadata key {key!r}"
        metadata[key] = _read_value(r, r.u32())
    alignment = _alignment(r, metadata)
    raw = [_read_tensor_info(r, i) for i in range(n_tensors)]
    data_start = -(-r.pos // alignment) * alignment
    return version, metadata, _place_tensors(r, raw, data_start, alignment)


def _read_header(r: _Reader) -> tuple[int, int, int]:
    if r.size == 0:
        raise r.fail("the file is empty (0 bytes); re-download or re-convert it")
    head = r.f.read(32)
    r.f.seek(0)
    if head[:4] != b"GGUF":
        raise r.fail(f"not a GGUF file: it is {_what_is(head)}")
    r.skip(4)
    version = r.u32()
    if version not in _SUPPORTED_VERSIONS:
        if int.from_bytes(version.to_bytes(4, "little"), "big") in _SUPPORTED_VERSIONS:
            raise r.fail("a big-endian GGUF, which llama.cpp on this box cannot load; convert it little-endian")
        raise r.fail(
            f"unsupported GGUF version {version}; edgekit reads versions "
            f"{' and '.join(map(str, _SUPPORTED_VERSIONS))}: re-convert the model"
        )
    n_tensors, n_kv = r.u64(), r.u64()
    needed = n_tensors * _MIN_TENSOR_BYTES + n_kv * _MIN_KV_BYTES
    if needed > r.remaining():
        raise r.fail(
            f"truncated or corrupt: the header claims {n_tensors:,} tensors and {n_kv:,} metadata keys, "
            f"more than a {r.size:,}-byte file can hold; re-download or re-convert"
        )
    return version, n_tensors, n_kv


def _what_is(head: bytes) -> str:
    for magic, what in _FOREIGN_MAGICS:
        if head.startswith(magic):
            return what
    if len(head) > 8 and head[8:9] == b"{":
        return "a safetensors checkpoint; convert it with `edgekit convert`"
    return f"unknown data starting with {head[:8]!r}"


def _read_value(r: _Reader, type_id: int) -> Any:
    kind = _value_type(r, type_id)
    if kind == GGUFValueType.STRING:
        return r.string(limit=_BIG_STRING)
    if kind == GGUFValueType.ARRAY:
        return _read_array(r)
    return r.scalar(_SCALAR_FORMATS[kind])


def _value_type(r: _Reader, type_id: int) -> GGUFValueType:
    try:
        return GGUFValueType(type_id)
    except ValueError:
        raise r.fail(f"corrupt {r.where}: unknown value type {type_id}; re-download or re-convert") from None


def _read_array(r: _Reader) -> Any:
    r.depth += 1
    try:
        return _read_array_items(r)
    finally:
        r.depth -= 1


def _read_array_items(r: _Reader) -> Any:
    if r.depth > _MAX_ARRAY_DEPTH:
        raise r.fail(f"corrupt {r.where}: arrays nested more than {_MAX_ARRAY_DEPTH} deep; re-convert the model")
    item_type = _value_type(r, r.u32())
    length = r.u64()
    if length > _MAX_ARRAY_ITEMS:
        raise r.fail(f"corrupt {r.where}: an array of {length:,} items (the limit is {_MAX_ARRAY_ITEMS:,}); "
                     "re-download or re-convert")
    item_size = struct.calcsize(_SCALAR_FORMATS[item_type]) if item_type in _SCALAR_FORMATS else 8
    if length * item_size > r.remaining():
        raise r.fail(
            f"corrupt {r.where}: an array claims {length:,} items, more than the file can hold; "
            "re-download or re-convert"
        )
    if length <= _SMALL_ARRAY:
        return [_read_value(r, item_type) for _ in range(length)]
    if item_type in _SCALAR_FORMATS:
        r.skip(length * item_size)
    elif item_type == GGUFValueType.STRING:
        r.skip_strings(length)
    else:
        for _ in range(length):
            _read_value(r, item_type)  # nested arrays: rare, small in practice
    return GGUFArray(item_type.name, length)


def _alignment(r: _Reader, metadata: dict[str, Any]) -> int:
    alignment = metadata.get(Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise r.fail(f"corrupt metadata: {Keys.General.ALIGNMENT} is {alignment!r}, not a power of two")
    return alignment


def _read_tensor_info(r: _Reader, index: int) -> tuple[str, int, tuple[int, ...], int]:
    r.where = f"tensor info #{index}"
    name = r.string(limit=1 << 16)
    r.where = f"tensor info {name!r}"
    if not name or len(name.encode()) >= _MAX_NAME:
        raise r.fail(f"corrupt {r.where}: tensor names must be 1 to {_MAX_NAME - 1} bytes")
    n_dims = r.u32()
    if not 1 <= n_dims <= _MAX_DIMS:
        raise r.fail(f"corrupt {r.where}: {n_dims} dimensions (GGUF allows 1 to {_MAX_DIMS})")
    shape = tuple(r.u64() for _ in range(n_dims))
    type_id, offset = r.u32(), r.u64()
    return name, type_id, shape, offset


def _place_tensors(
    r: _Reader, raw: list[tuple[str, int, tuple[int, ...], int]], data_start: int, alignment: int
) -> list[TensorInfo]:
    """Check types, shapes and offsets the way llama.cpp will: data packed in order, aligned."""
    tensors, seen, expected = [], set(), 0
    for name, type_id, shape, offset in raw:
        r.where = f"tensor {name!r}"
        if name in seen:
            raise r.fail(f"corrupt tensor table: {name!r} appears twice")
        seen.add(name)
        qtype, nbytes, n_elements = _tensor_size(r, type_id, shape)
        if offset != expected:
            raise r.fail(
                f"corrupt tensor table: {name!r} has data offset {offset:,}, expected {expected:,}; "
                "re-download or re-convert"
            )
        end = data_start + offset + nbytes
        if end > r.size:
            raise r.fail(
                f"truncated: tensor {name} needs bytes up to {end:,} but the file has {r.size:,}; "
                "re-download or re-convert"
            )
        tensors.append(TensorInfo(name, qtype.name, shape, data_start + offset, nbytes, n_elements))
        expected = offset + -(-nbytes // alignment) * alignment
    return tensors


def _tensor_size(r: _Reader, type_id: int, shape: tuple[int, ...]) -> tuple[GGMLQuantizationType, int, int]:
    try:
        qtype = GGMLQuantizationType(type_id)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise r.fail(
            f"corrupt {r.where}: unknown tensor type {type_id} (not a ggml type this gguf-py knows); "
            "re-download, or upgrade edgekit if the file is newer"
        ) from None
    n_elements = 1
    for dim in shape:
        n_elements *= dim
    if n_elements >= 1 << 63 or n_elements * type_size // block_size > r.size:
        raise r.fail(f"corrupt {r.where}: shape {list(shape)} is larger than the whole file")
    if shape[0] % block_size:
        raise r.fail(
            f"corrupt {r.where}: first dimension {shape[0]} is not a multiple of {qtype.name}'s block of {block_size}"
        )
    return qtype, n_elements // block_size * type_size, n_elements
