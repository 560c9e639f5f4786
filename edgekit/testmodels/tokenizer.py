"""A Llama-style SentencePiece tokenizer.model, built once per machine and cached.

We train a real SentencePiece BPE model with Llama's settings (byte fallback, split
digits, identity normalization, dummy prefix, no whitespace squeezing) on our
calibration text, then extend it to exactly 32000 pieces with concatenations of
existing pieces scored below all others. Every piece stays a plain BPE merge, so
sentencepiece's encoder and llama.cpp's SPM tokenizer (the same bigram algorithm)
give the same ids. No piece contains "<" or ">": llama.cpp, unlike sentencepiece,
would let a merge form "<s>" or "<0x41>".
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from functools import cache
from importlib import resources
from pathlib import Path

import sentencepiece as spm

from edgekit.atomic import write_bytes
from edgekit.errors import OutputError

log = logging.getLogger(__name__)

VOCAB_SIZE = 32000
TRAINED_VOCAB = 8000  # what BPE learns from ~50 KB of text; the rest are synthetic merges
BUILD_VERSION = "1"  # bump when the recipe changes: it is part of the cache key
MAX_PIECE_CHARS = 16  # Llama's max_sentencepiece_length

# Llama 2's trainer_spec and normalizer_spec, minus corpus-size settings.
TRAINER_OPTIONS: dict[str, object] = {
    "model_type": "bpe",
    "byte_fallback": True,
    "split_digits": True,
    "split_by_unicode_script": True,
    "split_by_whitespace": True,
    "split_by_number": True,
    "allow_whitespace_only_pieces": True,
    "max_sentencepiece_length": MAX_PIECE_CHARS,
    "max_sentence_length": 4192,
    "character_coverage": 0.99995,
    "normalization_rule_name": "identity",
    "add_dummy_prefix": True,
    "remove_extra_whitespaces": False,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "hard_vocab_limit": False,
    "num_threads": 1,  # determinism
    "minloglevel": 2,
}

# Text beyond the calibration file so the vocabulary has accented letters, digits and
# runs of spaces (code indentation) like a real one. Tabs and emoji stay out: they take
# the byte-fallback path, as they do in Llama's own vocabulary.
_EXTRA_LINES = [
    "Café, naïve façade, résumé, Zürich, São Paulo, España, Ångström, Dvořák, Łódź, crème brûlée, déjà vu.",
    "Müller, Straße, garçon, piñata, jalapeño, Bogotá, Québec, Reykjavík, Kraków, Århus, Gödel, Fermat.",
    "def forward(self, x):",
    "    hidden = self.norm(x)",
    "        return hidden * 2 + 1",
    "            if value is None:",
    "In 1776, 1865 and 2024: 3.14159, 2.71828, 42, 1000000, 0.02 and 10000 tokens per second.",
    "Temperature 21.5 C, humidity 48 %, pressure 1013 hPa at 09:30 on 2024-11-23.",
]


def calibration_text() -> str:
    """edgekit/data/calibration.txt: public-domain English, also used for perplexity."""
    return resources.files("edgekit").joinpath("data", "calibration.txt").read_text(encoding="utf-8")


def _training_lines() -> list[str]:
    lines = [line for line in calibration_text().splitlines()[1:] if line.strip()]
    return lines + _EXTRA_LINES * 20


def _cache_key() -> str:
    digest = hashlib.sha256()
    for part in (BUILD_VERSION, spm.__version__, str(VOCAB_SIZE), str(TRAINED_VOCAB), *_training_lines()):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """$EDGEKIT_CACHE, else $XDG_CACHE_HOME/edgekit, else ~/.cache/edgekit."""
    if os.environ.get("EDGEKIT_CACHE"):
        return Path(os.environ["EDGEKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit"


def _train() -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_lines()), model_writer=model, vocab_size=TRAINED_VOCAB, **TRAINER_OPTIONS
    )
    return model.getvalue()


def _synthetic_pieces(pieces: list[str], count: int) -> list[str]:
    """``count`` new word-like pieces: a word start (▁...) joined to a word continuation.

    Pairs are taken in order of combined rank, so the first ones join the most frequent pieces.
    """
    starts = [p for p in pieces if p.startswith("▁") and len(p) > 1]
    tails = [p for p in pieces if not p.startswith("▁")]
    seen, out = set(pieces), []
    for total in range(len(starts) + len(tails)):
        for i in range(max(0, total - len(tails) + 1), min(total + 1, len(starts))):
            piece = starts[i] + tails[total - i]
            if piece not in seen and len(piece) <= MAX_PIECE_CHARS:
                seen.add(piece)
                out.append(piece)
                if len(out) == count:
                    return out
    raise RuntimeError(f"only {len(out)} synthetic pieces for {count} wanted")  # cannot happen with 8000 trained


def _extend(model: bytes) -> bytes:
    """Append synthetic merges (scored below every piece) until the vocabulary has VOCAB_SIZE pieces."""
    from sentencepiece import sentencepiece_model_pb2 as pb  # needs protobuf

    proto = pb.ModelProto()
    proto.ParseFromString(model)
    normal = [p.piece for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL]
    normal = [p for p in normal if "<" not in p and ">" not in p]
    lowest = min(p.score for p in proto.pieces)
    for k, piece in enumerate(_synthetic_pieces(normal, VOCAB_SIZE - len(proto.pieces))):
        proto.pieces.add(piece=piece, score=lowest - 1.0 - k, type=pb.ModelProto.SentencePiece.NORMAL)
    proto.trainer_spec.vocab_size = VOCAB_SIZE
    return proto.SerializeToString()


def build_tokenizer_model() -> bytes:
    """Train and extend the model (about a second); deterministic for one sentencepiece version."""
    model = _extend(_train())
    check = spm.SentencePieceProcessor(model_proto=model)
    assert check.vocab_size() == VOCAB_SIZE, check.vocab_size()
    return model


@cache
def tokenizer_model() -> bytes:
    """The tokenizer.model bytes, from the on-disk cache or built and cached now."""
    path = cache_dir() / "tokenizers" / f"llama-spm-{VOCAB_SIZE}-{_cache_key()}.model"
    if path.is_file():
        return path.read_bytes()
    model = build_tokenizer_model()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, model)
        log.info("cached tokenizer.model at %s", path)
    except (OSError, OutputError) as exc:  # a read-only home still gets a tokenizer, just not a cached one
        log.warning("cannot cache tokenizer.model at %s: %s", path, exc)
    return model
