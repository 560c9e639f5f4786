"""Detect the box: CPU cores and clusters, memory, GPUs, board. Reads a root folder.

Everything is read below ``root`` (``/`` on a real box), so tests pass captured board
trees (tests/boards/<board>/) and get the same answers the real board would give.
NVIDIA GPU facts come from NVML (nvidia-ml-py) on a real box; a captured tree carries
them in ``.edgekit-gpus.json`` instead, as NVML is not a file.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError

log = logging.getLogger(__name__)

# /proc/device-tree/model prefix -> board id used by profiles' [match] boards.
BOARDS: tuple[tuple[str, str], ...] = (
    ("Raspberry Pi 5", "raspberry-pi-5"),
    ("Raspberry Pi 4", "raspberry-pi-4"),
    ("Raspberry Pi 3", "raspberry-pi-3"),
    ("NVIDIA Jetson Orin Nano", "jetson-orin-nano"),
    ("NVIDIA Jetson Orin NX", "jetson-orin-nx"),
    ("NVIDIA Jetson AGX Orin", "jetson-agx-orin"),
    ("Jetson AGX Orin", "jetson-agx-orin"),
)
# Word in a Jetson board id -> its integrated GPU's name and CUDA compute capability.
JETSON_GPUS: dict[str, tuple[str, str]] = {
    "orin": ("Orin (nvgpu)", "8.7"),
    "xavier": ("Xavier (nvgpu)", "7.2"),
}
# Arm "CPU part" ids (Arm's TRMs, MIDR_EL1.PartNum) for readable CPU names on arm64,
# whose /proc/cpuinfo has no model name.
ARM_PARTS: dict[str, str] = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2", "0xd49": "Neoverse-N2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3",
}
BIG_CORE_RATIO = 0.8  # a CPU at >= 80% of the fastest CPU's capacity counts as a big core
GPU_FACTS_FILE = ".edgekit-gpus.json"
LOAD_SAMPLE_S = 0.25  # how long detect() watches /proc/stat for other work on a live box
NOMINAL_GB = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


@dataclass(frozen=True)
class GPU:
    """One GPU as llama.cpp's CUDA back end will see it."""

    name: str
    total_mb: int
    free_mb: int
    compute_capability: str | None = None  # "8.6"
    integrated: bool = False  # Jetson: memory is the system RAM


@dataclass(frozen=True)
class CPU:
    """One logical CPU: the physical core it belongs to and its relative speed."""

    index: int
    core: str  # CPUs sharing a physical core (SMT siblings) have the same key
    capacity: int  # cpu_capacity (1024 = fastest) or max frequency in kHz; 0 when unknown


@dataclass(frozen=True)
class Hardware:
    """The facts about a box that profiles and the planner use."""

    arch: str
    cpu_model: str
    logical_cpus: int
    physical_cores: int
    big_cores: int  # physical cores in the fastest cluster: generation threads
    clusters: tuple[tuple[int, int], ...]  # (capacity, logical CPUs), fastest first
    memory_total_mb: int
    memory_available_mb: int
    cgroup_limit_mb: int | None = None
    board: str | None = None  # e.g. "raspberry-pi-5"; None for an ordinary PC
    board_model: str | None = None  # the device tree's model line
    l4t_release: str | None = None  # Jetson Linux release, e.g. "R36.3.0"
    gpus: tuple[GPU, ...] = ()
    unified_memory: bool = False  # CPU and GPU allocate from one pool (Jetson)
    busy_cores: float = 0.0  # cores other work kept busy while we looked (0 for a captured board)

    @property
    def usable_memory_mb(self) -> int:
        """Memory a new process can take: MemAvailable, capped by the cgroup limit."""
        if self.cgroup_limit_mb is None:
            return self.memory_available_mb
        return min(self.memory_available_mb, self.cgroup_limit_mb)

    @property
    def largest_vram_mb(self) -> int | None:
        """Total memory of the biggest discrete GPU, or None without one."""
        sizes = [g.total_mb for g in self.gpus if not g.integrated]
        return max(sizes) if sizes else None

    @property
    def nominal_memory_gb(self) -> int:
        """The size a box is sold as: MemTotal rounded up to the next usual size."""
        gib = self.memory_total_mb / 1024
        return next((n for n in NOMINAL_GB if n >= gib * 0.98), math.ceil(gib))

    def summary(self) -> str:
        """One line in a person's words: "Raspberry Pi 5 with 8 GB"."""
        what = _short_board(self.board_model) if self.board_model else f"{self.arch} {self.cpu_model}"
        text = f"{what} with {self.nominal_memory_gb} GB"
        discrete = [g for g in self.gpus if not g.integrated]
        if discrete:
            gpu = max(discrete, key=lambda g: g.total_mb)
            text += f" and {gpu.name} ({round(gpu.total_mb / 1024)} GB)"
        elif self.unified_memory:
            text += " unified memory"
        return text

    def describe(self) -> list[str]:
        """Lines for `edgekit detect`: one fact a line."""
        cap = f"{self.cgroup_limit_mb} MB cgroup limit" if self.cgroup_limit_mb is not None else "no cgroup limit"
        gpus = [f"{g.name}, {g.free_mb} of {g.total_mb} MB free" + (" (integrated)" if g.integrated else "")
                for g in self.gpus] or ["none found"]
        lines = [
            f"board:    {self.board_model or 'not a known board'}" + (f" ({self.board})" if self.board else ""),
            f"cpu:      {self.cpu_model} ({self.arch}): {self.logical_cpus} logical CPUs, "
            f"{self.physical_cores} physical cores, {self.big_cores} big",
            f"memory:   {self.memory_total_mb} MB total, {self.memory_available_mb} MB available, {cap}",
            f"load:     {self.busy_cores:.1f} cores busy with other work",
            *(f"gpu:      {g}" for g in gpus),
        ]
        if self.unified_memory:
            lines.append("unified:  CPU and GPU share the system memory")
        if self.l4t_release:
            lines.append(f"jetson:   Jetson Linux {self.l4t_release}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `edgekit detect --json`."""
        data = asdict(self)
        data["usable_memory_mb"] = self.usable_memory_mb
        return data


def detect(root: Path = Path("/"), gpus: list[GPU] | None = None, *, watch_load: bool = True) -> Hardware:
    """Read the box below ``root``; ``gpus`` overrides GPU discovery (tests, capture tools).
    ``watch_load=False`` skips the LOAD_SAMPLE_S look at other work (busy_cores stays 0)."""
    root = Path(root)
    cpuinfo = _read(root / "proc/cpuinfo") or ""
    cpus = _cpus(root, cpuinfo)
    board_model = _device_tree_model(root)
    board = _board_id(board_model)
    total, available = _meminfo(root)
    l4t = _l4t_release(root)
    jetson = l4t is not None or (board or "").startswith("jetson")
    found_gpus = tuple(gpus) if gpus is not None else _gpus(root, board, total, available, jetson)
    clusters = _clusters(cpus)
    return Hardware(
        arch=_arch(root, cpuinfo),
        cpu_model=_cpu_model(cpuinfo),
        logical_cpus=len(cpus),
        physical_cores=_physical(cpus),
        big_cores=_physical([c for c in cpus if _is_big(c, cpus)]),
        clusters=clusters,
        memory_total_mb=total,
        memory_available_mb=available,
        cgroup_limit_mb=_cgroup_limit_mb(root),
        board=board,
        board_model=board_model,
        l4t_release=l4t,
        gpus=found_gpus,
        unified_memory=jetson,
        busy_cores=_busy_cores(root, len(cpus)) if watch_load else 0.0,
    )


def _busy_cores(root: Path, logical_cpus: int) -> float:
    """Cores in use by other work, from /proc/stat over LOAD_SAMPLE_S; 0 for a captured (static) tree."""
    if root.resolve() != Path("/"):
        return 0.0
    before = _cpu_ticks(root)
    time.sleep(LOAD_SAMPLE_S)
    after = _cpu_ticks(root)
    if before is None or after is None or after[1] <= before[1]:
        return 0.0
    idle, total = after[0] - before[0], after[1] - before[1]
    return round(max(0.0, 1 - idle / total) * logical_cpus, 1)


def _cpu_ticks(root: Path) -> tuple[int, int] | None:
    """(idle + iowait, all) jiffies of the "cpu" line of /proc/stat."""
    line = (_read(root / "proc/stat") or "").partition("\n")[0].split()
    if len(line) < 6 or line[0] != "cpu":
        return None
    ticks = [int(v) for v in line[1:9]]
    return ticks[3] + ticks[4], sum(ticks)


# --- files ----------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except (FileNotFoundError, NotADirectoryError, PermissionError, IsADirectoryError):
        return None
    except OSError as exc:  # sysfs files can refuse reads (EINVAL) on some kernels
        log.debug("cannot read %s: %s", path, exc)
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None


def _cpuinfo_blocks(cpuinfo: str) -> list[dict[str, str]]:
    blocks = []
    for chunk in cpuinfo.split("\n\n"):
        pairs = (line.split(":", 1) for line in chunk.splitlines() if ":" in line)
        block = {k.strip(): v.strip() for k, v in pairs}
        if block:
            blocks.append(block)
    return blocks


# --- CPU ------------------------------------------------------------------------------------


def _arch(root: Path, cpuinfo: str) -> str:
    if root == Path("/"):
        return platform.machine()
    if "CPU implementer" in cpuinfo:
        return "aarch64"
    return "x86_64" if "vendor_id" in cpuinfo else platform.machine()


def _cpu_model(cpuinfo: str) -> str:
    blocks = _cpuinfo_blocks(cpuinfo)
    for block in blocks:
        if block.get("model name"):
            return block["model name"]
    parts = [b["CPU part"] for b in blocks if "CPU part" in b]
    if parts:
        counts: dict[str, int] = {}
        for part in parts:
            counts[part] = counts.get(part, 0) + 1
        return " + ".join(f"{n}x {ARM_PARTS.get(p, 'Arm part ' + p)}" for p, n in counts.items())
    hardware = next((b["Hardware"] for b in blocks if "Hardware" in b), None)
    return hardware or "unknown CPU"


def _cpus(root: Path, cpuinfo: str) -> list[CPU]:
    sysfs = root / "sys/devices/system/cpu"
    indexes = sorted(int(p.name[3:]) for p in sysfs.glob("cpu[0-9]*") if p.name[3:].isdigit())
    if indexes:
        return [_sysfs_cpu(sysfs / f"cpu{i}", i) for i in indexes]
    return _cpuinfo_cpus(cpuinfo)


def _sysfs_cpu(folder: Path, index: int) -> CPU:
    capacity = _read_int(folder / "cpu_capacity")
    if capacity is None:
        capacity = _read_int(folder / "cpufreq/cpuinfo_max_freq") or 0
    return CPU(index, _core_key(folder / "topology", index), capacity)


def _core_key(topology: Path, index: int) -> str:
    """SMT siblings list, which is unique per physical core even where arm64 kernels repeat
    core_id across clusters (Orin, RK3588); else package, cluster and core ids."""
    siblings = _read(topology / "thread_siblings_list") or _read(topology / "core_cpus_list")
    if siblings:
        return siblings.strip()
    ids = [_read_int(topology / name) for name in ("physical_package_id", "cluster_id", "core_id")]
    return str(index) if ids[2] is None else ":".join(map(str, ids))


def _cpuinfo_cpus(cpuinfo: str) -> list[CPU]:
    """No sysfs: each processor block, with core id / physical id where x86 gives them."""
    cpus = []
    for block in _cpuinfo_blocks(cpuinfo):
        if "processor" not in block or not block["processor"].isdigit():
            continue
        index = int(block["processor"])
        core = f'{block.get("physical id", 0)}:{block.get("core id", index)}'
        cpus.append(CPU(index, core, 0))
    return cpus or [CPU(0, "0", 0)]


def _physical(cpus: list[CPU]) -> int:
    return len({c.core for c in cpus})


def _is_big(cpu: CPU, cpus: list[CPU]) -> bool:
    fastest = max(c.capacity for c in cpus)
    return fastest == 0 or cpu.capacity >= BIG_CORE_RATIO * fastest


def _clusters(cpus: list[CPU]) -> tuple[tuple[int, int], ...]:
    counts: dict[int, int] = {}
    for c in cpus:
        counts[c.capacity] = counts.get(c.capacity, 0) + 1
    return tuple(sorted(counts.items(), reverse=True))


# --- memory ---------------------------------------------------------------------------------


def _meminfo(root: Path) -> tuple[int, int]:
    text = _read(root / "proc/meminfo") or ""
    values = {}
    for line in text.splitlines():
        match = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if match:
            values[match.group(1)] = int(match.group(2)) // 1024
    total = values.get("MemTotal", 0)
    available = values.get("MemAvailable", values.get("MemFree", total))
    return total, available


def _cgroup_limit_mb(root: Path) -> int | None:
    """cgroup v2 memory.max, or v1 limit_in_bytes; None when unlimited."""
    for name in ("sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory/memory.limit_in_bytes"):
        value = _read_int(root / name)
        if value is not None and value < 1 << 60:  # v1 reports "unlimited" as ~2^63
            return value // (1 << 20)
    return None


# --- board and GPU --------------------------------------------------------------------------


def _device_tree_model(root: Path) -> str | None:
    text = _read(root / "proc/device-tree/model")
    return text.rstrip("\x00\n ") if text else None


def _board_id(model: str | None) -> str | None:
    if not model:
        return None
    return next((board for prefix, board in BOARDS if model.startswith(prefix)), None)


def _short_board(model: str) -> str:
    """ "Raspberry Pi 5 Model B Rev 1.0" -> "Raspberry Pi 5"; others unchanged."""
    return re.sub(r"\s+(Model [A-Z]\+?\s+)?Rev [\d.]+$", "", model)


def _l4t_release(root: Path) -> str | None:
    """ "# R36 (release), REVISION: 3.0, ..." -> "R36.3.0"."""
    text = _read(root / "etc/nv_tegra_release")
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    return f"R{match.group(1)}.{match.group(2)}" if match else None


def _gpus(root: Path, board: str | None, total_mb: int, available_mb: int, jetson: bool) -> tuple[GPU, ...]:
    if jetson:
        name, cc = next((v for k, v in JETSON_GPUS.items() if k in (board or "")), ("Tegra GPU", None))
        return (GPU(name, total_mb, available_mb, cc, integrated=True),)
    if root != Path("/"):
        return _captured_gpus(root / GPU_FACTS_FILE)
    return _nvml_gpus()


def _captured_gpus(path: Path) -> tuple[GPU, ...]:
    """A captured board's GPU facts: a JSON list of GPU fields (name, total_mb, free_mb, ...)."""
    text = _read(path)
    if text is None:
        return ()
    try:
        return tuple(GPU(**item) for item in json.loads(text))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a list of GPU facts ({exc}); see docs/profiles.md") from None


def _nvml_gpus() -> tuple[GPU, ...]:
    """NVIDIA GPUs through NVML; none when nvidia-ml-py or the driver is missing."""
    try:
        import pynvml  # nvidia-ml-py: optional, the [gpu] extra
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("NVML unavailable: %s", exc)
        return ()
    try:
        return tuple(_nvml_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount()))
    except pynvml.NVMLError as exc:
        log.warning("NVML failed while listing GPUs: %s", exc)
        return ()
    finally:
        pynvml.nvmlShutdown()


def _nvml_gpu(pynvml: Any, index: int) -> GPU:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = pynvml.nvmlDeviceGetName(handle)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    return GPU(
        name=name.decode() if isinstance(name, bytes) else name,
        total_mb=memory.total // (1 << 20),
        free_mb=memory.free // (1 << 20),
        compute_capability=f"{major}.{minor}",
    )
