"""The one JSON summary of benchmarks/gpu_check.sh: each step, the checks and the figures.

usage: python benchmarks/gpu_check_summary.py OUT TOTAL_SECONDS   (prints the JSON)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from edgekit import gguf_file
from edgekit.bench.output import llama_bench_ratios
from edgekit.bench.results import BenchRun

BUDGET_S = 600


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def steps(out: Path) -> dict[str, dict[str, int]]:
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines() if line]
    return {name: {"seconds": int(s), "exit": int(rc)} for name, s, rc in rows}


def plan_check(out: Path, name: str, model: Path) -> dict[str, Any]:
    """Is every layer on the GPU? n_gpu_layers -1 or at least the blocks plus the output layer."""
    plan = _json(out / f"plan-{name}.out")
    if not plan or not model.exists():
        return {"ok": False, "why": f"no plan (see plan-{name}.log)"}
    blocks = gguf_file.validate(model).block_count or 0
    layers = plan["estimate"]["n_gpu_layers"]
    return {"ok": plan["settings"]["n_gpu_layers"] == -1 or layers >= blocks + 1, "profile": plan["profile"],
            "n_gpu_layers": layers, "blocks": blocks, "vram_mb": plan["estimate"]["vram_mb"],
            "ram_mb": plan["estimate"]["ram_mb"]}


def bench_figures(out: Path) -> list[dict[str, Any]]:
    data = _json(out / "bench.json")
    if not data:
        return []
    rows = []
    for m in BenchRun.from_dict(data).measurements:
        d = m.device
        rows.append({
            "setting": m.label, "n_gpu_layers": m.n_gpu_layers, "gen_tps": m.figure("gen_tps").mean,
            "prompt_tps": m.figure("prompt_tps").mean, "ttft_ms_p50": m.figure("ttft_ms").p50,
            **llama_bench_ratios(m), "power_sources": list(d.power_sources), "avg_power_w": d.avg_power_w,
            "j_per_token": d.j_per_token, "tokens_per_j": d.tokens_per_j, "temp_max_c": d.temp_max_c,
            "throttled": d.throttled, "throttle_reasons": list(d.throttle_reasons),
        })
    return rows


def summary(out: Path, total_s: int) -> dict[str, Any]:
    detect = (_json(out / "detect.out") or {}).get("hardware", {})
    preset = next((p.name.removesuffix(".Q4_K_M.gguf") for p in (out / "models").glob("*.Q4_K_M.gguf")
                   if not p.name.startswith("solar")), "tinyllama")
    bench = bench_figures(out)
    checks = {
        "gpu_found": bool(detect.get("gpus")),
        "plan_tinyllama_all_on_gpu": plan_check(out, "tinyllama", out / "models" / f"{preset}.Q4_K_M.gguf"),
        "plan_solar_10.7b_all_on_gpu": plan_check(out, "solar", out / "models" / "solar-10.7b.Q4_K_M.gguf"),
        "bench_ran": bool(bench),
        "nvml_power": any("NVML" in row["power_sources"] for row in bench),
        "llama_bench_beside": any(row["llama_bench_paired_rounds"] for row in bench),
        "under_10_minutes": total_s < BUDGET_S,
    }
    return {"total_seconds": total_s, "steps": steps(out), "checks": checks, "gpu": detect.get("gpus"),
            "bench": bench}


if __name__ == "__main__":
    print(json.dumps(summary(Path(sys.argv[1]), int(sys.argv[2])), indent=2, default=str))
