"""The one quant-level table (edgekit/quant_levels.py): every level, against gguf-py's and
llama-cpp-python's enums and through the modules that read it; and no second table elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

import gguf
import llama_cpp
import pytest

from edgekit import gguf_file
from edgekit.engine.worker import _level_name
from edgekit.errors import UsageError
from edgekit.profiles import load_profile
from edgekit.quant_levels import LEVELS, NEEDS_IMATRIX, NO_QUANTIZER, UNQUANTIZED, level_of_file_type
from edgekit.quantize import level_name, quant_levels, quantize_file

PACKAGE = Path(__file__).resolve().parent.parent / "edgekit"
WRITABLE = [name for name in quant_levels() if name not in NEEDS_IMATRIX]


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_every_level_agrees_with_gguf_py(name):
    level = LEVELS[name]
    member = gguf.LlamaFileType(level.file_type)
    assert member.name.removeprefix("MOSTLY_").removeprefix("ALL_") == name
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[level.main_type]]
    assert level.bits_per_weight == 8 * size / block > 0
    assert level.quantized == (level.main_type not in UNQUANTIZED)
    assert level_of_file_type(level.file_type) == level


def test_the_levels_quantize_offers_are_llama_cpps_own():
    ours = {name: LEVELS[name].file_type for name in quant_levels()}
    theirs = {n.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_"): v
              for n, v in vars(llama_cpp).items() if n.startswith("LLAMA_FTYPE_") and n != "LLAMA_FTYPE_GUESSED"}
    assert ours == {name: theirs[name] for name in ours}
    assert set(theirs) & set(LEVELS) - NO_QUANTIZER == set(ours)  # every level both know and llama.cpp writes
    assert {"Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_S", "Q2_K", "IQ4_NL", "IQ4_XS", "F16", "BF16", "F32"} <= set(ours)


def test_known_sizes_and_kinds():
    assert LEVELS["Q4_K_M"].main_type == "Q4_K" and LEVELS["Q4_K_M"].bits_per_weight == 4.5
    assert LEVELS["IQ3_M"].main_type == "IQ3_S" and LEVELS["Q8_0"].bits_per_weight == 8.5
    assert {n for n, level in LEVELS.items() if not level.quantized} == {"F32", "F16", "BF16"}
    assert {"F32", "F16", "BF16"} <= UNQUANTIZED and "Q8_0" not in UNQUANTIZED
    assert level_of_file_type(10_000) is None and level_of_file_type(True) is None


@pytest.mark.parametrize("name", sorted(NEEDS_IMATRIX & set(quant_levels())))
def test_levels_that_need_an_importance_matrix_are_refused_by_name(name):
    with pytest.raises(UsageError, match="imatrix"):
        level_name(name.lower())


@pytest.mark.parametrize("name", sorted(LEVELS))
def test_every_level_is_a_valid_profile_default(tmp_path, name):
    path = tmp_path / "box.toml"
    path.write_text(f'name = "box"\nquant = "{name}"\n')
    assert load_profile(path).quant == name


@pytest.mark.parametrize("name", sorted(NO_QUANTIZER))
def test_levels_llama_cpp_cannot_write_are_refused_by_name(name):
    with pytest.raises(UsageError, match="cannot write it"):
        level_name(name)


@pytest.mark.slow
def test_every_writable_level_quantizes_and_reads_back_by_its_name(tiny_gguf_f16, tmp_path):
    """Quantize the tiny model to each level: gguf_file and the engine's worker name it from the table."""
    for name in WRITABLE:
        out = tmp_path / f"{name}.gguf"
        result = quantize_file(tiny_gguf_f16, level_name(name), out, threads=2, allow_requantize=True)
        info = gguf_file.validate(out)
        assert info.file_type == result.level == name
        assert _level_name(LEVELS[name].file_type) == name
        assert info.is_quantized == LEVELS[name].quantized, name
        out.unlink()


def test_one_table_no_other_module_builds_level_names():
    """`grep`: the level table and the unquantized set are defined once, in quant_levels.py."""
    others = [p for p in PACKAGE.rglob("*.py") if p.name != "quant_levels.py"]
    pattern = re.compile(r"LlamaFileType|removeprefix\(\"(MOSTLY|ALL)_|\{\"F32\", \"F16\", \"BF16\"|\bUNQUANTIZED\s*=|\bLEVELS\s*[:=]")
    offenders = [f"{p.relative_to(PACKAGE)}: {m.group(0)}" for p in others for m in pattern.finditer(p.read_text())]
    assert offenders == []
