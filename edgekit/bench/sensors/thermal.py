"""Temperatures from the thermal zones (/sys/class/thermal/thermal_zoneN: type, temp in m°C)."""

from __future__ import annotations

from pathlib import Path

from edgekit.hardware import _read, _read_int

# Zones whose reading is not a temperature of the silicon: Jetson's PMIC-Die reports a fixed
# 100 °C (NVIDIA's Jetson thermal guide says to ignore it).
IGNORED_ZONES = frozenset({"PMIC-Die"})


class ThermalZones:
    def __init__(self, root: Path) -> None:
        self.zones: dict[Path, str] = {}  # zone folder -> a unique name: its type, "type:N" for repeats
        for zone in sorted((root / "sys/class/thermal").glob("thermal_zone*")):
            kind = (_read(zone / "type") or zone.name).strip()
            if kind not in IGNORED_ZONES:
                self.zones[zone] = kind if kind not in self.zones.values() else f"{kind}:{zone.name[12:]}"

    def __bool__(self) -> bool:
        return bool(self.zones)

    def read(self) -> dict[str, float]:
        """°C per zone type, for the zones that can be read now."""
        temps = {}
        for zone, kind in self.zones.items():
            milli = _read_int(zone / "temp")
            if milli is not None:
                temps[kind] = milli / 1000
        return temps
