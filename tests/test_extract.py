"""extract.representations against independent oracles: a per-image autograd loop,
pytorch-grad-cam's Grad-CAM weights, model(x) itself and the classifier-row identity."""
import copy
import types

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from gradsim_utils import data, extract, models, nets

TOL = 1e-5
TARGETS = [3, 1, 4, 1]  # one per image; batch_size=3 makes batches of 3 and 1
N = len(TARGETS)


def _resnet(depth: int) -> nn.Module:
    torch.manual_seed(depth)
    return getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()


@pytest.fixture(scope="module")
def resnet18():
    return _resnet(18)


@pytest.fixture(scope="module")
def resnet50():
    return _resnet(50)


@pytest.fixture(scope="module")
def images():
    """N 64 px images, normal noise (a prepared input for a plain module)."""
    return torch.randn(N, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _hooked_forward(model, x, layer):
    """model(x) and the output of ``layer``, through a plain forward hook (the oracle's own)."""
    store = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda module, inputs, output: store.setdefault("f", output))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, store["f"]


def _loop_grad_weights(model, images, layer, targets):
    """Per image, in float64: full autograd graph, d y_c / d F by torch.autograd.grad, spatial mean.

    float64 because a float32 single-image pass is itself off by up to ~3e-5 at layer3 of a
    random ResNet-50 (a rounding-level ReLU flip), while the batched float32 pass is within 1e-8
    of float64 there: the oracle must be more exact than the tolerance.
    """
    model = copy.deepcopy(model).double()
    rows = []
    for x, c in zip(images.double(), targets):
        logits, feat = _hooked_forward(model, x[None], layer)
        (grad,) = torch.autograd.grad(logits[0, int(c)], feat)
        rows.append(grad.mean(dim=(2, 3))[0])
    return torch.stack(rows).float()


def _loop_input_grads(model, images, targets):
    """Per image, in float64: d y_c / d x by torch.autograd.grad."""
    model = copy.deepcopy(model).double()
    rows = []
    for x, c in zip(images.double(), targets):
        x = x[None].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x)[0, int(c)], x)
        rows.append(grad[0])
    return torch.stack(rows).float()


def _close(a: torch.Tensor, oracle: torch.Tensor) -> bool:
    """max |a - oracle| < TOL * max |oracle| (gradients here are ~1e-2, so this is stricter than
    an absolute 1e-5)."""
    return bool((a - oracle).abs().max() < TOL * oracle.abs().max())


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


def _spread(w: torch.Tensor) -> float:
    """max_i ||w_i - w_0||_inf / ||w_0||_inf: zero when every row is the same."""
    return float(((w - w[0]).abs().amax(dim=1) / w[0].abs().max()).max())



@pytest.mark.parametrize("arch,layer,enters_conv", [
    ("resnet18", "layer4", False), ("resnet18", "layer3", True), ("resnet18", "layer4.1.conv2", False),
    ("resnet50", "layer4", False), ("resnet50", "layer3", True), ("resnet50", "layer4.2.conv3", False),
])
def test_batched_equals_per_image_loop(request, images, arch, layer, enters_conv):
    """In float64 on both sides: in float32, the rounding of one memory format or batch size can
    flip a ReLU whose input is ~1e-6 (seen at layer3 of this random ResNet-50, contiguous, batch 3:
    the gradient weights then move by 0.8 %), which says nothing about batching."""
    model = copy.deepcopy(request.getfixturevalue(arch)).double()
    reps = extract.representations(model, images.double(), layer=layer, batch_size=3, targets=TARGETS,
                                   progress=False)
    # DESIGN.md 5b: channels-last (on CPU) only when the backward stops before every convolution
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last) is not enters_conv
    oracle = _loop_grad_weights(model, images, layer, TARGETS)
    assert reps.grad_weights.shape == oracle.shape and oracle.shape[0] == N
    assert _close(reps.grad_weights, oracle)
    assert reps.targets.tolist() == TARGETS


def test_default_target_is_argmax_and_matches_loop(resnet18, images):
    reps = extract.representations(resnet18, images, layer="layer3", batch_size=3, progress=False)
    logits = resnet18(images).detach()
    assert torch.equal(reps.targets, logits.argmax(1))
    oracle = _loop_grad_weights(resnet18, images, "layer3", reps.targets.tolist())
    assert _close(reps.grad_weights, oracle)


@pytest.mark.parametrize("layer", ["layer4", "layer4.1.conv2"])
def test_equals_pytorch_grad_cam_weights(resnet18, images, layer):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = dict(resnet18.named_modules())[layer]
    with GradCAM(model=resnet18, target_layers=[module]) as cam:
        cam(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in TARGETS])
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        weights = cam.get_cam_weights(images, module, None, acts, grads)
    resnet18.zero_grad(set_to_none=True)
    reps = extract.representations(resnet18, images, layer=layer, batch_size=3, targets=TARGETS,
                                   progress=False)
    assert _close(reps.grad_weights, torch.from_numpy(weights))
    assert (reps.features - torch.from_numpy(acts)).abs().max() < TOL
    assert _hook_count(resnet18) == 0


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_identity_holds_at_layer4_not_at_layer3(depth):
    model = _resnet(depth)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(depth))
    reps4 = extract.representations(model, x, layer="layer4", batch_size=3, progress=False)
    assert extract.gradient_weight_identity_error(model, reps4) < TOL
    h, w = reps4.feature_hw
    assert (h, w) == (2, 2)
    expected = model.fc.weight.detach()[reps4.targets] / (h * w)
    assert torch.allclose(reps4.grad_weights, expected, rtol=TOL, atol=1e-8)
    # so one class gives one weight vector at layer4; at layer3 the weights depend on the image
    reps3 = extract.representations(model, x, layer="layer3", targets=7, progress=False)
    assert _spread(reps3.grad_weights) > 0.05
    with pytest.raises(ValueError, match="layer3"):
        extract.gradient_weight_identity_error(model, reps3)


def test_identity_at_224_px(resnet18):
    """The paper setting: 7 x 7 features, so the 1/49 scaling is not exact in binary."""
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    reps = extract.representations(resnet18, x, targets=[5, 6], keep_features=False, progress=False)
    assert reps.feature_hw == (7, 7)
    assert extract.gradient_weight_identity_error(resnet18, reps) < TOL


def test_identity_fails_inside_the_last_block(resnet18, images):
    """layer4.1.conv2 has layer4's channel count but feeds bn2, the residual add and ReLU."""
    reps = extract.representations(resnet18, images, layer="layer4.1.conv2", targets=TARGETS,
                                   progress=False)
    assert extract.gradient_weight_identity_error(resnet18, reps) > 0.1


def test_outputs_equal_model_outputs(resnet18, images):
    reps = extract.representations(resnet18, images, batch_size=3, progress=False)
    with torch.no_grad():
        logits, feat = _hooked_forward(resnet18, images, "layer4")
    assert reps.model_name == "ResNet" and reps.layer == "layer4" and len(reps) == N
    assert reps.logits.shape == (N, 1000) and reps.features.shape == (N, 512, 2, 2)
    assert (reps.logits - logits).abs().max() < TOL
    assert (reps.features - feat).abs().max() < TOL
    assert (reps.pooled - feat.mean(dim=(2, 3))).abs().max() < TOL
    assert (reps.probs - logits.softmax(1)).abs().max() < 1e-6
    assert torch.allclose(reps.probs.sum(1), torch.ones(N))
    assert torch.equal(reps.preds, logits.argmax(1)) and reps.preds.dtype == torch.int64
    assert not reps.logits.requires_grad and not reps.grad_weights.requires_grad
    assert reps.features.is_contiguous() and reps.input_grads is None


def test_input_gradients_equal_per_image_loop(resnet18, images):
    reps = extract.representations(resnet18, images, layer="layer3", batch_size=3, targets=TARGETS,
                                   input_gradients=True, progress=False)
    assert reps.input_grads.shape == images.shape
    assert _close(reps.input_grads, _loop_input_grads(resnet18, images, TARGETS))
    assert _close(reps.grad_weights, _loop_grad_weights(resnet18, images, "layer3", TARGETS))


def test_targets_argument(resnet18, images):
    one = extract.representations(resnet18, images, targets=9, keep_features=False, progress=False)
    assert one.targets.tolist() == [9] * N and one.features is None and one.feature_hw == (2, 2)
    assert one.pooled.shape == (N, 512)
    assert torch.allclose(one.grad_weights, resnet18.fc.weight.detach()[9].expand(N, -1) / 4, atol=1e-8)
    for bad in ([1, 2], 1000, -1, [0.5] * N):
        with pytest.raises(ValueError, match="targets"):
            extract.representations(resnet18, images, targets=bad, progress=False)


def test_runs_under_no_grad_and_inference_mode(resnet18, images):
    ref = extract.representations(resnet18, images, layer="layer3", progress=False)
    with torch.no_grad():
        a = extract.representations(resnet18, images, layer="layer3", progress=False)
    with torch.inference_mode():
        x = images.clone()
        b = extract.representations(resnet18, x, layer="layer3", input_gradients=True, progress=False)
    assert torch.equal(a.grad_weights, ref.grad_weights)
    assert (b.grad_weights - ref.grad_weights).abs().max() < TOL


class _Bomb(nn.Module):
    """Identity that raises on its ``at``-th call."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("boom")
        return x


def _toy(at: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), _Bomb(at), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


@pytest.mark.parametrize("input_gradients", [False, True])
def test_state_restored_after_exception_mid_batch(input_gradients):
    model = _toy(at=2)
    model.train()
    model[1].eval()
    model[0].bias.requires_grad_(False)
    x = torch.rand(4, 3, 8, 8)
    with pytest.raises(RuntimeError, match="boom"):
        extract.representations(model, x, layer="1", batch_size=2, progress=False,
                                input_gradients=input_gradients)
    assert model[2].calls == 2  # the first batch ran, the second raised
    assert _hook_count(model) == 0
    assert [m.training for m in model] == [True, False, True, True, True, True, True]
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True, True, True]


def test_state_restored_after_success(resnet18, images):
    resnet18.train()
    try:
        reps = extract.representations(resnet18, images, batch_size=N, progress=False)
        assert resnet18.training and all(m.training for m in resnet18.modules())
    finally:
        resnet18.eval()
    assert _hook_count(resnet18) == 0
    assert all(p.requires_grad for p in resnet18.parameters())
    # eval mode was used: batch norm's running statistics, not the batch's
    assert (reps.logits - resnet18(images).detach()).abs().max() < TOL


def test_bad_layers(resnet18, images):
    with pytest.raises(ValueError, match=r"'layer5'.*layer4"):
        extract.representations(resnet18, images, layer="layer5", progress=False)
    with pytest.raises(ValueError, match=r"'fc' must output a 4-D tensor"):
        extract.representations(resnet18, images, layer="fc", progress=False)
    with pytest.raises(ValueError, match="more than once"):
        extract.representations(resnet18, images, layer="layer4.1.relu", progress=False)
    assert _hook_count(resnet18) == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_images_rejected(resnet18, images, value):
    bad = images.clone()
    bad[3, 1, 5, 7] = value
    with pytest.raises(ValueError, match=rf"NaN or Inf.*1 of {N}"):
        extract.representations(resnet18, bad, progress=False)
    assert _hook_count(resnet18) == 0


def test_bad_images_and_arguments(resnet18, images):
    with pytest.raises(ValueError, match="prepared float input"):
        extract.representations(resnet18, (images * 0).to(torch.uint8), progress=False)
    with pytest.raises(ValueError, match="N x C x H x W"):
        extract.representations(resnet18, images[0], progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        extract.representations(resnet18, images, batch_size=0, progress=False)
    reps = extract.representations(resnet18, images.numpy(), progress=False)
    assert reps.grad_weights.shape == (N, 512)


def test_gradsim_model_inputs_go_through_prepare_inputs(monkeypatch, resnet18):
    """A model with ``gradsim_info`` gets each batch through ``nets.prepare_inputs``."""
    calls = []

    def prepare_inputs(model, batch):
        calls.append(batch.shape[0])
        return (batch.float() / 255 - 0.5) / 0.25

    monkeypatch.setattr(nets, "prepare_inputs", prepare_inputs)
    monkeypatch.setattr(resnet18, "gradsim_info", types.SimpleNamespace(
        name="resnet18-random", class_names=[f"c{i}" for i in range(1000)]), raising=False)
    raw = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    reps = extract.representations(resnet18, raw, batch_size=2, progress=False)
    # first the one-image probe that decides the memory format, then the batches
    assert calls == [1, 2, 2, 1] and reps.model_name == "resnet18-random"
    monkeypatch.delattr(resnet18, "gradsim_info")
    plain = extract.representations(resnet18, prepare_inputs(None, raw), progress=False)
    assert (reps.logits - plain.logits).abs().max() < TOL


def test_with_a_model_from_load_model():
    """uint8 images of any size through models.load_model's resize and normalisation."""
    models = pytest.importorskip("gradsim_utils.models")
    model = models.load_model("resnet18", weights=None, device="cpu", progress=False)
    raw = torch.randint(0, 256, (3, 3, 80, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    reps = extract.representations(model, raw, batch_size=2, progress=False)
    assert reps.model_name == "resnet18" and reps.feature_hw == (7, 7)
    with torch.no_grad():
        logits = model(nets.prepare_inputs(model, raw))
    assert (reps.logits - logits).abs().max() < TOL
    assert extract.gradient_weight_identity_error(model, reps) < TOL
    with pytest.raises(ValueError, match="NaN or Inf"):
        extract.representations(model, torch.full((1, 3, 8, 8), float("nan")), progress=False)


def test_loss_input_gradients_equal_a_per_image_loop():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    x = torch.randn(4, 3, 48, 48)
    labels = torch.tensor([0, 3, 1, 4])
    batched = extract.loss_input_gradients(net, x, labels, batch_size=3, device="cpu", progress=False)
    for i in range(4):
        xi = x[i:i + 1].clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(net(xi), labels[i:i + 1])
        (expected,) = torch.autograd.grad(loss, xi)
        torch.testing.assert_close(batched[i:i + 1], expected, atol=1e-6, rtol=1e-4)
    assert all(p.requires_grad for p in net.parameters())
    with pytest.raises(ValueError, match="labels must be 4 integer"):
        extract.loss_input_gradients(net, x, labels[:3], device="cpu", progress=False)


@pytest.mark.parametrize("arch, expected", [("resnet18", "layer4.1.conv2"), ("resnet34", "layer4.2.conv2"),
                                            ("resnet50", "layer4.2.conv3"), ("resnet152", "layer4.2.conv3")])
def test_last_block_inner_conv_names_the_torchvision_layer(arch, expected):
    net = getattr(torchvision.models, arch)(weights=None)
    assert extract.last_block_inner_conv(net) == expected
    assert isinstance(nets.get_layer(net, expected), nn.Conv2d)


def test_layer_outputs_match_torchvision_feature_extraction():
    net = models.load_model("tiny-resnet18", "smoke", weights=None, device="cpu").train()
    images = data.make_benchmark(n_per_class=1, split="analysis", seed=0, image_size=32).images
    logits, maps = extract.layer_outputs(net, images, ["layer3", "layer4"], batch_size=3, device="cpu")
    _, means = extract.layer_outputs(net, images, ["layer3"], batch_size=4, device="cpu", spatial_mean=True)
    assert net.training and all(p.requires_grad for p in net.parameters())  # modes restored
    with torch.no_grad():
        oracle = create_feature_extractor(copy.deepcopy(net).eval(), ["layer3", "layer4", "fc"])(
            nets.prepare_inputs(net, images))
    torch.testing.assert_close(logits, oracle["fc"])
    for layer in ("layer3", "layer4"):
        torch.testing.assert_close(maps[layer], oracle[layer])
    torch.testing.assert_close(means["layer3"], oracle["layer3"].mean(dim=(2, 3)))
