import numpy as np
import pytest

from gradsim_utils.stats import (bootstrap_ci, runner_up_gap, image_bootstrap_counts, mean_ci, paired_difference, percentile_bounds,
                                 percentile_interval, pool_seeds, seed_draws, two_level_interval, weighted_means)


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


def test_seed_draws_are_reproducible_indices_and_one_seed_is_all_zeros():
    draws = seed_draws(3, 500, seed=4)
    assert draws.shape == (500, 3) and draws.min() == 0 and draws.max() == 2
    assert np.array_equal(draws, seed_draws(3, 500, seed=4))
    assert not np.array_equal(draws, seed_draws(3, 500, seed=5))
    assert not seed_draws(1, 20).any()
    with pytest.raises(ValueError, match="n_seeds"):
        seed_draws(0, 10)


def test_pool_seeds_against_a_hand_loop_with_nan_left_out():
    rng = np.random.default_rng(0)
    per_seed = rng.normal(size=(3, 1 + 50, 2))
    per_seed[1, 7, 0] = np.nan
    per_seed[:, 9, 1] = np.nan
    draws = seed_draws(3, 50, seed=1)
    pooled = pool_seeds(per_seed, draws)
    assert pooled.shape == (51, 2)
    assert np.allclose(pooled[0], per_seed[:, 0].mean(axis=0))
    for r in range(1, 51):
        for k in range(2):
            drawn = [per_seed[s, r, k] for s in draws[r - 1]]
            expected = np.nanmean(drawn) if np.isfinite(drawn).any() else np.nan
            assert np.allclose(pooled[r, k], expected, equal_nan=True)
    assert np.isnan(pooled[9, 1])
    # one seed: today's image-only replicates, unchanged
    assert np.array_equal(pool_seeds(per_seed[:1], seed_draws(1, 50)), per_seed[0], equal_nan=True)
    with pytest.raises(ValueError, match="draws must be seed indices"):
        pool_seeds(per_seed, seed_draws(2, 50))


def test_pooled_differences_stay_paired():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 101)), rng.normal(size=(3, 101))
    draws = seed_draws(3, 100)
    assert np.allclose(pool_seeds(a, draws) - pool_seeds(b, draws), pool_seeds(a - b, draws))


def test_weighted_means_equal_the_mean_of_the_repeated_units():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2], [4, 6, 5])
    values = rng.normal(size=(2, 15))
    counts = image_bootstrap_counts(labels, 30, seed=3)
    means = weighted_means(values, counts)
    assert means.shape == (2, 31)
    assert np.allclose(means[:, 0], values.mean(axis=1))
    for r in range(30):
        assert np.allclose(means[:, r + 1], np.repeat(values, counts[r], axis=1).mean(axis=1))
    by_class = weighted_means(values, counts, groups=labels)
    for r in range(30):
        class_means = [np.repeat(values[:, labels == c], counts[r, labels == c], axis=1).mean(axis=1) for c in range(3)]
        assert np.allclose(by_class[:, r + 1], np.mean(class_means, axis=0))
    with pytest.raises(ValueError, match="share N"):
        weighted_means(values[:, :3], counts)


def test_two_level_interval_widens_with_seed_variation_only():
    rng = np.random.default_rng(5)
    unit_effects = rng.normal(size=200)
    no_seed_effect = np.tile(unit_effects, (3, 1))
    images_only = two_level_interval(unit_effects[None], n_resamples=2000)
    same = two_level_interval(no_seed_effect, n_resamples=2000)
    assert same.value == pytest.approx(images_only.value)
    assert same.high - same.low == pytest.approx(images_only.high - images_only.low, rel=0.1)
    seed_effects = np.array([-1.0, 0.0, 1.0])[:, None]
    wide = two_level_interval(no_seed_effect + seed_effects, n_resamples=2000)
    assert wide.value == pytest.approx(same.value)
    assert wide.high - wide.low > 3 * (same.high - same.low)
    # nested: each seed its own units; one seed is the image-bootstrap interval of its mean
    nested = two_level_interval([unit_effects[:150], unit_effects[50:] + 0.5, unit_effects[:100]])
    assert nested.value == pytest.approx(np.mean([unit_effects[:150].mean(), unit_effects[50:].mean() + 0.5,
                                                  unit_effects[:100].mean()]))
    assert nested.low < nested.value < nested.high


def test_a_ranking_that_holds_on_one_seed_only_is_not_certain_when_pooled():
    """A beats B on seed 0's images clearly, B beats A on seed 1's: the pooled gap's interval holds 0."""
    rng = np.random.default_rng(6)
    labels = np.zeros(300, dtype=int)
    counts = image_bootstrap_counts(labels, 1000, seed=0)
    a = np.stack([1.0 + rng.normal(0, 0.2, 300), 0.0 + rng.normal(0, 0.2, 300)])
    b = np.stack([0.0 + rng.normal(0, 0.2, 300), 1.0 + rng.normal(0, 0.2, 300)])
    per_seed = {"A": weighted_means(a, counts), "B": weighted_means(b, counts)}
    seed0 = runner_up_gap({m: v[0, 0] for m, v in per_seed.items()}, {m: v[0, 1:] for m, v in per_seed.items()}, "A")
    assert seed0.low > 0
    draws = seed_draws(2, 1000)
    pooled = {m: pool_seeds(v, draws) for m, v in per_seed.items()}
    gap = runner_up_gap({m: v[0] for m, v in pooled.items()}, {m: v[1:] for m, v in pooled.items()}, "A")
    assert gap.low < 0 < gap.high


def test_result_objects_pool_training_runs_field_by_field():
    from gradsim_utils.clustering import ClusterResult
    from gradsim_utils.label_similarity import Agreement
    from gradsim_utils.similarity import PairStatistics
    rng = np.random.default_rng(0)
    n_res = 50
    draws = seed_draws(3, n_res, seed=2)
    runs = [PairStatistics(*rng.normal(size=(3, 1 + n_res))) for _ in range(3)]
    pooled = PairStatistics.pooled(runs, draws)
    for field in ("within", "between", "auc"):
        expected = [np.mean([getattr(runs[s], field)[0] for s in range(3)])]
        expected += [np.mean([getattr(runs[s], field)[r] for s in draws[r - 1]]) for r in range(1, 1 + n_res)]
        np.testing.assert_allclose(getattr(pooled, field), expected)
    np.testing.assert_array_equal(PairStatistics.pooled(runs[:1], seed_draws(1, n_res)).auc, runs[0].auc)
    # the difference of pooled statistics is the pooled difference (paired over runs and images)
    other = [PairStatistics(*rng.normal(size=(3, 1 + n_res))) for _ in range(3)]
    diff = pooled.difference(PairStatistics.pooled(other, draws), "within")
    direct = pool_seeds([a.within - b.within for a, b in zip(runs, other)], draws)
    assert diff.value == pytest.approx(direct[0]) and diff.low == pytest.approx(np.percentile(direct[1:], 2.5))

    clusters = [ClusterResult(labels=np.full(4, s), values={"ARI": rng.normal(size=1 + n_res)}) for s in range(3)]
    pooled_clusters = ClusterResult.pooled(clusters, draws)
    np.testing.assert_allclose(pooled_clusters.values["ARI"], pool_seeds([c.values["ARI"] for c in clusters], draws))
    assert (pooled_clusters.labels == 0).all()

    agreements = [Agreement(point={("gw", "spearman"): float(s)}, samples={("gw", "spearman"): rng.normal(size=n_res)},
                            k=5, matrices={"gw": np.eye(2) * s}) for s in range(3)]
    pooled_agreement = Agreement.pooled(agreements, draws)
    assert pooled_agreement.point[("gw", "spearman")] == pytest.approx(1.0) and pooled_agreement.k == 5
    np.testing.assert_allclose(pooled_agreement.samples[("gw", "spearman")],
                               [np.mean([agreements[s].samples[("gw", "spearman")][r] for s in draws[r]])
                                for r in range(n_res)])
    assert (pooled_agreement.matrices["gw"] == 0).all()
