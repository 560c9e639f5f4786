"""Clocks: cpufreq (current vs the policy's maximum), a GPU's devfreq, the governor and the
Jetson power mode (``nvpmodel -q``).

A policy maximum below the hardware's (cpuinfo_max_freq) is a power mode or a cooling device's
cap; a current clock below the policy's under full load is the governor or throttling.
"""

from __future__ import annotations

import re
from pathlib import Path

from edgekit.bench.sensors.commands import Commands
from edgekit.hardware import _read, _read_int

# devfreq device names of integrated GPUs: Orin (ga10b, or "gpu" on Jetson Linux 36), Xavier, TX2.
GPU_DEVFREQ = ("gpu", "ga10b", "gv11b", "gp10b")


class CpuClocks:
    """The fastest CPU's current and policy-maximum clocks, in MHz."""

    def __init__(self, root: Path) -> None:
        cpus = sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq"))
        self.cpus = [c for c in cpus if (c / "scaling_cur_freq").exists()]

    def __bool__(self) -> bool:
        return bool(self.cpus)

    def read(self) -> tuple[float | None, float | None]:
        pairs = [(_read_int(c / "scaling_cur_freq"), _read_int(c / "scaling_max_freq")) for c in self.cpus]
        cur = [k for k, _ in pairs if k is not None]
        top = [k for _, k in pairs if k is not None]
        return (max(cur) / 1000 if cur else None), (max(top) / 1000 if top else None)


class GpuDevfreq:
    """An integrated GPU's clock through devfreq (cur_freq and max_freq in Hz), in MHz."""

    def __init__(self, root: Path) -> None:
        found = [d for d in sorted((root / "sys/class/devfreq").glob("*"))
                 if any(word in d.name.lower() for word in GPU_DEVFREQ) and (d / "cur_freq").exists()]
        self.device = found[0] if found else None

    def __bool__(self) -> bool:
        return self.device is not None

    def read(self) -> tuple[float | None, float | None]:
        if self.device is None:
            return None, None
        cur, top = _read_int(self.device / "cur_freq"), _read_int(self.device / "max_freq")
        return (cur / 1e6 if cur else None), (top / 1e6 if top else None)


def governor(root: Path) -> str | None:
    text = _read(root / "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    return text.strip() if text else None


def jetson_power_mode(commands: Commands) -> str | None:
    """``NV Power Mode: 15W`` -> "15W" (with the mode's number on the next line: "15W (mode 0)")."""
    text = commands.output("nvpmodel", "-q")
    match = re.search(r"NV Power Mode:\s*(.+)", text or "")
    if not match:
        return None
    number = re.search(r"^\s*(\d+)\s*$", text[match.end():], re.MULTILINE)  # type: ignore[index]
    return match.group(1).strip() + (f" (mode {number.group(1)})" if number else "")
