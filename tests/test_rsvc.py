"""RSVC (seed 003): NNLS, cross-validated Lasso similarity, image-grouped folds, IG, patches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradsim_utils import rsvc


def _planted(n_images=40, per_image=6, k=4, c=30, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.gamma(1.0, 1.0, (k, c)) * (rng.random((k, c)) < 0.5)
    U = rng.gamma(1.0, 1.0, (n_images * per_image, k))
    groups = np.repeat(np.arange(n_images), per_image)
    return U, W, groups, rng


def test_nnls_reproduces_planted_coefficients():
    U, W, _, _ = _planted()
    got = rsvc.nnls_coefficients(U @ W, W)
    np.testing.assert_allclose(got, U, atol=1e-8)
    assert (got >= 0).all()


def test_nnls_matches_sklearn_with_fixed_components():
    from sklearn.decomposition import non_negative_factorization

    U, W, _, rng = _planted(n_images=10)
    A = U @ W + rng.gamma(0.5, 0.05, (len(U), W.shape[1]))  # noisy: the fit is not exact
    oracle, _, _ = non_negative_factorization(A, H=W, n_components=W.shape[0], update_H=False,
                                              init="custom", solver="cd", tol=1e-10, max_iter=3000)
    np.testing.assert_allclose(rsvc.nnls_coefficients(A, W), oracle, atol=1e-4)


def test_fit_concepts_reconstructs_low_rank_data_and_rejects_negative():
    U, W, _, _ = _planted()
    con = rsvc.fit_concepts(U @ W, n_concepts=4)
    rel = np.linalg.norm(con.U @ con.W - U @ W) / np.linalg.norm(U @ W)
    assert rel < 0.02
    with pytest.raises(ValueError, match="negative"):
        rsvc.fit_concepts(-(U @ W), n_concepts=2)
    with pytest.raises(ValueError, match="n_concepts"):
        rsvc.fit_concepts(U @ W, n_concepts=100)


def test_regression_recovers_a_planted_linear_map_and_not_independent_data():
    U, _, groups, rng = _planted(n_images=60)
    M = rng.normal(size=(U.shape[1], 25))
    X = U @ M + 0.01 * rng.normal(size=(len(U), 25))            # model 2 = linear map of model 1
    true, pred = rsvc.cross_validated_prediction(X, U, groups, n_folds=5, alpha=0.01)
    r = rsvc.pearson_columns(true, pred)
    assert r.min() > 0.97
    X_ind = rng.normal(size=X.shape)                               # independent activations
    true, pred = rsvc.cross_validated_prediction(X_ind, U, groups, n_folds=5, alpha=0.1)
    assert np.abs(rsvc.pearson_columns(true, pred)).max() < 0.15


def test_folds_never_split_an_image(monkeypatch):
    from sklearn import model_selection

    seen = []
    real = model_selection.GroupKFold.split

    def spy(self, X, y=None, groups=None):
        for train, test in real(self, X, y, groups):
            seen.append((train, test))
            yield train, test

    monkeypatch.setattr(model_selection.GroupKFold, "split", spy)
    U, _, groups, rng = _planted(n_images=13, per_image=5)
    rng.shuffle(groups)                                          # patches of an image scattered
    rsvc.cross_validated_prediction(rng.normal(size=(len(U), 8)), U, groups, n_folds=5)
    assert len(seen) == 5
    tested = np.concatenate([test for _, test in seen])
    assert sorted(tested) == list(range(len(U)))                  # every patch held out once
    for train, test in seen:
        assert not set(groups[train]) & set(groups[test])
    with pytest.raises(ValueError, match="n_folds"):
        rsvc.cross_validated_prediction(rng.normal(size=(len(U), 8)), U, groups, n_folds=14)


def test_pearson_columns_matches_scipy_and_constant_gives_zero():
    from scipy.stats import pearsonr

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    b[:, 1] += 2 * a[:, 1]
    expected = [pearsonr(a[:, j], b[:, j])[0] for j in range(3)]
    np.testing.assert_allclose(rsvc.pearson_columns(a, b), expected, rtol=1e-10)
    b[:, 2] = 1.0
    assert rsvc.pearson_columns(a, b)[2] == 0.0


def test_group_bootstrap_interval_covers_value_and_narrows_with_more_images():
    rng = np.random.default_rng(2)
    def interval(n_images):
        groups = np.repeat(np.arange(n_images), 4)
        y = rng.normal(size=(len(groups), 2))
        yhat = y + rng.normal(size=y.shape)
        return rsvc.group_bootstrap_pearson(y, yhat, groups, n_resamples=500)
    value, low, high = interval(20)
    assert (low <= value).all() and (value <= high).all()
    _, low2, high2 = interval(400)
    assert ((high2 - low2) < (high - low)).all()


def test_max_correlation_finds_permuted_copy():
    U, _, _, rng = _planted()
    perm = rng.permutation(U.shape[1])
    np.testing.assert_allclose(rsvc.max_correlation(U, 3 * U[:, perm]), 1.0)


@pytest.mark.parametrize("linear", [True, False])
def test_integrated_gradients_completeness(linear):
    torch.manual_seed(0)
    U, W, _, _ = _planted(n_images=4, per_image=3)
    head = nn.Linear(W.shape[1], 5) if linear else nn.Sequential(
        nn.Linear(W.shape[1], 16), nn.Tanh(), nn.Linear(16, 5))
    attr = rsvc.concept_attributions(U, W, head, target=2, n_steps=30)
    with torch.no_grad():
        Wt = torch.tensor(W, dtype=torch.float32)
        out = head(torch.tensor(U, dtype=torch.float32) @ Wt)[:, 2] - head(torch.zeros(1, W.shape[1]))[:, 2]
    np.testing.assert_allclose(attr.sum(1), out.double().numpy(), rtol=0.01, atol=1e-4)
    if linear:  # a linear head: IG is exactly u_j * (W fc_t)_j
        exact = U * (W @ head.weight[2].detach().double().numpy())
        np.testing.assert_allclose(attr, exact, rtol=1e-4, atol=1e-5)


def test_patches_cover_image_and_marker_coverage():
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    p = rsvc.extract_patches(images, patch_size=9, stride=7)
    assert rsvc.patch_positions(32, 9, 7) == [0, 7, 14, 21]
    assert rsvc.patch_positions(224, 64, 51) == [0, 51, 102, 153]      # the reference's grid
    assert len(p) == 2 * 16 and p.images.shape[1:] == (3, 9, 9)
    x0, y0, x1, y1 = p.boxes[30].tolist()
    assert torch.equal(p.images[30], images[p.image_index[30], :, y0:y1, x0:x1])
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True                                        # inside the first patch only
    cov = rsvc.patch_marker_coverage(p, masks)
    assert cov[0] == 1.0 and cov[16:].eq(0).all()
    assert rsvc.concept_purity(np.eye(32)[:, :2], cov.numpy(), top=1).tolist() == [1.0, 0.0]


def test_compare_class_flags_the_concept_model_2_lacks():
    U, W, groups, rng = _planted(n_images=40, per_image=6, k=4, c=30)
    acts1 = U @ W
    M = rng.normal(size=(3, 40))
    acts2 = np.maximum(U[:, :3] @ M + 0.05 * rng.normal(size=(len(U), 40)), 0)   # no concept 3
    one, two = rsvc.compare_both_directions(acts1, acts2, groups, n_concepts=4, n_resamples=200)
    match = [int(np.argmax(rsvc.pearson_columns(np.repeat(one.coefficients[:, [j]], 4, 1), U))) for j in range(4)]
    missing = match.index(3)
    assert np.argmin(one.similarity) == missing
    assert one.similarity[missing] < 0.3 < np.delete(one.similarity, missing).min()
    assert (one.ceiling > 0.9).all()
    assert two.similarity.shape == (4,) and one.importance is None


def _lasso_by_hand(X, Y, groups, n_folds, alpha, all_rows):
    """Oracle for cross_validated_prediction: numpy z-scores (population sd, as sklearn and the
    reference's ``standardize``) from all rows or from each fold's training rows, sklearn's Lasso."""
    from sklearn.linear_model import Lasso
    from sklearn.model_selection import GroupKFold

    z = lambda a, rows: (a - a[rows].mean(0)) / a[rows].std(0)
    true, pred = np.zeros_like(Y), np.zeros_like(Y)
    for train, test in GroupKFold(n_splits=n_folds).split(X, groups=groups):
        rows = np.arange(len(X)) if all_rows else train
        xz, yz = z(X, rows), z(Y, rows)
        lasso = Lasso(alpha=alpha, max_iter=1000, precompute=True).fit(xz[train], yz[train])
        true[test], pred[test] = yz[test], lasso.predict(xz[test])
    return true, pred


@pytest.mark.parametrize("standardise", rsvc.STANDARDISATIONS)
def test_regression_standardisation_matches_a_hand_written_oracle(standardise):
    U, _, groups, rng = _planted(n_images=20, per_image=4)
    X = U @ rng.normal(size=(U.shape[1], 12)) + 0.5 * rng.normal(size=(len(U), 12))
    X[groups < 4] += 3.0                              # a shift that only some folds hold out
    true, pred = rsvc.cross_validated_prediction(X, U, groups, n_folds=5, alpha=0.1, standardise=standardise)
    t_hand, p_hand = _lasso_by_hand(X, U, groups, 5, 0.1, all_rows=standardise == "all_rows")
    np.testing.assert_allclose(true, t_hand, atol=1e-10)
    np.testing.assert_allclose(pred, p_hand, atol=1e-6)
    other = "per_fold" if standardise == "all_rows" else "all_rows"
    t_other, _ = rsvc.cross_validated_prediction(X, U, groups, n_folds=5, alpha=0.1, standardise=other)
    assert not np.allclose(true, t_other)             # the two choices differ on the same data
    assert rsvc.held_out_similarity(X, U, groups, 5, 0.1, standardise) == pytest.approx(
        rsvc.pearson_columns(true, pred))
    with pytest.raises(ValueError, match="standardise"):
        rsvc.cross_validated_prediction(X, U, groups, standardise="global")


def test_compare_class_similarity_is_held_out_similarity_and_defaults_unchanged():
    U, W, groups, rng = _planted(n_images=12, per_image=4, k=3, c=10)
    acts2 = np.maximum(U @ rng.normal(size=(3, 15)), 0)
    res = rsvc.compare_class(U @ W, acts2, groups, n_concepts=3, n_resamples=50)
    np.testing.assert_allclose(res.similarity, rsvc.held_out_similarity(acts2, res.coefficients, groups))
    ref = rsvc.compare_class(U @ W, acts2, groups, n_concepts=3, n_resamples=50, standardise="all_rows")
    np.testing.assert_allclose(ref.similarity, rsvc.held_out_similarity(acts2, ref.coefficients, groups,
                                                                        standardise="all_rows"))


def test_log_softmax_integrated_gradients_match_captum_and_completeness():
    from captum.attr import IntegratedGradients

    torch.manual_seed(0)
    U, W, _, _ = _planted(n_images=4, per_image=3)
    head = nn.Sequential(nn.Linear(W.shape[1], 16), nn.Tanh(), nn.Linear(16, 5))
    Ut, Wt = torch.tensor(U, dtype=torch.float32), torch.tensor(W, dtype=torch.float32)
    attr = rsvc.concept_attributions(U, W, head, target=2, n_steps=30, score="log_softmax")
    oracle = IntegratedGradients(lambda u: torch.log_softmax(head(u @ Wt), -1)).attribute(
        Ut, baselines=0.0, target=2, n_steps=30)
    np.testing.assert_allclose(attr, oracle.detach().double().numpy(), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        gap = torch.log_softmax(head(Ut @ Wt), -1)[:, 2] - torch.log_softmax(head(torch.zeros(1, W.shape[1])), -1)[:, 2]
    np.testing.assert_allclose(attr.sum(1), gap.double().numpy(), rtol=0.01, atol=1e-4)
    logit = rsvc.concept_attributions(U, W, head, target=2, n_steps=30)
    assert not np.allclose(attr, logit, atol=1e-3)     # the two scores give different attributions
    res = rsvc.compare_class(U @ W, U @ W, np.repeat(np.arange(4), 3), n_concepts=W.shape[0], head=head, target=2,
                             n_resamples=20, importance_score="log_softmax")
    np.testing.assert_allclose(res.importance, rsvc.concept_attributions(
        res.coefficients, res.concepts.W, head, 2, 30, "log_softmax").mean(0))
    with pytest.raises(ValueError, match="score"):
        rsvc.concept_attributions(U, W, head, target=2, score="softmax")


def test_compare_pair_is_the_pieces_with_each_model_s_own_head_and_target():
    U, W, groups, rng = _planted(n_images=10, per_image=4, k=3, c=12)
    acts1, acts2 = U @ W, np.maximum(U @ rng.normal(size=(3, 9)), 0)
    torch.manual_seed(0)
    heads, targets = (nn.Linear(12, 6), nn.Linear(9, 4)), (5, 1)    # different classes per model
    kw = dict(n_folds=5, alpha=0.1, ig_steps=20, n_resamples=50, seed=0)
    one_to_two, two_to_one = rsvc.compare_pair(acts1, acts2, groups, 3, heads, targets, **kw)
    assert list(one_to_two) == list(rsvc.PAIR_MEASURES)
    one, two = rsvc.compare_both_directions(acts1, acts2, groups, 3, head1=heads[0], head2=heads[1],
                                            target=5, target2=1, **kw)
    for got, res, head, target, predictor in ((one_to_two, one, heads[0], 5, acts2), (two_to_one, two, heads[1], 1, acts1)):
        for key in ("similarity", "ci_low", "ci_high", "ceiling", "max_corr", "importance"):
            np.testing.assert_array_equal(got[key], getattr(res, key))
        # importance of the logit of a linear head, exact: u_j (W w_t)_j (exercise 7.3)
        exact = (res.coefficients * (res.concepts.W @ head.weight[target].detach().double().numpy())).mean(0)
        np.testing.assert_allclose(got["importance"], exact, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got["importance (log-softmax)"], rsvc.concept_attributions(
            res.coefficients, res.concepts.W, head, target, 20, "log_softmax").mean(0))
        np.testing.assert_allclose(got["similarity (all rows z-scored)"], rsvc.held_out_similarity(
            predictor, res.coefficients, groups, 5, 0.1, "all_rows"))
    same_target = rsvc.compare_both_directions(acts1, acts2, groups, 3, head1=heads[0], head2=heads[1],
                                               target=1, **kw)[1]
    np.testing.assert_allclose(same_target.importance, two.importance)   # target2 defaults to target
    plain = rsvc.compare_pair(acts1, acts2, groups, 3, **kw)
    assert all(np.isnan(d["importance"]).all() and np.isnan(d["importance (log-softmax)"]).all() for d in plain)
    np.testing.assert_array_equal(plain[0]["similarity"], one_to_two["similarity"])


def test_marker_models_training_seed_changes_the_weights_not_the_cache_of_the_first_run(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADSIM_CACHE", str(tmp_path))
    _, _, analysis, _ = rsvc.marker_benchmarks(0, 0.5, 7, 2, 32, 0, include_train=False)
    kw = dict(epochs=1, seed=0, device="cpu", progress=False)
    first = rsvc.marker_models("tiny-resnet18", 0, 0.5, 7, analysis, **kw)
    n_cached = len(list((tmp_path / "models").iterdir()))
    again = rsvc.marker_models("tiny-resnet18", 0, 0.5, 7, analysis, train_seed=0, **kw)
    assert len(list((tmp_path / "models").iterdir())) == n_cached == 2  # train_seed == seed: the same entries
    other = rsvc.marker_models("tiny-resnet18", 0, 0.5, 7, analysis, train_seed=1, **kw)
    assert len(list((tmp_path / "models").iterdir())) == 4
    for a, b, c in zip(first, again, other):
        assert torch.equal(a.conv1.weight, b.conv1.weight) and not torch.equal(a.conv1.weight, c.conv1.weight)
