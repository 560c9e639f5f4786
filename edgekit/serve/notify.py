"""sd_notify over systemd's notify socket, with no dependency (as gunicorn/systemd.py does).

systemd starts a Type=notify service with NOTIFY_SOCKET set; the service sends
newline-separated KEY=VALUE datagrams to it (sd_notify(3)). Without NOTIFY_SOCKET
(a terminal, a test, another supervisor) every method is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _socket_address(path: str) -> str | bytes:
    """'@name' is Linux's abstract namespace: the address starts with a NUL byte."""
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC applies to us only when WATCHDOG_PID is unset or is our pid (sd_watchdog_enabled(3))."""
    pid = env.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None


class Notifier:
    """Tells systemd about readiness, status, watchdog pings and shutdown."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.socket_path: str | None = env.get("NOTIFY_SOCKET") or None
        self._watchdog_usec = _watchdog_usec(env)

    @property
    def enabled(self) -> bool:
        """True when systemd (or a test) gave us a notify socket."""
        return self.socket_path is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of WatchdogSec, as sd_watchdog_enabled(3) advises; None if no watchdog."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2_000_000

    def notify(self, **fields: str | int) -> bool:
        """Send one datagram of KEY=VALUE lines; True if it was sent."""
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        if self.socket_path is None:
            log.debug("sd_notify (no NOTIFY_SOCKET): %s", message.replace("\n", " "))
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode("utf-8"), _socket_address(self.socket_path))
        except OSError as exc:  # systemd gone or the socket not ours: never fatal to serving
            log.warning("sd_notify to %s failed: %s", self.socket_path, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """The model is loaded and warm; the broker connection is up."""
        return self.notify(READY=1, **_status(status))

    def status(self, text: str) -> bool:
        """A one-line status that `systemctl status` shows."""
        return self.notify(STATUS=_one_line(text))

    def watchdog(self) -> bool:
        """Proof of life; send every watchdog_interval_s while the serving loop is healthy."""
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        """A clean shutdown has begun (draining requests)."""
        return self.notify(STOPPING=1, **_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload has begun; MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match it. Send ready() after."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec, **_status(status))

    def extend_timeout(self, usec: int) -> bool:
        """Ask for more start/stop time (a slow model load); systemd waits at least ``usec`` more."""
        return self.notify(EXTEND_TIMEOUT_USEC=int(usec))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _status(status: str | None) -> dict[str, str]:
    return {} if status is None else {"STATUS": _one_line(status)}
