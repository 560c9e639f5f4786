"""A background thread that reads the box's sensors while a benchmark runs.

The engine runs in its own process, so the only cost to generation is the sensor reads'
CPU time: on the captured Jetson tree (thirty sysfs files) about 2 ms a read on this busy VM,
0.2 % of one core at one read a second; a Pi's two vcgencmd calls cost a few ms more.
benchmarks/bench_sampler.py measures the generation rate with sampling on and off in paired
rounds, and the sampler's share of a core.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

from edgekit.bench.sensors import DeviceFacts, Reading, Sensors

log = logging.getLogger(__name__)

# One read a second: RAPL counters wrap after tens of minutes, the Pi's PMIC and Jetson's INA3221
# average over tens of ms, and shorter requests get the power around them (energy.py interpolates).
INTERVAL_S = 1.0


class Sampler:
    """``with Sampler(root) as s:`` reads every ``interval_s`` until the block ends (and once at
    each end, so every request inside lies between two readings)."""

    def __init__(self, root: Path = Path("/"), interval_s: float = INTERVAL_S) -> None:
        self.sensors = Sensors(root)
        self.interval_s = interval_s
        self.readings: list[Reading] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgekit-sensors", daemon=True)

    @property
    def facts(self) -> DeviceFacts:
        return self.sensors.facts()

    def __enter__(self) -> Sampler:
        self.readings.append(self.sensors.read())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.readings.append(self.sensors.read())
        self.sensors.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.readings.append(self.sensors.read())
            except Exception:  # a sensor that fails mid-run must not end the benchmark
                log.exception("reading the sensors failed; sampling stops")
                return

    def snapshot(self) -> list[Reading]:
        return list(self.readings)


def sampler_for(enabled: bool, root: Path = Path("/")) -> Sampler | contextlib.nullcontext[None]:
    """The sensors' background reader, or a stand-in that yields None with sampling off."""
    return Sampler(root) if enabled else contextlib.nullcontext(None)


def read_cost_s(root: Path = Path("/"), reads: int = 50) -> float:
    """Seconds one read of every sensor below ``root`` takes (for the sampler's cost figures)."""
    sensors = Sensors(root)
    started = time.perf_counter()
    for _ in range(reads):
        sensors.read()
    sensors.close()
    return (time.perf_counter() - started) / reads
