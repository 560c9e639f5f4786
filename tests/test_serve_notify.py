"""sd_notify: the exact datagrams systemd would receive, read from a real AF_UNIX socket."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from edgekit.serve.mqtt.discovery import SENSORS
from edgekit.serve.notify import Notifier


class NotifySocket:
    """A datagram socket that plays systemd's side of NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address  # what NOTIFY_SOCKET says: a path, or '@name' for the abstract namespace
        bind_to = b"\0" + address[1:].encode() if address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(5)

    def receive(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def pending(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.sock.recv(4096, socket.MSG_PEEK)
            return True
        except (BlockingIOError, TimeoutError):
            return False
        finally:
            self.sock.settimeout(5)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(str(tmp_path / "notify"))
    yield sock
    sock.sock.close()


def test_ready_sends_ready_and_status(notify_socket: NotifySocket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.address})
    assert notifier.enabled
    assert notifier.ready("serving tiny Q8_0")
    assert notify_socket.receive() == {"READY": "1", "STATUS": "serving tiny Q8_0"}


def test_status_is_flattened_to_one_line(notify_socket: NotifySocket) -> None:
    Notifier({"NOTIFY_SOCKET": notify_socket.address}).status("loading\nmodel   tiny")
    assert notify_socket.receive() == {"STATUS": "loading model tiny"}


def test_watchdog_stopping_and_extend_timeout(notify_socket: NotifySocket) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.address})
    notifier.watchdog()
    notifier.stopping("draining 2 requests")
    notifier.extend_timeout(90_000_000)
    assert notify_socket.receive() == {"WATCHDOG": "1"}
    assert notify_socket.receive() == {"STOPPING": "1", "STATUS": "draining 2 requests"}
    assert notify_socket.receive() == {"EXTEND_TIMEOUT_USEC": "90000000"}


def test_reloading_carries_the_monotonic_clock(notify_socket: NotifySocket) -> None:
    # CLOCK_MONOTONIC in microseconds, the clock systemd compares it with (systemd.service(5), notify-reload).
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier({"NOTIFY_SOCKET": notify_socket.address}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = notify_socket.receive()
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after


def test_abstract_namespace_socket() -> None:
    sock = NotifySocket(f"@edgekit-test-{uuid.uuid4().hex}")
    try:
        assert Notifier({"NOTIFY_SOCKET": sock.address}).ready()
        assert sock.receive() == {"READY": "1"}
    finally:
        sock.sock.close()


def test_without_notify_socket_everything_is_a_quiet_no_op(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({})
    caplog.set_level("DEBUG", logger="edgekit.serve.notify")
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval_s is None
    assert "READY=1" in caplog.text


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.ready() is False
    assert "sd_notify" in caplog.text


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval_s == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval_s == 15.0


def test_watchdog_for_another_pid_or_garbage_is_ignored() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None
    assert Notifier({"WATCHDOG_USEC": "soon"}).watchdog_interval_s is None
    assert Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval_s is None


def test_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch,
                                                  notify_socket: NotifySocket) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier()
    assert notifier.watchdog_interval_s == 2.0
    notifier.watchdog()
    assert notify_socket.receive() == {"WATCHDOG": "1"}
    assert not notify_socket.pending()


# --- `edgekit serve` under a fake systemd: the real daemon, Mosquitto and a tiny model -------------

EDGEKIT = Path(sys.executable).parent / "edgekit"
WATCHDOG_USEC = 1_000_000  # the daemon should ping every 0.5 s


class StatusWatcher:
    """Collects the daemon's retained status and its Home Assistant discovery configs."""

    def __init__(self, broker_url: str, prefix: str, device_id: str) -> None:
        import paho.mqtt.client as mqtt

        self.states: queue.Queue[dict[str, object]] = queue.Queue()
        self.discovery: dict[str, dict[str, object]] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.status_topic = f"{prefix}/status"
        host, port = broker_url.removeprefix("mqtt://").split(":")
        self.client.connect(host, int(port))
        self.client.subscribe([(self.status_topic, 1), (f"homeassistant/sensor/edgekit_{device_id}/+/config", 1)])
        self.client.loop_start()

    def _on_message(self, _client: object, _userdata: object, message: Any) -> None:
        if message.topic == self.status_topic:
            self.states.put(json.loads(message.payload))
        elif message.payload:
            self.discovery[message.topic] = json.loads(message.payload)

    def next_state(self, timeout_s: float = 30) -> str:
        return str(self.states.get(timeout=timeout_s)["state"])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def receive_until(sock: NotifySocket, key: str, timeout_s: float,
                  process: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> list[dict[str, str]]:
    """Every datagram up to and including the first that carries ``key``; fails early if the daemon dies."""
    seen: list[dict[str, str]] = []
    end = time.monotonic() + timeout_s
    sock.sock.settimeout(0.2)
    while time.monotonic() < end:
        try:
            seen.append(sock.receive())
        except TimeoutError:
            if process is not None and process.poll() is not None:
                break
            continue
        if key in seen[-1]:
            return seen
    output = log.read_text()[-3000:] if log else ""
    raise AssertionError(f"no {key} within {timeout_s} s; got {seen}\n{output}")


def serve(model: Path, broker_url: str, prefix: str, device_id: str, tmp_path: Path, notify: NotifySocket,
          wrapper: Sequence[str] = ()) -> tuple[subprocess.Popen[bytes], Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEKIT_", "NOTIFY_", "WATCHDOG_"))}
    env |= {"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(WATCHDOG_USEC),
            "EDGEKIT_STATE_DIR": str(tmp_path / "state")}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:  # a file, not a pipe: what was logged before READY is there when READY is
        process = subprocess.Popen([*wrapper, str(EDGEKIT), "-v", "serve", "--model", str(model), "--broker",
                                    broker_url, "--prefix", prefix, "--device-id", device_id],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, log


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def check_lifecycle(process: subprocess.Popen[bytes], log: Path, notify: NotifySocket,
                    watcher: StatusWatcher, wrapped: bool = False, reload: bool = False) -> None:
    """READY only after load and warm-up; watchdog pings while serving; STOPPING and a clean exit on SIGTERM.

    SIGTERM goes to the daemon alone, as KillMode=mixed sends it (``wrapped``: the daemon is the wrapper's child).
    """
    before_ready = receive_until(notify, "READY", 120, process, log)
    logged_at_ready = log.read_text()
    assert before_ready[0].get("STATUS") == "loading the model"
    assert "warm-up:" in logged_at_ready, logged_at_ready  # the warm-up request ran before READY=1
    assert before_ready[-1]["STATUS"].startswith("serving ")
    assert watcher.next_state() == "online"

    pings = [receive_until(notify, "WATCHDOG", 5, process, log)[-1] for _ in range(3)]
    assert all(p == {"WATCHDOG": "1"} for p in pings)

    main_pid = child_of(process.pid) if wrapped else process.pid
    if reload:  # systemctl reload: SIGHUP -> RELOADING=1 with the monotonic clock, then READY=1 once swapped
        sent_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        os.kill(main_pid, signal.SIGHUP)
        reloading = receive_until(notify, "RELOADING", 10, process, log)[-1]
        assert int(reloading["MONOTONIC_USEC"]) >= sent_usec
        assert receive_until(notify, "READY", 60, process, log)[-1]["STATUS"].endswith("(reloaded)")
    os.kill(main_pid, signal.SIGTERM)
    stopping = receive_until(notify, "STOPPING", 10, process, log)[-1]
    assert stopping["STOPPING"] == "1"
    assert process.wait(timeout=60) == 0, log.read_text()
    states = [watcher.next_state()]
    while states[-1] != "offline":
        states.append(watcher.next_state())
    assert states[-2:] == ["stopping", "offline"] and set(states[:-2]) <= {"online"}  # a reload says online again


def test_serve_notifies_systemd_through_its_lifecycle(tmp_path: Path, mosquitto: Any, tiny_q8_0: Path,
                                                      notify_socket: NotifySocket) -> None:
    device = f"notify{uuid.uuid4().hex[:8]}"
    prefix = f"edgekit/test/{device}"
    watcher = StatusWatcher(mosquitto.url, prefix, device)
    process, log = serve(tiny_q8_0, mosquitto.url, prefix, device, tmp_path, notify_socket)
    try:
        check_lifecycle(process, log, notify_socket, watcher, reload=True)
        # Home Assistant discovery went out through the daemon, one retained config per sensor.
        assert len(watcher.discovery) == len(SENSORS)
        assert {c["state_topic"] for c in watcher.discovery.values()} == {f"{prefix}/status", f"{prefix}/metrics"}
    finally:
        stop(process)
        watcher.close()


# The unit's sandbox, as far as it can be rebuilt without systemd: a private /proc with other
# processes invisible (ProtectProc=invisible), the kernel's MemoryDenyWriteExecute (PR_SET_MDWE,
# which systemd >= 254 itself uses), no capabilities and no new privileges.
SANDBOX_SHIM = r"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(f"PR_SET_MDWE: {os.strerror(ctypes.get_errno())}")
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("MDWE is not enforced")
except PermissionError:
    pass
os.execv(sys.argv[1], sys.argv[1:])
"""
SANDBOX_SCRIPT = """set -e
mount -t proc -o hidepid=invisible proc /proc
exec setpriv --no-new-privs --bounding-set=-all --inh-caps=-all "$@"
"""


def child_of(pid: int) -> int:
    """The one child of ``pid`` (unshare --fork's child: the daemon, after the wrapper's execs)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.fixture
def sandbox(tmp_path: Path) -> list[str]:
    script, shim = tmp_path / "sandbox.sh", tmp_path / "mdwe.py"
    script.write_text(SANDBOX_SCRIPT)
    shim.write_text(SANDBOX_SHIM)
    wrapper = ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "bash", str(script),
               sys.executable, str(shim)]
    probe = subprocess.run([*wrapper, "/bin/true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot build the sandbox here (needs root or user namespaces): {probe.stderr.strip()[-200:]}")
    return wrapper


def test_serve_runs_inside_the_units_sandbox(tmp_path: Path, mosquitto: Any, tiny_q8_0: Path,
                                            notify_socket: NotifySocket, sandbox: list[str]) -> None:
    device = f"sandbox{uuid.uuid4().hex[:8]}"
    prefix = f"edgekit/test/{device}"
    watcher = StatusWatcher(mosquitto.url, prefix, device)
    process, log = serve(tiny_q8_0, mosquitto.url, prefix, device, tmp_path, notify_socket, wrapper=sandbox)
    try:
        # load, warm-up, watchdog and drain all work
        check_lifecycle(process, log, notify_socket, watcher, wrapped=True)
    finally:
        stop(process)
        watcher.close()
