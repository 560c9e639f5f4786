"""Recently answered request keys, kept on disk: the daemon's half of "answered exactly once".

The key of a request is appended here (a write, no fsync: SIGKILL cannot lose it, only
the page cache could) just before its answer is published, and fsynced once the broker has
acknowledged that answer, just before the request itself is acknowledged. A daemon killed
after answering but before acknowledging finds the key when the broker redelivers the
request, and acknowledges it without answering again. The one window left: killed
between the write and the answer leaving the socket (microseconds), the answer is lost.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from edgekit.atomic import write_text
from edgekit.errors import ConfigError

log = logging.getLogger(__name__)

COMPACT_EVERY = 10_000  # appends between rewrites of the file without the expired keys


class Journal:
    """Keys answered within the last ``window_s`` seconds, in an append-only file compacted now and then."""

    def __init__(self, path: Path, window_s: float) -> None:
        self.path = path
        self.window_s = window_s
        self._lock = threading.Lock()
        self._answered: dict[str, float] = {}
        self._file: Any = None
        self._appended = 0
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _owner_only(path.parent, 0o700)  # request ids and reply topics are the users' business
        except OSError as exc:
            raise ConfigError(f"state folder {path.parent}: {exc.strerror} (set daemon.state_dir)") from None
        self._load()
        self._compact()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            answered = self._answered.get(key)
        return answered is not None and time.time() - answered < self.window_s

    def __len__(self) -> int:
        return len(self._answered)

    def record(self, key: str) -> None:
        """Remember ``key`` as answered (in the kernel's page cache: it survives our death, not the box's)."""
        now = time.time()
        with self._lock:
            self._answered[key] = now
            self._file.write(json.dumps([now, key]) + "\n")
            self._file.flush()
            self._appended += 1
            if self._appended >= COMPACT_EVERY:
                self._compact()

    def sync(self) -> None:
        """Make the records durable: call before acknowledging the requests they answer.

        Outside the lock: an fsync can take seconds on a busy disk, and record() is on the
        path of every answer.
        """
        file = self._file
        try:
            os.fsync(file.fileno())
        except ValueError:  # closed by a compaction meanwhile, whose rewrite was fsynced
            pass

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def _compact(self) -> None:
        """Forget keys older than the window; rewrite the file atomically with the rest and append to it."""
        cutoff = time.time() - self.window_s
        self._answered = {k: t for k, t in self._answered.items() if t >= cutoff}
        if self._file is not None:
            self._file.close()
        write_text(self.path, "".join(json.dumps([t, k]) + "\n" for k, t in self._answered.items()))
        _owner_only(self.path, 0o600)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the daemon's life
        self._appended = 0

    def _load(self) -> None:
        """Read the entries within the window; a torn last line (a crash mid-write) is skipped."""
        cutoff = time.time() - self.window_s
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                stamp, key = json.loads(line)
            except (ValueError, TypeError):
                continue
            if stamp >= cutoff:
                self._answered[key] = stamp
        log.info("journal %s: %d answered request(s) within the last %.0f s", self.path, len(self._answered),
                 self.window_s)


def _owner_only(path: Path, mode: int) -> None:
    """Tighten ``path`` to ``mode`` when it is ours (a folder systemd made for us already is)."""
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o777 != mode:
        os.chmod(path, mode)
