"""edgekit.convert: Hugging Face Llama checkpoints to GGUF, checked against llama.cpp itself.

The ground truth is tests/llama_reference.py, a numpy forward pass of the checkpoint; the
converted file is run by real llama.cpp (llama-cpp-python).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors.numpy
import sentencepiece as spm

from edgekit.cli import main
from edgekit.convert import convert, convert_checkpoint, convert_to_levels
from edgekit.convert.checkpoint import open_checkpoint, to_float32
from edgekit.convert.stream import StreamedTensor
from edgekit.errors import ModelFormatError, UnsupportedModel
from edgekit.gguf_file import validate
from tests.fixtures.models import checkpoint, converted
from tests.llama_reference import forward

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = "The quick brown fox jumps over the lazy dog. Café naïve résumé, 1776 and 2024: 3.14159 tokens per second."
TOKENIZER_TEXT = "Hello, wörld! Café naïve Zürich 12345 and 3.14 😀🚀\ttabbed\tcolumns\nnew line\n\n  indented    spaces end."
Capsys = pytest.CaptureFixture[str]
MAX_REL_ERROR = 3e-3
# llama.cpp rounds activations to the weights' type in its CPU matmuls (bf16, q8_0), so
# those files cannot match the float64 reference as closely as f32/f16 ones.
OUTTYPE_REL_ERROR = {"f32": MAX_REL_ERROR, "f16": MAX_REL_ERROR, "bf16": 0.02, "q8_0": 0.05}

# The three checkpoint layouts the correctness test converts: (dtype, shard_size, tied).
LAYOUTS = {
    "f32-single": ("f32", None, False),
    "bf16-sharded": ("bf16", "10MB", False),
    "f16-tied": ("f16", None, True),
}


def _load(path: Path, logits_all: bool = True) -> llama_cpp.Llama:
    # An f32 KV cache: llama.cpp's default f16 cache alone costs ~5e-4 of relative error,
    # enough to flip the argmax of near-tied logits of a random model.
    f32 = llama_cpp.GGML_TYPE_F32
    return llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, logits_all=logits_all, type_k=f32, type_v=f32, verbose=False)


def _prompt_ids(folder: Path, n: int = 30) -> list[int]:
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    ids = [sp.bos_id()] + sp.encode(PROMPT * 3)
    return ids[:n]


def _llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    llm = _load(path)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)  # (T, V)


def _tensor_types(path: Path) -> dict[str, str]:
    return {t.name: t.type for t in validate(path).tensors}


def _field(path: Path, key: str) -> object:
    metadata = validate(path).metadata  # edgekit's own GGUF validator: it must accept what we write
    assert key in metadata, f"{path.name} lacks {key}"
    return metadata[key]


def _variant(source: Path, dest: Path, config: dict | None = None, drop: tuple[str, ...] = ()) -> Path:
    """A checkpoint folder linking ``source``'s files, with config.json edited (None deletes a key) and some files left out."""
    dest.mkdir()
    for file in source.iterdir():
        if file.name not in drop and file.name != "config.json":
            (dest / file.name).symlink_to(file)
    cfg = json.loads((source / "config.json").read_text())
    cfg.update(config or {})
    cfg = {key: value for key, value in cfg.items() if value is not None}
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


# --- correctness against the numpy reference --------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_f32_gguf_logits_match_reference_forward_pass(layout: str) -> None:
    folder = checkpoint("tiny", *LAYOUTS[layout])
    ids = _prompt_ids(folder)
    assert len(ids) == 30
    ours = _llama_logits(converted(folder, "f32"), ids)
    reference = forward(folder, ids)
    assert np.abs(ours - reference).max() / np.abs(reference).max() <= MAX_REL_ERROR
    assert (ours.argmax(axis=-1) == reference.argmax(axis=-1)).all()


def test_sharded_bf16_checkpoint_really_is_sharded_and_bf16() -> None:
    folder = checkpoint("tiny", *LAYOUTS["bf16-sharded"])
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_f16_gguf_of_bf16_checkpoint_matches_reference(tiny_checkpoint: Path, tiny_gguf_f16: Path) -> None:
    ids = _prompt_ids(tiny_checkpoint)
    ours, reference = _llama_logits(tiny_gguf_f16, ids), forward(tiny_checkpoint, ids)
    assert np.abs(ours - reference).max() / np.abs(reference).max() <= MAX_REL_ERROR


def test_new_style_config_with_rope_parameters_converts_faithfully(tiny_checkpoint: Path, tmp_path: Path) -> None:
    style = {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}, "dtype": "bfloat16"}
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    style.update({k: None for k in ("rope_theta", "torch_dtype") if k in cfg})
    folder = _variant(tiny_checkpoint, tmp_path / "new-style", style)
    out = convert(folder, tmp_path / "new.gguf", "f32")
    assert _field(out, "llama.rope.freq_base") == 500000.0
    ids = _prompt_ids(folder)
    ours, reference = _llama_logits(out, ids), forward(folder, ids)
    assert np.abs(ours - reference).max() / np.abs(reference).max() <= MAX_REL_ERROR


@pytest.mark.parametrize("chunk_elements", [1, 3 * 256 * 32, 1 << 30])
def test_q_and_k_rows_are_interleaved_per_head_in_any_chunking(
    tiny_checkpoint: Path, tmp_path: Path, chunk_elements: int
) -> None:
    tensors = open_checkpoint(tiny_checkpoint).tensors
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    for proj, heads in (("q_proj", cfg["num_attention_heads"]), ("k_proj", cfg["num_key_value_heads"])):
        ref = tensors[f"model.layers.0.self_attn.{proj}.weight"]
        with open(tmp_path / proj, "wb") as f:
            StreamedTensor(ref, gguf.GGMLQuantizationType.F32, heads, chunk_elements=chunk_elements).tofile(f)
        ours = np.fromfile(tmp_path / proj, dtype=np.float32).reshape(ref.shape)
        hf = to_float32(ref.read_rows(0, ref.n_rows))  # (heads * head_dim, hidden)
        for h in range(heads):
            for j in range(head_dim // 2):  # llama.cpp pairs row j with row j + head_dim/2 of each head
                np.testing.assert_array_equal(ours[h * head_dim + 2 * j], hf[h * head_dim + j])
                np.testing.assert_array_equal(ours[h * head_dim + 2 * j + 1], hf[h * head_dim + j + head_dim // 2])


def test_attention_biases_are_converted_and_permuted(tmp_path: Path) -> None:
    source = checkpoint("tiny", "f32")
    folder = _variant(source, tmp_path / "biased", {"attention_bias": True}, drop=("model.safetensors",))
    tensors = safetensors.numpy.load_file(source / "model.safetensors")
    rng = np.random.default_rng(7)
    for name in [n for n in tensors if n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"))]:
        tensors[name.replace(".weight", ".bias")] = rng.normal(0, 0.5, tensors[name].shape[0]).astype(np.float32)
    safetensors.numpy.save_file(tensors, folder / "model.safetensors")
    ids = _prompt_ids(folder)
    ours, reference = _llama_logits(convert(folder, tmp_path / "biased.gguf", "f32"), ids), forward(folder, ids)
    assert np.abs(ours - reference).max() / np.abs(reference).max() <= MAX_REL_ERROR


# --- tokenizer, chat template, metadata ---------------------------------------------------


def test_gguf_tokenizer_gives_sentencepiece_ids(tiny_checkpoint: Path, tiny_gguf_f16: Path) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(tiny_checkpoint / "tokenizer.model"))
    add_bos = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text()).get("add_bos_token", True)
    llm = _load(tiny_gguf_f16, logits_all=False)
    ids = llm.tokenize(TOKENIZER_TEXT.encode(), add_bos=add_bos, special=False)
    assert ids == [sp.bos_id()] * add_bos + sp.encode(TOKENIZER_TEXT)
    assert llm.token_bos() == sp.bos_id() and llm.token_eos() == sp.eos_id()
    pad = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text()).get("pad_token")
    if isinstance(pad, str):
        assert _field(tiny_gguf_f16, "tokenizer.ggml.padding_token_id") == sp.piece_to_id(pad)


def test_added_tokens_become_control_and_user_defined_tokens(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _variant(tiny_checkpoint, tmp_path / "added", drop=("tokenizer_config.json",))
    tokenizer_config = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    tokenizer_config["added_tokens_decoder"] = {"31999": {"content": "<|im_end|>", "special": True}}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "added_tokens.json").write_text(json.dumps({"edgekit_word": 31998}))
    llm = _load(convert(folder, tmp_path / "added.gguf", "f16"), logits_all=False)
    assert llm.tokenize(b"<|im_end|>", add_bos=False, special=True) == [31999]
    assert 31999 not in llm.tokenize(b"<|im_end|>", add_bos=False, special=False)  # control: only when asked
    assert 31998 in llm.tokenize(b"say edgekit_word", add_bos=False, special=False)  # user-defined: always


def test_gguf_holds_the_chat_template_exactly(tiny_checkpoint: Path, tiny_gguf_f16: Path) -> None:
    template = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())["chat_template"]
    assert _field(tiny_gguf_f16, "tokenizer.ggml.model") == "llama"
    assert _field(tiny_gguf_f16, "tokenizer.chat_template") == template


def test_chat_template_jinja_file_is_used_when_config_has_none(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _variant(tiny_checkpoint, tmp_path / "jinja", drop=("tokenizer_config.json",))
    tokenizer_config = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    template = tokenizer_config.pop("chat_template")
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (folder / "chat_template.jinja").write_text(template + "{# from the .jinja #}")
    out = convert(folder, tmp_path / "jinja.gguf", "f16")
    assert _field(out, "tokenizer.chat_template") == template + "{# from the .jinja #}"


def test_metadata_matches_config(tiny_checkpoint: Path, tiny_gguf_f16: Path) -> None:
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    expected = {
        "general.architecture": "llama",
        "general.file_type": int(gguf.LlamaFileType.MOSTLY_F16),
        "general.quantization_version": gguf.GGML_QUANT_VERSION,
        "llama.context_length": cfg["max_position_embeddings"],
        "llama.embedding_length": cfg["hidden_size"],
        "llama.block_count": cfg["num_hidden_layers"],
        "llama.feed_forward_length": cfg["intermediate_size"],
        "llama.attention.head_count": cfg["num_attention_heads"],
        "llama.attention.head_count_kv": cfg["num_key_value_heads"],
        "llama.rope.dimension_count": cfg["hidden_size"] // cfg["num_attention_heads"],
        "llama.vocab_size": cfg["vocab_size"],
        "edgekit.source.dir": str(tiny_checkpoint.resolve()),
    }
    for key, value in expected.items():
        assert _field(tiny_gguf_f16, key) == value, key
    assert _field(tiny_gguf_f16, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"])
    assert str(_field(tiny_gguf_f16, "edgekit.converter")).startswith("edgekit ")


def test_hub_cache_path_gives_repo_and_revision(tiny_checkpoint: Path, tmp_path: Path) -> None:
    snapshot = tmp_path / "models--TinyLlama--TinyLlama-1.1B-Chat-v1.0" / "snapshots" / ("ab" * 20)
    snapshot.parent.mkdir(parents=True)
    _variant(tiny_checkpoint, snapshot)
    out = convert(snapshot, tmp_path / "hub.gguf", "f16")
    assert _field(out, "general.source.url") == "https://huggingface.co/TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert _field(out, "edgekit.source.revision") == "ab" * 20


def test_source_record_gives_repo_and_revision(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _variant(tiny_checkpoint, tmp_path / "pulled")
    (folder / ".edgekit-source.json").write_text(json.dumps({"repo": "acme/tiny", "revision": "v1.2"}))
    out = convert(folder, tmp_path / "pulled.gguf", "f16")
    assert _field(out, "edgekit.source.repo") == "acme/tiny"
    assert _field(out, "edgekit.source.revision") == "v1.2"


@pytest.mark.parametrize(
    ("outtype", "weight_type"),
    [("f32", "F32"), ("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0")],
)
def test_outtype_sets_weight_types_and_keeps_norms_f32(
    tiny_checkpoint: Path, tmp_path: Path, outtype: str, weight_type: str
) -> None:
    result = convert_checkpoint(tiny_checkpoint, tmp_path / f"m.{outtype}.gguf", outtype)
    types = _tensor_types(result.path)
    assert result.tensor_count == len(types)
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == types["output.weight"] == weight_type
    # a quantized file still runs and predicts like the original
    ids = _prompt_ids(tiny_checkpoint)
    ours, reference = _llama_logits(result.path, ids), forward(tiny_checkpoint, ids)
    assert np.abs(ours - reference).max() / np.abs(reference).max() <= OUTTYPE_REL_ERROR[outtype]


def test_tied_checkpoint_writes_no_output_tensor() -> None:
    out = converted(checkpoint("tiny", *LAYOUTS["f16-tied"]), "f32")
    names = set(_tensor_types(out))
    assert "token_embd.weight" in names and "output.weight" not in names


def test_linear_rope_scaling_is_recorded_and_unknown_kinds_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    linear = _variant(tiny_checkpoint, tmp_path / "linear", {"rope_scaling": {"type": "linear", "factor": 4.0}})
    out = convert(linear, tmp_path / "linear.gguf", "f16")
    assert _field(out, "llama.rope.scaling.type") == "linear"
    assert _field(out, "llama.rope.scaling.factor") == 4.0
    dynamic = _variant(tiny_checkpoint, tmp_path / "dynamic", {"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})
    with pytest.raises(UnsupportedModel, match="dynamic"):
        convert(dynamic, tmp_path / "dynamic.gguf", "f16")
    assert not (tmp_path / "dynamic.gguf").exists()


def test_llama3_rope_scaling_becomes_a_rope_freqs_tensor_llama_cpp_loads(tiny_checkpoint: Path, tmp_path: Path) -> None:
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 256}
    folder = _variant(tiny_checkpoint, tmp_path / "llama3", {"rope_scaling": scaling, "rope_theta": 500000.0})
    out = convert(folder, tmp_path / "llama3.gguf", "f16")
    info = {t.name: t for t in validate(out).tensors}["rope_freqs.weight"]
    factors = np.fromfile(out, dtype=np.float32, count=info.n_elements, offset=info.offset)
    cfg = json.loads((folder / "config.json").read_text())
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    assert info.type == "F32" and info.n_elements == head_dim // 2
    assert factors[0] == 1.0 and factors[-1] == 8.0  # fastest rotation kept, slowest stretched by the factor
    assert np.all(np.diff(factors) >= 0)
    llm = _load(out, logits_all=False)
    llm.eval(_prompt_ids(folder, 8))
    assert np.isfinite(llm.scores[7]).all()


def test_mistral_architecture_converts_as_llama(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = _variant(tiny_checkpoint, tmp_path / "mistral", {"architectures": ["MistralForCausalLM"], "sliding_window": 4096})
    out = convert(folder, tmp_path / "mistral.gguf", "f16")
    assert _field(out, "general.architecture") == "llama"
    assert _field(out, "edgekit.sliding_window") == 4096


def test_progress_reports_every_tensor(tiny_checkpoint: Path, tmp_path: Path) -> None:
    seen: list[tuple[str, int, int]] = []
    result = convert_checkpoint(tiny_checkpoint, tmp_path / "p.gguf", "f16", progress=lambda *a: seen.append(a))
    assert [done for _, done, _ in seen] == list(range(1, result.tensor_count + 1))
    assert seen[-1][2] == result.tensor_count


# --- bad input: one clear line, non-zero exit, no output file ------------------------------


def _fails_cleanly(capsys: Capsys, argv: list[str], output: Path, *fragments: str) -> str:
    code = main(["convert", *argv, "-o", str(output)])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and err.startswith("edgekit: error: "), err
    for fragment in fragments:
        assert fragment in err
    assert not output.exists()
    if output.parent.is_dir():
        assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}")], "temp file left behind"
    return err


def test_cli_converts_and_reports(tiny_checkpoint: Path, tmp_path: Path, capsys: Capsys) -> None:
    assert main(["convert", str(tiny_checkpoint), "-o", str(tmp_path / "cli.gguf"), "--outtype", "f16"]) == 0
    assert "cli.gguf" in capsys.readouterr().out
    assert _field(tmp_path / "cli.gguf", "general.architecture") == "llama"


def test_cli_refuses_unknown_architecture(tiny_checkpoint: Path, tmp_path: Path, capsys: Capsys) -> None:
    folder = _variant(tiny_checkpoint, tmp_path / "gpt2", {"architectures": ["GPT2LMHeadModel"]})
    _fails_cleanly(capsys, [str(folder)], tmp_path / "out.gguf", "GPT2LMHeadModel", "LlamaForCausalLM")


def test_cli_refuses_checkpoint_with_missing_shard(tmp_path: Path, capsys: Capsys) -> None:
    source = checkpoint("tiny", *LAYOUTS["bf16-sharded"])
    shard = sorted(set(json.loads((source / "model.safetensors.index.json").read_text())["weight_map"].values()))[-1]
    folder = _variant(source, tmp_path / "partial", drop=(shard,))
    _fails_cleanly(capsys, [str(folder)], tmp_path / "out.gguf", shard, "missing")


def test_cli_refuses_config_that_does_not_match_tensors(tiny_checkpoint: Path, tmp_path: Path, capsys: Capsys) -> None:
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    folder = _variant(tiny_checkpoint, tmp_path / "wrong", {"intermediate_size": cfg["intermediate_size"] * 2})
    _fails_cleanly(capsys, [str(folder)], tmp_path / "out.gguf", "mlp.gate_proj.weight", str(cfg["intermediate_size"] * 2))


def test_cli_refuses_unwritable_output(tiny_checkpoint: Path, tmp_path: Path, capsys: Capsys) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    _fails_cleanly(capsys, [str(tiny_checkpoint)], not_a_folder / "out.gguf", "cannot write")
    assert main(["convert", str(tiny_checkpoint), "-o", str(tmp_path)]) != 0  # a folder, not a file name
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_cli_refuses_read_only_folder(tiny_checkpoint: Path, tmp_path: Path, capsys: Capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _fails_cleanly(capsys, [str(tiny_checkpoint)], locked / "out.gguf", "not writable")


def test_cli_refuses_broken_safetensors_header(tiny_checkpoint: Path, tmp_path: Path, capsys: Capsys) -> None:
    folder = _variant(tiny_checkpoint, tmp_path / "broken", drop=("model.safetensors",))
    with open(tiny_checkpoint / "model.safetensors", "rb") as f:
        head = bytearray(f.read(4096))
    head[8:16] = b"NOT JSON"
    (folder / "model.safetensors").write_bytes(bytes(head))
    _fails_cleanly(capsys, [str(folder)], tmp_path / "out.gguf", "model.safetensors", "header")


def test_cli_refuses_truncated_weights(tiny_checkpoint: Path, tmp_path: Path, capsys: Capsys) -> None:
    folder = _variant(tiny_checkpoint, tmp_path / "truncated", drop=("model.safetensors",))
    data = (tiny_checkpoint / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-1000])
    _fails_cleanly(capsys, [str(folder)], tmp_path / "out.gguf", "model.safetensors", "truncated")


def test_cli_refuses_unknown_quant_level_before_converting(tiny_checkpoint: Path, tmp_path: Path, capsys: Capsys) -> None:
    pytest.importorskip("edgekit.quantize")
    _fails_cleanly(capsys, [str(tiny_checkpoint), "--quant", "Q9_X"], tmp_path / "out.gguf", "Q9_X")
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_missing_tokenizer(tiny_checkpoint: Path, tmp_path: Path, capsys: Capsys) -> None:
    folder = _variant(tiny_checkpoint, tmp_path / "no-tok", drop=("tokenizer.model",))
    _fails_cleanly(capsys, [str(folder)], tmp_path / "out.gguf", "tokenizer.model")


def test_missing_tensor_is_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    folder = _variant(tiny_checkpoint, tmp_path / "deeper", {"num_hidden_layers": cfg["num_hidden_layers"] + 1})
    with pytest.raises(ModelFormatError, match=f"model.layers.{cfg['num_hidden_layers']}."):
        convert(folder, tmp_path / "out.gguf")


def test_existing_output_survives_a_failed_conversion(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "keep.gguf"
    out.write_bytes(b"previous")
    folder = _variant(tiny_checkpoint, tmp_path / "bad", {"hidden_size": 128})
    with pytest.raises(ModelFormatError):
        convert(folder, out)
    assert out.read_bytes() == b"previous"


# --- --quant through edgekit.quantize ------------------------------------------------------


def test_cli_quant_writes_only_the_quantized_file(tiny_checkpoint: Path, tmp_path: Path, capsys: Capsys) -> None:
    pytest.importorskip("edgekit.quantize")
    out = tmp_path / "tiny-q8.gguf"
    assert main(["convert", str(tiny_checkpoint), "-o", str(out), "--quant", "Q8_0"]) == 0
    assert set(_tensor_types(out).values()) == {"F32", "Q8_0"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-q8.gguf"]


def test_cli_quant_several_levels_names_each_output(tiny_checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("edgekit.quantize")
    assert main(["convert", str(tiny_checkpoint), "-o", str(tmp_path / "tiny.gguf"), "--quant", "Q8_0,Q4_K_M"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"]


def test_convert_to_levels_yields_each_file_as_it_is_written(tiny_checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("edgekit.quantize")
    levels = convert_to_levels(tiny_checkpoint, tmp_path / "tiny.gguf", ["q8_0", "Q4_K_M"])
    first = next(levels)
    assert first == (tmp_path / "tiny-Q8_0.gguf", "Q8_0") and validate(first[0]).file_type == "Q8_0"
    assert not (tmp_path / "tiny-Q4_K_M.gguf").exists()  # the second level is not written yet
    assert list(levels) == [(tmp_path / "tiny-Q4_K_M.gguf", "Q4_K_M")]
    assert validate(tmp_path / "tiny-Q4_K_M.gguf").file_type == "Q4_K_M"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"]  # no scratch left
