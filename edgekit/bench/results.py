"""The values a benchmark produces: one Sample per request, one Measurement per setting.

Plain data so that output.py, report.py and recommend.py can read a bench JSON written
earlier (``BenchRun.from_dict``) exactly as they read a fresh run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgekit.bench.stats import Summary, mean, percentile, summarize


@dataclass(frozen=True)
class Sample:
    """One measured request, from the engine's own timings and chunk timestamps."""

    ttft_ms: float
    prompt_tokens: int
    cached_prompt_tokens: int
    prompt_ms: float
    prompt_tps: float
    gen_tokens: int
    generation_ms: float
    gen_tps: float
    queue_ms: float
    total_ms: float  # the engine's own total: from the call (queue included) to the last token
    e2e_ms: float  # submit to final record, as the caller saw it
    itl_ms: tuple[float, ...] = ()  # per-token gaps after the first token
    repeat_index: int = 0  # the round it was measured in (0 .. repeats-1)
    started_s: float | None = None  # time.monotonic() at submit and at the final record: the span
    ended_s: float | None = None  # whose energy the sensors' readings give
    # --workload assist, from the call and read off the stream: the 60th character of the spoken
    # answer (Home Assistant starts text-to-speech there) and the end of a complete tool call
    speech_60_ms: float | None = None
    tool_call_ms: float | None = None

    @property
    def transport_ms(self) -> float:
        """What the caller waited beyond the engine's own total (which includes its queue): MQTT's cost."""
        return max(0.0, self.e2e_ms - self.total_ms)


def file_label(file_name: str, file_type: str | None) -> str:
    """"tinyllama-Q4_K_M" for a chart row: the level alone cannot tell two models apart."""
    stem = Path(file_name).stem
    return stem if file_type and file_type.lower() in stem.lower() else f"{stem} {file_type or '?'}"


@dataclass(frozen=True)
class ModelFacts:
    """The file measured, as gguf_file describes it."""

    path: str
    file_name: str
    file_type: str
    architecture: str
    size_bytes: int
    n_params: int
    tensor_bytes: int


@dataclass(frozen=True)
class DeviceFigures:
    """Power, energy, heat and clocks over one setting's requests; None (n/a) where the box has
    no sensor for a figure, never 0. docs/bench-fields.md describes each field."""

    power_sources: tuple[str, ...] = ()
    power_mode: str | None = None  # Jetson `nvpmodel -q`
    governor: str | None = None  # cpufreq scaling_governor
    energy_j: float | None = None
    seconds: float | None = None  # the requests' spans, overlaps counted once
    avg_power_w: float | None = None
    j_per_token: float | None = None  # per generated token (the prompt's work included)
    tokens_per_j: float | None = None
    temp_max_c: float | None = None
    cpu_mhz_min: float | None = None
    cpu_max_mhz: float | None = None  # the cpufreq policy's maximum
    throttled: bool | None = None
    throttle_reasons: tuple[str, ...] = ()
    sample_interval_s: float | None = None
    readings: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceFigures:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


@dataclass(frozen=True)
class TimePoint:
    """One moment of a steady load: the rate and the box's state, for the report's time series."""

    t_s: float  # since the setting's first request
    tokens_per_s: float | None
    power_w: float | None
    temp_c: float | None
    cpu_mhz: float | None
    gpu_mhz: float | None
    throttled: bool | None


@dataclass(frozen=True)
class Measurement:
    """All repeats of one (model, mode, prompt size, concurrency) setting, summarized."""

    model: ModelFacts
    mode: str  # "engine" (in-process), or "mqtt" / "http" (through a daemon)
    prompt_tokens: int
    gen_tokens: int
    concurrency: int
    repeats: int
    warmup: int
    n_threads: int
    n_batch: int
    n_ubatch: int
    n_ctx: int
    n_gpu_layers: int
    type_k: str
    type_v: str
    flash_attn: bool
    load_cold_ms: float | None
    load_warm_ms: float | None
    peak_rss_bytes: int | None
    gpu_memory_bytes: int | None
    samples: tuple[Sample, ...]
    measured_on: str  # the box the figures come from, e.g. "x86_64, 2 cores (this machine)"
    test_time: str
    # llama-bench's mean rates on the same file and settings: pp of prompt_tokens from an empty
    # cache, tg of gen_tokens after prompt_tokens in the cache (-d), as our generation runs
    llama_bench_pp_ts: float | None = None
    llama_bench_tg_ts: float | None = None
    # llama-bench's rate in each round, run after each of our rounds (empty when it ran once, apart)
    llama_bench_pp_samples: tuple[float, ...] = ()
    llama_bench_tg_samples: tuple[float, ...] = ()
    device: DeviceFigures = DeviceFigures()
    timeline: tuple[TimePoint, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def figure(self, name: str) -> Summary:
        """Summary of one per-request figure over all counted samples, e.g. "ttft_ms"."""
        if name == "itl_ms":
            return summarize([gap for s in self.samples for gap in s.itl_ms])
        if name == "transport_ms":
            return summarize([s.transport_ms for s in self.samples])
        return summarize([getattr(s, name) for s in self.samples if getattr(s, name) is not None])

    def round_means(self, name: str) -> list[float]:
        """The mean of one figure in each round, in round order (concurrent requests share a round)."""
        rounds: dict[int, list[float]] = {}
        for s in self.samples:
            rounds.setdefault(s.repeat_index, []).append(getattr(s, name))
        return [mean(rounds[r]) for r in sorted(rounds)]

    def vs_llama_bench(self, figure: str) -> float | None:
        """Our rate over llama-bench's, >1 is faster: "gen_tps" against tg, "prompt_tps" against pp,
        "ttft_ms" as prompt_tokens / TTFT against pp.

        With llama-bench run after each of our rounds, the median of the round-by-round
        ratios: both tools see the same moment of a box whose speed drifts. Else the ratio
        of the means.
        """
        theirs_samples = self.llama_bench_tg_samples if figure == "gen_tps" else self.llama_bench_pp_samples
        theirs_mean = self.llama_bench_tg_ts if figure == "gen_tps" else self.llama_bench_pp_ts
        if not theirs_mean:
            return None
        ours = self.round_means(figure)
        if figure == "ttft_ms":
            ours = [1000 * self.prompt_tokens / ms for ms in ours if ms > 0]
        if theirs_samples and len(theirs_samples) == len(ours) and min(theirs_samples) > 0:
            return percentile([a / b for a, b in zip(ours, theirs_samples)], 50)
        return mean(ours) / theirs_mean if ours else None

    @property
    def label(self) -> str:
        """Short name of the setting for tables and charts: the file, its level, the setting."""
        return (f"{file_label(self.model.file_name, self.model.file_type)} pp{self.prompt_tokens} "
                f"tg{self.gen_tokens} c{self.concurrency} {self.mode}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["summary"] = {name: self.figure(name).to_dict() for name in SUMMARY_FIGURES}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["model"] = ModelFacts(**data["model"])
        sample_fields = {f.name for f in fields(Sample)}  # a newer file's extra fields are skipped
        values["samples"] = tuple(
            Sample(**{**{k: v for k, v in s.items() if k in sample_fields}, "itl_ms": tuple(s.get("itl_ms", ()))})
            for s in data["samples"]
        )
        for name in ("llama_bench_pp_samples", "llama_bench_tg_samples"):
            values[name] = tuple(data.get(name, ()))
        values["device"] = DeviceFigures.from_dict(data.get("device") or {})
        values["timeline"] = tuple(TimePoint(**p) for p in data.get("timeline", ()))
        return cls(**values)


# Per-request figures summarized in outputs, in the order a reader wants them.
SUMMARY_FIGURES = ("ttft_ms", "prompt_tps", "gen_tps", "itl_ms", "e2e_ms", "queue_ms", "transport_ms",
                   "speech_60_ms", "tool_call_ms")


@dataclass(frozen=True)
class BenchRun:
    """A whole `edgekit bench` run: what was asked, where, and every measurement."""

    edgekit_version: str
    llama_cpp_version: str
    host: dict[str, Any]
    measurements: tuple[Measurement, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "edgekit_version": self.edgekit_version,
            "llama_cpp_version": self.llama_cpp_version,
            "host": self.host,
            "measurements": [m.to_dict() for m in self.measurements],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchRun:
        return cls(
            edgekit_version=data.get("edgekit_version", "?"),
            llama_cpp_version=data.get("llama_cpp_version", "?"),
            host=data.get("host", {}),
            measurements=tuple(Measurement.from_dict(m) for m in data["measurements"]),
        )
