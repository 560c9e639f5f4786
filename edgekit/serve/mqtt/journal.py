"""Final answers' QoS 2 flows and answered request keys, on disk: the daemon's half of "answered exactly once".

A final answer goes at QoS 2, and each step of its flow is written here (a write and a
flush: in the kernel's page cache, which a SIGKILL cannot lose) before the packet it
describes leaves: ``sent`` with the answer and its packet id before the PUBLISH, ``released``
before the PUBREL, and the key as answered once the PUBCOMP is in (fsynced before the
request is acknowledged). A restarted daemon resumes each unfinished flow with its own
packet id (front.py), so the broker, which holds that id, never delivers the answer twice;
a redelivered request whose key is here is never run again.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgekit.atomic import write_text
from edgekit.errors import ConfigError

log = logging.getLogger(__name__)

COMPACT_EVERY = 10_000  # appends between rewrites of the file without the expired keys
CRASH_AT = os.environ.get("EDGEKIT_CRASH_AT")  # tests only: the step of an answer's flow to die at


@dataclass(frozen=True)
class Flow:
    """An unfinished QoS 2 flow of a final answer: all it takes to send it again with the same packet id."""

    key: str
    mid: int
    topic: str
    payload: bytes
    correlation: bytes | None
    state: str = "sent"  # "sent": the PUBLISH may be at the broker; "released": PUBREC in, PUBREL may be

    def to_json(self, stamp: float) -> dict[str, Any]:
        return {"t": stamp, "k": self.key, "s": "sent", "mid": self.mid, "topic": self.topic,
                "payload": base64.b64encode(self.payload).decode(),
                "cd": self.correlation.hex() if self.correlation is not None else None}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Flow:
        correlation = entry["cd"]
        return cls(entry["k"], int(entry["mid"]), entry["topic"], base64.b64decode(entry["payload"]),
                   bytes.fromhex(correlation) if correlation is not None else None)


def crash_point(step: str) -> None:
    """Tests only: SIGKILL ourselves at ``step`` when EDGEKIT_CRASH_AT names it, as a power cut would."""
    if CRASH_AT == step:
        os.kill(os.getpid(), signal.SIGKILL)


class Journal:
    """Unfinished answer flows, and keys answered within the last ``window_s`` seconds, in an append-only file."""

    def __init__(self, path: Path, window_s: float) -> None:
        self.path = path
        self.window_s = window_s
        self._lock = threading.Lock()
        self._answered: dict[str, float] = {}
        self._open: dict[str, Flow] = {}  # by request key
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
        """Whether ``key`` was answered (its flow complete) within the window."""
        with self._lock:
            answered = self._answered.get(key)
        return answered is not None and time.time() - answered < self.window_s

    def __len__(self) -> int:
        return len(self._answered)

    def open_flows(self) -> list[Flow]:
        """The flows a killed process left unfinished, oldest first: the restart resumes them."""
        with self._lock:
            return list(self._open.values())

    def sent(self, flow: Flow) -> None:
        """Before the PUBLISH of ``flow`` leaves: its answer and packet id (a re-sent flow replaces the key's last)."""
        with self._lock:
            self._open[flow.key] = flow
            self._append(flow.to_json(time.time()))

    def released(self, mid: int) -> bool:
        """Before the PUBREL of packet ``mid``: from now on the flow is resumed by a PUBREL, never a PUBLISH."""
        with self._lock:
            flow = next((f for f in self._open.values() if f.mid == mid), None)
            if flow is None:
                return False
            self._open[flow.key] = replace(flow, state="released")
            self._append({"t": time.time(), "k": flow.key, "s": "released", "mid": mid})
            return True

    def record(self, key: str) -> None:
        """Remember ``key`` as answered (its flow, if any, complete): a redelivery is acknowledged, not run."""
        now = time.time()
        with self._lock:
            self._answered[key] = now
            self._open.pop(key, None)
            self._append({"t": now, "k": key, "s": "done"})

    def _append(self, entry: dict[str, Any]) -> None:
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()  # in the page cache now: a SIGKILL of ours cannot lose it
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
        """Forget keys older than the window (never an unfinished flow); rewrite the file atomically and append to it."""
        cutoff = time.time() - self.window_s
        self._answered = {k: t for k, t in self._answered.items() if t >= cutoff}
        if self._file is not None:
            self._file.close()
        now = time.time()
        entries = [{"t": t, "k": k, "s": "done"} for k, t in self._answered.items()]
        for flow in self._open.values():
            entries.append(flow.to_json(now))
            if flow.state == "released":
                entries.append({"t": now, "k": flow.key, "s": "released", "mid": flow.mid})
        write_text(self.path, "".join(json.dumps(entry) + "\n" for entry in entries))
        _owner_only(self.path, 0o600)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the daemon's life
        self._appended = 0

    def _load(self) -> None:
        """Replay the file; a torn last line (a crash mid-write) is skipped."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                self._replay(json.loads(line))
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
        cutoff = time.time() - self.window_s
        self._answered = {k: t for k, t in self._answered.items() if t >= cutoff}
        log.info("journal %s: %d answered request(s) within the last %.0f s, %d answer(s) to finish sending",
                 self.path, len(self._answered), self.window_s, len(self._open))

    def _replay(self, entry: Any) -> None:
        if isinstance(entry, list):  # [stamp, key]: an answered key, as versions before the QoS 2 flows wrote it
            entry = {"t": entry[0], "k": entry[1], "s": "done"}
        state, key = entry["s"], entry["k"]
        if state == "sent":
            self._open[key] = Flow.from_json(entry)
        elif state == "released" and key in self._open and self._open[key].mid == entry["mid"]:
            self._open[key] = replace(self._open[key], state="released")
        elif state == "done":
            self._answered[key] = float(entry["t"])
            self._open.pop(key, None)


def _owner_only(path: Path, mode: int) -> None:
    """Tighten ``path`` to ``mode`` when it is ours (a folder systemd made for us already is)."""
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o777 != mode:
        os.chmod(path, mode)
