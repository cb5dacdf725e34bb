"""Label similarity (seed 002; modules class_statistics, gap_statistics, label_similarity,
folder_statistics): Welch's t against scipy, GAP hooks against direct computation, rankings and
agreement against hand-worked examples and scipy, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from scipy import stats

from gradsim_utils import class_statistics as cs
from gradsim_utils import folder_statistics as fs
from gradsim_utils import gap_statistics as gs
from gradsim_utils import label_similarity as ls
from gradsim_utils import data, models, nets


def _scipy_welch(x, y):
    return np.array([[stats.ttest_ind(x[y == c, k], x[y != c, k], equal_var=False).statistic
                      for k in range(x.shape[1])] for c in range(y.max() + 1)])


@pytest.fixture
def features():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), [7, 3, 12, 2, 9])
    x = rng.gamma(2.0, 1.5, size=(len(y), 6)) + 1000.0 + y[:, None] * rng.normal(size=6)  # large offset
    return x, y


def test_welch_equals_scipy_on_raw_values(features):
    x, y = features
    t = cs.ClassStats.from_features(x, y).welch_t()
    ref = _scipy_welch(x, y)
    assert np.max(np.abs(t - ref) / np.abs(ref)) < 1e-6


def test_streaming_in_chunks_equals_one_pass(features):
    x, y = features
    order = np.random.default_rng(1).permutation(len(y))
    stream = cs.ClassStats(5, x.shape[1])
    for chunk in np.array_split(order, 4):
        stream.update(torch.from_numpy(x[chunk]), torch.from_numpy(y[chunk]))
    whole = cs.ClassStats.from_features(x, y)
    np.testing.assert_array_equal(stream.count, whole.count)
    np.testing.assert_allclose(stream.welch_t(), whole.welch_t(), rtol=1e-9)
    np.testing.assert_allclose(stream.means(), [x[y == c].mean(0) for c in range(5)], rtol=1e-12)


def test_float32_torch_path_matches_float64(features):
    x, y = features
    s = cs.ClassStats.from_features(x, y)
    t32 = cs.welch_from_sums(torch.from_numpy(s.count).float(), torch.from_numpy(s.sum).float(),
                             torch.from_numpy(s.sumsq).float())
    assert t32.dtype == torch.float32
    np.testing.assert_allclose(t32.numpy(), s.welch_t(), rtol=1e-3, atol=1e-3)


def test_zero_variance_channels_give_zero_not_nan():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 4)
    x = np.column_stack([np.full(12, 0.0),            # dead ReLU channel: 0/0 in scipy
                         np.full(12, 7.25),           # constant channel
                         np.where(y == 0, 1.0, 2.0),  # constant within class and within rest
                         rng.normal(size=12)])
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        ref = _scipy_welch(x, y)
    assert np.isnan(ref[:, 0]).all()  # what the rule replaces
    t = cs.ClassStats.from_features(x, y).welch_t()
    assert np.isfinite(t).all()
    np.testing.assert_array_equal(t[:, :2], 0.0)
    assert t[0, 2] == 0.0  # class 0 against the rest: both groups constant, means differ: the rule says 0
    np.testing.assert_allclose(t[1:, 2:], ref[1:, 2:], rtol=1e-9)  # the rest of classes 1, 2 varies


def test_class_with_one_image_and_empty_class_raise():
    x = np.random.default_rng(0).normal(size=(7, 3))
    one = cs.ClassStats.from_features(x, np.array([0, 0, 0, 1, 1, 1, 2]))
    with pytest.raises(ValueError, match="class 2 has 1 image"):
        one.welch_t()
    one.means()  # a mean of one image is defined
    empty = cs.ClassStats.from_features(x, np.array([0, 0, 0, 1, 1, 1, 1]), n_classes=3)
    with pytest.raises(ValueError, match="class 2 has no images"):
        empty.means()
    with pytest.raises(ValueError, match="at least two images"):
        cs.welch_from_sums(np.array([3, 1]), np.zeros((2, 1)), np.zeros((2, 1)))


def test_bad_features_and_labels_raise():
    stats_ = cs.ClassStats(3, 2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        stats_.update(np.array([[0.0, np.nan]]), np.array([0]))
    with pytest.raises(ValueError, match="labels must lie"):
        stats_.update(np.zeros((1, 2)), np.array([3]))
    with pytest.raises(ValueError, match="B x 2"):
        stats_.update(np.zeros((1, 3)), np.array([0]))
    with pytest.raises(ValueError, match="integer"):
        stats_.update(np.zeros((1, 2)), np.array([0.0]))


def test_conv_layer_names_follow_the_reference():
    net = torchvision.models.resnet34(weights=None)
    names = gs.conv_layer_names(net)
    modules = dict(net.named_modules())
    assert len(names) == 33 and not any("downsample" in n for n in names)
    assert sum(modules[n].out_channels for n in names) == 7616  # the seed's ResNet-34 total
    assert gs.conv_layer_names(net, ["layer4.*.conv2"]) == ["layer4.0.conv2", "layer4.1.conv2", "layer4.2.conv2"]
    with pytest.raises(ValueError, match=r"\['layer9\.\*'\] match no nn.Conv2d"):
        gs.conv_layer_names(net, ["layer4.0.conv1", "layer9.*"])
    with pytest.raises(ValueError, match="non-empty list"):
        gs.conv_layer_names(net, [])


def test_gap_hooks_match_direct_computation_and_are_released():
    torch.manual_seed(0)
    net = nets.build_tiny_resnet("tiny-resnet18", num_classes=4, base_width=4)
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.train()
    x = torch.randn(5, 3, 16, 16)
    feats = gs.gap_features(net, x, batch_size=2, device="cpu", progress=False)
    assert net.training and all(m.training for m in net.modules())  # modes restored
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())  # hooks released
    net.eval()
    with torch.no_grad():
        conv = net.conv1(x)
        np.testing.assert_allclose(feats.gap["conv"][:, :4], conv.relu().mean((2, 3)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(feats.gap["bn"][:, :4], net.bn1(conv).relu().mean((2, 3)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(net.fc(feats.hidden), net(x), rtol=1e-4, atol=1e-5)
    assert feats.gap["conv"].shape[1] == sum(feats.channels) == 4 + 4 * 4 + 4 * 8 + 4 * 16 + 4 * 32
    assert feats.hidden.shape == (5, 32)
    with pytest.raises(ValueError, match="where must be"):
        gs.gap_features(net, x, where=("relu",), progress=False)
    with pytest.raises(ValueError, match="classifier 'head'"):
        gs.gap_features(net, x, classifier="head", progress=False)


def test_hidden_state_is_not_the_gap_means():
    """The reference computed 'hidden' from the GAP means; ours uses the hidden features."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 5)
    gap, hidden = rng.random((20, 8)), rng.random((20, 3))
    mats = ls.similarity_matrices(cs.ClassStats.from_features(gap, y), cs.ClassStats.from_features(hidden, y))
    means = np.stack([hidden[y == c].mean(0) for c in range(4)])
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    np.testing.assert_allclose(mats["hidden"], unit @ unit.T, atol=1e-12)
    assert not np.allclose(mats["hidden"], mats["pure GAP"])


def test_top_k_excludes_the_class_itself():
    sim = np.array([[1.0, 0.2, 0.9, 0.5],
                    [0.2, 1.0, 0.1, 0.3],
                    [0.9, 0.1, 1.0, 0.4],
                    [0.5, 0.3, 0.4, 1.0]])
    np.testing.assert_array_equal(ls.top_k_similar(sim, 2), [[2, 3], [3, 0], [0, 3], [0, 2]])
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 3\]"):
        ls.top_k_similar(sim, 4)


def test_top_k_overlap_hand_worked():
    sim_a = np.array([[1.0, 0.9, 0.5, 0.1], [0.9, 1.0, 0.2, 0.3], [0.5, 0.2, 1.0, 0.4], [0.1, 0.3, 0.4, 1.0]])
    # top-2 of a: 0 -> {1, 2}, 1 -> {0, 3}, 2 -> {0, 3}, 3 -> {2, 1}
    sim_b = np.array([[1.0, 0.1, 0.5, 0.9], [0.1, 1.0, 0.2, 0.3], [0.5, 0.2, 1.0, 0.4], [0.9, 0.3, 0.4, 1.0]])
    # top-2 of b: 0 -> {3, 2}, 1 -> {3, 2}, 2 -> {0, 3}, 3 -> {0, 2}
    np.testing.assert_allclose(ls.top_k_overlap(sim_a, sim_b, 2), [0.5, 0.5, 1.0, 0.5])
    np.testing.assert_array_equal(ls.top_k_overlap(sim_a, sim_a, 3), np.ones(4))
    with pytest.raises(ValueError, match="different class counts"):
        ls.top_k_overlap(sim_a, sim_a[:3, :3], 2)


def test_spearman_and_precision_hand_worked():
    truth = np.array([[3, 2, 1, 0], [2, 3, 0, 1], [1, 0, 3, 2], [0, 1, 2, 3]]) / 3
    sim = np.array([[1.0, 0.8, 0.1, 0.3], [0.8, 1.0, 0.2, 0.5], [0.1, 0.2, 1.0, 0.9], [0.3, 0.5, 0.9, 1.0]])
    pairs = np.triu_indices(4, 1)
    assert ls.spearman_agreement(sim, truth) == pytest.approx(stats.spearmanr(sim[pairs], truth[pairs]).statistic)
    # top-1 of each class: 1, 0, 3, 2 -- all the ground truth's most similar class
    assert ls.precision_at_k(sim, truth, 1) == 1.0
    # top-2: class 0 -> {1, 3}: 1 relevant (truth top-2 of 0 is {1, 2}); class 1 -> {0, 3}: both
    np.testing.assert_allclose(ls.precision_at_k(sim, truth, 2, per_class=True), [0.5, 1.0, 0.5, 1.0])
    assert ls.chance_precision(truth, 1) == pytest.approx(1 / 3)
    tied = np.array([[1, .5, .5, 0], [.5, 1, 0, 0], [.5, 0, 1, 0], [0, 0, 0, 1]])  # ties in the truth count
    assert ls.precision_at_k(sim, tied, 1, per_class=True)[0] == 1.0
    with pytest.raises(ValueError, match="constant"):
        ls.spearman_agreement(np.ones((4, 4)), truth)
    with pytest.raises(ValueError, match="NaN"):
        ls.spearman_agreement(np.full((4, 4), np.nan), truth)


def test_vectorised_spearman_equals_scipy():
    rng = np.random.default_rng(0)
    rows, truth = rng.random((5, 10)), np.repeat([0.0, 1 / 3, 2 / 3], [4, 4, 2])
    ours = ls._spearman_rows(rows, truth)
    np.testing.assert_allclose(ours, [stats.spearmanr(r, truth).statistic for r in rows], rtol=1e-12)


def test_bootstrap_agreement_points_and_pairing():
    rng = np.random.default_rng(0)
    truth = np.array([[3, 2, 0, 1], [2, 3, 1, 0], [0, 1, 3, 2], [1, 0, 2, 3]]) / 3
    y = np.repeat(np.arange(4), 6)
    centres = rng.normal(size=(4, 12)) + truth @ rng.normal(size=(4, 12))
    gap = torch.from_numpy(np.abs(centres[y] + 0.3 * rng.normal(size=(24, 12))))
    hidden = torch.from_numpy(centres[y][:, :5] + 0.3 * rng.normal(size=(24, 5)))
    a = ls.bootstrap_agreement({"conv": gap}, hidden, y, truth, k=1, n_resamples=40, seed=3)
    b = ls.bootstrap_agreement({"conv": gap}, hidden, y, truth, k=1, n_resamples=40, seed=3)
    assert set(a.point) == {(m, s) for m in ("Welch t (conv)", "pure GAP (conv)", "hidden")
                            for s in ("spearman", "precision")}
    stats_ = cs.ClassStats.from_features(gap.numpy(), y)
    assert a.point[("Welch t (conv)", "spearman")] == pytest.approx(
        ls.spearman_agreement(ls.cosine_rows(stats_.welch_t()), truth))
    for key, s in a.samples.items():
        assert s.shape == (40,) and np.all(np.abs(s) <= 1 + 1e-9)
        np.testing.assert_array_equal(s, b.samples[key])
    diff = ls.difference_estimate(a, "Welch t (conv)", a, "hidden", "spearman")
    assert diff.low <= diff.high
    with pytest.raises(ValueError, match="covering all 4 classes"):
        ls.bootstrap_agreement({"conv": gap}, hidden, y % 3, truth, k=1)


def test_image_folder_stats_streams_classes(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("knot", "golf_ball", "baseball"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    net = models.load_model("resnet18", profile="paper-dryrun", weights=None, device="cpu", progress=False)
    out = fs.image_folder_stats(tmp_path, net, device="cpu", progress=False, resize=64, crop=56)
    assert out.class_names == ["baseball", "golf_ball", "knot"] and out.imagenet_indices == [429, 574, 616]
    assert out.n_images == 6 and out.gap["conv"].count.tolist() == [2, 2, 2]
    assert out.gap["conv"].sum.shape == (3, 3904) and out.hidden.sum.shape == (3, 512)
    assert out.thumbnails.shape == (3, 3, 96, 96)
    first = data.load_image_folder(tmp_path, image_size=56, class_names=["baseball"], resize_size=64).images[:1]
    torch.testing.assert_close(out.thumbnails[:1], F.interpolate(first.float(), size=(96, 96), mode="bilinear",
                                                                  antialias=True).round().byte())  # the weights' crop
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fs.image_folder_stats(tmp_path / "missing", net, progress=False)
