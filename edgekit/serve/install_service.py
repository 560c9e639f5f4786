"""`edgekit install-service`: the files one box needs (the unit, its drop-in, edgekit.toml, the env file).

They are planned first (plan_installation: every check and rendering, nothing written) and
then written atomically (write_installation), so --dry-run shows exactly what would be written.
The unit's own text is edgekit.serve.systemd_unit's.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgekit.atomic import atomic_path
from edgekit.errors import ConfigError
from edgekit.profiles import Profile
from edgekit.serve.config import broker_address, load_config, sanitise_device_id
from edgekit.serve.systemd_unit import (
    DEFAULT_ENV_DIR,
    UNIT_NAME,
    UnitSpec,
    default_executable,
    render_env,
    render_gpu_dropin,
    render_unit,
    service_visibility_problem,
)

log = logging.getLogger(__name__)


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
    if _uses_gpu(profile):
        files.append(RenderedFile(dest / f"{spec.name}.d" / "gpu.conf", render_gpu_dropin()))
    profile_ref: str | Path = profile.name
    if profile.source is not None:
        # A private copy beside the config: the service must not depend on a checkout it may not see.
        profile_ref = env_dir / "profiles" / f"{profile.name}.toml"
        files.append(RenderedFile(profile_ref, profile.source.read_text(encoding="utf-8")))
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


def _profile_for(name: str | None) -> Profile:
    """The named profile, or the one this box would choose, as `serve` and `run` resolve it
    (plan.target_for): resolved now, so the service need not detect."""
    from edgekit.plan import target_for

    target = target_for(name, this_box=True)
    log.info("profile for this box: %s", target.profile_reason)
    return target.profile


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
