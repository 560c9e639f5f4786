"""llama.cpp, reading our converted files, tokenizes exactly as Hugging Face `tokenizers` does on the
checkpoint's tokenizer.json: 3,000 varied texts per vocabulary (tests/tokenizer_texts.py), with BOS
as each model adds it and special-token strings parsed on both sides."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from tests.tokenizer_texts import texts

llama_cpp = pytest.importorskip("llama_cpp")

N_TEXTS = 3000


@pytest.mark.parametrize("family", ["llama3", "qwen2", "smollm2"])
def test_llama_cpp_token_ids_equal_hugging_face_on_3000_texts(family: str, request: pytest.FixtureRequest) -> None:
    folder: Path = request.getfixturevalue(f"tiny_{family}_checkpoint")
    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    llm = llama_cpp.Llama(str(request.getfixturevalue(f"tiny_{family}_f32")), vocab_only=True, verbose=False)
    corpus = texts(N_TEXTS, seed=len(family))  # a different draw per vocabulary
    mismatched = [t for t in corpus if hf.encode(t).ids != llm.tokenize(t.encode(), add_bos=True, special=True)]
    assert len(corpus) == N_TEXTS
    assert not mismatched, f"{len(mismatched)} of {N_TEXTS} differ, e.g. {mismatched[0]!r}"


def test_texts_cover_the_hard_cases() -> None:
    corpus = "".join(texts(N_TEXTS))
    for needle in ("\u200d", "🇩🇪", "    ", "\t", "\r\n", "333333", "'RE", "<|im_start|>", "你好", "def ", "ﬁ"):
        assert needle in corpus, needle
