"""The daemon core: one engine, one queue, one worker; front ends (MQTT, HTTP) feed it.

API (front ends are written against this):

    core = Core(config, [MqttFrontEnd(config), ...], notifier, reread)
    core.run()          # signals; engine first, then front_end.start(core); serve; drain; stop
    job = core.submit(request, sink, front_end="mqtt", stream=False, expires_at=None, owner=None)
                        # raises Busy when the queue is full or the daemon is draining
    core.cancel(job)    # queued: finished "cancelled" now; running: the engine stops within a token
    core.jobs_of(owner, request_id) -> [Job]   # id-based cancel and dedup, per requester
    core.metrics        # counters per front end; core.engine: the EngineLike
    core.snapshot()     # the metrics payload ({node}/metrics, GET /edgekit/metrics), model_loads included

Every accepted job ends in exactly one ``sink.finish(job, Outcome)``, called on the core's
worker thread (or at once for a cancel of a queued job, and at the drain with code
"draining" for jobs that never ran: MQTT leaves those unacknowledged for redelivery,
HTTP answers 503). Outcome codes: result, cancelled, expired, timeout, busy,
context_overflow, bad_request, too_large, internal, draining.

Threads: the worker (runs the engine, calls the sinks), the main thread (signals,
watchdog, reload, the drain at the end) and whatever each front end runs.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from edgekit.engine.records import Chunk, Request, Result
from edgekit.errors import EdgekitError, EngineError
from edgekit.serve.config import ServeConfig
from edgekit.serve.engines import EngineLike, open_engine, seconds_per_token, time_limit_s
from edgekit.serve.jobs import Job, JobQueue
from edgekit.serve.metrics import Metrics
from edgekit.serve.notify import Notifier

log = logging.getLogger(__name__)

JOIN_S = 5.0  # how long to wait for a cancelled request or a front end's last words
ABORT_AFTER_S = 5.0  # a request past its time limit that ignores its cancel this long: the worker is killed


@dataclass(frozen=True)
class Outcome:
    """How one job ended: what its front end answers."""

    code: str  # "result" or an error code (docs/protocol.md lists them)
    result: Result | None = None  # set when code == "result"
    message: str = ""  # human text for errors
    queue_ms: float = 0.0
    engine_ms: float = 0.0  # the engine's call as the core saw it (HTTP's Server-Timing): what a front end adds is the rest


class Sink(Protocol):
    """Where one job's output goes: the front end that took it. Called on the core's worker thread."""

    def chunk(self, job: Job, seq: int, chunk: Chunk) -> None: ...  # only when job.stream; must not block
    def finish(self, job: Job, outcome: Outcome) -> None: ...  # exactly once per accepted job


class FrontEnd(Protocol):
    """A wire format in front of the core (MQTT, HTTP)."""

    name: str  # "mqtt" | "http" (metrics are counted per name)

    def start(self, core: Core) -> None: ...  # connect / bind; may return before connected
    def draining(self) -> None: ...  # the drain begins: take no new work (MQTT says "stopping")
    def reloaded(self) -> None: ...  # the model changed (MQTT re-announces discovery)
    def stop(self) -> None: ...  # after the core's drain: last words, disconnect / unbind
    def healthy(self) -> bool: ...  # for the watchdog
    def describe(self) -> str: ...  # for READY's status text, e.g. "mqtt://host:1883 as edgekit/node"


class Core:
    """One model served to every front end; run() returns when a SIGTERM's drain is done."""

    def __init__(self, config: ServeConfig, front_ends: list[FrontEnd], notifier: Notifier | None = None,
                 reread: Callable[[], ServeConfig] | None = None) -> None:
        """reread: how SIGHUP reads the config again (the file, environment and flags it came from)."""
        self.config = config
        self.front_ends = front_ends
        self.notifier = notifier or Notifier()
        self._reread = reread
        self.metrics = Metrics()
        self.queue = JobQueue(config.limits.queue_size)
        self.engine: EngineLike | None = None
        self._lock = threading.Lock()  # guards _running
        self._engine_lock = threading.Lock()  # held by the worker for a whole request; a reload swaps under it
        self._running: Job | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._reload_requested = False
        self.draining = False
        self.unloaded = False  # keep_alive 0 freed the model; the next request loads it again
        self._unload_requested = False
        self._worker: threading.Thread | None = None
        self._per_token_s = 0.0  # measured at start, for the default time limit
        self._loads_closed = 0  # model loads of engines closed since (keep_alive 0, SIGHUP): model_loads() adds them
        self.failure: str | None = None  # why the core gave up (a dead thread): run() raises it

    # --- the API of the front ends ----------------------------------------------------------------

    def submit(self, request: Request, sink: Sink, *, front_end: str, stream: bool = False,
               expires_at: float | None = None, owner: str | None = None) -> Job:
        """Queue a request; Busy when the queue is full or the daemon drains (nothing was taken then)."""
        job = Job(request, sink, front_end, stream, expires_at, owner)
        self.queue.put(job)
        return job

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        with self._lock:
            running = self._running is job
        if running and self.engine is not None:  # None: still loading after keep_alive 0; the flag stops it
            self.engine.cancel(job.request_id)
        elif self.queue.remove(job):
            self._finish(job, Outcome("cancelled", message="cancelled while queued"))

    def jobs_of(self, owner: str | None, request_id: str) -> list[Job]:
        """The queued or running jobs of ``owner`` with this id."""
        with self._lock:
            running = [self._running] if self._running is not None else []
        return [j for j in running + self.queue.snapshot() if j.owner == owner and j.request_id == request_id]

    def cache_stats(self) -> Any:
        """The engine's prompt-cache counters (CacheStats), None without a cache; never waits."""
        engine = self.engine
        return engine.cache_stats() if engine is not None else None

    def model_loads(self) -> int:
        """Times a model was loaded since the start: the boot, a SIGHUP, a crashed worker's restart, a
        request after keep_alive 0. Switching LoRA adapters never adds one: the metrics prove it."""
        engine = self.engine
        return self._loads_closed + (getattr(engine, "load_count", 0) if engine is not None else 0)

    def snapshot(self) -> dict[str, Any]:
        """The metrics payload the front ends publish (MQTT {node}/metrics, HTTP GET /edgekit/metrics)."""
        return self.metrics.snapshot(len(self.queue), self.busy, self.cache_stats(), self.model_loads())

    @property
    def busy(self) -> bool:
        return self._running is not None

    def unload(self) -> None:
        """Free the model's memory once nothing runs or waits (Ollama's keep_alive 0); the next request loads it.

        Asked while a request runs, the worker unloads after it (unless more work is queued by then).
        """
        self._unload_requested = True
        if not self.busy:
            self._unload_if_idle()

    def _unload_if_idle(self) -> None:
        with self._engine_lock:
            if not self._unload_requested or self.engine is None or self.busy or len(self.queue) or self.draining:
                return
            self._loads_closed = self.model_loads()
            engine, self.engine, self.unloaded, self._unload_requested = self.engine, None, True, False
        engine.close()
        log.info("model unloaded (keep_alive 0); the next request loads it again")

    def load(self) -> None:
        """Load the model again after unload() (the next request does this itself)."""
        with self._engine_lock:
            self._ensure_engine()

    def _ensure_engine(self) -> EngineLike:
        """The engine, opened again if keep_alive 0 unloaded it (caller holds the engine lock)."""
        self._unload_requested = False  # a request came first: it keeps the model
        if self.engine is None:
            self.engine = open_engine(self.config.model, self.config.cache, self.config.cache_dir)
            self.unloaded = False
            log.info("model loaded again after keep_alive 0")
        return self.engine

    # --- lifecycle ----------------------------------------------------------------------------------

    def run(self) -> None:
        """Load, start the front ends, serve until SIGTERM/SIGINT, drain, stop.

        Raises EngineError when a thread of ours died: a bug, and systemd should restart us
        rather than keep an "online" daemon that answers nothing.
        """
        self._install_signals()
        self.start()
        try:
            self._serve()
        finally:
            self.stop()
        if self.failure is not None:
            raise EngineError(self.failure)

    def start(self) -> None:
        """Model first (READY means warm), then the front ends."""
        self.notifier.status("loading the model")
        measure = self._measure_speed if self.config.limits.max_request_s is None else None
        self.engine = open_engine(self.config.model, self.config.cache, self.config.cache_dir, before_warming=measure)
        self._worker = threading.Thread(target=self._work, name="edgekit-worker", daemon=True)
        self._worker.start()
        for front_end in self.front_ends:
            front_end.start(self)
        self.notifier.ready(f"serving {model_name(self.config)} on {self.describe()}")

    def _measure_speed(self, engine: EngineLike) -> None:
        """This box's decode speed, for the default time limit: before the prompt cache is warmed,
        whose newest state the measuring request would push out of the context."""
        self._per_token_s = seconds_per_token(engine)
        log.info("time limit per request: 30 s + 3 x %.0f ms per token of max_tokens and a quarter of the "
                 "context (set limits.max_request_s to fix it)", self._per_token_s * 1000)

    def describe(self) -> str:
        return ", ".join(front_end.describe() for front_end in self.front_ends)

    def request_stop(self) -> None:
        """Signal-safe: only set flags; the main loop does the rest."""
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    def stop(self) -> None:
        """The drain: no new work; finish (or cancel) the running request; then the front ends' last words."""
        if self.draining:
            return
        self.draining = True
        self.notifier.stopping("draining")
        for front_end in self.front_ends:
            front_end.draining()
        for job in self.queue.close():
            self._finish(job, Outcome("draining", message="the daemon stopped before running it"))
        self._finish_running(self.config.daemon.drain_timeout_s)
        for front_end in self.front_ends:
            front_end.stop()
        if self.engine is not None:
            self.engine.close()
        log.info("stopped cleanly")

    def healthy(self) -> bool:
        """Worth a watchdog ping: the engine answers, the worker lives, every front end is well."""
        worker_ok = self._worker is not None and self._worker.is_alive()
        engine_ok = self.unloaded if self.engine is None else self.engine.alive()
        return worker_ok and engine_ok and all(front_end.healthy() for front_end in self.front_ends)

    def _serve(self) -> None:
        watchdog_s = self.notifier.watchdog_interval_s
        next_watchdog = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(timeout=0.5)
            self._wake.clear()
            if self._reload_requested:
                self._reload()
            self._enforce_time_limit()
            if not self._worker.is_alive():
                self.failure = "the worker thread died (a bug, logged above): stopping so that systemd restarts us"
                log.error(self.failure)
                return
            now = time.monotonic()
            if watchdog_s and now >= next_watchdog:
                next_watchdog = now + watchdog_s
                if self.healthy():
                    self.notifier.watchdog()

    def _enforce_time_limit(self) -> None:
        """Past its limit the running job is cancelled; if it ignores that (stuck in C), its worker is killed."""
        with self._lock:
            job = self._running
        if job is None or job.started is None or job.time_limit_s is None:
            return
        over_s = time.monotonic() - job.started - job.time_limit_s
        if over_s > 0 and not job.timed_out:
            log.warning("request %s: past its time limit of %.0f s; cancelling it", job.request_id, job.time_limit_s)
            job.timed_out = True
            self.engine.cancel(job.request_id)
        elif over_s > ABORT_AFTER_S:
            self.engine.abort(job.request_id)

    def _finish_running(self, timeout_s: float) -> None:
        self._worker.join(timeout=timeout_s)
        if self._worker.is_alive():
            with self._lock:
                running = self._running
            if running is not None:
                log.warning("drain: cancelling request %s after %.0f s", running.request_id, timeout_s)
                running.cancelled = True
                self.engine.cancel(running.request_id)
            self._worker.join(timeout=JOIN_S)

    def _reload(self) -> None:
        """SIGHUP: read the [model] settings again, load that model, then swap; the front ends stay up."""
        self._reload_requested = False
        self.notifier.reloading("reloading the model")
        try:
            model = self._reread().model if self._reread else self.config.model
            new = open_engine(model, self.config.cache, self.config.cache_dir)
        except EdgekitError as exc:
            log.error("reload failed, still serving %s: %s", model_name(self.config), exc)
            self.notifier.ready(f"reload failed: {exc}")
            return
        with self._engine_lock:
            self._loads_closed = self.model_loads()
            old, self.engine = self.engine, new
            self.config = replace(self.config, model=model)
        if old is not None:  # None: keep_alive 0 had unloaded it
            old.close()
        for front_end in self.front_ends:
            front_end.reloaded()
        self.notifier.ready(f"serving {model_name(self.config)} (reloaded)")

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
        signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    # --- the worker ---------------------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self.queue.take()) is not None:
            with self._lock:
                self._running = job
            try:
                self._finish(job, self._outcome(job))
            finally:
                with self._lock:
                    self._running = None
            if self._unload_requested:
                self._unload_if_idle()

    def _finish(self, job: Job, outcome: Outcome) -> None:
        """Count it and hand it to its sink; a sink's failure is logged, never the worker's death."""
        if outcome.code == "result":
            self.metrics.served(outcome.result, job.front_end)
        elif outcome.code != "draining":
            self.metrics.error(outcome.code, job.front_end)
        try:
            job.sink.finish(job, outcome)
        except Exception:
            log.exception("request %s: its front end failed to answer it", job.request_id)

    def _outcome(self, job: Job) -> Outcome:
        if job.cancelled:
            return Outcome("cancelled", message="cancelled while queued")
        if job.expired():
            return Outcome("expired", message="the message expiry passed while queued")
        queue_ms = (time.monotonic() - job.received) * 1000
        try:
            with self._engine_lock:
                result = self._generate(job)
        except EdgekitError as exc:
            if job.timed_out:
                return self._timeout(job, queue_ms)
            return Outcome(exc.code, message=str(exc) or exc.code, queue_ms=queue_ms)
        except Exception as exc:  # a bug: the client still gets a typed answer
            log.exception("request %s failed", job.request_id)
            return Outcome("internal", message=f"{type(exc).__name__}: {exc}", queue_ms=queue_ms)
        if job.timed_out:
            return self._timeout(job, queue_ms)
        if result.finish_reason == "cancelled":
            return Outcome("cancelled", message=f"cancelled after {result.completion_tokens} tokens",
                           queue_ms=queue_ms)
        return Outcome("result", result, queue_ms=queue_ms, engine_ms=job.engine_ms)

    def _timeout(self, job: Job, queue_ms: float) -> Outcome:
        return Outcome("timeout", message=f"stopped after its time limit of {job.time_limit_s:.0f} s "
                       "(limits.max_request_s): simplify the request (a smaller JSON schema, fewer tokens)",
                       queue_ms=queue_ms)

    def _generate(self, job: Job) -> Result:
        """Run the engine; hand chunks to the sink as they come when the job streams."""
        request = job.request
        self._ensure_engine()
        job.time_limit_s = time_limit_s(request, self.engine.info.n_ctx, self._per_token_s,
                                        self.config.limits.max_request_s)
        job.started = time.monotonic()
        # Checked by the engine where it tokenizes the prompt: once, and counted as the model counts.
        # Only the Result is wanted unless the job streams: no wake-ups for chunks.
        request = replace(request, max_prompt_tokens=self.config.limits.max_prompt_tokens, max_tokens_must_fit=True,
                          stream_interval_ms=request.stream_interval_ms if job.stream else math.inf)
        seq = 0
        t_call = time.perf_counter()
        # A cancel or time limit that comes before the engine knows the request is read from the job.
        for item in self.engine.stream(request, cancelled=lambda: job.cancelled or job.timed_out):
            if isinstance(item, Result):
                job.engine_ms = (time.perf_counter() - t_call) * 1000
                return item
            if job.stream and isinstance(item, Chunk) and (item.text or item.tool_calls):
                job.sink.chunk(job, seq, item)
                seq += 1
        raise EngineError("the engine's stream ended without a result (a bug in the engine)")


def front_ends_for(config: ServeConfig) -> list[FrontEnd]:
    """The front ends the config enables: MQTT unless the broker is "none", HTTP when it listens."""
    front_ends: list[FrontEnd] = []
    if config.broker.url != "none":
        from edgekit.serve.mqtt.front import MqttFrontEnd

        front_ends.append(MqttFrontEnd(config))
    if config.http.listen is not None:
        from edgekit.serve.http import HttpFrontEnd

        front_ends.append(HttpFrontEnd(config))
    return front_ends


def model_name(config: ServeConfig) -> str:
    return config.model.path.name if config.model.path else "?"
