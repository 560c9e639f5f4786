"""Jetson's INA3221 power monitors through hwmon: each channel's bus voltage (mV) and current (mA).

Orin Nano and NX label their channels VDD_IN (the whole module's input), VDD_CPU_GPU_CV and
VDD_SOC (NVIDIA's Jetson Linux developer guide, "Power Monitoring"); VDD_IN is the figure that
matches a meter at the barrel jack, so it is used alone when present, else the channels' sum.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.hardware import _read, _read_int

BOARD_INPUT = "VDD_IN"


def ina3221_channels(root: Path) -> dict[str, tuple[Path, Path]]:
    """label -> (millivolt file, milliamp file) of every INA3221 channel that has both."""
    channels: dict[str, tuple[Path, Path]] = {}
    for hwmon in sorted((root / "sys/class/hwmon").glob("hwmon*")):
        if (_read(hwmon / "name") or "").strip() != "ina3221":
            continue
        for label_file in sorted(hwmon.glob("in*_label")):
            n = label_file.name[2:-6]
            volts, amps = hwmon / f"in{n}_input", hwmon / f"curr{n}_input"
            if volts.exists() and amps.exists():
                channels[(_read(label_file) or f"in{n}").strip()] = (volts, amps)
    return channels


class Ina3221Watts:
    """Watts of the board input rail (or all rails): a callable for IntegratedPower."""

    def __init__(self, root: Path) -> None:
        channels = ina3221_channels(root)
        self.rails = {BOARD_INPUT: channels[BOARD_INPUT]} if BOARD_INPUT in channels else channels
        self.name = "INA3221 " + "+".join(self.rails)

    def __call__(self) -> float | None:
        total = 0.0
        for volts, amps in self.rails.values():
            mv, ma = _read_int(volts), _read_int(amps)
            if mv is None or ma is None:
                return None
            total += mv * ma / 1e6
        return total
