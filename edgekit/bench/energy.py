"""Power, energy per token, heat and clocks of one setting, from the sampler's readings.

Energy comes from the cumulative joules of the readings (counters unwrapped, watts integrated),
interpolated linearly at each request's start and end: a request shorter than the sampling
interval gets the average power around it times its duration. Requests that overlap
(concurrency > 1) are counted once, over the union of their spans.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import replace

from edgekit.bench.results import DeviceFigures, Measurement, Sample, TimePoint
from edgekit.bench.sampler import Sampler
from edgekit.bench.sensors import DeviceFacts, Reading


def with_device_figures(found: list[Measurement], sampler: Sampler | None, series: bool) -> list[Measurement]:
    """Each setting's power, energy per token, heat and clocks; with ``series``, its time line too."""
    if sampler is None:
        return found
    readings, facts = sampler.snapshot(), sampler.facts
    return [replace(m, device=device_figures(m.samples, readings, facts, sampler.interval_s),
                    timeline=timeline(m.samples, readings) if series else ()) for m in found]


def device_figures(samples: Sequence[Sample], readings: Sequence[Reading], facts: DeviceFacts,
                   interval_s: float | None) -> DeviceFigures:
    """The figures over the spans of ``samples``; None for every figure the box has no sensor for."""
    spans = merged_spans([(s.started_s, s.ended_s) for s in samples if s.started_s is not None and s.ended_s is not None])
    inside = [r for r in readings if any(a - (interval_s or 0) <= r.t_s <= b + (interval_s or 0) for a, b in spans)]
    seconds = sum(b - a for a, b in spans) if spans else None
    energy = energy_over(spans, readings) if spans else None
    tokens = sum(s.gen_tokens for s in samples)
    temps = [r.temp_c for r in inside if r.temp_c is not None]
    clocks = [r.cpu_mhz for r in inside if r.cpu_mhz is not None]
    flags = [r for r in inside if r.throttled is not None]
    return DeviceFigures(
        power_sources=facts.power_sources, power_mode=facts.power_mode, governor=facts.governor,
        energy_j=energy, seconds=seconds,
        avg_power_w=energy / seconds if energy is not None and seconds else None,
        j_per_token=energy / tokens if energy is not None and tokens else None,
        tokens_per_j=tokens / energy if energy and tokens else None,
        temp_max_c=max(temps) if temps else None, cpu_mhz_min=min(clocks) if clocks else None,
        cpu_max_mhz=max((r.cpu_max_mhz for r in inside if r.cpu_max_mhz), default=None),
        throttled=any(r.throttled for r in flags) if flags else None,
        throttle_reasons=tuple(dict.fromkeys(reason for r in flags for reason in r.reasons)),
        sample_interval_s=interval_s, readings=len(inside),
    )


def merged_spans(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping (start, end) spans joined: concurrent requests share the box's power."""
    merged: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def energy_over(spans: Sequence[tuple[float, float]], readings: Sequence[Reading]) -> float | None:
    """Joules used during ``spans``; None without an energy reading on each side of every span."""
    points = [(r.t_s, r.energy_j) for r in readings if r.energy_j is not None]
    total = 0.0
    for a, b in spans:
        ea, eb = _at(points, a), _at(points, b)
        if ea is None or eb is None:
            return None
        total += eb - ea
    return total


def _at(points: Sequence[tuple[float, float]], t: float) -> float | None:
    """Cumulative joules at time ``t``, linear between the readings on either side."""
    times = [p[0] for p in points]
    i = bisect.bisect_left(times, t)
    if i < len(points) and times[i] == t:
        return points[i][1]
    if i == 0 or i == len(points):
        return None
    (t0, e0), (t1, e1) = points[i - 1], points[i]
    return e0 + (e1 - e0) * (t - t0) / (t1 - t0)


def timeline(samples: Sequence[Sample], readings: Sequence[Reading]) -> tuple[TimePoint, ...]:
    """One point per reading inside the setting's span: tokens/s made since the previous reading
    (each request's tokens spread evenly over its span), watts from the energy between the two readings, temperature, clocks."""
    spans = [(s.started_s, s.ended_s, s.gen_tokens) for s in samples
             if s.started_s is not None and s.ended_s is not None and s.ended_s > s.started_s]
    if not spans:
        return ()
    start, end = min(a for a, _, _ in spans), max(b for _, b, _ in spans)
    inside = [r for r in readings if start <= r.t_s <= end + 1e-9]
    points = []
    for prev, cur in zip(inside, inside[1:]):
        dt = cur.t_s - prev.t_s
        tokens = sum(_share(n, a, b, prev.t_s, cur.t_s) for a, b, n in spans)
        watts = (cur.energy_j - prev.energy_j) / dt if cur.energy_j is not None and prev.energy_j is not None else None
        points.append(TimePoint(
            t_s=round(cur.t_s - start, 3), tokens_per_s=tokens / dt if dt > 0 else None, power_w=watts,
            temp_c=cur.temp_c, cpu_mhz=cur.cpu_mhz, gpu_mhz=cur.gpu_mhz, throttled=cur.throttled,
        ))
    return tuple(points)


def _share(tokens: int, a: float, b: float, lo: float, hi: float) -> float:
    """The part of a request's tokens made between lo and hi, taking its rate as even over a..b."""
    overlap = min(b, hi) - max(a, lo)
    return tokens * overlap / (b - a) if overlap > 0 else 0.0
