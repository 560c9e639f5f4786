"""plan_for and estimate_memory: fitting rules on sized-but-empty GGUFs, and the estimate
against the resident memory of real llama.cpp processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgekit.cli import main
from edgekit.errors import DoesNotFit, UsageError
from edgekit.gguf_file import validate
from edgekit.hardware import GPU, detect
from edgekit.memory import MiB, estimate_memory
from edgekit.plan import plan_for
from edgekit.profiles import load_profile
from edgekit.settings import Settings

BOARDS = Path(__file__).parent / "boards"
LLAMA2_7B = dict(n_layer=32, n_embd=4096, n_ff=11008, n_head=32, n_head_kv=32, n_ctx=4096)
SMALL_3B = dict(n_layer=28, n_embd=3072, n_ff=8192, n_head=24, n_head_kv=8, n_ctx=32768)


def sized_gguf(path: Path, level: str, n_layer: int, n_embd: int, n_ff: int, n_head: int, n_head_kv: int,
               n_ctx: int, n_vocab: int = 32000) -> Path:
    """A valid GGUF of a real model's shape whose tensor data is a sparse hole: full size, no disk."""
    qtype = gguf.GGMLQuantizationType[level.removesuffix("_M").removesuffix("_S")]
    w = gguf.GGUFWriter(path, "llama")
    for add, value in [(w.add_context_length, n_ctx), (w.add_embedding_length, n_embd),
                       (w.add_feed_forward_length, n_ff), (w.add_block_count, n_layer),
                       (w.add_head_count, n_head), (w.add_head_count_kv, n_head_kv)]:
        add(value)
    w.add_vocab_size(n_vocab)
    w.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{level}"))
    kv = n_embd // n_head * n_head_kv
    matrices = {"token_embd": (n_vocab, n_embd), "output": (n_vocab, n_embd)}
    for i in range(n_layer):
        for name, shape in [("attn_q", (n_embd, n_embd)), ("attn_k", (kv, n_embd)), ("attn_v", (kv, n_embd)),
                            ("attn_output", (n_embd, n_embd)), ("ffn_gate", (n_ff, n_embd)),
                            ("ffn_up", (n_ff, n_embd)), ("ffn_down", (n_embd, n_ff))]:
            matrices[f"blk.{i}.{name}"] = shape
    total = 0
    for name, (rows, cols) in matrices.items():
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        row_bytes = cols // block * size
        nbytes = rows * row_bytes
        w.add_tensor_info(f"{name}.weight", (rows, row_bytes), np.dtype(np.uint8), nbytes, raw_dtype=qtype)
        total += -(-nbytes // 32) * 32
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    start = -(-path.stat().st_size // 32) * 32
    with open(path, "r+b") as f:
        f.truncate(start + total)
    return path


@pytest.fixture(scope="module")
def llama7b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("7b")
    return {level: sized_gguf(folder / f"llama-7b.{level}.gguf", level, **LLAMA2_7B)
            for level in ("F16", "Q8_0", "Q4_K_M", "Q2_K")}


@pytest.fixture(scope="module")
def small3b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("3b")
    return {level: sized_gguf(folder / f"small-3b.{level}.gguf", level, **SMALL_3B)
            for level in ("Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M")}


def board(board_name: str, **gpu):
    gpus = [GPU(**gpu)] if gpu else None
    return detect(BOARDS / board_name, gpus=gpus)


# --- GPU offload ----------------------------------------------------------------------------


def test_8gb_card_offloads_part_of_a_7b_q8_model(llama7b):
    hw = board("desktop-ryzen-rtx3070")
    plan = plan_for(llama7b["Q8_0"], load_profile("desktop-cuda-8gb"), hw)
    assert 0 < plan.settings.n_gpu_layers < 32
    assert plan.estimate.vram <= plan.budget.vram < plan.estimate.vram + estimate_layer(plan)
    assert plan.estimate.weights_ram > 0  # the first layers and the embeddings stay in RAM
    assert any("layers on the GPU (the last ones)" in r for r in plan.reasons)


def estimate_layer(plan) -> int:
    """VRAM one more offloaded layer would take: the planner must have stopped just short."""
    more = estimate_memory(validate(plan.model), plan.settings, plan.settings.n_gpu_layers + 1)
    return more.vram - plan.estimate.vram


def test_24gb_card_takes_every_layer_of_the_same_model(llama7b):
    hw = board("desktop-ryzen-rtx3070", name="NVIDIA GeForce RTX 4090", total_mb=24564, free_mb=23800)
    profile = load_profile("desktop-cuda-24gb")
    plan = plan_for(llama7b["Q8_0"], profile, hw)
    assert plan.settings.n_gpu_layers == -1
    info = validate(llama7b["Q8_0"])
    assert plan.estimate.weights_ram == info.token_embd_bytes  # only the embeddings stay on the CPU
    assert plan.settings.n_ctx == 4096  # the model's trained context caps the profile's 8192


def test_offload_counts_layers_from_the_end(tmp_path):
    info = validate(sized_gguf(tmp_path / "m.Q8_0.gguf", "Q8_0", **{**LLAMA2_7B, "n_layer": 4}))
    s = Settings(n_ctx=512)
    one, none = estimate_memory(info, s, 1), estimate_memory(info, s, 0)
    assert one.weights_vram == info.layer_bytes[max(info.layer_bytes)]
    assert none.vram == 0 and none.weights_ram == info.tensor_bytes
    everything = estimate_memory(info, s, -1)
    assert everything.weights_vram == info.tensor_bytes - info.token_embd_bytes


def test_jetson_counts_one_pool_and_shrinks_context_to_fit(llama7b):
    hw = board("jetson-orin-nano-8gb")
    plan = plan_for(llama7b["Q4_K_M"], load_profile("jetson-orin-nano-8gb"), hw)
    assert plan.budget.unified and plan.settings.n_gpu_layers == -1
    assert plan.budget.vram == plan.budget.ram  # one pool, not RAM plus VRAM
    assert plan.estimate.total - plan.estimate.reclaimable <= plan.budget.ram
    assert plan.settings.n_ctx < 4096
    assert any("n_ctx reduced from 4096" in r for r in plan.reasons)
    full = estimate_memory(validate(llama7b["Q4_K_M"]), replace(plan.settings, n_ctx=4096), arch="aarch64")
    assert full.total > plan.budget.ram  # the profile's context really did not fit


def test_gpu_profile_without_a_gpu_runs_on_the_cpu(llama7b):
    hw = board("rpi5-8gb")
    plan = plan_for(llama7b["Q4_K_M"], load_profile("desktop-cuda-8gb"), hw, ctx=1024)
    assert plan.settings.n_gpu_layers == 0 and plan.estimate.vram == 0
    assert any("no GPU was found" in r for r in plan.reasons)


# --- quant choice, context, refusal ---------------------------------------------------------


def test_pi4_prefers_the_profile_default_level_among_files_that_fit(small3b):
    plan = plan_for(list(small3b.values()), load_profile("rpi4-4gb"), board("rpi4-4gb"))
    assert plan.model == small3b["Q4_K_M"]
    assert any("the profile's default level" in r for r in plan.reasons)


def test_pi4_takes_the_best_quality_that_fits_when_the_default_is_absent(small3b):
    files = [small3b["Q8_0"], small3b["Q6_K"], small3b["Q3_K_M"]]
    hw, profile = board("rpi4-4gb"), load_profile("rpi4-4gb")
    plan = plan_for(files, profile, hw)
    fitting = [p for p in files if fits_at_full_context(p, profile, hw)]
    assert plan.model == max(fitting, key=lambda p: validate(p).bits_per_weight)
    assert small3b["Q8_0"] not in fitting  # so the choice was a real one
    assert any("Q8_0.gguf at n_ctx 2048 does not fit" in r for r in plan.reasons)


def fits_at_full_context(path: Path, profile, hw) -> bool:
    try:
        return plan_for(path, profile, hw).settings.n_ctx == profile.run.n_ctx
    except DoesNotFit:
        return False


def test_too_small_a_context_is_a_usage_error(small3b):
    with pytest.raises(UsageError, match="--ctx 8 is too small"):
        plan_for(small3b["Q4_K_M"], load_profile("rpi5-8gb"), board("rpi5-8gb"), ctx=8)


def test_context_is_halved_to_fit_and_never_below_the_floor(small3b):
    hw, profile = board("rpi4-4gb"), load_profile("rpi4-4gb")
    plan = plan_for(small3b["Q4_K_M"], profile, hw, ctx=32768)
    assert profile.run.min_ctx <= plan.settings.n_ctx < 32768
    assert plan.settings.n_ctx & (plan.settings.n_ctx - 1) == 0
    assert any(f"n_ctx reduced from 32768 to {plan.settings.n_ctx}" in r for r in plan.reasons)
    twice = estimate_memory(validate(small3b["Q4_K_M"]), replace(plan.settings, n_ctx=2 * plan.settings.n_ctx),
                            arch=hw.arch)
    assert twice.ram_required > plan.budget.ram


def test_refusal_says_how_much_is_missing_and_what_to_do(llama7b):
    with pytest.raises(DoesNotFit) as err:
        plan_for(llama7b["F16"], load_profile("rpi4-4gb"), board("rpi4-4gb"))
    message = str(err.value)
    match = re.search(r"needs ([\d.]+) GB \(n_ctx 512\), the box leaves ([\d.]+) GB after 0.6 GB headroom: "
                      r"([\d.]+) GB short; use (Q\w+)$", message)
    assert match, message
    need, left, short = (float(match.group(i)) for i in (1, 2, 3))
    assert abs(need - left - short) <= 0.11
    assert match.group(4) in ("Q2_K", "Q3_K_M")  # 7B at 4+ bits cannot fit 2.7 GB
    assert err.value.exit_code == 5


def test_refusal_offers_a_smaller_context_when_the_kv_cache_is_the_problem(small3b):
    base = load_profile("rpi4-4gb")
    pinned = replace(base, run=replace(base.run, n_ctx=32768, min_ctx=32768))  # no halving allowed
    with pytest.raises(DoesNotFit, match=r"GB short; .*a context below 32768 \(--ctx\)"):
        plan_for(small3b["Q3_K_M"], pinned, board("rpi4-4gb"))


def test_plan_command_prints_json_with_settings_and_reasons(small3b, capsys):
    code = main(["plan", str(small3b["Q4_K_M"]), "--root", str(BOARDS / "rpi5-8gb"), "--json", "--ctx", "1024"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["profile"] == "rpi5-8gb" and data["settings"]["n_ctx"] == 1024
    assert data["settings"]["n_threads"] == 4
    assert data["estimate"]["ram_mb"] > data["estimate"]["weights_ram_mb"] > 1000
    assert data["reasons"]


def test_plan_command_refuses_in_one_line(llama7b, capsys):
    code = main(["plan", str(llama7b["F16"]), "--root", str(BOARDS / "rpi4-4gb")])
    assert code == 5
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgekit: error: llama-7b.F16.gguf needs") and "\n" not in err


# --- against llama.cpp itself ---------------------------------------------------------------

RSS_CHILD = r"""
import json, sys
import llama_cpp
model, s = sys.argv[1], json.loads(sys.argv[2])
llm = llama_cpp.Llama(model, n_ctx=s["n_ctx"], n_batch=s["n_batch"], n_ubatch=s["n_ubatch"],
                      n_threads=s["n_threads"], n_threads_batch=s["n_threads_batch"], n_gpu_layers=0,
                      flash_attn=s["flash_attn"], use_mmap=s["use_mmap"], verbose=False)
llm.eval([(7 * i) % 31000 + 100 for i in range(s["n_ctx"] - 8)])  # a prompt that fills the context
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) * 1024)
"""


def measured_rss(model: Path, settings: Settings) -> int:
    """VmRSS of a fresh process that loaded ``model`` with ``settings`` and filled its context."""
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(model), json.dumps(asdict(settings))],
                         capture_output=True, text=True, check=True, timeout=600)
    return int(out.stdout.strip().splitlines()[-1])


def cpu_plan(model: Path, **overrides):
    hw = detect()
    plan = plan_for(model, load_profile("cpu-generic"), hw, ctx=overrides.pop("ctx", 512))
    return replace(plan, settings=replace(plan.settings, **overrides)) if overrides else plan


@pytest.mark.parametrize("fixture", ["tiny_gguf_f16", "tiny_q8_0", "tiny_q4_k_m"])
def test_plan_total_matches_resident_memory_of_tiny_models(fixture, request):
    model = request.getfixturevalue(fixture)
    plan = cpu_plan(model)
    estimate = estimate_memory(validate(model), plan.settings)
    rss = measured_rss(model, plan.settings)
    assert abs(estimate.ram - rss) <= 0.10 * rss, f"estimate {estimate.ram / MiB:.0f} MiB, VmRSS {rss / MiB:.0f} MiB"


def test_estimate_tracks_flash_attention_and_ubatch_on_tiny(tiny_gguf_f16):
    plan = cpu_plan(tiny_gguf_f16, ctx=2048)
    for settings in (replace(plan.settings, flash_attn=False, n_ubatch=512, n_batch=512),
                     replace(plan.settings, flash_attn=True, n_ubatch=128, n_batch=512)):
        estimate = estimate_memory(validate(tiny_gguf_f16), settings)
        rss = measured_rss(tiny_gguf_f16, settings)
        assert abs(estimate.ram - rss) <= 0.10 * rss, (settings, estimate.ram / MiB, rss / MiB)


@pytest.mark.slow
def test_plan_total_matches_resident_memory_of_tinyllama_q4_k_m(tinyllama_q4_k_m):
    plan = cpu_plan(tinyllama_q4_k_m)
    rss = measured_rss(tinyllama_q4_k_m, plan.settings)
    assert abs(plan.estimate.ram - rss) <= 0.10 * rss, f"plan {plan.estimate.ram / MiB:.0f} MiB, VmRSS {rss / MiB:.0f}"


def test_the_prompt_cache_budget_is_counted_in_the_plan(small3b):
    profile, hw = load_profile("rpi4-4gb"), board("rpi4-4gb")
    without = plan_for(small3b["Q4_K_M"], profile, hw)
    with_cache = plan_for(small3b["Q4_K_M"], profile, hw, prompt_cache_mb=256)
    assert with_cache.settings.prompt_cache_mb == 256
    assert with_cache.estimate.ram - without.estimate.ram == 256 * MiB
    assert "prompt cache 256" in "\n".join(with_cache.describe())


# --- the box a plan is for: --profile P plans for P's box unless --this-box ----------------------


def test_plan_with_a_profile_plans_for_that_box_not_this_one(small3b, capsys):
    code = main(["plan", str(small3b["Q8_0"]), "--profile", "rpi4-4gb"])
    assert code == 5  # 3.3 GB of weights on a 4 GB Pi: refused, whatever this machine has
    assert "small-3b.Q8_0.gguf needs" in capsys.readouterr().err
    assert main(["plan", str(small3b["Q8_0"]), "--profile", "rpi4-4gb", "--this-box", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["profile"] == "rpi4-4gb" and data["box"].endswith("(this machine)")


def test_plan_says_which_box_its_numbers_are_for(small3b, capsys):
    assert main(["plan", str(small3b["Q3_K_M"]), "--profile", "jetson-agx-orin-64gb"]) == 0
    out = capsys.readouterr().out
    assert "box:      a jetson-agx-orin-64gb box (48000 MB usable, 12 cores" in out
    assert "threads 12/12" in out  # the profile's [box] cores, not this machine's


def test_every_command_resolves_settings_through_one_function(tiny_q4_k_m):
    from edgekit.bench.runner import BenchConfig, resolve_settings
    from edgekit.plan import settings_for
    from edgekit.serve.config import ModelConfig
    from edgekit.serve.engines import settings_for as serve_settings

    planned = settings_for(tiny_q4_k_m, "rpi4-4gb").settings
    assert (planned.n_threads, planned.n_batch) == (4, 128)  # the Pi's 4 cores and small batches
    assert serve_settings(ModelConfig(path=tiny_q4_k_m, profile="rpi4-4gb")) == planned
    benched = resolve_settings(validate(tiny_q4_k_m), BenchConfig(models=(tiny_q4_k_m,), profile="rpi4-4gb"))
    assert (benched.n_threads, benched.n_batch) == (4, 128)
    here = serve_settings(ModelConfig(path=tiny_q4_k_m, profile="rpi4-4gb", this_box=True))
    assert here.n_threads <= detect().physical_cores


def test_auto_threads_leave_the_busy_cores_to_their_work(small3b):
    hw = replace(board("rpi5-8gb"), busy_cores=1.2)
    plan = plan_for(small3b["Q4_K_M"], load_profile("rpi5-8gb"), hw)
    assert (plan.settings.n_threads, plan.settings.n_threads_batch) == (3, 3)
    assert any("less 1 busy with other work" in r for r in plan.reasons)
    idle = plan_for(small3b["Q4_K_M"], load_profile("rpi5-8gb"), board("rpi5-8gb"))
    assert (idle.settings.n_threads, idle.settings.n_threads_batch) == (4, 4)


def test_a_fixed_thread_count_in_the_profile_is_kept_on_a_busy_box(small3b):
    base = load_profile("rpi5-8gb")
    fixed = replace(base, run=replace(base.run, n_threads=4, n_threads_batch=4))
    plan = plan_for(small3b["Q4_K_M"], fixed, replace(board("rpi5-8gb"), busy_cores=3.0))
    assert (plan.settings.n_threads, plan.settings.n_threads_batch) == (4, 4)


def test_detect_sees_a_busy_core():
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert detect().busy_cores >= 0.5
    finally:
        spinner.kill()
        spinner.wait()
