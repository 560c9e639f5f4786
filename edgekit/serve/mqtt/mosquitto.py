"""A private Mosquitto broker on a free loopback port, for the demo and the tests.

Persistence is on (in the given folder) so sessions and their queued messages survive a
broker restart, as they do on a real box; restart() keeps the port and the folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from edgekit.errors import BrokerError

START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        raise BrokerError("mosquitto is not installed: apt-get install mosquitto (scripts/install.sh does it)")
    return found


class Broker:
    """One mosquitto process; ``with Broker(folder) as b: b.url``."""

    host = "127.0.0.1"

    def __init__(self, folder: Path, port: int | None = None, extra: str = "") -> None:
        """extra: more mosquitto.conf lines (tests: max_inflight_messages, an acl_file, ...)."""
        self.folder = folder
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.conf = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        (folder / "data").mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {folder / 'data'}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 10000\n"
            "log_dest stderr\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            # Started as root, Mosquitto drops to user "mosquitto", who cannot write our folder:
            # persistence would fail quietly ("Error: Permission denied") and sessions die with a restart.
            + ("user root\n" if os.geteuid() == 0 else "")
            + extra
        )

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> Broker:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)], stdout=log, stderr=log)
        self._wait_listening()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean stop that writes the persistence file; SIGKILL: a crash."""
        if self.process is None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_listening(self) -> None:
        assert self.process is not None
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise BrokerError(f"mosquitto exited ({self.process.returncode}): {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {START_TIMEOUT_S} s")
