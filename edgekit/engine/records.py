"""The values that cross the engine's boundary: requests in, chunks and results out.

Streams yield records that carry their own timings, so benchmarking and the daemon
consume them and add no timing code of their own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Request:
    """One generation request: chat messages or a raw prompt, plus sampling and limits."""

    messages: tuple[dict[str, str], ...] | None = None  # [{"role": ..., "content": ...}]
    prompt: str | None = None  # raw text, no chat template
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 40
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    json_schema: dict[str, Any] | None = None
    grammar: str | None = None  # GBNF
    # Streamed text is gathered for this long between chunks (the first goes at once); 0 sends
    # every token's text as it comes. See generate._Outbox for why.
    stream_interval_ms: float = 100.0
    # Only put the prompt into the prompt cache (restored or evaluated) and answer with no text:
    # MQTT's `warm` request, Ollama's load request. max_tokens and sampling are ignored.
    warm: bool = False
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class Timings:
    """Where a request's time went; all durations in milliseconds."""

    queue_ms: float = 0.0  # from the stream() call until the worker starts on it
    time_to_first_token_ms: float = 0.0  # from the stream() call (queue included)
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # prefix reused from the KV cache, not evaluated again
    prompt_ms: float = 0.0
    prompt_tokens_per_s: float = 0.0  # evaluated (not cached) prompt tokens / prompt_ms
    completion_tokens: int = 0
    generation_ms: float = 0.0
    generation_tokens_per_s: float = 0.0  # tokens decoded after the first / generation_ms
    total_ms: float = 0.0


@dataclass(frozen=True)
class Chunk:
    """A piece of streamed text: always whole UTF-8 characters."""

    request_id: str
    index: int  # 0, 1, 2, ... in order
    text: str
    tokens: int  # tokens this chunk covers
    elapsed_ms: float  # since the request started running, when the chunk was sent
    token_ms: tuple[float, ...] = ()  # when each of its tokens was sampled, on the same clock


@dataclass(frozen=True)
class Result:
    """The final record of a request."""

    request_id: str
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    timings: Timings


@dataclass(frozen=True)
class ModelInfo:
    """What the loaded model is: read from llama.cpp once the worker has loaded it."""

    path: str
    n_ctx: int  # the context the engine runs with
    n_ctx_train: int
    n_vocab: int
    chat_template: str | None
    architecture: str
    quant: str  # file type as llama.cpp names it: Q4_K_M, Q8_0, F16, ...
    load_ms: float
    bos_token: str = ""  # token texts the chat template may use
    eos_token: str = ""
