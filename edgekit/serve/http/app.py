"""The ASGI app: Ollama's and OpenAI's routes (Starlette's router) behind one API-key check and one body limit.

Every error leaves in the shape of the API its path belongs to (``/v1/...``: OpenAI's
``{"error": {"message", "type", "code"}}``, else Ollama's ``{"error": "..."}``) with its
status; an unexpected exception is logged with its traceback and answered 500 without it.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgekit.engine.records import Request
from edgekit.errors import BadRequest
from edgekit.serve.config import LimitsConfig
from edgekit.serve.http.jobs import FRONT_END, ApiError
from edgekit.serve.requests import check_request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpSettings:
    """What the app needs besides the core: resolved from [http] and the secret's file."""

    model_name: str
    model_path: Path | None = None
    limits: LimitsConfig = LimitsConfig()
    api_key: str | None = None
    max_body_bytes: int = 1_048_576


def build_app(core: Any, settings: HttpSettings) -> ASGIApp:
    """The ASGI app serving ``core``: routes of both APIs, errors in their shapes, key and size checks."""
    from edgekit.serve.http import ollama, openai  # they import this module's helpers

    # POST routes first (chat, generate and completions among them): the router tries each route in turn.
    table = sorted((*ollama.ROUTES, *openai.ROUTES), key=lambda route: "POST" not in route[1])
    routes = [Route(path, Endpoint(handler), methods=methods) for path, methods, handler in table]
    routes.append(Route("/edgekit/metrics", Endpoint(metrics), methods=["GET"]))
    return Api(Router(routes), core, settings)


class Endpoint:
    """A route's ASGI app: the handler gets the Request and returns the Response. Starlette's own wrapper
    for a function endpoint also wraps each request in exception handlers; Api renders every error."""

    def __init__(self, handler: Callable[[HttpRequest], Awaitable[Response]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(HttpRequest(scope, receive, send))
        await response(scope, receive, send)


def error_response(path: str, error: ApiError) -> Response:
    """``error`` in the shape of the API ``path`` belongs to."""
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
    if path.startswith("/v1/"):
        body: dict[str, Any] = {"error": {"message": error.message, "type": error.kind, "param": None,
                                          "code": error.kind}}
    else:
        body = {"error": error.message}
    return JSONResponse(body, status_code=error.status, headers=headers)


def api_error_of(method: str, path: str, exc: Exception) -> ApiError:
    """Any exception out of a route as the ApiError to answer: ours as raised, the router's 404/405 named,
    anything else a 500 whose traceback goes to the log and never to the client."""
    if isinstance(exc, ApiError):
        if exc.status >= 500:
            log.warning("http %s %s: %d %s", method, path, exc.status, exc.message)
        return exc
    if isinstance(exc, HTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"no route {method} {path}" if exc.status_code in (404, 405) else str(exc.detail)
        return ApiError(exc.status_code, message, kind)
    log.error("http %s %s failed", method, path, exc_info=exc)
    return ApiError(500, f"internal error ({type(exc).__name__}): the daemon's log has the details", "server_error")


async def json_body(http: HttpRequest) -> dict[str, Any]:
    """The request's JSON object; 400 naming the problem otherwise."""
    raw = await http.body()
    try:
        data = json.loads(raw) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def check_model(http: HttpRequest, asked: Any) -> tuple[str, str | None]:
    """The name to echo and the LoRA adapter to run for ``asked``: the served model (tag ':latest'
    optional) runs bare, ``<model>:<adapter>`` with that adapter (loaded with --lora, so no reload);
    400 or 404 naming what this server serves otherwise."""
    from edgekit.serve.http.models import adapter_names

    name = http.app.state.settings.model_name
    if isinstance(asked, str) and asked.removesuffix(":latest") == name:
        return name, None
    adapters = adapter_names(http)
    served = f"{name!r}" + (f" and, with its LoRA adapters, {', '.join(repr(f'{name}:{a}') for a in adapters)}"
                            if adapters else "")
    if not isinstance(asked, str) or not asked:
        raise ApiError(400, f"give 'model' (this server serves {served})")
    adapter = asked.removeprefix(f"{name}:")
    if adapter != asked and adapter in adapters:
        return asked, adapter
    raise ApiError(404, f"model {asked!r} not found: this server serves {served}", "not_found_error")


async def metrics(http: HttpRequest) -> Response:
    """GET /edgekit/metrics: the payload MQTT publishes on {node}/metrics (docs/protocol.md)."""
    return JSONResponse(http.app.state.core.snapshot())


def engine_request(http: HttpRequest, fields: dict[str, Any]) -> Request:
    """An engine Request from the fields of edgekit's own request object (docs/protocol.md), checked
    against the daemon's limits by the same rules as an MQTT request: 400 (or 413) naming the field."""
    try:
        asked = check_request({k: v for k, v in fields.items() if v is not None}, http.app.state.settings.limits,
                              uuid.uuid4().hex)
    except BadRequest as exc:
        http.app.state.core.metrics.error(exc.code, FRONT_END)
        raise ApiError(413 if exc.code == "too_large" else 400, str(exc)) from None
    return asked.request


class Api:
    """The ASGI app: the API key on every route (constant time), the body size limit (413), Starlette's
    router, and every error rendered in its API's shape.

    One layer, not Starlette's application with its two error middlewares: an answer's path through
    Python code runs on caches the engine has just flushed, so each layer costs several times what it
    costs in a loop (benchmarks/bench_http.py). Routes reach the core and settings as ``http.app.state``.
    """

    def __init__(self, router: Router, core: Any, settings: HttpSettings) -> None:
        self.router = router
        self.state = State()
        self.state.core = core
        self.state.settings = settings
        self.state.num_ctx_logged = set()  # num_ctx values already logged as clamped (ollama.py)
        self._key = settings.api_key.encode() if settings.api_key else None
        self._max = settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no websockets; lifespan is off
        scope["app"] = self  # Request.app; with it the router raises 404/405 as HTTPException for us to render
        refusal = self._refusal(dict(scope["headers"]))
        if refusal is not None:
            await error_response(scope["path"], refusal)(scope, receive, send)
            return
        started = False

        async def sender(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.router(scope, self._limited(receive), sender)
        except Exception as exc:
            if started:  # a stream that failed after its first line: uvicorn logs it and closes the connection
                raise
            error = api_error_of(scope["method"], scope["path"], exc)
            await error_response(scope["path"], error)(scope, receive, send)

    def _refusal(self, headers: dict[bytes, bytes]) -> ApiError | None:
        if self._key is not None and not hmac.compare_digest(_presented_key(headers), self._key):
            return ApiError(401, "missing or wrong API key: send it as 'Authorization: Bearer <key>'",
                            "authentication_error")
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > self._max:
            return _too_large(int(length), self._max)
        return None

    def _limited(self, receive: Receive) -> Callable[[], Any]:
        """receive() that refuses a body (chunked, or lying about its length) growing past the limit."""
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self._max:
                raise _too_large(seen, self._max)
            return message

        return limited


def _presented_key(headers: dict[bytes, bytes]) -> bytes:
    """The key a client sent: 'Authorization: Bearer <key>' (Ollama's and OpenAI's clients) or 'x-api-key'."""
    authorization = headers.get(b"authorization", b"")
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() == b"bearer":
        return token.strip()
    return headers.get(b"x-api-key", b"")


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, f"the body is {size} bytes or more, the limit is {limit} (http.max_body_bytes)")
