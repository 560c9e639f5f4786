"""The parent-side Engine: one model in a worker process, one request at a time.

A crash of llama.cpp fails the request in flight with EngineError and the worker is
started again for the next one. Cancelling never raises: the request's stream ends
with a Result whose finish_reason is "cancelled" (with the text made so far).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from edgekit import errors
from edgekit.engine import tools as toolcalls
from edgekit.engine import worker
from edgekit.engine.adapters import check_adapter, check_adapter_files
from edgekit.engine.chat import ChatTemplate
from edgekit.engine.prompt_cache import CacheStats, PromptCacheConfig
from edgekit.engine.process import WorkerDied, WorkerProcess, is_error, unwrap
from edgekit.engine.records import Chunk, EngineJob, ModelInfo, Request, Result, Timings
from edgekit.errors import BadRequest, EngineError
from edgekit.settings import Settings

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 5.0
DRAIN_TIMEOUT_S = 10.0  # a cancelled request ends within a token; past this the worker is killed
CLOSE_TIMEOUT_S = 5.0


class Engine:
    """Runs one GGUF model with resolved settings; every caller (CLI, daemon, bench) uses it."""

    def __init__(
        self,
        model: Path,
        settings: Settings | None = None,
        *,
        validate: bool = True,
        restart: bool = True,
        start_timeout_s: float = 120,
        prompt_cache: PromptCacheConfig | None = None,
    ) -> None:
        self.model = Path(model)
        self.settings = settings or Settings()
        self.validate = validate
        self.restart = restart
        self.start_timeout_s = start_timeout_s
        self.prompt_cache = prompt_cache
        # The cancel flag lives in shared memory: the child reads it between tokens and
        # between graph nodes of a prompt batch, with no message to wait for. The prompt
        # cache's counters follow it, so metrics never wait for a running request.
        self._cancel_fd = os.memfd_create("edgekit-cancel")
        os.ftruncate(self._cancel_fd, worker.SHARED_SIZE)
        self._cancel_seq = worker.shared_flag(self._cancel_fd)
        self._cache_counters = worker.shared_counters(self._cancel_fd)
        self._counters = worker.shared_engine_counters(self._cancel_fd)
        self._cancel_seq.value = -1
        self._run_lock = threading.Lock()  # one request (or tokenize) in the child at a time
        self._state_lock = threading.Lock()  # guards the request bookkeeping below
        self._ping_lock = threading.Lock()
        self._worker: WorkerProcess | None = None
        self._info: ModelInfo | None = None
        self._template: ChatTemplate | None = None
        self._seq = 0
        self._current: tuple[str, int] | None = None  # (request id, seq) running in the child
        self._waiting: set[str] = set()
        self._cancel_early: set[str] = set()
        self.load_count = 0  # times a worker loaded the model; switching adapters never adds to it

    # --- lifetime ---------------------------------------------------------------------------

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Spawn the child and load the model; raises ModelFormatError or EngineError."""
        with self._run_lock:
            self._ensure_worker()

    def close(self) -> None:
        """Stop the child: cancel what runs, ask it to exit, then terminate (bounded)."""
        with self._state_lock:
            if self._current is not None:
                self._cancel_seq.value = self._current[1]
        locked = self._run_lock.acquire(timeout=CLOSE_TIMEOUT_S)
        try:
            self._stop_worker()
        finally:
            if locked:
                self._run_lock.release()

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise EngineError("the engine is not started: call start() or use `with Engine(...)`")
        return self._info

    @property
    def pid(self) -> int | None:
        """The worker process's id (None when no worker runs)."""
        current = self._worker
        return current.pid if current is not None else None

    def alive(self) -> bool:
        """True when the worker process is running and answers a ping (for systemd's watchdog)."""
        current = self._worker
        if current is None:
            return False
        with self._ping_lock:
            return current.ping(PING_TIMEOUT_S)

    # --- requests ---------------------------------------------------------------------------

    def warm(self, request: Request) -> Result:
        """Put the request's prompt into the prompt cache (restored or evaluated), generating nothing.

        The same as ``complete(replace(request, warm=True))``: for a front end's load/warm request
        (MQTT ``warm``, Ollama's empty-messages load). The Result has no text;
        ``timings.cached_prompt_tokens`` says how much of the prompt was cached already.
        """
        return self.complete(dataclasses.replace(request, warm=True))

    def warm_cache(self, recent: int = 4) -> dict[str, float]:
        """Read the ``recent`` most recently used saved states into RAM and restore the newest
        into the context (at boot, before READY); returns {states, bytes, ms}."""
        with self._run_lock:
            current = self._ensure_worker()
            try:
                current.send(("warm_cache", recent))
                return unwrap(current.recv(), "warmed")
            except WorkerDied:
                raise self._crashed(current, "warming the prompt cache") from None

    @property
    def tokenize_count(self) -> int:
        """Texts the worker has tokenized (each request's prompt, each tokenize()): a prompt costs one."""
        return int(self._counters.tokenized)

    def cache_stats(self) -> CacheStats | None:
        """The prompt cache's hits, misses and bytes (None when the engine runs without one); never waits."""
        return CacheStats.of(self._cache_counters) if self.prompt_cache is not None else None

    def stream(self, request: Request, cancelled: Callable[[], bool] | None = None) -> Iterator[Chunk | Result]:
        """Yield the answer's chunks in order (none with stream_interval_ms inf); the last item is the Result.

        ``cancelled``: the caller's own flag, read once the request is known here, so that a cancel()
        made before that (it returned False: the generator had not started) still stops it.
        """
        t_call = time.perf_counter()
        _check_request(request)
        check_adapter(request, self.settings)
        with self._state_lock:
            self._waiting.add(request.id)  # cancellable from here on
            if cancelled is not None and cancelled():
                self._cancel_early.add(request.id)
        try:
            self._run_lock.acquire()
        except BaseException:
            self._forget(request.id)
            raise
        try:
            current = self._ensure_worker()
            prompt, add_bos = self.prompt_text(request)
            plan = toolcalls.tool_plan(request, self._template.source if self._template else None)
            seq = self._begin(request.id)
            if seq is None:  # cancelled while it waited
                yield _cancelled_result(request, t_call)
                return
            yield from self._run(current, EngineJob(seq, request, prompt, add_bos, t_call, plan))
        finally:
            self._forget(request.id)
            self._run_lock.release()

    def complete(self, request: Request) -> Result:
        """Run a request to the end and return its Result."""
        # No one reads the chunks: the worker sends none (no pickling, no wake-up), the Result has it all.
        for item in self.stream(dataclasses.replace(request, stream_interval_ms=math.inf)):
            if isinstance(item, Result):
                return item
        raise EngineError("the engine's stream ended without a result")  # not reached

    def cancel(self, request_id: str) -> bool:
        """Cancel a running or waiting request (thread-safe); False if it is not known here."""
        with self._state_lock:
            if self._current is not None and self._current[0] == request_id:
                self._cancel_seq.value = self._current[1]
                return True
            if request_id in self._waiting:
                self._cancel_early.add(request_id)
                return True
        return False

    def abort(self, request_id: str) -> bool:
        """Kill the worker if ``request_id`` still runs (it did not stop at its cancel: a grammar stuck in
        C code); the request then fails and the next one starts a fresh worker. False if it is not running."""
        with self._state_lock:
            running = self._current is not None and self._current[0] == request_id
            current = self._worker if running else None
        if current is None:
            return False
        log.warning("engine: killing the worker to stop request %s", request_id)
        current.process.kill()
        return True

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        """The model's tokens for ``text`` (waits for a running request to finish)."""
        with self._run_lock:
            current = self._ensure_worker()
            try:
                current.send(("tokenize", text, add_bos, special))
                return unwrap(current.recv(), "tokens")
            except WorkerDied:
                raise self._crashed(current, "tokenize") from None

    def render_prompt(self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] = ()) -> str:
        """The prompt text the model's own chat template gives for ``messages`` and ``tools``
        (through the template, or edgekit's built-in tool prompt: tools.chat_messages)."""
        return self._render(Request(messages=tuple(messages), tools=tuple(tools)))

    def warm_up(self) -> Result:
        """One tiny request, so the first real one does not pay for cold caches."""
        return self.complete(Request(prompt="Hello", max_tokens=1))

    # --- internals --------------------------------------------------------------------------

    def prompt_text(self, request: Request) -> tuple[str, bool]:
        """The text the model will see for ``request`` (rendered with its tools) and whether a BOS goes first."""
        if request.prompt is not None:
            return request.prompt, True
        # The template writes any BOS itself (as Transformers' apply_chat_template does).
        return self._render(request), False

    def _render(self, request: Request) -> str:
        if self._template is None:
            raise BadRequest(f"{self.model.name} has no chat template: send a raw prompt (--raw) instead")
        messages, offered = toolcalls.chat_messages(request, self._template.source)
        return self._template.render(messages, add_generation_prompt=True, tools=offered)

    def _run(self, current: WorkerProcess, job: EngineJob) -> Iterator[Chunk | Result]:
        finished = False
        try:
            current.send(("generate", job))
            while True:
                item = current.recv()
                if isinstance(item, (Chunk, Result)) and item.request_id != job.request.id:
                    continue  # left over from an abandoned request: not ours
                if isinstance(item, Chunk):
                    yield item
                    continue
                finished = True
                if isinstance(item, Result):
                    yield item
                    return
                unwrap(item, "result")
        except WorkerDied:
            finished = True
            raise self._crashed(current, f"request {job.request.id}") from None
        finally:
            if not finished:  # the caller stopped reading: cancel, and keep the pipe in step
                self._drain(current, job.seq)

    def _drain(self, current: WorkerProcess, seq: int) -> None:
        self._cancel_seq.value = seq
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        try:
            while not isinstance(item := current.recv(deadline), Result) and not is_error(item):
                pass
        except (WorkerDied, TimeoutError):
            log.warning("engine: worker did not stop after a cancel; restarting it")
            self._stop_worker()
        except BaseException:  # interrupted while draining: a fresh worker keeps the pipe in step
            self._stop_worker()
            raise

    def _ensure_worker(self) -> WorkerProcess:
        """The ready worker, starting it or waiting for it first (caller holds the run lock)."""
        if self._worker is None:
            if self._info is not None and not self.restart:
                raise EngineError("the engine's worker is gone and restart=False: start a new Engine")
            self._spawn()
        current = self._worker
        assert current is not None
        if not current.ready:
            try:
                self._info = current.wait_ready(self.start_timeout_s)
                self.load_count += 1
            finally:
                if not current.ready:
                    self._worker = None
            self._template = _template_of(self._info)
            self._info = dataclasses.replace(self._info, supports_tools=toolcalls.supports_tools(self._info.chat_template))
        return current

    def _spawn(self) -> None:
        if self.validate:
            from edgekit import gguf_file

            info = gguf_file.validate(self.model)
            check_adapter_files(info.architecture, self.settings.lora)
        self._worker = WorkerProcess(self.model, self.settings, self._cancel_fd, self.prompt_cache)

    def _crashed(self, current: WorkerProcess, what: str) -> EngineError:
        """Reap a dead worker, start the next one (without waiting), and describe the failure."""
        how = current.reap()
        self._worker = None
        log.error("engine: worker died (%s) during %s", how, what)
        if self.restart:
            try:
                self._spawn()
            except errors.EdgekitError as exc:
                log.error("engine: could not restart the worker: %s", exc)
        return EngineError(
            f"the engine's worker died ({how}) during {what}; "
            + ("it is restarting: retry the request" if self.restart else "start the engine again")
        )

    def _stop_worker(self) -> None:
        current, self._worker = self._worker, None
        if current is not None:
            current.stop(CLOSE_TIMEOUT_S)

    def _begin(self, request_id: str) -> int | None:
        """Make the request the running one; None if it was cancelled while it waited."""
        with self._state_lock:
            self._waiting.discard(request_id)
            if request_id in self._cancel_early:
                return None
            self._seq += 1
            self._current = (request_id, self._seq)
            return self._seq

    def _forget(self, request_id: str) -> None:
        with self._state_lock:
            self._waiting.discard(request_id)
            self._cancel_early.discard(request_id)
            if self._current is not None and self._current[0] == request_id:
                self._current = None


def _check_request(request: Request) -> None:
    """Refuse malformed requests before they reach the child."""
    if (request.messages is None) == (request.prompt is None):
        raise BadRequest("a request needs either messages or a prompt (exactly one of them)")
    if request.messages is not None:
        toolcalls.check_messages(request.messages)
    if request.tools and request.prompt is not None:
        raise BadRequest("tools need chat messages (the chat template renders them), not a raw prompt")
    if request.tools and request.tool_choice != "none" and (request.json_schema is not None or request.grammar is not None):
        raise BadRequest("give tools or a JSON schema/grammar, not both: tool calls bring their own grammar")
    toolcalls.check_tools(request.tools)
    if request.max_tokens < 1:
        raise BadRequest(f"max_tokens is {request.max_tokens}: ask for at least 1")
    if not request.stream_interval_ms >= 0:  # NaN fails too
        raise BadRequest(f"stream_interval_ms is {request.stream_interval_ms}: give 0 (every token) or more")
    if request.temperature < 0 or not 0 < request.top_p <= 1:
        raise BadRequest("temperature must be >= 0 and top_p in (0, 1]")
    if request.json_schema is not None and request.grammar is not None:
        raise BadRequest("give a JSON schema or a grammar, not both")


def _template_of(info: ModelInfo) -> ChatTemplate | None:
    if not info.chat_template:
        return None
    try:
        return ChatTemplate(info.chat_template, info.bos_token, info.eos_token)
    except Exception as exc:  # a template that does not compile: raw prompts still work
        log.warning("engine: the model's chat template does not compile (%s); only raw prompts will work", exc)
        return None


def _cancelled_result(request: Request, t_call: float) -> Result:
    waited = (time.perf_counter() - t_call) * 1000
    return Result(request.id, "", "cancelled", 0, 0, Timings(queue_ms=waited, total_ms=waited))
