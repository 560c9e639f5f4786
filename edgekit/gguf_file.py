"""Validate and describe a GGUF file before anything hands it to llama.cpp.

llama.cpp trusts its input: a truncated or corrupt file can crash it or make it read
past the end. So every stage calls ``validate`` first. It reads only the header, the
metadata and the tensor table (never tensor data), through bounds-checked reads, so a
bogus length cannot make us allocate or seek past the file.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import gguf
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, Keys

from edgekit.errors import ModelFormatError
from edgekit.quant_levels import UNQUANTIZED, level_of_file_type

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
_MAX_CONTEXT = 1 << 24  # context_length beyond 16M tokens is corrupt (llama.cpp would size buffers by it)

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
class QuantShare:
    """How many tensors, weights and bytes of one ggml type a file holds."""

    count: int
    n_elements: int
    nbytes: int


@dataclass(frozen=True)
class GGUFInfo:
    """What a valid GGUF file holds, read from its header and tensor table."""

    path: Path
    size: int
    version: int
    architecture: str
    name: str | None
    parameter_count: int
    file_type: str | None  # llama.cpp's name, e.g. "Q4_K_M", "F16"; None when not recorded
    quant_mix: dict[str, QuantShare]
    tensor_bytes: int
    context_length: int | None
    embedding_length: int | None
    feed_forward_length: int | None
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    vocab_size: int | None
    tokenizer_model: str | None
    chat_template: str | None
    provenance: dict[str, Any]
    layer_bytes: dict[int, int]  # tensor bytes per block index (blk.N.*)
    non_layer_bytes: int  # everything outside blocks: embeddings, output, final norm
    token_embd_bytes: int
    output_bytes: int  # 0 when the output projection is tied to the embeddings
    tensors: tuple[TensorInfo, ...] = field(repr=False)
    metadata: dict[str, Any] = field(repr=False)

    @property
    def bits_per_weight(self) -> float:
        """Tensor bits over parameter count: what a quant level really costs."""
        return 8 * self.tensor_bytes / self.parameter_count if self.parameter_count else 0.0

    @property
    def is_quantized(self) -> bool:
        """True when some weight matrix is stored in a quantized type (not F32/F16/BF16)."""
        return any(name not in UNQUANTIZED for name in self.quant_mix)

    def to_dict(self, tensors: bool = False) -> dict[str, Any]:
        """Plain data for JSON; the tensor table only on request (it is long)."""
        data = asdict(self)
        data["path"] = str(self.path)
        data["bits_per_weight"] = round(self.bits_per_weight, 3)
        data.pop("metadata")
        if not tensors:
            data.pop("tensors")
        return data


def validate(path: str | os.PathLike[str]) -> GGUFInfo:
    """Check that ``path`` is a complete, well-formed GGUF file and describe it.

    Raises ModelFormatError naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb", buffering=1 << 20) as f:
            reader = _Reader(f, path, size)
            version, metadata, tensors = _read_file(reader)
    except IsADirectoryError:
        raise ModelFormatError(f"{path}: is a folder, not a GGUF file") from None
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except PermissionError:
        raise ModelFormatError(f"{path}: cannot read it (permission denied)") from None
    return _describe(path, size, version, metadata, tensors)


read_info = validate


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


def _describe(path: Path, size: int, version: int, metadata: dict[str, Any], tensors: list[TensorInfo]) -> GGUFInfo:
    arch = metadata.get(Keys.General.ARCHITECTURE)
    if not isinstance(arch, str) or not arch:
        raise ModelFormatError(f"{path}: no {Keys.General.ARCHITECTURE} in the metadata; re-convert the model")

    def arch_key(template: str) -> Any:
        return _plain(metadata.get(template.format(arch=arch)))

    context = arch_key(Keys.LLM.CONTEXT_LENGTH)
    if context is not None and (not isinstance(context, int) or not 1 <= context <= _MAX_CONTEXT):
        raise ModelFormatError(f"{path}: {Keys.LLM.CONTEXT_LENGTH.format(arch=arch)} = {context!r} is not a "
                               f"plausible context length (1 to {_MAX_CONTEXT:,}); the file is corrupt: re-convert it")
    layers = _layer_bytes(tensors)
    tensor_bytes = sum(t.nbytes for t in tensors)
    return GGUFInfo(
        path=path, size=size, version=version, architecture=arch,
        name=metadata.get(Keys.General.NAME),
        parameter_count=sum(t.n_elements for t in tensors),
        file_type=_level_name(metadata.get(Keys.General.FILE_TYPE)),
        quant_mix=_quant_mix(tensors),
        tensor_bytes=tensor_bytes,
        context_length=context,
        embedding_length=arch_key(Keys.LLM.EMBEDDING_LENGTH),
        feed_forward_length=arch_key(Keys.LLM.FEED_FORWARD_LENGTH),
        block_count=arch_key(Keys.LLM.BLOCK_COUNT),
        head_count=arch_key(Keys.Attention.HEAD_COUNT),
        head_count_kv=arch_key(Keys.Attention.HEAD_COUNT_KV),
        vocab_size=arch_key(Keys.LLM.VOCAB_SIZE) or _length(metadata.get(Keys.Tokenizer.LIST)),
        tokenizer_model=metadata.get(Keys.Tokenizer.MODEL),
        chat_template=metadata.get(Keys.Tokenizer.CHAT_TEMPLATE),
        provenance={k: v for k, v in metadata.items() if k.startswith(("edgekit.", "general.source."))},
        layer_bytes=layers,
        non_layer_bytes=tensor_bytes - sum(layers.values()),
        token_embd_bytes=_bytes_of(tensors, "token_embd.weight"),
        output_bytes=_bytes_of(tensors, "output.weight"),
        tensors=tuple(tensors),
        metadata=metadata,
    )


def _plain(value: Any) -> Any:
    """Per-layer values (e.g. head counts) may be arrays; the planner wants one number."""
    if isinstance(value, list):
        return max(value) if value else None
    return value


def _length(value: Any) -> int | None:
    if isinstance(value, GGUFArray):
        return value.length
    return len(value) if isinstance(value, list) else None


def _level_name(value: Any) -> str | None:
    level = level_of_file_type(value)
    return level.name if level else None


def _quant_mix(tensors: list[TensorInfo]) -> dict[str, QuantShare]:
    mix: dict[str, QuantShare] = {}
    for t in tensors:
        old = mix.get(t.type, QuantShare(0, 0, 0))
        mix[t.type] = QuantShare(old.count + 1, old.n_elements + t.n_elements, old.nbytes + t.nbytes)
    return dict(sorted(mix.items(), key=lambda item: -item[1].nbytes))


_BLOCK_NAME = re.compile(r"blk\.(\d+)\.")


def _layer_bytes(tensors: list[TensorInfo]) -> dict[int, int]:
    layers: dict[int, int] = {}
    for t in tensors:
        match = _BLOCK_NAME.match(t.name)
        if match:
            index = int(match.group(1))
            layers[index] = layers.get(index, 0) + t.nbytes
    return dict(sorted(layers.items()))


def _bytes_of(tensors: list[TensorInfo], name: str) -> int:
    return next((t.nbytes for t in tensors if t.name == name), 0)
