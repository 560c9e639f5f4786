"""edgekit.testmodels writes checkpoints laid out as Hugging Face's, with a Llama-style tokenizer."""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path

import jinja2
import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from edgekit.cli import main
from edgekit.errors import OutputError, UsageError
from edgekit.testmodels import (
    PRESETS,
    TensorSpec,
    bf16_bits_to_f32,
    make_test_model,
    parse_size,
    tensor_specs,
    tensor_values,
    tokenizer_model,
)
from edgekit.testmodels.tokenizer import build_tokenizer_model
from edgekit.testmodels.weights import write_safetensors

NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
TRICKY_TEXT = "Héllo wörld 1234 🤖 naïve\ttab\nnew  line   ünïcödé 中文 “quotes” 👍🏽"


# --- helpers: read the files back the way a converter would --------------------------------


def read_header(file: Path) -> tuple[dict, int]:
    with open(file, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(size)), 8 + size


def read_tensor(file: Path, name: str) -> tuple[str, np.ndarray]:
    header, start = read_header(file)
    info = header[name]
    begin, end = info["data_offsets"]
    with open(file, "rb") as f:
        f.seek(start + begin)
        raw = f.read(end - begin)
    return info["dtype"], np.frombuffer(raw, dtype=NUMPY_DTYPES[info["dtype"]]).reshape(info["shape"])


def all_tensors(folder: Path) -> dict[str, tuple[Path, dict]]:
    """name -> (file, header entry), over every safetensors file in the folder."""
    found: dict[str, tuple[Path, dict]] = {}
    for file in sorted(folder.glob("*.safetensors")):
        header, _ = read_header(file)
        for name, info in header.items():
            if name != "__metadata__":
                assert name not in found, f"{name} is in two files"
                found[name] = (file, info)
    return found


def expected_shapes(config: dict) -> dict[str, list[int]]:
    """Tensor shapes as transformers' LlamaForCausalLM derives them from config.json."""
    h, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * h // config["num_attention_heads"]
    shapes = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h]}
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = [v, h]
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes |= {
            f"{p}.self_attn.q_proj.weight": [h, h], f"{p}.self_attn.k_proj.weight": [kv, h],
            f"{p}.self_attn.v_proj.weight": [kv, h], f"{p}.self_attn.o_proj.weight": [h, h],
            f"{p}.mlp.gate_proj.weight": [f, h], f"{p}.mlp.up_proj.weight": [f, h], f"{p}.mlp.down_proj.weight": [h, f],
            f"{p}.input_layernorm.weight": [h], f"{p}.post_attention_layernorm.weight": [h],
        }
    return shapes


@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("f32"), "tiny", "f32")


@pytest.fixture(scope="module")
def tiny_sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("sharded"), "tiny", "bf16", shard_size="5MB")


# --- layout ------------------------------------------------------------------------------------


def test_tiny_checkpoint_has_the_files_of_a_hf_llama_repo(tiny_checkpoint: Path) -> None:
    names = {p.name for p in tiny_checkpoint.iterdir()}
    assert names == {"config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
                     "tokenizer.model", "tokenizer_config.json"}


def test_config_is_a_llama_config_of_the_preset(tiny_checkpoint: Path) -> None:
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    tiny = PRESETS["tiny"]
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (256, 2, 32000)
    assert config["num_attention_heads"] == tiny.num_attention_heads != config["num_key_value_heads"]  # GQA
    assert config["torch_dtype"] == "bfloat16" and config["tie_word_embeddings"] is False
    assert config["rope_scaling"] is None and config["hidden_act"] == "silu"
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)


def test_every_tensor_has_the_shape_config_json_implies(tiny_checkpoint: Path) -> None:
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    found = all_tensors(tiny_checkpoint)
    assert {name: info["shape"] for name, (_, info) in found.items()} == expected_shapes(config)
    assert {info["dtype"] for _, info in found.values()} == {"BF16"}


@pytest.mark.parametrize("dtype, tag, itemsize", [("f32", "F32", 4), ("f16", "F16", 2), ("bf16", "BF16", 2)])
def test_dtype_tag_and_byte_size_match(tmp_path: Path, dtype: str, tag: str, itemsize: int) -> None:
    folder = make_test_model(tmp_path, "tiny", dtype)
    header, start = read_header(folder / "model.safetensors")
    assert header["__metadata__"] == {"format": "pt"}
    end = 0
    for name, info in header.items():
        if name != "__metadata__":
            assert info["dtype"] == tag
            assert info["data_offsets"][1] - info["data_offsets"][0] == np.prod(info["shape"]) * itemsize
            end = max(end, info["data_offsets"][1])
    assert (folder / "model.safetensors").stat().st_size == start + end
    torch_dtype = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype]
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == torch_dtype


def test_f32_file_is_byte_identical_to_what_the_safetensors_library_writes(tiny_f32: Path, tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    tensors = {spec.name: tensor_values(spec, seed=0) for spec in tensor_specs(PRESETS["tiny"])}
    save_file(tensors, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    assert (tmp_path / "ref.safetensors").read_bytes() == (tiny_f32 / "model.safetensors").read_bytes()


def test_index_weight_map_covers_every_tensor_exactly_once(tiny_sharded: Path) -> None:
    index = json.loads((tiny_sharded / "model.safetensors.index.json").read_text())
    found = all_tensors(tiny_sharded)
    assert set(index) == {"metadata", "weight_map"}
    assert index["weight_map"] == {name: file.name for name, (file, _) in found.items()}
    sizes = [info["data_offsets"][1] - info["data_offsets"][0] for _, info in found.values()]
    assert index["metadata"]["total_size"] == sum(sizes)
    config = json.loads((tiny_sharded / "config.json").read_text())
    assert set(found) == set(expected_shapes(config))


def test_shards_are_named_and_sized_as_transformers_does(tiny_sharded: Path) -> None:
    shards = sorted(tiny_sharded.glob("model-*.safetensors"))
    assert not (tiny_sharded / "model.safetensors").exists()
    n = len(shards)
    assert [p.name for p in shards] == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    for shard in shards:
        header, _ = read_header(shard)
        tensors = [info for name, info in header.items() if name != "__metadata__"]
        data = sum(t["data_offsets"][1] - t["data_offsets"][0] for t in tensors)
        assert data <= parse_size("5MB") or len(tensors) == 1  # only a tensor larger than the limit stands alone


def test_shard_size_larger_than_the_model_gives_one_file_and_no_index(tmp_path: Path) -> None:
    folder = make_test_model(tmp_path, "tiny", "bf16", shard_size="10GB")
    assert (folder / "model.safetensors").exists()
    assert not (folder / "model.safetensors.index.json").exists()


def test_tied_model_has_no_lm_head(tmp_path: Path) -> None:
    folder = make_test_model(tmp_path, "tiny", "bf16", tied=True)
    assert "lm_head.weight" not in all_tensors(folder)
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is True


def test_rewriting_a_folder_removes_the_old_shards(tiny_sharded: Path, tmp_path: Path) -> None:
    folder = make_test_model(tmp_path, "tiny", "bf16", shard_size="5MB")
    make_test_model(folder, "tiny", "bf16")
    assert sorted(p.name for p in folder.glob("model*")) == ["model.safetensors"]


# --- values --------------------------------------------------------------------------------------


def test_bf16_is_the_f32_value_rounded_to_nearest_even(tiny_checkpoint: Path) -> None:
    spec = next(s for s in tensor_specs(PRESETS["tiny"]) if s.name == "model.layers.0.self_attn.k_proj.weight")
    exact = tensor_values(spec, seed=0)
    tag, bits = read_tensor(tiny_checkpoint / "model.safetensors", spec.name)
    stored = bf16_bits_to_f32(bits)
    assert tag == "BF16"
    np.testing.assert_allclose(stored, exact, rtol=2**-8, atol=0)
    # round to nearest: no other bf16 value is closer (the neighbours differ by one in the last bit)
    for neighbour in (bf16_bits_to_f32(bits + 1), bf16_bits_to_f32(bits - 1)):
        assert np.all(np.abs(stored - exact) <= np.abs(neighbour - exact))


def test_f16_is_numpys_float16_of_the_f32_value(tmp_path: Path) -> None:
    folder = make_test_model(tmp_path, "tiny", "f16")
    spec = tensor_specs(PRESETS["tiny"])[0]
    _, stored = read_tensor(folder / "model.safetensors", spec.name)
    np.testing.assert_array_equal(stored, tensor_values(spec, seed=0).astype(np.float16))


def test_weights_have_sane_magnitudes(tiny_f32: Path) -> None:
    _, q = read_tensor(tiny_f32 / "model.safetensors", "model.layers.1.self_attn.q_proj.weight")
    _, norm = read_tensor(tiny_f32 / "model.safetensors", "model.layers.1.input_layernorm.weight")
    assert 0.018 < q.std() < 0.022 and abs(q.mean()) < 0.001
    assert abs(norm.mean() - 1.0) < 0.01 and 0 < norm.std() < 0.05


def test_same_seed_gives_same_bytes_and_another_seed_does_not(tmp_path: Path) -> None:
    a = make_test_model(tmp_path / "a", "tiny", "bf16", seed=7)
    b = make_test_model(tmp_path / "b", "tiny", "bf16", seed=7)
    c = make_test_model(tmp_path / "c", "tiny", "bf16", seed=8)
    for name in ("model.safetensors", "tokenizer.model", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_shard_layout_does_not_change_the_values(tiny_checkpoint: Path, tiny_sharded: Path) -> None:
    index = json.loads((tiny_sharded / "model.safetensors.index.json").read_text())
    for name, file in index["weight_map"].items():
        _, sharded = read_tensor(tiny_sharded / file, name)
        _, single = read_tensor(tiny_checkpoint / "model.safetensors", name)
        np.testing.assert_array_equal(sharded, single)


def test_writing_streams_block_by_block_without_holding_a_tensor(tmp_path: Path) -> None:
    big = TensorSpec("model.embed_tokens.weight", (32000, 1024))  # 128 MB in f32
    tracemalloc.start()
    try:
        write_safetensors(tmp_path / "big.safetensors", [big], "f32", seed=0, workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "big.safetensors").stat().st_size > 128_000_000
    assert peak < 64_000_000, f"peak {peak / 1e6:.0f} MB: the writer held the whole tensor"


# --- presets without building them ----------------------------------------------------------------


@pytest.mark.parametrize("preset, params", [("tinyllama", 1_100_048_384), ("solar", 10_731_524_096)])
def test_full_size_presets_have_the_real_models_parameter_count(preset: str, params: int) -> None:
    assert sum(spec.numel for spec in tensor_specs(PRESETS[preset])) == params == PRESETS[preset].n_params()


@pytest.mark.slow
def test_tinyllama_checkpoint_is_sharded_with_tinyllamas_shapes(tinyllama_checkpoint: Path) -> None:
    config = json.loads((tinyllama_checkpoint / "config.json").read_text())
    index = json.loads((tinyllama_checkpoint / "model.safetensors.index.json").read_text())
    found = all_tensors(tinyllama_checkpoint)
    assert {name: info["shape"] for name, (_, info) in found.items()} == expected_shapes(config)
    assert index["weight_map"] == {name: file.name for name, (file, _) in found.items()}
    assert index["metadata"]["total_size"] == 2 * 1_100_048_384  # bf16
    assert len({file for file, _ in found.values()}) == 3  # 2.2 GB in shards of at most 1 GB


def test_solar_mini_has_solars_width(tmp_path: Path) -> None:
    mini, full = PRESETS["solar-mini"], PRESETS["solar"]
    assert (mini.hidden_size, mini.intermediate_size, mini.num_attention_heads, mini.num_key_value_heads) == (
        full.hidden_size, full.intermediate_size, full.num_attention_heads, full.num_key_value_heads)
    assert mini.num_hidden_layers < full.num_hidden_layers == 48


# --- tokenizer -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp(tiny_checkpoint: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tiny_checkpoint / "tokenizer.model"))


def test_tokenizer_has_32000_pieces_with_llamas_special_ids(sp: spm.SentencePieceProcessor) -> None:
    assert sp.vocab_size() == 32000
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert sp.is_unknown(0) and sp.is_control(1) and sp.is_control(2)
    assert [sp.id_to_piece(i) for i in (3, 3 + 0x0A, 258)] == ["<0x00>", "<0x0A>", "<0xFF>"]
    assert all(sp.is_byte(i) for i in range(3, 259))


def test_tokenizer_specs_are_llamas(tiny_checkpoint: Path) -> None:
    proto = pb.ModelProto()
    proto.ParseFromString((tiny_checkpoint / "tokenizer.model").read_bytes())
    assert proto.trainer_spec.model_type == pb.TrainerSpec.BPE
    assert proto.trainer_spec.byte_fallback and proto.trainer_spec.split_digits
    assert proto.normalizer_spec.name == "identity" and proto.normalizer_spec.precompiled_charsmap == b""
    assert proto.normalizer_spec.add_dummy_prefix and not proto.normalizer_spec.remove_extra_whitespaces
    user_defined = [p.piece for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.USER_DEFINED]
    assert user_defined == []
    normal = [p.piece for p in proto.pieces if p.type == pb.ModelProto.SentencePiece.NORMAL]
    assert not any("<" in piece or ">" in piece for piece in normal)


def test_emoji_falls_back_to_utf8_bytes(sp: spm.SentencePieceProcessor) -> None:
    pieces = sp.encode("🤖", out_type=str)
    assert pieces == ["▁", "<0xF0>", "<0x9F>", "<0xA4>", "<0x96>"]
    assert sp.decode(sp.encode(TRICKY_TEXT)) == TRICKY_TEXT
    assert sp.unk_id() not in sp.encode(TRICKY_TEXT)


def test_tokenizer_build_is_deterministic_and_matches_the_cache() -> None:
    assert build_tokenizer_model() == tokenizer_model()


def test_llama_cpp_tokenizes_the_converted_model_as_sentencepiece_does(
    tiny_gguf_f32: Path, sp: spm.SentencePieceProcessor
) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(tiny_gguf_f32), vocab_only=True, verbose=False)
    texts = [
        TRICKY_TEXT, " leading space", "  two\n\n\tthen tab\t\tx ", "def f(x):\n    return x  # 3.14159",
        "We hold these truths to be self-evident, that all men are created equal.", "Ångström Dvořák Łódź 😀🇫🇷", "",
    ]
    for text in texts:
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == [1, *sp.encode(text)], text


# --- the other files ---------------------------------------------------------------------------------


def _render(folder: Path, messages: list[dict[str, str]]) -> str:
    config = json.loads((folder / "tokenizer_config.json").read_text())
    # transformers' apply_chat_template renders with these two options; the Zephyr template relies on them
    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(config["chat_template"])
    tokens = {"bos_token": config["bos_token"], "eos_token": config["eos_token"]}
    return template.render(messages=messages, add_generation_prompt=True, **tokens)


def test_tinyllama_chat_template_renders_zephyr_turns(tiny_checkpoint: Path) -> None:
    text = _render(tiny_checkpoint, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert text == "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"


def test_solar_chat_template_renders_user_and_assistant_headers(tmp_path: Path) -> None:
    from edgekit.testmodels import hf_files

    (tmp_path / "tokenizer_config.json").write_text(hf_files.tokenizer_config_json(PRESETS["solar"]))
    text = _render(tmp_path, [{"role": "user", "content": "Hi"}])
    assert text == "### User:\nHi\n\n### Assistant:\n"


def test_tokenizer_config_and_special_tokens_name_llamas_tokens(tiny_checkpoint: Path) -> None:
    config = json.loads((tiny_checkpoint / "tokenizer_config.json").read_text())
    special = json.loads((tiny_checkpoint / "special_tokens_map.json").read_text())
    generation = json.loads((tiny_checkpoint / "generation_config.json").read_text())
    assert (config["add_bos_token"], config["add_eos_token"]) == (True, False)
    added = {k: v["content"] for k, v in config["added_tokens_decoder"].items()}
    assert added == {"0": "<unk>", "1": "<s>", "2": "</s>"}
    assert special["bos_token"]["content"] == "<s>" and special["eos_token"]["content"] == "</s>"
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)


# --- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, error, words", [
    ({"preset": "huge"}, UsageError, "unknown preset 'huge'"),
    ({"dtype": "f8"}, UsageError, "unknown dtype"),
    ({"shard_size": "lots"}, UsageError, "bad size 'lots'"),
    ({"shard_size": "0MB"}, UsageError, "more than 0"),
    ({"seed": -1}, UsageError, "bad seed"),
])
def test_bad_arguments_raise_a_clear_error_and_write_nothing(
    tmp_path: Path, kwargs: dict, error: type, words: str
) -> None:
    with pytest.raises(error, match=words):
        make_test_model(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_folder_that_cannot_be_created_is_an_output_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputError, match="it is a file"):
        make_test_model(tmp_path / "file")
    with pytest.raises(OutputError, match="cannot create"):
        make_test_model(tmp_path / "file" / "model")


@pytest.mark.parametrize("text, size", [("500MB", 500 * 10**6), ("2GB", 2 * 10**9), ("1.5GiB", 3 * 2**29),
                                        ("1048576", 2**20), ("10 kb", 10_000), (4096, 4096)])
def test_parse_size_reads_units_as_transformers_does(text: str | int, size: int) -> None:
    assert parse_size(text) == size


# --- the command line ---------------------------------------------------------------------------------------


def test_cli_writes_a_sharded_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["make-test-model", str(tmp_path / "m"), "--preset", "tiny", "--shard-size", "10MB", "--seed", "3"]
    assert main(argv) == 0
    assert (tmp_path / "m" / "model.safetensors.index.json").exists()
    assert "wrote tiny (bf16)" in capsys.readouterr().out


def test_cli_reports_a_bad_preset_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["make-test-model", str(tmp_path / "m"), "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown preset 'nope'" in err
