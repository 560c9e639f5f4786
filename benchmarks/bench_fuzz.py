"""A longer fuzz run against `edgekit serve`: 20,000 seeded malformed requests (tests/malformed.py).

Run: .venv/bin/python -m pytest benchmarks/bench_fuzz.py -q -s
(EDGEKIT_FUZZ_COUNT and EDGEKIT_FUZZ_SEED change the size and the seed.)

Prints the rate, the answers by code and the daemon's RSS growth per 5,000 requests; fails
if any request goes unanswered or is answered twice, or the daemon process changes.
The suite's test_serve_attack.py runs 2,400 of the same requests.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from tests.malformed import run_fuzz
from tests.serve_support import DaemonProcess, Listener

COUNT = int(os.environ.get("EDGEKIT_FUZZ_COUNT", "20000"))
SEED = int(os.environ.get("EDGEKIT_FUZZ_SEED", "1"))
BATCH = 5000
PREFIX = "edgekit/fuzzed"


def test_fuzz_20000_malformed_requests(mosquitto, tmp_path: Path, tiny_q8_0: Path) -> None:
    daemon = DaemonProcess(tmp_path / "d", tiny_q8_0, mosquitto.url, "fuzzed",
                           limits={"max_payload_bytes": 8192, "max_request_s": 30}).start()
    reply = f"edgekit/reply/{uuid.uuid4().hex}"
    listener = Listener(mosquitto.url, reply, f"{PREFIX}/errors")
    pid = daemon.process.pid
    try:
        for start in range(0, COUNT, BATCH):
            run = run_fuzz(listener, f"{PREFIX}/request", reply, pid, seed=SEED + start, count=min(BATCH, COUNT - start))
            print(f"fuzz {start + run.sent:>6}/{COUNT}: {run.sent / run.seconds:6.0f} requests/s, "
                  f"RSS {run.rss_growth_mb:+6.1f} MB, {dict(run.codes)}")
            assert not run.unanswered and run.answered_twice == 0, run
            assert daemon.process.poll() is None and daemon.process.pid == pid
    finally:
        listener.close()
        daemon.stop()
