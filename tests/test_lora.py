"""LoRA / QLoRA adapters (PEFT format): merged at conversion, and as GGUF adapters llama.cpp applies at run time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece as spm

from edgekit.cli import main
from edgekit.convert import convert
from edgekit.convert.llama import permute_rows
from edgekit.convert.lora import LoraMerge, open_peft
from edgekit.lora_spec import parse_lora_arg
from edgekit.convert.lora_gguf import convert_lora
from edgekit.errors import ModelFormatError, UnsupportedModel, UsageError
from edgekit.testmodels import make_test_lora
from tests.fixtures.models import converted
from tests.llama_reference import forward_weights, load_weights, read_safetensors

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = "The quick brown fox jumps over the lazy dog. Café naïve résumé, 1776 and 2024."
# (rank, alpha, use_rslora, user scale): PEFT's alpha / r, and rsLoRA's alpha / sqrt(r) with a scale on top.
SCALINGS = {"standard": (8, 16, False, 1.0), "rslora": (4, 8, True, 0.5)}
Capsys = pytest.CaptureFixture[str]


def _ids(folder: Path, n: int = 30) -> list[int]:
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    return ([sp.bos_id()] + sp.encode(PROMPT * 3))[:n]


def _logits(path: Path, ids: list[int], lora: Path | None = None, lora_scale: float = 1.0) -> np.ndarray:
    # f32 KV cache and no flash attention: llama.cpp's CPU flash attention rounds to f16 (~6e-4).
    f32 = llama_cpp.GGML_TYPE_F32
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, logits_all=True, type_k=f32, type_v=f32, flash_attn=False,
                          lora_path=str(lora) if lora else None, lora_scale=lora_scale, verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)  # (T, V)


def _merged_reference(checkpoint: Path, peft: Path, scale: float) -> dict[str, np.ndarray]:
    """The checkpoint's weights with W + scale * scaling * B @ A, computed here from PEFT's own definition."""
    config = json.loads((peft / "adapter_config.json").read_text())
    r, alpha = config["r"], config["lora_alpha"]
    scaling = alpha / (math.sqrt(r) if config["use_rslora"] else r)
    weights, lora = load_weights(checkpoint), read_safetensors(peft / "adapter_model.safetensors")
    for name in weights:
        module = f"base_model.model.{name.removesuffix('.weight')}"
        if f"{module}.lora_A.weight" in lora:
            weights[name] = weights[name] + scale * scaling * lora[f"{module}.lora_B.weight"] @ lora[f"{module}.lora_A.weight"]
    return weights


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _lora(tmp_path: Path, name: str = "lora", **kwargs: object) -> Path:
    return make_test_lora(tmp_path / name, "tiny", **kwargs)  # type: ignore[arg-type]


# --- the test adapter writer ------------------------------------------------------------


def test_test_lora_is_laid_out_as_peft_saves_it(tmp_path: Path) -> None:
    peft = _lora(tmp_path, r=4, alpha=8, targets=("q_proj", "down_proj"), use_rslora=True)
    config = json.loads((peft / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["use_rslora"]) == ("LORA", 4, 8, True)
    assert config["target_modules"] == ["down_proj", "q_proj"] and config["use_dora"] is False
    tensors = read_safetensors(peft / "adapter_model.safetensors")
    assert len(tensors) == 2 * 2 * 2  # 2 layers x 2 modules x (A, B)
    assert tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].shape == (4, 256)  # (r, in)
    assert tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].shape == (4, 768)
    assert tensors["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].shape == (256, 4)  # (out, r)


# --- merged at conversion ---------------------------------------------------------------


@pytest.mark.parametrize("kind", SCALINGS)
def test_merged_conversion_logits_match_numpy_reference_of_merged_weights(
    kind: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    r, alpha, rslora, scale = SCALINGS[kind]
    peft = _lora(tmp_path, r=r, alpha=alpha, use_rslora=rslora)
    merged = convert(tiny_checkpoint, tmp_path / "merged.gguf", "f32", merges=(LoraMerge(open_peft(peft), scale),))
    ids = _ids(tiny_checkpoint)
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    reference = forward_weights(config, _merged_reference(tiny_checkpoint, peft, scale), ids)
    base = forward_weights(config, load_weights(tiny_checkpoint), ids)
    assert _rel(base, reference) > 0.05  # the adapter really changes the model
    assert _rel(_logits(merged, ids), reference) <= 1e-5


def test_merging_two_adapters_adds_both(tiny_checkpoint: Path, tmp_path: Path) -> None:
    one, two = _lora(tmp_path, "one", seed=1, targets=("q_proj", "v_proj")), _lora(tmp_path, "two", seed=2, targets=("k_proj",))
    merges = (LoraMerge(open_peft(one), 1.0), LoraMerge(open_peft(two), -0.5))
    merged = convert(tiny_checkpoint, tmp_path / "merged.gguf", "f32", merges=merges)
    weights = _merged_reference(tiny_checkpoint, one, 1.0)
    for name, value in _merged_reference(tiny_checkpoint, two, -0.5).items():
        if ".k_proj." in name:
            weights[name] = value
    ids = _ids(tiny_checkpoint)
    reference = forward_weights(json.loads((tiny_checkpoint / "config.json").read_text()), weights, ids)
    assert _rel(_logits(merged, ids), reference) <= 1e-5
    assert str(one.resolve()) + ":1" in gguf.GGUFReader(merged).fields["edgekit.lora.merged"].contents()


# --- as a GGUF adapter, applied at run time ---------------------------------------------


@pytest.mark.parametrize("kind", SCALINGS)
def test_runtime_adapter_matches_merged_file(kind: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    r, alpha, rslora, scale = SCALINGS[kind]
    peft = _lora(tmp_path, r=r, alpha=alpha, use_rslora=rslora)
    merged = convert(tiny_checkpoint, tmp_path / "merged.gguf", "f32", merges=(LoraMerge(open_peft(peft), scale),))
    adapter = convert_lora(peft, tiny_checkpoint, tmp_path / "adapter.gguf").path
    ids = _ids(tiny_checkpoint)
    at_run_time = _logits(converted(tiny_checkpoint, "f32"), ids, lora=adapter, lora_scale=scale)
    assert _rel(at_run_time, _logits(merged, ids)) <= 1e-3


def test_adapter_gguf_has_llama_cpp_keys_names_and_permuted_b(tiny_checkpoint: Path, tmp_path: Path) -> None:
    peft = _lora(tmp_path, r=4, alpha=8, use_rslora=True, targets=("q_proj", "k_proj", "v_proj"))
    reader = gguf.GGUFReader(convert_lora(peft, tiny_checkpoint, tmp_path / "adapter.gguf").path)
    fields = {name: reader.fields[name].contents() for name in ("general.type", "general.architecture", "adapter.type")}
    assert fields == {"general.type": "adapter", "general.architecture": "llama", "adapter.type": "lora"}
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(8 * math.sqrt(4))  # rsLoRA: alpha*sqrt(r) / r
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    assert len(tensors) == 2 * 3 * 2
    lora = read_safetensors(peft / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.0."
    assert np.array_equal(tensors["blk.0.attn_q.weight.lora_a"], lora[f"{prefix}self_attn.q_proj.lora_A.weight"])
    assert np.array_equal(tensors["blk.0.attn_q.weight.lora_b"], permute_rows(lora[f"{prefix}self_attn.q_proj.lora_B.weight"], 8))
    assert np.array_equal(tensors["blk.0.attn_k.weight.lora_b"], permute_rows(lora[f"{prefix}self_attn.k_proj.lora_B.weight"], 2))
    assert np.array_equal(tensors["blk.0.attn_v.weight.lora_b"], lora[f"{prefix}self_attn.v_proj.lora_B.weight"])  # not permuted
    assert tensors["blk.0.attn_k.weight.lora_b"].shape == (64, 4)  # (out, r): ggml ne [r, out], as llama.cpp checks


def test_adapter_for_gguf_base_equals_adapter_for_checkpoint_base(tiny_checkpoint: Path, tmp_path: Path) -> None:
    peft = _lora(tmp_path)
    from_checkpoint = convert_lora(peft, tiny_checkpoint, tmp_path / "a.gguf").path
    from_gguf = convert_lora(peft, converted(tiny_checkpoint, "f16"), tmp_path / "b.gguf").path
    assert from_checkpoint.read_bytes() == from_gguf.read_bytes()


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "targets", "error", "fragment"),
    [
        ({"use_dora": True}, ("q_proj",), UnsupportedModel, "DoRA"),
        ({}, ("embed_tokens",), UnsupportedModel, "embed_tokens"),
        ({"target_modules": ["q_proj"]}, ("q_proj", "embed_tokens"), UnsupportedModel, "embedding"),
        ({"modules_to_save": ["lm_head"]}, ("q_proj",), UnsupportedModel, "modules_to_save ['lm_head']"),
        ({"r": 4}, ("q_proj",), ModelFormatError, "says rank 4"),
        ({"rank_pattern": {"q_proj": 16}}, ("q_proj",), ModelFormatError, "says rank 16"),
        ({"alpha_pattern": {"q_proj": 4}}, ("q_proj",), UnsupportedModel, "alpha_pattern"),
        ({"peft_type": "IA3"}, ("q_proj",), UnsupportedModel, "IA3"),
    ],
)
def test_adapters_we_cannot_apply_faithfully_are_refused(
    config: dict, targets: tuple[str, ...], error: type, fragment: str, tmp_path: Path
) -> None:
    peft = _lora(tmp_path, config=config, targets=targets)
    with pytest.raises(error, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        open_peft(peft)


def test_rank_pattern_with_matching_tensors_is_accepted(tmp_path: Path) -> None:
    peft = _lora(tmp_path, r=8, targets=("q_proj",), config={"r": 4, "rank_pattern": {"q_proj": 8}})
    assert {pair.rank for pair in open_peft(peft).pairs.values()} == {8}


def test_adapter_for_a_model_of_another_shape_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    wider = make_test_lora(tmp_path / "solar", "solar-mini", targets=("q_proj",))
    with pytest.raises(ModelFormatError, match="another shape"):
        convert_lora(wider, tiny_checkpoint, tmp_path / "a.gguf")
    with pytest.raises(ModelFormatError, match="another shape"):
        convert(tiny_checkpoint, tmp_path / "m.gguf", "f32", merges=(LoraMerge(open_peft(wider)),))
    deeper = make_test_lora(tmp_path / "deeper", "tiny8", targets=("q_proj",))
    with pytest.raises(ModelFormatError, match="model.layers.2.self_attn.q_proj.weight, which .* does not have"):
        convert_lora(deeper, converted(tiny_checkpoint, "f16"), tmp_path / "a.gguf")
    assert not (tmp_path / "a.gguf").exists() and not (tmp_path / "m.gguf").exists()


def test_lora_argument_takes_name_path_and_scale() -> None:
    assert parse_lora_arg("house=/a/b.gguf:0.5") == ("house", Path("/a/b.gguf"), 0.5)
    assert parse_lora_arg("adapters/my-lora") == ("my-lora", Path("adapters/my-lora"), 1.0)
    assert parse_lora_arg("c:/x:2") == ("x", Path("c:/x"), 2.0)
    with pytest.raises(UsageError, match="NAME=PATH"):
        parse_lora_arg("=x.gguf")


# --- the commands --------------------------------------------------------------------------


def test_cli_converts_with_merged_lora_and_writes_an_adapter(tiny_checkpoint: Path, tmp_path: Path, capsys: Capsys) -> None:
    peft = _lora(tmp_path, targets=("q_proj",))
    assert main(["convert", str(tiny_checkpoint), "-o", str(tmp_path / "m.gguf"), "--outtype", "f32",
                 "--lora", f"{peft}:0.5"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["convert-lora", str(peft), "--base", str(tiny_checkpoint), "-o", str(tmp_path / "a.gguf")]) == 0
    assert "LoRA adapter, 2 weights, rank 8, alpha 16" in capsys.readouterr().out


def test_cli_refuses_dora_in_one_line(tiny_checkpoint: Path, tmp_path: Path, capsys: Capsys) -> None:
    peft = _lora(tmp_path, config={"use_dora": True})
    assert main(["convert-lora", str(peft), "--base", str(tiny_checkpoint), "-o", str(tmp_path / "a.gguf")]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DoRA" in err and "Traceback" not in err
    assert not (tmp_path / "a.gguf").exists()
