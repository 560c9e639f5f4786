"""The daemon's settings: a strict dataclass tree from edgekit.toml, environment and flags.

Precedence, lowest first: field defaults, the TOML file, EDGEKIT_* environment variables,
command-line flags. Unknown keys are errors that name the key. Secrets (the broker
password) come from files only: ``broker.password_file`` or systemd's
``$CREDENTIALS_DIRECTORY/<broker.password_credential>``, never from argv.

Every field's meaning is the comment beside it; docs/protocol.md repeats the table.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgekit.errors import ConfigError, UsageError
from edgekit.strict import Source, build, read_toml

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    """What the daemon serves."""

    path: Path | None = None  # the GGUF file (required)
    profile: str | None = None  # profile name or TOML path; None = chosen for this box
    ctx: int | None = None  # context window override; None = the profile's
    this_box: bool = False  # plan for this machine even when it is not one of the profile's boxes
    warm_up: bool = True  # run one tiny request before announcing READY/online
    lora: tuple[str, ...] = ()  # LoRA adapters loaded beside the model, "NAME=adapter.gguf[:SCALE]"; requests pick one by name

    def adapters(self) -> tuple[Any, ...]:
        """``lora`` as edgekit.plan.LoraAdapter records (checked by _check when the config loads)."""
        from edgekit.plan import lora_adapters

        return lora_adapters(self.lora)


@dataclass(frozen=True)
class BrokerConfig:
    """How to reach the MQTT broker."""

    url: str = "mqtt://127.0.0.1:1883"  # mqtt://host:port, or mqtts://host:port for TLS; "none" = HTTP only
    username: str | None = None
    password_file: Path | None = None  # a file holding the password (first line)
    password_credential: str = "mqtt_password"  # name under $CREDENTIALS_DIRECTORY (systemd LoadCredential=)
    ca_file: Path | None = None  # CA bundle for mqtts://; None = the system's
    cert_file: Path | None = None  # client certificate (mutual TLS)
    key_file: Path | None = None  # client certificate's key
    client_id: str | None = None  # None = "edgekit-<device id>" (stable: the persistent session hangs on it)
    keepalive_s: int = 30  # the Last Will fires ~1.5x this after the daemon dies
    session_expiry_s: int = 86_400  # how long the broker keeps our session (and queued requests) while we are away
    reconnect_min_s: float = 1.0  # backoff between reconnect attempts grows from this ...
    reconnect_max_s: float = 30.0  # ... to this


@dataclass(frozen=True)
class TopicConfig:
    """Where the daemon listens and talks."""

    device_id: str | None = None  # None = the hostname, sanitised
    prefix: str | None = None  # None = "edgekit/<device id>"
    share_group: str | None = None  # MQTT 5 shared subscription group: a fleet splits {prefix}/request
    reply_prefix: str = "edgekit/reply/"  # replies only to topics starting with this; "" allows any topic
    discovery: bool = True  # publish Home Assistant discovery configs
    discovery_prefix: str = "homeassistant"


@dataclass(frozen=True)
class LimitsConfig:
    """What a request may ask for; beyond these it is refused with a typed error."""

    max_payload_bytes: int = 65_536  # larger requests: too_large
    max_prompt_chars: int = 32_000  # prompt + message contents: too_large
    max_prompt_tokens: int | None = None  # None = the context window decides (context_overflow)
    max_tokens: int = 2048  # the most a request may ask max_tokens for: bad_request above
    default_max_tokens: int = 256  # when a request names none
    max_temperature: float = 2.0
    max_top_k: int = 1000
    max_stop: int = 8  # stop strings per request
    max_stop_chars: int = 64  # characters per stop string
    queue_size: int = 8  # requests waiting behind the running one; more get busy at once
    dedup_window_s: float = 3600.0  # a request id answered within this window is not answered again
    max_request_s: float | None = None  # a request running longer ends "timeout"; None = sized to the box


@dataclass(frozen=True)
class DaemonConfig:
    """The daemon's own behaviour."""

    metrics_interval_s: float = 30.0  # {prefix}/metrics period; 0 = off
    drain_timeout_s: float = 20.0  # on SIGTERM, how long the running request may finish (keep < TimeoutStopSec)
    state_dir: Path | None = None  # the answered-ids journal; None = $STATE_DIRECTORY or ~/.local/state/edgekit
    log_level: str = "INFO"


@dataclass(frozen=True)
class HttpConfig:
    """The HTTP front end (Ollama- and OpenAI-compatible APIs): off unless ``listen`` is set."""

    listen: str | None = None  # "[HOST:]PORT", e.g. "11434" or "0.0.0.0:11434"; None = no HTTP front end
    api_key_file: Path | None = None  # a file holding the API key (first line); None = no key asked
    api_key_credential: str = "http_api_key"  # name under $CREDENTIALS_DIRECTORY (systemd LoadCredential=)
    max_body_bytes: int = 1_048_576  # larger request bodies: 413
    model_name: str | None = None  # the name the APIs list and accept; None = the GGUF file's stem


@dataclass(frozen=True)
class CacheConfig:
    """The prompt cache: saved KV states of long prompt prefixes, kept across restarts."""

    enabled: bool = True
    dir: Path | None = None  # None = <daemon state_dir>/prompt-cache
    ram_mb: int = 256  # states held in RAM (the memory plan counts it); more wait on disk
    disk_mb: int = 2048  # cap on the folder; least recently used states are deleted first
    min_tokens: int = 64  # prefixes shorter than this are neither saved nor restored
    warm_recent: int = 4  # at start, before READY/online: restore this many most recently used states
    warm_prompts: tuple[str, ...] = ()  # system prompts evaluated at start (as a system message) unless cached


@dataclass(frozen=True)
class ServeConfig:
    """Everything `edgekit serve` needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    topics: TopicConfig = field(default_factory=TopicConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)

    @property
    def device_id(self) -> str:
        return self.topics.device_id or sanitise_device_id(socket.gethostname())

    @property
    def prefix(self) -> str:
        return self.topics.prefix or f"edgekit/{self.device_id}"

    @property
    def client_id(self) -> str:
        return self.broker.client_id or f"edgekit-{self.device_id}"

    @property
    def state_dir(self) -> Path:
        if self.daemon.state_dir:
            return self.daemon.state_dir
        base = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(base) if base else Path.home() / ".local" / "state" / "edgekit" / self.device_id

    @property
    def cache_dir(self) -> Path:
        return self.cache.dir or self.state_dir / "prompt-cache"


# Short environment names (what the systemd env file uses); every field also has
# EDGEKIT_<SECTION>_<FIELD>, e.g. EDGEKIT_LIMITS_QUEUE_SIZE.
ENV_ALIASES: dict[str, tuple[str, str]] = {
    "EDGEKIT_BROKER": ("broker", "url"),
    "EDGEKIT_MODEL": ("model", "path"),
    "EDGEKIT_PROFILE": ("model", "profile"),
    "EDGEKIT_PREFIX": ("topics", "prefix"),
    "EDGEKIT_DEVICE_ID": ("topics", "device_id"),
    "EDGEKIT_SHARE_GROUP": ("topics", "share_group"),
    "EDGEKIT_STATE_DIR": ("daemon", "state_dir"),
    "EDGEKIT_HTTP": ("http", "listen"),
}

# `edgekit serve` flags (argparse dest) -> field.
FLAG_FIELDS: dict[str, tuple[str, str]] = {
    "model": ("model", "path"),
    "profile": ("model", "profile"),
    "this_box": ("model", "this_box"),
    "ctx": ("model", "ctx"),
    "lora": ("model", "lora"),
    "broker": ("broker", "url"),
    "prefix": ("topics", "prefix"),
    "device_id": ("topics", "device_id"),
    "http": ("http", "listen"),
}

HTTP_DEFAULT_HOST = "127.0.0.1"  # loopback unless told otherwise: the API key is optional
HTTP_DEFAULT_PORT = 11434  # Ollama's port: clients (Home Assistant's Ollama integration) expect it
BROKER_SCHEMES = {"mqtt": (False, 1883), "tcp": (False, 1883), "mqtts": (True, 8883), "ssl": (True, 8883)}
HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}[A-Za-z0-9_])?)*\.?")
# Settings that existed once: a config naming them gets the reason, not just "unknown setting".
RETIRED = {
    "broker.answer_qos": "final answers always go at QoS 2 with each step of the flow journaled, so a restarted "
                         "daemon finishes it instead of answering twice (chunks at QoS 1): remove the line",
}


def sanitise_device_id(name: str) -> str:
    """A hostname made safe for topic levels and client ids: [a-z0-9_-] only."""
    return re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-") or "edgekit"


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None) -> ServeConfig:
    """Build the ServeConfig: defaults < TOML file < environment < flags (None flags are ignored)."""
    env = os.environ if env is None else env
    path = path or (Path(env["EDGEKIT_CONFIG"]) if env.get("EDGEKIT_CONFIG") else None)
    tree = read_toml(path, "config file") if path else {}
    for (section, name), value in _env_values(env).items():
        tree.setdefault(section, {})[name] = value
    for dest, (section, name) in FLAG_FIELDS.items():
        if flags and flags.get(dest) is not None:
            tree.setdefault(section, {})[name] = flags[dest]
    config = build(ServeConfig, tree, Source("config: ", from_strings=True, retired=RETIRED))
    _check(config)
    return config


def broker_address(url: str) -> tuple[str, int, bool]:
    """'mqtts://host:8883' -> ("host", 8883, True); a ConfigError saying what is wrong otherwise."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError("broker url: credentials do not go in the URL (it is logged and shown by ps): "
                          "set broker.username and put the password in broker.password_file or the "
                          "mqtt_password credential")
    if parts.scheme not in BROKER_SCHEMES or not parts.hostname or parts.path.strip("/") or parts.query:
        raise ConfigError(f"broker url {url!r}: use mqtt://host:port or mqtts://host:port")
    if not _valid_host(parts.hostname):
        raise ConfigError(f"broker url {url!r}: {parts.hostname!r} is not a host name or IP address")
    tls, default_port = BROKER_SCHEMES[parts.scheme]
    try:
        port = parts.port or default_port
    except ValueError:
        raise ConfigError(f"broker url {url!r}: the port is not a number from 1 to 65535") from None
    return parts.hostname, port, tls


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return HOST_NAME.fullmatch(host) is not None


def broker_password(broker: BrokerConfig, env: Mapping[str, str] | None = None) -> str | None:
    """The password from password_file, else from $CREDENTIALS_DIRECTORY/<password_credential>, else None."""
    return read_secret(broker.password_file, broker.password_credential, "broker password", env)


def http_api_key(http: HttpConfig, env: Mapping[str, str] | None = None) -> str | None:
    """The HTTP API key from api_key_file, else from $CREDENTIALS_DIRECTORY/<api_key_credential>, else None."""
    key = read_secret(http.api_key_file, http.api_key_credential, "HTTP API key", env)
    if key is not None and not key.strip():
        raise ConfigError("the HTTP API key file is empty: write the key on its first line, or remove http.api_key_file")
    return key.strip() if key is not None else None


def http_address(listen: str) -> tuple[str, int]:
    """'[HOST:]PORT' -> (host, port); the host is loopback when not given."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or HTTP_DEFAULT_HOST
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"http listen {listen!r}: give [HOST:]PORT, e.g. 11434 or 0.0.0.0:11434")
    return host, int(port)


def read_secret(path: Path | None, credential: str, what: str, env: Mapping[str, str] | None = None) -> str | None:
    """A secret's first line from ``path``, else from systemd's $CREDENTIALS_DIRECTORY/<credential>, else None."""
    env = os.environ if env is None else env
    if path is not None:
        return _first_line(path, what)
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory and (Path(directory) / credential).is_file():
        return _first_line(Path(directory) / credential, what)
    return None


def _first_line(path: Path, what: str) -> str:
    try:
        if path.stat().st_mode & 0o077:
            log.warning("broker password file %s can be read by other users: chmod 600 %s", path, path)
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{what} file {path}: {exc.strerror} (check the path and its permissions)") from None
    return lines[0] if lines else ""


def _env_values(env: Mapping[str, str]) -> dict[tuple[str, str], str]:
    values: dict[tuple[str, str], str] = {}
    for section in fields(ServeConfig):
        for f in fields(_section_type(section.name)):
            name = f"EDGEKIT_{section.name}_{f.name}".upper()
            if name in env:
                values[(section.name, f.name)] = env[name]
    for name, key in ENV_ALIASES.items():
        if name in env:
            values[key] = env[name]
    return values


def _section_type(section: str) -> type:
    return typing.get_type_hints(ServeConfig)[section]


def _check(config: ServeConfig) -> None:
    """Cross-field rules a type cannot say."""
    if config.broker.url != "none":
        broker_address(config.broker.url)
    if config.http.listen is not None:
        http_address(config.http.listen)
    elif config.broker.url == "none":
        raise ConfigError("broker none and no HTTP listener: nothing to serve (give --http [HOST:]PORT or a broker)")
    try:
        config.model.adapters()
    except UsageError as exc:
        raise ConfigError(f"setting model.lora: {exc}") from None
    limits = config.limits
    positive = {"limits.max_payload_bytes": limits.max_payload_bytes, "limits.max_tokens": limits.max_tokens,
                "limits.queue_size": limits.queue_size, "broker.keepalive_s": config.broker.keepalive_s,
                "http.max_body_bytes": config.http.max_body_bytes,
                "cache.disk_mb": config.cache.disk_mb}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"setting {key} = {value}: must be at least 1")
    if limits.max_request_s is not None and limits.max_request_s <= 0:
        raise ConfigError(f"setting limits.max_request_s = {limits.max_request_s}: must be above 0 (seconds)")
    if config.cache.ram_mb < 0 or config.cache.min_tokens < 1 or config.cache.warm_recent < 0:
        raise ConfigError("cache.ram_mb and cache.warm_recent must be >= 0 and cache.min_tokens >= 1")
    if not 1 <= limits.default_max_tokens <= limits.max_tokens:
        raise ConfigError("setting limits.default_max_tokens must be between 1 and limits.max_tokens")
    if any(c in config.prefix for c in "#+$") or config.prefix.endswith("/"):
        raise ConfigError(f"topic prefix {config.prefix!r}: no wildcards, '$' or trailing '/'")
    group = config.topics.share_group
    if group is not None and (not group or any(c in group for c in "/#+")):
        raise ConfigError(f"share_group {group!r}: one topic level without '/', '#' or '+'")
    if (config.broker.cert_file is None) != (config.broker.key_file is None):
        raise ConfigError("broker.cert_file and broker.key_file go together (mutual TLS needs both)")
