"""The served model as both APIs describe it: Ollama's tags/show entries, OpenAI's model object,
and keep_alive's load and unload through the core.

One model is served, under one name (``[http] model_name``, else the GGUF file's stem), and
each LoRA adapter loaded beside it (``--lora NAME=...``) as ``<name>:<NAME>``: Ollama's model:tag.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request as HttpRequest

from edgekit.engine.records import ModelInfo

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


def adapter_names(http: HttpRequest) -> tuple[str, ...]:
    """The LoRA adapters served beside the model, by name (the config's [model] lora, after a SIGHUP the new one)."""
    config = getattr(http.app.state.core, "config", None)
    return tuple(a.name for a in config.model.adapters()) if config is not None else ()


def ollama_entries(http: HttpRequest) -> list[dict[str, Any]]:
    """/api/tags (and /api/ps): the model, then one entry per adapter (``<name>:<adapter>``)."""
    base = ollama_entry(http)
    name = http.app.state.settings.model_name
    entries = [base]
    for adapter in adapter_names(http):
        variant = f"{name}:{adapter}"
        digest = hashlib.sha256(f"{base['digest']}:{variant}".encode()).hexdigest()
        entries.append({**base, "name": variant, "model": variant, "digest": digest})
    return entries


def ollama_entry(http: HttpRequest) -> dict[str, Any]:
    """The served model's /api/tags (and /api/ps) entry."""
    name = http.app.state.settings.model_name
    path, info = model_path(http), loaded_info(http)
    stat = path.stat() if path is not None and path.exists() else None
    modified = datetime.fromtimestamp(stat.st_mtime, UTC) if stat else datetime.now(UTC)
    return {"name": f"{name}:latest", "model": f"{name}:latest", "modified_at": modified.isoformat(),
            "size": stat.st_size if stat else 0, "digest": _digest(path, stat), "details": _details(info)}


def ollama_show(http: HttpRequest) -> dict[str, Any]:
    """/api/show: details, model_info with the context lengths, capabilities (tools when the template has them)."""
    info = loaded_info(http)
    capabilities = ["completion"] + (["tools"] if getattr(info, "supports_tools", False) else [])
    model_info: dict[str, Any] = {}
    if info is not None:
        arch = info.architecture
        model_info = {"general.architecture": arch, f"{arch}.context_length": info.n_ctx_train,
                      f"{arch}.vocab_size": info.n_vocab, "edgekit.context_length": info.n_ctx,
                      "general.file_type": info.quant}
    return {"license": "", "modelfile": "", "parameters": "", "template": getattr(info, "chat_template", "") or "",
            "details": _details(info), "model_info": model_info, "capabilities": capabilities,
            "modified_at": ollama_entry(http)["modified_at"]}


def openai_models(http: HttpRequest) -> list[dict[str, Any]]:
    """/v1/models: the model, then one object per adapter (``<name>:<adapter>``)."""
    name = http.app.state.settings.model_name
    return [openai_model(http, name)] + [openai_model(http, f"{name}:{a}") for a in adapter_names(http)]


def openai_model(http: HttpRequest, model_id: str) -> dict[str, Any]:
    path = model_path(http)
    created = int(path.stat().st_mtime) if path is not None and path.exists() else 0
    return {"id": model_id, "object": "model", "created": created, "owned_by": "edgekit"}


def _details(info: ModelInfo | None) -> dict[str, Any]:
    family = info.architecture if info else ""
    return {"parent_model": "", "format": "gguf", "family": family, "families": [family] if family else [],
            "parameter_size": "", "quantization_level": info.quant if info else ""}


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
