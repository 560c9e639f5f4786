"""Summary statistics for benchmark samples: mean ± stdev, min/max and percentiles.

Plain Python so a summary is exact and cheap; the definitions match numpy's defaults
(percentiles by linear interpolation between closest ranks) and llama-bench's stdev
(sample standard deviation, Bessel's correction), so figures compare one to one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean; 0 for no values (a figure that was not measured)."""
    return math.fsum(values) / len(values) if values else 0.0


def stdev(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1), as llama-bench reports; 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    centre = mean(values)
    return math.sqrt(math.fsum((v - centre) ** 2 for v in values) / (len(values) - 1))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation, as numpy.percentile's default."""
    if not values:
        return 0.0
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """One figure over its samples: the spread a reader needs to trust a mean."""

    n: int
    mean: float
    stdev: float
    min: float
    max: float
    p50: float
    p95: float
    p99: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.1f} ± {self.stdev:.1f}"


def summarize(values: Sequence[float]) -> Summary:
    """Summarize samples; an empty list gives an all-zero Summary with n = 0."""
    values = [float(v) for v in values]
    return Summary(
        n=len(values),
        mean=mean(values),
        stdev=stdev(values),
        min=min(values) if values else 0.0,
        max=max(values) if values else 0.0,
        p50=percentile(values, 50),
        p95=percentile(values, 95),
        p99=percentile(values, 99),
    )


def differences(times: Sequence[float], counts: Sequence[int] | None = None) -> list[float]:
    """Gaps between successive timestamps, each divided by the tokens it covers.

    A chunk that carries k tokens stands for k inter-token gaps of equal length, so
    the per-token latency of that gap is (t[i] - t[i-1]) / k, repeated k times.
    """
    gaps: list[float] = []
    for i in range(1, len(times)):
        k = max(1, counts[i]) if counts else 1
        gaps.extend([(times[i] - times[i - 1]) / k] * k)
    return gaps


@dataclass(frozen=True)
class PairedRatio:
    """Our rate against a reference rate, the two measured in alternation, round by round.

    On a shared or throttling box a single run moves by 10-20%; pairing each of our
    rounds with the reference's run next to it cancels slow drifts, and each tool's best
    round is its least disturbed one. Both views are given, so neither is cherry-picked.
    """

    n: int
    ours_median: float
    theirs_median: float
    median_ratio: float  # the median over rounds of ours / theirs
    best_ratio: float  # our best round / their best round

    def __str__(self) -> str:
        return (f"{self.ours_median:.2f} vs {self.theirs_median:.2f} (medians of {self.n} alternating rounds): "
                f"paired median ratio {self.median_ratio:.3f}, best against best {self.best_ratio:.3f}")


def compare_rounds(ours: Sequence[float], theirs: Sequence[float]) -> PairedRatio:
    """Compare rates (higher is better) measured in alternating rounds, pair by pair."""
    if len(ours) != len(theirs) or not ours or min(theirs) <= 0:
        raise ValueError("compare_rounds needs one positive reference rate for each of our rates")
    return PairedRatio(
        n=len(ours), ours_median=percentile(ours, 50), theirs_median=percentile(theirs, 50),
        median_ratio=percentile([a / b for a, b in zip(ours, theirs)], 50), best_ratio=max(ours) / max(theirs),
    )
