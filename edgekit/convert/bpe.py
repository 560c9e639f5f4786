"""Byte-level BPE vocabularies from tokenizer.json (Llama 3, Qwen2, SmolLM), as llama.cpp's converter reads them.

Mirrors convert_hf_to_gguf.py's get_vocab_base/_set_vocab_gpt2: tokens by id with padding for
ids the tokenizer lacks, added tokens as CONTROL (special or special-looking) or USER_DEFINED,
merges and special ids through gguf-py's SpecialVocab, and the pre-tokenizer chosen by hashing
the tokenization of a fixed text (bpe_pre.py), so llama.cpp splits text as the checkpoint does.
The Hugging Face `tokenizers` library does the tokenizing; transformers is not needed.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import gguf
from tokenizers import AddedToken, Tokenizer, models

from edgekit.convert.bpe_pre import CHKTXT, KNOWN_PRE
from edgekit.errors import ModelFormatError, UnsupportedModel

log = logging.getLogger(__name__)

TOKENIZER_JSON = "tokenizer.json"


def read_tokenizer(folder: Path) -> Tokenizer:
    """tokenizer.json as the `tokenizers` library loads it, or ModelFormatError naming the file."""
    path = folder / TOKENIZER_JSON
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises its own Exception subclass for any malformed file
        raise ModelFormatError(f"{path} is not a tokenizer the tokenizers library can load ({exc}); re-download it") from None
    if not isinstance(tokenizer.model, models.BPE):
        raise UnsupportedModel(f"{path} holds a non-BPE tokenizer; only byte-level BPE tokenizer.json files are supported")
    return tokenizer


def pre_tokenizer_name(tokenizer: Tokenizer, path: Path) -> str:
    """llama.cpp's name for the pre-tokenizer: the sha256 of the ids of CHKTXT, looked up as its converter does."""
    ids = tokenizer.encode(CHKTXT, add_special_tokens=True).ids  # AutoTokenizer.encode adds BOS where the model does
    digest = hashlib.sha256(str(ids).encode()).hexdigest()
    if digest not in KNOWN_PRE:
        raise UnsupportedModel(
            f"{path}: llama.cpp does not know this BPE pre-tokenizer (hash {digest[:16]}...), so it would split "
            "text differently from the checkpoint; supported are the tokenizers llama.cpp's converter recognizes "
            "(Llama 3, Qwen2, SmolLM and others)"
        )
    return KNOWN_PRE[digest]


def bpe_tokens(tokenizer: Tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token texts and GGUF token types by id, padded to the model's vocab_size with [PAD<id>] UNUSED entries."""
    by_id = {token_id: text for text, token_id in tokenizer.get_vocab(with_added_tokens=True).items()}
    if by_id and max(by_id) >= vocab_size:
        raise ModelFormatError(f"tokenizer.json has token id {max(by_id)}, beyond config.json's vocab_size {vocab_size}")
    added = tokenizer.get_added_tokens_decoder()
    tokens, types = [], []
    for token_id in range(vocab_size):
        if token_id not in by_id:
            tokens.append(f"[PAD{token_id}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif token_id in added:
            text, kind = _added_token(tokenizer, added[token_id])
            tokens.append(text)
            types.append(int(kind))
        else:
            tokens.append(by_id[token_id])
            types.append(int(gguf.TokenType.NORMAL))
    return tokens, types


def _added_token(tokenizer: Tokenizer, token: AddedToken) -> tuple[str, gguf.TokenType]:
    """llama.cpp assumes CONTROL and USER_DEFINED texts are pre-normalized: a token the tokenizer
    does not normalize is encoded and decoded back first, as llama.cpp's converter does."""
    text = token.content
    if not token.normalized:
        text = tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
    if token.special or looks_special(text):
        return text, gguf.TokenType.CONTROL
    return text.replace("\u2581", " "), gguf.TokenType.USER_DEFINED


def has_byte_level_post_processor(tokenizer_json: dict) -> bool:
    """Whether tokenizer.json's post-processor (or one in its Sequence) is ByteLevel."""
    post = tokenizer_json.get("post_processor") or {}
    return any(p.get("type") == "ByteLevel" for p in post.get("processors", [post]))


def looks_special(text: str) -> bool:
    """llama.cpp's does_token_look_special: models that forget to mark control tokens special."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))  # deepseek-coder's fullwidth bars
        or (text.startswith("<unused") and text.endswith(">"))
    )
