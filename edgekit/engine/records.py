"""The values that cross the engine's boundary: requests in, chunks and results out.

Streams yield records that carry their own timings, so benchmarking and the daemon
consume them and add no timing code of their own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from edgekit.engine.tools import ToolPlan  # tools reads Request from here: typing only

# "tool_calls": the model ended its turn with one or more calls (Result.tool_calls holds them).
FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]


def new_tool_call_id() -> str:
    """An id in OpenAI's form, unique enough to match a tool result to its call."""
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class ToolCall:
    """A call the model made to one of the request's tools; arguments valid against its schema."""

    id: str  # "call_<hex>": a tool message answers it with this tool_call_id
    name: str
    arguments: dict[str, Any]  # parsed JSON object

    def to_message(self) -> dict[str, Any]:
        """The call in OpenAI's shape, as an assistant message's "tool_calls" entry."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class Request:
    """One generation request: chat messages or a raw prompt, plus sampling and limits."""

    # Roles system/user/assistant/tool, each {"role", "content"}. An assistant message may carry
    # "tool_calls": [{"id", "type": "function", "function": {"name", "arguments": dict or JSON string}}]
    # (content then may be "" or None); a tool message carries "content" (the result) and optionally
    # "tool_call_id" and "name".
    messages: tuple[dict[str, Any], ...] | None = None
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
    # Tools in OpenAI's shape: {"type": "function", "function": {"name", "description", "parameters"}};
    # parameters is a JSON schema of an object. Only with messages (chat), not with json_schema/grammar.
    tools: tuple[dict[str, Any], ...] = ()
    # "auto" (text or calls), "none" (text only, tools still shown to the model), "required" (at least
    # one call), or {"type": "function", "function": {"name": ...}} (a call to that tool).
    tool_choice: str | dict[str, Any] = "auto"
    # Streamed text is gathered for this long between chunks (the first goes at once); 0 sends
    # every token's text as it comes. See generate._Outbox for why.
    stream_interval_ms: float = 100.0
    adapter: str | None = None  # a LoRA loaded with the model (Settings.lora), by name; None: the bare model
    adapter_scale: float | None = None  # None: the adapter's own scale from Settings.lora
    # Limits checked where the prompt is tokenized (once, in the engine's child), set by a daemon:
    # its limits.max_prompt_tokens (too_large above it), and whether the context must hold the prompt
    # plus max_tokens (context_overflow, never an answer cut short in silence). Without them the
    # answer stops where the context ends (finish_reason "length").
    max_prompt_tokens: int | None = None
    max_tokens_must_fit: bool = False
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
    """A piece of streamed text (always whole UTF-8 characters), or complete tool calls.

    Text never carries a tool call's own text: the call arrives once it is whole, in tool_calls
    (with text "").
    """

    request_id: str
    index: int  # 0, 1, 2, ... in order
    text: str
    tokens: int  # tokens this chunk covers
    elapsed_ms: float  # since the request started running, when the chunk was sent
    token_ms: tuple[float, ...] = ()  # when each of its tokens was sampled, on the same clock
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Result:
    """The final record of a request."""

    request_id: str
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    tool_calls: tuple[ToolCall, ...] = ()  # with finish_reason "tool_calls"; text is then any text before them
    adapter: str | None = None  # the LoRA adapter that ran (None: the bare model)
    adapter_scale: float | None = None


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
    supports_tools: bool = False  # the chat template renders the `tools` variable
    adapters: tuple[str, ...] = ()  # LoRA adapters loaded beside the model, by name


@dataclass(frozen=True)
class EngineJob:
    """What the engine sends its worker for one request: the text to tokenize and when it was called."""

    seq: int  # the number the cancel flag is set to, to cancel this job
    request: Request
    prompt: str  # rendered chat prompt or the raw prompt
    add_bos: bool
    t_call: float  # parent's time.perf_counter() when stream() was called
    tools: ToolPlan | None = None  # the calls the answer may hold (grammar and parser)
