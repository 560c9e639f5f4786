"""Text a grammar forces, appended in one batch instead of sampled token by token (child side).

Inside a tool call most characters are not the model's choice: JSON punctuation, keys,
the rest of a tool name or enum value once its first token is chosen. After each token we
ask llama.cpp's grammar sampler which single bytes it allows next (one apply over ~257
one-byte tokens and EOS, not the whole vocabulary): while exactly one printable byte is
allowed, that byte is forced and the grammar advances by it. The forced text is then
written as the vocabulary's longest pieces, evaluated with the sampled token in one
llama_decode, and streamed like sampled text. When only EOS is allowed, the answer is
complete and generation ends without another decode.

This is "jump-forward" decoding (SGLang's compressed FSM), done on llama.cpp's own grammar.
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
import numpy as np

from edgekit.engine.sampling import TOKEN_DATA

MAX_FORCED_BYTES = 128  # per step; a longer forced run continues at the next step


class ForcedText:
    """Finds what the grammar forces next and writes it as tokens of this vocabulary."""

    def __init__(self, vocab: Any, n_vocab: int, eos: int) -> None:
        self._pieces = _pieces(vocab, n_vocab)
        self._longest = max(map(len, self._pieces), default=1)
        probe = sorted((b[0], t) for b, t in self._pieces.items() if len(b) == 1)
        self._probe_bytes = np.array([b for b, _ in probe] + [-1], dtype=np.int32)  # -1 stands for EOS
        self._probe = np.zeros(len(probe) + 1, dtype=TOKEN_DATA)
        self._probe["id"] = [t for _, t in probe] + [eos]
        self._byte_token = {b: t for b, t in probe}
        pointer = self._probe.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        self._array = llama_cpp.llama_token_data_array(pointer, len(self._probe), -1, False)

    def after(self, grammar: Any, room: int) -> tuple[list[int], bool]:
        """Advance ``grammar`` over its forced bytes (at most ``room``); return their tokens and
        whether the grammar is then complete (only EOS allowed)."""
        text = bytearray()
        complete = False
        while len(text) < min(MAX_FORCED_BYTES, room):  # a token has a byte at least: never over room
            byte = self._only_next(grammar)
            if byte is None:
                break
            if byte < 0:
                complete = True
                break
            llama_cpp.llama_sampler_accept(grammar, self._byte_token[byte])
            text.append(byte)
        return self.tokens(bytes(text)), complete

    def tokens(self, text: bytes) -> list[int]:
        """``text`` as the longest vocabulary pieces, left to right (every byte has a piece)."""
        out, i = [], 0
        while i < len(text):
            for n in range(min(self._longest, len(text) - i), 0, -1):
                token = self._pieces.get(text[i : i + n])
                if token is not None:
                    out.append(token)
                    i += n
                    break
        return out

    def _only_next(self, grammar: Any) -> int | None:
        """The one byte (or -1: EOS) the grammar allows next, or None when it allows several."""
        self._probe["logit"] = 0.0
        self._array.selected, self._array.sorted = -1, False
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(self._array))
        allowed = np.flatnonzero(self._probe["logit"] != -np.inf)
        if len(allowed) != 1:
            return None
        byte = int(self._probe_bytes[allowed[0]])
        return byte if byte < 0 or 0x20 <= byte < 0x7F else None  # only printable ASCII: whole characters


def _pieces(vocab: Any, n_vocab: int) -> dict[bytes, int]:
    """Every token's bytes (control tokens have none); a later token wins a tie, so SentencePiece's
    normal tokens win over its byte tokens (<0x22>), which come first."""
    buf = ctypes.create_string_buffer(256)
    pieces: dict[bytes, int] = {}
    for token in range(n_vocab):
        n = llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
        if n > 0:
            pieces[buf.raw[:n]] = token
    return pieces
