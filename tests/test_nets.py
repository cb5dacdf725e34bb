"""nets: tiny ResNet layouts against torchvision, input preparation against torchvision's Normalize."""
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
    plain = nets.prepare_images(images, torch.device("cpu"), models.IMAGENET_MEAN, models.IMAGENET_STD, 224)
    assert torch.equal(plain, nets.prepare_inputs(model, images))
    last = nets.prepare_inputs(model, images, torch.channels_last)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, plain)
    same = nets.prepare_images(images, torch.device("cpu"), torch.tensor(models.IMAGENET_MEAN),
                               models.IMAGENET_STD)
    assert same.shape == (2, 3, 40, 40)                                  # size None: no resize


def test_model_info_names_the_loader():
    with pytest.raises(ValueError, match="no gradsim_info.*load_model"):
        nets.model_info(torchvision.models.resnet18(weights=None))
    with pytest.raises(ValueError, match="no gradsim_info"):
        nets.prepare_inputs(torch.nn.Linear(2, 2), torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
