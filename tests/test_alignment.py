"""Tests of gradsim_utils.alignment against oracles: per-pair loops, finite differences,
gradcheck, the explicit Hessian and the closed-form MI of correlated Gaussians."""
import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score
from torch import nn

from gradsim_utils import alignment, data, extract, models, nets, similarity
from gradsim_utils.stats import image_bootstrap_counts


def gradient_alignment_loss_loop(grads: torch.Tensor, labels: torch.Tensor, form: str = "cosine",
                                 reduction: str = "mean") -> torch.Tensor:
    """The reference for ``alignment.gradient_alignment_loss``: seed 001's loss written pair by pair,
    as the seed states it (O(N^2) Python iterations; ``benchmarks/bench_alignment.py`` times it too)."""
    flat = grads.reshape(len(grads), -1)
    terms = []
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            if labels[i] != labels[j]:
                continue
            if form == "euclidean":
                terms.append(((flat[i] - flat[j]) ** 2).sum())
            else:
                denom = flat[i].norm() * flat[j].norm()
                cos = (flat[i] @ flat[j]) / denom if denom > 0 else flat.new_zeros(())
                terms.append(1.0 - cos)
    if not terms:
        return flat.new_zeros(())
    total = torch.stack(terms).sum()
    return total / len(terms) if reduction == "mean" else total


@pytest.fixture()
def grads_labels():
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(12, 3, 4, 4, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 3, 2, 0])
    return grads, labels


def test_same_class_pairs_hand_example():
    mask = alignment.same_class_pairs(torch.tensor([0, 1, 0, 0]))
    assert mask.nonzero().tolist() == [[0, 2], [0, 3], [2, 3]]


@pytest.mark.parametrize("form", alignment.FORMS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_matches_per_pair_loop(grads_labels, form, reduction):
    grads, labels = grads_labels
    batched = alignment.gradient_alignment_loss(grads, labels, form=form, reduction=reduction)
    loop = gradient_alignment_loss_loop(grads, labels, form=form, reduction=reduction)
    assert torch.allclose(batched, loop, rtol=1e-10, atol=1e-10)
    assert batched.item() > 0


def test_euclidean_sum_matches_class_sum_identity(grads_labels):
    # sum_{i<j in c} ||g_i - g_j||^2 = n_c sum_i ||g_i||^2 - ||sum_i g_i||^2, per class
    grads, labels = grads_labels
    flat = grads.flatten(1)
    expected = sum(len(flat[labels == c]) * (flat[labels == c] ** 2).sum() - flat[labels == c].sum(0).pow(2).sum()
                   for c in labels.unique())
    got = alignment.gradient_alignment_loss(grads, labels, form="euclidean", reduction="sum")
    assert torch.allclose(got, expected)


@pytest.mark.parametrize("form", alignment.FORMS)
def test_loss_zero_for_identical_gradients_within_class(form):
    base = torch.randn(3, 20, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    grads = base[labels] * (1.0 if form == "euclidean" else torch.rand(7, 1, dtype=torch.float64) + 0.5)
    assert alignment.gradient_alignment_loss(grads, labels, form=form).abs().item() < 1e-12


def test_cosine_form_scale_invariant_euclidean_not(grads_labels):
    grads, labels = grads_labels
    scale = torch.linspace(0.1, 3.0, len(grads), dtype=torch.float64).view(-1, 1, 1, 1)
    cos = [alignment.gradient_alignment_loss(g, labels, form="cosine") for g in (grads, grads * scale)]
    euc = [alignment.gradient_alignment_loss(g, labels, form="euclidean") for g in (grads, grads * scale)]
    assert torch.allclose(cos[0], cos[1])
    assert not torch.allclose(euc[0], euc[1])


def test_zero_gradient_cosine_defined_and_differentiable():
    grads = torch.zeros(4, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    loss = alignment.gradient_alignment_loss(grads, labels, form="cosine", reduction="sum")
    assert loss.item() == pytest.approx(2.0)  # two pairs, cosine 0 each
    (g,) = torch.autograd.grad(loss, grads)
    assert torch.isfinite(g).all()


def test_no_same_class_pair_gives_zero():
    grads = torch.randn(3, 5)
    assert alignment.gradient_alignment_loss(grads, torch.tensor([0, 1, 2])).item() == 0.0


@pytest.mark.parametrize("form", alignment.FORMS)
def test_loss_gradient_gradcheck(form):
    gen = torch.Generator().manual_seed(1)
    grads = torch.randn(6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1, 0, 2])
    assert torch.autograd.gradcheck(lambda g: alignment.gradient_alignment_loss(g, labels, form=form), (grads,))


@pytest.mark.parametrize("form", alignment.FORMS)
def test_double_backward_through_input_gradients_matches_finite_differences(form):
    """d L_grad(g(theta)) / d theta by double backward vs central differences on a small net."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(8, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def loss_of_net() -> torch.Tensor:
        grads, _ = extract.input_gradients(net, x, y, create_graph=True)
        return alignment.gradient_alignment_loss(grads, y, form=form)

    weight = net[0].weight
    (analytic,) = torch.autograd.grad(loss_of_net(), weight)
    numeric = torch.zeros_like(weight)
    eps = 1e-6
    with torch.no_grad():
        for idx in [(0, 0), (2, 3), (5, 4), (3, 1)]:
            weight[idx] += eps
            up = loss_of_net().item()
            weight[idx] -= 2 * eps
            down = loss_of_net().item()
            weight[idx] += eps
            numeric[idx] = (up - down) / (2 * eps)
            assert analytic[idx].item() == pytest.approx(numeric[idx].item(), rel=1e-5, abs=1e-9)


def test_input_gradients_match_per_image_autograd():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).eval()
    x = torch.randn(5, 3, 6, 6)
    y = torch.tensor([0, 1, 2, 1, 0])
    grads, logits = extract.input_gradients(net, x, y)
    for i in range(5):
        xi = x[i:i + 1].clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(net(xi), y[i:i + 1])
        (gi,) = torch.autograd.grad(loss, xi)
        assert torch.allclose(grads[i], gi[0], atol=1e-6)
    assert logits.shape == (5, 3)


torch.manual_seed(3)
_TINY_NET = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.Softplus()).double()


def _tiny_net_loss(x: torch.Tensor) -> torch.Tensor:
    return _TINY_NET(x).pow(2).sum() + (x ** 3).sum()


@pytest.mark.parametrize("method", alignment.HVP_METHODS)
def test_hvp_matches_explicit_hessian(method):
    torch.manual_seed(0)
    x = torch.randn(2, 4, dtype=torch.float64)
    v = torch.randn(2, 4, dtype=torch.float64)
    hess = torch.autograd.functional.hessian(_tiny_net_loss, x).reshape(8, 8)
    expected = (hess @ v.reshape(8)).reshape(2, 4)
    got = alignment.hvp(_tiny_net_loss, x, v, method=method)
    assert (got - expected).abs().max().item() < 1e-5 * max(1.0, expected.abs().max().item())


def test_hvp_matches_finite_differences_on_conv_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    y = torch.tensor([0, 2])
    v = torch.randn_like(x)

    def loss(z):
        return nn.functional.cross_entropy(net(z), y, reduction="sum")

    def grad(z):
        z = z.detach().requires_grad_(True)
        return torch.autograd.grad(loss(z), z)[0]

    eps = 1e-5
    numeric = (grad(x + eps * v) - grad(x - eps * v)) / (2 * eps)
    got = alignment.hvp(loss, x, v)
    rel = (got - numeric).norm() / numeric.norm()
    assert rel.item() < 1e-3


def test_hvp_tuple_inputs_and_bad_vectors():
    a = torch.randn(3, dtype=torch.float64)
    b = torch.randn(2, dtype=torch.float64)
    va, vb = torch.randn(3, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    # f = (a.a) (b.b): H = [[2 b.b I, 4 a b^T], [4 b a^T, 2 a.a I]]
    ha, hb = alignment.hvp(lambda p, q: (p @ p) * (q @ q), (a, b), (va, vb))
    assert torch.allclose(ha, 2 * (b @ b) * va + 4 * a * (b @ vb))
    assert torch.allclose(hb, 4 * b * (a @ va) + 2 * (a @ a) * vb)
    with pytest.raises(ValueError, match="vectors must match"):
        alignment.hvp(lambda p: p.sum(), a, b)
    with pytest.raises(ValueError, match="method"):
        alignment.hvp(lambda p: p.sum(), a, va, method="newton")


def _correlated_gaussians(rho, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, len(rho)))
    y = rho * x + np.sqrt(1 - rho ** 2) * rng.standard_normal((n, len(rho)))
    # mix each set by its own invertible map: MI is unchanged
    return x @ rng.standard_normal((len(rho), len(rho))), y @ rng.standard_normal((len(rho), len(rho)))


def test_gaussian_mi_matches_closed_form():
    rho = np.array([0.9, 0.6, 0.3, 0.0])
    a, b = _correlated_gaussians(rho, n=40000)
    truth = -0.5 * np.sum(np.log(1 - rho ** 2))
    got = alignment.gaussian_mutual_information(a, b, dim=4, shrinkage=None)
    assert got == pytest.approx(truth, rel=0.02)
    shrunk = alignment.gaussian_mutual_information(a, b, dim=4)  # Ledoit-Wolf: conservative
    assert 0.9 * truth < shrunk <= got + 1e-9


def test_gaussian_mi_independent_near_zero_and_reduced_dim():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((4000, 50)), rng.standard_normal((4000, 50))
    assert abs(alignment.gaussian_mutual_information(a, b, dim=10)) < 0.02
    # one strongly shared direction inside 50 noisy dims: kept by the top principal component
    z = rng.standard_normal((4000, 1))
    a[:, :1] += 5 * z
    b[:, :1] += 5 * z
    rho = 25 / 26
    assert alignment.gaussian_mutual_information(a, b, dim=1, shrinkage=None) == pytest.approx(
        -0.5 * math.log(1 - rho ** 2), rel=0.05)


def test_gaussian_mi_bad_input():
    a = np.random.default_rng(0).standard_normal((40, 6))
    with pytest.raises(ValueError, match="dim must be"):
        alignment.gaussian_mutual_information(a, a, dim=11)  # > n // 4
    with pytest.raises(ValueError, match="paired"):
        alignment.gaussian_mutual_information(a, a[:30])
    with pytest.raises(ValueError, match="shrinkage"):
        alignment.gaussian_mutual_information(a, a, dim=2, shrinkage="oas")


def test_loss_bad_input():
    with pytest.raises(ValueError, match="form"):
        alignment.gradient_alignment_loss(torch.randn(3, 2), torch.tensor([0, 0, 1]), form="l1")
    with pytest.raises(ValueError, match="labels"):
        alignment.gradient_alignment_loss(torch.randn(3, 2), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="lam"):
        alignment.train_aligned(lam=-1.0)


def test_train_aligned_tiny_run_learns_and_reports():
    state, metrics = alignment.train_aligned(form="cosine", lam=0.5, image_size=16, n_train_per_class=4,
                                             n_analysis_per_class=2, epochs=1, batch_size=20, base_width=4,
                                             device="cpu", progress=False)
    assert metrics["final_grad_loss"] > 0 and np.isfinite(metrics["final_cls_loss"])
    assert 0 <= metrics["analysis_accuracy"] <= 1 and metrics["n_train"] == 40
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_alignment_measures_replicates_against_oracles():
    net = models.load_model("tiny-resnet18", "smoke", weights=None, device="cpu")
    bench = data.make_benchmark(n_per_class=3, split="analysis", seed=0, image_size=32)
    counts = image_bootstrap_counts(bench.labels.numpy(), 20, seed=1)
    plain = alignment.alignment_measures(net, bench.images, bench.labels, device="cpu")
    measures = alignment.alignment_measures(net, bench.images, bench.labels, device="cpu", counts=counts)
    reps = measures.pop("replicates")
    assert plain == measures  # counts add replicates and change nothing else
    assert all(v.shape == (21,) and v[0] == measures[k] for k, v in reps.items())
    grads = extract.loss_input_gradients(net, bench.images, bench.labels, device="cpu", progress=False).flatten(1)
    with torch.no_grad():
        preds = net(nets.prepare_inputs(net, bench.images)).argmax(1)
    correct = (preds == bench.labels).double().numpy()
    lab = bench.labels.numpy()
    unit = torch.nn.functional.normalize(grads.double(), dim=1)
    cos = (unit @ unit.T).numpy()
    for r in range(20):
        index = np.repeat(np.arange(len(lab)), counts[r])
        assert reps["accuracy"][r + 1] == pytest.approx(correct[index].mean())
        assert reps["input_grad_norm"][r + 1] == pytest.approx(grads.norm(dim=1).double().numpy()[index].mean())
        # pairs of distinct drawn copies, class means averaged over classes
        same = (lab[index][:, None] == lab[index][None, :]) & (index[:, None] != index[None, :])
        class_means = [cos[np.ix_(index, index)][same & (lab[index][:, None] == c)].mean()
                       for c in np.unique(lab) if (same & (lab[index][:, None] == c)).any()]
        assert reps["input_grad_within"][r + 1] == pytest.approx(np.mean(class_means))
    assert reps["input_grad_within"][0] == pytest.approx(similarity.pair_statistics(torch.as_tensor(cos), lab).within[0])
    partition = KMeans(n_clusters=10, n_init=10, random_state=0).fit_predict(unit.numpy())
    assert measures["ari_input_grad"] == pytest.approx(adjusted_rand_score(lab, partition))
    drawn = counts[3] > 0
    assert reps["ari_input_grad"][4] == pytest.approx(adjusted_rand_score(lab[drawn], partition[drawn]))
