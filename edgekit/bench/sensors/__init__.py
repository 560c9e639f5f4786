"""Energy, temperature, clocks and throttling of the box, read below a root folder.

One module per source (rapl, nvml, ina3221, raspberry_pi, thermal, clocks); this one gathers
them into a Reading. What the box has no sensor for is None (n/a), never 0. On ``/`` the
real files and commands are read; tests pass captured board trees (tests/boards/<board>/).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.bench.sensors.clocks import CpuClocks, GpuDevfreq, governor, jetson_power_mode
from edgekit.bench.sensors.commands import Commands
from edgekit.bench.sensors.ina3221 import Ina3221Watts
from edgekit.bench.sensors.nvml import Nvml, throttle_names
from edgekit.bench.sensors.power import IntegratedPower
from edgekit.bench.sensors.rapl import Rapl
from edgekit.bench.sensors.raspberry_pi import PiPmicWatts, pi_throttled
from edgekit.bench.sensors.thermal import ThermalZones

# On a Jetson, a CPU clock under this share of the run's first policy maximum, while under
# load, counts as throttled: a cooling device lowers the policy maximum, a limit the current clock.
JETSON_CLOCK_FLOOR = 0.9


@dataclass(frozen=True)
class Reading:
    """One moment of every sensor; None where the box has no such sensor."""

    t_s: float  # time.monotonic()
    energy_j: float | None  # joules since the sensors were opened, every power source summed
    temp_c: float | None  # the hottest zone (or GPU)
    cpu_mhz: float | None
    cpu_max_mhz: float | None  # the cpufreq policy's maximum now
    gpu_mhz: float | None
    gpu_max_mhz: float | None
    throttled: bool | None  # None: the box cannot tell
    reasons: tuple[str, ...] = ()
    temps_c: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeviceFacts:
    """What goes into every result: the sensors found, the power mode and the governor."""

    power_sources: tuple[str, ...]
    temperature: str | None
    throttle_source: str | None
    power_mode: str | None  # Jetson `nvpmodel -q`
    governor: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Sensors:
    """Every sensor the box below ``root`` has; ``read()`` samples them all at once."""

    def __init__(self, root: Path = Path("/")) -> None:
        root = Path(root)
        self.root, self.commands = root, Commands(root)
        self.nvml = Nvml(root)
        self.power: list[Any] = [s for s in (Rapl(root), self.nvml) if s] + self._watt_sources(root)
        self.thermal, self.cpu, self.gpu = ThermalZones(root), CpuClocks(root), GpuDevfreq(root)
        self.power_mode = jetson_power_mode(self.commands)
        self.pi = pi_throttled(self.commands) is not None
        self.jetson = self.power_mode is not None or (root / "etc/nv_tegra_release").exists()
        self._cpu_baseline: float | None = None

    def _watt_sources(self, root: Path) -> list[IntegratedPower]:
        sources = []
        ina = Ina3221Watts(root)
        if ina.rails:
            sources.append(IntegratedPower(ina.name, ina))
        pmic = PiPmicWatts(self.commands)
        if pmic.present():
            sources.append(IntegratedPower(pmic.name, pmic))
        return sources

    def facts(self) -> DeviceFacts:
        throttle = ("vcgencmd get_throttled" if self.pi else "NVML clock reasons" if self.nvml
                    else "Jetson clocks" if self.jetson and self.cpu else None)
        return DeviceFacts(
            power_sources=tuple(s.name for s in self.power),
            temperature="thermal zones" if self.thermal else "NVML" if self.nvml else None,
            throttle_source=throttle, power_mode=self.power_mode, governor=governor(self.root),
        )

    def read(self, t_s: float | None = None) -> Reading:
        t_s = time.monotonic() if t_s is None else t_s
        energy = [s.energy_j(t_s) for s in self.power]
        temps = self.thermal.read()
        gpu = self.nvml.latest if self.nvml else None  # read with the energy
        if gpu is not None and gpu.temp_c is not None:
            temps["GPU"] = float(gpu.temp_c)
        cpu_mhz, cpu_max = self.cpu.read()
        gpu_mhz, gpu_max = (gpu.sm_mhz, gpu.sm_max_mhz) if gpu is not None else self.gpu.read()
        throttled, reasons = self._throttle(cpu_mhz, cpu_max, gpu)
        return Reading(
            t_s=t_s, energy_j=None if not energy or None in energy else sum(energy),  # type: ignore[arg-type]
            temp_c=max(temps.values()) if temps else None, cpu_mhz=cpu_mhz, cpu_max_mhz=cpu_max,
            gpu_mhz=gpu_mhz, gpu_max_mhz=gpu_max, throttled=throttled, reasons=reasons, temps_c=temps,
        )

    def _throttle(self, cpu_mhz: float | None, cpu_max: float | None, gpu: Any) -> tuple[bool | None, tuple[str, ...]]:
        reasons: list[str] = []
        known = False
        if self.pi:
            flags = pi_throttled(self.commands)
            known = flags is not None
            reasons += flags or ()
        if gpu is not None:
            known = True
            reasons += throttle_names(gpu.reasons)
        if self.jetson and cpu_mhz is not None and cpu_max is not None:
            known = True
            self._cpu_baseline = self._cpu_baseline or cpu_max
            if cpu_mhz < JETSON_CLOCK_FLOOR * self._cpu_baseline:
                reasons.append(f"CPU at {cpu_mhz:.0f} of {self._cpu_baseline:.0f} MHz")
        return (bool(reasons) if known else None), tuple(reasons)

    def close(self) -> None:
        self.nvml.close()
