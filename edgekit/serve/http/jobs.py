"""One HTTP request's job: submitted to the daemon core, its output carried into the event loop.

The core calls a Sink on its worker thread; ``LoopSink`` hands each chunk and the final
Outcome to the event loop (call_soon_threadsafe, no thread blocks). A client that goes
away cancels its job (core.cancel): a running job stops within a token, a queued one
leaves the queue.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request as HttpRequest

from edgekit.engine.records import Chunk, Request, Result
from edgekit.errors import Busy

log = logging.getLogger(__name__)

FRONT_END = "http"  # the name the core's metrics count this front end's requests under
RETRY_AFTER_S = 2  # what a busy answer tells the client to wait


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
    """The last event of a job: its Result, or the ApiError it ended with."""

    result: Result | None
    error: ApiError | None = None


class LoopSink:
    """The core's Sink for one HTTP job: chunks and the end go into an asyncio queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.events: asyncio.Queue[Chunk | Finished] = asyncio.Queue()

    def chunk(self, job: Any, seq: int, chunk: Chunk) -> None:
        self._put(chunk)

    def finish(self, job: Any, outcome: Any) -> None:
        if outcome.code == "result" and outcome.result is not None:
            self._put(Finished(outcome.result))
        else:
            self._put(Finished(None, outcome_error(outcome.code, outcome.message)))

    def _put(self, item: Chunk | Finished) -> None:
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the server's loop is closed (shutdown): nobody is listening
            pass


class HttpJob:
    """A request submitted to the core; iterate its events; close() cancels it unless finished."""

    def __init__(self, core: Any, request: Request, stream: bool) -> None:
        self.core = core
        self.request = request
        self.finished = False
        self.sink = LoopSink(asyncio.get_running_loop())
        try:
            self.job = core.submit(request, self.sink, front_end=FRONT_END, stream=stream)
        except Busy as exc:
            core.metrics.error(exc.code, FRONT_END)
            raise ApiError(503, str(exc), "server_busy", RETRY_AFTER_S) from None

    async def next(self) -> Chunk | Finished:
        item = await self.sink.events.get()
        self.finished = isinstance(item, Finished)
        return item

    async def events(self) -> AsyncIterator[Chunk | Finished]:
        while not self.finished:
            yield await self.next()

    def close(self) -> None:
        """The client is gone or the response failed: free the queue slot or the engine."""
        if not self.finished:
            self.finished = True
            log.info("http: request %s cancelled (the client went away)", self.request.id)
            self.core.cancel(self.job)


async def first_event(http: HttpRequest, job: HttpJob) -> Chunk | Finished:
    """The job's first event, or cancel it if the client disconnects while it waits (queue, prompt)."""
    waiter = asyncio.ensure_future(job.next())
    gone = asyncio.ensure_future(_disconnected(http))
    try:
        await asyncio.wait({waiter, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not waiter.done():
        waiter.cancel()
        job.close()
        raise ApiError(499, "the client disconnected", "cancelled")
    return waiter.result()


async def result_of(http: HttpRequest, job: HttpJob) -> Result:
    """Wait for the job's Result (chunks are skipped), cancelling it if the client disconnects."""
    event = await first_event(http, job)
    while not isinstance(event, Finished):
        event = await first_event(http, job)
    if event.error is not None:
        raise event.error
    return event.result


async def _disconnected(http: HttpRequest) -> None:
    """Returns when the client has closed the connection (the body has been read already)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass
