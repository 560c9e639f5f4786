"""Sensors read from captured board trees (tests/boards/<board>/), as detect()'s tests do."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgekit.bench.sensors import Sensors
from edgekit.bench.sensors.rapl import WrappingCounter
from edgekit.bench.sensors.raspberry_pi import pmic_watts, throttle_flags

BOARDS = Path(__file__).parent / "boards"
PI5_PMIC_W = 3.9565  # the captured rails' sum of A x V, worked out by hand from the capture
ORIN_VDD_IN_W = 5.072 * 1.936  # VDD_IN alone: 5072 mV x 1936 mA


def _copy(board: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(BOARDS / board, tmp_path / board))


def _set(path: Path, value: object) -> None:
    path.write_text(f"{value}\n")


def test_raspberry_pi_5_power_from_the_pmic_temperature_clock_and_no_throttling(tmp_path):
    sensors = Sensors(BOARDS / "rpi5-8gb")
    facts = sensors.facts()
    assert facts.power_sources == ("Pi 5 PMIC",) and facts.throttle_source == "vcgencmd get_throttled"
    assert (facts.governor, facts.power_mode) == ("ondemand", None)
    first, second = sensors.read(t_s=10.0), sensors.read(t_s=12.0)
    assert first.energy_j == 0.0
    assert second.energy_j == pytest.approx(2 * PI5_PMIC_W, rel=1e-4)  # two seconds at a steady 3.96 W
    assert second.temp_c == 67.35 and second.temps_c == {"cpu-thermal": 67.35}
    assert (second.cpu_mhz, second.cpu_max_mhz) == (2400, 2400)
    assert second.throttled is False and second.reasons == ()


def test_raspberry_pi_throttle_flags_now_and_since_boot():
    assert throttle_flags("throttled=0x50005") == ("under-voltage", "throttled")
    assert throttle_flags("throttled=0x80000") == ()  # soft limit since boot, not now
    assert throttle_flags("throttled=0x8") == ("soft temperature limit",)
    assert throttle_flags("error=1 error_msg=\"Command not registered\"") is None


def test_a_throttling_pi_reports_it(tmp_path):
    root = _copy("rpi5-8gb", tmp_path)
    _set(root / ".edgekit-commands/vcgencmd_get_throttled", "throttled=0xe000e")
    reading = Sensors(root).read()
    assert reading.throttled is True
    assert reading.reasons == ("arm frequency capped", "throttled", "soft temperature limit")


def test_pmic_output_without_rails_is_not_zero_watts():
    assert pmic_watts("EXT5V_V volt(24)=5.09115600V\n") is None


def test_jetson_orin_nano_uses_the_vdd_in_rail_and_reports_the_power_mode(tmp_path):
    sensors = Sensors(BOARDS / "jetson-orin-nano-8gb")
    facts = sensors.facts()
    assert facts.power_sources == ("INA3221 VDD_IN",)
    assert (facts.power_mode, facts.governor, facts.throttle_source) == ("15W (mode 0)", "schedutil", "Jetson clocks")
    sensors.read(t_s=0.0)
    reading = sensors.read(t_s=0.5)
    assert reading.energy_j == pytest.approx(0.5 * ORIN_VDD_IN_W)
    assert reading.temp_c == 58.531 and len(reading.temps_c) == 9
    assert (reading.gpu_mhz, reading.gpu_max_mhz) == (624.75, 624.75)
    assert (reading.cpu_mhz, reading.throttled) == (1510.4, False)


def test_jetson_clock_below_the_runs_maximum_is_throttling(tmp_path):
    root = _copy("jetson-orin-nano-8gb", tmp_path)
    sensors = Sensors(root)
    assert sensors.read().throttled is False
    for cpu in range(6):  # a cooling device lowers the policy maximum and the clock follows
        folder = root / f"sys/devices/system/cpu/cpu{cpu}/cpufreq"
        _set(folder / "scaling_cur_freq", 1113600)
        _set(folder / "scaling_max_freq", 1113600)
    reading = sensors.read()
    assert reading.throttled is True and reading.reasons == ("CPU at 1114 of 1510 MHz",)


def test_x86_rapl_sums_the_packages_only(tmp_path):
    root = _copy("x86-xeon-rapl", tmp_path)
    sensors = Sensors(root)
    assert sensors.facts().power_sources == ("RAPL package-0+package-1",)
    assert sensors.read(t_s=0).energy_j == 0.0
    rapl = root / "sys/class/powercap"
    _set(rapl / "intel-rapl:0/energy_uj", 48211539051 + 30_000_000)
    _set(rapl / "intel-rapl:1/energy_uj", 51022948113 + 20_000_000)
    _set(rapl / "intel-rapl:0:0/energy_uj", 9120318274 + 99_000_000)  # DRAM: a subdomain, not counted
    reading = sensors.read(t_s=1)
    assert reading.energy_j == pytest.approx(50.0)
    assert reading.temp_c == 71.0 and (reading.cpu_mhz, reading.cpu_max_mhz) == (3400, 3700)
    assert reading.throttled is None  # an ordinary PC has no throttle sensor we trust


def test_rapl_energy_across_a_counter_wrap(tmp_path):
    root = _copy("x86-xeon-rapl", tmp_path)
    package0 = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    wrap = 262143328850
    _set(package0, wrap - 5_000_000)  # 5 J before the wrap
    sensors = Sensors(root)
    sensors.read(t_s=0)
    _set(package0, 7_000_000)  # 7 J after it
    assert sensors.read(t_s=1).energy_j == pytest.approx(12.0)
    counter = WrappingCounter(range_uj=1000)
    assert [counter.add(v) for v in (900, 950, 50, 400)] == pytest.approx([0, 50e-6, 150e-6, 500e-6])


def test_unreadable_rapl_counter_is_not_a_power_source(tmp_path):
    root = _copy("x86-xeon-rapl", tmp_path)
    for domain in ("intel-rapl:0", "intel-rapl:1"):
        (root / f"sys/class/powercap/{domain}/energy_uj").unlink()  # as if root-only
    assert Sensors(root).facts().power_sources == ()
    assert Sensors(root).read().energy_j is None


def test_nvml_readings_energy_counter_and_throttle_reasons():
    sensors = Sensors(BOARDS / "desktop-ryzen-rtx3070")
    assert sensors.facts().power_sources == ("NVML",)
    idle, busy, capped = sensors.read(0), sensors.read(1), sensors.read(2)
    assert (idle.energy_j, busy.energy_j, capped.energy_j) == (0.0, 211.0, 423.0)
    assert (idle.throttled, busy.throttled) == (False, False)  # GPU idle is not throttling
    assert capped.throttled is True and capped.reasons == ("GPU power cap",)
    assert capped.gpu_mhz == 1755 and capped.temps_c["GPU"] == 63


@pytest.mark.parametrize("root", [BOARDS / "vm-no-sensors", Path("/")])
def test_no_sensors_means_none_never_zero(root):
    if root == Path("/") and Path("/sys/class/powercap").exists():
        pytest.skip("this machine has RAPL")
    sensors = Sensors(root)
    facts = sensors.facts()
    assert facts.power_sources == () and facts.temperature is None and facts.throttle_source is None
    reading = sensors.read()
    assert reading.energy_j is None and reading.temp_c is None and reading.throttled is None
    assert reading.cpu_mhz is None and reading.gpu_mhz is None
