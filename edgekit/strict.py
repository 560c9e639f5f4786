"""Strict reading of configuration: TOML tables into frozen dataclasses, and JSON objects from files.

One loader for the profiles (profiles/*.toml) and the daemon's edgekit.toml: unknown keys,
wrong types, values out of a field's range or choices are errors that name the key, its
value and what it should be, before anything runs with a half-understood setting.

A dataclass field says what it accepts with its type (int, float, bool, str, Path,
Literal[...], tuple[X, ...], unions with None or "auto") and, in its metadata, "range":
(low, high), "choices": (...), "check": a function returning what is wrong or None, or
"internal": True for a field the file may not set.
"""

from __future__ import annotations

import json
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from edgekit.errors import ConfigError

_TRUE_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class Source:
    """Where the values come from, for the messages, and how they are read."""

    prefix: str  # starts every message: "profile /etc/edgekit/profiles/pi.toml: " or "config: "
    from_strings: bool = False  # values may be strings to convert (environment variables); "" means None
    retired: Mapping[str, str] = field(default_factory=dict)  # key -> why it went and what to do


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file's table; a ConfigError naming ``what`` and the file when it is missing or malformed."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder: give a .toml file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def read_json_object(path: str | os.PathLike[str], what: str,
                     error: Callable[[str], Exception] = ConfigError, fix: str = "") -> dict[str, Any]:
    """A file holding one JSON object; else ``error`` (one of ours) naming ``what``, the file and ``fix``."""
    fix = f"; {fix}" if fix else ""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for a binary file
        raise error(f"{what} {path} is not valid JSON ({exc}){fix}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a JSON object, not a {type(data).__name__}{fix}")
    return data


def build(cls: type, table: Any, source: Source, where: str = "") -> Any:
    """Construct dataclass ``cls`` from ``table``, rejecting unknown keys and wrong types."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{source.prefix}[{where.rstrip('.') or 'config'}] must be a table, not {table!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if not f.metadata.get("internal")}
    for key in table:
        if f"{where}{key}" in source.retired:
            raise ConfigError(f"{source.prefix}{where}{key}: {source.retired[where + key]}")
        if key not in known:
            raise ConfigError(f"{source.prefix}unknown key '{where}{key}' (known: {', '.join(known)})")
    missing = [f.name for f in known.values() if f.default is MISSING and f.default_factory is MISSING
               and f.name not in table]
    if missing:
        raise ConfigError(f"{source.prefix}missing key '{where}{missing[0]}'")
    values = {}
    for key, value in table.items():
        kind, spec = hints[key], known[key]
        if _is_dataclass(kind):
            values[key] = build(kind, value, source, f"{where}{key}.")
        else:
            values[key] = _checked(value, kind, spec.metadata, source, f"{where}{key}")
    return cls(**values)


def _is_dataclass(kind: Any) -> bool:
    return isinstance(kind, type) and hasattr(kind, "__dataclass_fields__")


def _checked(value: Any, kind: Any, meta: Mapping[str, Any], source: Source, key: str) -> Any:
    """``value`` as the field's type, within its range and choices; a ConfigError naming the key otherwise."""
    converted = _convert(value, kind, source.from_strings)
    if converted is _WRONG:
        raise ConfigError(f"{source.prefix}{key} = {value!r} is not {describe(kind)}")
    if isinstance(converted, int) and not isinstance(converted, bool) and "range" in meta:
        low, high = meta["range"]
        if not low <= converted <= high:
            raise ConfigError(f"{source.prefix}{key} = {converted} is out of range {low}..{high}")
    if "choices" in meta and converted not in meta["choices"]:
        raise ConfigError(f"{source.prefix}{key} = {converted!r} is not one of {', '.join(meta['choices'])}")
    problem = meta["check"](converted) if "check" in meta else None
    if problem:
        raise ConfigError(f"{source.prefix}{key} = {converted!r} {problem}")
    return converted


_WRONG = object()  # no option of the type takes the value


def _convert(value: Any, kind: Any, from_strings: bool) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if from_strings and value == "" and type(None) in options:
            return None
        for option in options:
            converted = _convert(value, option, from_strings)
            if converted is not _WRONG:
                return converted
        return _WRONG
    if origin is Literal:
        return value if value in typing.get_args(kind) else _WRONG
    if origin is tuple:
        items = [value] if from_strings and isinstance(value, str) else value
        if not isinstance(items, list):
            return _WRONG
        converted = [_convert(item, typing.get_args(kind)[0], from_strings) for item in items]
        return _WRONG if _WRONG in converted else tuple(converted)
    return _convert_plain(value, kind, from_strings)


def _convert_plain(value: Any, kind: Any, from_strings: bool) -> Any:
    text = from_strings and isinstance(value, str)
    if kind is type(None):
        return None if value is None else _WRONG
    if kind is bool:
        if isinstance(value, bool):
            return value
        return _TRUE_WORDS.get(value.lower(), _WRONG) if text else _WRONG
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return int(value) if text and value.strip().lstrip("-").isdigit() else _WRONG
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value) if text else _WRONG
        except ValueError:
            return _WRONG
    if kind is str:
        return value if isinstance(value, str) else _WRONG
    if kind is Path:
        return Path(value).expanduser() if isinstance(value, (str, Path)) else _WRONG
    return _WRONG


def describe(kind: Any) -> str:
    """A type in words, for messages: "an integer or 'auto'", "a list of a string"."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(k) for k in typing.get_args(kind) if k is not type(None))
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(kind))
    if origin is tuple:
        return f"a list of {describe(typing.get_args(kind)[0])}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            Path: "a path (a string)"}.get(kind, str(kind))
