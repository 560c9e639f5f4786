"""Run one request on a loaded llama_cpp.Llama (child side): prompt, sampling, streaming.

The per-token path is three C calls (sample, token_to_piece, decode) and one pipe send,
so generation runs at llama.cpp's own speed. Timings are taken here, around the
llama.cpp calls, with time.perf_counter (CLOCK_MONOTONIC on Linux, shared by the
parent and the child, so the parent's call time can be compared with ours).
"""

from __future__ import annotations

import ctypes
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from edgekit.engine.forced import ForcedText
from edgekit.engine.kv_state import capture_state, restore_state
from edgekit.engine.prompt_cache import PromptCache, adapter_key, common_prefix
from edgekit.engine.records import Chunk, EngineJob, FinishReason, Request, Result, Timings, ToolCall
from edgekit.engine.sampling import SamplerChain
from edgekit.engine.text import TextAssembler
from edgekit.engine.tool_grammar import tool_grammar
from edgekit.engine.tool_output import CallStream
from edgekit.errors import BadRequest, ContextOverflow, EngineError, TooLarge

_NO_ABORT = llama_cpp.ggml_abort_callback()  # a NULL callback: removes ours after the prompt


@dataclass
class _Progress:
    t_start: float
    prompt_tokens: int = 0
    cached: int = 0
    t_prompt: float = 0.0  # seconds spent evaluating the prompt
    t_first: float | None = None
    completion: int = 0
    decoded: int = 0  # generated tokens evaluated (the last one never is)
    t_end: float = 0.0
    texts: list[str] = field(default_factory=list)
    tool_calls: tuple[ToolCall, ...] = ()


class Runner:
    """Serves jobs one after another on one Llama, keeping its KV cache between them."""

    def __init__(self, llm: Any, cancel_seq: Any, adapters: Any = None, cache: PromptCache | None = None,
                 counters: Any = None) -> None:
        self._llm = llm
        self._counters = counters  # worker.EngineCounters in shared memory, or None
        self._adapters = adapters  # edgekit.engine.adapters.Adapters, or None (no LoRA support needed)
        self._cache = cache
        self._cache_keys: dict[tuple[str | None, float], tuple[bytes, str]] = {}  # per adapter choice
        if cache is not None:
            self._cache_keys[(None, 0.0)] = (cache.key, cache.label)  # the bare model's
        self._cancel_seq = cancel_seq  # c_long in shared memory: equals job.seq when that job is cancelled
        self._seq = -1
        self._request_id = ""
        self._vocab = llm._model.vocab
        self._n_ctx = usable_context(llm)
        self._piece_buf = ctypes.create_string_buffer(256)
        self._one_token = (llama_cpp.llama_token * 1)()
        self._forced_text: ForcedText | None = None  # built on the first request with a grammar
        # Checked by ggml between graph nodes, so a cancel lands inside a long prompt batch.
        self._abort = llama_cpp.ggml_abort_callback(lambda _data: self._cancelled())

    def run(self, job: EngineJob, emit: Callable[[Chunk], None]) -> Result:
        """Evaluate the prompt (reusing the cached prefix), then sample until a finish reason."""
        self._seq, self._request_id = job.seq, job.request.id
        progress = _Progress(t_start=time.perf_counter())
        if self._cache is not None:
            self._cache.hold_writes()  # until after_reply: the cores are this request's
        tokens = self._tokenize_prompt(job)  # before the adapter: a refused prompt changes nothing here
        adapter = self._use_adapter(job.request)
        progress.prompt_tokens = len(tokens)
        if job.request.warm:  # fill the cache with the prompt's state, generate nothing
            reason: FinishReason = "stop" if self._prefill(tokens, progress) else "cancelled"
            progress.t_end = time.perf_counter()
            return _result(job, reason, progress, adapter)
        sampler = SamplerChain(self._vocab, self._llm.n_vocab(), job.request, tool_grammar(job.tools) if job.tools else None)
        try:
            if self._prefill(tokens, progress):
                reason = self._generate(job, len(tokens), sampler, emit, progress)
            else:
                reason = "cancelled"
        finally:
            sampler.close()
        progress.t_end = time.perf_counter()
        return _result(job, reason, progress, adapter)

    def _use_adapter(self, request: Any) -> tuple[str | None, float]:
        """Apply the request's LoRA (or none). A change makes every cached key and value stale: the
        context's prefix starts over and the prompt cache turns to the states made with this choice."""
        if self._adapters is None:
            return (None, 0.0)
        choice = self._adapters.choice(request)
        if self._adapters.use(choice):
            self._llm.n_tokens = 0  # the next eval drops the KV cache (see _reuse_prefix)
            if self._cache is not None:
                self._cache.select(*self._cache_key(choice))
        return choice

    def _cache_key(self, choice: tuple[str | None, float]) -> tuple[bytes, str]:
        """The prompt cache's key for an adapter choice (the bare model's, or adapter_key's), made once."""
        if choice not in self._cache_keys:
            name, scale = choice
            path = self._adapters.by_name[name].path
            self._cache_keys[choice] = adapter_key(self._cache_keys[(None, 0.0)], path, name, scale)
        return self._cache_keys[choice]

    def after_reply(self) -> None:
        """Save the context's state to the prompt cache, once the answer is on its way."""
        llm, cache = self._llm, self._cache
        try:
            if cache is not None and llm.n_tokens > 0:
                tokens = np.array(llm.input_ids[: llm.n_tokens], dtype=np.int32)
                if cache.wants(tokens):
                    cache.save(tokens, capture_state(llm))
        finally:
            if self._cache is not None:
                self._cache.release_writes()

    def warm_cache(self, recent: int) -> dict[str, float]:
        """Read the most recently used states into RAM and restore the newest into the context."""
        t0 = time.perf_counter()
        if self._cache is None:
            return {"states": 0, "bytes": 0, "ms": 0.0}
        states, size = self._cache.warm(recent)
        newest = self._cache.most_recent()
        if newest is not None:
            self._restore(newest)
        return {"states": states, "bytes": size, "ms": (time.perf_counter() - t0) * 1000}

    def tokenize(self, text: str, add_bos: bool, special: bool) -> list[int]:
        if self._counters is not None:
            self._counters.tokenized += 1
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def _cancelled(self) -> bool:
        return self._cancel_seq.value == self._seq

    def _tokenize_prompt(self, job: EngineJob) -> list[int]:
        """The prompt's tokens, checked against the context and the request's limits here, where they
        are counted: a daemon's limits cost no tokenizing of their own."""
        tokens = self.tokenize(job.prompt, job.add_bos, special=True)
        check_prompt(len(tokens), job.request, self._n_ctx)
        return tokens

    def _prefill(self, tokens: Sequence[int], progress: _Progress) -> bool:
        """Evaluate the uncached part of the prompt in n_batch pieces; False if cancelled."""
        llm = self._llm
        t0 = time.perf_counter()
        self._restore_cached(tokens)
        progress.cached = self._reuse_prefix(tokens)
        self._count(progress.cached)
        llama_cpp.llama_set_abort_callback(llm.ctx, self._abort, None)
        try:
            for i in range(progress.cached, len(tokens), llm.n_batch):
                if self._cancelled() or not self._eval(tokens[i : i + llm.n_batch]):
                    return False
        finally:
            llama_cpp.llama_set_abort_callback(llm.ctx, _NO_ABORT, None)
            progress.t_prompt = time.perf_counter() - t0
        return True

    def _restore_cached(self, tokens: Sequence[int]) -> None:
        """Restore the saved state sharing the longest prefix, when it beats what the context holds."""
        cache, llm = self._cache, self._llm
        if cache is None:
            return
        wanted = np.asarray(tokens, dtype=np.int32)
        name, shared = cache.best(wanted)
        in_context = common_prefix(llm.input_ids[: llm.n_tokens], wanted)
        if name is not None and shared - in_context >= cache.min_tokens:
            self._restore(name)

    def _restore(self, name: str) -> None:
        cache = self._cache
        assert cache is not None
        loaded = cache.load(name)
        llm = self._llm
        if loaded is None or common_prefix(llm.input_ids[: llm.n_tokens], loaded[0]) == len(loaded[0]):
            return  # gone, or the context holds it already (a warm prompt evaluated just before)
        if restore_state(llm, *loaded):
            cache.counters.restores += 1
        else:
            cache.drop(name, "llama.cpp refused the state")

    def _count(self, cached: int) -> None:
        if self._cache is not None:
            if cached >= self._cache.min_tokens:
                self._cache.counters.hits += 1
            else:
                self._cache.counters.misses += 1

    def _reuse_prefix(self, tokens: Sequence[int]) -> int:
        """Keep the KV cache of the longest common prefix with the last request; return its length."""
        llm = self._llm
        m = min(llm.n_tokens, len(tokens))
        differ = np.flatnonzero(llm.input_ids[:m] != np.asarray(tokens[:m], dtype=llm.input_ids.dtype))
        common = int(differ[0]) if differ.size else m
        # The last prompt token is always evaluated again: its logits pick the first answer token.
        keep = aligned_keep(len(tokens), min(common, len(tokens) - 1))
        if keep <= 0 or not llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            keep = 0
        llm.n_tokens = keep  # Llama.eval drops the KV cache from here on
        return keep

    def _eval(self, tokens: Sequence[int]) -> bool:
        """llm.eval, telling an abort by our cancel apart from a failure of llama.cpp."""
        done = self._llm.n_tokens
        try:
            self._llm.eval(tokens)
            return True
        except RuntimeError as exc:  # llama_decode returned non-zero (2 = aborted by our callback)
            self._llm.n_tokens = done
            self._llm._ctx.kv_cache_seq_rm(-1, done, -1)
            if self._cancelled():
                return False
            raise EngineError(f"llama.cpp failed to evaluate the prompt: {exc}") from exc

    def _generate(
        self, job: EngineJob, n_prompt: int, sampler: SamplerChain, emit: Callable[[Chunk], None], progress: _Progress
    ) -> FinishReason:
        """Sample up to the token limit, appending what a grammar forces in the same batch."""
        answer = _Answer(job, _Outbox(emit, self._request_id, job.request.stream_interval_ms / 1000, progress))
        limit = min(job.request.max_tokens, self._n_ctx - n_prompt)
        reason: FinishReason = "length"
        batch, complete = self._forced(sampler, limit)  # e.g. a required call's opening
        while progress.completion < limit:
            if not batch:
                if complete:
                    reason = "stop"
                    break
                token = sampler.sample(self._llm.ctx)
                if progress.t_first is None:
                    progress.t_first = time.perf_counter()
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    reason = "stop"
                    break
                # Free text after a grammar's text branch forces nothing: no probe needed.
                forced, complete = ([], False) if answer.in_text else self._forced(sampler, limit - progress.completion - 1)
                batch = [token, *forced]
            now = time.perf_counter()
            if progress.t_first is None:
                progress.t_first = now
            for token in batch:
                progress.completion += 1
                answer.add(self._piece(token), now)
            if answer.stopped or complete:
                reason = "stop"
                break
            if self._cancelled():
                reason = "cancelled"
                break
            if progress.completion < limit:
                self._decode(batch)
                progress.decoded += len(batch)
            batch = []
        answer.finish()
        progress.tool_calls = tuple(answer.calls)
        return "tool_calls" if answer.calls and reason != "cancelled" else reason

    def _forced(self, sampler: SamplerChain, room: int) -> tuple[list[int], bool]:
        """The tokens the grammar forces next (at most ``room``) and whether it is then complete."""
        room = min(room, self._llm.n_batch - 1)  # one llama_decode takes at most n_batch tokens
        if sampler.grammar is None or room <= 0:
            return [], False
        if self._forced_text is None:  # the vocabulary's pieces, read once
            self._forced_text = ForcedText(self._vocab, self._llm.n_vocab(), self._llm.token_eos())
        tokens, complete = self._forced_text.after(sampler.grammar, room)
        sampler.accept_forced(tokens)
        return tokens, complete

    def _decode(self, tokens: list[int]) -> None:
        if len(tokens) == 1:
            self._decode_one(tokens[0])
            return
        batch = (llama_cpp.llama_token * len(tokens))(*tokens)
        status = llama_cpp.llama_decode(self._llm.ctx, llama_cpp.llama_batch_get_one(batch, len(tokens)))
        if status != 0:
            raise EngineError(f"llama.cpp failed to evaluate forced tokens (llama_decode returned {status})")
        llm = self._llm
        llm.input_ids[llm.n_tokens : llm.n_tokens + len(tokens)] = tokens
        llm.n_tokens += len(tokens)

    def _decode_one(self, token: int) -> None:
        """Evaluate one generated token with llama_decode directly: Llama.eval builds a batch in
        Python and copies the whole vocabulary's logits into numpy on every call."""
        llm = self._llm
        self._one_token[0] = token
        status = llama_cpp.llama_decode(llm.ctx, llama_cpp.llama_batch_get_one(self._one_token, 1))
        if status != 0:
            raise EngineError(f"llama.cpp failed to evaluate a generated token (llama_decode returned {status})")
        llm.input_ids[llm.n_tokens] = token  # Llama's record of the KV cache, for prefix reuse
        llm.n_tokens += 1

    def _piece(self, token: int) -> bytes:
        """The token's bytes (a byte token may be half a UTF-8 character)."""
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        if n < 0:  # buffer too small: llama.cpp says how much it needs
            self._piece_buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, -n, 0, False)
        return self._piece_buf.raw[:n]


class _Outbox:
    """Streamed text on its way to the parent: the first piece at once (time to first token),
    later ones gathered until ``interval_s`` has passed since the last send; with an infinite
    interval nobody reads chunks (Engine.complete, a daemon's whole answer) and none is sent.

    Every send wakes the parent, and on a box with as many cores as llama.cpp has threads
    that wake-up lands on a core a compute thread needs: per-token sends cost a few percent
    of generation speed. Each token's own time still travels (Chunk.token_ms), so
    inter-token latency stays exact.
    """

    def __init__(self, emit: Callable[[Chunk], None], request_id: str, interval_s: float, progress: _Progress) -> None:
        self._emit, self._request_id, self._interval_s, self._progress = emit, request_id, interval_s, progress
        self._silent = interval_s == math.inf  # the text still gathers: the Result carries it
        self._texts: list[str] = []
        self._token_ms: list[float] = []
        self._last_send: float | None = None

    def add(self, text: str, t_token: float | None) -> None:
        """One token's released text ("" while held back), or with t_token None the final tail."""
        if t_token is not None:
            self._token_ms.append((t_token - self._progress.t_start) * 1000)
        if text:
            self._texts.append(text)
            now = time.perf_counter()
            if not self._silent and (self._last_send is None or now - self._last_send >= self._interval_s):
                self.flush(now)

    def add_calls(self, calls: list[ToolCall]) -> None:
        """Complete tool calls: sent at once, after any text before them, carrying the tokens' times."""
        now = time.perf_counter()
        self.flush(now)
        self._send("", tuple(calls), now)

    def flush(self, now: float | None = None) -> None:
        if not self._texts:
            return
        text = "".join(self._texts)
        self._texts.clear()
        self._send(text, (), now if now is not None else time.perf_counter())

    def _send(self, text: str, calls: tuple[ToolCall, ...], now: float) -> None:
        progress = self._progress
        chunk = Chunk(self._request_id, len(progress.texts), text, len(self._token_ms),
                      (now - progress.t_start) * 1000, tuple(self._token_ms), calls)
        self._token_ms = []
        self._last_send = now
        progress.texts.append(text)
        if not self._silent:
            self._emit(chunk)


class _Answer:
    """The answer's way out: token bytes -> text (stop strings, whole characters) -> tool calls
    held apart from text -> the outbox."""

    def __init__(self, job: EngineJob, outbox: _Outbox) -> None:
        self._text = TextAssembler(job.request.stop)
        self._calls = CallStream(job.tools) if job.tools else None
        self._outbox = outbox

    @property
    def stopped(self) -> bool:
        return self._text.stopped

    @property
    def in_text(self) -> bool:
        """The answer is text (tool calls offered, none made): the rest is free text."""
        return self._calls is not None and self._calls.in_text

    @property
    def calls(self) -> list[ToolCall]:
        return self._calls.calls if self._calls else []

    def add(self, piece: bytes, t_token: float) -> None:
        self._release(self._text.feed(piece), t_token, final=False)

    def finish(self) -> None:
        self._release(self._text.finish(), None, final=True)
        self._outbox.flush()

    def _release(self, text: str, t_token: float | None, final: bool) -> None:
        calls: list[ToolCall] = []
        if self._calls is not None:
            text, calls = self._calls.feed(text)
            if final:
                tail, last = self._calls.finish()
                text, calls = text + tail, calls + last
        self._outbox.add(text, t_token)
        if calls:
            self._outbox.add_calls(calls)


# llama.cpp's repacked CPU matmuls (Q4_0, Q4_K, IQ4_NL, and Q8_0 on some CPUs; x86 and ARM)
# take a batch's rows 4 at a time and send the rest one by one through gemv, each row a full
# pass over the weights, as costly as generating a token (ggml-cpu/repack.cpp,
# forward_mul_mat). For types that are not repacked a few more rows in a small batch cost
# little: the weights are read once either way.
ROW_BLOCK = 4


def aligned_keep(n_tokens: int, keep: int) -> int:
    """How many cached tokens to keep so the rest makes whole row blocks, where that is cheaper.

    Evaluating 1 or 2 cached tokens again in the batch costs less than the 3 or 2 leftover
    rows would; a leftover of 1 would need 3 more tokens and is kept. Measured on the
    TinyLlama-shaped Q4_K_M at 2 threads: 31 tokens after a cached BOS took 393 ms, 32 took 309.
    """
    extra = -(n_tokens - keep) % ROW_BLOCK
    return keep - extra if 0 < extra <= 2 and keep >= extra else keep


def check_prompt(count: int, request: Request, n_ctx: int) -> None:
    """A prompt of ``count`` tokens within the request's limits and the context; our errors otherwise."""
    if not count:
        raise BadRequest("the prompt is empty: send some text")
    if request.max_prompt_tokens is not None and count > request.max_prompt_tokens:
        raise TooLarge(f"prompt is {count} tokens, the limit is {request.max_prompt_tokens}")
    if request.max_tokens_must_fit and not request.warm and count + request.max_tokens > n_ctx:
        raise ContextOverflow(f"prompt ({count} tokens) plus max_tokens ({request.max_tokens}) is over the "
                              f"context of {n_ctx} tokens: shorten the prompt or ask for fewer tokens")
    if count + 1 > n_ctx:  # the prompt and at least one answer token must fit
        raise ContextOverflow(f"prompt is {count} tokens, context is {n_ctx} (the answer needs at least 1 more): "
                              "shorten the prompt or raise --ctx")


def usable_context(llm: Any) -> int:
    """The context we may fill: llama.cpp pads n_ctx up (to 256), llama-cpp-python's token
    buffer keeps the size asked for, so the smaller of the two."""
    return min(llm.n_ctx(), len(llm.input_ids))


def _result(job: EngineJob, reason: FinishReason, p: _Progress, adapter: tuple[str | None, float] = (None, 0.0)) -> Result:
    evaluated = p.prompt_tokens - p.cached
    gen_s = p.t_end - p.t_first if p.t_first is not None else 0.0
    timings = Timings(
        queue_ms=max(0.0, (p.t_start - job.t_call) * 1000),
        time_to_first_token_ms=(p.t_first - job.t_call) * 1000 if p.t_first is not None else 0.0,
        prompt_tokens=p.prompt_tokens,
        cached_prompt_tokens=p.cached,
        prompt_ms=p.t_prompt * 1000,
        prompt_tokens_per_s=evaluated / p.t_prompt if p.t_prompt > 0 else 0.0,
        completion_tokens=p.completion,
        generation_ms=gen_s * 1000,
        generation_tokens_per_s=p.decoded / gen_s if gen_s > 0 and p.decoded else 0.0,
        total_ms=(p.t_end - job.t_call) * 1000,
    )
    return Result(job.request.id, "".join(p.texts), reason, p.prompt_tokens, p.completion, timings, p.tool_calls,
                  adapter=adapter[0], adapter_scale=adapter[1] if adapter[0] is not None else None)
