"""One HTTP request's job: submitted to the daemon core, its output carried into the event loop.

The core calls a Sink on its worker thread; ``LoopSink`` hands each chunk and the final
Outcome to the event loop (call_soon_threadsafe, no thread blocks). A client that goes
away cancels its job (core.cancel): a running job stops within a token, a queued one
leaves the queue. While nothing is being sent the daemon watches the connection itself,
from WATCH_AFTER_S into the wait (a stream's response watches it once it runs).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request as HttpRequest

from edgekit.engine.records import Chunk, Request, Result
from edgekit.errors import Busy

log = logging.getLogger(__name__)

FRONT_END = "http"  # the name the core's metrics count this front end's requests under
RETRY_AFTER_S = 2  # what a busy answer tells the client to wait
# A job still unanswered this long starts watching for its client leaving: a short answer (the
# common case) never pays for a watcher, a long one is cancelled at most this late.
WATCH_AFTER_S = 0.05


class ApiError(Exception):
    """An answer other than 200: each API renders it in its own error shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.retry_after_s = retry_after_s


# The core's Outcome codes -> (HTTP status, OpenAI error type). One table for both APIs.
OUTCOME_STATUS: dict[str, tuple[int, str]] = {
    "bad_request": (400, "invalid_request_error"),
    "context_overflow": (400, "invalid_request_error"),
    "too_large": (413, "invalid_request_error"),
    "busy": (503, "server_busy"),
    "expired": (503, "server_busy"),
    "draining": (503, "server_busy"),  # the daemon stopped before running it
    "timeout": (504, "timeout"),  # ran past limits.max_request_s; the engine was freed
    "duplicate": (409, "invalid_request_error"),
    "cancelled": (499, "cancelled"),  # the client left; nobody reads it
    "internal": (500, "server_error"),
}


def outcome_error(code: str, message: str) -> ApiError:
    status, kind = OUTCOME_STATUS.get(code, (500, "server_error"))
    return ApiError(status, message or code, kind, RETRY_AFTER_S if status == 503 else None)


@dataclass(frozen=True)
class Finished:
    """The last event of a job: its Result, or the ApiError it ended with; the core's timings."""

    result: Result | None
    error: ApiError | None = None
    queue_ms: float = 0.0
    engine_ms: float = 0.0

    def server_timing(self) -> dict[str, str]:
        """W3C Server-Timing: the core's queue and the engine's call (ms). A client's round trip minus
        these is what the HTTP front end added (benchmarks/bench_http.py measures it so)."""
        return {"Server-Timing": f"queue;dur={self.queue_ms:.3f}, engine;dur={self.engine_ms:.3f}"}


class LoopSink:
    """The core's Sink for one HTTP job: chunks and the end are handed to the event loop.

    One call_soon_threadsafe per event and one future per wait: the fewest wake-ups between
    the core's worker thread and the loop (each is a cross-core hop on the request's path).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: deque[Chunk | Finished] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.gone = False  # the client disconnected (set on the loop by HttpJob's watcher)

    def chunk(self, job: Any, seq: int, chunk: Chunk) -> None:
        self._put(chunk)

    def finish(self, job: Any, outcome: Any) -> None:
        if outcome.code == "result" and outcome.result is not None:
            self._put(Finished(outcome.result, None, outcome.queue_ms, outcome.engine_ms))
        else:
            self._put(Finished(None, outcome_error(outcome.code, outcome.message)))

    def _put(self, item: Chunk | Finished) -> None:
        try:
            self._loop.call_soon_threadsafe(self._arrive, item)
        except RuntimeError:  # the server's loop is closed (shutdown): nobody is listening
            pass

    def _arrive(self, item: Chunk | Finished) -> None:
        self._events.append(item)
        self.wake()

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self, before_sleep: Callable[[], None] | None = None) -> Chunk | Finished | None:
        """The next event; None once the client is gone (when disconnects are watched). ``before_sleep``
        runs just before the loop goes to sleep waiting for it."""
        while not self._events and not self.gone:
            self._waiter = self._loop.create_future()
            try:
                if before_sleep is not None:
                    before_sleep()
                    before_sleep = None
                await self._waiter
            finally:
                self._waiter = None
        return self._events.popleft() if self._events else None


class HttpJob:
    """A request for the core; iterate its events; close() cancels it unless finished.

    It is submitted by the first wait for its events (first_event, finished_of), as the last thing the
    event loop does before it sleeps: the core's worker, woken by the submit, then finds the GIL free
    instead of waking a second time for it (one cross-core hop, not two, on every request's path).
    A full queue raises ApiError 503 from there.
    """

    def __init__(self, core: Any, request: Request, stream: bool) -> None:
        self.core = core
        self.request = request
        self.stream = stream
        self.finished = False
        self.sink = LoopSink(asyncio.get_running_loop())
        self.job: Any = None  # the core's Job once submitted
        self._watcher: asyncio.Task[None] | None = None
        self._watch_timer: asyncio.TimerHandle | None = None

    def _submit(self) -> None:
        try:
            self.job = self.core.submit(self.request, self.sink, front_end=FRONT_END, stream=self.stream)
        except Busy as exc:
            self.finished = True  # nothing to cancel
            self.core.metrics.error(exc.code, FRONT_END)
            raise ApiError(503, str(exc), "server_busy", RETRY_AFTER_S) from None

    async def next(self) -> Chunk | Finished:
        item = await self.sink.get(self._submit if self.job is None else None)
        if item is None:  # only while watch()ing: first_event() handles it
            raise ApiError(499, "the client disconnected", "cancelled")
        self.finished = isinstance(item, Finished)
        return item

    def watch(self, http: HttpRequest) -> None:
        """Notice the client leaving (while no response is being sent: a stream's own sender watches then),
        from WATCH_AFTER_S on."""
        if self._watcher is None and self._watch_timer is None:
            self._watch_timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start_watching, http)

    def _start_watching(self, http: HttpRequest) -> None:
        self._watch_timer = None
        self._watcher = asyncio.get_running_loop().create_task(self._watch(http))

    def unwatch(self) -> None:
        """Stop watching, before anything else reads the connection's messages (a StreamingResponse does)."""
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def _watch(self, http: HttpRequest) -> None:
        while (await http.receive())["type"] != "http.disconnect":  # the body has been read already
            pass
        self.sink.gone = True
        self.sink.wake()

    def close(self) -> None:
        """The client is gone or the response failed: free the queue slot or the engine."""
        self.unwatch()
        if not self.finished:
            self.finished = True
            if self.job is not None:
                log.info("http: request %s cancelled (the client went away)", self.request.id)
                self.core.cancel(self.job)


async def first_event(http: HttpRequest, job: HttpJob) -> Chunk | Finished:
    """The job's first event, or cancel it if the client disconnects while it waits (queue, prompt)."""
    job.watch(http)
    try:
        return await job.next()
    except ApiError:
        job.close()
        raise
    finally:
        job.unwatch()


async def finished_of(http: HttpRequest, job: HttpJob) -> Finished:
    """Wait for the job's end (a job that does not stream gets no chunks), cancelling it if the client
    disconnects; its error raised, else the Finished with the Result and the core's timings."""
    job.watch(http)
    try:
        event = await job.next()
        while not isinstance(event, Finished):
            event = await job.next()
    except ApiError:
        job.close()
        raise
    finally:
        job.unwatch()
    if event.error is not None:
        raise event.error
    return event


async def result_of(http: HttpRequest, job: HttpJob) -> Result:
    """The job's Result (see finished_of)."""
    finished = await finished_of(http, job)
    assert finished.result is not None
    return finished.result
