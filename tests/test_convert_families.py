"""edgekit.convert on the tool-capable families: Llama 3.x (llama3 rope scaling, explicit head_dim,
tied embeddings, byte-level BPE) and Qwen2 (Q/K/V biases, no Q/K permutation).

Ground truth is tests/llama_reference.py (a float64 numpy forward pass of the checkpoint); the
converted f32 file is run by real llama.cpp. The tolerance is tight enough that a file without
the llama3 rope factors (about 1e-3 off over 120 tokens) or without Qwen2's biases fails.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import jinja2
import jinja2.ext
import numpy as np
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from edgekit.convert import convert
from edgekit.errors import ModelFormatError, UnsupportedModel
from edgekit.gguf_file import validate
from tests.llama_reference import forward, load_weights

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = "The quick brown fox jumps over the lazy dog. Café naïve résumé, 1776 and 2024: 3.14159 tokens per second. "
N_TOKENS = 120
F32_REL_ERROR = 1e-5  # an f32 file of f32-exact weights matches the float64 reference to ~3e-7


def _ids(folder: Path) -> list[int]:
    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(PROMPT * 8).ids
    return ids[:N_TOKENS]


def _llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    f32 = llama_cpp.GGML_TYPE_F32  # an f16 KV cache alone would cost ~5e-4
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, logits_all=True, type_k=f32, type_v=f32, verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)  # (T, V)


def _rel_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


def _linked(source: Path, dest: Path, but: str) -> Path:
    """A folder linking every file of ``source`` except ``but`` (which the caller writes)."""
    dest.mkdir()
    for file in source.iterdir():
        if file.name != but:
            (dest / file.name).symlink_to(file)
    return dest


def _variant(source: Path, dest: Path, config: dict) -> Path:
    """``source`` with config.json edited (a None value deletes the key)."""
    _linked(source, dest, but="config.json")
    cfg = {**json.loads((source / "config.json").read_text()), **config}
    (dest / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    return dest


def _metadata(path: Path) -> dict:
    return validate(path).metadata


# --- logits against the numpy reference ---------------------------------------------------


# llama3: rope scaling and explicit head_dim; qwen2: biases; smollm2: a plain Llama with a BPE vocabulary
@pytest.mark.parametrize("family", ["llama3", "qwen2", "smollm2"])
def test_f32_logits_match_the_reference(family: str, request: pytest.FixtureRequest) -> None:
    folder: Path = request.getfixturevalue(f"tiny_{family}_checkpoint")
    ids = _ids(folder)
    ours, reference = _llama_logits(request.getfixturevalue(f"tiny_{family}_f32"), ids), forward(folder, ids)
    assert _rel_error(ours, reference) <= F32_REL_ERROR
    assert (ours.argmax(axis=-1) == reference.argmax(axis=-1)).all()


def test_llama3_without_rope_scaling_does_not_match(tiny_llama3_checkpoint: Path, tmp_path: Path) -> None:
    """The rope_freqs tensor is what carries llama3 scaling: a file made without it is measurably off."""
    ids = _ids(tiny_llama3_checkpoint)
    unscaled = convert(_variant(tiny_llama3_checkpoint, tmp_path / "unscaled", {"rope_scaling": None}), tmp_path / "u.gguf", "f32")
    assert "rope_freqs.weight" not in {t.name for t in validate(unscaled).tensors}
    assert _rel_error(_llama_logits(unscaled, ids), forward(tiny_llama3_checkpoint, ids)) > 10 * F32_REL_ERROR


def test_qwen2_biases_matter_and_are_in_the_file(tiny_qwen2_checkpoint: Path, tiny_qwen2_f32: Path) -> None:
    ids = _ids(tiny_qwen2_checkpoint)
    weights = load_weights(tiny_qwen2_checkpoint)
    unbiased = forward(tiny_qwen2_checkpoint, ids, {k: v for k, v in weights.items() if not k.endswith(".bias")})
    assert _rel_error(_llama_logits(tiny_qwen2_f32, ids), unbiased) > 100 * F32_REL_ERROR
    names = {t.name for t in validate(tiny_qwen2_f32).tensors}
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= names
    assert "blk.0.attn_output.bias" not in names and "output.weight" not in names  # tied, as Qwen2.5-1.5B


def _without_biases(source: Path, dest: Path) -> None:
    """Copy a single-file safetensors checkpoint, leaving out every *.bias tensor (bf16 bytes kept as they are)."""
    data = source.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header, body = json.loads(data[8 : 8 + n]), data[8 + n :]
    kept, chunks, offset = {"__metadata__": header.pop("__metadata__")}, [], 0
    for name, info in header.items():
        if not name.endswith(".bias"):
            begin, end = info["data_offsets"]
            kept[name] = {**info, "data_offsets": [offset, offset + end - begin]}
            chunks.append(body[begin:end])
            offset += end - begin
    raw = json.dumps(kept).encode()
    dest.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(chunks))


def test_qwen2_checkpoint_without_biases_is_refused(tiny_qwen2_checkpoint: Path, tmp_path: Path) -> None:
    folder = _linked(tiny_qwen2_checkpoint, tmp_path / "nobias", but="model.safetensors")
    _without_biases(tiny_qwen2_checkpoint / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ModelFormatError, match=r"q_proj\.bias"):
        convert(folder, tmp_path / "nobias.gguf", "f32")


# --- metadata ---------------------------------------------------------------------------


def test_llama3_metadata(tiny_llama3_f32: Path) -> None:
    md = _metadata(tiny_llama3_f32)
    assert md["general.architecture"] == "llama"
    assert md["llama.attention.key_length"] == md["llama.attention.value_length"] == 64  # head_dim, not 256 / 8
    assert md["llama.rope.dimension_count"] == 64 and md["llama.rope.freq_base"] == 500000.0
    assert md["tokenizer.ggml.model"] == "gpt2" and md["tokenizer.ggml.pre"] == "llama-bpe"
    assert md["tokenizer.ggml.bos_token_id"] == 128000 and md["tokenizer.ggml.eos_token_id"] == 128009  # <|eot_id|>
    assert md["tokenizer.ggml.add_bos_token"] is True  # from tokenizer.json's TemplateProcessing
    names = {t.name: t for t in validate(tiny_llama3_f32).tensors}
    assert "output.weight" not in names and names["rope_freqs.weight"].n_elements == 32


def test_qwen2_metadata(tiny_qwen2_f32: Path) -> None:
    md = _metadata(tiny_qwen2_f32)
    assert md["general.architecture"] == "qwen2"
    assert md["qwen2.attention.key_length"] == md["qwen2.attention.value_length"] == 32
    assert md["qwen2.rope.freq_base"] == 1000000.0 and md["qwen2.context_length"] == 32768
    assert md["tokenizer.ggml.pre"] == "qwen2"
    assert md["tokenizer.ggml.eos_token_id"] == 151645 and md["tokenizer.ggml.padding_token_id"] == 151643
    assert md["tokenizer.ggml.add_bos_token"] is False
    assert "edgekit.sliding_window" not in md  # use_sliding_window: false


def test_token_types_follow_llama_cpp_rules(tiny_qwen2_f32: Path) -> None:
    """Special tokens and <|...|> look-alikes are CONTROL; Qwen's <tool_call> is USER_DEFINED; padding UNUSED."""
    reader = gguf.GGUFReader(tiny_qwen2_f32)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    kind = {t: types[i] for i, t in enumerate(tokens)}
    assert kind["<|im_end|>"] == kind["<|fim_prefix|>"] == gguf.TokenType.CONTROL  # the second is not "special"
    assert kind["<tool_call>"] == gguf.TokenType.USER_DEFINED
    assert tokens[-1] == "[PAD151935]" and types[-1] == gguf.TokenType.UNUSED
    assert len(reader.fields["tokenizer.ggml.merges"].contents()) == 151387


# --- chat template ----------------------------------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "turn_on", "description": "Turn on a light",
          "parameters": {"type": "object", "properties": {"entity": {"type": "string"}}, "required": ["entity"]}}}]
MESSAGES = [{"role": "system", "content": "You control the house."}, {"role": "user", "content": "Kitchen light on"}]


def _render(template: str, bos: str) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    return env.from_string(template).render(messages=MESSAGES, tools=TOOLS, add_generation_prompt=True, bos_token=bos)


@pytest.mark.parametrize("family", ["llama3", "qwen2", "smollm2"])
def test_chat_template_is_the_checkpoints_and_renders_tools(family: str, request: pytest.FixtureRequest) -> None:
    folder = request.getfixturevalue(f"tiny_{family}_checkpoint")
    gguf_path = request.getfixturevalue(f"tiny_{family}_f32")
    original = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    stored = _metadata(gguf_path)["tokenizer.chat_template"]
    assert stored == original
    bos = "<|begin_of_text|>" if family == "llama3" else ""
    assert _render(stored, bos) == _render(original, bos)
    if family != "smollm2":  # SmolLM2's template has no tool section
        assert '"name": "turn_on"' in _render(stored, bos)


def test_smollm2_adds_no_bos_as_llama_cpp_decides_for_its_vocabulary(tiny_smollm2_f32: Path) -> None:
    md = _metadata(tiny_smollm2_f32)
    assert md["tokenizer.ggml.pre"] == "starcoder"  # StarCoder2's vocabulary; llama.cpp splits it as "smollm"
    assert md["tokenizer.ggml.add_bos_token"] is False and md["tokenizer.ggml.add_space_prefix"] is False
    assert (md["tokenizer.ggml.bos_token_id"], md["tokenizer.ggml.eos_token_id"]) == (1, 2)  # <|im_start|>, <|im_end|>


# --- refusals ---------------------------------------------------------------------------


def test_unsupported_family_is_refused_naming_the_supported_ones(tiny_qwen2_checkpoint: Path, tmp_path: Path) -> None:
    folder = _variant(tiny_qwen2_checkpoint, tmp_path / "phi", {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3"})
    with pytest.raises(UnsupportedModel, match="Phi3ForCausalLM.*LlamaForCausalLM.*Qwen2ForCausalLM"):
        convert(folder, tmp_path / "phi.gguf", "f32")


def test_unknown_bpe_pre_tokenizer_is_refused(tiny_qwen2_checkpoint: Path, tmp_path: Path) -> None:
    """A tokenizer.json whose splitting llama.cpp does not know cannot be converted faithfully."""
    folder = _linked(tiny_qwen2_checkpoint, tmp_path / "odd", but="tokenizer.json")
    tokenizer = json.loads((tiny_qwen2_checkpoint / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\s+|\S+"
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(UnsupportedModel, match="pre-tokenizer"):
        convert(folder, tmp_path / "odd.gguf", "f32")
    assert not (tmp_path / "odd.gguf").exists()
