"""The daemon core in this process, on a real engine: limits checked where the prompt is tokenized, once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekit.engine.records import Request
from edgekit.serve.config import load_config
from edgekit.serve.core import Core, Outcome
from edgekit.serve.jobs import Job

MAX_PROMPT_TOKENS = 24
LONG = "The porch light and the kitchen light are both on. " * 8  # well over MAX_PROMPT_TOKENS


class Collected:
    """A Sink that keeps the outcome of its one job."""

    def __init__(self) -> None:
        self.outcome: Outcome | None = None
        self.done = threading.Event()

    def chunk(self, job: Job, seq: int, chunk: object) -> None: ...

    def finish(self, job: Job, outcome: Outcome) -> None:
        self.outcome = outcome
        self.done.set()


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory, tiny_q8_0: Path) -> Iterator[Core]:
    env = {"EDGEKIT_LIMITS_MAX_PROMPT_TOKENS": str(MAX_PROMPT_TOKENS), "EDGEKIT_CACHE_ENABLED": "false",
           "EDGEKIT_DAEMON_STATE_DIR": str(tmp_path_factory.mktemp("state"))}
    core = Core(load_config(None, env=env, flags={"model": str(tiny_q8_0)}), [])
    core.start()
    yield core
    core.stop()


def outcome_of(core: Core, request: Request) -> tuple[Outcome, int]:
    """Run ``request`` through the core: its outcome, and how many texts the engine tokenized meanwhile."""
    sink = Collected()
    before = core.engine.tokenize_count
    core.submit(request, sink, front_end="test")
    assert sink.done.wait(120), "the core did not finish the request"
    return sink.outcome, core.engine.tokenize_count - before


def test_a_prompt_over_max_prompt_tokens_is_too_large_with_its_count_after_one_tokenize(core: Core) -> None:
    count = len(core.engine.tokenize(LONG, add_bos=True, special=True))
    assert count > MAX_PROMPT_TOKENS
    outcome, tokenized = outcome_of(core, Request(prompt=LONG, max_tokens=4))
    assert outcome.code == "too_large"
    assert outcome.message == f"prompt is {count} tokens, the limit is {MAX_PROMPT_TOKENS}"
    assert tokenized == 1


def test_a_chat_request_within_the_limits_tokenizes_its_prompt_once(core: Core) -> None:
    request = Request(messages=({"role": "user", "content": "Lights?"},), max_tokens=2)
    outcome, tokenized = outcome_of(core, request)
    assert outcome.code == "result", outcome
    assert 0 < outcome.result.prompt_tokens <= MAX_PROMPT_TOKENS and tokenized == 1


def test_a_prompt_plus_max_tokens_over_the_context_is_context_overflow_with_the_counts(core: Core) -> None:
    count = len(core.engine.tokenize("Hi", add_bos=True, special=True))
    n_ctx = core.engine.info.n_ctx
    outcome, tokenized = outcome_of(core, Request(prompt="Hi", max_tokens=n_ctx - count + 1))
    assert outcome.code == "context_overflow"
    assert outcome.message == (f"prompt ({count} tokens) plus max_tokens ({n_ctx - count + 1}) is over the "
                               f"context of {n_ctx} tokens: shorten the prompt or ask for fewer tokens")
    assert tokenized == 1
    fits, _ = outcome_of(core, Request(prompt="Hi", max_tokens=1))  # the same prompt with room: answered
    assert fits.code == "result"
