"""detect() on captured board trees (tests/boards/<board>/) and on this machine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgekit.cli import main
from edgekit.hardware import GPU, detect
from edgekit.profiles import choose_profile

BOARDS = Path(__file__).parent / "boards"


@pytest.mark.parametrize(
    "board, profile, big, physical, threads_reason",
    [
        ("rpi5-8gb", "rpi5-8gb", 4, 4, "Raspberry Pi 5 with 8 GB -> rpi5-8gb"),
        ("rpi4-4gb", "rpi4-4gb", 4, 4, "Raspberry Pi 4 with 4 GB -> rpi4-4gb"),
        ("jetson-orin-nano-8gb", "jetson-orin-nano-8gb", 6, 6, "Jetson Orin Nano"),
        ("rk3588-rock5b-8gb", "cpu-generic", 4, 8, "Radxa ROCK 5B with 8 GB -> cpu-generic"),
        ("desktop-ryzen-rtx3070", "desktop-cuda-8gb", 8, 8, "RTX 3070 (8 GB) -> desktop-cuda-8gb"),
    ],
)
def test_each_captured_board_resolves_to_its_profile(board, profile, big, physical, threads_reason):
    hw = detect(BOARDS / board)
    chosen, reason = choose_profile(hw)
    assert chosen.name == profile
    assert threads_reason in reason
    assert (hw.big_cores, hw.physical_cores) == (big, physical)


def test_rk3588_runs_generation_on_the_four_a76_cores_only():
    hw = detect(BOARDS / "rk3588-rock5b-8gb")
    assert hw.cpu_model == "4x Cortex-A55 + 4x Cortex-A76"
    assert hw.clusters == ((1024, 4), (414, 4))
    assert hw.logical_cpus == 8 and hw.big_cores == 4


def test_big_cores_fall_back_to_max_frequency_without_cpu_capacity(tmp_path):
    root = tmp_path / "rk"
    shutil.copytree(BOARDS / "rk3588-rock5b-8gb", root)
    for f in root.glob("sys/devices/system/cpu/cpu*/cpu_capacity"):
        f.unlink()
    hw = detect(root)
    assert hw.clusters == ((2400000, 4), (1800000, 4))
    assert hw.big_cores == 4


def test_orin_nano_is_jetson_with_unified_memory_and_l4t_release():
    hw = detect(BOARDS / "jetson-orin-nano-8gb")
    assert hw.board == "jetson-orin-nano" and hw.l4t_release == "R36.3.0"
    assert hw.unified_memory and hw.cpu_model == "6x Cortex-A78AE"
    (gpu,) = hw.gpus
    assert gpu.integrated and gpu.compute_capability == "8.7"
    assert gpu.total_mb == hw.memory_total_mb  # one pool: the GPU's memory is the system RAM
    assert hw.nominal_memory_gb == 8


def test_raspberry_pi_facts_come_from_device_tree_and_meminfo():
    hw = detect(BOARDS / "rpi5-8gb")
    assert hw.board_model == "Raspberry Pi 5 Model B Rev 1.0"
    assert hw.arch == "aarch64" and hw.cpu_model == "4x Cortex-A76"
    assert hw.memory_total_mb == 8245088 // 1024 and hw.memory_available_mb == 7642304 // 1024
    assert hw.gpus == () and not hw.unified_memory


def test_x86_physical_cores_count_smt_siblings_once():
    hw = detect(BOARDS / "desktop-ryzen-rtx3070")
    assert hw.arch == "x86_64" and hw.cpu_model == "AMD Ryzen 7 5800X 8-Core Processor"
    assert (hw.logical_cpus, hw.physical_cores) == (16, 8)
    assert hw.gpus[0].name == "NVIDIA GeForce RTX 3070" and hw.gpus[0].free_mb == 7705


def test_cpuinfo_alone_gives_cores_when_sysfs_is_missing(tmp_path):
    shutil.copytree(BOARDS / "desktop-ryzen-rtx3070" / "proc", tmp_path / "proc")
    hw = detect(tmp_path)
    assert (hw.logical_cpus, hw.physical_cores) == (16, 8)
    assert hw.gpus == ()


def test_cgroup_memory_limit_caps_usable_memory(tmp_path):
    root = tmp_path / "pi"
    shutil.copytree(BOARDS / "rpi5-8gb", root)
    (root / "sys/fs/cgroup/memory.max").write_text(f"{2 << 30}\n")
    hw = detect(root)
    assert hw.cgroup_limit_mb == 2048
    assert hw.usable_memory_mb == 2048 < hw.memory_available_mb


def test_unlimited_cgroup_leaves_memavailable():
    hw = detect(BOARDS / "rpi5-8gb")  # memory.max says "max"
    assert hw.cgroup_limit_mb is None and hw.usable_memory_mb == hw.memory_available_mb


def test_gpu_facts_can_be_given_directly():
    gpu = GPU("NVIDIA GeForce RTX 4090", 24564, 23900, "8.9")
    hw = detect(BOARDS / "desktop-ryzen-rtx3070", gpus=[gpu])
    assert choose_profile(hw)[0].name == "desktop-cuda-24gb"


def test_this_machine_detects_without_nvml():
    hw = detect()
    assert hw.logical_cpus >= 1 and hw.physical_cores >= 1 and hw.memory_total_mb > 0
    assert 1 <= hw.big_cores <= hw.physical_cores


def test_detect_json_command_prints_facts_and_profile(capsys):
    assert main(["detect", "--json", "--root", str(BOARDS / "rk3588-rock5b-8gb")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["profile"] == "cpu-generic"
    assert data["hardware"]["big_cores"] == 4
    assert "-> cpu-generic" in data["reason"]


def test_detect_command_prints_one_line_per_fact(capsys):
    assert main(["detect", "--root", str(BOARDS / "rpi5-8gb")]) == 0
    out = capsys.readouterr().out
    assert "Raspberry Pi 5 with 8 GB -> rpi5-8gb" in out
    assert "4x Cortex-A76" in out


def test_malformed_captured_gpu_facts_are_a_config_error(tmp_path):
    from edgekit.errors import ConfigError

    shutil.copytree(BOARDS / "desktop-ryzen-rtx3070", tmp_path / "pc")
    (tmp_path / "pc" / ".edgekit-gpus.json").write_text('[{"name": "x"}]')
    with pytest.raises(ConfigError, match="not a list of GPU facts"):
        detect(tmp_path / "pc")
