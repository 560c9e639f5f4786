"""The engine's child process: load the model, then serve jobs sent over a pipe.

llama.cpp runs only here, so a crash in it (an abort on a bad file, a SIGKILL) ends
this process and not the caller. llama_cpp is imported inside main(), so the parent
never loads libllama. The parent starts us as ``python -m edgekit.engine
CONN_FD HEARTBEAT_FD CANCEL_FD`` (a plain subprocess: unlike multiprocessing's spawn,
it never re-imports the caller's __main__); CANCEL_FD is a memfd holding the shared
cancel flag, the prompt cache's counters and ours (EngineCounters), and the first message on CONN_FD is
(model path, Settings, PromptCacheConfig or None).

Messages, child -> parent: ("ready", ModelInfo) | ("error", error class name, message)
| Chunk | Result | ("tokens", [int]) | ("warmed", {states, bytes, ms}). Parent -> child:
("generate", EngineJob) | ("tokenize", text, add_bos, special) | ("warm_cache", recent) | ("close",).
A second pipe answers "ping" with "pong" from its own thread, so liveness can be
checked while a request runs (llama.cpp releases the GIL while it computes).
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import mmap
import signal
import threading
from multiprocessing.connection import Connection
import time
from typing import Any

from edgekit import errors
from edgekit.engine.prompt_cache import COUNTERS_OFFSET, SHARED_BYTES, Counters, PromptCache, PromptCacheConfig
from edgekit.engine.records import ModelInfo
from edgekit.settings import Settings, default_threads

log = logging.getLogger(__name__)


class EngineCounters(ctypes.Structure):
    """What the child counts for the parent, in the shared memfd after the prompt cache's counters."""

    _fields_ = [("tokenized", ctypes.c_long)]  # texts tokenized: each request's prompt, each tokenize()


SHARED_SIZE = SHARED_BYTES + ctypes.sizeof(EngineCounters)  # the memfd: cancel flag, cache counters, ours


def shared_flag(fd: int) -> ctypes.c_long:
    """A C long in shared memory (the memfd ``fd``): the cancel flag both processes see."""
    return ctypes.c_long.from_buffer(mmap.mmap(fd, SHARED_BYTES))


def shared_counters(fd: int) -> Counters:
    """The prompt cache's counters, after the cancel flag in the same memfd."""
    return Counters.from_buffer(mmap.mmap(fd, SHARED_BYTES), COUNTERS_OFFSET)


def shared_engine_counters(fd: int) -> EngineCounters:
    """The engine's own counters, after the prompt cache's in the same memfd."""
    return EngineCounters.from_buffer(mmap.mmap(fd, SHARED_SIZE), SHARED_BYTES)


def run_from_argv(argv: list[str]) -> None:
    """``python -m edgekit.engine CONN_FD HEARTBEAT_FD CANCEL_FD``."""
    conn, heartbeat = Connection(int(argv[0])), Connection(int(argv[1]))
    cancel_seq = shared_flag(int(argv[2]))
    try:
        model_path, settings, cache_config = conn.recv()
    except (EOFError, OSError):
        return
    main(model_path, settings, conn, heartbeat, cancel_seq, cache_config, shared_counters(int(argv[2])),
         shared_engine_counters(int(argv[2])))


def main(model_path: str, settings: Settings, conn: Any, heartbeat: Any, cancel_seq: Any,
         cache_config: PromptCacheConfig | None = None, counters: Counters | None = None,
         engine_counters: EngineCounters | None = None) -> None:
    """Load the model, say "ready" (or why not), then serve until "close" or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it cancels)
    threading.Thread(target=_answer_pings, args=(heartbeat,), daemon=True, name="heartbeat").start()
    try:
        llm, info, adapters = _load(model_path, settings)
        cache = _open_cache(model_path, settings, cache_config, counters)
    except errors.EdgekitError as exc:
        conn.send(("error", type(exc).__name__, str(exc)))
        return
    except Exception as exc:  # anything else llama-cpp-python raises while loading
        conn.send(("error", "EngineError", f"loading {model_path} failed: {type(exc).__name__}: {exc}"))
        return
    from edgekit.engine.generate import Runner

    conn.send(("ready", info))
    try:
        _serve(Runner(llm, cancel_seq, adapters, cache, engine_counters or EngineCounters()), conn)
    finally:
        if cache is not None:
            cache.close()


def _open_cache(model_path: str, settings: Settings, config: PromptCacheConfig | None,
                counters: Counters | None) -> PromptCache | None:
    """The prompt cache under this model's key (reads its folder's headers), or None when off."""
    import llama_cpp

    from edgekit.engine.prompt_cache import cache_key

    if config is None:
        return None
    try:
        key, label = cache_key(model_path, settings, llama_cpp.__version__)
        return PromptCache(config, key, label, settings.prompt_cache_mb << 20, counters or Counters())
    except OSError as exc:  # an unwritable cache folder costs speed, not the service
        log.warning("prompt cache off: cannot use %s (%s); fix its permissions or set cache_dir", config.dir, exc)
        return None


def _answer_pings(heartbeat: Any) -> None:
    while True:
        try:
            heartbeat.recv()
            heartbeat.send("pong")
        except (EOFError, OSError):
            return


def _serve(runner: Any, conn: Any) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message[0] == "close":
            return
        try:
            reply = _handle(runner, conn, message)
        except errors.EdgekitError as exc:
            reply = ("error", type(exc).__name__, str(exc))
        except OSError:  # the pipe broke mid-stream: the parent is gone
            return
        except Exception as exc:  # llama.cpp refused something: the request fails, we go on
            log.exception("engine worker: request failed")
            reply = ("error", "EngineError", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except OSError:
            return
        if message[0] == "generate":
            _after_reply(runner)


def _after_reply(runner: Any) -> None:
    """Work that may wait until the answer is sent (saving to the prompt cache); never fails a request."""
    try:
        runner.after_reply()
    except Exception:
        log.exception("engine worker: saving the prompt cache failed")


def _handle(runner: Any, conn: Any, message: tuple) -> Any:
    kind = message[0]
    if kind == "generate":
        return runner.run(message[1], conn.send)
    if kind == "tokenize":
        return ("tokens", runner.tokenize(*message[1:]))
    if kind == "warm_cache":
        return ("warmed", runner.warm_cache(message[1]))
    raise errors.EngineError(f"engine worker got an unknown message {kind!r}")


def _load(model_path: str, settings: Settings) -> tuple[Any, ModelInfo, Any]:
    import llama_cpp

    from edgekit.engine.adapters import Adapters

    t0 = time.perf_counter()
    try:
        llm = llama_cpp.Llama(model_path, verbose=False, **llama_kwargs(settings))
    except ValueError as exc:  # llama-cpp-python's way of saying the load failed
        if "context" in str(exc):
            raise errors.EngineError(
                f"llama.cpp loaded {model_path} but could not create a context of {settings.n_ctx} tokens: "
                "lower --ctx or free memory"
            ) from exc
        raise errors.ModelFormatError(
            f"llama.cpp could not load {model_path}: check it with `edgekit inspect {model_path}`"
        ) from exc
    adapters = Adapters(llm, settings.lora)  # once, with the model: requests only switch between them
    info = _model_info(llm, model_path, (time.perf_counter() - t0) * 1000)
    return llm, dataclasses.replace(info, adapters=adapters.names), adapters


def llama_kwargs(settings: Settings) -> dict[str, Any]:
    """Settings as llama_cpp.Llama's keyword arguments (KV types by gguf-py's names)."""
    from gguf import GGMLQuantizationType

    threads, threads_batch = settings.n_threads, settings.n_threads_batch or settings.n_threads
    if threads is None or threads_batch is None:  # no plan gave them: the plan's rule, for this machine
        auto, auto_batch = default_threads()
        threads, threads_batch = threads or auto, threads_batch or auto_batch
    return dict(
        n_ctx=settings.n_ctx,
        n_threads=threads,
        n_threads_batch=threads_batch,
        n_gpu_layers=settings.n_gpu_layers,
        n_batch=settings.n_batch,
        n_ubatch=settings.n_ubatch,
        flash_attn=settings.flash_attn,
        type_k=GGMLQuantizationType[settings.type_k.upper()].value,
        type_v=GGMLQuantizationType[settings.type_v.upper()].value,
        use_mmap=settings.use_mmap,
        use_mlock=settings.use_mlock,
        seed=settings.seed,
        logits_all=False,  # logits of the last token only: no per-token copy of the vocabulary
    )


def _model_info(llm: Any, model_path: str, load_ms: float) -> ModelInfo:
    import llama_cpp

    from edgekit.engine.generate import usable_context

    model = llm._model
    bos, eos = llm.token_bos(), llm.token_eos()
    return ModelInfo(
        path=model_path,
        n_ctx=usable_context(llm),
        n_ctx_train=llama_cpp.llama_model_n_ctx_train(llm.model),
        n_vocab=llm.n_vocab(),
        chat_template=llm.metadata.get("tokenizer.chat_template"),
        architecture=llm.metadata.get("general.architecture", "unknown"),
        quant=_level_name(llama_cpp.llama_model_ftype(llm.model)),
        load_ms=load_ms,
        bos_token=model.token_get_text(bos) if bos != -1 else "",
        eos_token=model.token_get_text(eos) if eos != -1 else "",
    )


def _level_name(ftype: int) -> str:
    """LLAMA_FTYPE_MOSTLY_Q4_K_M -> "Q4_K_M", by the one quant-level table."""
    from edgekit.quant_levels import level_of_file_type

    level = level_of_file_type(ftype)
    return level.name if level else f"ftype {ftype}"
