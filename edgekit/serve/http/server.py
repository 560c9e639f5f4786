"""The HTTP front end's life: bind, serve with uvicorn on a thread of its own, stop.

The socket is bound in start(), so a port in use fails `edgekit serve` at once with a
clear error, before READY. uvicorn runs off the main thread: the core owns the signals.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

import uvicorn

from edgekit.errors import ConfigError
from edgekit.serve.config import ServeConfig, http_address, http_api_key
from edgekit.serve.http import models
from edgekit.serve.http.app import HttpSettings, build_app
from edgekit.serve.http.jobs import FRONT_END

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0  # open streams are the core's to drain first; this only closes the sockets


def settings_of(config: ServeConfig, env: Mapping[str, str] | None = None) -> HttpSettings:
    """The app's settings from [http], [model] and [limits] (the API key read from its file now)."""
    path = config.model.path
    name = config.http.model_name or (path.stem if path is not None else "edgekit")
    return HttpSettings(model_name=name, model_path=path, limits=config.limits,
                        api_key=http_api_key(config.http, env), max_body_bytes=config.http.max_body_bytes)


class HttpFrontEnd:
    """The Ollama- and OpenAI-compatible APIs as a front end of the daemon core."""

    name = FRONT_END

    def __init__(self, config: ServeConfig, env: Mapping[str, str] | None = None) -> None:
        if config.http.listen is None:
            raise ConfigError("the HTTP front end needs [http] listen or --http [HOST:]PORT")
        self.host, self.port = http_address(config.http.listen)
        self.settings = settings_of(config, env)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, core: Any) -> None:
        sock = self._bind()
        self.port = sock.getsockname()[1]
        models.file_info(self.settings.model_path)  # the header /api/show and /api/tags read, once, now
        # proxy_headers off: nothing here reads the client's address or scheme, and it is one layer less
        # on every request's path (benchmarks/bench_http.py).
        config = uvicorn.Config(build_app(core, self.settings), log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=STOP_TIMEOUT_S, server_header=False, proxy_headers=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="edgekit-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise ConfigError(f"the HTTP server on {self.describe()} did not start (see the log above)")
        log.info("http: serving %s on %s%s", self.settings.model_name, self.describe(),
                 " (API key required)" if self.settings.api_key else "")

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=STOP_TIMEOUT_S + 1)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=1)

    def draining(self) -> None:
        """Nothing to announce: the core refuses new work (503) and finishes what runs."""

    def reloaded(self) -> None:
        """The same name keeps being served: clients configured it (models.py reads the new file)."""

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def describe(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP, not the default 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto
        # says TCP, and without it a response's head and body wait on the client's delayed ACK (~40 ms).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            why = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise ConfigError(f"cannot listen on {self.describe()}: {why} (choose another with --http HOST:PORT)") from None
        sock.listen(128)
        sock.set_inheritable(True)
        return sock
