"""`edgekit recommend` on the TinyLlama-shaped levels for three boxes, from measured speed and quality.

Speed and quality are measured once per session (a short real bench and a real KL run)
and handed to recommend as JSON, as a user would after `edgekit bench --json`, so each
box's answer costs only the planner.
"""

import contextlib
import io
import json
from pathlib import Path

import pytest

from edgekit.bench.output import to_json
from edgekit.bench.quality import compare_quality
from edgekit.bench.recommend import Targets, recommend
from edgekit.bench.runner import BenchConfig, run_bench
from edgekit.cli import main
from edgekit.errors import DoesNotFit
from edgekit.profiles import load_profile

BOARDS = Path(__file__).parent / "boards"
pytestmark = pytest.mark.slow  # the TinyLlama-shaped files


@pytest.fixture(scope="module")
def levels(tinyllama_f16, tinyllama_q8_0, tinyllama_q4_k_m, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tinyllama-levels")
    for f in (tinyllama_f16, tinyllama_q8_0, tinyllama_q4_k_m):
        (folder / f.name).symlink_to(f)
    return folder


@pytest.fixture(scope="module")
def measured(levels, tmp_path_factory) -> tuple[Path, Path]:
    """(bench JSON, quality JSON) of the three files, measured for real on this machine."""
    files = sorted(levels.glob("*.gguf"))
    folder = tmp_path_factory.mktemp("measured")
    run = run_bench(BenchConfig(models=tuple(files), prompt_tokens=(32,), gen_tokens=4,
                                repeat=1, warmup=0), progress=lambda _: None)
    (folder / "bench.json").write_text(to_json(run))
    ref = next(f for f in files if f.name.endswith(".f16.gguf"))
    quality = compare_quality(ref, [f for f in files if f != ref], ctx=64, chunks=1)
    (folder / "quality.json").write_text(json.dumps([q.to_dict() for q in quality]))
    return folder / "bench.json", folder / "quality.json"


def _recommend(levels, measured, board, **targets):
    bench, quality = measured
    return recommend([levels], load_profile(board), Targets(**targets), bench_json=bench,
                     quality_json=quality, root=BOARDS / board)


@pytest.mark.parametrize("board", ["rpi4-4gb", "rpi5-8gb", "jetson-orin-nano-8gb"])
def test_names_a_level_with_its_table_and_reason(levels, measured, board):
    rec = _recommend(levels, measured, board)
    assert rec.chosen.fits and rec.chosen.verdict == "chosen"
    assert {o.file_type for o in rec.options} == {"F16", "Q8_0", "Q4_K_M"}
    fitting_and_good = [o for o in rec.options if o.verdict in ("chosen", "meets targets")]
    assert rec.chosen.size_bytes == min(o.size_bytes for o in fitting_and_good)  # smallest that qualifies
    assert all(o.ttft_ms and o.gen_tps for o in rec.options if o.fits)
    assert any("measured on this machine" in r for r in rec.reasons)
    assert any("KL divergence" in r for r in rec.reasons)


def test_a_tighter_quality_target_moves_to_a_larger_level(levels, measured):
    loose = _recommend(levels, measured, "rpi5-8gb")
    q4 = next(o for o in loose.options if o.file_type == "Q4_K_M")
    strict = _recommend(levels, measured, "rpi5-8gb", max_kl=q4.kl_mean / 2)
    assert strict.chosen.size_bytes > q4.size_bytes
    assert next(o for o in strict.options if o.file_type == "Q4_K_M").verdict == "loses too much quality"


def test_refuses_a_ttft_target_no_level_meets(levels, measured):
    with pytest.raises(DoesNotFit, match=r"--max-ttft-ms 0\.01: the best time to first token is [0-9.]+ ms"):
        _recommend(levels, measured, "rpi4-4gb", max_ttft_ms=0.01)


def test_cli_refusal_names_the_failed_target_and_exits_non_zero(levels, measured):
    bench, quality = measured
    err = io.StringIO()
    argv = ["recommend", str(levels), "--profile", "jetson-orin-nano-8gb", "--root", str(BOARDS / "jetson-orin-nano-8gb"),
            "--bench-json", str(bench), "--quality-json", str(quality), "--min-tokens-per-s", "1000000"]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == DoesNotFit.exit_code
    line = err.getvalue().strip()
    assert "--min-tokens-per-s 1e+06: the best generation rate is" in line and "\n" not in line


def test_cli_prints_the_table_and_the_choice(levels, measured):
    bench, quality = measured
    out = io.StringIO()
    argv = ["recommend", str(levels), "--profile", "rpi5-8gb", "--root", str(BOARDS / "rpi5-8gb"),
            "--bench-json", str(bench), "--quality-json", str(quality)]
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    text = out.getvalue()
    assert "recommend:" in text and "verdict" in text and "why:" in text and "TTFT ms" in text
