"""tokenizer.json for the Llama-3, Qwen2.5 and SmolLM2 test models, from llama.cpp's vocabulary test files.

llama.cpp keeps the real vocabularies and merges of Meta-Llama-3, Qwen and StarCoder2 in its
sources (models/ggml-vocab-llama-bpe.gguf, ggml-vocab-qwen2.gguf, ggml-vocab-starcoder.gguf:
vocabulary-only GGUFs). SmolLM2's own vocabulary is not among them: its test model takes
StarCoder2's, which has SmolLM2's size (49152) and pre-tokenizer (single digits, then GPT-2's
byte-level regex), so llama.cpp names it "starcoder" and splits text exactly as for "smollm". We take
them from the llama-cpp-python sdist (downloaded once per machine with pip, or given in
$EDGEKIT_LLAMA_CPP_SDIST) and write tokenizer.json as Llama-3.2 and Qwen2.5 ship it: the
same BPE model, pre-tokenizer regex, normalizer, decoder, post-processor and added tokens.
The result is cached beside the SentencePiece model (edgekit.testmodels.tokenizer.cache_dir).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import gguf

from edgekit.atomic import write_bytes, write_text
from edgekit.errors import OutputError
from edgekit.testmodels.tokenizer import cache_dir

log = logging.getLogger(__name__)

SDIST_VERSION = "0.3.36"  # pyproject pins this llama-cpp-python; its llama.cpp reads what we build
SDIST_MEMBER = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/models/ggml-vocab-{{name}}.gguf"
BUILD_VERSION = "1"  # bump when the recipe changes: it is part of the cache key

# Llama 3's and Qwen2's Split regexes (tokenizer.json); they differ in digits: runs of 1-3 vs one.
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# Llama 3.1/3.2 renamed some of Llama 3.0's reserved tokens (the vocab file is 3.0's).
LLAMA31_NAMED = {128004: "<|finetune_right_pad_id|>", 128008: "<|eom_id|>", 128010: "<|python_tag|>"}
LLAMA31_FIRST_RESERVED = {128002: 0, 128003: 1, 128005: 2, 128011: 3}  # id -> reserved number, counting on

# Qwen2.5's added tokens after the BPE vocabulary (id 151643 on); the last eight are not "special".
QWEN25_ADDED = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]
QWEN25_SPECIAL = 14
SMOLLM2_NAMED = {1: "<|im_start|>", 2: "<|im_end|>"}  # SmolLM2's ids of its ChatML tokens (StarCoder's FIM tokens there)


@dataclass(frozen=True)
class VocabFile:
    """The BPE part of a llama.cpp vocabulary file: tokens by id, and merges in rank order."""

    tokens: list[str]
    types: list[int]
    merges: list[str]

    def bpe_vocab(self) -> dict[str, int]:
        """The NORMAL tokens, which make tokenizer.json's model.vocab."""
        return {t: i for i, (t, kind) in enumerate(zip(self.tokens, self.types)) if kind == gguf.TokenType.NORMAL}


def read_vocab_file(path: Path) -> VocabFile:
    reader = gguf.GGUFReader(path)
    fields = reader.fields
    return VocabFile(
        tokens=list(fields["tokenizer.ggml.tokens"].contents()),
        types=list(fields["tokenizer.ggml.token_type"].contents()),
        merges=list(fields["tokenizer.ggml.merges"].contents()),
    )


def _added(token_id: int, content: str, special: bool = True) -> dict[str, Any]:
    flags = dict.fromkeys(("single_word", "lstrip", "rstrip", "normalized"), False)
    return {"id": token_id, "content": content, **flags, "special": special}


def _byte_level(add_prefix_space: bool, trim_offsets: bool, use_regex: bool) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": trim_offsets, "use_regex": use_regex}


def _pre_tokenizer(split: str, trim_offsets: bool) -> dict[str, Any]:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": False},
            _byte_level(False, trim_offsets, False),
        ],
    }


def _bpe_model(vocab: VocabFile, ignore_merges: bool) -> dict[str, Any]:
    return {
        "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
        "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
        "vocab": vocab.bpe_vocab(), "merges": vocab.merges,
    }


def llama31_special_tokens(vocab: VocabFile) -> list[tuple[int, str]]:
    """(id, text) of Llama 3.1/3.2's 256 special tokens, from Llama 3.0's file."""
    out, reserved = [], 0
    for token_id in range(len(vocab.tokens)):
        if vocab.types[token_id] != gguf.TokenType.CONTROL:
            continue
        reserved = LLAMA31_FIRST_RESERVED.get(token_id, reserved)
        text = vocab.tokens[token_id]
        if token_id in LLAMA31_NAMED:
            text = LLAMA31_NAMED[token_id]
        elif text.startswith("<|reserved_special_token_"):
            text, reserved = f"<|reserved_special_token_{reserved}|>", reserved + 1
        out.append((token_id, text))
    return out


def llama32_tokenizer_json(vocab: VocabFile) -> dict[str, Any]:
    """Llama-3.2-1B-Instruct's tokenizer.json: BOS added by the post-processor, merges ignored for whole words."""
    bos = "<|begin_of_text|>"
    template = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [
            {"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {bos: {"id": bos, "ids": [128000], "tokens": [bos]}},
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added(i, text) for i, text in llama31_special_tokens(vocab)],
        "normalizer": None,
        "pre_tokenizer": _pre_tokenizer(LLAMA3_SPLIT, trim_offsets=True),
        "post_processor": {"type": "Sequence", "processors": [_byte_level(True, False, True), template]},
        "decoder": _byte_level(True, True, True),
        "model": _bpe_model(vocab, ignore_merges=True),
    }


def qwen25_tokenizer_json(vocab: VocabFile) -> dict[str, Any]:
    """Qwen2.5-Instruct's tokenizer.json: NFC-normalized, single digits, no BOS."""
    first = len(vocab.bpe_vocab())
    added = [_added(first + k, text, special=k < QWEN25_SPECIAL) for k, text in enumerate(QWEN25_ADDED)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": _pre_tokenizer(QWEN2_SPLIT, trim_offsets=False),
        "post_processor": _byte_level(False, False, False),
        "decoder": _byte_level(False, False, False),
        "model": _bpe_model(vocab, ignore_merges=False),
    }


def smollm2_tokenizer_json(vocab: VocabFile) -> dict[str, Any]:
    """SmolLM2-Instruct's tokenizer.json layout (GPT2Tokenizer): digits split one by one, then byte-level BPE."""
    special = {i: SMOLLM2_NAMED.get(i, vocab.tokens[i]) for i, kind in enumerate(vocab.types) if kind == gguf.TokenType.CONTROL}
    model = _bpe_model(vocab, ignore_merges=False)
    model["vocab"] = {**{text: i for i, text in special.items()}, **model["vocab"]}  # GPT-2 style: specials in the vocab too
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added(i, text) for i, text in special.items()],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, _byte_level(False, True, True)]},
        "post_processor": _byte_level(False, True, True),
        "decoder": _byte_level(False, True, True),
        "model": model,
    }


# family -> (llama.cpp vocabulary file, builder)
FAMILIES = {
    "llama3": ("llama-bpe", llama32_tokenizer_json),
    "qwen2": ("qwen2", qwen25_tokenizer_json),
    "smollm2": ("starcoder", smollm2_tokenizer_json),
}


@cache
def tokenizer_json(family: str) -> str:
    """The tokenizer.json text for ``family`` ("llama3", "qwen2" or "smollm2"), from the cache or built now."""
    name, build = FAMILIES[family]
    path = cache_dir() / "tokenizers" / f"{family}-{SDIST_VERSION}-v{BUILD_VERSION}.tokenizer.json"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    text = json.dumps(build(read_vocab_file(llama_cpp_vocab_file(name))), indent=2, ensure_ascii=False) + "\n"
    try:
        write_text(path, text)
    except (OSError, OutputError) as exc:
        log.warning("cannot cache %s: %s", path, exc)
    return text


def llama_cpp_vocab_file(name: str) -> Path:
    """models/ggml-vocab-<name>.gguf of llama.cpp, extracted once from the llama-cpp-python sdist."""
    path = cache_dir() / "llama.cpp-vocab" / SDIST_VERSION / f"ggml-vocab-{name}.gguf"
    if path.is_file():
        return path
    given = os.environ.get("EDGEKIT_LLAMA_CPP_SDIST")
    names = {vocab for vocab, _ in FAMILIES.values()} | {name}  # one download serves every family
    path.parent.mkdir(parents=True, exist_ok=True)
    if given and Path(given).is_dir():
        write_bytes(path, (Path(given) / SDIST_MEMBER.format(name=name).split("/", 1)[1]).read_bytes())
    elif given:
        _extract_all(Path(given), names, path.parent)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            _extract_all(_download_sdist(Path(tmp)), names, path.parent)
    return path


def _extract_all(sdist: Path, names: set[str], folder: Path) -> None:
    for each in sorted(names):
        write_bytes(folder / f"ggml-vocab-{each}.gguf", _extract(sdist, SDIST_MEMBER.format(name=each)))


def _extract(sdist: Path, member: str) -> bytes:
    with tarfile.open(sdist) as tar:
        f = tar.extractfile(member)
        if f is None:
            raise OutputError(f"{sdist} has no {member}; is it llama-cpp-python {SDIST_VERSION}'s sdist?")
        return f.read()


def _download_sdist(folder: Path) -> Path:
    """pip download the sdist (about 75 MB); test models need it once per machine."""
    log.info("downloading llama-cpp-python %s's sources for llama.cpp's vocabulary files", SDIST_VERSION)
    cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-q",
           f"llama-cpp-python=={SDIST_VERSION}", "-d", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(folder.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode or not found:
        raise OutputError(
            f"cannot download llama-cpp-python {SDIST_VERSION}'s sdist for its vocabulary files "
            f"({done.stderr.strip()[-200:]}); set EDGEKIT_LLAMA_CPP_SDIST to a downloaded copy"
        )
    return found[0]
