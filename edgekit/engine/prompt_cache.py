"""The prompt cache: saved KV states of earlier prompts, in RAM and on disk, found by token prefix.

A request whose tokens share a prefix with any saved state gets that state restored
(llama.cpp's sequence state API) and evaluates only the rest. States stay in RAM up to
the plan's budget (Settings.prompt_cache_mb) and on disk (``PromptCacheConfig.dir``) up to a
size cap, least recently used first out; a restart finds them again. Every state is saved
under a key of the model file's identity, the settings that shape the KV cache and the
llama.cpp version, so a state is never restored into a model it was not made by. A LoRA
adapter changes every key and value the model computes, so a request that runs one looks up
and saves states under a key that adds the adapter file's identity and scale (adapter_key):
one cache and one RAM budget, states never mixed across adapters.

This module runs in the engine's child process; the parent only builds the config and
reads the shared counters (``CacheStats``).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.engine import cache_file
from edgekit.engine.cache_file import BadCacheFile

log = logging.getLogger(__name__)

HEADER_HASH_BYTES = 4 << 20  # the GGUF's metadata and tensor table sit in its first megabytes
# Settings that change what a KV state means (the rest, threads or batch sizes, do not).
# Later fields named rope_*/yarn_* are taken in too. The adapters loaded (Settings.lora) are not:
# they change nothing until a request applies one, and then adapter_key names it.
KV_SHAPING = ("n_ctx", "type_k", "type_v", "flash_attn")
KV_SHAPING_PREFIXES = ("rope_", "yarn_")


@dataclass(frozen=True)
class PromptCacheConfig:
    """Where and how much the cache keeps (its RAM budget is the plan's Settings.prompt_cache_mb)."""

    dir: Path | None = None  # states beyond RAM and across restarts; None = RAM only
    disk_mb: int = 2048  # cap on the folder's cache files (all models), least recently used out first
    min_tokens: int = 64  # shorter prefixes are not worth a state: neither saved nor restored


class Counters(ctypes.Structure):
    """The cache's figures in memory shared with the parent (written only by the child)."""

    _fields_ = [(name, ctypes.c_long) for name in
                ("hits", "misses", "restores", "saves", "dropped", "entries", "ram_bytes", "disk_bytes")]


COUNTERS_OFFSET = 8  # after the cancel flag in the engine's shared memfd
SHARED_BYTES = COUNTERS_OFFSET + ctypes.sizeof(Counters)


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of the counters: hits and misses count requests, bytes what is held now."""

    hits: int = 0  # requests whose prefix (>= min_tokens) came from a cached state
    misses: int = 0
    restores: int = 0  # states copied into llama.cpp from RAM or disk
    saves: int = 0
    dropped: int = 0  # bad files ignored and deleted
    entries: int = 0
    ram_bytes: int = 0
    disk_bytes: int = 0

    @classmethod
    def of(cls, counters: Counters) -> CacheStats:
        return cls(**{f.name: int(getattr(counters, f.name)) for f in fields(cls)})

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def cache_key(model_path: str, settings: Any, llama_version: str) -> tuple[bytes, str]:
    """The key states are saved under, and a label naming the model and settings for humans."""
    path = Path(model_path)
    kv = {f.name: getattr(settings, f.name) for f in fields(settings)
          if f.name in KV_SHAPING or f.name.startswith(KV_SHAPING_PREFIXES)}
    identity = {**file_identity(path), "kv": kv, "llama_cpp": llama_version}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).digest()
    label = f"{path.name} ctx {kv.get('n_ctx')} kv {kv.get('type_k')}/{kv.get('type_v')}"
    return key, label


def adapter_key(base: tuple[bytes, str], adapter_path: str, name: str, scale: float) -> tuple[bytes, str]:
    """The key (and label) of states made with a LoRA adapter applied at ``scale`` on the model of
    ``base`` (cache_key's): the adapter file's identity and the scale join the model's key."""
    identity = {"model_key": base[0].hex(), **file_identity(Path(adapter_path)), "scale": float(scale)}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).digest()
    return key, f"{base[1]} + LoRA {name} x{scale:g}"


def file_identity(path: Path) -> dict[str, Any]:
    """A file's size, mtime and the hash of its first megabytes (its GGUF header and tensor table)."""
    st = path.stat()
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(HEADER_HASH_BYTES)).hexdigest()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_sha256": head}


@dataclass
class _Entry:
    name: str
    key: bytes  # the model's (and adapter's) key it was made under: only that key finds it
    label: str
    tokens: np.ndarray
    size: int  # payload bytes
    data: bytes | bytearray | None = None  # in RAM when set
    header: cache_file.Header | None = None  # on disk when set
    last_used: float = 0.0


class PromptCache:
    """Saved states of one model: lookup by longest token prefix under the selected key (the bare
    model's, or with an adapter: select), LRU in RAM and on disk across all keys."""

    def __init__(self, config: PromptCacheConfig, key: bytes, label: str, ram_bytes: int, counters: Counters) -> None:
        self.config, self.key, self.label, self.ram_bytes = config, key, label, ram_bytes
        self.counters = counters
        self._entries: dict[str, _Entry] = {}
        self._scanned: set[bytes] = set()  # keys whose files on disk are indexed
        self._lock = threading.Lock()  # the writer thread updates entries and disk figures
        self._writes: queue.Queue[Any] = queue.Queue()
        self._writer: threading.Thread | None = None
        self._idle = threading.Event()  # clear while a request runs: the writer waits (hold_writes)
        self._idle.set()
        if config.dir is not None:
            config.dir.mkdir(parents=True, exist_ok=True)
            self._scan(key)
            self._enforce_disk_cap()
            self._writer = threading.Thread(target=self._write_loop, daemon=True, name="prompt-cache-writer")
            self._writer.start()
        self._publish()

    @property
    def min_tokens(self) -> int:
        return self.config.min_tokens

    def select(self, key: bytes, label: str) -> None:
        """Look up and save under ``key`` from now on (the request's adapter changed); its files on
        disk are indexed the first time."""
        self.key, self.label = key, label
        if self.config.dir is not None and key not in self._scanned:
            self._scan(key)
            self._publish()

    # --- lookup and load ---------------------------------------------------------------------

    def best(self, tokens: np.ndarray) -> tuple[str | None, int]:
        """The saved state sharing the longest prefix with ``tokens``, and that prefix's length."""
        best: tuple[int, int, str | None] = (0, 0, None)  # (shared, -size, name): the smaller state on a tie
        with self._lock:
            entries = [e for e in self._entries.values() if e.key == self.key]
        for entry in entries:
            best = max(best, (common_prefix(entry.tokens, tokens), -entry.size, entry.name))
        return best[2], best[0]

    def load(self, name: str) -> tuple[np.ndarray, bytes | bytearray] | None:
        """The state's tokens and bytes, checked; None (after one warning and a delete) if it is bad."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            return None
        entry.last_used = time.time()
        data = entry.data
        if data is None:
            data = self._read(entry)
            if data is None:
                return None
            self._keep_in_ram(entry, data)
        if entry.header is not None:
            cache_file.touch(self._path(entry.name))
        return entry.tokens, data

    def drop(self, name: str, why: str) -> None:
        """Forget a state llama.cpp refused (or a bad file), with one warning."""
        log.warning("prompt cache: ignoring and deleting %s: %s", self._path(name), why)
        with self._lock:
            self._entries.pop(name, None)
        self._path(name).unlink(missing_ok=True)
        self.counters.dropped += 1
        self._publish()

    def warm(self, count: int) -> tuple[int, int]:
        """Read the ``count`` most recently used states into RAM (within the budget); (states, bytes)."""
        with self._lock:
            recent = sorted((e for e in self._entries.values() if e.key == self.key), key=lambda e: -e.last_used)[:count]
        chosen, total = [], 0
        for entry in recent:
            if entry.data is None and total + entry.size > self.ram_bytes:
                continue
            chosen.append(entry)
            total += entry.size
        # Oldest first: load() marks each used now, so the newest must come last to stay the newest.
        loaded = [entry for entry in reversed(chosen) if self.load(entry.name) is not None]
        return len(loaded), sum(entry.size for entry in loaded)

    def most_recent(self) -> str | None:
        """The most recently used state under the selected key."""
        with self._lock:
            mine = [e for e in self._entries.values() if e.key == self.key]
        return max(mine, key=lambda e: e.last_used).name if mine else None

    # --- save ----------------------------------------------------------------------------------

    def wants(self, tokens: np.ndarray) -> bool:
        """Worth saving: at least min_tokens beyond what any saved state already holds."""
        if len(tokens) < self.min_tokens:
            return False
        _name, common = self.best(tokens)
        return len(tokens) - common >= self.min_tokens

    def hold_writes(self) -> None:
        """A request starts: disk writes wait until release_writes (they would take a core from llama.cpp)."""
        self._idle.clear()

    def release_writes(self) -> None:
        """The request is answered and its state saved: the writer may go on."""
        self._idle.set()

    def save(self, tokens: np.ndarray, data: bytes | bytearray) -> None:
        """Keep a new state: in RAM if the budget allows, written to disk in the background."""
        if self.config.dir is None and len(data) > self.ram_bytes:
            return
        if self.config.dir is not None and len(data) > self.config.disk_mb << 20:
            return
        tokens = np.array(tokens, dtype=np.int32)
        name = self.key.hex()[:16] + "-" + hashlib.sha256(tokens.tobytes()).hexdigest()[:24]
        entry = _Entry(name, self.key, self.label, tokens, len(data), last_used=time.time())
        with self._lock:
            superseded = [e.name for e in self._entries.values() if e.key == self.key
                          and e.name != name and common_prefix(e.tokens, tokens) == len(e.tokens)]
            for old in superseded:  # a saved prefix of this one: the new state holds it all
                self._entries.pop(old, None)
            self._entries[name] = entry
        self.counters.saves += 1
        self._keep_in_ram(entry, data)
        if self._writer is not None:
            self._writes.put((entry, data, superseded))
        self._publish()

    def close(self) -> None:
        """Let the writer finish what is queued (a clean exit loses no state)."""
        if self._writer is not None:
            self._idle.set()
            self._writes.put(None)
            self._writer.join()

    # --- internals -----------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        assert self.config.dir is not None
        return self.config.dir / (name + cache_file.SUFFIX)

    def _scan(self, key: bytes) -> None:
        """Index ``key``'s files (headers checked now, payloads when restored)."""
        self._scanned.add(key)
        prefix = key.hex()[:16] + "-"
        for path in cache_file.files_in(self.config.dir):
            if not path.name.startswith(prefix):
                continue  # another model's, settings' or adapter's states: theirs to use
            name = path.name.removesuffix(cache_file.SUFFIX)
            try:
                header = cache_file.read_header(path, key)
                mtime = path.stat().st_mtime
            except (BadCacheFile, OSError) as exc:
                self.drop(name, str(exc))
                continue
            with self._lock:
                self._entries.setdefault(name, _Entry(name, key, header.label, header.tokens, header.payload_len,
                                                      header=header, last_used=mtime))

    def _read(self, entry: _Entry) -> bytes | None:
        try:
            if entry.header is None:  # written by us while running and since evicted: read it afresh
                entry.header = cache_file.read_header(self._path(entry.name), entry.key)
            return cache_file.read_payload(self._path(entry.name), entry.header)
        except FileNotFoundError:  # cleared from outside (`edgekit cache clear`)
            with self._lock:
                self._entries.pop(entry.name, None)
            self._publish()
        except (BadCacheFile, OSError) as exc:
            self.drop(entry.name, str(exc))
        return None

    def _keep_in_ram(self, entry: _Entry, data: bytes | bytearray) -> None:
        """Hold ``data`` in RAM, evicting the least recently used states' bytes to stay in budget."""
        if len(data) > self.ram_bytes:
            self._publish()
            return
        with self._lock:
            entry.data = data
            held = sorted((e for e in self._entries.values() if e.data is not None), key=lambda e: e.last_used)
            total = sum(e.size for e in held)
            for old in held:
                if total <= self.ram_bytes:
                    break
                if old is entry:
                    continue
                old.data, total = None, total - old.size
                if old.header is None and self._writer is None:  # RAM only: the state is gone
                    self._entries.pop(old.name, None)
        self._publish()

    def _write_loop(self) -> None:
        while (item := self._writes.get()) is not None:
            entry, data, superseded = item
            try:
                entry.header = cache_file.write(self._path(entry.name), entry.key, entry.tokens, data, entry.label,
                                                pause=self._idle.wait)
            except (OSError, BadCacheFile) as exc:
                log.warning("prompt cache: could not write %s: %s", self._path(entry.name), exc)
            for old in superseded:
                self._path(old).unlink(missing_ok=True)
            self._enforce_disk_cap()

    def _enforce_disk_cap(self) -> None:
        """Delete the least recently used files of the folder (every key's) until it fits the cap."""
        assert self.config.dir is not None
        files = []
        for path in cache_file.files_in(self.config.dir):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, path))
        total, cap = sum(f[1] for f in files), self.config.disk_mb << 20
        for _mtime, size, path in sorted(files):
            if total <= cap:
                break
            path.unlink(missing_ok=True)
            total -= size
            self._forget_file(path)
        self.counters.disk_bytes = total
        self._publish()

    def _forget_file(self, path: Path) -> None:
        name = path.name.removesuffix(cache_file.SUFFIX)
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None:
                entry.header = None
                if entry.data is None:
                    self._entries.pop(name, None)

    def _publish(self) -> None:
        with self._lock:
            self.counters.entries = len(self._entries)
            self.counters.ram_bytes = sum(e.size for e in self._entries.values() if e.data is not None)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    m = min(len(a), len(b))
    differ = np.flatnonzero(a[:m] != b[:m])
    return int(differ[0]) if differ.size else m


def disk_files(folder: Path) -> list[cache_file.FileInfo]:
    """Every cache file in ``folder`` with its header facts, most recently used first (`edgekit cache list`)."""
    return sorted((cache_file.describe(p) for p in cache_file.files_in(folder)), key=lambda f: -f.mtime)


def clear(folder: Path) -> tuple[int, int]:
    """Delete every cache file in ``folder``; (files, bytes) removed (`edgekit cache clear`)."""
    count = size = 0
    for path in cache_file.files_in(folder):
        try:
            size += path.stat().st_size
            path.unlink()
            count += 1
        except FileNotFoundError:
            continue
    return count, size
