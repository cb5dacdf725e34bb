"""nets: tiny ResNet layouts against torchvision, input preparation against torchvision's Normalize."""
import dataclasses

import pytest
import torch
import torchvision
from torchvision import transforms

from gradsim_utils import models, nets

DEPTHS = (18, 34, 50, 101, 152)


def _layer_names(model: torch.nn.Module) -> set[str]:
    return {name for name, _ in model.named_modules() if name.startswith("layer")}


@pytest.mark.parametrize("depth", DEPTHS)
def test_tiny_resnet_has_torchvision_blocks_and_names(depth):
    tiny = nets.build_tiny_resnet(f"tiny-resnet{depth}", num_classes=10, base_width=16)
    reference = torchvision.models.get_model(f"resnet{depth}", weights=None)
    assert _layer_names(tiny) == _layer_names(reference)
    assert [n for n, _ in tiny.named_children()] == [
        n for n, _ in reference.named_children() if n != "maxpool"]
    assert "layer4.1.conv2" in _layer_names(tiny)
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        assert type(getattr(tiny, stage)[0]) is type(getattr(reference, stage)[0])


@pytest.mark.parametrize("depth, channels", [(18, 128), (50, 512)])
def test_tiny_resnet_output_and_feature_shapes(depth, channels):
    model = nets.build_tiny_resnet(f"tiny-resnet{depth}", num_classes=10, base_width=16).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        stem = model.relu(model.bn1(model.conv1(x)))
        features = model.layer4(model.layer3(model.layer2(model.layer1(stem))))
        logits = model(x)
    assert stem.shape == (3, 16, 32, 32)
    assert features.shape == (3, channels, 4, 4)
    assert logits.shape == (3, 10)
    assert model.fc.in_features == channels


def test_prepare_inputs_matches_torchvision_normalize():
    model = models.load_model("resnet18", weights=None, device="cpu")
    images = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    images[0, :, 0, 0] = torch.tensor([0, 128, 255], dtype=torch.uint8)
    expected = transforms.Normalize(models.IMAGENET_MEAN, models.IMAGENET_STD)(images.float() / 255)
    prepared = nets.prepare_inputs(model, images)
    assert prepared.dtype == torch.float32 and prepared.shape == (2, 3, 224, 224)
    torch.testing.assert_close(prepared, expected)
    hand = torch.tensor([(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    torch.testing.assert_close(prepared[0, :, 0, 0], hand)
    torch.testing.assert_close(nets.prepare_inputs(model, images.float() / 255), expected)


def test_prepare_inputs_resizes_and_rejects_bad_input():
    model = models.load_model("resnet18", weights=None, device="cpu")
    constant = torch.full((1, 3, 32, 32), 0.5)
    resized = nets.prepare_inputs(model, constant)
    assert resized.shape == (1, 3, 224, 224)
    torch.testing.assert_close(resized[0, :, 100, 7], (0.5 - torch.tensor(models.IMAGENET_MEAN))
                               / torch.tensor(models.IMAGENET_STD))
    for bad_value in (float("nan"), float("inf")):
        images = torch.rand(2, 3, 224, 224)
        images[1, 2, 3, 4] = bad_value
        with pytest.raises(ValueError, match="NaN or Inf"):
            nets.prepare_inputs(model, images)
    with pytest.raises(ValueError, match="0-1 scale"):
        nets.prepare_inputs(model, torch.rand(1, 3, 224, 224) * 255)
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        nets.prepare_inputs(model, torch.rand(3, 224, 224))


def test_prepare_images_is_prepare_inputs_and_sets_the_layout():
    model = models.load_model("resnet18", weights=None, device="cpu")
    images = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    plain = nets.prepare_images(images, torch.device("cpu"), models.IMAGENET_MEAN, models.IMAGENET_STD, 224,
                                resize_size=256)
    assert torch.equal(plain, nets.prepare_inputs(model, images))
    last = nets.prepare_inputs(model, images, torch.channels_last)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, plain)
    same = nets.prepare_images(images, torch.device("cpu"), torch.tensor(models.IMAGENET_MEAN),
                               models.IMAGENET_STD)
    assert same.shape == (2, 3, 40, 40)                                  # size None: no resize


def test_prepare_inputs_is_the_weights_transforms_on_tensors():
    """Not input-sized images go through weights.transforms(): shorter side to 256, centre crop 224."""
    model = models.load_model("resnet50", weights=None, device="cpu", checkpoint=None)
    assert (nets.model_info(model).resize_size, nets.model_info(model).input_size) == (232, 224)  # DEFAULT: V2
    reference = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.transforms()
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 300, 451), dtype=torch.uint8, generator=generator)  # landscape
    tall = torch.rand(2, 3, 333, 250, generator=generator)                                    # portrait, float
    for batch in (images, images.float() / 255, tall):
        ours = nets.prepare_images(batch, torch.device("cpu"), reference.mean, reference.std, 224, resize_size=256)
        assert ours.shape == (2, 3, 224, 224)
        assert (ours - reference(batch)).abs().max().item() < 1e-5
    square = torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8, generator=generator)
    taken = nets.prepare_images(square, torch.device("cpu"), reference.mean, reference.std, 224, resize_size=256)
    torch.testing.assert_close(taken, nets.prepare_images(square, torch.device("cpu"), reference.mean,
                                                          reference.std, 224))    # input-sized: the crop itself
    with pytest.raises(ValueError, match="resize_size"):
        nets.prepare_images(images, torch.device("cpu"), reference.mean, reference.std, 224, resize_size=0)
    with pytest.raises(ValueError, match="must not exceed resize_size"):
        nets.prepare_images(images, torch.device("cpu"), reference.mean, reference.std, 224, resize_size=200)


def test_model_info_names_the_loader():
    with pytest.raises(ValueError, match="no gradsim_info.*load_model"):
        nets.model_info(torchvision.models.resnet18(weights=None))
    with pytest.raises(ValueError, match="no gradsim_info"):
        nets.prepare_inputs(torch.nn.Linear(2, 2), torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


# ---------------------------------------------------------------------------------------------
# the layer of gradient weights and Grad-CAM, for any CNN

GAP_LINEAR = ["resnet18", "efficientnet_b0", "regnet_y_400mf", "timm:resnet18"]
OTHER_HEADS = ["vgg11", "densenet121", "mobilenet_v3_small", "convnext_tiny"]  # MLP, F.relu, MLP, LayerNorm


@pytest.mark.parametrize("name", GAP_LINEAR)
def test_found_layer_satisfies_the_identity(name):
    from gradsim_utils import extract

    model = models.load_model(name, weights=None, seed=0, device="cpu")
    layer = nets.feature_layer(model)
    assert layer == model.gradsim_info.final_layer
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model.gradsim_info = dataclasses.replace(model.gradsim_info, input_size=64)  # small and fast
    reps = extract.representations(model, images, layer=layer, device="cpu", progress=False)
    head = nets.get_layer(model, model.gradsim_info.classifier)
    torch.testing.assert_close(head(reps.features.mean(dim=(2, 3))), reps.logits, rtol=1e-4, atol=1e-4)
    assert extract.gradient_weight_identity_error(model, reps, model.gradsim_info.classifier) < 1e-4
    middle = model.gradsim_info.middle_layer
    assert middle is not None and nets.get_layer(model, middle) is not None


@pytest.mark.parametrize("name", OTHER_HEADS)
def test_other_heads_need_an_explicit_layer(name):
    model = models.load_model(name, weights=None, seed=0, device="cpu")
    assert model.gradsim_info.final_layer is None and model.gradsim_info.classifier is None
    with pytest.raises(nets.HeadNotFoundError, match="Pass layer="):
        nets.feature_layer(model)
    with pytest.raises(ValueError, match="no classifier matrix"):
        nets.classifier_weight(model)


def test_an_explicit_layer_works_for_vgg11():
    from gradsim_utils import extract

    model = models.load_model("vgg11", weights=None, seed=0, device="cpu")
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert nets.feature_layer(model, "features.19") == "features.19"  # the ReLU after the last conv
    assert convs[-1] == "features.18"
    with pytest.raises(ValueError, match="unknown layer 'features.99'.*close matches"):
        nets.feature_layer(model, "features.99")
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model.gradsim_info = dataclasses.replace(model.gradsim_info, input_size=64)
    reps = extract.representations(model, images, layer="features.19", device="cpu", progress=False)
    assert reps.features.shape == (2, 512, 4, 4) and reps.grad_weights.shape == (2, 512)
    assert reps.logits.shape == (2, 1000) and torch.isfinite(reps.grad_weights).all()


def test_identity_applies_only_at_the_layer_feeding_gap_and_linear():
    resnet = models.load_model("resnet18", weights=None, seed=0, device="cpu")
    assert nets.identity_applies(resnet, "layer4")
    assert not nets.identity_applies(resnet, "layer3") and not nets.identity_applies(resnet, "layer4.1.conv2")
    vgg = models.load_model("vgg11", weights=None, seed=0, device="cpu")
    assert not nets.identity_applies(vgg, "features.19") and not nets.identity_applies(vgg, "features.20")
    plain = torchvision.models.resnet18(num_classes=3)  # no gradsim_info: the head is found by a probe
    assert nets.identity_applies(plain, "layer4") and not nets.identity_applies(plain, "layer3")
    assert nets.gap_linear_head(plain) == ("layer4", "fc", "layer3") and nets.gap_linear_head(vgg) is None
    assert not nets.identity_applies(torchvision.models.vgg11(num_classes=3), "features.19")


def test_find_head_checks_numbers_not_names():
    """A ReLU after the pooled features breaks logits = W GAP(F) + b even with ResNet's names."""
    model = torchvision.models.resnet18(num_classes=3)
    assert nets.find_head(model, 64) == ("layer4", "fc", "layer3")
    model.layer4.add_module("shift", torch.nn.Conv2d(512, 512, 1))  # still GAP + fc, new last module
    assert nets.find_head(model, 64).final_layer == "layer4"
    model.fc = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(512, 3))
    with pytest.raises(nets.HeadNotFoundError, match="no layer of ResNet"):
        nets.find_head(model, 64)
