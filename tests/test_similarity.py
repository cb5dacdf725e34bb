"""Cosine tables against scikit-learn and hand-worked cases."""
import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity

from gradsim_utils import similarity, training
from gradsim_utils.stats import image_bootstrap_counts


def test_cosine_matrix_matches_sklearn_including_zero_rows():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 3, 2, 2))
    a[2] = 0.0
    b = rng.normal(size=(4, 12))
    ours = similarity.cosine_matrix(torch.tensor(a), torch.tensor(b)).numpy()
    oracle = cosine_similarity(a.reshape(7, -1), b)
    np.testing.assert_allclose(ours, oracle, atol=1e-12)
    assert np.all(ours[2] == 0.0)


def test_within_class_cosine_hand_worked():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    means = similarity.within_class_cosine(x, labels)
    # class 0 pairs: cos(e1,e2)=0, cos(e1,(1,1))=1/sqrt2, cos(e2,(1,1))=1/sqrt2
    assert means[0] == pytest.approx((0 + 2 / np.sqrt(2)) / 3)
    assert means[1] == pytest.approx(1.0)


def test_within_class_cosine_rejects_singletons_and_nan():
    with pytest.raises(ValueError, match="class 1 has 1 sample"):
        similarity.within_class_cosine(torch.ones(3, 2), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        similarity.cosine_matrix(torch.tensor([[float("nan"), 1.0], [1.0, 1.0]]))


def _within_class_oracle(x, labels):
    """Loop oracle: scikit-learn's cosine matrix in float64, mean over each class's pairs i < j."""
    x = np.asarray(x, dtype=np.float64).reshape(len(labels), -1)
    sims = cosine_similarity(x)
    return {c: np.mean([sims[i, j] for i in np.flatnonzero(labels == c) for j in np.flatnonzero(labels == c) if i < j])
            for c in np.unique(labels).tolist()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32])
def test_within_class_cosine_equals_the_pair_loop_for_uneven_unsorted_classes(dtype):
    # class sizes 2, 3, 4, 5, 9 cover the kernel's groups of four and every remainder
    labels = np.random.default_rng(0).permutation(np.repeat([7, 1, 4, 0, 2], [2, 3, 4, 5, 9]))
    x = (10 * torch.randn(len(labels), 3, 5, generator=torch.Generator().manual_seed(2))).to(dtype)
    x[3] = 0.0  # a zero row has cosine 0 with everything
    ours = similarity.within_class_cosine(x, torch.tensor(labels))
    oracle = _within_class_oracle(x.double().numpy(), labels)
    assert ours.keys() == oracle.keys()
    assert all(ours[c] == pytest.approx(oracle[c], abs=1e-12) for c in oracle)


def test_within_class_cosine_threaded_equals_single_run(monkeypatch):
    labels = torch.arange(5).repeat_interleave(torch.tensor([30, 2, 41, 7, 20]))
    x = torch.randn(len(labels), 300, generator=torch.Generator().manual_seed(3))
    single = similarity.within_class_cosine(x, labels)
    monkeypatch.setattr(similarity, "THREADED_MIN_ENTRIES", 0)
    for threads in (2, 3, 8):  # more threads than classes leaves the extra ones out
        with training.cpu_threads(threads):
            threaded = similarity.within_class_cosine(x, labels)
        assert all(threaded[c] == pytest.approx(single[c], abs=1e-13) for c in single)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_within_class_cosine_rejects_nan_and_inf(bad):
    x = torch.ones(4, 3)
    x[2, 1] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        similarity.within_class_cosine(x, torch.tensor([0, 0, 1, 1]))


def test_within_class_cosine_rejects_an_empty_or_flat_x():
    for x in (torch.empty(0, 3), torch.ones(4)):
        with pytest.raises(ValueError, match="x must have shape"):
            similarity.within_class_cosine(x, torch.zeros(len(x), dtype=torch.long))


def test_predicted_label_cosine_is_one_for_shared_predictions():
    weights = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    sims = similarity.predicted_label_cosine(weights, torch.tensor([0, 0, 1, 2]))
    assert sims[0, 1] == pytest.approx(1.0)
    assert sims[0, 2] == pytest.approx(1 / np.sqrt(2))
    assert sims[0, 3] == pytest.approx(0.0)


def test_unordered_pairs_and_agreement_against_a_loop():
    labels = torch.tensor([0, 1, 0, 1, 1, 2])
    preds = torch.tensor([0, 1, 2, 1, 0, 2])
    i, j, same = similarity.unordered_pairs(labels)
    loop = [(a, b) for a in range(6) for b in range(a + 1, 6)]
    assert list(zip(i.tolist(), j.tolist())) == loop
    assert same.tolist() == [labels[a] == labels[b] for a, b in loop]
    agree = [preds[a] == preds[b] for a, b in loop if labels[a] == labels[b]]
    assert similarity.within_class_agreement(preds, labels) == pytest.approx(sum(agree) / len(agree))


def test_within_class_cosine_from_matrix_equals_direct():
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    from_matrix = similarity.within_class_cosine_from_matrix(similarity.cosine_matrix(x), labels)
    direct = similarity.within_class_cosine(x, labels)
    assert from_matrix.keys() == direct.keys()
    assert all(from_matrix[c] == pytest.approx(direct[c], abs=1e-12) for c in direct)


def _pair_oracle(sims, labels, weights=None):
    """Loop oracle: within (classes weighted equally), between, and sklearn's (weighted) ROC AUC."""
    from sklearn.metrics import roc_auc_score
    n = len(labels)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    per_class = {}
    between_num = between_den = 0.0
    scores, same, pair_w = [], [], []
    for a in range(n):
        for b in range(a + 1, n):
            wab = w[a] * w[b]
            scores.append(float(sims[a, b])); same.append(bool(labels[a] == labels[b])); pair_w.append(wab)
            if labels[a] == labels[b]:
                num, den = per_class.get(int(labels[a]), (0.0, 0.0))
                per_class[int(labels[a])] = (num + wab * float(sims[a, b]), den + wab)
            else:
                between_num += wab * float(sims[a, b]); between_den += wab
    within = np.mean([num / den for num, den in per_class.values() if den > 0])
    auc = roc_auc_score(same, scores, sample_weight=pair_w)
    return within, between_num / between_den, auc


def test_pair_statistics_matches_loop_and_sklearn_auc():
    gen = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])
    x = torch.randn(9, 4, generator=gen) + 2 * torch.nn.functional.one_hot(labels, 4).double()
    x[4] = x[3]  # an exact tie
    sims = similarity.cosine_matrix(x)
    stats = similarity.pair_statistics(sims, labels)
    within, between, auc = _pair_oracle(sims.numpy(), labels.numpy())
    assert stats.within[0] == pytest.approx(within)
    assert stats.between[0] == pytest.approx(between)
    assert stats.auc[0] == pytest.approx(auc)
    counts = image_bootstrap_counts(labels, 5, seed=1)
    boot = similarity.pair_statistics(sims, labels, counts)
    for r in range(5):
        w, b, a = _pair_oracle(sims.numpy(), labels.numpy(), counts[r])
        assert boot.within[r + 1] == pytest.approx(w)
        assert boot.between[r + 1] == pytest.approx(b)
        assert boot.auc[r + 1] == pytest.approx(a)
    without_auc = similarity.pair_statistics(sims, labels, counts, with_auc=False)
    assert np.array_equal(without_auc.within, boot.within) and np.array_equal(without_auc.between, boot.between)
    assert np.isnan(without_auc.auc).all() and without_auc.auc.shape == boot.auc.shape


def test_auc_counts_ties_one_half_and_is_bounded():
    labels = torch.tensor([0, 0, 1, 1])
    # every pair has cosine 1: within and between tie, AUC exactly 0.5
    stats = similarity.pair_statistics(similarity.cosine_matrix(torch.ones(4, 3)), labels)
    assert stats.auc[0] == 0.5 and stats.within[0] == 1.0 and stats.between[0] == 1.0
    # perfectly separated classes: AUC 1
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    assert similarity.pair_statistics(similarity.cosine_matrix(x), labels).auc[0] == 1.0


def test_bootstrap_counts_keep_class_sizes_and_intervals_cover_value():
    labels = torch.tensor([0] * 5 + [1] * 7 + [2] * 4)
    counts = image_bootstrap_counts(labels, 50, seed=0)
    for c, size in ((0, 5), (1, 7), (2, 4)):
        assert (counts[:, (labels == c).numpy()].sum(1) == size).all()
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
    stats = similarity.pair_statistics(similarity.cosine_matrix(x), labels, counts)
    est = stats.estimate("within")
    assert est.low <= est.high and np.isfinite([est.low, est.high]).all()
    same = stats.difference(stats, "auc")
    assert same.value == 0 and same.low == 0 and same.high == 0
    with pytest.raises(ValueError, match="field"):
        stats.estimate("median")


def test_pair_statistics_degenerate_inputs():
    # zero vectors: cosine 0, no NaN
    x = torch.zeros(4, 3)
    stats = similarity.pair_statistics(similarity.cosine_matrix(x), torch.tensor([0, 0, 1, 1]))
    assert stats.within[0] == 0 and stats.auc[0] == 0.5
    # two images per class: a replicate drawing one image twice has no within pair in that class
    labels = torch.tensor([0, 0, 1, 1])
    counts = np.array([[2, 0, 2, 0], [1, 1, 2, 0]])
    boot = similarity.pair_statistics(similarity.cosine_matrix(torch.eye(4)), labels, counts)
    assert np.isnan(boot.within[1]) and boot.within[2] == 0.0
    with pytest.raises(ValueError, match="two images"):
        similarity.pair_statistics(torch.eye(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="square"):
        similarity.pair_statistics(torch.ones(2, 3), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="n_resamples"):
        image_bootstrap_counts(labels, 0)


def test_seed_table_and_representations():
    assert similarity.SEED000_COSINE["ResNet-50"]["GW"] == pytest.approx(0.970702)
    from types import SimpleNamespace
    reps = SimpleNamespace(grad_weights=torch.ones(2, 3), probs=torch.ones(2, 4), features=torch.ones(2, 3, 2, 2))
    out = similarity.gw_p_fm_vectors(reps)
    assert out["FM"].shape == (2, 12) and out["GW"].shape == (2, 3)
    with pytest.raises(ValueError, match="keep_features"):
        similarity.gw_p_fm_vectors(SimpleNamespace(grad_weights=None, probs=None, features=None))


def test_auc_ties_vectors_equal_up_to_round_off():
    """Gradient weights of one predicted class differ only by float32 round-off: they must tie."""
    base = torch.randn(1, 64, generator=torch.Generator().manual_seed(5)).double()
    noise = 1e-6 * torch.randn(8, 64, generator=torch.Generator().manual_seed(6)).double()
    stats = similarity.pair_statistics(similarity.cosine_matrix(base + noise), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    assert stats.auc[0] == 0.5


def test_between_class_pairs_are_distinct_different_class_pairs():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    i, j = similarity.between_class_pairs(labels, 5, seed=0)
    assert len(i) == 5 and (labels[i] != labels[j]).all() and (i < j).all()
    assert len(set(zip(i.tolist(), j.tolist()))) == 5
    all_i, all_j = similarity.between_class_pairs(labels, 100, seed=0)  # more than exist: all 11 of them
    i_ref, j_ref, same = similarity.unordered_pairs(labels)
    assert torch.equal(all_i, i_ref[~same]) and torch.equal(all_j, j_ref[~same])
    assert torch.equal(similarity.between_class_pairs(labels, 5, seed=0)[0], i)
    with pytest.raises(ValueError, match="n_pairs"):
        similarity.between_class_pairs(labels, -1)
