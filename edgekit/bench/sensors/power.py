"""Power sources that give watts, not a counter: integrated into joules between reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Integrator:
    """Joules from successive power readings by the trapezoid rule, as a counter would give them."""

    last: tuple[float, float] | None = None  # (time s, watts)
    total_j: float = 0.0

    def add(self, t_s: float, watts: float) -> float:
        if self.last is not None:
            t0, w0 = self.last
            self.total_j += (t_s - t0) * (w0 + watts) / 2
        self.last = (t_s, watts)
        return self.total_j


class IntegratedPower:
    """A named source of watts read as cumulative joules; None while the source cannot be read."""

    def __init__(self, name: str, watts: Callable[[], float | None]) -> None:
        self.name, self._watts, self._integrator = name, watts, Integrator()

    def energy_j(self, t_s: float) -> float | None:
        watts = self._watts()
        return None if watts is None else self._integrator.add(t_s, watts)
