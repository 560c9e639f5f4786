"""Raspberry Pi firmware sensors through vcgencmd: the Pi 5's PMIC rails and the throttle flags.

``vcgencmd pmic_read_adc`` prints each rail's current (``VDD_CORE_A current(7)=2.9A``) and
voltage (``VDD_CORE_V volt(15)=0.87V``); watts are the sum over rails with both. The PMIC sees
the SoC, memory and I/O rails, not the 5 V that USB devices draw, so it reads below a wall meter.
``vcgencmd get_throttled`` prints ``throttled=0x50005``; the bits are documented in Raspberry
Pi's "vcgencmd" page.
"""

from __future__ import annotations

import re

from edgekit.bench.sensors.commands import Commands

# get_throttled bit -> what it means now (bits 16-19 say the same happened since boot).
THROTTLE_BITS: dict[int, str] = {
    0: "under-voltage",
    1: "arm frequency capped",
    2: "throttled",
    3: "soft temperature limit",
}
_RAIL = re.compile(r"^\s*(\S+)_([AV])\s+(?:current|volt)\(\d+\)=([\d.]+)[AV]\s*$")


def pmic_watts(text: str) -> float | None:
    """Watts summed over the rails that report both current and voltage; None when none do."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        match = _RAIL.match(line)
        if match:
            (amps if match.group(2) == "A" else volts)[match.group(1)] = float(match.group(3))
    both = amps.keys() & volts.keys()
    return sum(amps[r] * volts[r] for r in both) if both else None


class PiPmicWatts:
    """The Pi 5 PMIC's total, read on each call: a callable for IntegratedPower."""

    name = "Pi 5 PMIC"

    def __init__(self, commands: Commands) -> None:
        self.commands = commands

    def present(self) -> bool:
        text = self.commands.output("vcgencmd", "pmic_read_adc")
        return text is not None and pmic_watts(text) is not None

    def __call__(self) -> float | None:
        text = self.commands.output("vcgencmd", "pmic_read_adc")
        return pmic_watts(text) if text else None


def throttle_flags(text: str) -> tuple[str, ...] | None:
    """The conditions active now from ``throttled=0x...``; None when the text is not that."""
    match = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", text)
    if not match:
        return None
    bits = int(match.group(1), 0)
    return tuple(name for bit, name in THROTTLE_BITS.items() if bits & (1 << bit))


def pi_throttled(commands: Commands) -> tuple[str, ...] | None:
    text = commands.output("vcgencmd", "get_throttled")
    return throttle_flags(text) if text else None
