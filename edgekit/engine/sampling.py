"""llama.cpp's native sampler chain for one request (child side).

Sampling stays in C: no per-token copy of the vocabulary's logits into Python.
A grammar (GBNF, or one made from a JSON schema) joins the chain, so the sampler
only ever picks tokens the grammar allows.
"""

from __future__ import annotations

import ctypes
import json
import random
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import LlamaGrammar

from edgekit.engine.records import Request
from edgekit.errors import BadRequest

PENALTY_LAST_N = 64  # tokens the repeat penalty looks back over (llama.cpp's default)


class SamplerChain:
    """Owns a llama_sampler chain; sample() picks and accepts the next token."""

    def __init__(self, vocab: Any, n_vocab: int, request: Request) -> None:
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        try:
            self._build(vocab, n_vocab, request)
        except BaseException:
            self.close()
            raise

    def sample(self, ctx: Any) -> int:
        """The next token from the last logits of ``ctx`` (the grammar advances with it)."""
        return llama_cpp.llama_sampler_sample(self._chain, ctx, -1)

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

    def _add(self, sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def _build(self, vocab: Any, n_vocab: int, request: Request) -> None:
        if request.repeat_penalty != 1.0:
            self._add(llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, request.repeat_penalty, 0.0, 0.0))
        gbnf = grammar_text(request)
        if gbnf is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
            if not grammar:  # NULL: llama.cpp could not parse it (it logs why)
                raise BadRequest("the grammar does not parse as GBNF (or has no 'root' rule): fix the grammar")
            self._add(grammar)
        if request.temperature <= 0.0:
            self._add(llama_cpp.llama_sampler_init_greedy())
            return
        seed = request.seed if request.seed is not None else random.getrandbits(32)
        self._add(llama_cpp.llama_sampler_init_top_k(request.top_k))
        self._add(llama_cpp.llama_sampler_init_top_p(request.top_p, 1))
        self._add(llama_cpp.llama_sampler_init_min_p(request.min_p, 1))
        self._add(llama_cpp.llama_sampler_init_temp(request.temperature))
        self._add(llama_cpp.llama_sampler_init_dist(ctypes.c_uint32(seed).value))


def grammar_text(request: Request) -> str | None:
    """The GBNF for a request: its grammar, or one made from its JSON schema, or None."""
    if request.grammar is not None:
        return request.grammar
    if request.json_schema is None:
        return None
    try:
        return LlamaGrammar.from_json_schema(json.dumps(request.json_schema), verbose=False)._grammar
    except Exception as exc:  # the converter raises plain exceptions on schemas it cannot express
        raise BadRequest(f"the JSON schema cannot be turned into a grammar: {exc}") from exc
