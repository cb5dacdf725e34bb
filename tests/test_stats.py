import numpy as np
import pytest

from gradsim_utils.stats import (bootstrap_ci, runner_up_gap, image_bootstrap_counts, mean_ci, paired_difference, percentile_bounds,
                                 percentile_interval)


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


@pytest.mark.parametrize("draw", ["multinomial", "indices"])
def test_bootstrap_counts_keep_class_sizes_and_are_reproducible(draw):
    labels = np.repeat([3, 0, 7], [5, 2, 9])
    counts = image_bootstrap_counts(labels, 40, seed=1, draw=draw)
    assert counts.shape == (40, 16) and counts.dtype == np.int64 and (counts >= 0).all()
    for c in (0, 3, 7):
        assert (counts[:, labels == c].sum(1) == (labels == c).sum()).all()
    assert np.array_equal(counts, image_bootstrap_counts(labels, 40, seed=1, draw=draw))
    assert not np.array_equal(counts, image_bootstrap_counts(labels, 40, seed=2, draw=draw))


def test_indices_draw_counts_uniform_indices_class_by_class():
    labels = np.array([1, 0, 1, 0, 1])
    rng = np.random.default_rng(5)
    expected = np.zeros((3, 5), dtype=np.int64)
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        for r, row in enumerate(rng.integers(0, len(idx), size=(3, len(idx)))):
            np.add.at(expected[r], idx[row], 1)
    assert np.array_equal(image_bootstrap_counts(labels, 3, seed=5, draw="indices"), expected)


def test_bootstrap_counts_reject_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        image_bootstrap_counts(np.zeros((2, 2)), 3)
    with pytest.raises(ValueError, match="n_resamples"):
        image_bootstrap_counts([0, 1], 0)
    with pytest.raises(ValueError, match="draw"):
        image_bootstrap_counts([0, 1], 3, draw="poisson")


def test_percentile_interval_is_the_quantile_pair_of_finite_replicates():
    reps = np.random.default_rng(0).normal(size=999)
    est = percentile_interval(0.5, np.append(reps, [np.nan, np.nan]), level=0.9)
    # q = (1 - level) / 2, bit for bit the former np.percentile(reps, [50 (1 - level), 50 (1 + level)])
    q = (1 - 0.9) / 2
    assert (est.value, est.low, est.high, est.level) == (0.5, *np.quantile(reps, [q, 1 - q]), 0.9)
    assert [est.low, est.high] == list(np.percentile(reps, [50 * (1 - 0.9), 50 * (1 + 0.9)]))
    for undefined in ([np.nan, np.nan], []):  # no finite replicate: a zero-width interval
        none = percentile_interval(2.0, undefined)
        assert none.value == none.low == none.high == 2.0
    with pytest.raises(ValueError, match="level"):
        percentile_bounds(reps, level=95)


def test_percentile_bounds_along_an_axis_match_column_by_column():
    r = np.random.default_rng(1).normal(size=(200, 4))
    low, high = percentile_bounds(r, axis=0)
    assert low.shape == high.shape == (4,)
    for k in range(4):
        assert (low[k], high[k]) == percentile_bounds(r[:, k])


def test_paired_difference_needs_the_same_resamples():
    a, b = np.arange(10.0), np.arange(10.0)[::-1]
    est = paired_difference(1.0, a, 0.25, b)
    assert est.value == 0.75 and (est.low, est.high) == percentile_bounds(a - b)
    assert paired_difference(1.0, a, 1.0, a).high == 0
    with pytest.raises(ValueError, match="same resamples"):
        paired_difference(1.0, a, 1.0, a[:5])


def test_runner_up_gap_against_a_hand_loop():
    rng = np.random.default_rng(3)
    values = {"a": 0.6, "b": 0.5, "c": 0.55}
    reps = {m: v + rng.normal(0, 0.05, 400) for m, v in values.items()}
    gap = runner_up_gap(values, reps, "a")
    per_resample = [reps["a"][r] - max(reps["b"][r], reps["c"][r]) for r in range(400)]
    assert gap.value == pytest.approx(0.05)
    assert (gap.low, gap.high) == pytest.approx(tuple(np.quantile(per_resample, [0.025, 0.975])))
    # smaller is better: "b" leads by min(a, c) - b = 0.05
    low_gap = runner_up_gap(values, reps, "b", larger_is_better=False)
    assert low_gap.value == pytest.approx(0.05)
    assert runner_up_gap(values, reps, "b").value == pytest.approx(-0.1)


def test_runner_up_gap_needs_shared_candidates():
    with pytest.raises(ValueError, match="name must be one of"):
        runner_up_gap({"a": 1.0}, {"a": np.zeros(3)}, "a")
    with pytest.raises(ValueError, match="different candidates"):
        runner_up_gap({"a": 1.0, "b": 0.0}, {"a": np.zeros(3), "c": np.zeros(3)}, "a")
    with pytest.raises(ValueError, match="same resamples"):
        runner_up_gap({"a": 1.0, "b": 0.0}, {"a": np.zeros(3), "b": np.zeros(4)}, "a")
