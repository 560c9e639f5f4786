"""LoRA adapters at run time: loaded once beside the model, switched on the context per request.

llama.cpp keeps an adapter's A/B tensors in their own buffers (llama_adapter_lora_init) and adds
scale * alpha / r * B @ A x in the graph of every context that has it set
(llama_set_adapters_lora), so switching costs nothing but the KV cache: keys and values
computed under one adapter are wrong under another: the context's prefix starts over, and the
prompt cache looks up states under the adapter's own key (prompt_cache.adapter_key).
The parent checks names (check_adapter); the child (Adapters) holds the pointers.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

from edgekit.engine.records import Request
from edgekit.errors import BadRequest, ModelFormatError
from edgekit.settings import LoraAdapter, Settings

Choice = tuple[str | None, float]  # (adapter name or None for the bare model, scale)


def check_adapter(request: Request, settings: Settings) -> None:
    """Refuse a request for an adapter that was not loaded, or with a scale that is not a number."""
    names = [a.name for a in settings.lora]
    if request.adapter is not None and request.adapter not in names:
        loaded = ", ".join(names) or "none (start with --lora NAME=adapter.gguf)"
        raise BadRequest(f"adapter {request.adapter!r} is not loaded; loaded: {loaded}")
    if request.adapter_scale is not None and not math.isfinite(request.adapter_scale):
        raise BadRequest(f"adapter_scale {request.adapter_scale} is not a finite number")


def check_adapter_files(model_architecture: str, lora: tuple[LoraAdapter, ...]) -> None:
    """Each adapter is a GGUF LoRA for this architecture, with a unique name (before the worker starts)."""
    from edgekit.gguf_file import validate

    names = [a.name for a in lora]
    if len(set(names)) != len(names):
        raise BadRequest(f"adapter names must differ: {', '.join(names)}")
    for adapter in lora:
        meta = validate(adapter.path).metadata
        if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
            raise ModelFormatError(f"{adapter.path} is not a GGUF LoRA adapter (make one with `edgekit convert-lora`)")
        if meta.get("general.architecture") != model_architecture:
            raise ModelFormatError(f"{adapter.path} is an adapter for {meta.get('general.architecture')}, "
                                   f"the model is {model_architecture}")


class Adapters:
    """The adapters loaded on one model (child side), and which one the context applies now."""

    def __init__(self, llm: Any, lora: tuple[LoraAdapter, ...]) -> None:
        import llama_cpp
        from llama_cpp._utils import suppress_stdout_stderr

        self._llama_cpp = llama_cpp
        self._llm = llm
        self.by_name = {a.name: a for a in lora}
        self._loaded: dict[str, Any] = {}
        for adapter in lora:
            # llama.cpp warns once per tensor on a repacked (Q4_0/Q4_K) base that the pair stays
            # in plain CPU memory: expected, and hundreds of lines; our own error says what failed.
            with suppress_stdout_stderr(disable=llm.verbose):
                pointer = llama_cpp.llama_adapter_lora_init(llm.model, str(adapter.path).encode())
            if not pointer:  # llama.cpp logged why: a shape or tensor of another base model
                raise ModelFormatError(f"llama.cpp could not load the adapter {adapter.path} on this model "
                                       "(made for another base model? convert it with --base this model)")
            self._loaded[adapter.name] = pointer
        self.active: Choice = (None, 0.0)
        self.loads = len(self._loaded)  # adapters loaded so far: switching never adds to it

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._loaded)

    def choice(self, request: Request) -> Choice:
        """The (name, scale) a request asks for: its own scale, else the adapter's."""
        if request.adapter is None:
            return (None, 0.0)
        default = self.by_name[request.adapter].scale
        return (request.adapter, default if request.adapter_scale is None else float(request.adapter_scale))

    def use(self, choice: Choice) -> bool:
        """Set ``choice`` on the context; True when it changed (so cached keys and values are stale)."""
        if choice == self.active:
            return False
        llama_cpp, (name, scale) = self._llama_cpp, choice
        if name is None:
            status = llama_cpp.llama_set_adapters_lora(self._llm.ctx, None, 0, None)
        else:
            pointers = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._loaded[name])
            status = llama_cpp.llama_set_adapters_lora(self._llm.ctx, pointers, 1, (ctypes.c_float * 1)(scale))
        if status != 0:
            raise ModelFormatError(f"llama.cpp refused to apply the adapter {name!r} (status {status})")
        self.active = choice
        return True

