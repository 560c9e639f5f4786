"""The daemon's counters (per front end and in total) and the {prefix}/metrics payload.

Field names are a contract: Home Assistant discovery (discovery.SENSORS) reads
queue_depth, last_ttft_ms, tokens_per_s, memory_mb and requests_served.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from edgekit.engine.records import Result
from edgekit.memory import process_memory_bytes

TTFT_SAMPLES = 512  # the window for the time-to-first-token percentiles


class Metrics:
    """Thread-safe counters updated by the worker and read by the metrics timer."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.requests_served = 0
        self.errors: Counter[str] = Counter()
        self._by_front_end: dict[str, Counter[str]] = {}  # front end -> {"served": n, "<code>": n}
        self.completion_tokens = 0
        self._ttft_ms: deque[float] = deque(maxlen=TTFT_SAMPLES)
        self._tokens_per_s = 0.0

    def served(self, result: Result, front_end: str = "mqtt") -> None:
        with self._lock:
            self.requests_served += 1
            self._by_front_end.setdefault(front_end, Counter())["served"] += 1
            self.completion_tokens += result.completion_tokens
            self._ttft_ms.append(result.timings.time_to_first_token_ms)
            self._tokens_per_s = result.timings.generation_tokens_per_s

    def error(self, code: str, front_end: str = "mqtt") -> None:
        with self._lock:
            self.errors[code] += 1
            self._by_front_end.setdefault(front_end, Counter())[code] += 1

    def snapshot(self, queue_depth: int, running: bool, cache: Any = None, model_loads: int = 0) -> dict[str, Any]:
        """The metrics payload; ``cache`` is the engine's CacheStats (zeros without a prompt cache),
        ``model_loads`` the times the model was loaded since the start (Core.model_loads)."""
        with self._lock:
            ttft = sorted(self._ttft_ms)
            return {
                "queue_depth": queue_depth,
                "running": running,
                "requests_served": self.requests_served,
                "errors": sum(self.errors.values()),
                "errors_by_code": dict(self.errors),
                "by_front_end": {name: dict(counts) for name, counts in self._by_front_end.items()},
                "completion_tokens": self.completion_tokens,
                "tokens_per_s": round(self._tokens_per_s, 2),
                "last_ttft_ms": round(self._ttft_ms[-1], 2) if self._ttft_ms else None,
                "ttft_p50_ms": _percentile(ttft, 50),
                "ttft_p95_ms": _percentile(ttft, 95),
                "memory_mb": round(process_tree_rss_bytes() / 2**20, 1),
                "uptime_s": round(time.monotonic() - self._started, 1),
                "model_loads": model_loads,
                **cache_fields(cache),
            }


def cache_fields(cache: Any) -> dict[str, Any]:
    """The prompt cache's part of the metrics: hits and misses count requests since the start."""
    return {
        "cache_hits": cache.hits if cache else 0,
        "cache_misses": cache.misses if cache else 0,
        "cache_restores": cache.restores if cache else 0,  # states copied into llama.cpp (at start too)
        "cache_entries": cache.entries if cache else 0,
        "cache_ram_mb": round(cache.ram_bytes / 2**20, 1) if cache else 0.0,
        "cache_disk_mb": round(cache.disk_bytes / 2**20, 1) if cache else 0.0,
    }


def _percentile(ordered: list[float], q: int) -> float | None:
    if len(ordered) < 2:
        return round(ordered[0], 2) if ordered else None
    return round(statistics.quantiles(ordered, n=100, method="inclusive")[q - 1], 2)


def process_tree_rss_bytes(pid: int | None = None) -> int:
    """Resident memory of this process and its children (the engine runs in a child process)."""
    pid = pid or os.getpid()
    total = process_memory_bytes(pid) or 0
    for child in _children(pid):
        total += process_tree_rss_bytes(child)
    return total


def _children(pid: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return pids
