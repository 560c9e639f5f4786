"""Quantize a GGUF with llama.cpp's own quantizer, levels named as llama.cpp names them.

The work is llama_model_quantize (through llama-cpp-python, pinned because its params
struct changes between releases). We add what the C call lacks: a validated input, level
names with clear errors, progress from llama.cpp's per-tensor log lines, and outputs that
are validated and renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import Any

import llama_cpp

from edgekit import gguf_file
from edgekit.atomic import atomic_path, check_writable_dir
from edgekit.errors import OutputError, QuantizeError, UsageError
from edgekit.quant_levels import ALIASES, LEVELS, NO_QUANTIZER, UNQUANTIZED
from edgekit.settings import default_threads

log = logging.getLogger(__name__)

_TENSOR_LINE = re.compile(rb"\[\s*(\d+)\s*/\s*(\d+)\s*\]")
_STEM_PRECISION = re.compile(r"[-_.](f32|f16|bf16|fp16|fp32)$", re.IGNORECASE)
_GGML_LOG_LEVEL_ERROR = 4  # ggml.h: NONE, DEBUG, INFO, WARN, ERROR, CONT
_lock = threading.Lock()  # llama.cpp's log callback is global: one quantization at a time


@dataclass(frozen=True)
class QuantizeProgress:
    """Where a quantize call is: level i of n, tensor j of m, seconds since the level began."""

    level: str
    level_index: int
    level_count: int
    tensor_index: int
    tensor_count: int
    elapsed_s: float
    done: bool = False  # the level's output is validated and in place


@dataclass(frozen=True)
class QuantResult:
    """One quantized file, as validate() read it back."""

    level: str
    path: Path
    size: int
    bits_per_weight: float
    parameter_count: int
    seconds: float


ProgressFn = Callable[[QuantizeProgress], None]


def level_name(level: str) -> str:
    """Normalize a user's level name ("q4_k_m" -> "Q4_K_M"), or say which names exist."""
    name = level.strip().upper()
    name = ALIASES.get(name, name)
    known = quant_levels()
    if name in NO_QUANTIZER:
        raise UsageError(f"{name}: the llama.cpp edgekit is built with cannot write it; choose another level, e.g. Q4_K_M")
    if name not in known:
        raise UsageError(f"unknown quant level {level!r}; valid levels: {', '.join(known)}")
    if LEVELS[name].needs_imatrix:
        raise UsageError(
            f"{name} needs an imatrix (importance matrix), which edgekit does not compute; "
            "use Q2_K, Q3_K_S or a higher level"
        )
    return name


def quant_levels() -> list[str]:
    """The levels this build can write: the table's, as far as the pinned llama-cpp-python knows them."""
    return sorted(name for name, level in LEVELS.items() if name not in NO_QUANTIZER
                  and getattr(llama_cpp, f"LLAMA_FTYPE_{'ALL' if name == 'F32' else 'MOSTLY'}_{name}", None) == level.file_type)


def default_output(src: Path, level: str, out_dir: Path | None = None) -> Path:
    """``model-f16.gguf`` -> ``model-Q4_K_M.gguf``, beside the input or in ``out_dir``."""
    stem = _STEM_PRECISION.sub("", src.stem)
    return (out_dir or src.parent) / f"{stem}-{level}.gguf"


def quantize(
    src: Path,
    levels: list[str],
    out_dir: Path | None = None,
    output: Path | None = None,
    threads: int | None = None,
    allow_requantize: bool = False,
    progress: ProgressFn | None = None,
) -> list[QuantResult]:
    """Quantize ``src`` to each level; outputs go to ``output`` (one level) or ``out_dir``."""
    names = [level_name(level) for level in levels]
    if not names:
        raise UsageError("give at least one quant level, e.g. Q4_K_M")
    if output is not None and len(names) > 1:
        raise UsageError("-o/--output takes one level; for several use --out-dir")
    src = Path(src)
    info = _check_input(src, allow_requantize)
    if out_dir is not None and output is None:
        _make_out_dir(Path(out_dir))
    targets = [Path(output) if output else default_output(src, name, out_dir) for name in names]
    for target in targets:
        _check_output(src, target)
    return [
        _quantize_one(src, info, name, target, threads, allow_requantize, _indexed(progress, i, len(names)))
        for i, (name, target) in enumerate(zip(names, targets))
    ]


def quantize_file(
    src: Path,
    level: str,
    dst: Path,
    threads: int | None = None,
    allow_requantize: bool = False,
    progress: ProgressFn | None = None,
) -> QuantResult:
    """Quantize ``src`` to one ``level`` at ``dst``."""
    return quantize(src, [level], output=dst, threads=threads, allow_requantize=allow_requantize, progress=progress)[0]


def _check_input(src: Path, allow_requantize: bool) -> gguf_file.GGUFInfo:
    info = gguf_file.validate(src)  # a corrupt input must never reach llama.cpp
    quantized = sorted(set(info.quant_mix) - UNQUANTIZED)
    if quantized and not allow_requantize:
        raise UsageError(
            f"{src} is already quantized ({', '.join(quantized)}): quantize the f16/f32 original, "
            "or pass --allow-requantize to accept the extra quality loss"
        )
    return info


def _make_out_dir(out_dir: Path) -> None:
    """--out-dir names a folder: create it. -o names a file whose folder must exist, as convert's -o."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {out_dir}: {exc.strerror}") from None


def _check_output(src: Path, target: Path) -> None:
    check_writable_dir(target)
    if target.exists() and target.resolve() == src.resolve():
        raise OutputError(f"the output {target} is the input; choose another name with -o")


def _indexed(progress: ProgressFn | None, index: int, count: int) -> Callable[..., None]:
    def report(level: str, tensor: int, tensors: int, elapsed: float, done: bool = False) -> None:
        if progress is not None:
            progress(QuantizeProgress(level, index + 1, count, tensor, tensors, elapsed, done))

    return report


def _quantize_one(
    src: Path,
    info: gguf_file.GGUFInfo,
    level: str,
    dst: Path,
    threads: int | None,
    allow_requantize: bool,
    report: Callable[..., None],
) -> QuantResult:
    job = {"src": os.fspath(src), "ftype": LEVELS[level].file_type, "nthread": threads or default_threads()[1],
           "allow_requantize": allow_requantize}
    start = time.perf_counter()
    report(level, 0, len(info.tensors), 0.0)
    log.info("quantizing %s to %s with %d threads", src, level, job["nthread"])
    with atomic_path(dst) as tmp:  # removed on any error, Ctrl-C and the CLI's SIGTERM/SIGHUP included
        status, errors = _in_child({**job, "dst": os.fspath(tmp)},
                                   lambda i, n: report(level, i, n, time.perf_counter() - start))
        if status != 0:
            _raise_failure(src, level, status, errors)
        out = gguf_file.validate(tmp)
    seconds = time.perf_counter() - start
    report(level, len(info.tensors), len(info.tensors), seconds, done=True)
    return QuantResult(level, dst, out.size, out.bits_per_weight, out.parameter_count, seconds)


def _in_child(job: dict[str, Any], on_tensor: Callable[[int, int], None]) -> tuple[int, list[str]]:
    """Run llama_model_quantize in a child interpreter and relay its tensor count.

    llama.cpp's quantizer has no abort hook, and a KeyboardInterrupt raised in its log
    callback is swallowed by ctypes ("Exception ignored on calling ctypes callback"), so in
    our own process Ctrl-C would not stop it. A child we can kill stops at once.
    """
    conn, child_conn = Pipe(duplex=False)
    child = subprocess.Popen([sys.executable, "-m", "edgekit.quantize", str(child_conn.fileno()), json.dumps(job)],
                             pass_fds=(child_conn.fileno(),), stdin=subprocess.DEVNULL)
    child_conn.close()  # so that recv() sees EOF when the child dies
    try:
        return _relay(conn, child, on_tensor)
    finally:
        if child.poll() is None:  # interrupted: stop llama.cpp now; atomic_path removes the file
            child.kill()
        child.wait()
        conn.close()


def _relay(conn: Connection, child: subprocess.Popen, on_tensor: Callable[[int, int], None]) -> tuple[int, list[str]]:
    """Pass the child's ("tensor", i, n) messages on until its ("done", status, errors)."""
    while True:
        try:
            message = conn.recv()  # wakes for each message, and with EOFError when the child dies
        except EOFError:
            break
        if message[0] == "tensor":
            on_tensor(message[1], message[2])
        else:
            return message[1], message[2]
    code = child.wait()
    raise QuantizeError(f"llama.cpp's quantizer ended without a result ({_how_it_ended(code)}); "
                        "if memory ran out, retry with fewer --threads")


def _how_it_ended(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def _child_main(fd: int, job: dict[str, Any]) -> None:
    """The child's side: quantize, sending tensor counts and then the result down ``fd``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    conn = Connection(fd, readable=False)
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread, params.ftype, params.allow_requantize = job["nthread"], job["ftype"], job["allow_requantize"]
    with _llama_log(lambda i, n: conn.send(("tensor", i, n))) as errors:
        status = llama_cpp.llama_model_quantize(os.fsencode(job["src"]), os.fsencode(job["dst"]), ctypes.byref(params))
    conn.send(("done", status, errors))


def _raise_failure(src: Path, level: str, status: int, errors: list[str]) -> None:
    detail = errors[-1] if errors else f"status {status}"
    if "imatrix" in detail or "importance matrix" in detail:
        raise UsageError(f"{level} needs an imatrix (importance matrix) for this model; use a higher level")
    raise QuantizeError(f"llama.cpp could not quantize {src} to {level}: {detail}")


@contextlib.contextmanager
def _llama_log(on_tensor: Callable[[int, int], None]) -> Iterator[list[str]]:
    """Route llama.cpp's log to ours while quantizing: count "[ i/ N]" tensor lines, keep errors.

    The previous callback is restored afterwards; the ctypes callback object must outlive
    every call llama.cpp makes to it, so it lives until after the restore.
    """
    errors: list[str] = []

    def handle(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        match = _TENSOR_LINE.search(text or b"")
        if match:
            on_tensor(int(match.group(1)), int(match.group(2)))
        line = (text or b"").decode("utf-8", "replace").strip()
        if line and (level == _GGML_LOG_LEVEL_ERROR or "failed to quantize" in line):
            errors.append(line)
        if line:
            log.debug("llama.cpp: %s", line)

    callback = llama_cpp.llama_log_callback(_safe(handle))
    previous, user_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    with _lock:
        llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(user_data))
        llama_cpp.llama_log_set(callback, None)
        try:
            yield errors
        finally:
            llama_cpp.llama_log_set(previous, user_data)
    del callback


def _safe(handle: Callable[[int, bytes, ctypes.c_void_p], None]) -> Callable[[int, bytes, ctypes.c_void_p], None]:
    """An exception must not cross back into C: log it and carry on."""

    def call(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        try:
            handle(level, text, user_data)
        except Exception:  # noqa: BLE001 - any error here would abort inside llama.cpp
            log.exception("error in the llama.cpp log hook")

    return call


if __name__ == "__main__":  # the child of _in_child: python -m edgekit.quantize FD JOB_JSON
    _child_main(int(sys.argv[1]), json.loads(sys.argv[2]))
