import numpy as np
import pytest

from gradsim_utils.stats import bootstrap_ci, mean_ci


def test_mean_ci_covers_the_true_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = mean_ci(rng.normal(1.0, 1.0, 50)), mean_ci(rng.normal(1.0, 1.0, 5000))
    assert small.low < 1.0 < small.high and large.low < 1.0 < large.high
    assert (large.high - large.low) < (small.high - small.low) / 5


def test_mean_ci_matches_the_normal_interval_for_large_samples():
    x = np.random.default_rng(1).exponential(size=4000)
    est = mean_ci(x, n_resamples=4000)
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert est.high - est.low == pytest.approx(2 * half, rel=0.1)


def test_paired_statistic_resamples_arrays_together():
    x = np.arange(100.0)
    est = bootstrap_ci((x, x), lambda a, b, axis: np.mean(a - b, axis=axis), paired=True)
    assert est.value == est.low == est.high == 0.0


def test_edge_cases_are_clear():
    assert mean_ci(np.full(10, 2.0)).low == 2.0
    with pytest.raises(ValueError, match="at least two"):
        mean_ci([1.0])
    with pytest.raises(ValueError, match="NaN"):
        mean_ci([1.0, np.nan, 2.0])
