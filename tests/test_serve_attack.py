"""Issue 10's attack on `edgekit serve`, replayed against a real Mosquitto and the tiny model.

Each numbered failure of the attack has a test here: the poison message, answers lost to
the broker's Receive Maximum and to the old QoS 2 sweep (a burst, SIGKILLs, a backlog),
malformed requests left unanswered (a seeded fuzz run), one request holding the engine,
clients interfering through edgekit/reply/, and silent connection failures.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekit.serve.mqtt.mosquitto import Broker, free_port
from tests.malformed import run_fuzz
from tests.serve_support import REPO, DaemonProcess, Listener, Received, finals

DEVICE = "attacked"
PREFIX = f"edgekit/{DEVICE}"
POISON = b'{"id":"\\ud800x","prompt":"hi","max_tokens":2}'  # issue 10, item 1
EXPLODING = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^(.?){200}$"}}, "required": ["a"]}


def send(listener: Listener, reply: str, count: int, max_tokens: int = 2, tag: str = "r") -> list[str]:
    """``count`` valid requests answered on ``reply``; returns their ids."""
    ids = [f"{tag}{i}-{uuid.uuid4().hex[:6]}" for i in range(count)]
    for request_id in ids:
        body = {"id": request_id, "prompt": f"Request {request_id}", "max_tokens": max_tokens, "reply_to": reply}
        listener.publish(f"{PREFIX}/request", json.dumps(body))
    return ids


def gather(listener: Listener, ids: set[str], timeout_s: float, settle_s: float = 2.0) -> list[dict]:
    """Final messages until every id in ``ids`` has one, then ``settle_s`` more to catch repeats."""
    got: list[dict] = []
    end = time.monotonic() + timeout_s
    while not ids <= {f["id"] for f in got} and time.monotonic() < end:
        got += finals(listener.collect(0.5))
    return got + finals(listener.collect(settle_s))


def once_each(got: list[dict], ids: list[str]) -> Counter:
    counts = Counter(f["id"] for f in got if f["id"] in set(ids))
    assert set(counts) == set(ids), f"lost: {sorted(set(ids) - set(counts))}"
    assert max(counts.values()) == 1, f"answered twice: {[i for i, n in counts.items() if n > 1]}"
    return counts


# --- 1. the poison message ------------------------------------------------------------------------


def test_a_poison_request_is_refused_and_the_next_five_are_answered_also_after_a_restart(
        fresh_broker, tmp_path: Path, tiny_q8_0: Path) -> None:
    daemon = DaemonProcess(tmp_path / "d", tiny_q8_0, fresh_broker.url, DEVICE).start()
    reply = f"edgekit/reply/{uuid.uuid4().hex}"
    listener = Listener(fresh_broker.url, reply, persistent=True)
    try:
        for restart in (False, True):
            if restart:  # published while the daemon is down: the poison comes first after the start
                daemon.stop()
            listener.publish(f"{PREFIX}/request", POISON, ResponseTopic=reply, CorrelationData=b"poison")
            ids = send(listener, reply, 5)
            pid = daemon.start().process.pid if restart else daemon.process.pid
            got = gather(listener, {*ids, b"poison".hex()}, timeout_s=60)
            once_each(got, ids)
            assert all(f["type"] == "result" for f in got if f["id"] in ids)
            poison = [f for f in got if f["id"] == b"poison".hex()]
            assert len(poison) == 1 and poison[0]["error"]["code"] == "bad_request", poison
            assert "surrogate" in poison[0]["error"]["message"]
            assert daemon.process.poll() is None and daemon.process.pid == pid
    finally:
        listener.close()
        daemon.stop()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death is the point
def test_a_worker_thread_that_dies_stops_the_watchdog_and_the_daemon(tmp_path: Path, tiny_q8_0: Path) -> None:
    from edgekit.engine.records import Request
    from edgekit.serve.config import load_config
    from edgekit.serve.core import Core

    class DyingSink:  # a bug that escapes every except Exception: the thread ends
        def chunk(self, *_: object) -> None: ...
        def finish(self, *_: object) -> None:
            raise SystemExit("a bug")

    config = load_config(None, env={}, flags={"model": str(tiny_q8_0)})
    core = Core(config, [])
    core.start()
    try:
        assert core.healthy()
        core.submit(Request(prompt="hi", max_tokens=1), DyingSink(), front_end="test")
        end = time.monotonic() + 60
        while core.healthy() and time.monotonic() < end:
            time.sleep(0.1)
        assert not core.healthy()  # no more watchdog pings: systemd restarts the service
        core._serve()  # the main loop notices the dead worker at once and returns; run() then raises
        assert core.failure and "worker thread died" in core.failure
    finally:
        core.stop()


# --- 2. answers lost: Receive Maximum, SIGKILL, a backlog -------------------------------------------------


def test_a_burst_of_300_with_queue_8_against_a_broker_window_of_20_answers_every_one_once(
        tmp_path: Path, tiny_q8_0: Path) -> None:
    with Broker(tmp_path / "broker", extra="max_inflight_messages 20\n") as broker:
        daemon = DaemonProcess(tmp_path / "d", tiny_q8_0, broker.url, DEVICE, limits={"queue_size": 8}).start()
        reply = f"edgekit/reply/{uuid.uuid4().hex}"
        listener = Listener(broker.url, reply, persistent=True)
        try:
            ids = send(listener, reply, 300, max_tokens=1)
            got = gather(listener, set(ids), timeout_s=120)
            once_each(got, ids)
            codes = Counter(f["type"] if f["type"] == "result" else f["error"]["code"] for f in got)
            assert set(codes) <= {"result", "busy"} and codes["result"] >= 9, codes
            assert "in-flight window 20" in daemon.output()
        finally:
            listener.close()
            daemon.stop()


@pytest.fixture
def roomy(fresh_broker, tmp_path: Path, tiny_q8_0: Path) -> Iterator[tuple[DaemonProcess, Listener, str]]:
    """A daemon whose queue takes every request, and a persistent listener on a reply topic."""
    daemon = DaemonProcess(tmp_path / "d", tiny_q8_0, fresh_broker.url, DEVICE, limits={"queue_size": 64}).start()
    reply = f"edgekit/reply/{uuid.uuid4().hex}"
    listener = Listener(fresh_broker.url, reply, persistent=True)
    yield daemon, listener, reply
    listener.close()
    daemon.stop()


def test_50_requests_with_a_sigkill_mid_request_lose_none_and_answer_none_twice_over_3_runs(roomy) -> None:
    daemon, listener, reply = roomy
    for run in range(3):
        ids = send(listener, reply, 50, max_tokens=3, tag=f"run{run}-")
        first = listener.until(lambda m: m.json.get("type") == "result", timeout_s=60)
        daemon.kill()  # mid-request: one is running, others queued or answered but unacknowledged
        daemon.start()
        got = [first.json] + gather(listener, set(ids) - {first.json["id"]}, timeout_s=300)  # a busy box: slow
        once_each(got, ids)


@pytest.mark.parametrize("step", ["sent", "pubrec", "released", "pubcomp", "done"])
def test_a_daemon_killed_at_each_step_of_an_answers_qos_2_flow_answers_once_after_a_restart(
        step: str, fresh_broker, tmp_path: Path, tiny_q8_0: Path) -> None:
    """sent: journaled, PUBLISH not out; pubrec: the broker has it, release not journaled; released: journaled,
    PUBREL not out; pubcomp: delivered, not journaled; done: journaled, request not acknowledged."""
    daemon = DaemonProcess(tmp_path / "d", tiny_q8_0, fresh_broker.url, DEVICE)
    reply = f"edgekit/reply/{uuid.uuid4().hex}"
    listener = Listener(fresh_broker.url, reply, persistent=True)
    try:
        daemon.start(env={"EDGEKIT_CRASH_AT": step})
        ids = send(listener, reply, 3)
        assert daemon.process.wait(timeout=120) == -9, daemon.output()  # it killed itself at the step
        daemon.start()
        got = gather(listener, set(ids), timeout_s=120, settle_s=3)
        once_each(got, ids)
        if step != "done":  # the first answer's flow (and any answer sent after it on a fast box) was
            # unfinished: resumed with its packet id, not run again
            assert re.search(r"finishing [1-9]\d* answer\(s\) a killed process left unfinished", daemon.output()), \
                daemon.output()
        assert daemon.stop() == 0
        daemon.start()  # every request was acknowledged: nothing comes again
        assert finals(listener.collect(3)) == []
    finally:
        listener.close()
        daemon.stop()


def test_a_backlog_of_40_published_while_the_daemon_is_down_is_answered_after_it_starts(roomy) -> None:
    daemon, listener, reply = roomy
    send(listener, reply, 3)
    gather(listener, set(), timeout_s=0, settle_s=3)
    daemon.kill()  # the session stays, with whatever packet ids the dead process left
    ids = send(listener, reply, 40)
    daemon.start()
    got = gather(listener, set(ids), timeout_s=300)
    once_each(got, ids)
    assert all(f["type"] == "result" for f in got)


# --- 3 and 4: malformed requests, a request that holds the engine -------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, mosquitto, tiny_q8_0: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("attacked"), tiny_q8_0, mosquitto.url, DEVICE,
                      limits={"max_payload_bytes": 8192, "max_request_s": 3, "max_tokens": 4096})
    d.start()
    yield d
    assert d.stop() == 0, d.output()


@pytest.fixture
def replies(mosquitto) -> Iterator[tuple[str, Listener]]:
    topic = f"edgekit/reply/{uuid.uuid4().hex}"
    listener = Listener(mosquitto.url, topic, f"{PREFIX}/errors")
    yield topic, listener
    listener.close()


def test_2400_seeded_malformed_requests_are_each_answered_once_by_the_same_process(
        daemon: DaemonProcess, replies, capsys: pytest.CaptureFixture[str]) -> None:
    reply, listener = replies
    pid = daemon.process.pid
    run = run_fuzz(listener, f"{PREFIX}/request", reply, pid, seed=10, count=2400)
    with capsys.disabled():
        print(f"\nfuzz: {run.sent} malformed requests in {run.seconds:.1f} s, {dict(run.codes)}, "
              f"daemon RSS growth {run.rss_growth_mb:+.1f} MB")
    assert not run.unanswered and run.answered_twice == 0, run
    assert set(run.codes) <= {"bad_request", "too_large"}, run.codes
    assert daemon.process.poll() is None and daemon.process.pid == pid
    assert run.rss_growth_mb < 100
    ids = send(listener, reply, 3)
    got = gather(listener, set(ids), timeout_s=60, settle_s=0.5)
    assert sorted(f["type"] for f in got if f["id"] in ids) == ["result"] * 3


def test_an_exploding_schema_ends_timeout_within_the_limit_and_the_next_request_runs(
        daemon: DaemonProcess, replies) -> None:
    reply, listener = replies
    started = time.monotonic()
    listener.publish(f"{PREFIX}/request", json.dumps({"id": "explode", "prompt": "Say", "max_tokens": 400,
                                                      "json_schema": EXPLODING, "reply_to": reply}))
    final = gather(listener, {"explode"}, timeout_s=60, settle_s=0)[0]
    elapsed = time.monotonic() - started
    assert final["type"] == "error" and final["error"]["code"] == "timeout", final
    assert elapsed < 3 + 5 + 10, elapsed  # the limit, the grace before the worker is killed, a busy box
    ids = send(listener, reply, 1)
    after = gather(listener, set(ids), timeout_s=60, settle_s=0)[0]
    assert after["type"] == "result", after


# --- issue 11, item 5: repeats, missing reply topics, the context ------------------------------------------


def test_a_request_without_a_reply_topic_is_refused_on_the_errors_topic_not_run(daemon, replies) -> None:
    _reply, listener = replies
    listener.publish(f"{PREFIX}/request", json.dumps({"id": "nowhere", "prompt": "Hi", "max_tokens": 1}))
    final = gather(listener, {"nowhere"}, timeout_s=30, settle_s=0)[0]
    assert final["error"]["code"] == "bad_request" and "no reply topic" in final["error"]["message"]


def test_prompt_plus_max_tokens_over_the_context_is_context_overflow(daemon, replies) -> None:
    reply, listener = replies
    listener.publish(f"{PREFIX}/request", json.dumps({"id": "big", "prompt": "Hi", "max_tokens": 4000,
                                                      "reply_to": reply}))
    final = gather(listener, {"big"}, timeout_s=30, settle_s=0)[0]
    assert final["error"]["code"] == "context_overflow" and "max_tokens (4000)" in final["error"]["message"]


# --- 5. clients interfering through edgekit/reply/ ----------------------------------------------------------


def test_fifty_home_assistant_births_re_announce_discovery_at_most_twice(daemon, mosquitto) -> None:
    listener = Listener(mosquitto.url, f"homeassistant/sensor/edgekit_{DEVICE}/+/config")
    sensors = len(listener.collect(1.0))  # the retained configs: one per sensor
    for _ in range(50):
        listener.publish("homeassistant/status", "online")
    again = listener.collect(12.0)
    listener.close()
    assert sensors > 0 and 0 < len(again) <= 2 * sensors, (len(again), sensors)  # at once, and once more
    # when the 10 s window ends


ACL_USERS = ("edgekit", "kitchen", "mallory")


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """Mosquitto with passwords and docs/mosquitto-clients.acl, exactly as documented."""
    folder = tmp_path_factory.mktemp("acl")
    for user in ACL_USERS:
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if user == ACL_USERS[0] else []),
                        str(folder / "passwd"), user, f"pw-{user}"], check=True, capture_output=True)
        (folder / f"{user}.password").write_text(f"pw-{user}\n")
        (folder / f"{user}.password").chmod(0o600)
    broker = Broker(folder, extra=f"password_file {folder / 'passwd'}\nacl_file {REPO / 'docs/mosquitto-clients.acl'}\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true\n", "allow_anonymous false\n"))
    with broker:
        yield broker


@pytest.fixture(scope="module")
def acl_daemon(acl_broker: Broker, tmp_path_factory: pytest.TempPathFactory, tiny_q8_0: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("acl-daemon"), tiny_q8_0, acl_broker.url, DEVICE,
                      broker={"username": "edgekit", "password_file": str(acl_broker.folder / "edgekit.password")})
    d.start(wait=False)
    end = time.monotonic() + 120
    while "connected to" not in d.output():
        assert d.process.poll() is None and time.monotonic() < end, d.output()
        time.sleep(0.2)
    yield d
    d.stop()


def login(broker: Broker, user: str, *topics: str) -> Listener:
    """A client of ``user`` whose client id is ``user``-<random> and that listens on its own reply folder."""
    client_id = f"{user}-{uuid.uuid4().hex[:6]}"
    return Listener(broker.url, *(topics or (f"edgekit/reply/{client_id}/#",)), client_id=client_id,
                    username=user, password=f"pw-{user}")


def ask(client: Listener, request_id: str, max_tokens: int = 2, reply: str | None = None) -> int:
    body = {"id": request_id, "prompt": "Hello there", "max_tokens": max_tokens, "stream": True}
    return client.publish(f"{PREFIX}/request/{client.client_id}", json.dumps(body),
                          ResponseTopic=reply or f"edgekit/reply/{client.client_id}/r")


def final_for(client: Listener, request_id: str, timeout_s: float = 60) -> Received:
    return client.until(lambda m: m.json.get("id") == request_id and m.json.get("type") != "chunk", timeout_s)


NOT_AUTHORIZED = 0x87


@pytest.fixture
def users(acl_daemon, acl_broker) -> Iterator[tuple[Listener, Listener]]:
    """kitchen, a client, and mallory, another client who tries to interfere."""
    kitchen, mallory = login(acl_broker, "kitchen"), login(acl_broker, "mallory")
    yield kitchen, mallory
    kitchen.close()
    mallory.close()


def test_with_the_acl_no_client_can_send_as_or_listen_to_another(users) -> None:
    kitchen, mallory = users
    # Mosquitto may grant a wildcard subscription, but delivers only what the ACL lets this client read.
    mallory.subscribe(f"edgekit/reply/{kitchen.client_id}/#")
    mallory.subscribe("edgekit/reply/#")
    body = json.dumps({"id": "x", "prompt": "hi", "max_tokens": 1})
    for topic in (f"{PREFIX}/request/{kitchen.client_id}", f"{PREFIX}/request", f"{PREFIX}/cancel/{kitchen.client_id}"):
        assert mallory.publish(topic, body, ResponseTopic=f"edgekit/reply/{mallory.client_id}/r") == NOT_AUTHORIZED
    assert ask(kitchen, "mine") == 0
    assert final_for(kitchen, "mine").json["type"] == "result"
    assert mallory.collect(1.0) == []


def test_a_request_naming_another_clients_reply_topic_is_refused_and_nothing_lands_there(users, acl_daemon) -> None:
    kitchen, mallory = users
    assert ask(mallory, "forged", reply=f"edgekit/reply/{kitchen.client_id}/r") == 0
    assert kitchen.collect(3.0) == []
    assert "answered under 'edgekit/reply/" in acl_daemon.output()


def test_another_client_using_my_id_first_does_not_suppress_my_answer(users) -> None:
    kitchen, mallory = users
    ask(mallory, "kitchen-7")
    assert final_for(mallory, "kitchen-7").json["type"] == "result"
    ask(kitchen, "kitchen-7")
    assert final_for(kitchen, "kitchen-7").json["type"] == "result"


def test_another_client_cannot_cancel_my_request(users, acl_daemon) -> None:
    kitchen, mallory = users
    ask(kitchen, "long", max_tokens=60)
    kitchen.until(lambda m: m.json.get("type") == "chunk", 60)  # it runs
    mallory.publish(f"{PREFIX}/cancel/{mallory.client_id}", json.dumps({"id": "long"}))
    assert final_for(kitchen, "long", 120).json["type"] == "result"
    assert f"cancel long from {mallory.client_id}: 0 request(s)" in acl_daemon.output()
    ask(kitchen, "long-2", max_tokens=1500)  # and the owner can
    kitchen.until(lambda m: m.json.get("type") == "chunk", 60)
    kitchen.publish(f"{PREFIX}/cancel/{kitchen.client_id}", json.dumps({"id": "long-2"}))
    assert final_for(kitchen, "long-2", 120).json["error"]["code"] == "cancelled"


# --- 6. silent failures: one WARNING naming the cause -----------------------------------------------------


def warnings_within(daemon: DaemonProcess, seconds: float) -> tuple[list[str], float]:
    """WARNING lines of the daemon in the ``seconds`` after it starts connecting; and when the first came."""
    end = time.monotonic() + 120
    while "connecting to" not in daemon.output():
        assert daemon.process.poll() is None and time.monotonic() < end, daemon.output()
        time.sleep(0.05)
    started, first = time.monotonic(), None
    while time.monotonic() < started + seconds:
        lines = [line for line in daemon.output().splitlines() if line.startswith("WARNING")]
        if lines and first is None:
            first = time.monotonic() - started
        time.sleep(0.05)
    return lines, first if first is not None else float("inf")


@pytest.mark.parametrize("case", ["unreachable", "dns", "tls", "password"])
def test_a_connection_problem_is_one_warning_naming_its_cause_within_5_s(
        case: str, tmp_path: Path, mosquitto, acl_broker, tiny_q8_0: Path) -> None:
    url, broker, cause = {
        "unreachable": (f"mqtt://127.0.0.1:{free_port()}", {}, "connection refused"),
        "dns": ("mqtt://no-such-broker.invalid:1883", {}, "cannot resolve the host name"),
        "tls": (f"mqtts://127.0.0.1:{mosquitto.port}", {}, "TLS failure"),
        "password": (acl_broker.url, {"username": "kitchen", "password_file": str(acl_broker.folder / "mallory.password")},
                     "refused the connection"),
    }[case]
    daemon = DaemonProcess(tmp_path / "d", tiny_q8_0, url, DEVICE, broker={**broker, "reconnect_max_s": 1.0},
                           limits={"max_request_s": 60})
    daemon.start(wait=False)
    try:
        lines, first_s = warnings_within(daemon, 7.0)
        assert first_s < 5.0, daemon.output()
        assert len(lines) == 1 and cause in lines[0], lines
        assert daemon.process.poll() is None  # it keeps trying
    finally:
        daemon.stop()


def test_a_long_lived_request_client_gets_answers_again_after_a_broker_restart(roomy, fresh_broker) -> None:
    from edgekit.serve.mqtt.client import RequestClient

    with RequestClient(fresh_broker.url, PREFIX, timeout_s=60) as client:
        assert client.ask({"prompt": "Hi", "max_tokens": 1}).final["type"] == "result"
        fresh_broker.restart()  # our session had Clean Start: the broker forgot the subscription
        end = time.monotonic() + 30
        while not client.client.is_connected() and time.monotonic() < end:
            time.sleep(0.1)
        assert client.ask({"prompt": "Hi", "max_tokens": 1}).final["type"] == "result"


# --- credentials, state files, the URL, the engine child -----------------------------------------------------


def test_serve_with_a_password_in_the_url_or_a_broken_url_fails_in_one_line(tiny_q8_0: Path) -> None:
    for url, words in (("mqtt://user:secret@127.0.0.1:1883", "credentials do not go in the URL"),
                       ("not a url", "not a host name")):
        run = subprocess.run([sys.executable, "-m", "edgekit.cli", "serve", "--model", str(tiny_q8_0),
                              "--broker", url], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert run.returncode == 2 and words in run.stderr, run.stderr
        assert "secret" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_the_state_folder_and_the_journal_are_private(daemon: DaemonProcess) -> None:
    state = daemon.folder / "state"
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "answered.jsonl").stat().st_mode & 0o777 == 0o600


def test_bench_via_an_absent_broker_fails_before_the_engine_benchmark(tiny_q8_0: Path) -> None:
    from edgekit.bench.runner import BenchConfig, run_bench
    from edgekit.errors import BrokerError

    said: list[str] = []
    started = time.monotonic()
    with pytest.raises(BrokerError, match="connection refused"):
        run_bench(BenchConfig(models=(tiny_q8_0,), via=f"mqtt://127.0.0.1:{free_port()}"), said.append)
    assert time.monotonic() - started < 10 and not any("load" in line for line in said), said


def test_the_engine_child_ignores_an_edgekit_folder_in_the_working_directory(tmp_path: Path, tiny_q8_0: Path) -> None:
    decoy = tmp_path / "cwd" / "edgekit"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise SystemExit('the decoy package was imported')\n")
    script = tmp_path / "run.py"  # a script elsewhere: the parent itself imports the real package
    script.write_text("import sys\nfrom edgekit.engine import Engine, Request\n"
                      f"with Engine({str(tiny_q8_0)!r}) as e:\n"
                      "    print(e.complete(Request(prompt='Hi', max_tokens=1)).finish_reason)\n")
    run = subprocess.run([sys.executable, str(script)], cwd=decoy.parent, capture_output=True, text=True,
                         timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert re.search(r"^(stop|length)$", run.stdout, re.M), run.stdout
