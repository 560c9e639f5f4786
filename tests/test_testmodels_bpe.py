"""The Llama-3 and Qwen2.5 test models: real shapes, real vocabularies (from llama.cpp's vocab files),
and the files those repos ship."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from edgekit.cli import main
from edgekit.convert.bpe_pre import CHKTXT, KNOWN_PRE
from edgekit.convert.checkpoint import read_header
from edgekit.gguf_file import validate
from edgekit.testmodels import PRESETS, tensor_specs
from edgekit.testmodels.chat_templates import CHAT_TEMPLATES


@pytest.mark.parametrize("preset, params", [("llama3.2-1b", 1_235_814_400), ("qwen2.5-1.5b", 1_543_714_304)])
def test_real_shapes_have_the_real_models_parameter_count(preset: str, params: int) -> None:
    """As transformers' num_parameters() reports Llama-3.2-1B-Instruct and Qwen2.5-1.5B-Instruct (both tied)."""
    shape = PRESETS[preset]
    assert shape.tied
    assert sum(spec.numel for spec in tensor_specs(shape, tied=True)) == params == shape.n_params(tied=True)


@pytest.mark.parametrize("family, pre", [("llama3", "llama-bpe"), ("qwen2", "qwen2"), ("smollm2", "starcoder")])
def test_tokenizer_is_the_real_one_by_llama_cpps_own_check(family: str, pre: str, request: pytest.FixtureRequest) -> None:
    """llama.cpp identifies a tokenizer by the ids it gives a fixed text: ours are Meta-Llama-3's, Qwen's and StarCoder2's."""
    folder: Path = request.getfixturevalue(f"tiny_{family}_checkpoint")
    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(CHKTXT).ids
    assert KNOWN_PRE[hashlib.sha256(str(ids).encode()).hexdigest()] == pre


def test_llama3_files_are_llama_3_2s(tiny_llama3_checkpoint: Path) -> None:
    config = json.loads((tiny_llama3_checkpoint / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == "llama3" and config["head_dim"] == 64 and config["tie_word_embeddings"]
    assert config["eos_token_id"] == [128001, 128008, 128009]
    assert not (tiny_llama3_checkpoint / "tokenizer.model").exists()
    tok_config = json.loads((tiny_llama3_checkpoint / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == CHAT_TEMPLATES["llama3.2"]
    added = {int(i): t["content"] for i, t in tok_config["added_tokens_decoder"].items()}
    assert (added[128008], added[128009], added[128010], added[128255]) == (
        "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|reserved_special_token_247|>")
    tokenizer = Tokenizer.from_file(str(tiny_llama3_checkpoint / "tokenizer.json"))
    assert tokenizer.encode("Hi").ids[0] == 128000 and tokenizer.get_vocab_size() == 128256


def test_qwen2_files_are_qwen_2_5s(tiny_qwen2_checkpoint: Path) -> None:
    config = json.loads((tiny_qwen2_checkpoint / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and "attention_bias" not in config
    tok_config = json.loads((tiny_qwen2_checkpoint / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == CHAT_TEMPLATES["qwen2.5"] and tok_config["eos_token"] == "<|im_end|>"
    tokenizer = Tokenizer.from_file(str(tiny_qwen2_checkpoint / "tokenizer.json"))
    assert tokenizer.encode("<tool_call>{}</tool_call>").ids[0] == 151657  # added, not special
    assert tokenizer.encode("Hi").ids == [13048]  # no BOS
    tensors = read_header(tiny_qwen2_checkpoint / "model.safetensors")
    assert tensors["model.layers.0.self_attn.k_proj.bias"].shape == (64,) and "lm_head.weight" not in tensors
    assert not any(name.endswith("o_proj.bias") for name in tensors)


def test_cli_makes_and_converts_a_bpe_family_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-test-model", str(tmp_path / "smol"), "--preset", "tiny-smollm2", "--dtype", "f16"]) == 0
    assert json.loads((tmp_path / "smol" / "config.json").read_text())["tie_word_embeddings"]  # as SmolLM2 does
    assert main(["convert", str(tmp_path / "smol"), "-o", str(tmp_path / "smol.gguf")]) == 0
    assert validate(tmp_path / "smol.gguf").metadata["tokenizer.ggml.model"] == "gpt2"
    assert "smol.gguf" in capsys.readouterr().out
