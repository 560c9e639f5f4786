"""Atomic file output: a crash or an error never leaves a partial file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgekit.errors import OutputError


def check_writable_dir(path: Path) -> Path:
    """Fail early, before hours of work, if ``path``'s folder cannot take a new file."""
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {parent} does not exist (create it first)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: folder {parent} is not writable (choose another output path)")
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder (give a file name)")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    The temp file lives in the same folder so the rename is atomic; on any error it is removed.
    """
    target = check_writable_dir(Path(path))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.resolve().parent)
    os.close(fd)
    tmp = Path(tmp_name)
    _chmod_like_open(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.resolve().parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def _chmod_like_open(path: Path) -> None:
    # mkstemp creates 0600; give the file the mode open() would (0666 less the umask),
    # so a model written by one user can be read by the service that runs it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def append_line(path: str | os.PathLike[str], line: str) -> Path:
    """Add one line to a text file so that readers see the old file or the old file plus the
    whole line, never half a line: under a lock, the file is rewritten beside it and renamed."""
    import fcntl  # POSIX only, as the rest of edgekit's service side

    target = Path(path)
    check_writable_dir(target)
    with open(target.with_name(f".{target.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = target.read_bytes() if target.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        return write_bytes(target, old + line.rstrip("\n").encode("utf-8") + b"\n")
