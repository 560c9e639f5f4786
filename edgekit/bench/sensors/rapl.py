"""Intel/AMD RAPL energy counters through the powercap sysfs (/sys/class/powercap/intel-rapl:N).

Each package domain counts microjoules up to ``max_energy_range_uj`` and then starts again
from zero; a reader unwraps by adding the range back (kernel docs: power/powercap/powercap.rst).
One wrap between two reads is all that can be told apart, so the sampler reads well inside the
shortest wrap time (a 262 kJ range lasts over 40 minutes at 100 W).
AMD Zen exposes the same ``intel-rapl`` names since Linux 5.8. Since the 2020 PLATYPUS fix the
counters are readable by root only: an unreadable counter is n/a, with a hint in the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from edgekit.hardware import _read, _read_int

log = logging.getLogger(__name__)

POWERCAP = "sys/class/powercap"


@dataclass
class WrappingCounter:
    """A counter that wraps at ``range_uj``: the energy since the first value, in joules."""

    range_uj: int
    last_uj: int | None = None
    total_uj: int = 0

    def add(self, raw_uj: int) -> float:
        if self.last_uj is not None:
            step = raw_uj - self.last_uj
            self.total_uj += step if step >= 0 else step + self.range_uj
        self.last_uj = raw_uj
        return self.total_uj / 1e6


class Rapl:
    """The package domains' counters (not their core/uncore subdomains, which the package includes;
    not psys, which overlaps the packages)."""

    def __init__(self, root: Path) -> None:
        self.domains = {path: WrappingCounter(_read_int(path / "max_energy_range_uj") or 2**32)
                        for path in _package_domains(root / POWERCAP)}
        self.name = "RAPL " + "+".join(sorted(_read(p / "name").strip() for p in self.domains)) if self.domains else ""

    def __bool__(self) -> bool:
        return bool(self.domains)

    def energy_j(self, t_s: float = 0.0) -> float | None:
        """Joules since the first call, summed over packages; None when a counter cannot be read.
        (``t_s`` is for sources that integrate watts; a counter needs no clock.)"""
        total = 0.0
        for path, counter in self.domains.items():
            raw = _read_int(path / "energy_uj")
            if raw is None:
                return None
            total += counter.add(raw)
        return total


def _package_domains(powercap: Path) -> list[Path]:
    found = []
    for path in sorted(powercap.glob("intel-rapl:*")):
        name = (_read(path / "name") or "").strip()
        if path.name.count(":") != 1 or not name.startswith("package"):
            continue  # intel-rapl:0:0 (core) is inside its package; psys overlaps the packages
        if _read(path / "energy_uj") is None:
            log.warning("%s is not readable (root only since Linux 5.10): CPU energy is n/a", path / "energy_uj")
            continue
        found.append(path)
    return found
