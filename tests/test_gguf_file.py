"""validate() accepts well-formed GGUF files, describes them, and rejects damaged ones in one clear line."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgekit.cli import main
from edgekit.errors import ModelFormatError
from edgekit.gguf_file import validate
from edgekit.gguf_reader import GGUFArray

VOCAB = 100
HIDDEN = 64


def write_gguf(path: Path, name: str = "tiny", blocks: int = 2, big_tensor: int = 0, context: int = 128) -> Path:
    """A small Llama-shaped GGUF: embeddings, two tensors per block, a final norm, tokenizer keys."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_context_length(context)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(blocks)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"tok{i}".encode() for i in range(VOCAB)])
    writer.add_chat_template("{{ bos_token }}\n{% for m in messages %}{{ m.content }}{% endfor %}")
    writer.add_string("edgekit.converter", "test")
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((VOCAB, HIDDEN)).astype(np.float16))
    for b in range(blocks):
        writer.add_tensor(f"blk.{b}.attn_q.weight", rng.standard_normal((HIDDEN, HIDDEN)).astype(np.float16))
        writer.add_tensor(f"blk.{b}.attn_norm.weight", np.ones(HIDDEN, np.float32))
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    if big_tensor:
        writer.add_tensor("extra.weight", np.arange(big_tensor, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def small_gguf(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "small.gguf")


def damaged(tmp_path: Path, data: bytes, name: str = "damaged.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_rejected(path: Path, *words: str) -> str:
    with pytest.raises(ModelFormatError) as caught:
        validate(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message, message
    return message


# --- a valid file ------------------------------------------------------------------------


def test_valid_file_is_described(small_gguf: Path) -> None:
    info = validate(small_gguf)
    assert (info.architecture, info.name, info.version) == ("llama", "tiny", 3)
    assert (info.context_length, info.embedding_length, info.block_count) == (128, HIDDEN, 2)
    assert (info.head_count, info.head_count_kv, info.vocab_size) == (4, 2, VOCAB)
    assert info.tokenizer_model == "llama" and info.file_type == "F16"
    assert info.chat_template.startswith("{{ bos_token }}")
    assert info.provenance == {"edgekit.converter": "test"}
    assert info.parameter_count == VOCAB * HIDDEN + 2 * (HIDDEN * HIDDEN + HIDDEN) + HIDDEN
    assert isinstance(info.metadata["tokenizer.ggml.tokens"], GGUFArray)


def test_tensor_table_and_sizes_add_up(small_gguf: Path) -> None:
    info = validate(small_gguf)
    embd = next(t for t in info.tensors if t.name == "token_embd.weight")
    assert (embd.type, embd.shape, embd.nbytes) == ("F16", (HIDDEN, VOCAB), VOCAB * HIDDEN * 2)
    assert all(t.offset % 32 == 0 for t in info.tensors)
    assert info.quant_mix["F16"].count == 3 and info.quant_mix["F32"].count == 3
    assert info.layer_bytes == {0: HIDDEN * HIDDEN * 2 + HIDDEN * 4, 1: HIDDEN * HIDDEN * 2 + HIDDEN * 4}
    assert info.non_layer_bytes == info.token_embd_bytes + HIDDEN * 4
    assert info.output_bytes == 0  # tied: no output.weight
    assert sum(info.layer_bytes.values()) + info.non_layer_bytes == info.tensor_bytes
    f16, f32 = VOCAB * HIDDEN + 2 * HIDDEN * HIDDEN, 3 * HIDDEN
    assert info.bits_per_weight == pytest.approx((16 * f16 + 32 * f32) / (f16 + f32))


def test_to_dict_is_json_and_tensors_on_request(small_gguf: Path) -> None:
    info = validate(small_gguf)
    plain = json.loads(json.dumps(info.to_dict()))
    assert plain["architecture"] == "llama" and "tensors" not in plain
    assert len(info.to_dict(tensors=True)["tensors"]) == len(info.tensors)


def test_converted_tiny_model_validates(tiny_gguf_f16: Path) -> None:
    info = validate(tiny_gguf_f16)
    assert info.architecture == "llama" and info.file_type == "F16"
    assert sorted(info.layer_bytes) == list(range(info.block_count))
    assert info.token_embd_bytes > 0 and info.vocab_size > 0
    assert sum(info.layer_bytes.values()) + info.non_layer_bytes == info.tensor_bytes


# --- damaged files -------------------------------------------------------------------------


def _cut_points(path: Path) -> dict[str, int]:
    data = path.read_bytes()
    info = validate(path)
    return {
        "header": 12,
        "metadata": data.index(b"tokenizer.ggml.tokens") + 30,
        "tensor infos": data.index(b"blk.1.attn_q.weight") + 3,
        "tensor data": info.tensors[-1].offset + 7,
    }


@pytest.mark.parametrize("where", ["header", "metadata", "tensor infos", "tensor data"])
def test_truncated_file_is_rejected(small_gguf: Path, tmp_path: Path, where: str) -> None:
    cut = _cut_points(small_gguf)[where]
    path = damaged(tmp_path, small_gguf.read_bytes()[:cut])
    assert_rejected(path, "truncated", "re-download")


def test_truncated_data_names_the_tensor_and_sizes(small_gguf: Path, tmp_path: Path) -> None:
    data = small_gguf.read_bytes()
    path = damaged(tmp_path, data[: len(data) - 10])
    assert_rejected(path, "output_norm.weight", f"{len(data) - 10:,}")


def test_every_truncation_of_the_header_is_a_clean_error(small_gguf: Path, tmp_path: Path) -> None:
    data = small_gguf.read_bytes()
    end = validate(small_gguf).tensors[0].offset
    for cut in range(0, end, 7):
        path = damaged(tmp_path, data[:cut])
        with pytest.raises(ModelFormatError):
            validate(path)


def test_empty_file(tmp_path: Path) -> None:
    assert_rejected(damaged(tmp_path, b""), "empty")


def test_random_bytes(tmp_path: Path) -> None:
    assert_rejected(damaged(tmp_path, os.urandom(4096)), "not a GGUF file")


@pytest.mark.parametrize(
    ("head", "what"),
    [
        (b"GGUX\x03\x00\x00\x00", "not a GGUF file"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (struct.pack("<Q", 60) + b'{"__metadata__": {}}', "safetensors"),
        (b"version https://git-lfs.github.com/spec/v1\n", "Git LFS pointer"),
    ],
)
def test_foreign_files_are_named(tmp_path: Path, head: bytes, what: str) -> None:
    assert_rejected(damaged(tmp_path, head + bytes(200)), what)


def test_unsupported_version(small_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(small_gguf.read_bytes())
    data[4:8] = struct.pack("<I", 7)
    assert_rejected(damaged(tmp_path, bytes(data)), "version 7")


def test_huge_tensor_count(small_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(small_gguf.read_bytes())
    data[8:16] = struct.pack("<Q", 1 << 60)
    assert_rejected(damaged(tmp_path, bytes(data)), f"{1 << 60:,} tensors")


def _tensor_type_offset(data: bytes, name: bytes) -> int:
    """Where the type field of tensor ``name``'s info lies: after name, n_dims and dims."""
    start = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    (n_dims,) = struct.unpack_from("<I", data, start)
    return start + 4 + 8 * n_dims


def test_unknown_tensor_type(small_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(small_gguf.read_bytes())
    at = _tensor_type_offset(data, b"blk.0.attn_q.weight")
    data[at : at + 4] = struct.pack("<I", 200)
    assert_rejected(damaged(tmp_path, bytes(data)), "unknown tensor type 200", "blk.0.attn_q.weight")


def test_misplaced_tensor_offset(small_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(small_gguf.read_bytes())
    at = _tensor_type_offset(data, b"blk.1.attn_q.weight") + 4
    (offset,) = struct.unpack_from("<Q", data, at)
    data[at : at + 8] = struct.pack("<Q", offset + 1)
    assert_rejected(damaged(tmp_path, bytes(data)), "blk.1.attn_q.weight", "offset")


def test_unknown_value_type(small_gguf: Path, tmp_path: Path) -> None:
    data = bytearray(small_gguf.read_bytes())
    at = data.index(b"general.name") + len(b"general.name")
    data[at : at + 4] = struct.pack("<I", 99)
    assert_rejected(damaged(tmp_path, bytes(data)), "unknown value type 99", "general.name")


def test_an_implausible_context_length_is_a_format_error(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "ctx.gguf", context=2**31 - 1)
    assert_rejected(path, "llama.context_length", "2147483647", "corrupt")


def test_deeply_nested_metadata_arrays_are_a_format_error_not_a_crash(small_gguf: Path, tmp_path: Path) -> None:
    data = small_gguf.read_bytes()
    at = data.index(b"edgekit.converter") + len(b"edgekit.converter")
    string_value = struct.pack("<IQ", gguf.GGUFValueType.STRING, 4) + b"test"
    assert data[at : at + len(string_value)] == string_value
    nested = struct.pack("<I", gguf.GGUFValueType.ARRAY)
    nested += struct.pack("<IQ", gguf.GGUFValueType.ARRAY, 1) * 5000 + struct.pack("<IQ", gguf.GGUFValueType.UINT8, 0)
    path = damaged(tmp_path, data[:at] + nested + data[at + len(string_value):])
    assert_rejected(path, "nested more than", "edgekit.converter")


def test_missing_architecture(small_gguf: Path, tmp_path: Path) -> None:
    data = small_gguf.read_bytes().replace(b"general.architecture", b"general.architecturX")
    assert_rejected(damaged(tmp_path, data), "general.architecture")


def test_missing_file_and_folder(tmp_path: Path) -> None:
    assert_rejected(tmp_path / "nope.gguf", "no such file")
    assert_rejected(tmp_path, "folder")


# --- through the CLI ------------------------------------------------------------------------


def test_inspect_prints_a_summary(small_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(small_gguf), "--tensors"]) == 0
    out = capsys.readouterr().out
    assert "llama (tiny)" in out and "F16" in out and "bits/weight" in out
    assert "blk.1.attn_q.weight" in out and "edgekit.converter = test" in out


def test_inspect_json(small_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(small_gguf), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["block_count"] == 2 and data["layer_bytes"] == {"0": 8448, "1": 8448}


def test_inspect_of_a_damaged_file_is_one_line(small_gguf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = damaged(tmp_path, small_gguf.read_bytes()[:500])
    assert main(["inspect", str(path)]) == ModelFormatError.exit_code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and str(path) in captured.err and "Traceback" not in captured.err
