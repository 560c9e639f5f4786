"""Memory figures around a benchmark: page cache for cold loads, peak RSS, GPU memory.

All best effort: a figure we cannot read is None, reported as "n/a", never a guess.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from edgekit.memory import process_memory_bytes

log = logging.getLogger(__name__)


def drop_from_page_cache(path: str | os.PathLike[str]) -> bool:
    """Ask the kernel to forget ``path``'s cached pages, so the next load reads the disk.

    posix_fadvise(DONTNEED) drops clean pages of this file only (no root needed); pages
    mapped by a running process stay. Returns False where the platform has no fadvise.
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        log.debug("cannot open %s to drop its cache: %s", path, exc)
        return False
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError as exc:
        log.debug("posix_fadvise failed on %s: %s", path, exc)
        return False
    finally:
        os.close(fd)


def peak_rss_bytes(pid: int | None, proc: Path = Path("/proc")) -> int | None:
    """VmHWM (peak resident set) of process ``pid`` from /proc/<pid>/status, in bytes."""
    return None if pid is None else process_memory_bytes(pid, "VmHWM", proc)


def gpu_memory_bytes(pid: int | None) -> int | None:
    """GPU memory used by ``pid`` (or the whole first GPU when per-process use is hidden), via NVML."""
    try:
        import pynvml  # from nvidia-ml-py, the optional "gpu" extra
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no GPU: NVML raises its own error types
        return None
    try:
        return _nvml_used(pynvml, pid)
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _nvml_used(pynvml, pid: int | None) -> int | None:  # type: ignore[no-untyped-def]
    total_used = 0
    for i in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(i)
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if p.pid == pid and p.usedGpuMemory:
                return int(p.usedGpuMemory)
        total_used += int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    return total_used or None
