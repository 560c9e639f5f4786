"""The daemon's prompt cache over MQTT: warm before online, warm requests, kept across a SIGTERM restart."""

from __future__ import annotations

import re
from pathlib import Path

from edgekit.engine.prompt_cache import disk_files
from edgekit.engine.records import Result
from edgekit.serve.mqtt.client import RequestClient
from tests.serve_support import DaemonProcess, Listener

DEVICE = "cachebox"
PREFIX = f"edgekit/{DEVICE}"
SYSTEM = "".join(f"Entity light.room_{i} is {('on', 'off')[i % 2]} at {i * 9 % 100} percent. " for i in range(20))
OTHER = "".join(f"Sensor {i} in zone {i * 13 % 7} reads {i * 1.5:.1f} degrees. " for i in range(20))


def ask(client: RequestClient, system: str, question: str) -> Result:
    """One chat request's Result (an error answer raises its error)."""
    answer = client.ask({"messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
                         "max_tokens": 8})
    return answer.result


def restores(broker_url: str) -> int:
    """cache_restores from the next metrics the daemon publishes."""
    metrics = Listener(broker_url, f"{PREFIX}/metrics")
    try:
        return metrics.until(lambda m: not m.retain, timeout_s=10).json["cache_restores"]
    finally:
        metrics.close()


def test_the_cache_is_warm_before_online_answers_warm_requests_and_survives_a_sigterm_restart(
    tmp_path: Path, mosquitto, tiny_q8_0: Path
):
    daemon = DaemonProcess(tmp_path, tiny_q8_0, mosquitto.url, DEVICE,
                           cache={"min_tokens": 16, "warm_prompts": [SYSTEM]})
    daemon.start()
    try:
        with RequestClient(mosquitto.url, PREFIX, timeout_s=60) as client:
            first = ask(client, SYSTEM, "Is room 3 on?")  # warmed at boot: only the question is evaluated
            warm = client.ask({"messages": [{"role": "system", "content": OTHER}], "warm": True}).result
            other = ask(client, OTHER, "How warm is zone 2?")
        assert first.timings.cached_prompt_tokens >= 0.9 * first.prompt_tokens
        assert warm.text == "" and warm.completion_tokens == 0
        assert other.timings.cached_prompt_tokens >= warm.prompt_tokens - 8
        metrics = Listener(mosquitto.url, f"{PREFIX}/metrics")
        fresh = metrics.until(lambda m: not m.retain, timeout_s=10).json
        metrics.close()
        assert fresh["cache_hits"] >= 2 and fresh["cache_entries"] >= 2 and fresh["cache_disk_mb"] > 0
    finally:
        assert daemon.stop() == 0, daemon.output()
    assert len(disk_files(tmp_path / "state" / "prompt-cache")) >= 2

    # Started again without warm_prompts (a warm prompt would be the last prefix put in the context).
    daemon = DaemonProcess(tmp_path, tiny_q8_0, mosquitto.url, DEVICE, cache={"min_tokens": 16})
    daemon.start()
    try:
        with RequestClient(mosquitto.url, PREFIX, timeout_s=60) as client:
            at_start = restores(mosquitto.url)
            other_again = ask(client, OTHER, "How warm is zone 2?")  # the newest state: in the context since start
            after_newest = restores(mosquitto.url)
            again = ask(client, SYSTEM, "Is room 3 on?")
    finally:
        assert daemon.stop() == 0, daemon.output()
    assert at_start >= 1 and after_newest == at_start  # the first request found its prefix in the context
    assert again.text == first.text and other_again.text == other.text
    assert again.timings.cached_prompt_tokens >= 0.9 * again.prompt_tokens
    assert other_again.timings.cached_prompt_tokens >= 0.9 * other_again.prompt_tokens
    restarts = re.findall(r"prompt cache: warmed in \d+ ms \((\d+) saved states restored", daemon.output())
    assert len(restarts) == 2 and int(restarts[1]) >= 2, daemon.output()
