"""SFAM (seed 004): CIS against hand-worked values and its own equations, maps against oracles."""
import numpy as np
import pytest
import torch
from scipy import stats

from gradsim_utils import localisation, sfam
from gradsim_utils.nets import build_tiny_resnet


def test_cis_hand_worked_three_channels():
    # d = (0, 2, 3), d^2 = (0, 4, 9), D = 13, N - 1 = 2: omega = (13, 9, 4) / 26
    omega = sfam.cis(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(omega, torch.tensor([0.5, 9 / 26, 4 / 26]))


@pytest.mark.parametrize("metric", sfam.METRICS)
def test_cis_sums_to_one_batched(metric):
    gen = torch.Generator().manual_seed(0)
    v_q, v_s = torch.rand(7, 3, 16, generator=gen), torch.rand(7, 3, 16, generator=gen)
    omega = sfam.cis(v_q, v_s, metric)
    assert omega.shape == (7, 3, 16)
    assert torch.allclose(omega.sum(-1), torch.ones(7, 3))
    assert torch.allclose(omega[2, 1], sfam.cis(v_q[2, 1], v_s[2, 1], metric))


@pytest.mark.parametrize("metric", sfam.METRICS)
def test_identical_or_zero_embeddings_give_uniform_weights(metric):
    v = torch.tensor([0.3, 0.0, 2.0, 1.0])
    for a, b in ((v, v.clone()), (torch.zeros(4), torch.zeros(4))):
        omega = sfam.cis(a, b, metric)
        assert torch.isfinite(omega).all()
        assert torch.allclose(omega, torch.full((4,), 0.25))
    # parallel vectors are identical after L2 normalisation (Eq. 5)
    if metric == "cosine":
        assert torch.allclose(sfam.cis(v, 3 * v, metric), torch.full((4,), 0.25))


def test_cosine_cis_is_eq2_on_normalised_vectors():
    gen = torch.Generator().manual_seed(1)
    v_q, v_s = torch.randn(5, 10, generator=gen), torch.randn(5, 10, generator=gen)
    unit = lambda v: v / v.norm(dim=-1, keepdim=True)
    assert torch.allclose(sfam.cis(v_q, v_s, "cosine"), sfam.cis(unit(v_q), unit(v_s), "euclidean"))


def test_eq7_identity_holds_with_coefficient_two():
    # expanding (q_n - s_n)^2 gives 2 q_n s_n in the numerator; the seed's Eq. 7 prints 1
    gen = torch.Generator().manual_seed(2)
    v_q, v_s = torch.rand(12, generator=gen, dtype=torch.float64), torch.rand(12, generator=gen, dtype=torch.float64)
    q, s = v_q / v_q.norm(), v_s / v_s.norm()
    cos, n = (q * s).sum(), len(q)
    eq7 = ((1 - q ** 2) + (1 - s ** 2) - 2 * cos + 2 * q * s) / ((n - 1) * (2 - 2 * cos))
    assert torch.allclose(sfam.cis(v_q, v_s, "cosine"), eq7)


def test_cis_ranking_follows_cosine_contribution_when_channel_energy_is_equal():
    # Eq. 7's claim holds when q_n^2 + s_n^2 is the same for every channel: q = r cos t, s = r sin t
    # |q| = |s| needs sum cos(2t) = 0: five angles chosen freely, the sixth solves it
    free = np.array([0.1, 0.35, 0.9, 1.3, 1.5])
    angles = torch.tensor(np.append(free, np.arccos(-np.cos(2 * free).sum()) / 2), dtype=torch.float64)
    q, s = angles.cos(), angles.sin()
    assert torch.allclose(q.norm(), s.norm())
    omega = sfam.cis(q, s, "cosine")
    rho = stats.spearmanr(omega.numpy(), (q * s).numpy()).statistic
    assert rho == pytest.approx(1.0)


def test_cis_ranking_can_disagree_with_cosine_contribution():
    # a channel silent in both images contributes 0 to the cosine but gets the largest CIS
    q = torch.tensor([0.0, 0.8, 0.6])
    s = torch.tensor([0.0, 0.6, 0.8])
    omega = sfam.cis(q, s, "cosine")
    contribution = q * s
    assert omega.argmax() == 0 and contribution.argmax() != 0


def test_minmax_weights_eq4_and_constant_weights():
    assert torch.allclose(sfam.minmax_weights(torch.tensor([0.2, 0.5, 0.3])), torch.tensor([0.0, 1.0, 1 / 3]))
    assert torch.equal(sfam.minmax_weights(torch.full((2, 4), 0.25)), torch.ones(2, 4))


@pytest.mark.parametrize("metric", sfam.METRICS)
def test_gradcam_weights_match_autograd(metric):
    gen = torch.Generator().manual_seed(3)
    a_q = torch.rand(4, 6, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    a_s = torch.rand(4, 2, 6, 3, 3, generator=gen, dtype=torch.float64)
    v_q, v_s_each = a_q.mean((-2, -1)), a_s.mean((-2, -1))
    v_s = v_s_each.mean(1)
    score = -(v_q - v_s).pow(2).sum(-1) if metric == "euclidean" else torch.cosine_similarity(v_q, v_s, dim=-1)
    (grad,) = torch.autograd.grad(score.sum(), a_q)
    alpha = grad.mean((-2, -1))                        # Grad-CAM: spatial mean of the gradient
    w_q, _ = sfam.channel_weights("gradcam", v_q.detach(), v_s, v_s_each, metric)
    assert torch.allclose(w_q, alpha * 9)              # = ds/dv, i.e. hw times the Grad-CAM weights


def test_decomposition_equals_point_to_point_sum():
    # Zhu et al.: D(i,j;x,y) = <A_Q(i,j), A_S(x,y)>, normalised by its max, clamped at 0, summed over (x,y)
    gen = torch.Generator().manual_seed(4)
    features = torch.rand(3, 5, 4, 4, generator=gen)
    point = torch.einsum("nij,nxy->ijxy", features[0], features[1])
    explicit = (point / point.max()).clamp_min(0).sum((-2, -1))
    maps = sfam.pair_maps(features, [0], [[1]], "cosine", methods=("decomposition",))["decomposition"][0]
    assert torch.allclose(maps / maps.max(), explicit / explicit.max(), atol=1e-6)


@pytest.mark.parametrize("metric", sfam.METRICS)
def test_batched_maps_equal_per_pair_maps(metric):
    gen = torch.Generator().manual_seed(5)
    features = torch.rand(9, 8, 4, 4, generator=gen)
    query = torch.tensor([0, 3, 5, 8])
    support = torch.tensor([[1, 2], [4, 6], [7, 1], [2, 3]])
    methods = ("sfam", "gradcam", "decomposition", "ram", "gradfam", "centre")
    batched = sfam.pair_maps(features, query, support, metric, methods, image_size=16, support_maps=True)
    for p in range(len(query)):
        single = sfam.pair_maps(features, query[p:p + 1], support[p:p + 1], metric, methods, image_size=16,
                                support_maps=True)
        for method in methods:
            assert torch.allclose(batched[method][0][p], single[method][0][0], atol=1e-6)
            assert torch.allclose(batched[method][1][p], single[method][1][0], atol=1e-6)
    # SFAM by hand for pair 1: Eq. 1, Eq. 2, Eq. 4, Eq. 3
    v = features.mean((-2, -1))
    w = sfam.minmax_weights(sfam.cis(v[3], v[[4, 6]].mean(0), metric))
    by_hand = sfam.upsample((w[:, None, None] * features[3]).sum(0), 16)
    assert torch.allclose(batched["sfam"][0][1], by_hand, atol=1e-6)


def test_centre_and_random_maps():
    centre = sfam.pair_maps(torch.rand(3, 4, 2, 2), [0, 1], [[2], [2]], "euclidean", ("centre",), image_size=9)
    assert torch.equal(centre["centre"][1], localisation.centre_prior(9))
    maps = sfam.pair_maps(torch.rand(3, 4, 2, 2), [0, 1], [[2], [2]], "euclidean", ("random",), image_size=8)
    assert maps["random"].shape == (2, 8, 8) and not torch.equal(maps["random"][0], maps["random"][1])


def test_rank_correlation_matches_scipy_and_constant_maps():
    gen = np.random.default_rng(0)
    a, b = gen.random((4, 5, 5)), gen.random((4, 5, 5))
    b[1] = a[1] ** 3                                   # monotone: rho = 1
    ours = sfam.rank_correlation(a, b)
    for i in range(4):
        assert ours[i] == pytest.approx(stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic)
    assert ours[1] == pytest.approx(1.0)
    assert sfam.rank_correlation(np.ones((1, 3, 3)), a[:1, :3, :3])[0] == 0.0
    assert sfam.rank_correlation(np.zeros((1, 3, 3)), np.zeros((1, 3, 3)))[0] == 1.0


def test_ssim_identical_maps_is_one():
    a = np.random.default_rng(1).random((2, 16, 16))
    assert np.allclose(sfam.ssim(a, a), 1.0)


def test_cascading_randomisation_from_the_top():
    torch.manual_seed(0)
    model = build_tiny_resnet("tiny-resnet18", 2, base_width=4).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stages = sfam.randomisation_stages(model)
    assert [name for name, _ in stages][:3] == ["layer4.1", "layer4.0", "layer3.1"] and stages[-1][0] == "conv1"
    assert len(stages) == 9
    one = sfam.randomise(model, 1)
    changed = {k for k, v in one.state_dict().items() if not torch.equal(v, model.state_dict()[k])}
    assert changed and all(k.startswith("layer4.1.") for k in changed)
    full = sfam.randomise(model, len(stages))
    assert not torch.equal(full.conv1.weight, model.conv1.weight)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the original is untouched
    with pytest.raises(ValueError, match="n_stages"):
        sfam.randomise(model, 10)


def test_cascading_randomisation_from_the_bottom_mirrors_the_top():
    torch.manual_seed(0)
    model = build_tiny_resnet("tiny-resnet18", 2, base_width=4).eval()
    top = [name for name, _ in sfam.randomisation_stages(model)]
    up = [name for name, _ in sfam.randomisation_stages(model, order="bottom-up")]
    assert up == top[::-1] and up[:3] == ["conv1", "layer1.0", "layer1.1"]      # seed 004: stem first
    one = sfam.randomise(model, 1, order="bottom-up")
    changed = {k for k, v in one.state_dict().items() if not torch.equal(v, model.state_dict()[k])}
    assert changed and all(k.startswith(("conv1.", "bn1.")) for k in changed)
    # a block gets the same seed in both orders: the fully random networks are identical,
    # and the stem randomised first (bottom-up) equals the stem randomised last (top-down)
    full_up, full_top = sfam.randomise(model, 9, seed=4, order="bottom-up"), sfam.randomise(model, 9, seed=4)
    assert all(torch.equal(v, full_top.state_dict()[k]) for k, v in full_up.state_dict().items())
    assert torch.equal(sfam.randomise(model, 1, seed=4, order="bottom-up").conv1.weight, full_top.conv1.weight)
    assert not torch.equal(sfam.randomise(model, 1, seed=5, order="bottom-up").conv1.weight, full_top.conv1.weight)
    with pytest.raises(ValueError, match="order"):
        sfam.randomisation_stages(model, order="sideways")
    with pytest.raises(ValueError, match="order"):
        sfam.randomise(model, 1, order="sideways")


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same shape"):
        sfam.cis(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="v_q contains NaN"):
        sfam.cis(torch.tensor([float("nan"), 1.0]), torch.ones(2))
    with pytest.raises(ValueError, match="metric"):
        sfam.cis(torch.ones(3), torch.ones(3), metric="manhattan")
    with pytest.raises(ValueError, match="two channels"):
        sfam.cis(torch.ones(1), torch.zeros(1))
    with pytest.raises(ValueError, match="unknown methods"):
        sfam.pair_maps(torch.rand(2, 3, 2, 2), [0], [[1]], "cosine", methods=("lime",))


def test_box_ious_deduplicates_without_changing_results():
    from gradsim_utils import localisation
    gen = torch.Generator().manual_seed(6)
    maps = torch.rand(5, 12, 12, generator=gen)
    maps[3] = maps[1]                                        # a repeated map is boxed once
    gt = torch.tensor([[0.0, 0.0, 6.0, 6.0]]).expand(5, 4)
    ours = sfam.box_ious({"m": maps}, gt)["m"]
    direct = localisation.paired_box_iou(localisation.threshold_boxes(maps), gt).numpy()
    assert np.allclose(ours, direct)



def _localisation_case():
    gen = torch.Generator().manual_seed(7)
    features = torch.rand(10, 6, 4, 4, generator=gen) ** 3          # peaked, post-ReLU-like features
    query = torch.tensor([0, 2, 4, 6, 8, 1, 3, 0, 2])               # repeated queries: repeated maps
    support = torch.randint(0, 10, (9, 2), generator=gen)
    corner = torch.randint(0, 10, (9, 2), generator=gen).double()
    boxes = torch.cat([corner, corner + torch.randint(3, 8, (9, 2), generator=gen)], 1)
    return features, query, support, boxes


@pytest.mark.parametrize("metric", sfam.METRICS)
def test_streamed_box_ious_equal_all_maps_at_once(metric):
    features, query, support, boxes = _localisation_case()
    at_once = sfam.box_ious(sfam.pair_maps(features, query, support, metric, image_size=16, seed=3), boxes, 0.2)
    assert set(at_once) == set(sfam.METHODS)
    for batch_size in (1, 4, 9, 100):
        streamed = sfam.pair_box_ious(features, query, support, boxes, metric, image_size=16, threshold=0.2,
                                      seed=3, batch_size=batch_size, device="cpu")
        for method in sfam.METHODS:
            assert np.array_equal(streamed[method], at_once[method]), (method, batch_size)
    assert len({tuple(v) for v in at_once.values()}) > 2             # the methods' boxes differ: a real check
    other_seed = sfam.pair_box_ious(features, query, support, boxes, metric, ("random",), 16, seed=4, device="cpu")
    assert not np.array_equal(other_seed["random"], at_once["random"])
    with pytest.raises(ValueError, match="boxes must be"):
        sfam.pair_box_ious(features, query, support, boxes[:3], metric, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        sfam.pair_box_ious(features, query, support, boxes, metric, batch_size=0, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")
def test_streamed_box_ious_on_cuda_match_the_cpu():
    features, query, support, boxes = _localisation_case()
    cpu = sfam.pair_box_ious(features, query, support, boxes, "cosine", image_size=16, batch_size=4, device="cpu")
    gpu = sfam.pair_box_ious(features, query, support, boxes, "cosine", image_size=16, batch_size=4, device="cuda")
    for method in sfam.METHODS:  # float32 maps may differ in the last bit on a GPU: IoUs agree to round-off
        np.testing.assert_allclose(gpu[method], cpu[method], atol=1e-6)

def test_seed004_tables_quoted():
    assert set(sfam.SEED004_LOCALISATION) == set(sfam.METRICS)
    for table in sfam.SEED004_LOCALISATION.values():
        assert set(table) <= set(sfam.METHODS) and "sfam" in table
        assert all(len(cell) == 2 and all(v == "-" or 0 < float(v) < 100 for v in cell) for cell in table.values())
    assert sfam.SEED004_LOCALISATION["cosine"]["sfam"] == ("55.65", "69.08")
