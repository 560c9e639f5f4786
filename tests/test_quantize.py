"""quantize() runs llama.cpp's quantizer on a validated input and leaves only complete, valid outputs."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import llama_cpp
import pytest

from edgekit.cli import main
from edgekit.errors import ModelFormatError, OutputError, UsageError
from edgekit.gguf_file import validate
from edgekit.quant_levels import LEVELS
from edgekit.quantize import QuantizeProgress, QuantResult, default_output, level_name, quantize, quantize_file

# Bits per weight of the tiny model: its 32000x256 embeddings and output are half its weights,
# and llama.cpp keeps output.weight at Q6_K/Q8_0, so the ranges are wider than for a real model.
EXPECTED_BPW = {"Q8_0": (8.4, 8.6), "Q4_K_M": (4.5, 6.5)}


@pytest.fixture(scope="module")
def two_levels(tiny_gguf_f16: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[QuantResult], list[QuantizeProgress]]:
    """Q8_0 and Q4_K_M of the tiny model, made in one call, with the progress it reported."""
    seen: list[QuantizeProgress] = []
    out_dir = tmp_path_factory.mktemp("quant")
    return quantize(tiny_gguf_f16, ["Q8_0", "q4_k_m"], out_dir=out_dir, threads=2, progress=seen.append), seen


def _log_callback_address() -> int | None:
    callback, user_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(callback), ctypes.byref(user_data))
    return ctypes.cast(callback, ctypes.c_void_p).value


# --- levels and names ------------------------------------------------------------------------


def test_levels_come_from_llama_cpp() -> None:
    assert LEVELS["Q4_K_M"].file_type == llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert LEVELS["F32"].file_type == llama_cpp.LLAMA_FTYPE_ALL_F32
    assert {"Q8_0", "Q6_K", "Q5_K_M", "Q4_0", "Q3_K_S", "Q2_K", "IQ4_NL", "IQ4_XS", "F16", "BF16"} <= set(LEVELS)


def test_level_names_ignore_case_and_accept_aliases() -> None:
    assert level_name("q4_k_m") == "Q4_K_M"
    assert level_name("Q4_K") == "Q4_K_M"


def test_unknown_level_lists_the_valid_ones() -> None:
    with pytest.raises(UsageError, match="unknown quant level 'Q9_X'.*Q4_K_M"):
        level_name("Q9_X")


def test_imatrix_levels_are_refused() -> None:
    with pytest.raises(UsageError, match="needs an imatrix"):
        level_name("IQ2_XXS")


def test_default_output_name_drops_the_precision() -> None:
    assert default_output(Path("m/llama-f16.gguf"), "Q4_K_M") == Path("m/llama-Q4_K_M.gguf")
    assert default_output(Path("m/llama.F32.gguf"), "Q8_0", Path("out")) == Path("out/llama-Q8_0.gguf")


# --- quantizing -----------------------------------------------------------------------------


def test_two_levels_in_one_call_validate(two_levels: tuple[list[QuantResult], list[QuantizeProgress]]) -> None:
    results, _ = two_levels
    assert [r.level for r in results] == ["Q8_0", "Q4_K_M"]
    for result in results:
        info = validate(result.path)
        assert info.file_type == result.level
        assert result.path.name.endswith(f"-{result.level}.gguf") and result.size == info.size
        low, high = EXPECTED_BPW[result.level]
        assert low < result.bits_per_weight < high


def test_outputs_hold_the_quantized_types(two_levels: tuple[list[QuantResult], list[QuantizeProgress]]) -> None:
    q8, q4 = (validate(r.path) for r in two_levels[0])
    assert "Q8_0" in q8.quant_mix and "F16" not in q8.quant_mix
    assert "Q4_K" in q4.quant_mix and q4.size < q8.size


def test_progress_counts_levels_and_tensors(two_levels: tuple[list[QuantResult], list[QuantizeProgress]], tiny_gguf_f16: Path) -> None:
    results, seen = two_levels
    tensors = len(validate(tiny_gguf_f16).tensors)
    for index, result in enumerate(results, start=1):
        mine = [p for p in seen if p.level == result.level]
        assert {p.level_index for p in mine} == {index} and mine[0].level_count == 2
        assert {p.tensor_index for p in mine} >= set(range(1, tensors + 1))  # one report per llama.cpp tensor line
        assert all(p.tensor_count == tensors for p in mine)
        assert [p.done for p in mine].count(True) == 1 and mine[-1].done


def test_outputs_load_and_generate(two_levels: tuple[list[QuantResult], list[QuantizeProgress]]) -> None:
    for result in two_levels[0]:
        llm = llama_cpp.Llama(str(result.path), n_ctx=64, n_threads=2, verbose=False)
        try:
            out = llm.create_completion("Hello", max_tokens=4, temperature=0.0)
            assert out["usage"]["completion_tokens"] > 0
        finally:
            llm.close()


def test_log_callback_is_restored(tiny_gguf_f16: Path, tmp_path: Path) -> None:
    before = _log_callback_address()
    quantize_file(tiny_gguf_f16, "Q4_0", tmp_path / "q4_0.gguf", threads=2)
    assert _log_callback_address() == before


def test_requantize_is_refused_without_the_flag(two_levels: tuple[list[QuantResult], list[QuantizeProgress]], tmp_path: Path) -> None:
    q8 = two_levels[0][0].path
    with pytest.raises(UsageError, match="already quantized.*--allow-requantize"):
        quantize_file(q8, "Q4_0", tmp_path / "again.gguf")
    assert list(tmp_path.iterdir()) == []
    result = quantize_file(q8, "Q4_0", tmp_path / "again.gguf", threads=2, allow_requantize=True)
    assert validate(result.path).file_type == "Q4_0"


def test_corrupt_input_never_reaches_llama_cpp(tiny_gguf_f16: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken-f16.gguf"
    broken.write_bytes(tiny_gguf_f16.read_bytes()[: tiny_gguf_f16.stat().st_size // 2])
    with pytest.raises(ModelFormatError, match="truncated"):
        quantize(broken, ["Q4_K_M"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken-f16.gguf"]


def test_output_file_in_a_missing_folder_is_refused_as_convert_does(tiny_gguf_f16: Path, tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        quantize(tiny_gguf_f16, ["Q8_0"], output=tmp_path / "missing" / "x.gguf")
    assert list(tmp_path.iterdir()) == []


def test_output_under_a_file_is_refused_before_work(tiny_gguf_f16: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot create the output folder"):
        quantize(tiny_gguf_f16, ["Q8_0"], out_dir=blocker / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused_before_work(tiny_gguf_f16: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="not writable"):
        quantize(tiny_gguf_f16, ["Q8_0"], out_dir=folder)
    assert list(folder.iterdir()) == []


def test_one_output_path_takes_one_level(tiny_gguf_f16: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="one level"):
        quantize(tiny_gguf_f16, ["Q8_0", "Q4_0"], output=tmp_path / "x.gguf")


# --- through the CLI ------------------------------------------------------------------------


def test_cli_unknown_level_is_one_line_and_no_output(
    tiny_gguf_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["quantize", str(tiny_gguf_f16), "Q8_0,Q9_X", "--out-dir", str(tmp_path)]) == UsageError.exit_code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Q9_X" in err and "Q4_K_M" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_quantize_prints_size_and_bits(tiny_gguf_f16: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny-q4.gguf"
    assert main(["quantize", str(tiny_gguf_f16), "Q4_0", "-o", str(out), "--threads", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (Q4_0," in printed and "bits/weight" in printed
    assert validate(out).file_type == "Q4_0"


# --- stopping it -------------------------------------------------------------------------------


@pytest.mark.slow  # quantizes the TinyLlama-shaped f16 (a minute at one thread) until the signal
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_a_signal_stops_quantize_at_once_and_leaves_no_file(tinyllama_f16: Path, tmp_path: Path, sig, code) -> None:
    out = tmp_path / "out.gguf"
    run = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "quantize", str(tinyllama_f16), "Q4_K_M",
                            "-o", str(out), "--threads", "1"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.stat().st_size > 0 for p in tmp_path.glob(".out.gguf.*.tmp")):  # llama.cpp is writing
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read() if run.poll() is not None else "no temp file"
        time.sleep(0.05)
    sent = time.monotonic()
    run.send_signal(sig)
    _, err = run.communicate(timeout=30)
    took = time.monotonic() - sent
    assert run.returncode == code, err
    assert took < 3, f"took {took:.1f} s to stop"  # within a second on an idle box
    assert list(tmp_path.iterdir()) == []
    assert "Exception ignored" not in err and "Traceback" not in err
