"""`edgekit serve` against a real Mosquitto and the tiny model: the protocol as a client sees it.

One daemon (queue of 2) is shared by the module; tests that need a slow request send a
long one ("long_request") and cancel it when done with it.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekit.serve.mqtt.client import RequestClient
from edgekit.serve.config import BrokerConfig
from tests.fixtures.broker import Broker
from tests.serve_support import LONG_CTX, DaemonProcess, Listener, finals

DEVICE = "testbox"
PREFIX = f"edgekit/{DEVICE}"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, mosquitto, tiny_q8_0: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("daemon"), tiny_q8_0, mosquitto.url, DEVICE,
                      limits={"queue_size": 2, "max_payload_bytes": 4096, "max_prompt_tokens": 380})  # 380: a tool request fits
    d.start()
    yield d
    assert d.stop() == 0, d.output()


@pytest.fixture
def client(daemon: DaemonProcess, mosquitto) -> Iterator[RequestClient]:
    with RequestClient(mosquitto.url, PREFIX, timeout_s=60) as c:
        yield c


@pytest.fixture
def replies(mosquitto) -> Iterator[tuple[str, Listener]]:
    topic = f"edgekit/reply/{uuid.uuid4().hex}"
    listener = Listener(mosquitto.url, topic)
    yield topic, listener
    listener.close()


def mosquitto_pub(broker, payload: str, *args: str, version: str = "mqttv5", topic: str = f"{PREFIX}/request") -> None:
    subprocess.run(["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", version, "-q", "1",
                    "-t", topic, *args, "-m", payload], check=True, timeout=10)


def long_request(client: RequestClient) -> tuple[str, bytes]:
    """Start a request that runs for seconds; returns its id once its first chunk has arrived."""
    request_id = f"long-{uuid.uuid4().hex[:8]}"
    body = {"id": request_id, "prompt": "Once upon a time", "max_tokens": LONG_CTX - 64, "stream": True}
    t0 = time.perf_counter()
    correlation = client.send(body)
    stream = client.messages(correlation, t0)
    _ms, first = next(stream)
    assert first["type"] == "chunk", first
    return request_id, correlation


def final_of(client: RequestClient, correlation: bytes) -> dict:
    return [m for _ms, m in client.messages(correlation, time.perf_counter())][-1]


@pytest.mark.parametrize("stream", [True, False])
def test_mosquitto_pub_request_is_answered_on_its_response_topic_with_its_correlation_data(
        daemon, mosquitto, replies, stream: bool) -> None:
    topic, listener = replies
    body = {"prompt": "The weather today is", "max_tokens": 6, "stream": stream}
    mosquitto_pub(mosquitto, json.dumps(body), "-D", "publish", "response-topic", topic,
                  "-D", "publish", "correlation-data", "req-42")
    messages = [listener.next()]
    while messages[-1].json["type"] == "chunk":
        messages.append(listener.next())
    assert all(m.correlation == b"req-42" for m in messages)
    final, chunks = messages[-1].json, [m.json for m in messages[:-1]]
    assert final["type"] == "result", final
    assert final["usage"]["completion_tokens"] >= 1 and final["device"] == DEVICE
    assert set(final["timings"]) == {"queue_ms", "time_to_first_token_ms", "prompt_ms", "prompt_tokens_per_s",
                                     "generation_ms", "generation_tokens_per_s", "total_ms"}
    assert set(final["usage"]) == {"prompt_tokens", "completion_tokens", "cached_prompt_tokens"}
    if stream:
        assert [c["seq"] for c in chunks] == list(range(len(chunks))) and chunks
        assert "".join(c["text"] for c in chunks) == final["text"]
        assert sum(c["tokens"] for c in chunks) <= final["usage"]["completion_tokens"]
        assert all(a["elapsed_ms"] <= b["elapsed_ms"] for a, b in zip(chunks, chunks[1:]))
    else:
        assert chunks == []


def test_mqtt311_client_names_its_reply_topic_in_the_payload_and_gets_its_id_back(daemon, mosquitto, replies):
    topic, listener = replies
    mosquitto_pub(mosquitto, json.dumps({"id": "v311-1", "prompt": "Hi", "max_tokens": 1, "reply_to": topic}),
                  version="mqttv311")
    final = listener.next().json
    assert final["type"] == "result" and final["id"] == "v311-1"


def test_chat_messages_are_answered(client: RequestClient) -> None:
    answer = client.ask({"messages": [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Hello"}], "max_tokens": 2})
    assert answer.final["type"] == "result" and answer.final["usage"]["prompt_tokens"] > 2


def test_status_is_retained_online_with_model_and_quant(daemon, mosquitto, tiny_q8_0: Path) -> None:
    listener = Listener(mosquitto.url, f"{PREFIX}/status")
    status = listener.next(10)
    listener.close()
    assert status.retain
    assert status.json["state"] == "online" and status.json["model"] == tiny_q8_0.name
    assert status.json["quant"] == "Q8_0"


def test_metrics_are_published_with_counters(daemon, mosquitto, client: RequestClient) -> None:
    client.ask({"prompt": "Hi", "max_tokens": 1})
    listener = Listener(mosquitto.url, f"{PREFIX}/metrics")
    fresh = listener.until(lambda m: not m.retain, timeout_s=10).json
    listener.close()
    assert fresh["requests_served"] >= 1 and fresh["queue_depth"] == 0
    assert fresh["ttft_p50_ms"] is not None and fresh["ttft_p95_ms"] >= fresh["ttft_p50_ms"]
    assert fresh["memory_mb"] > 10


def test_discovery_is_retained_and_sent_again_when_home_assistant_comes_online(daemon, mosquitto) -> None:
    listener = Listener(mosquitto.url, f"homeassistant/sensor/edgekit_{DEVICE}/+/config")
    retained = listener.collect(1.0)
    assert retained and all(m.retain for m in retained)
    assert json.loads(retained[0].payload)["availability"][0]["topic"] == f"{PREFIX}/status"
    listener.publish("homeassistant/status", "online")
    wanted, again = {m.topic for m in retained}, set()
    end = time.monotonic() + 15  # re-announced at most every 10 s: at once, or when that window ends
    while again != wanted and time.monotonic() < end:
        again |= {m.topic for m in listener.collect(0.5)}
    listener.close()
    assert again == wanted


def test_malformed_json_is_answered_bad_request_on_the_reply_topic(daemon, mosquitto, replies) -> None:
    topic, listener = replies
    mosquitto_pub(mosquitto, "{not json", "-D", "publish", "response-topic", topic,
                  "-D", "publish", "correlation-data", "bad-1")
    reply = listener.next()
    assert reply.correlation == b"bad-1"
    assert reply.json["type"] == "error" and reply.json["error"]["code"] == "bad_request"


def test_out_of_range_sampling_is_bad_request_naming_the_field(client: RequestClient) -> None:
    final = client.ask({"prompt": "Hi", "temperature": 7}).final
    assert final["error"]["code"] == "bad_request" and "temperature" in final["error"]["message"]
    final = client.ask({"prompt": "Hi", "max_tokens": LONG_CTX + 1}).final
    assert final["error"]["code"] == "bad_request" and "max_tokens" in final["error"]["message"]


def test_payload_over_the_limit_is_too_large(client: RequestClient) -> None:
    final = client.ask({"prompt": "x" * 5000, "max_tokens": 1}).final
    assert final["type"] == "error" and final["error"]["code"] == "too_large"


def test_prompt_over_the_token_limit_is_too_large(client: RequestClient) -> None:
    final = client.ask({"prompt": "word " * 400, "max_tokens": 1}).final
    assert final["error"]["code"] == "too_large" and "tokens" in final["error"]["message"]


def test_reply_topic_outside_the_allowed_prefix_is_refused_on_the_errors_topic(daemon, mosquitto) -> None:
    listener = Listener(mosquitto.url, f"{PREFIX}/errors", "elsewhere/#")
    mosquitto_pub(mosquitto, json.dumps({"id": "evil-1", "prompt": "Hi", "max_tokens": 1,
                                         "reply_to": "elsewhere/lights/set"}), version="mqttv311")
    reply = listener.next()
    listener.close()
    assert reply.topic == f"{PREFIX}/errors"
    assert reply.json["id"] == "evil-1" and reply.json["error"]["code"] == "bad_request"


def test_malformed_json_asking_for_a_reply_outside_the_prefix_is_refused_on_the_errors_topic(
        daemon, mosquitto) -> None:
    listener = Listener(mosquitto.url, f"{PREFIX}/errors", "elsewhere/#")
    mosquitto_pub(mosquitto, "{not json", "-D", "publish", "response-topic", "elsewhere/x")
    reply = listener.next()
    listener.close()
    assert reply.topic == f"{PREFIX}/errors" and reply.json["error"]["code"] == "bad_request"


def test_an_id_sent_again_is_run_once_and_each_repeat_is_answered_duplicate(daemon, mosquitto, replies) -> None:
    topic, listener = replies
    body = json.dumps({"id": f"dup-{uuid.uuid4().hex[:6]}", "prompt": "Hi", "max_tokens": 1, "reply_to": topic})
    for _ in range(3):
        listener.publish(f"{PREFIX}/request", body)
    time.sleep(0.5)
    listener.publish(f"{PREFIX}/request", body)  # after the answer: the journal remembers it
    got = finals(listener.collect(3.0))
    assert sorted(f["type"] for f in got) == ["error", "error", "error", "result"], got
    assert all(f["error"]["code"] == "duplicate" for f in got if f["type"] == "error")


def test_cancel_by_id_stops_the_running_request(client: RequestClient) -> None:
    request_id, correlation = long_request(client)
    client.cancel(request_id)
    final = final_of(client, correlation)
    assert final["id"] == request_id and final["error"]["code"] == "cancelled"


def test_request_whose_expiry_passes_in_the_queue_is_answered_expired_not_run(client: RequestClient) -> None:
    long_id, long_correlation = long_request(client)
    correlation = client.send({"prompt": "Hi", "max_tokens": 1}, expiry_s=1)
    time.sleep(1.5)
    client.cancel(long_id)
    assert final_of(client, long_correlation)["error"]["code"] == "cancelled"
    final = final_of(client, correlation)
    assert final["type"] == "error" and final["error"]["code"] == "expired"


def test_requests_beyond_the_queue_get_busy_at_once(client: RequestClient) -> None:
    long_id, long_correlation = long_request(client)
    correlations = [client.send({"prompt": "Hi", "max_tokens": 1}) for _ in range(4)]
    busy = [final_of(client, c) for c in correlations[2:]]  # the queue holds 2
    assert [f["error"]["code"] for f in busy] == ["busy", "busy"]
    client.cancel(long_id)
    final_of(client, long_correlation)
    assert [final_of(client, c)["type"] for c in correlations[:2]] == ["result", "result"]


def test_cancel_of_a_queued_request_answers_it_cancelled_at_once(client: RequestClient) -> None:
    long_id, long_correlation = long_request(client)
    queued_id = f"q-{uuid.uuid4().hex[:6]}"
    correlation = client.send({"id": queued_id, "prompt": "Hi", "max_tokens": 1})
    time.sleep(0.2)
    client.cancel(queued_id)
    final = final_of(client, correlation)
    assert final["id"] == queued_id and final["error"]["code"] == "cancelled"
    client.cancel(long_id)
    assert final_of(client, long_correlation)["error"]["code"] == "cancelled"


def test_edgekit_request_prints_the_answer_and_timings(daemon, mosquitto) -> None:
    run = subprocess.run([sys.executable, "-m", "edgekit.cli", "request", "Hello", "--broker", mosquitto.url,
                          "--prefix", PREFIX, "--max-tokens", "2", "--json"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["type"] == "result" and "round trip" in run.stderr


def test_edgekit_request_streams_text_as_it_arrives(daemon, mosquitto) -> None:
    run = subprocess.run([sys.executable, "-m", "edgekit.cli", "request", "Hello", "--broker", mosquitto.url,
                          "--prefix", PREFIX, "--max-tokens", "4", "--stream", "--system", "Be brief."],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.endswith("\n") and len(run.stdout) > 1 and "generated tokens" in run.stderr


def test_edgekit_request_with_a_bad_value_fails_with_one_line(daemon, mosquitto) -> None:
    run = subprocess.run([sys.executable, "-m", "edgekit.cli", "request", "Hello", "--broker", mosquitto.url,
                          "--prefix", PREFIX, "--max-tokens", "0"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "max_tokens" in run.stderr


def test_sighup_reloads_the_model_and_keeps_serving(daemon, mosquitto, client: RequestClient) -> None:
    listener = Listener(mosquitto.url, f"{PREFIX}/status")
    listener.next(5)  # the retained one
    daemon.signal(signal.SIGHUP)
    status = listener.until(lambda m: not m.retain, timeout_s=60).json
    listener.close()
    assert status["state"] == "online"
    assert client.ask({"prompt": "Hi", "max_tokens": 1}).final["type"] == "result"
    assert daemon.process.poll() is None


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl for a test certificate")
def test_daemon_and_client_connect_over_tls_with_a_password_from_a_file(tmp_path: Path, tiny_q8_0: Path) -> None:
    folder = tmp_path / "tls"
    folder.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(folder / "broker.key"),
                    "-out", str(folder / "ca.crt")], check=True, capture_output=True)
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(folder / "passwd"), "kitchen", "s3cret"], check=True)
    (folder / "mqtt_password").write_text("s3cret\n")
    broker = Broker(folder)
    secure = (f"cafile {folder / 'ca.crt'}\ncertfile {folder / 'ca.crt'}\nkeyfile {folder / 'broker.key'}\n"
              f"password_file {folder / 'passwd'}\nallow_anonymous false\n")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true\n", secure))
    tls = {"username": "kitchen", "password_file": str(folder / "mqtt_password"), "ca_file": str(folder / "ca.crt")}
    url = f"mqtts://127.0.0.1:{broker.port}"
    with broker:
        daemon = DaemonProcess(tmp_path / "d", tiny_q8_0, url, "tlsbox", broker=tls, topics={"discovery": False})
        listener_free_start(daemon)
        try:
            config = BrokerConfig(url=url, username="kitchen", password_file=folder / "mqtt_password",
                                  ca_file=folder / "ca.crt")
            with RequestClient(url, daemon.prefix, broker=config, timeout_s=60) as client:
                assert client.ask({"prompt": "Hi", "max_tokens": 1}).final["type"] == "result"
        finally:
            assert daemon.stop() == 0, daemon.output()


def listener_free_start(daemon: DaemonProcess) -> None:
    """Start a daemon whose broker our plain-TCP Listener cannot reach: wait for its log line instead."""
    daemon.start(wait=False)
    end = time.monotonic() + 120
    while "connected to mqtts://" not in daemon.output():
        assert daemon.process.poll() is None and time.monotonic() < end, daemon.output()
        time.sleep(0.2)


def test_a_refused_login_is_not_taken_for_a_connection(tmp_path: Path, tiny_q8_0: Path) -> None:
    folder = tmp_path / "auth"
    folder.mkdir()
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(folder / "passwd"), "kitchen", "right"], check=True)
    (folder / "wrong").write_text("wrong\n")
    broker = Broker(folder)
    broker.conf.write_text(broker.conf.read_text().replace(
        "allow_anonymous true\n", f"allow_anonymous false\npassword_file {folder / 'passwd'}\n"))
    with broker:
        daemon = DaemonProcess(tmp_path / "d", tiny_q8_0, broker.url, "authbox",
                               broker={"username": "kitchen", "password_file": str(folder / "wrong")})
        daemon.start(wait=False)
        try:
            end = time.monotonic() + 120
            while "refused the connection" not in daemon.output() and time.monotonic() < end:
                time.sleep(0.2)
            assert "refused the connection" in daemon.output()
            assert "connected to" not in daemon.output() and daemon.process.poll() is None
        finally:
            daemon.stop()


def test_a_tool_call_round_trip_over_mqtt(client: RequestClient) -> None:
    """tools in, a structured call out (streamed as a record, never as text), the result back, text out."""
    switch = {"type": "function", "function": {"name": "switch", "parameters": {
        "type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}}}
    ask = [{"role": "user", "content": "Light on"}]
    named = {"type": "function", "function": {"name": "switch"}}
    answer = client.ask({"messages": ask, "tools": [switch], "tool_choice": named, "max_tokens": 100,
                         "stream": True, "stream_interval_ms": 0})
    final = answer.final
    assert final["type"] == "result" and final["finish_reason"] == "tool_calls", final
    (call,) = final["tool_calls"]
    assert call["function"]["name"] == "switch" and isinstance(call["function"]["arguments"]["on"], bool)
    assert all(c["text"] == "" for c in answer.chunks) and [c.get("tool_calls") for c in answer.chunks if c.get("tool_calls")] == [[call]]
    back = [*ask, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "the light is on"}]
    answer = client.ask({"messages": back, "tools": [switch], "max_tokens": 4})
    assert answer.final["type"] == "result" and answer.final["text"] and "tool_calls" not in answer.final, answer.final
