"""Clustering scores against scikit-learn, hand-made blobs and degenerate inputs."""
import warnings

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from gradsim_utils import clustering


def _blobs(n_per=10, k=3, dim=5, spread=0.1, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(k, dim))
    labels = np.repeat(np.arange(k), n_per)
    return centres[labels] + rng.normal(scale=spread, size=(k * n_per, dim)), labels


@pytest.mark.parametrize("method", clustering.METHODS)
def test_separated_blobs_are_recovered(method):
    x, labels = _blobs()
    res = clustering.evaluate_clustering(x, labels, method=method, n_resamples=3, n_init=2)
    assert res.estimate("ari").value == pytest.approx(1.0)
    assert res.estimate("nmi").value == pytest.approx(1.0)
    assert res.estimate("silhouette").value > 0.9
    assert res.values["ari"].shape == (4,)


def test_partition_scores_match_sklearn():
    x, labels = _blobs(spread=3.0, seed=1)
    clusters = np.roll(labels, 2)
    scores = clustering.partition_scores(x, labels, clusters)
    assert scores["ari"] == pytest.approx(adjusted_rand_score(labels, clusters))
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters))
    assert scores["silhouette"] == pytest.approx(silhouette_score(x, clusters))
    assert scores["silhouette_true"] == pytest.approx(silhouette_score(x, labels))


def test_predicted_label_baseline_equals_ari_of_predictions():
    x, labels = _blobs(seed=2)
    preds = labels.copy()
    preds[:4] = 1
    res = clustering.evaluate_partition(x, labels, preds, n_resamples=4)
    assert res.estimate("ari").value == pytest.approx(adjusted_rand_score(labels, preds))
    # the same partition scored twice gives a zero paired difference
    assert res.difference(res, "ari").high == 0


def test_single_point_cloud_rules():
    """A model predicting one class: identical gradient weights. No crash, no NaN, scores 0."""
    labels = np.repeat(np.arange(5), 4)
    x = np.ones((20, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in clustering.METHODS:
            res = clustering.evaluate_clustering(x, labels, method=method, n_resamples=2)
            assert len(np.unique(res.labels)) == 1
            for score in clustering.SCORES:
                assert res.estimate(score).value == 0.0
    assert clustering.silhouette(x, np.zeros(20)) == 0.0
    assert clustering.prepare(np.zeros((6, 3)), n_components=2).shape == (6, 2)
    assert not np.any(clustering.prepare(np.full((6, 3), 2.0), n_components=None))


def test_prepare_scales_and_reduces():
    x, _ = _blobs(dim=40)
    z = clustering.prepare(x, n_components=4)
    assert z.shape == (30, 4)
    z_all = clustering.prepare(x, n_components=None)
    assert z_all.std() == pytest.approx(1.0)
    # more components than samples are clipped
    assert clustering.prepare(x, n_components=100).shape == (30, 30)


def test_bad_inputs_name_the_parameter():
    x, labels = _blobs()
    with pytest.raises(ValueError, match="k=40"):
        clustering.evaluate_clustering(x, labels, k=40)
    with pytest.raises(ValueError, match="method"):
        clustering.cluster(x, 3, method="dbscan")
    with pytest.raises(ValueError, match="n_components"):
        clustering.prepare(x, n_components=0)
    with pytest.raises(ValueError, match="NaN"):
        clustering.prepare(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="labels"):
        clustering.evaluate_clustering(x, labels[:-1])
    with pytest.raises(ValueError, match="score"):
        clustering.evaluate_partition(x, labels, labels, n_resamples=0).estimate("purity")


def test_seed_tables_quoted():
    assert clustering.SEED000_CLUSTERING["kmeans"]["ResNet-50"]["GW"] == (1.00, 1.00, 0.89)
    assert clustering.SEED000_CLUSTERING["gmm"]["ResNet-34"]["GW"][0] == 0.61
    assert set(clustering.SEED000_CLUSTERING["gmm"]) == {f"ResNet-{d}" for d in (18, 34, 50, 101, 152)}


def test_evaluate_representations_matches_separate_calls():
    x, labels = _blobs(spread=2.0, seed=3)
    rng = np.random.default_rng(4)
    vectors = {"GW": x, "P": x + rng.normal(scale=1.0, size=x.shape)}
    preds = np.where(rng.random(len(labels)) < 0.2, (labels + 1) % 3, labels)
    kw = dict(n_components=3, n_resamples=3, seed=5)
    results, baseline = clustering.evaluate_representations(vectors, labels, preds, k=3, n_init=2, **kw)
    assert list(results) == [(r, m) for r in vectors for m in clustering.METHODS]
    for (rep, method), res in results.items():
        oracle = clustering.evaluate_clustering(vectors[rep], labels, method=method, k=3, n_init=2, **kw)
        for score in clustering.SCORES:
            np.testing.assert_array_equal(res.values[score], oracle.values[score])
    oracle = clustering.evaluate_partition(x, labels, preds, **kw)
    for score in clustering.SCORES:
        np.testing.assert_array_equal(baseline.values[score], oracle.values[score])
    with pytest.raises(ValueError, match="baseline_space"):
        clustering.evaluate_representations({"P": x}, labels, preds)


def test_refinement_share():
    fine = np.array([0, 0, 1, 1, 2, 2, 3])
    assert clustering.refinement_share(fine, [5, 5, 5, 5, 7, 7, 7]) == 1.0      # unions of fine groups
    assert clustering.refinement_share(fine, [5, 7, 5, 5, 7, 7, 7]) == pytest.approx(6 / 7)
    assert clustering.refinement_share(fine, fine) == 1.0
    rng = np.random.default_rng(0)                                              # brute-force oracle
    for _ in range(20):
        f, c = rng.integers(0, 6, 40), rng.integers(0, 4, 40)
        oracle = sum(max(np.sum(c[f == g] == v) for v in np.unique(c)) for g in np.unique(f)) / 40
        assert clustering.refinement_share(f, c) == pytest.approx(oracle)
    with pytest.raises(ValueError):
        clustering.refinement_share(fine, [0, 1])
