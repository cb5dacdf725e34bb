"""Cosine tables against scikit-learn and hand-worked cases."""
import numpy as np
import pytest
import torch
from sklearn.metrics.pairwise import cosine_similarity

from gradsim_utils import similarity


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
    assert similarity.within_class_cosine_from_matrix(similarity.cosine_matrix(x), labels) == \
        similarity.within_class_cosine(x, labels)
