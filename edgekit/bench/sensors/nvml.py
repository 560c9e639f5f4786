"""NVIDIA GPUs through NVML (nvidia-ml-py): energy, temperature, SM clock and throttle reasons.

The total-energy counter (mJ since the driver loaded; Volta and newer) is used where the GPU
has it, else the power reading is integrated. A captured board keeps a list of readings in
``<root>/.edgekit-nvml.json``, replayed one per read, as hardware.py keeps NVML's facts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.bench.sensors.power import Integrator

log = logging.getLogger(__name__)

CAPTURED_FILE = ".edgekit-nvml.json"
# nvmlClocksEventReasons bits that mean the GPU runs slower than it could (nvml.h); GPU idle,
# application clocks and sync boost are not throttling.
THROTTLE_REASONS: dict[int, str] = {
    0x4: "GPU power cap", 0x8: "GPU hardware slowdown", 0x20: "GPU thermal slowdown",
    0x40: "GPU hardware thermal slowdown", 0x80: "GPU power brake",
}


@dataclass(frozen=True)
class GpuReading:
    """All GPUs together: energy in mJ (a counter) or power in mW, hottest, slowest clock."""

    energy_mj: float | None
    power_mw: float | None
    temp_c: float | None
    sm_mhz: float | None
    sm_max_mhz: float | None
    reasons: int


class Nvml:
    """Reads every NVIDIA GPU; false (no GPU) when NVML or its library is missing."""

    def __init__(self, root: Path) -> None:
        self._replay: list[dict[str, Any]] | None = None
        self._lib: Any = None
        self._handles: list[Any] = []
        self._base_mj: float | None = None
        self._integrator = Integrator()
        self.latest: GpuReading | None = None  # the reading energy_j took: one NVML read per sample
        if Path(root) != Path("/"):
            self._replay = _captured(Path(root) / CAPTURED_FILE)
        else:
            self._lib, self._handles = _open_nvml()
        self.name = "NVML" if self else ""

    def __bool__(self) -> bool:
        return bool(self._replay) or bool(self._handles)

    def read(self) -> GpuReading | None:
        if self._replay:
            return GpuReading(**(self._replay.pop(0) if len(self._replay) > 1 else self._replay[0]))
        if self._handles:
            return _combined([_read_gpu(self._lib, h) for h in self._handles])
        return None

    def energy_j(self, t_s: float) -> float | None:
        """Joules since the first read: the counter where every GPU has one, else integrated power."""
        reading = self.latest = self.read()
        if reading is None:
            return None
        if reading.energy_mj is not None:
            self._base_mj = reading.energy_mj if self._base_mj is None else self._base_mj
            return (reading.energy_mj - self._base_mj) / 1000
        return None if reading.power_mw is None else self._integrator.add(t_s, reading.power_mw / 1000)

    def close(self) -> None:
        if self._handles:
            self._lib.nvmlShutdown()
            self._handles = []


def throttle_names(reasons: int) -> tuple[str, ...]:
    return tuple(name for bit, name in THROTTLE_REASONS.items() if reasons & bit)


def _captured(path: Path) -> list[dict[str, Any]] | None:
    try:
        return list(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def _open_nvml() -> tuple[Any, list[Any]]:
    try:
        import pynvml  # nvidia-ml-py: the [gpu] extra
    except ImportError:
        return None, []
    try:
        pynvml.nvmlInit()
        return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except pynvml.NVMLError as exc:
        log.debug("NVML unavailable: %s", exc)
        return None, []


def _read_gpu(nvml: Any, handle: Any) -> GpuReading:
    def value(name: str, *args: Any) -> Any:
        try:
            return getattr(nvml, name)(handle, *args)
        except (nvml.NVMLError, AttributeError):  # not supported on this GPU or driver
            return None

    reasons = value("nvmlDeviceGetCurrentClocksEventReasons")
    if reasons is None:
        reasons = value("nvmlDeviceGetCurrentClocksThrottleReasons")
    return GpuReading(
        energy_mj=value("nvmlDeviceGetTotalEnergyConsumption"), power_mw=value("nvmlDeviceGetPowerUsage"),
        temp_c=value("nvmlDeviceGetTemperature", nvml.NVML_TEMPERATURE_GPU),
        sm_mhz=value("nvmlDeviceGetClockInfo", nvml.NVML_CLOCK_SM),
        sm_max_mhz=value("nvmlDeviceGetMaxClockInfo", nvml.NVML_CLOCK_SM), reasons=reasons or 0,
    )


def _combined(readings: list[GpuReading]) -> GpuReading:
    def total(name: str) -> float | None:
        values = [getattr(r, name) for r in readings]
        return None if None in values else sum(values)

    def extreme(name: str, pick: Any) -> float | None:
        values = [getattr(r, name) for r in readings if getattr(r, name) is not None]
        return pick(values) if values else None

    reasons = 0
    for r in readings:
        reasons |= r.reasons
    return GpuReading(total("energy_mj"), total("power_mw"), extreme("temp_c", max), extreme("sm_mhz", min),
                      extreme("sm_max_mhz", min), reasons)
