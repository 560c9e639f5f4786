"""llama.cpp's native sampler chain for one request (child side).

Sampling stays in C: no per-token copy of the vocabulary's logits into Python.
A grammar (GBNF, or one made from a JSON schema) is kept beside the chain, as
llama.cpp's own common_sampler does it: the chain picks a token, the grammar checks
that one token, and only when it is refused does the grammar filter the whole
vocabulary before the chain picks again. Filtering 32,000 candidates through a
grammar on every token made structured output about twenty times slower.
"""

from __future__ import annotations

import ctypes
import json
import random
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import LlamaGrammar

from edgekit.engine.records import Request
from edgekit.errors import BadRequest

PENALTY_LAST_N = 64  # tokens the repeat penalty looks back over (llama.cpp's default)
# numpy's view of llama_token_data {int32 id; float logit; float p}
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class SamplerChain:
    """Owns a llama_sampler chain; sample() picks and accepts the next token."""

    def __init__(self, vocab: Any, n_vocab: int, request: Request, gbnf: str | None = None) -> None:
        """``gbnf`` overrides the request's own grammar or JSON schema (tool calls bring their own)."""
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self._grammar: Any = None
        self._n_vocab = n_vocab
        try:
            self._grammar = _grammar_sampler(vocab, gbnf if gbnf is not None else grammar_text(request))
            self._build(n_vocab, request)
        except BaseException:
            self.close()
            raise

    def sample(self, ctx: Any) -> int:
        """The next token from the last logits of ``ctx``; the grammar, if any, advances with it."""
        if self._grammar is None:
            return llama_cpp.llama_sampler_sample(self._chain, ctx, -1)  # applies and accepts
        candidates = self._candidates(ctx)
        token = self._pick(candidates)
        if not self._grammar_allows(token):
            candidates = self._candidates(ctx)  # the chain has rewritten the first array
            llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(candidates.array))
            token = self._pick(candidates)
        llama_cpp.llama_sampler_accept(self._grammar, token)
        llama_cpp.llama_sampler_accept(self._chain, token)
        return token

    @property
    def grammar(self) -> Any:
        """The grammar sampler (None without a grammar): forced.py advances it over forced text."""
        return self._grammar

    def accept_forced(self, tokens: list[int]) -> None:
        """Tokens appended without sampling (the grammar has already advanced over them)."""
        for token in tokens:
            llama_cpp.llama_sampler_accept(self._chain, token)

    def close(self) -> None:
        for sampler in (self._chain, self._grammar):
            if sampler is not None:
                llama_cpp.llama_sampler_free(sampler)
        self._chain = self._grammar = None

    def _candidates(self, ctx: Any) -> _Candidates:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(self._n_vocab,))
        return _Candidates(logits)

    def _pick(self, candidates: _Candidates) -> int:
        llama_cpp.llama_sampler_apply(self._chain, ctypes.byref(candidates.array))
        return int(candidates.array.data[candidates.array.selected].id)  # samplers may sort the array

    def _grammar_allows(self, token: int) -> bool:
        one = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 1.0, 0.0))
        array = llama_cpp.llama_token_data_array(one, 1, -1, False)
        llama_cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return one[0].logit != float("-inf")

    def _add(self, sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def _build(self, n_vocab: int, request: Request) -> None:
        if request.repeat_penalty != 1.0:
            self._add(llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, request.repeat_penalty, 0.0, 0.0))
        if request.temperature <= 0.0:
            self._add(llama_cpp.llama_sampler_init_greedy())
            return
        seed = request.seed if request.seed is not None else random.getrandbits(32)
        self._add(llama_cpp.llama_sampler_init_top_k(request.top_k))
        self._add(llama_cpp.llama_sampler_init_top_p(request.top_p, 1))
        self._add(llama_cpp.llama_sampler_init_min_p(request.min_p, 1))
        self._add(llama_cpp.llama_sampler_init_temp(request.temperature))
        self._add(llama_cpp.llama_sampler_init_dist(ctypes.c_uint32(seed).value))


class _Candidates:
    """Every token with its logit, as the llama_token_data_array that samplers rewrite in place."""

    def __init__(self, logits: np.ndarray) -> None:
        self.data = np.empty(len(logits), dtype=TOKEN_DATA)
        self.data["id"] = np.arange(len(logits), dtype=np.int32)
        self.data["logit"] = logits
        self.data["p"] = 0.0
        pointer = self.data.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        self.array = llama_cpp.llama_token_data_array(pointer, len(logits), -1, False)


def _grammar_sampler(vocab: Any, gbnf: str | None) -> Any:
    """llama.cpp's grammar sampler for ``gbnf``, or None."""
    if gbnf is None:
        return None
    grammar = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not grammar:  # NULL: llama.cpp could not parse it (it logs why)
        raise BadRequest("the grammar does not parse as GBNF (or has no 'root' rule): fix the grammar")
    return grammar


def grammar_text(request: Request) -> str | None:
    """The GBNF for a request: its grammar, or one made from its JSON schema, or None."""
    if request.grammar is not None:
        return request.grammar
    if request.json_schema is None:
        return None
    try:
        return compact_json(LlamaGrammar.from_json_schema(json.dumps(request.json_schema), verbose=False)._grammar)
    except Exception as exc:  # the converter raises plain exceptions on schemas it cannot express
        raise BadRequest(f"the JSON schema cannot be turned into a grammar: {exc}") from exc


def compact_json(gbnf: str) -> str:
    """llama.cpp's JSON-schema grammar with json.dumps's separators (``{"a": 1, "b": [2, 3]}``) and
    no other whitespace. Its optional spaces gave the model a choice after every brace and comma,
    so no punctuation was ever forced (forced.py appends forced text without sampling)."""
    gbnf = gbnf.replace(' space ":" space ', ' ": " ').replace('"," space', '", "')
    return "\n".join('space ::= ""' if line.startswith("space ::=") else line for line in gbnf.splitlines())
