"""The prompt cache's file format: a checked header, the token prefix, then llama.cpp's state.

A state is only ever handed to llama.cpp after its header (magic, version, key, sizes,
CRC of the header and tokens) and its payload's CRC have been checked, so a truncated,
corrupt or foreign file is refused here and never reaches llama_state_seq_set_data.

Layout (little-endian):
    magic "EKPCACHE" | version u32 | key 32 bytes | n_tokens u32 | payload_len u64
    | payload_crc u32 | label_len u16 | label (UTF-8) | tokens (int32 x n_tokens)
    | header_crc u32 | payload (llama_state_seq_get_data's bytes)
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import atomic

MAGIC = b"EKPCACHE"
VERSION = 1
SUFFIX = ".ekv"
_FIXED = struct.Struct("<8sI32sIQIH")
_CRC = struct.Struct("<I")
PIECE = 4 << 20  # bytes checksummed or written between two pause() calls
MAX_TOKENS = 1 << 22  # a header claiming more is corrupt (no context is that long)


class BadCacheFile(Exception):
    """The file is not a state we wrote for this key: the message says what is wrong."""


@dataclass(frozen=True)
class Header:
    """What a cache file says about itself; ``payload_offset`` is where llama.cpp's bytes start."""

    key: bytes
    tokens: np.ndarray  # int32, the prefix the state holds
    payload_len: int
    payload_crc: int
    label: str
    payload_offset: int


def encode_header(key: bytes, tokens: np.ndarray, payload_len: int, payload_crc: int, label: str) -> bytes:
    """The header of a payload (a sequence state) of the prefix ``tokens`` under ``key``."""
    label_bytes = label.encode("utf-8")[:1024]
    fixed = _FIXED.pack(MAGIC, VERSION, key, len(tokens), payload_len, payload_crc, len(label_bytes))
    body = fixed + label_bytes + np.asarray(tokens, dtype="<i4").tobytes()
    return body + _CRC.pack(zlib.crc32(body))


def write(path: Path, key: bytes, tokens: np.ndarray, payload: bytes | bytearray, label: str,
          pause: Callable[[], object] = lambda: None) -> Header:
    """Write one state atomically (a crash leaves the old file or none); returns its header.

    The payload is checksummed and written PIECE bytes at a time, calling ``pause()`` before
    each piece: the prompt cache's writer waits there while a request runs, so on a small box
    its tens of megabytes of CRC and copying never take a core from llama.cpp's threads.
    """
    view = memoryview(payload)
    crc = 0
    for at in range(0, len(view), PIECE):
        pause()
        crc = zlib.crc32(view[at:at + PIECE], crc)
    header = encode_header(key, tokens, len(view), crc, label)
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header)
        for at in range(0, len(view), PIECE):
            pause()
            f.write(view[at:at + PIECE])
    return Header(key, np.array(tokens, dtype=np.int32), len(view), crc, label, payload_offset=len(header))


def read_header(path: Path, key: bytes) -> Header:
    """The checked header of ``path``; BadCacheFile if it is short, corrupt or made for another key."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        fixed = f.read(_FIXED.size)
        if len(fixed) < _FIXED.size:
            raise BadCacheFile(f"truncated ({size} bytes, shorter than a header)")
        magic, version, file_key, n_tokens, payload_len, payload_crc, label_len = _FIXED.unpack(fixed)
        if magic != MAGIC:
            raise BadCacheFile("not an edgekit prompt-cache file")
        if version != VERSION:
            raise BadCacheFile(f"format version {version}, this edgekit reads {VERSION}")
        if n_tokens > MAX_TOKENS:
            raise BadCacheFile(f"corrupt header (claims {n_tokens} tokens)")
        rest = f.read(label_len + 4 * n_tokens + _CRC.size)
    offset = _FIXED.size + label_len + 4 * n_tokens + _CRC.size
    if len(rest) < offset - _FIXED.size:
        raise BadCacheFile(f"truncated ({size} bytes) inside the header")
    body, (header_crc,) = fixed + rest[:-_CRC.size], _CRC.unpack(rest[-_CRC.size:])
    if zlib.crc32(body) != header_crc:
        raise BadCacheFile("corrupt header (checksum mismatch)")
    if file_key != key:
        raise BadCacheFile("made for another model or other KV-cache settings")
    if size != offset + payload_len:
        raise BadCacheFile(f"truncated or padded: {size} bytes, the header says {offset + payload_len}")
    label = body[_FIXED.size:_FIXED.size + label_len].decode("utf-8", "replace")
    tokens = np.frombuffer(body, dtype="<i4", count=n_tokens, offset=_FIXED.size + label_len).astype(np.int32)
    return Header(file_key, tokens, payload_len, payload_crc, label, offset)


def read_payload(path: Path, header: Header) -> bytes:
    """The state bytes, checked against the header's CRC; BadCacheFile if they differ."""
    with open(path, "rb") as f:
        f.seek(header.payload_offset)
        payload = f.read(header.payload_len + 1)
    if len(payload) != header.payload_len:
        raise BadCacheFile(f"payload is {len(payload)} bytes, the header says {header.payload_len}")
    if zlib.crc32(payload) != header.payload_crc:
        raise BadCacheFile("corrupt payload (checksum mismatch)")
    return payload


@dataclass(frozen=True)
class FileInfo:
    """One cache file as `edgekit cache list` shows it (any key: no check against a model)."""

    path: Path
    size: int
    mtime: float  # last used: the cache touches a file when it restores it
    tokens: int | None  # None when the header is unreadable
    label: str


def describe(path: Path) -> FileInfo:
    """Header facts of any cache file, without knowing which model wrote it."""
    st = path.stat()
    try:
        with open(path, "rb") as f:
            magic, version, _key, n_tokens, _plen, _pcrc, label_len = _FIXED.unpack(f.read(_FIXED.size))
            label = f.read(label_len).decode("utf-8", "replace")
        if magic != MAGIC or version != VERSION:
            raise BadCacheFile("not ours")
        return FileInfo(path, st.st_size, st.st_mtime, n_tokens, label)
    except (struct.error, BadCacheFile, OSError):
        return FileInfo(path, st.st_size, st.st_mtime, None, "(unreadable)")


def files_in(folder: Path) -> list[Path]:
    """The cache files in ``folder`` (none if it does not exist)."""
    try:
        return sorted(p for p in folder.iterdir() if p.suffix == SUFFIX and p.is_file())
    except FileNotFoundError:
        return []


def touch(path: Path) -> None:
    """Mark a file used now (least-recently-used eviction reads mtimes, also after a restart)."""
    try:
        os.utime(path)
    except OSError:
        pass
