"""The vocabulary, added tokens, special ids and chat template of a checkpoint.

A tokenizer.model is read as SentencePiece (llama.cpp's _create_vocab_sentencepiece), else a
tokenizer.json as byte-level BPE (bpe.py), in the order llama.cpp's converter tries them. Special
ids, merges, the add_bos/add_eos flags and the chat template come from gguf-py's SpecialVocab.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
from sentencepiece import SentencePieceProcessor

from edgekit.convert import bpe
from edgekit.errors import ModelFormatError
from edgekit.strict import read_json_object

log = logging.getLogger(__name__)

TOKENIZER_MODEL = "tokenizer.model"
ADDED_SCORE = -1000.0  # llama.cpp's score for added and padding tokens
UNUSED_SCORE = -10000.0


SMOLLM_VOCAB = 49152  # llama.cpp's LlamaModel: a Llama with this vocabulary (SmolLM, granite) adds no BOS


@dataclass
class Vocab:
    """Token texts, scores and types, index = token id; plus gguf-py's special tokens (and merges)."""

    tokens: list[bytes] | list[str]
    scores: list[float] | None  # SentencePiece only
    types: list[int]
    special: gguf.SpecialVocab
    model: str = "llama"  # tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str = "default"  # tokenizer.ggml.pre
    add_space_prefix: bool | None = None  # tokenizer_config.json's add_prefix_space, for Llama

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        """Write tokenizer.ggml.* keys and the chat template."""
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        self.special.add_to_gguf(writer, quiet=True)


def load_vocab(folder: Path, vocab_size: int, arch: gguf.MODEL_ARCH = gguf.MODEL_ARCH.LLAMA) -> Vocab:
    """The checkpoint's vocabulary padded to the model's vocab_size: tokenizer.model, else tokenizer.json."""
    if (folder / TOKENIZER_MODEL).is_file():
        vocab = load_sentencepiece_vocab(folder, vocab_size)
    elif (folder / bpe.TOKENIZER_JSON).is_file():
        vocab = load_bpe_vocab(folder, vocab_size)
    else:
        raise ModelFormatError(
            f"{folder} has neither {TOKENIZER_MODEL} nor {bpe.TOKENIZER_JSON} (the tokenizer); re-download the checkpoint"
        )
    if arch == gguf.MODEL_ARCH.LLAMA:  # what llama.cpp's LlamaModel.set_vocab adds for its family
        vocab.add_space_prefix = _json(folder / "tokenizer_config.json").get("add_prefix_space")
        if vocab_size == SMOLLM_VOCAB:
            vocab.special.add_special_token["bos"] = False
    return vocab


def load_bpe_vocab(folder: Path, vocab_size: int) -> Vocab:
    """tokenizer.json's byte-level BPE: tokens, types, merges, the pre-tokenizer llama.cpp must use."""
    tokenizer = bpe.read_tokenizer(folder)
    pre = bpe.pre_tokenizer_name(tokenizer, folder / bpe.TOKENIZER_JSON)
    tokens, types = bpe.bpe_tokens(tokenizer, vocab_size)
    special = _special_vocab(folder, vocab_size, load_merges=True)
    if not special.merges:
        raise ModelFormatError(f"{folder / bpe.TOKENIZER_JSON} has no merges; re-download it")
    if bpe.has_byte_level_post_processor(_json(folder / bpe.TOKENIZER_JSON)):
        # a ByteLevel post-processor adds nothing: newer gguf-py (llama.cpp's own) records that explicitly
        special.add_special_token.setdefault("bos", False)
        special.add_special_token.setdefault("eos", False)
    return Vocab(tokens=tokens, scores=None, types=types, special=special, model="gpt2", pre=pre)


def _special_vocab(folder: Path, vocab_size: int, load_merges: bool = False) -> gguf.SpecialVocab:
    try:
        return gguf.SpecialVocab(folder, load_merges=load_merges, n_vocab=vocab_size)
    except ValueError as exc:  # e.g. "pad_token_id": -1 in config.json
        raise ModelFormatError(f"{folder}: bad special token in config.json or tokenizer files: {exc}") from None


def load_sentencepiece_vocab(folder: Path, vocab_size: int) -> Vocab:
    """Read tokenizer.model and the added tokens; pad or trim to the model's vocab_size."""
    path = folder / TOKENIZER_MODEL
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as exc:
        raise ModelFormatError(f"{path} is not a SentencePiece model ({exc}); re-download it") from None
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [UNUSED_SCORE] * vocab_size
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    _fill_sentencepiece(sp, tokens, scores, types)
    for token_id, content, special in _added_tokens(folder):
        _set_added(tokens, scores, types, token_id, content, special)
    special_vocab = _special_vocab(folder, vocab_size)
    _fill_special_defaults(special_vocab, sp, tokens, folder)
    return Vocab(tokens=tokens, scores=scores, types=types, special=special_vocab)


def _fill_sentencepiece(sp: SentencePieceProcessor, tokens: list[bytes], scores: list[float], types: list[int]) -> None:
    if sp.vocab_size() > len(tokens):
        log.warning("tokenizer has %d pieces, the model %d; ignoring the extra ones", sp.vocab_size(), len(tokens))
    for token_id in range(min(sp.vocab_size(), len(tokens))):
        tokens[token_id] = sp.IdToPiece(token_id).encode("utf-8")
        scores[token_id] = sp.GetScore(token_id)
        types[token_id] = int(_piece_type(sp, token_id))


def _piece_type(sp: SentencePieceProcessor, token_id: int) -> gguf.TokenType:
    if sp.IsUnknown(token_id):
        return gguf.TokenType.UNKNOWN
    if sp.IsControl(token_id):
        return gguf.TokenType.CONTROL
    if sp.IsUnused(token_id):
        return gguf.TokenType.UNUSED
    if sp.IsByte(token_id):
        return gguf.TokenType.BYTE
    return gguf.TokenType.NORMAL


def _added_tokens(folder: Path) -> list[tuple[int, str, bool]]:
    """(id, content, special) from added_tokens.json, tokenizer.json and tokenizer_config.json, later files winning."""
    found: dict[int, tuple[str, bool]] = {}
    try:
        for content, token_id in _json(folder / "added_tokens.json").items():
            found[int(token_id)] = (str(content), False)
        for entry in _json(folder / "tokenizer.json").get("added_tokens", []):
            found[int(entry["id"])] = (str(entry["content"]), bool(entry.get("special")))
        for token_id, entry in _json(folder / "tokenizer_config.json").get("added_tokens_decoder", {}).items():
            found[int(token_id)] = (str(entry["content"]), bool(entry.get("special")))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFormatError(f"{folder}: malformed added token in the tokenizer files ({exc!r}); re-download them") from None
    return [(token_id, content, special) for token_id, (content, special) in sorted(found.items())]


def _set_added(tokens: list[bytes], scores: list[float], types: list[int], token_id: int, content: str, special: bool) -> None:
    if token_id >= len(tokens):
        log.warning("added token %r has id %d, beyond the model's vocab of %d; ignored", content, token_id, len(tokens))
        return
    if special or bpe.looks_special(content):
        types[token_id] = int(gguf.TokenType.CONTROL)
    else:
        content = content.replace("\u2581", " ")  # llama.cpp pre-normalizes user-defined spaces
        types[token_id] = int(gguf.TokenType.USER_DEFINED)
    scores[token_id] = ADDED_SCORE
    tokens[token_id] = content.encode("utf-8")


def _fill_special_defaults(special: gguf.SpecialVocab, sp: SentencePieceProcessor, tokens: list[bytes], folder: Path) -> None:
    """Where gguf-py found no id (it needs tokenizer.json): tokenizer_config.json's token texts looked up
    in our vocabulary, then the SentencePiece model's own ids; chat_template.jinja for the template."""
    config = _json(folder / "tokenizer_config.json")
    for kind, sp_id in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id()), ("pad", sp.pad_id())):
        if kind in special.special_token_ids:
            continue
        token_id = _token_id(tokens, config.get(f"{kind}_token"))
        token_id = token_id if token_id is not None else sp_id
        if token_id >= 0:
            special.special_token_ids[kind] = token_id
    jinja = folder / "chat_template.jinja"
    if special.chat_template is None and jinja.is_file():
        special.chat_template = jinja.read_text(encoding="utf-8")


def _token_id(tokens: list[bytes], entry: Any) -> int | None:
    """The id of a tokenizer_config.json token entry ("</s>" or {"content": "</s>", ...}), if in the vocabulary."""
    content = entry.get("content") if isinstance(entry, dict) else entry
    if not isinstance(content, str):
        return None
    try:
        return tokens.index(content.encode("utf-8"))
    except ValueError:
        return None


def _json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    return read_json_object(file, "the tokenizer file", ModelFormatError, fix="re-download it")
