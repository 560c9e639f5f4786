"""Depth up-scaling (SOLAR's recipe) of checkpoints and GGUF files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors
import sentencepiece as spm

from edgekit.cli import main
from edgekit.convert import convert
from edgekit.errors import OutputError, UsageError
from edgekit.upscale import describe_layers, parse_layers, stacked_layers, upscale
from tests.fixtures.models import checkpoint, converted, quantized
from tests.llama_reference import forward_weights, load_weights

llama_cpp = pytest.importorskip("llama_cpp")

DROP_2 = (0, 1, 2, 3, 4, 5, 2, 3, 4, 5, 6, 7)  # 8 layers, drop 2: layers 0-5 of one copy, 2-7 of the other
Capsys = pytest.CaptureFixture[str]


@pytest.fixture(scope="session")
def tiny8_checkpoint() -> Path:
    return checkpoint("tiny8", "bf16", shard_size="10MB")


def _tensors(reader: gguf.GGUFReader | Path) -> dict[str, tuple[str, bytes]]:
    reader = gguf.GGUFReader(reader) if isinstance(reader, Path) else reader
    return {t.name: (t.tensor_type.name, bytes(t.data)) for t in reader.tensors}


def _fields(reader: gguf.GGUFReader, *keys: str) -> list[object]:
    return [reader.fields[key].contents() for key in keys]


def _stacked_reference(folder: Path, layers: tuple[int, ...]) -> tuple[dict, dict]:
    """The config and weights of the stacked model, built here from the source's own tensors."""
    config = json.loads((folder / "config.json").read_text())
    weights = load_weights(folder)
    stacked = {name: value for name, value in weights.items() if ".layers." not in name}
    for new, old in enumerate(layers):
        prefix = f"model.layers.{old}."
        stacked.update({f"model.layers.{new}.{n[len(prefix):]}": v for n, v in weights.items() if n.startswith(prefix)})
    return {**config, "num_hidden_layers": len(layers)}, stacked


def _logits(path: Path, ids: list[int]) -> np.ndarray:
    f32 = llama_cpp.GGML_TYPE_F32
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, logits_all=True, type_k=f32, type_v=f32,
                          flash_attn=False, verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)  # (T, V)


# --- layer lists ---------------------------------------------------------------------------


def test_drop_stacks_two_trimmed_copies_as_solar_did() -> None:
    assert stacked_layers(8, drop=2) == DROP_2
    assert len(stacked_layers(32)) == 48  # SOLAR-10.7B: 32 layers, the default drop of 8
    assert parse_layers("0-5,2-7", 8) == DROP_2 and describe_layers(DROP_2) == "0-5,2-7"
    assert parse_layers("0, 3, 3-4", 8) == (0, 3, 3, 4)


@pytest.mark.parametrize(
    ("drop", "layers", "fragment"),
    [
        (8, None, "--drop 8 is impossible for a 8-layer model"),
        (-1, None, "--drop -1 is impossible"),
        (None, "", "'' is not a layer"),
        (None, "0-3,", "'' is not a layer"),
        (None, "0-8", "has layers 0-7, not 8"),
        (None, "5-2", "runs backwards"),
        (None, "a-b", "'a-b' is not a layer"),
        (2, "0-3", "not both"),
    ],
)
def test_nonsense_layer_choices_are_refused(drop: int | None, layers: str | None, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(")):
        stacked_layers(8, drop, layers)


# --- GGUF -> GGUF --------------------------------------------------------------------------


def test_upscaled_gguf_has_12_layers_and_logits_of_the_stacked_model(tiny8_checkpoint: Path, tmp_path: Path) -> None:
    result = upscale(converted(tiny8_checkpoint, "f32"), tmp_path / "up.gguf", drop=2)
    assert result.layers == DROP_2
    keys = ("llama.block_count", "edgekit.upscale.layers", "edgekit.upscale.source_block_count")
    assert _fields(gguf.GGUFReader(result.path), *keys) == [12, "0-5,2-7", 8]
    sp = spm.SentencePieceProcessor(model_file=str(tiny8_checkpoint / "tokenizer.model"))
    ids = ([sp.bos_id()] + sp.encode("The quick brown fox jumps over the lazy dog. " * 3))[:30]
    config, weights = _stacked_reference(tiny8_checkpoint, DROP_2)
    reference = forward_weights(config, weights, ids)
    ours = _logits(result.path, ids)
    assert np.abs(ours - reference).max() / np.abs(reference).max() <= 1e-5
    assert (ours.argmax(-1) == reference.argmax(-1)).all()


def test_checkpoint_path_and_gguf_path_give_identical_tensors(tiny8_checkpoint: Path, tmp_path: Path) -> None:
    via_gguf = upscale(converted(tiny8_checkpoint, "f16"), tmp_path / "a.gguf", layers="0-5,2-7").path
    folder = upscale(tiny8_checkpoint, tmp_path / "up", drop=2).path
    via_checkpoint = convert(folder, tmp_path / "b.gguf", "f16")  # not cached: the cache keys on the folder's name
    assert _tensors(via_gguf) == _tensors(via_checkpoint)


def test_quantized_gguf_is_upscaled_byte_for_byte(tiny8_checkpoint: Path, tmp_path: Path) -> None:
    source = quantized(converted(tiny8_checkpoint, "f16"), "Q4_K_M")
    out = upscale(source, tmp_path / "up.gguf", drop=2).path
    source_reader, out_reader = gguf.GGUFReader(source), gguf.GGUFReader(out)
    before, after = _tensors(source_reader), _tensors(out_reader)
    assert len(after) == len(before) + 4 * 9  # four more blocks of nine tensors
    for name, data in after.items():
        if name.startswith("blk."):
            index, rest = name.split(".", 2)[1:]
            name = f"blk.{DROP_2[int(index)]}.{rest}"
        assert data == before[name]  # same type, same bytes: never dequantized
    assert {kind for kind, _ in after.values()} >= {"Q4_K", "Q6_K"}
    keys = ("tokenizer.ggml.tokens", "general.file_type", "tokenizer.chat_template")
    assert _fields(out_reader, *keys) == _fields(source_reader, *keys)
    text = llama_cpp.Llama(str(out), n_ctx=64, n_threads=2, verbose=False)("Hello", max_tokens=4, temperature=0)
    assert text["usage"]["completion_tokens"] >= 1  # llama.cpp loads and runs it


def test_upscale_memory_stays_near_one_chunk(tiny8_checkpoint: Path, tmp_path: Path) -> None:
    source = converted(tiny8_checkpoint, "f32")  # ~110 MB, up-scaled ~130 MB
    script = (
        "import resource, sys; from edgekit.upscale import upscale; import gguf, numpy\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "upscale(sys.argv[1], sys.argv[2], drop=2)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(source), str(tmp_path / "up.gguf")],
                          capture_output=True, text=True, check=True)
    grown = int(done.stdout.split()[-1])
    size = (tmp_path / "up.gguf").stat().st_size
    assert grown < 48 << 20, f"RSS grew {grown / 2**20:.0f} MiB while writing {size / 2**20:.0f} MiB"


# --- Hugging Face checkpoints ----------------------------------------------------------------


def test_upscaled_checkpoint_is_complete_for_continued_pretraining(tiny8_checkpoint: Path, tmp_path: Path) -> None:
    out = upscale(tiny8_checkpoint, tmp_path / "up", drop=2).path
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 12
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (out / name).read_bytes() == (tiny8_checkpoint / name).read_bytes()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1  # sharded as the source is
    names, metadata = [], {}
    for shard in shards:
        with safetensors.safe_open(out / shard, framework="np") as f:  # the safetensors library reads our header
            names += list(f.keys())
            metadata = f.metadata()
    assert metadata["edgekit.upscale.layers"] == "0-5,2-7"
    assert len(names) == len(load_weights(tiny8_checkpoint)) + 4 * 9 == len(index["weight_map"])
    stacked = load_weights(out)
    source = load_weights(tiny8_checkpoint)
    for new, old in enumerate(DROP_2):
        assert np.array_equal(stacked[f"model.layers.{new}.mlp.down_proj.weight"], source[f"model.layers.{old}.mlp.down_proj.weight"])


def test_upscale_refuses_a_non_empty_output_folder(tiny8_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not an empty folder"):
        upscale(tiny8_checkpoint, tmp_path / "up", drop=2)
    assert sorted(p.name for p in (tmp_path / "up").iterdir()) == ["keep.txt"]


# --- the command ---------------------------------------------------------------------------


def test_cli_upscales_and_refuses_nonsense_in_one_line(tiny8_checkpoint: Path, tmp_path: Path, capsys: Capsys) -> None:
    source = converted(tiny8_checkpoint, "f16")
    assert main(["upscale", str(source), "-o", str(tmp_path / "up.gguf"), "--layers", "0-5,2-7"]) == 0
    assert "12 layers from 8: 0-5,2-7" in capsys.readouterr().out
    assert main(["upscale", str(source), "-o", str(tmp_path / "bad.gguf"), "--layers", "0-9"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has layers 0-7, not 9" in err
    assert not (tmp_path / "bad.gguf").exists()
