"""Run `edgekit bench`: load each model, send exact-length prompts, keep the engine's timings.

The engine's records carry their own timings (Result.timings, Chunk.elapsed_ms); the
runner only times model loads (cold: the file dropped from the page cache first; warm:
the second load), and, through a daemon, the caller's own wait (the MQTT client's timing).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit import __version__, gguf_file
from edgekit.bench import memory
from edgekit.bench.llama_bench import (
    LlamaBenchRounds, attach_llama_bench, fits_beside, llama_bench_commands, run_llama_bench,
)
from edgekit.bench.energy import with_device_figures
from edgekit.bench.prompts import PromptMaker
from edgekit.bench.quality import calibration_text
from edgekit.bench.results import BenchRun, Measurement, ModelFacts, Sample
from edgekit.bench.sampler import sampler_for
from edgekit.bench.sensors import Sensors
from edgekit.bench.stats import differences
from edgekit.engine.records import Chunk, Request, Result
from edgekit.errors import EngineError, UsageError
from edgekit.settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
# A function that runs one request and returns its chunks, final Result and the caller's wait in ms.
Send = Callable[[Request], tuple[list[Chunk], Result, float]]

_CTX_MARGIN = 16  # context beyond prompt + answer: BOS and the engine's +1 check
WORKLOADS = ("prompts", "assist")


@dataclass(frozen=True)
class BenchConfig:
    """What to measure: `edgekit bench`'s options as plain data."""

    models: tuple[Path, ...]
    prompt_tokens: tuple[int, ...] = (32, 256)
    gen_tokens: int = 128
    repeat: int = 3
    concurrency: tuple[int, ...] = (1,)
    warmup: int = 1
    threads: int | None = None
    profile: str | None = None
    this_box: bool = False  # with profile: plan for this machine, not the profile's box
    via: str | None = None  # mqtt://host:port or http://host:port: also measure through a running daemon
    prefix: str | None = None
    llama_bench: Path | None = None
    engine_options: dict[str, Any] = field(default_factory=dict)
    sensors: bool = True  # sample power, heat and clocks during the runs (edgekit/bench/sensors)
    sensors_root: Path = Path("/")  # a captured board's files instead of this box's
    duration_s: float | None = None  # steady load: rounds until this many seconds have passed
    workload: str = "prompts"  # or "assist": Home Assistant's request (edgekit/bench/workload.py)
    entities: int = 50  # exposed entities in the assist workload

    def check(self) -> None:
        if self.repeat < 1 or self.gen_tokens < 2 or self.warmup < 0:
            raise UsageError("--repeat must be at least 1 and --gen-tokens at least 2")
        if self.duration_s is not None and self.duration_s <= 0:
            raise UsageError("--duration takes a positive number of seconds, e.g. 600")
        if self.workload not in WORKLOADS or self.entities < 0:
            raise UsageError(f"--workload takes one of {', '.join(WORKLOADS)}; --entities a count from 0")
        if self.workload == "assist" and (self.llama_bench or self.via):
            raise UsageError("--workload assist measures the engine alone: leave out --compare-llama-bench and --via")
        if any(n < 1 for n in self.prompt_tokens) or any(c < 1 for c in self.concurrency):
            raise UsageError("--prompt-tokens and --concurrency take positive numbers, e.g. 32,256 and 1,4")
        if self.llama_bench and not self.llama_bench.is_file():  # before minutes of measuring
            raise UsageError(f"--compare-llama-bench {self.llama_bench}: no such file "
                             "(build it: benchmarks/build_llama_tools.sh)")


def run_bench(config: BenchConfig, progress: Progress = log.info) -> BenchRun:
    """Measure every model in ``config``; returns all measurements, in the order run."""
    config.check()
    if config.via:  # fail in a second, not after the whole engine benchmark
        progress(f"checking the daemon at {config.via}")
        with daemon_send(config):
            pass
    measurements: list[Measurement] = []
    for path in config.models:
        measurements += bench_model(path, config, progress)
    host = host_facts()
    if config.sensors:  # the power mode, governor and sensors are also in every measurement's device figures
        host["sensors"] = Sensors(config.sensors_root).facts().to_dict()
    return BenchRun(
        edgekit_version=__version__, llama_cpp_version=_llama_cpp_version(),
        host=host, measurements=tuple(measurements),
    )


def bench_model(path: Path, config: BenchConfig, progress: Progress) -> list[Measurement]:
    """All settings of one model: in-process, then through the daemon if asked."""
    info = gguf_file.validate(path)
    settings = resolve_settings(info, config, progress)
    facts = model_facts(info)
    from edgekit.engine import Engine  # the engine pulls in llama.cpp: import on use

    progress(f"{info.path.name}: cold load")
    cold_ms = _timed_load(Engine, info.path, settings, drop_cache=True)
    progress(f"{info.path.name}: warm load")
    started = time.perf_counter()
    with Engine(info.path, settings, **config.engine_options) as engine:
        warm_ms = _load_ms(engine, started)
        maker = PromptMaker(calibration_text(), lambda text: engine.tokenize(text, add_bos=True, special=True))
        context = MeasureContext(facts, settings, cold_ms, warm_ms, "engine", config)
        rounds = _alternating_llama_bench(config, info, settings, progress)
        with sampler_for(config.sensors, config.sensors_root) as sampler:
            found = _measure_workload(context, engine, maker, progress, rounds)
            pid = _child_pid(engine)
            rss, gpu = memory.peak_rss_bytes(pid), memory.gpu_memory_bytes(pid)
            found = [dataclasses.replace(m, peak_rss_bytes=rss, gpu_memory_bytes=gpu) for m in found]
            if config.via:
                found += _via_daemon(config, facts, settings, maker, progress)
        found = with_device_figures(found, sampler, series=config.duration_s is not None)
    if rounds is not None:
        found = attach_llama_bench(found, rounds.figures, alternated=True)
    elif config.llama_bench:
        progress(f"{info.path.name}: llama-bench, {config.repeat} repetitions")
        argvs = llama_bench_commands(config.llama_bench, info.path, config.prompt_tokens, config.gen_tokens,
                                     settings, config.repeat)
        found = attach_llama_bench(found, [run_llama_bench(argvs)], alternated=False)
    return found


def _measure_workload(ctx: MeasureContext, engine: Any, maker: PromptMaker, progress: Progress,
                      rounds: Callable[[int], None] | None) -> list[Measurement]:
    if ctx.config.workload == "assist":
        from edgekit.bench.workload import measure_assist

        return measure_assist(ctx, engine, progress)
    return measure(ctx, engine_send(engine), maker, progress, rounds)


def resolve_settings(info: gguf_file.GGUFInfo, config: BenchConfig, progress: Progress = log.info) -> Settings:
    """What `edgekit serve` would run this file with (the plan for --profile's box, or for this one),
    with --threads if given and room for the longest test; the settings are reported through ``progress``."""
    from edgekit.plan import settings_for  # the planner reads the box: only when benchmarking

    plan = settings_for([info], config.profile, this_box=config.this_box)
    settings = plan.settings
    if config.threads:
        settings = dataclasses.replace(settings, n_threads=config.threads, n_threads_batch=config.threads)
    need = max(config.prompt_tokens) + config.gen_tokens + _CTX_MARGIN
    if config.workload == "assist":  # sized before the tokenizer loads: a token a character at worst
        from edgekit.bench.workload import ANSWER_TOKENS, prompt_chars

        need = max(need, prompt_chars(config.entities) + ANSWER_TOKENS + _CTX_MARGIN)
    settings = dataclasses.replace(settings, n_ctx=max(settings.n_ctx, need))
    progress(f"{info.path.name}: profile {plan.profile} for {plan.box}; measured on this machine with "
             f"settings: {settings.summary()}" + (" (--threads)" if config.threads else ""))
    return settings


@dataclass(frozen=True)
class MeasureContext:
    """What every measurement of one model shares."""

    facts: ModelFacts
    settings: Settings
    cold_ms: float | None
    warm_ms: float | None
    mode: str
    config: BenchConfig


def measure(ctx: MeasureContext, send: Send, maker: PromptMaker, progress: Progress,
            after_round: Callable[[int], None] | None = None) -> list[Measurement]:
    """Every (prompt size, concurrency) setting of the config: warm-up runs (not counted), then
    ``repeat`` rounds, each running every setting once and then ``after_round`` (llama-bench's turn).

    Rounds rather than one setting's repeats back to back: a drift of the box's speed then
    touches every setting alike, and a reference run between rounds sees the same moment.
    """
    config = ctx.config
    keys = [(n, c) for n in config.prompt_tokens for c in config.concurrency]
    for n in config.prompt_tokens:  # a warm-up per prompt size: the first run of a batch shape allocates
        for i in range(config.warmup):
            progress(f"{ctx.facts.file_name} {ctx.mode} pp{n}: warm-up {i + 1}/{config.warmup}")
            _round(send, maker, n, config.gen_tokens, 1, 0)
    samples: dict[tuple[int, int], list[Sample]] = {key: [] for key in keys}
    done = 0
    for r, of in rounds_of(config):
        for n, c in keys:
            progress(f"{ctx.facts.file_name} {ctx.mode} pp{n} tg{config.gen_tokens} c{c}: repeat {r + 1}/{of}")
            samples[(n, c)] += _round(send, maker, n, config.gen_tokens, c, r)
        if after_round:
            after_round(r)
        done = r + 1
    return [dataclasses.replace(measurement_from(ctx, n, c, samples[(n, c)]), repeats=done) for n, c in keys]


def rounds_of(config: BenchConfig) -> Iterator[tuple[int, str]]:
    """(round index, "of" for progress): ``repeat`` rounds, or rounds until ``duration_s`` has passed."""
    if config.duration_s is None:
        yield from ((r, str(config.repeat)) for r in range(config.repeat))
        return
    deadline = time.monotonic() + config.duration_s
    r = 0
    while r == 0 or time.monotonic() < deadline:
        yield r, f"{max(0.0, deadline - time.monotonic()):.0f} s left"
        r += 1


def measurement_from(ctx: MeasureContext, n_prompt: int, concurrency: int, samples: list[Sample]) -> Measurement:
    config, s = ctx.config, ctx.settings
    return Measurement(
        model=ctx.facts, mode=ctx.mode, prompt_tokens=n_prompt, gen_tokens=config.gen_tokens,
        concurrency=concurrency, repeats=config.repeat, warmup=config.warmup,
        n_threads=s.n_threads or 0, n_batch=s.n_batch, n_ubatch=s.n_ubatch, n_ctx=s.n_ctx,
        n_gpu_layers=s.n_gpu_layers, type_k=s.type_k, type_v=s.type_v, flash_attn=s.flash_attn,
        load_cold_ms=ctx.cold_ms, load_warm_ms=ctx.warm_ms, peak_rss_bytes=None, gpu_memory_bytes=None,
        samples=tuple(samples), measured_on=measured_on(), test_time=_now(),
    )


def _round(send: Send, maker: PromptMaker, n_prompt: int, gen_tokens: int, concurrency: int,
           index: int) -> list[Sample]:
    """``concurrency`` requests submitted at once, each with a prompt that starts elsewhere."""
    requests = [
        Request(prompt=maker.next(n_prompt), max_tokens=gen_tokens, temperature=0.0, seed=0)
        for _ in range(concurrency)
    ]
    run = timed(send)
    if concurrency == 1:
        return [sample_from(*run(requests[0]), index)]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return [sample_from(*done, index) for done in pool.map(run, requests)]


def timed(send: Send) -> Callable[[Request], tuple[list[Chunk], Result, float, float, float]]:
    """``send`` with the request's span on the monotonic clock the sensors' readings use."""

    def run(request: Request) -> tuple[list[Chunk], Result, float, float, float]:
        started = time.monotonic()
        chunks, result, e2e_ms = send(request)
        return chunks, result, e2e_ms, started, time.monotonic()

    return run


def engine_send(engine: Any) -> Send:
    """Run a request in-process; the caller's wait is the engine's own total (call to last token)."""

    def send(request: Request) -> tuple[list[Chunk], Result, float]:
        chunks, result = _collect(engine.stream(request))
        return chunks, result, result.timings.total_ms

    return send


def _collect(records: Iterable[Chunk | Result]) -> tuple[list[Chunk], Result]:
    chunks: list[Chunk] = []
    for record in records:
        if isinstance(record, Result):
            return chunks, record
        chunks.append(record)
    raise EngineError("the engine's stream ended without a final result")


def sample_from(chunks: list[Chunk], result: Result, e2e_ms: float, started_s: float | None, ended_s: float | None,
            repeat_index: int) -> Sample:
    t = result.timings
    token_ms = [ms for c in chunks for ms in c.token_ms]
    if token_ms and len(token_ms) == sum(c.tokens for c in chunks):  # each token's own time
        itl = differences(token_ms)
    else:  # chunk arrival times (through MQTT): a chunk of k tokens stands for k equal gaps
        itl = differences([c.elapsed_ms for c in chunks], [c.tokens for c in chunks])
    return Sample(
        ttft_ms=t.time_to_first_token_ms, prompt_tokens=t.prompt_tokens,
        cached_prompt_tokens=t.cached_prompt_tokens, prompt_ms=t.prompt_ms,
        prompt_tps=t.prompt_tokens_per_s, gen_tokens=t.completion_tokens,
        generation_ms=t.generation_ms, gen_tps=t.generation_tokens_per_s,
        queue_ms=t.queue_ms, total_ms=t.total_ms, e2e_ms=e2e_ms, itl_ms=tuple(itl), repeat_index=repeat_index,
        started_s=started_s, ended_s=ended_s,
    )


def daemon_send(config: BenchConfig) -> Any:
    """A Send through the daemon --via names (a context manager): its Ollama API for http://, else MQTT."""
    if (config.via or "").startswith("http://"):
        from edgekit.bench.via_http import http_send  # only with --via

        return http_send(config.via)
    if not (config.via or "").startswith(("mqtt://", "mqtts://")):
        raise UsageError(f"--via {config.via}: give the daemon's broker (mqtt://host:port, mqtts://host:port) "
                         "or its HTTP API (http://host:port)")
    from edgekit.bench.via_mqtt import mqtt_send  # paho and the daemon's protocol: only with --via

    return mqtt_send(config.via or "", config.prefix)


def _via_daemon(config: BenchConfig, facts: ModelFacts, settings: Settings, maker: PromptMaker,
                progress: Progress) -> list[Measurement]:
    """The same settings through a running daemon (MQTT, or HTTP for http://): e2e from the client,
    the engine's own timings inside."""
    mode = "http" if (config.via or "").startswith("http://") else "mqtt"
    with daemon_send(config) as send:
        context = MeasureContext(facts, settings, None, None, mode, config)
        return measure(context, send, maker, progress)


def _alternating_llama_bench(config: BenchConfig, info: gguf_file.GGUFInfo, settings: Settings,
                             progress: Progress) -> LlamaBenchRounds | None:
    """The per-round llama-bench runs, when asked for and when a second copy of the model fits
    beside the loaded engine; else None (llama-bench then runs once, after the engine is closed)."""
    if not config.llama_bench:
        return None
    if not fits_beside(info, settings):
        progress(f"{info.path.name}: not enough free memory to run llama-bench beside the engine; "
                 "it runs once after edgekit's rounds, so the ratios see different moments of the box")
        return None
    argvs = llama_bench_commands(config.llama_bench, info.path, config.prompt_tokens, config.gen_tokens, settings, 1)
    return LlamaBenchRounds(argvs, info.path.name, progress)


def _timed_load(engine_cls: Any, path: Path, settings: Settings, drop_cache: bool) -> float | None:
    """Load the model once and close it; the cold figure when the page cache could be dropped."""
    dropped = memory.drop_from_page_cache(path) if drop_cache else False
    started = time.perf_counter()
    with engine_cls(path, settings) as engine:
        ms = _load_ms(engine, started)
    if drop_cache and not dropped:
        log.warning("could not drop %s from the page cache: the cold load figure may be warm", path)
    return ms


def _load_ms(engine: Any, started: float) -> float:
    """The engine's own load time when it reports one, else the time the context manager took."""
    info = getattr(engine, "info", None)
    load_ms = getattr(info, "load_ms", None)
    return float(load_ms) if load_ms else (time.perf_counter() - started) * 1000


def _child_pid(engine: Any) -> int | None:
    for owner in (engine, getattr(engine, "info", None)):
        for name in ("pid", "child_pid", "worker_pid"):
            pid = getattr(owner, name, None)
            if isinstance(pid, int):
                return pid
    log.warning("the engine does not tell its worker's pid: peak RSS is not measured")
    return None


def model_facts(info: gguf_file.GGUFInfo) -> ModelFacts:
    return ModelFacts(
        path=str(info.path), file_name=info.path.name, file_type=info.file_type or "?",
        architecture=info.architecture, size_bytes=info.size, n_params=info.parameter_count,
        tensor_bytes=info.tensor_bytes,
    )


def host_facts() -> dict[str, Any]:
    """The box the figures come from."""
    return {"machine": platform.machine(), "cpu": _cpu_name(), "cores": os.cpu_count(),
            "system": platform.platform(), "backend": "CPU", "gpu": ""}


def measured_on() -> str:
    return f"this machine: {_cpu_name() or platform.machine()}, {os.cpu_count()} cores"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _llama_cpp_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama-cpp-python")
    except Exception:  # metadata missing: not worth failing a benchmark for
        return "?"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
