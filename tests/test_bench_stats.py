"""Benchmark statistics agree with numpy's definitions on known data."""

import numpy as np
import pytest

from edgekit.bench.stats import compare_rounds, differences, mean, percentile, stdev, summarize

DATA = [12.5, 3.0, 7.25, 100.0, 0.5, 42.0, 42.0, 8.125, 19.0, 61.5, 5.0]


@pytest.mark.parametrize("q", [0, 1, 5, 25, 50, 75, 95, 99, 100])
def test_percentile_matches_numpy_linear_interpolation(q):
    assert percentile(DATA, q) == pytest.approx(float(np.percentile(DATA, q)), rel=1e-12)


def test_mean_and_sample_stdev_match_numpy():
    assert mean(DATA) == pytest.approx(float(np.mean(DATA)), rel=1e-12)
    assert stdev(DATA) == pytest.approx(float(np.std(DATA, ddof=1)), rel=1e-12)


def test_summary_of_random_samples_matches_numpy():
    values = np.random.default_rng(7).lognormal(3.0, 0.5, size=997).tolist()
    s = summarize(values)
    assert s.n == 997
    assert (s.min, s.max) == (min(values), max(values))
    for got, q in ((s.p50, 50), (s.p95, 95), (s.p99, 99)):
        assert got == pytest.approx(float(np.percentile(values, q)), rel=1e-12)
    assert s.stdev == pytest.approx(float(np.std(values, ddof=1)), rel=1e-12)


def test_empty_and_single_samples_give_zero_spread():
    assert summarize([]).n == 0 and summarize([]).mean == 0.0
    one = summarize([4.0])
    assert (one.mean, one.stdev, one.p99) == (4.0, 0.0, 4.0)


def test_percentile_outside_range_is_refused():
    with pytest.raises(ValueError):
        percentile(DATA, 101)


def test_differences_spread_a_multi_token_chunk_over_its_tokens():
    # chunks at 10, 30 (1 token), 90 (3 tokens): gaps 20, then 60/3 three times
    assert differences([10.0, 30.0, 90.0], [1, 1, 3]) == [20.0, 20.0, 20.0, 20.0]
    assert differences([0.0, 5.0, 15.0]) == [5.0, 10.0]


def test_alternating_rounds_compare_pair_by_pair_and_best_against_best():
    ours, theirs = [40.0, 30.0, 45.0], [50.0, 30.0, 44.0]
    c = compare_rounds(ours, theirs)
    assert c.n == 3 and c.ours_median == 40.0 and c.theirs_median == 44.0
    assert c.median_ratio == pytest.approx(float(np.median(np.array(ours) / np.array(theirs))))
    assert c.best_ratio == pytest.approx(45.0 / 50.0)
    with pytest.raises(ValueError, match="one positive reference rate"):
        compare_rounds([1.0], [1.0, 2.0])
