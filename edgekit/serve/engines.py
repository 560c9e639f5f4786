"""Opening the engine the daemon serves: the model, its settings for this box, a warm-up.

The daemon talks to the engine only through EngineLike, the part of
edgekit.engine.Engine it uses, so the MQTT side reads without the engine's internals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from edgekit.engine.records import Chunk, Request, Result
from edgekit.errors import ConfigError
from edgekit.settings import Settings
from edgekit.serve.config import CacheConfig, ModelConfig

log = logging.getLogger(__name__)


class EngineLike(Protocol):
    info: Any

    def stream(self, request: Request, cancelled: Callable[[], bool] | None = None) -> Iterator[Chunk | Result]: ...
    def cancel(self, request_id: str) -> bool: ...
    def abort(self, request_id: str) -> bool: ...
    def complete(self, request: Request) -> Result: ...
    def alive(self) -> bool: ...
    def close(self) -> None: ...
    def cache_stats(self) -> Any: ...  # edgekit.engine.prompt_cache.CacheStats, or None without a cache
    load_count: int  # times the model was loaded (a crash's restart adds one; switching adapters never does)


def open_engine(model: ModelConfig, cache: CacheConfig | None = None, cache_dir: Path | None = None,
                before_warming: Callable[[EngineLike], object] | None = None) -> EngineLike:
    """Start the engine on ``model.path``, run the warm-up request, then ``before_warming`` (more
    requests of the caller's), then warm the prompt cache: last, so the newest saved prefix stays
    in the context for the first request (READY/online mean warm); raises our errors on failure."""
    from edgekit.engine import Engine
    from edgekit.engine.prompt_cache import PromptCacheConfig

    if model.path is None:
        raise ConfigError("no model to serve: give --model, EDGEKIT_MODEL or [model] path in edgekit.toml")
    on = cache is not None and cache.enabled
    prompt_cache = PromptCacheConfig(cache_dir, cache.disk_mb, cache.min_tokens) if on else None
    engine = Engine(model.path, settings_for(model, cache.ram_mb if on else 0), prompt_cache=prompt_cache)
    try:
        engine.start()
        if model.warm_up:
            result = engine.warm_up()
            log.info("warm-up: %.1f ms to the first token", result.timings.time_to_first_token_ms)
        if before_warming is not None:
            before_warming(engine)
        if on:
            warm_prompt_cache(engine, cache)
    except BaseException:
        engine.close()
        raise
    log.info("serving %s (%s, n_ctx %d)", model.path, engine.info.quant, engine.info.n_ctx)
    return engine


def seconds_per_token(engine: EngineLike) -> float:
    """This box's decode speed with this model, measured on a few tokens: sizes the default time limit."""
    result = engine.complete(Request(prompt="Hello", max_tokens=4, id="edgekit-measure"))
    t = result.timings
    per_token_ms = t.generation_ms / (t.completion_tokens - 1) if t.completion_tokens > 1 else t.total_ms
    return max(per_token_ms, 1.0) / 1000


def time_limit_s(request: Request, n_ctx: int, per_token_s: float, configured: float | None) -> float:
    """limits.max_request_s, or sized to the box: 30 s plus three times what max_tokens and a quarter of
    the context (prompt evaluation runs in batches, several times faster per token) take here."""
    if configured is not None:
        return configured
    return min(3600.0, 30.0 + 3 * per_token_s * (request.max_tokens + n_ctx / 4))


def warm_prompt_cache(engine: Any, cache: CacheConfig) -> None:
    """Evaluate the configured prompts not cached yet, then restore the most recently used states:
    last, so the context holds the newest (the prefix the last request before a restart used)."""
    t0 = time.perf_counter()
    evaluated = 0
    for text in cache.warm_prompts:
        result = engine.warm(warm_request(text, bool(engine.info.chat_template)))
        evaluated += result.prompt_tokens - result.timings.cached_prompt_tokens
    warmed = engine.warm_cache(cache.warm_recent)
    log.info("prompt cache: warmed in %.0f ms (%d saved states restored, %.1f MB; %d warm_prompts, "
             "%d tokens evaluated)", (time.perf_counter() - t0) * 1000, warmed["states"], warmed["bytes"] / 2**20,
             len(cache.warm_prompts), evaluated)


def warm_request(text: str, chat: bool) -> Request:
    """One of [cache] warm_prompts as the engine's warm request: a system message (a raw prompt for a
    model without a chat template), so that it is the prefix of the chats that begin with it."""
    messages = ({"role": "system", "content": text},)
    return Request(messages=messages, warm=True) if chat else Request(prompt=text, warm=True)


def settings_for(model: ModelConfig, prompt_cache_mb: int = 0) -> Settings:
    """The llama.cpp settings for this model: planned with its profile (named, or chosen) for its box."""
    from edgekit.plan import settings_for as plan_settings

    plan = plan_settings(model.path, model.profile, ctx=model.ctx, this_box=model.this_box,
                         prompt_cache_mb=prompt_cache_mb, lora=model.adapters())
    log.info("plan: profile %s for %s: %s; settings: %s", plan.profile, plan.box, "; ".join(plan.reasons) or "defaults",
             plan.settings.summary())
    return plan.settings
