"""`edgekit quality`: perplexity as llama-perplexity computes it, KL and top-1 against a reference."""

import json
import re
import subprocess

import pytest

from edgekit.bench.quality import calibration_text, compare_quality
from edgekit.cli import main
from edgekit.errors import UsageError
from tests.fixtures.models import announce

CTX, CHUNKS = 256, 4  # 4 chunks x 127 scored tokens: enough to order the levels, seconds to run


@pytest.fixture(scope="session")
def tiny_quality(tiny_gguf_f32, tiny_q8_0, tiny_q4_k_m, tiny_q2_k):
    """The f32 file as reference, itself and the three levels as candidates: measured once."""
    announce(f"measuring quality of Q8_0, Q4_K_M, Q2_K against f32 ({CHUNKS} chunks of {CTX} tokens each)")
    results = compare_quality(tiny_gguf_f32, [tiny_gguf_f32, tiny_q8_0, tiny_q4_k_m, tiny_q2_k], ctx=CTX, chunks=CHUNKS)
    return dict(zip(["ref", "self", "Q8_0", "Q4_K_M", "Q2_K"], results))


def test_kl_divergence_grows_as_bits_shrink(tiny_quality):
    q8, q4, q2 = (tiny_quality[k].kl_mean for k in ("Q8_0", "Q4_K_M", "Q2_K"))
    assert 0 < q8 < q4 < q2


def test_top1_agreement_falls_as_bits_shrink(tiny_quality):
    q8, q4, q2 = (tiny_quality[k].top1_agreement for k in ("Q8_0", "Q4_K_M", "Q2_K"))
    assert 1.0 >= q8 > q4 > q2 > 0.0


def test_reference_against_itself_has_zero_divergence(tiny_quality):
    same = tiny_quality["self"]
    assert same.kl_mean < 1e-9 and same.kl_max < 1e-9
    assert same.top1_agreement == 1.0
    assert same.perplexity == tiny_quality["ref"].perplexity


def test_scores_the_second_half_of_each_chunk(tiny_quality):
    ref = tiny_quality["ref"]
    assert ref.chunks == CHUNKS and ref.n_ctx == CTX
    assert ref.tokens_scored == CHUNKS * (CTX - CTX // 2 - 1)
    assert ref.is_reference and ref.file_type == "F32"


@pytest.mark.slow  # llama.cpp's llama-perplexity, built by the install step (tests/fixtures/llama_tools.py)
def test_perplexity_matches_llama_perplexity(tiny_quality, tiny_gguf_f32, llama_tools, tmp_path):
    text = tmp_path / "calibration.txt"
    text.write_text(calibration_text(), encoding="utf-8")
    done = subprocess.run(
        [str(llama_tools / "llama-perplexity"), "-m", str(tiny_gguf_f32), "-f", str(text), "-c", str(CTX),
         "-b", str(CTX), "--chunks", str(CHUNKS), "-t", "2"],
        capture_output=True, text=True, check=True,
    )
    theirs = float(re.search(r"Final estimate: PPL = ([0-9.]+)", done.stdout + done.stderr).group(1))
    assert tiny_quality["ref"].perplexity == pytest.approx(theirs, rel=0.01)


def test_text_shorter_than_two_windows_is_refused(tiny_gguf_f32, tiny_q8_0):
    with pytest.raises(UsageError, match="needs at least 512"):
        compare_quality(tiny_gguf_f32, [tiny_q8_0], text="Too short a text.", ctx=256)


def test_cli_prints_json_for_scripts(tiny_gguf_f32, tiny_q8_0, capsys):
    assert main(["quality", str(tiny_gguf_f32), str(tiny_q8_0), "--ctx", "128", "--chunks", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["is_reference"] for r in rows] == [True, False]
    assert rows[1]["file_type"] == "Q8_0" and rows[1]["kl_mean"] > 0


def test_cli_refuses_a_file_that_is_not_gguf(tiny_gguf_f32, tmp_path, capsys):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"<!DOCTYPE html><html>not a model</html>")
    assert main(["quality", str(tiny_gguf_f32), str(bogus)]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgekit: error:") and "model.gguf" in err and "\n" not in err
