"""Saliency metrics on hand-worked maps and oracles; Grad-CAM maps against pytorch-grad-cam."""
import math

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy import stats
from sklearn.metrics import roc_auc_score

from gradsim_utils import saliency, similarity
from gradsim_utils.nets import build_tiny_resnet
from gradsim_utils.stats import image_bootstrap_counts, paired_difference

EPS = saliency.KLD_EPS


def t(x):
    return torch.tensor(x, dtype=torch.float64)


# --- CC -----------------------------------------------------------------------------------

def test_cc_hand_worked():
    a = t([[1, 2], [3, 4]])
    assert float(saliency.cc(a, t([[4, 3], [2, 1]]))) == pytest.approx(-1.0)
    assert float(saliency.cc(a, 2 * a + 5)) == pytest.approx(1.0)
    # centred [.75, -.25, -.25, -.25] and [-.25, .75, -.25, -.25]: r = -0.25 / 0.75 = -1/3
    assert float(saliency.cc(t([[1, 0], [0, 0]]), t([[0, 1], [0, 0]]))) == pytest.approx(-1 / 3)


def test_cc_matches_scipy_pearson_on_a_stack():
    rng = np.random.default_rng(0)
    a, b = rng.random((5, 7, 6)), rng.random((5, 7, 6))
    ours = saliency.cc(a, b).numpy()
    oracle = [stats.pearsonr(x.ravel(), y.ravel())[0] for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, oracle, atol=1e-12)


def test_cc_constant_and_zero_maps_are_zero_not_nan():
    a = t([[1, 2], [3, 4]])
    assert float(saliency.cc(a, torch.full((2, 2), 3.0))) == 0.0
    assert float(saliency.cc(torch.zeros(2, 2), torch.zeros(2, 2))) == 0.0


# --- SIM ----------------------------------------------------------------------------------

def test_sim_hand_worked():
    # [.5, .5, 0, 0] vs [.5, 0, .5, 0]: the minima sum to .5
    assert float(saliency.sim(t([[1, 1], [0, 0]]), t([[1, 0], [1, 0]]))) == pytest.approx(0.5)
    assert float(saliency.sim(t([[1, 0], [0, 0]]), t([[0, 0], [0, 3]]))) == 0.0
    a = t([[1, 2], [3, 4]])
    assert float(saliency.sim(a, 10 * a)) == pytest.approx(1.0)  # scale-free


def test_sim_and_kld_zero_map_is_uniform():
    zero, flat = torch.zeros(3, 3), torch.ones(3, 3)
    assert float(saliency.sim(zero, flat)) == pytest.approx(1.0)
    assert float(saliency.kld(zero, flat)) == pytest.approx(0.0, abs=1e-12)
    peak = torch.zeros(3, 3)
    peak[1, 1] = 1.0
    assert float(saliency.sim(zero, peak)) == pytest.approx(1 / 9)


def test_sim_kld_reject_negative_and_nan():
    with pytest.raises(ValueError, match="non-negative"):
        saliency.sim(t([[1, -1], [0, 0]]), t([[1, 1], [1, 1]]))
    with pytest.raises(ValueError, match="q must be non-negative"):
        saliency.kld(t([[1, 1], [1, 1]]), t([[1, -1], [0, 0]]))
    with pytest.raises(ValueError, match="NaN"):
        saliency.cc(t([[1, float("nan")], [0, 0]]), t([[1, 1], [1, 1]]))
    with pytest.raises(ValueError, match="do not pair up"):
        saliency.cc(torch.zeros(2, 2), torch.zeros(3, 3))


# --- KLD ----------------------------------------------------------------------------------

def test_kld_hand_worked_both_directions():
    uniform, peak = t([[1, 1], [1, 1]]), t([[1, 0], [0, 0]])
    # reference = peak, scored = uniform: 1 * log(eps + 1 / (0.25 + eps)) ~ log 4
    assert float(saliency.kld(uniform, peak)) == pytest.approx(math.log(EPS + 1 / (0.25 + EPS)))
    # reference = uniform, scored = peak: three zeros of the scored map cost .25 log(.25 / eps) each
    expected = 0.25 * math.log(EPS + 0.25 / (1 + EPS)) + 3 * 0.25 * math.log(EPS + 0.25 / EPS)
    assert float(saliency.kld(peak, uniform)) == pytest.approx(expected)
    assert expected > 20  # exact zeros dominate this direction


def test_kld_matches_scipy_entropy_for_positive_maps():
    rng = np.random.default_rng(1)
    p, q = rng.random((4, 5, 5)) + 0.1, rng.random((4, 5, 5)) + 0.1
    oracle = [stats.entropy(b.ravel(), a.ravel()) for a, b in zip(p, q)]  # KL(q || p)
    np.testing.assert_allclose(saliency.kld(p, q).numpy(), oracle, rtol=1e-9)


def test_identical_maps():
    a = t([[0, 1, 2], [3, 0, 5]])
    assert float(saliency.cc(a, a)) == pytest.approx(1.0)
    assert float(saliency.sim(a, a)) == pytest.approx(1.0)
    assert abs(float(saliency.kld(a, a))) < 1e-12
    assert float(saliency.auc(a, a)) == 1.0  # top 20 % = the pixel 5 (and ties): ranked first


# --- AUC ----------------------------------------------------------------------------------

def test_auc_hand_worked():
    s = t([[4, 3], [2, 1]])
    assert float(saliency.auc(s, torch.tensor([[True, False], [False, False]]))) == 1.0
    assert float(saliency.auc(s, torch.tensor([[False, False], [False, True]]))) == 0.0
    # positives score 1 and 0, negatives 1 and 0: (0.5 + 1 + 0 + 0.5) / 4
    ties = t([[1, 1], [0, 0]])
    assert float(saliency.auc(ties, torch.tensor([[True, False], [True, False]]))) == 0.5
    # a real reference: top 25 % of [[4, 3], [2, 1]] is the pixel 4; s ranks it last
    assert float(saliency.auc(t([[0, 1], [2, 3]]), s, top=0.25)) == 0.0


def test_binarise_top_includes_ties_and_constant_reference_gives_half():
    ref = t([[5, 5], [1, 0]])
    assert saliency.binarise_top(ref, 0.25).tolist() == [[True, True], [False, False]]
    assert float(saliency.auc(t([[4, 3], [2, 1]]), torch.full((2, 2), 7.0))) == 0.5
    assert float(saliency.auc(torch.zeros(2, 2), t([[1, 0], [0, 0]]))) == 0.5  # constant scored map
    with pytest.raises(ValueError, match="top"):
        saliency.binarise_top(ref, 1.5)


def test_auc_matches_sklearn():
    rng = np.random.default_rng(2)
    s = rng.random((6, 8, 8)).round(1)  # ties in the scored map
    ref = rng.random((6, 8, 8))
    ours = saliency.auc(s, ref, top=0.3).numpy()
    positives = saliency.binarise_top(ref, 0.3).numpy()
    oracle = [roc_auc_score(p.ravel(), x.ravel()) for p, x in zip(positives, s)]
    np.testing.assert_allclose(ours, oracle, atol=1e-12)


# --- all pairs ----------------------------------------------------------------------------

def test_pair_metrics_equal_the_single_pair_functions():
    rng = np.random.default_rng(3)
    maps = np.maximum(rng.normal(size=(7, 6, 6)), 0)
    maps[2] = 0.0  # an all-zero map
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    i, j, same = similarity.unordered_pairs(labels)
    i, j = i[same], j[same]
    table = saliency.pair_metrics(maps, i, j, chunk=4)
    a, b = maps[i.numpy()], maps[j.numpy()]
    np.testing.assert_allclose(table.cc, saliency.cc(a, b).numpy(), atol=1e-12)
    np.testing.assert_allclose(table.sim, saliency.sim(a, b).numpy(), atol=1e-12)
    np.testing.assert_allclose(table.kld_ij, saliency.kld(a, b).numpy(), rtol=1e-12)
    np.testing.assert_allclose(table.kld_ji, saliency.kld(b, a).numpy(), rtol=1e-12)
    np.testing.assert_allclose(table.auc_ij, saliency.auc(a, b).numpy(), atol=1e-12)
    np.testing.assert_allclose(table.auc_ji, saliency.auc(b, a).numpy(), atol=1e-12)
    mask = maps > 0.5
    np.testing.assert_allclose(saliency.pair_auc(maps, i, j, mask, chunk=3),
                               saliency.auc(a, torch.from_numpy(mask[j.numpy()])).numpy(), atol=1e-12)
    assert len(table) == 3 + 6 and np.isfinite(table.drop(columns=["i", "j"]).to_numpy()).all()



# --- on the device: ranks in torch ------------------------------------------------------

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")


def quantised_maps(n, side, seed):
    """Grad-CAM-like maps with many ties: ReLU'd noise rounded to tenths (zeros and repeats)."""
    rng = np.random.default_rng(seed)
    maps = np.maximum(rng.normal(size=(n, side, side)), 0).round(1)
    maps[1] = 0.0  # an all-zero map: one tie group
    maps[2] = 0.3  # a constant map
    return maps


def test_average_ranks_equal_scipy_rankdata_with_ties():
    maps = quantised_maps(12, 16, seed=4).reshape(12, -1)
    maps[3, :5] = -0.0  # -0.0 ties with 0.0, as in scipy
    ours = saliency.average_ranks(torch.from_numpy(maps))
    assert ours.dtype == torch.float64
    assert np.array_equal(ours.numpy(), stats.rankdata(maps, method="average", axis=1))
    no_ties = torch.randn(3, 257, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(saliency.average_ranks(no_ties).numpy(), stats.rankdata(no_ties.numpy(), axis=1))
    with pytest.raises(ValueError, match="x must be"):
        saliency.average_ranks(torch.zeros(2, 3, 4))


def test_pair_metrics_on_cpu_equal_scipy_and_sklearn_oracles():
    maps = quantised_maps(6, 12, seed=5)
    i, j = torch.tensor([0, 0, 1, 3, 4, 5, 2]), torch.tensor([3, 4, 5, 5, 0, 2, 0])
    table = saliency.pair_metrics(maps, i, j, top=0.2, chunk=3, device="cpu")
    flat = maps.reshape(len(maps), -1)
    k = int(np.ceil(0.2 * flat.shape[1]))
    positives = flat >= np.sort(flat, axis=1)[:, -k:-k + 1]       # top 20 %, ties at the cut included
    dist = np.where(flat.sum(1, keepdims=True) > 0, flat / np.maximum(flat.sum(1, keepdims=True), 1e-300),
                    1 / flat.shape[1])
    for row, (a, b) in enumerate(zip(i.tolist(), j.tolist())):
        constant = flat[a].min() == flat[a].max() or flat[b].min() == flat[b].max()
        cc = 0.0 if constant else stats.pearsonr(flat[a], flat[b])[0]
        assert abs(table.cc[row] - cc) < 1e-12
        assert abs(table.sim[row] - np.minimum(dist[a], dist[b]).sum()) < 1e-12
        kld = (dist[b] * np.log(EPS + dist[b] / (dist[a] + EPS))).sum()
        assert abs(table.kld_ij[row] - kld) < 1e-12
        for column, scored, reference in (("auc_ij", a, b), ("auc_ji", b, a)):
            oracle = roc_auc_score(positives[reference], flat[scored]) if 0 < positives[reference].sum() < flat.shape[1] \
                else 0.5
            assert abs(table[column][row] - oracle) < 1e-12
    pair = saliency.pair_auc(maps, i, j, torch.from_numpy(positives.reshape(maps.shape)), device="cpu")
    np.testing.assert_allclose(pair, table.auc_ij, rtol=0, atol=1e-12)
    assert saliency.auc(torch.from_numpy(maps), torch.from_numpy(maps), device="cpu").device.type == "cpu"


@CUDA
def test_pair_metrics_on_cuda_equal_the_cpu_path():
    maps = quantised_maps(8, 32, seed=6)
    flat = torch.from_numpy(maps.reshape(8, -1))
    assert torch.equal(saliency.average_ranks(flat.cuda()).cpu(), saliency.average_ranks(flat))
    i, j = torch.triu_indices(8, 8, 1)
    gpu, cpu = (saliency.pair_metrics(maps, i, j, chunk=5, device=d) for d in ("cuda", "cpu"))
    np.testing.assert_allclose(gpu.drop(columns=["i", "j"]), cpu.drop(columns=["i", "j"]), rtol=0, atol=1e-12)
    mask = torch.from_numpy(maps > 0.5)
    np.testing.assert_allclose(saliency.pair_auc(maps, i, j, mask, device="cuda"),
                               saliency.pair_auc(maps, i, j, mask, device="cpu"), rtol=0, atol=1e-12)
    on_gpu = saliency.auc(torch.from_numpy(maps), mask, device="cuda")
    assert on_gpu.device.type == "cpu" and torch.allclose(on_gpu, saliency.auc(maps, mask, device="cpu"), atol=1e-12)

def test_pair_mean_ci_is_the_class_mean_with_an_interval():
    labels = torch.tensor([0, 0, 0, 1, 1])
    i, j, same = similarity.unordered_pairs(labels)
    i, j = i[same].numpy(), j[same].numpy()
    values = np.array([1.0, 2.0, 3.0, 10.0])  # class 0: mean 2, class 1: 10
    counts = image_bootstrap_counts(labels, n_resamples=200, seed=0)
    est = saliency.pair_mean_ci(values, i, j, counts, groups=labels.numpy()[i])
    assert est.value == pytest.approx(6.0)
    assert est.low <= est.value <= est.high and est.high > est.low
    assert saliency.pair_mean_ci(values, i, j, counts).value == pytest.approx(4.0)  # one group
    # replicate 1 by hand: weights n_i n_j per pair, then the mean of the two class means
    reps = saliency.pair_mean_replicates(values, i, j, counts, groups=labels.numpy()[i])
    w = counts[0][i] * counts[0][j]
    by_class = [np.average(values[m], weights=w[m]) for m in (labels.numpy()[i] == 0, labels.numpy()[i] == 1)
                if w[m].sum() > 0]
    assert reps[1] == pytest.approx(np.mean(by_class))
    with pytest.raises(ValueError, match="groups"):
        saliency.pair_mean_ci(values, i, j, counts, groups=[0, 1])


def test_between_class_and_class_free_pair_means_against_a_loop():
    """Between-class pairs (one group) and within-class pairs (class groups) of class-free maps: the
    vectorised CC and the resampled pair means equal a plain loop over pairs and replicates."""
    gen = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    maps = torch.rand(8, 6, 5, generator=gen, dtype=torch.float64)  # stands in for equal-weight (class-free) maps
    i_b, j_b = similarity.between_class_pairs(labels, 12, seed=0)
    i_all, j_all, same = similarity.unordered_pairs(labels)
    i_w, j_w = i_all[same], j_all[same]
    counts = image_bootstrap_counts(labels, n_resamples=50, seed=1)
    for i, j, groups in ((i_b, j_b, None), (i_w, j_w, labels[i_w].numpy())):
        values = saliency.pair_metrics(maps, i, j)["cc"].to_numpy()
        by_loop = [np.corrcoef(maps[a].ravel(), maps[b].ravel())[0, 1] for a, b in zip(i.tolist(), j.tolist())]
        np.testing.assert_allclose(values, by_loop, atol=1e-12)
        reps = saliency.pair_mean_replicates(values, i, j, counts, groups=groups)
        group_of = np.zeros(len(values), dtype=int) if groups is None else groups
        for r, n in enumerate([np.ones(8, dtype=int), *counts]):
            means = []
            for g in np.unique(group_of):
                num = den = 0.0
                for p in np.flatnonzero(group_of == g):
                    weight = n[int(i[p])] * n[int(j[p])]
                    num, den = num + weight * values[p], den + weight
                if den > 0:
                    means.append(num / den)
            assert reps[r] == pytest.approx(np.mean(means) if means else np.nan, nan_ok=True)


def test_within_minus_between_interval_is_paired_on_the_same_resamples():
    gen = torch.Generator().manual_seed(4)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    maps = torch.rand(8, 4, 4, generator=gen, dtype=torch.float64)
    i_all, j_all, same = similarity.unordered_pairs(labels)
    i_w, j_w = i_all[same], j_all[same]
    i_b, j_b = similarity.between_class_pairs(labels, len(i_w), seed=0)
    counts = image_bootstrap_counts(labels, n_resamples=400, seed=2)
    within = saliency.pair_mean_replicates(saliency.pair_metrics(maps, i_w, j_w)["cc"], i_w, j_w, counts,
                                           groups=labels[i_w].numpy())
    between = saliency.pair_mean_replicates(saliency.pair_metrics(maps, i_b, j_b)["cc"], i_b, j_b, counts)
    diff = paired_difference(within[0], within[1:], between[0], between[1:])
    by_hand = [w - b for w, b in zip(within[1:], between[1:])]  # replicate r of both from resample r
    assert diff.value == pytest.approx(within[0] - between[0])
    assert (diff.low, diff.high) == pytest.approx(tuple(np.percentile(by_hand, [2.5, 97.5])))
    # not the difference of two independent intervals: shuffling the pairing changes the interval
    shuffled = np.random.default_rng(0).permutation(between[1:])
    unpaired = paired_difference(within[0], within[1:], between[0], shuffled)
    assert (unpaired.low, unpaired.high) != pytest.approx((diff.low, diff.high))
    with pytest.raises(ValueError, match="same resamples"):
        paired_difference(within[0], within[1:], between[0], between[2:])


# --- Grad-CAM -----------------------------------------------------------------------------

def _reference_maps(model, x, layer, targets=None):
    target_layer = dict(model.named_modules())[layer]
    wrapped = None if targets is None else [ClassifierOutputTarget(int(c)) for c in targets]
    with GradCAM(model=model, target_layers=[target_layer]) as cam:
        return cam(input_tensor=x, targets=wrapped)


@pytest.mark.parametrize("arch,side,layers", [
    ("tiny-resnet18", 32, ("layer4", "layer3", "layer4.1.conv2")),
    ("tiny-resnet50", 32, ("layer4", "layer4.2.conv3")),
    ("resnet18", 64, ("layer4", "layer3")),
])
def test_gradcam_equals_pytorch_grad_cam(arch, side, layers):
    torch.manual_seed(0)
    model = (torchvision.models.resnet18(weights=None) if arch == "resnet18"
             else build_tiny_resnet(arch, num_classes=10)).eval()
    x = torch.randn(5, 3, side, side)
    for layer in layers:
        reference = _reference_maps(model, x, layer)
        methods = ("identity", "backward") if layer == "layer4" else ("backward", "auto")
        for method in methods:
            ours = saliency.gradcam(model, x, layer=layer, batch_size=2, method=method)
            assert ours.maps.shape == (5, side, side)
            assert np.abs(ours.maps.numpy() - reference).max() < 1e-4, (arch, layer, method)
        assert saliency.gradcam(model, x[:1], layer=layer).method == ("identity" if layer == "layer4" else "backward")


def test_gradcam_given_targets_and_raw_maps():
    torch.manual_seed(1)
    model = build_tiny_resnet("tiny-resnet18", num_classes=4).train()
    x = torch.randn(3, 3, 32, 32)
    targets = [3, 0, 2]
    result = saliency.gradcam(model, x, targets=targets, method="backward")
    assert model.training  # mode restored
    model.eval()
    assert np.abs(result.maps.numpy() - _reference_maps(model, x, "layer4", targets)).max() < 1e-4
    assert result.targets.tolist() == targets
    raw = saliency.gradcam_maps(model, x, targets=targets, normalise=None)
    feats = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: feats.update(f=o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    cam = torch.einsum("nk,nkhw->nhw", model.fc.weight[targets] / 16, feats["f"]).relu()
    expected = torch.nn.functional.interpolate(cam[:, None], size=(32, 32), mode="bilinear")[:, 0]
    torch.testing.assert_close(raw, expected, atol=1e-5, rtol=1e-4)


def test_gradcam_bad_input():
    model = build_tiny_resnet("tiny-resnet18", num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="method=.identity. needs the layer that feeds global average pooling"):
        saliency.gradcam(model, x, layer="layer3", method="identity")
    with pytest.raises(ValueError, match="unknown layer"):
        saliency.gradcam(model, x, layer="layer9")
    with pytest.raises(ValueError, match="normalise"):
        saliency.gradcam(model, x, normalise="sum")
    with pytest.raises(ValueError, match="targets"):
        saliency.gradcam(model, x, targets=[0, 7])
    with pytest.raises(ValueError, match="weights"):
        saliency.gradcam(model, x, weights="random")


def test_uniform_weights_give_the_channel_mean_map():
    torch.manual_seed(2)
    model = build_tiny_resnet("tiny-resnet18", num_classes=4).eval()
    x = torch.randn(3, 3, 32, 32)
    ours = saliency.gradcam(model, x, layer="layer3", weights="uniform", normalise=None)
    assert ours.method == "uniform"
    feats = {}
    handle = model.layer3.register_forward_hook(lambda m, i, o: feats.update(f=o.detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    expected = torch.nn.functional.interpolate(feats["f"].mean(1, keepdim=True).relu(), size=(32, 32),
                                               mode="bilinear")[:, 0]
    torch.testing.assert_close(ours.maps, expected, atol=1e-5, rtol=1e-4)


def test_cached_gradcam_reuses_the_entry_and_keys_on_the_weights():
    torch.manual_seed(3)
    model = build_tiny_resnet("tiny-resnet18", num_classes=4).eval()
    x = torch.randn(3, 3, 32, 32)
    first = saliency.cached_gradcam(model, x, batch_size=2)
    torch.testing.assert_close(first.maps, saliency.gradcam_maps(model, x))
    again = saliency.cached_gradcam(model, x, batch_size=2)
    torch.testing.assert_close(again.maps, first.maps)
    with torch.no_grad():
        model.fc.weight.mul_(-1.0)  # new weights: a new entry, not the stale maps
    changed = saliency.cached_gradcam(model, x, batch_size=2)
    torch.testing.assert_close(changed.maps, saliency.gradcam_maps(model, x))
    assert not torch.allclose(changed.maps, first.maps)


@pytest.mark.parametrize("arch,layer", [("tiny-resnet18", "layer3"), ("tf_efficientnet_lite0", "bn2")])
def test_gradcam_with_control_equals_the_two_separate_passes_and_pytorch_grad_cam(arch, layer):
    torch.manual_seed(4)
    if arch.startswith("tf_"):
        import timm
        model, side = timm.create_model(arch, pretrained=False, num_classes=7).eval(), 64
    else:
        model, side = build_tiny_resnet(arch, num_classes=7).eval(), 32
    x = torch.randn(5, 3, side, side)
    maps, control = saliency.gradcam_with_control(model, x, layer=layer, batch_size=2)
    assert (maps.method, control.method) == ("backward", "uniform")
    assert maps.maps.shape == control.maps.shape == (5, side, side)
    torch.testing.assert_close(maps.maps, saliency.gradcam(model, x, layer=layer, method="backward").maps,
                               atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(control.maps, saliency.gradcam(model, x, layer=layer, weights="uniform").maps,
                               atol=1e-5, rtol=1e-4)
    assert np.abs(maps.maps.numpy() - _reference_maps(model, x, layer)).max() < 1e-4
    torch.testing.assert_close(maps.targets, maps.logits.argmax(1))
    fixed, _ = saliency.gradcam_with_control(model, x, layer=layer, targets=3)
    assert (fixed.targets == 3).all()
    torch.testing.assert_close(fixed.maps, saliency.gradcam(model, x, layer=layer, targets=3).maps, atol=1e-5, rtol=1e-4)


def test_cached_gradcam_with_control_reuses_the_entry_and_keys_on_the_weights():
    torch.manual_seed(5)
    model = build_tiny_resnet("tiny-resnet18", num_classes=4).eval()
    x = torch.randn(3, 3, 32, 32)
    first = saliency.cached_gradcam_with_control(model, x, layer="layer3", batch_size=2)
    fresh = saliency.gradcam_with_control(model, x, layer="layer3")
    for cached, computed in zip(first, fresh):
        torch.testing.assert_close(cached.maps, computed.maps)
        assert (cached.method, cached.layer) == (computed.method, computed.layer)
    again = saliency.cached_gradcam_with_control(model, x, layer="layer3")
    torch.testing.assert_close(again[1].maps, first[1].maps)
    with torch.no_grad():
        model.fc.weight.mul_(-1.0)  # new weights: a new entry, not the stale maps
    changed = saliency.cached_gradcam_with_control(model, x, layer="layer3")
    torch.testing.assert_close(changed[0].maps, saliency.gradcam_with_control(model, x, layer="layer3")[0].maps)
    assert not torch.allclose(changed[0].maps, first[0].maps)
