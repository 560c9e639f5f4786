"""Our converter writes what llama.cpp's own convert_hf_to_gguf.py writes for the new families:
every metadata key with the same value and every tensor with the same type, shape and bytes.

llama.cpp's side is recorded in tests/data/llama_cpp_<preset>.json (see tests/gguf_summary.py for
how it was made: its converter needs torch, which edgekit does not install). Arrays (tokens, merges,
token types) compare by hash. We write a few keys more, listed here with why.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gguf_summary import summary

DATA = Path(__file__).parent / "data"
# Keys llama.cpp leaves out for qwen2 (it writes them only when the config has head_dim), which
# tools that read the file (memory estimators) would otherwise have to guess, and llama's vocab_size.
EXTRA_KEYS = {
    "llama3": set(),
    "qwen2": {"qwen2.attention.key_length", "qwen2.attention.value_length", "qwen2.rope.dimension_count", "qwen2.vocab_size"},
    "smollm2": set(),  # transformers' LlamaConfig fills head_dim in, so llama.cpp writes key_length for Llamas
}


@pytest.mark.parametrize("family", ["llama3", "qwen2", "smollm2"])
def test_metadata_and_tensors_equal_llama_cpp_converter(family: str, request: pytest.FixtureRequest) -> None:
    ours = summary(request.getfixturevalue(f"tiny_{family}_f32"))
    theirs = json.loads((DATA / f"llama_cpp_tiny-{family}.json").read_text())
    for key, value in theirs["metadata"].items():
        assert key in ours["metadata"], f"we do not write {key}"
        assert ours["metadata"][key] == value, key
    extra = {k for k in ours["metadata"] if k not in theirs["metadata"] and not k.startswith("edgekit.")}
    assert extra == EXTRA_KEYS[family]
    # Same tensors, bit for bit; if the test models' weights change on purpose, re-record (tests/gguf_summary.py).
    assert ours["tensors"] == theirs["tensors"]


def test_qwen2_extra_keys_are_what_llama_cpp_assumes(tiny_qwen2_checkpoint: Path, tiny_qwen2_f32: Path) -> None:
    cfg = json.loads((tiny_qwen2_checkpoint / "config.json").read_text())
    md = summary(tiny_qwen2_f32)["metadata"]
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    assert md["qwen2.attention.key_length"] == md["qwen2.attention.value_length"] == md["qwen2.rope.dimension_count"] == head_dim
    assert md["qwen2.vocab_size"] == cfg["vocab_size"]
