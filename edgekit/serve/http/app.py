"""The Starlette app: Ollama's and OpenAI's routes behind one API-key check and one body limit.

Every error leaves in the shape of the API its path belongs to (``/v1/...``: OpenAI's
``{"error": {"message", "type", "code"}}``, else Ollama's ``{"error": "..."}``) with its
status; an unexpected exception is logged with its traceback and answered 500 without it.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
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

    routes = [Route(path, handler, methods=methods) for path, methods, handler in (*ollama.ROUTES, *openai.ROUTES)]
    routes.append(Route("/edgekit/metrics", metrics, methods=["GET"]))
    app = Starlette(routes=routes, exception_handlers={ApiError: _api_error, HTTPException: _http_error,
                                                        Exception: _unexpected})
    app.state.core = core
    app.state.settings = settings
    app.state.num_ctx_logged = set()  # num_ctx values already logged as clamped (ollama.py)
    return Guard(app, settings.api_key, settings.max_body_bytes)


def error_response(path: str, error: ApiError) -> Response:
    """``error`` in the shape of the API ``path`` belongs to."""
    headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s is not None else None
    if path.startswith("/v1/"):
        body: dict[str, Any] = {"error": {"message": error.message, "type": error.kind, "param": None,
                                          "code": error.kind}}
    else:
        body = {"error": error.message}
    return JSONResponse(body, status_code=error.status, headers=headers)


async def _api_error(http: HttpRequest, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if exc.status >= 500:
        log.warning("http %s %s: %d %s", http.method, http.url.path, exc.status, exc.message)
    return error_response(http.url.path, exc)


async def _http_error(http: HttpRequest, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = f"no route {http.method} {http.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
    return error_response(http.url.path, ApiError(exc.status_code, message, kind))


async def _unexpected(http: HttpRequest, exc: Exception) -> Response:
    log.error("http %s %s failed", http.method, http.url.path, exc_info=exc)
    error = ApiError(500, f"internal error ({type(exc).__name__}): the daemon's log has the details", "server_error")
    return error_response(http.url.path, error)


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

    name, adapters = http.app.state.settings.model_name, adapter_names(http)
    served = f"{name!r}" + (f" and, with its LoRA adapters, {', '.join(repr(f'{name}:{a}') for a in adapters)}"
                            if adapters else "")
    if not isinstance(asked, str) or not asked:
        raise ApiError(400, f"give 'model' (this server serves {served})")
    if asked.removesuffix(":latest") == name:
        return name, None
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


class Guard:
    """ASGI middleware: the API key on every route (constant time) and the body size limit (413)."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self._key = api_key.encode() if api_key else None
        self._max = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refusal = self._refusal(headers)
        if refusal is not None:
            await error_response(scope["path"], refusal)(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

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
