"""The systemd unit, its GPU drop-in and the per-box files that `edgekit install-service` writes.

The unit text lives here as tables (one source: systemd/edgekit.service and
systemd/edgekit@.service are renderings of it, and a test keeps them equal).
docs/systemd.md explains every hardening line and when to relax one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgekit.atomic import atomic_path
from edgekit.errors import ConfigError
from edgekit.profiles import Profile, choose_profile, load_profile
from edgekit.serve.config import BrokerConfig, HttpConfig, broker_address, load_config, sanitise_device_id

log = logging.getLogger(__name__)

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


# --- install-service: the files one box needs ------------------------------------------------


@dataclass(frozen=True)
class BoxSettings:
    """What `edgekit install-service` was told about this box."""

    model: Path
    profile: str | None = None  # a profile name or a .toml path; None = chosen for this box now
    broker: str | None = None  # None = the config's default (a broker on this box)
    instance: str | None = None  # render edgekit@INSTANCE: several models on one box
    device_id: str | None = None
    password_file: Path | None = None  # the broker password; None = <env_dir>/mqtt-password if it exists
    http: str | None = None  # "[HOST:]PORT": also serve the Ollama and OpenAI APIs
    api_key_file: Path | None = None  # the HTTP API key; None = <env_dir>/http-api-key if it exists
    lora: tuple[str, ...] = ()  # "NAME=adapter.gguf[:SCALE]": LoRA adapters served beside the model


@dataclass(frozen=True)
class RenderedFile:
    path: Path
    text: str
    mode: int = 0o644
    editable: bool = False  # the user's to edit: an existing, different copy is kept unless forced


@dataclass(frozen=True)
class Installation:
    """Everything install-service writes, and what the user runs next."""

    files: tuple[RenderedFile, ...]
    unit: str  # the name to enable: edgekit.service or edgekit@NAME.service
    next_commands: tuple[str, ...]
    warnings: tuple[str, ...] = ()  # paths the sandboxed service will not be able to open


def plan_installation(box: BoxSettings, *, dest: Path = Path("/etc/systemd/system"),
                      env_dir: Path = DEFAULT_ENV_DIR, executable: Path | None = None) -> Installation:
    """Render the unit, its drop-in, the box's TOML and env file; nothing is written yet."""
    env_dir = Path(os.path.abspath(env_dir))  # systemd ignores a relative EnvironmentFile=
    _check_instance(box.instance)
    if box.broker is not None:
        broker_address(box.broker)  # a ConfigError naming the problem, before anything is rendered
    model = _checked_model(box.model)
    lora = _checked_adapters(box.lora)
    profile = _profile_for(box.profile)
    executable = executable or default_executable()
    problems = (service_visibility_problem(model, "the model"),
                service_visibility_problem(executable, "the edgekit executable"),
                *(service_visibility_problem(Path(a.path), f"the LoRA adapter {a.name}") for a in lora))
    password = box.password_file or env_dir / "mqtt-password"
    api_key = box.api_key_file or env_dir / "http-api-key"
    spec = UnitSpec(executable=executable, env_dir=env_dir, template=box.instance is not None,
                    password_file=password if password.is_file() else None,
                    api_key_file=api_key if box.http and api_key.is_file() else None)
    files = [RenderedFile(dest / spec.name, render_unit(spec))]
    if profile is not None and _uses_gpu(profile):
        files.append(RenderedFile(dest / f"{spec.name}.d" / "gpu.conf", render_gpu_dropin()))
    profile_ref = None
    if profile is not None and profile.source is not None:
        # A private copy beside the config: the service must not depend on a checkout it may not see.
        profile_ref = env_dir / "profiles" / f"{profile.name}.toml"
        files.append(RenderedFile(profile_ref, profile.source.read_text(encoding="utf-8")))
    elif profile is not None:
        profile_ref = profile.name
    name = box.instance or "edgekit"
    device_id = box.device_id or (f"{_hostname()}-{box.instance}" if box.instance else None)
    files.append(RenderedFile(env_dir / f"{name}.toml", render_config(model, profile_ref, box.broker, device_id, box.http,
                                                                            lora),
                              editable=True))
    files.append(RenderedFile(env_dir / "edgekit.env", render_env(), editable=True))
    unit = f"edgekit@{box.instance}.service" if box.instance else UNIT_NAME
    warnings = tuple(p for p in problems if p)
    return Installation(tuple(files), unit, _next_commands(unit, spec, password, box.http, api_key), warnings)


def write_installation(installation: Installation, *, force: bool = False) -> list[Path]:
    """Write every file atomically (temp file, fsync, rename) with its mode; return the paths written.

    An editable file (the box's TOML and env file) that exists with other content is kept, so that
    running install-service again (say, after adding a password) never loses local edits.
    """
    written = []
    for file in installation.files:
        if file.editable and not force and file.path.is_file() and file.path.read_text(encoding="utf-8") != file.text:
            log.info("kept %s: it differs from the rendering (--force replaces it)", file.path)
            continue
        file.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(file.path) as tmp:
            tmp.write_text(file.text, encoding="utf-8")
            tmp.chmod(file.mode)
        written.append(file.path)
    return written


def render_config(model: Path, profile: str | Path | None, broker: str | None, device_id: str | None,
                  http: str | None = None, lora: tuple[Any, ...] = ()) -> str:
    """The box's edgekit.toml: the fields docs/protocol.md describes; the rest keep their defaults.
    ``lora``: edgekit.plan.LoraAdapter records, written back as [model] lora's specs."""
    specs = [f"{a.name}={a.path}:{a.scale:g}" for a in lora] or None
    sections = {
        "model": {"path": str(model), "profile": str(profile) if profile is not None else None, "lora": specs},
        "broker": {"url": broker},
        "topics": {"device_id": device_id},
        "http": {"listen": http},
    }
    lines = ["# Written by `edgekit install-service`; every setting is described in docs/protocol.md."]
    for section, values in sections.items():
        present = {key: value for key, value in values.items() if value is not None}
        if present:
            lines += ["", f"[{section}]", *(f"{key} = {json.dumps(value)}" for key, value in present.items())]
    text = "\n".join(lines) + "\n"
    _validate_config(text)
    return text


def render_env() -> str:
    """The environment file: process environment, not settings (those live in the TOML)."""
    return "\n".join([
        "# Environment for edgekit (EnvironmentFile=). Settings live in the .toml beside this file;",
        "# any of them may be overridden here as EDGEKIT_<SECTION>_<FIELD>, e.g. EDGEKIT_LIMITS_QUEUE_SIZE=16.",
        "# The model is a local file: the service never downloads at run time.",
        "HF_HUB_OFFLINE=1",
        "",
    ])


def _validate_config(text: str) -> None:
    """Parse the rendered TOML the way the daemon will, so a bad value fails now and not at boot."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "edgekit.toml"
        path.write_text(text, encoding="utf-8")
        load_config(path, env={})


def _checked_model(model: Path | None) -> Path:
    if model is None:
        raise ConfigError("install-service needs --model PATH (the GGUF file the service will serve)")
    if not model.is_file():
        raise ConfigError(f"model {model} does not exist (give the path of a .gguf file on this box)")
    return model.resolve()


def _checked_adapters(specs: tuple[str, ...]) -> tuple[Any, ...]:
    """--lora specs as adapters with absolute paths (the service's working folder is not the caller's)."""
    from edgekit.plan import lora_adapters

    adapters = lora_adapters(specs)
    for adapter in adapters:
        if not Path(adapter.path).is_file():
            raise ConfigError(f"LoRA adapter {adapter.path} does not exist (give the path of a GGUF adapter "
                              "on this box: `edgekit convert-lora` makes one)")
    return tuple(replace(a, path=str(Path(a.path).resolve())) for a in adapters)


def _profile_for(name: str | None) -> Profile | None:
    """The named profile, or the one this box would choose: resolved now, so the service need not detect."""
    if name is not None:
        return load_profile(name)
    try:
        from edgekit.hardware import detect
    except ImportError:  # detection not available: the daemon chooses at start-up
        return None
    profile, why = choose_profile(detect())
    log.info("profile chosen for this box: %s", why)
    return profile


def _uses_gpu(profile: Profile) -> bool:
    return profile.run.n_gpu_layers != 0 or profile.match.gpu in ("cuda", "integrated")


def _check_instance(instance: str | None) -> None:
    if instance is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", instance):
        raise ConfigError(f"instance name {instance!r}: use letters, digits, '_', '.' and '-' only")


def _hostname() -> str:
    return sanitise_device_id(socket.gethostname())


def _next_commands(unit: str, spec: UnitSpec, password: Path, http: str | None, api_key: Path) -> tuple[str, ...]:
    commands = ["systemctl daemon-reload", f"systemctl enable --now {unit}",
                f"journalctl -u {unit} -f   # watch it load and go online"]
    if spec.password_file is None:
        commands.insert(0, f"# broker needs a password? put it in {password} (chmod 600) and run install-service again")
    if http and spec.api_key_file is None:
        commands.insert(0, f"# HTTP API key? put it in {api_key} (chmod 600) and run install-service again")
    return tuple(commands)
