"""The served model as both APIs describe it: Ollama's tags/show entries, OpenAI's model object,
and keep_alive's load and unload through the core.

One model is served, under one name (``[http] model_name``, else the GGUF file's stem), and
each LoRA adapter loaded beside it (``--lora NAME=...``) as ``<name>:<NAME>``: Ollama's model:tag.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request as HttpRequest

from edgekit import gguf_file
from edgekit.engine import tools as toolcalls
from edgekit.engine.records import ModelInfo
from edgekit.errors import EdgekitError
from edgekit.gguf_file import GGUFInfo

log = logging.getLogger(__name__)


def loaded_info(http: HttpRequest) -> ModelInfo | None:
    """The engine's ModelInfo, or None while no model is loaded (keep_alive 0 unloaded it)."""
    engine = getattr(http.app.state.core, "engine", None)
    try:
        return engine.info if engine is not None else None
    except Exception:  # an engine that is not started (or restarting) has no info yet
        return None


def model_path(http: HttpRequest) -> Path | None:
    """The served GGUF (after a SIGHUP reload, the new one)."""
    config = getattr(http.app.state.core, "config", None)
    return config.model.path if config is not None else http.app.state.settings.model_path


def file_info(path: Path | None) -> GGUFInfo | None:
    """The served GGUF's header (architecture, context length, chat template), loaded model or not;
    read once per version of the file. None without a readable file."""
    try:
        stat = path.stat() if path is not None else None
    except OSError:
        return None
    if stat is None:
        return None
    try:
        return _described(path, stat.st_size, stat.st_mtime_ns)
    except EdgekitError as exc:  # replaced by a broken file since it was loaded: describe what we can
        log.warning("http: cannot describe %s: %s", path, exc)
        return None


@functools.lru_cache(maxsize=4)
def _described(path: Path, size: int, mtime_ns: int) -> GGUFInfo:
    """Keyed by size and mtime too, so a file replaced in place (a SIGHUP reload) is read again."""
    return gguf_file.validate(path)


async def described(http: HttpRequest) -> tuple[GGUFInfo | None, ModelInfo | None]:
    """The file's header (read off the event loop: a large vocabulary takes a while) and the loaded engine's info."""
    return await asyncio.to_thread(file_info, model_path(http)), loaded_info(http)


def adapter_names(http: HttpRequest) -> tuple[str, ...]:
    """The LoRA adapters served beside the model, by name (the config's [model] lora, after a SIGHUP the new one)."""
    config = getattr(http.app.state.core, "config", None)
    return tuple(a.name for a in config.model.adapters()) if config is not None else ()


def ollama_entries(http: HttpRequest, header: GGUFInfo | None, info: ModelInfo | None) -> list[dict[str, Any]]:
    """/api/tags (and /api/ps): the model, then one entry per adapter (``<name>:<adapter>``)."""
    base = ollama_entry(http, header, info)
    name = http.app.state.settings.model_name
    entries = [base]
    for adapter in adapter_names(http):
        variant = f"{name}:{adapter}"
        digest = hashlib.sha256(f"{base['digest']}:{variant}".encode()).hexdigest()
        entries.append({**base, "name": variant, "model": variant, "digest": digest})
    return entries


def ollama_entry(http: HttpRequest, header: GGUFInfo | None, info: ModelInfo | None) -> dict[str, Any]:
    """The served model's /api/tags (and /api/ps) entry."""
    name = http.app.state.settings.model_name
    path = model_path(http)
    stat = path.stat() if path is not None and path.exists() else None
    modified = datetime.fromtimestamp(stat.st_mtime, UTC) if stat else datetime.now(UTC)
    return {"name": f"{name}:latest", "model": f"{name}:latest", "modified_at": modified.isoformat(),
            "size": stat.st_size if stat else 0, "digest": _digest(path, stat), "details": _details(header, info)}


def ollama_show(http: HttpRequest, header: GGUFInfo | None, info: ModelInfo | None) -> dict[str, Any]:
    """/api/show: details, model_info with the context lengths, capabilities (tools when the template has them).

    From the GGUF's header, so that it answers the same while keep_alive 0 has unloaded the model;
    only edgekit.context_length (the context the daemon runs) needs the loaded engine."""
    template = header.chat_template if header is not None else getattr(info, "chat_template", None)
    capabilities = ["completion"] + (["tools"] if toolcalls.supports_tools(template) else [])
    model_info: dict[str, Any] = {}
    if header is not None:
        arch = header.architecture
        model_info = {"general.architecture": arch, f"{arch}.context_length": header.context_length,
                      f"{arch}.vocab_size": header.vocab_size, "general.file_type": _quant(header, info),
                      "general.parameter_count": header.parameter_count}
    if info is not None:
        model_info["edgekit.context_length"] = info.n_ctx
    return {"license": "", "modelfile": "", "parameters": "", "template": template or "",
            "details": _details(header, info), "model_info": model_info, "capabilities": capabilities,
            "modified_at": ollama_entry(http, header, info)["modified_at"]}


def openai_models(http: HttpRequest) -> list[dict[str, Any]]:
    """/v1/models: the model, then one object per adapter (``<name>:<adapter>``)."""
    name = http.app.state.settings.model_name
    return [openai_model(http, name)] + [openai_model(http, f"{name}:{a}") for a in adapter_names(http)]


def openai_model(http: HttpRequest, model_id: str) -> dict[str, Any]:
    path = model_path(http)
    created = int(path.stat().st_mtime) if path is not None and path.exists() else 0
    return {"id": model_id, "object": "model", "created": created, "owned_by": "edgekit"}


def _details(header: GGUFInfo | None, info: ModelInfo | None) -> dict[str, Any]:
    family = header.architecture if header else info.architecture if info else ""
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family] if family else [],
            "parameter_size": _parameter_size(header), "quantization_level": _quant(header, info)}


def _quant(header: GGUFInfo | None, info: ModelInfo | None) -> str:
    """llama.cpp's name of the file type; a file that does not record it: what llama.cpp guessed on load."""
    return (header.file_type if header else None) or (info.quant if info else "")


def _parameter_size(header: GGUFInfo | None) -> str:
    """Ollama's "1.1B", "135M"."""
    if header is None or not header.parameter_count:
        return ""
    count = header.parameter_count
    return f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"


def _digest(path: Path | None, stat: Any) -> str:
    """Names this file's version (path, size, mtime) without reading gigabytes on every /api/tags."""
    key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}" if stat else str(path)
    return hashlib.sha256(key.encode()).hexdigest()


# --- keep_alive -------------------------------------------------------------------------------


def after_request(http: HttpRequest, keep_alive_s: float | None) -> None:
    """keep_alive 0: unload the model once this request is answered (the next request loads it)."""
    if keep_alive_s == 0:
        asyncio.get_running_loop().create_task(load_or_unload(http, unload=True))


async def load_or_unload(http: HttpRequest, unload: bool) -> None:
    """The core frees (or loads) the engine on a thread, off the event loop."""
    core = http.app.state.core
    action = getattr(core, "unload" if unload else "load", None)
    if action is None:
        log.info("http: keep_alive asks to %s the model; this daemon keeps it loaded", "unload" if unload else "load")
        return
    await asyncio.to_thread(action)
