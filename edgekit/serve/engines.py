"""Opening the engine the daemon serves: the model, its settings for this box, a warm-up.

The daemon talks to the engine only through EngineLike, the part of
edgekit.engine.Engine it uses, so the MQTT side reads without the engine's internals.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Protocol

from edgekit.engine.records import Chunk, Request, Result
from edgekit.errors import ConfigError, TooLarge
from edgekit.plan import Settings
from edgekit.serve.config import ModelConfig

log = logging.getLogger(__name__)


class EngineLike(Protocol):
    info: Any

    def stream(self, request: Request) -> Iterator[Chunk | Result]: ...
    def cancel(self, request_id: str) -> bool: ...
    def alive(self) -> bool: ...
    def close(self) -> None: ...
    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]: ...
    def render_prompt(self, messages: Any) -> str: ...


def open_engine(model: ModelConfig) -> EngineLike:
    """Start the engine on ``model.path`` and run the warm-up request; raises our errors on failure."""
    from edgekit.engine import Engine

    if model.path is None:
        raise ConfigError("no model to serve: give --model, EDGEKIT_MODEL or [model] path in edgekit.toml")
    engine = Engine(model.path, settings_for(model))
    try:
        engine.start()
        if model.warm_up:
            result = engine.warm_up()
            log.info("warm-up: %.1f ms to the first token", result.timings.time_to_first_token_ms)
    except BaseException:
        engine.close()
        raise
    log.info("serving %s (%s, n_ctx %d)", model.path, engine.info.quant, engine.info.n_ctx)
    return engine


def check_prompt_tokens(engine: EngineLike, request: Request, limit: int | None) -> None:
    """limits.max_prompt_tokens: count the prompt as the model will see it (one tokenize in the engine)."""
    if limit is None:
        return
    text = request.prompt if request.prompt is not None else engine.render_prompt(request.messages)
    count = len(engine.tokenize(text, add_bos=request.prompt is not None, special=request.prompt is None))
    if count > limit:
        raise TooLarge(f"prompt is {count} tokens, the limit is {limit}")


def settings_for(model: ModelConfig) -> Settings:
    """The llama.cpp settings for this model: planned with its profile (named, or chosen) for its box."""
    from edgekit.plan import settings_for as plan_settings

    plan = plan_settings(model.path, model.profile, ctx=model.ctx, this_box=model.this_box)
    log.info("plan: profile %s for %s: %s", plan.profile, plan.box, "; ".join(plan.reasons) or "defaults")
    return plan.settings
