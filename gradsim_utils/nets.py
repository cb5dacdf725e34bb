"""What a model of the book is (DESIGN.md section 5): the ResNet layout, the tiny ResNets, the
:class:`ModelInfo` every loaded model carries, and the one preparation of images as model input.

- ``tiny-resnet18`` ... ``tiny-resnet152`` (:func:`build_tiny_resnet`): torchvision's stages and
  blocks (its own ``BasicBlock``/``Bottleneck``, the same attribute names) with a small base width
  and a small-image stem. ``training.py`` trains them, ``models.py`` loads them by name.
- ``model.gradsim_info`` (a :class:`ModelInfo`, set by ``models.load_model`` and the trainers)
  says how big and how normalised a model's input is; :func:`prepare_inputs` follows it, with
  :func:`prepare_images`, the one preparation of images as input, which training uses directly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from .profiles import TINY_MODELS

__all__ = [
    "RESNET_LAYOUT", "FLOAT_TOLERANCE", "ModelInfo", "model_info", "classifier_weight", "TinyResNet", "build_tiny_resnet",
    "resnet_depth", "prepare_images", "prepare_inputs",
]

# float images may overshoot 0-1 this much (e.g. after an antialiased resize) before we object
FLOAT_TOLERANCE = 0.02

# depth -> (block class, blocks per stage), as in torchvision's resnetXX builders
RESNET_LAYOUT = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


@dataclass(frozen=True)
class ModelInfo:
    """What callers need to know about a loaded model.

    ``input_size`` is the square side images are resized to; ``mean``/``std`` the per-channel
    normalisation on a 0-1 scale. ``weights`` names the weights (``None``: random).
    ``analysis_accuracy``, ``train_seconds`` and ``machine`` (``provenance.training_machine``)
    are set for models trained here. The layer names give each architecture's hooks by role:
    ``final_layer`` feeds global average pooling and the linear ``classifier`` (a ResNet's
    ``layer4``), ``middle_layer`` is the last stage at stride 16 (a ResNet's ``layer3``).
    """

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: tuple[str, ...]
    weights: str | None = None
    analysis_accuracy: float | None = None
    train_seconds: float | None = None
    machine: dict | None = None
    final_layer: str = "layer4"
    middle_layer: str = "layer3"
    classifier: str = "fc"


def model_info(model: nn.Module) -> ModelInfo:
    """``model.gradsim_info``, with a clear error for models not made by ``models.load_model``."""
    info = getattr(model, "gradsim_info", None)
    if not isinstance(info, ModelInfo):
        raise ValueError("model has no gradsim_info; load it with gradsim_utils.models.load_model")
    return info


def classifier_weight(model: nn.Module) -> torch.Tensor:
    """The weight matrix W (classes x channels) of the model's linear ``classifier``, on the CPU."""
    name = model_info(model).classifier
    layer = dict(model.named_modules()).get(name)
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"classifier {name!r} of {type(model).__name__} must be an nn.Linear, "
                         f"got {type(layer).__name__}")
    return layer.weight.detach().cpu()


# ---------------------------------------------------------------------------------------------
# tiny ResNets


def resnet_depth(name: str) -> int:
    """The depth NN in a model name ``resnetNN`` or ``tiny-resnetNN``."""
    return int(name.rsplit("resnet", 1)[1])


class TinyResNet(nn.Module):
    """torchvision's ResNet layout for small images: 3x3 stride-1 stem, no max-pool, width ``w``.

    Stage widths are ``w, 2w, 4w, 8w`` (times 4 at the output of Bottleneck blocks). Attribute
    names follow torchvision (``conv1 bn1 relu layer1..layer4 avgpool fc``), so a layer name such
    as ``"layer4.1.conv2"`` denotes the same place in both families.
    """

    def __init__(self, block: type[nn.Module], layers: tuple[int, int, int, int], num_classes: int,
                 base_width: int = 16, zero_init_residual: bool = False):
        super().__init__()
        self.inplanes = base_width
        self.conv1 = nn.Conv2d(3, base_width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, base_width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * base_width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * base_width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * base_width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * base_width * block.expansion, num_classes)
        self._init_weights(zero_init_residual)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        """One stage: a (possibly strided, projected) first block, then ``blocks - 1`` more."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        stage += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def _init_weights(self, zero_init_residual: bool) -> None:
        """torchvision's initialisation; optionally zero the last BN scale of every residual branch."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build_tiny_resnet(name: str, num_classes: int, base_width: int = 16,
                      zero_init_residual: bool = False) -> TinyResNet:
    """An untrained tiny ResNet called ``tiny-resnetNN`` (NN in 18, 34, 50, 101, 152)."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny ResNet {name!r}; choose one of {list(TINY_MODELS)}")
    if num_classes < 2 or base_width < 1:
        raise ValueError(f"need num_classes >= 2 and base_width >= 1, got {num_classes}, {base_width}")
    block, layers = RESNET_LAYOUT[resnet_depth(name)]
    return TinyResNet(block, layers, num_classes, base_width, zero_init_residual)


# ---------------------------------------------------------------------------------------------
# input preparation


def prepare_images(images: torch.Tensor, device: torch.device, mean, std, size: int | None = None,
                   memory_format: torch.memory_format | None = None) -> torch.Tensor:
    """The one preparation of images as model input: float32 on ``device``, (x / 255 - mean) / std.

    images: N x 3 x H x W, uint8 on 0-255 or float on 0-1 (checked). They are resized (bilinear,
    with antialiasing) to ``size`` x ``size`` when given and different, then normalised per channel
    with ``mean``/``std`` (sequences or tensors, on a 0-1 scale). ``memory_format``: the result's
    layout (``devices.place``'s format), or None to leave it as computed.
    """
    x = _unit_float(images, device)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean, std = (torch.as_tensor(v, device=device).view(1, 3, 1, 1) for v in (mean, std))
    x = (x - mean) / std
    return x if memory_format is None else x.contiguous(memory_format=memory_format)


def prepare_inputs(model: nn.Module, images: torch.Tensor,
                   memory_format: torch.memory_format | None = None) -> torch.Tensor:
    """:func:`prepare_images` for ``model``: on its device, at ``gradsim_info``'s input size and
    normalisation."""
    info = model_info(model)
    return prepare_images(images, next(model.parameters()).device, info.mean, info.std, info.input_size,
                          memory_format)


def _unit_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Checked N x 3 x H x W images as float32 on a 0-1 scale on ``device``: uint8 (0-255) is
    divided by 255; float must already lie in [0, 1] and be finite; anything else raises."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty N x 3 x H x W tensor, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.to(device).float().div_(255)
    elif images.is_floating_point():
        x = images.to(device, torch.float32)
        bad = (~torch.isfinite(x)).sum().item()
        if bad:
            raise ValueError(f"images contain {bad} NaN or Inf values")
        low, high = x.min().item(), x.max().item()
        if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
            raise ValueError(f"float images must be on a 0-1 scale, got values in [{low:.3g}, {high:.3g}]")
    else:
        raise TypeError(f"images must be uint8 (0-255) or float (0-1), got dtype {images.dtype}")
    return x
