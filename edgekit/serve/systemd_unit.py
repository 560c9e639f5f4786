"""The systemd unit, its GPU drop-in and its env file, rendered from tables, and what its sandbox hides.

The unit text lives here as tables (one source: systemd/edgekit.service and
systemd/edgekit@.service are renderings of it, and a test keeps them equal).
docs/systemd.md explains every hardening line and when to relax one. The files one box
needs (the unit, its config, its env file) are edgekit.serve.install_service's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import ConfigError
from edgekit.serve.config import BrokerConfig, HttpConfig

UNIT_NAME = "edgekit.service"
TEMPLATE_NAME = "edgekit@.service"
DEFAULT_EXECUTABLE = Path("/opt/edgekit/.venv/bin/edgekit")
DEFAULT_ENV_DIR = Path("/etc/edgekit")
# The daemon reads $CREDENTIALS_DIRECTORY/<this>: the name is the config's, one source.
PASSWORD_CREDENTIAL = BrokerConfig().password_credential
API_KEY_CREDENTIAL = HttpConfig().api_key_credential

# Sandboxing; each line is (setting, value, why). systemd-analyze security scores this 1.1.
HARDENING: tuple[tuple[str, str, str], ...] = (
    ("DynamicUser", "yes", "a throw-away uid; implies ProtectSystem=strict and RemoveIPC"),
    ("UMask", "0077", "files we write (cache, state) are ours alone"),
    ("CapabilityBoundingSet", "", "no capabilities at all"),
    ("AmbientCapabilities", "", ""),
    ("NoNewPrivileges", "yes", ""),
    ("ProtectSystem", "strict", "read-only /usr, /etc...; we write only StateDirectory and CacheDirectory"),
    ("ProtectHome", "yes", "so the venv and the models must live outside /home and /root"),
    ("PrivateTmp", "yes", ""),
    ("PrivateDevices", "yes", "no /dev/nvidia*: GPU boxes add the gpu.conf drop-in"),
    ("DevicePolicy", "closed", ""),
    ("PrivateUsers", "yes", ""),
    ("PrivateMounts", "yes", ""),
    ("ProtectKernelTunables", "yes", "/proc/sys and /sys read-only (still readable for detection)"),
    ("ProtectKernelModules", "yes", ""),
    ("ProtectKernelLogs", "yes", ""),
    ("ProtectControlGroups", "yes", ""),
    ("ProtectClock", "yes", ""),
    ("ProtectHostname", "yes", ""),
    # No ProcSubset=pid: the daemon plans against /proc/meminfo and /proc/cpuinfo at every start.
    ("ProtectProc", "invisible", "other processes are hidden"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX", "TCP to the broker, the notify socket, the engine pipe"),
    ("RestrictNamespaces", "yes", ""),
    ("RestrictRealtime", "yes", ""),
    ("RestrictSUIDSGID", "yes", ""),
    ("LockPersonality", "yes", ""),
    ("MemoryDenyWriteExecute", "yes", "llama.cpp's CPU code is compiled ahead, nothing JITs (CUDA may: see gpu.conf)"),
    ("RemoveIPC", "yes", ""),
    ("KeyringMode", "private", ""),
    ("SystemCallArchitectures", "native", ""),
    ("SystemCallFilter", "@system-service", ""),
    ("SystemCallFilter", "~@privileged @resources", "no setpriority/sched_setaffinity: llama.cpp only warns"),
    ("SystemCallErrorNumber", "EPERM", "a refused call fails with EPERM instead of killing the daemon"),
)

# Relaxations for a box whose profile uses a GPU: the CUDA driver opens /dev/nvidia* and
# JIT-compiles PTX into W+X memory; Jetson's nvhost devices belong to the video/render
# groups, which a user namespace (PrivateUsers) cannot carry.
GPU_DROPIN: tuple[tuple[str, str, str], ...] = (
    ("PrivateDevices", "no", ""),
    ("DeviceAllow", "char-nvidiactl rw", "desktop/server NVIDIA"),
    ("DeviceAllow", "char-nvidia-frontend rw", ""),
    ("DeviceAllow", "char-nvidia-uvm rw", ""),
    ("DeviceAllow", "char-nvidia-caps rw", ""),
    ("DeviceAllow", "/dev/nvhost-ctrl rw", "Jetson (Orin): nvhost, nvmap, nvgpu"),
    ("DeviceAllow", "/dev/nvhost-ctrl-gpu rw", ""),
    ("DeviceAllow", "/dev/nvhost-gpu rw", ""),
    ("DeviceAllow", "/dev/nvhost-as-gpu rw", ""),
    ("DeviceAllow", "/dev/nvhost-prof-gpu rw", ""),
    ("DeviceAllow", "/dev/nvmap rw", ""),
    ("DeviceAllow", "char-nvgpu rw", ""),
    ("MemoryDenyWriteExecute", "no", "the CUDA driver JIT-compiles PTX"),
    ("PrivateUsers", "no", "keep the video/render group ids mapped"),
    ("SupplementaryGroups", "video render", ""),
)


@dataclass(frozen=True)
class UnitSpec:
    """What differs between boxes in the unit: paths, instance-ness and timeouts."""

    executable: Path = DEFAULT_EXECUTABLE
    env_dir: Path = DEFAULT_ENV_DIR
    template: bool = False  # edgekit@.service: instance NAME reads NAME.toml and NAME.env
    password_file: Path | None = DEFAULT_ENV_DIR / "mqtt-password"
    api_key_file: Path | None = None  # the HTTP API key, loaded as a credential (never in the unit or argv)
    watchdog_s: int = 30
    start_timeout_s: int = 600  # a large model on an SD card takes minutes to load
    stop_timeout_s: int = 120  # time to drain the queue (the daemon's drain deadline plus a margin)

    @property
    def name(self) -> str:
        return TEMPLATE_NAME if self.template else UNIT_NAME

    @property
    def config_path(self) -> str:
        folder = str(self.env_dir).replace("%", "%%")  # a literal % in a unit is written %%
        return f"{folder}/%i.toml" if self.template else f"{folder}/edgekit.toml"


def _unit_word(text: str) -> str:
    """One word of a unit's command line: quoted when it holds whitespace (systemd.service(5), "Command lines")."""
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _lines(settings: Sequence[tuple[str, str, str]]) -> list[str]:
    out = []
    for key, value, why in settings:
        if why:
            out.append(f"# {why}")
        out.append(f"{key}={value}")
    return out


def _service_lines(spec: UnitSpec) -> list[str]:
    instance = "/%i" if spec.template else ""
    env_files = [f"EnvironmentFile=-{spec.env_dir}/edgekit.env"]
    if spec.template:
        env_files.append(f"EnvironmentFile=-{spec.env_dir}/%i.env")
    credential = [f"LoadCredential={PASSWORD_CREDENTIAL}:{spec.password_file}"] if spec.password_file else []
    if spec.api_key_file:
        credential.append(f"LoadCredential={API_KEY_CREDENTIAL}:{spec.api_key_file}")
    return [
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={_unit_word(str(spec.executable))} serve --config {_unit_word(spec.config_path)}",
        "# SIGHUP: load the model file again and swap it in; the broker session stays up",
        "ExecReload=/bin/kill -HUP $MAINPID",
        *env_files,
        f"Environment=PYTHONUNBUFFERED=1 HF_HOME=%C/edgekit{instance}/huggingface",
        f"WorkingDirectory=%S/edgekit{instance}",
        f"StateDirectory=edgekit{instance}",
        f"CacheDirectory=edgekit{instance}",
        *credential,
        "Restart=on-failure",
        "RestartSec=5",
        f"TimeoutStartSec={spec.start_timeout_s}",
        f"TimeoutStopSec={spec.stop_timeout_s}",
        "# the daemon pings at half this interval while its serving loop and engine are healthy",
        f"WatchdogSec={spec.watchdog_s}",
        "# SIGTERM to the daemon only: it drains, then stops its engine child itself",
        "KillMode=mixed",
        "",
        *_lines(HARDENING),
    ]


def render_unit(spec: UnitSpec = UnitSpec()) -> str:
    """The text of edgekit.service (or edgekit@.service with ``spec.template``)."""
    what = "model %i" if spec.template else "a model"
    lines = [
        "# Rendered by `edgekit install-service`; see docs/systemd.md. Local changes belong in a drop-in:",
        f"#   systemctl edit {spec.name.replace('@.', '@NAME.')}",
        "[Unit]",
        f"Description=edgekit: {what} served over MQTT and HTTP",
        "Wants=network-online.target",
        "After=network-online.target",
        "StartLimitIntervalSec=600",
        "StartLimitBurst=5",
        "",
        "[Service]",
        *_service_lines(spec),
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def render_gpu_dropin() -> str:
    """A drop-in (edgekit.service.d/gpu.conf) that opens the unit to NVIDIA and Jetson GPUs."""
    header = ["# GPU access for edgekit; see docs/systemd.md (GPU boxes).", "[Service]"]
    return "\n".join(header + _lines(GPU_DROPIN)) + "\n"


def render_env() -> str:
    """The environment file: process environment, not settings (those live in the TOML)."""
    return "\n".join([
        "# Environment for edgekit (EnvironmentFile=). Settings live in the .toml beside this file;",
        "# any of them may be overridden here as EDGEKIT_<SECTION>_<FIELD>, e.g. EDGEKIT_LIMITS_QUEUE_SIZE=16.",
        "# The model is a local file: the service never downloads at run time.",
        "HF_HUB_OFFLINE=1",
        "",
    ])


def default_executable() -> Path:
    """The `edgekit` script of the running interpreter's environment (the venv systemd will start)."""
    script = Path(sys.executable).parent / "edgekit"
    if not script.is_file():
        raise ConfigError(f"no edgekit script beside {sys.executable}; install edgekit into that venv (make install)")
    return script.absolute()


# Folders the sandbox hides or replaces: ProtectHome=yes, PrivateTmp=yes.
HIDDEN_FROM_SERVICE = (Path("/home"), Path("/root"), Path("/run/user"), Path("/tmp"), Path("/var/tmp"))


def service_visibility_problem(path: Path, what: str) -> str | None:
    """Why the sandboxed service could not open ``path``, or None: it runs as a dynamic user behind ProtectHome."""
    resolved = path.resolve()
    for hidden in HIDDEN_FROM_SERVICE:
        if resolved.is_relative_to(hidden):
            return (f"{what} {path} is under {hidden}, which the service cannot see (ProtectHome/PrivateTmp): "
                    "move it to /opt/edgekit or /var/lib/edgekit")
    if resolved.exists() and not os.stat(resolved).st_mode & 0o004:
        return f"{what} {path} is not world-readable: the service's dynamic user cannot open it (chmod o+r)"
    return None
