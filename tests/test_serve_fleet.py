"""A fleet: three daemons on one MQTT 5 shared subscription split the requests, none twice."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from edgekit.serve.mqtt.client import RequestClient
from tests.serve_support import DaemonProcess, Listener

PREFIX = "edgekit/fleet"


def test_three_daemons_on_a_shared_subscription_split_60_requests_none_twice(mosquitto, tmp_path: Path,
                                                                              tiny_q8_0) -> None:
    topics = {"prefix": PREFIX, "share_group": "fleet"}
    daemons = [DaemonProcess(tmp_path / f"f{i}", tiny_q8_0, mosquitto.url, f"fleet-{i}", topics=topics,
                             limits={"queue_size": 32}) for i in range(3)]
    try:
        for daemon in daemons:
            daemon.start()
        with RequestClient(mosquitto.url, PREFIX, timeout_s=120) as client:
            every_reply = Listener(mosquitto.url, client.reply_topic)
            t0 = time.perf_counter()
            sent = {client.send({"id": f"job-{i}", "prompt": f"Job {i}", "max_tokens": 1}): f"job-{i}"
                    for i in range(60)}
            finals = {rid: [m for _ms, m in client.messages(c, t0)][-1] for c, rid in sent.items()}
            answers = Counter(m.json["id"] for m in every_reply.collect(1.0) if m.json["type"] == "result")
            every_reply.close()
    finally:
        for daemon in daemons:
            daemon.stop()
    assert all(f["type"] == "result" and f["id"] == rid for rid, f in finals.items())
    served_by = Counter(f["device"] for f in finals.values())
    assert set(served_by) == {"fleet-0", "fleet-1", "fleet-2"}, served_by
    assert sum(served_by.values()) == 60
    assert sorted(answers) == sorted(finals) and set(answers.values()) == {1}
