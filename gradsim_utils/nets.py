"""What a model of the book is (DESIGN.md section 5): the ResNet layout, the tiny ResNets, the
:class:`ModelInfo` every loaded model carries, and the one preparation of images as model input.

- ``tiny-resnet18`` ... ``tiny-resnet152`` (:func:`build_tiny_resnet`): torchvision's stages and
  blocks (its own ``BasicBlock``/``Bottleneck``, the same attribute names) with a small base width
  and a small-image stem. ``training.py`` trains them, ``models.py`` loads them by name.
- ``model.gradsim_info`` (a :class:`ModelInfo`, set by ``models.load_model`` and the trainers)
  says how big and how normalised a model's input is; :func:`prepare_inputs` follows it, with
  :func:`prepare_images`, the one preparation of images as input, which training uses directly.
- :func:`feature_layer` names the layer F of gradient weights and Grad-CAM: the one whose output
  feeds global average pooling + one linear layer (logits = W GAP(F) + b, checked numerically by
  :func:`find_head`), or a layer the caller names (:func:`get_layer` checks it exists).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from . import checks
from .profiles import TINY_MODELS

__all__ = [
    "RESNET_LAYOUT", "FLOAT_TOLERANCE", "ModelInfo", "model_info", "classifier_weight", "TinyResNet", "build_tiny_resnet",
    "resnet_depth", "prepare_images", "prepare_inputs", "get_layer", "Head", "HeadNotFoundError", "find_head",
    "feature_layer", "gap_linear_head", "identity_applies",
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
    ``layer4``), ``middle_layer`` is the last stage at stride 16 (a ResNet's ``layer3``); all three
    are None for a model whose head is not GAP + linear (:func:`find_head`; then name a layer).
    ``resize_size``: the shorter side the weights' own preprocessing resizes to before its centre
    crop of ``input_size`` (torchvision's ``weights.transforms()``, timm's ``crop_pct``), if known.
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
    final_layer: str | None = "layer4"
    middle_layer: str | None = "layer3"
    classifier: str | None = "fc"
    resize_size: int | None = None


def model_info(model: nn.Module) -> ModelInfo:
    """``model.gradsim_info``, with a clear error for models not made by ``models.load_model``."""
    info = getattr(model, "gradsim_info", None)
    if not isinstance(info, ModelInfo):
        raise ValueError("model has no gradsim_info; load it with gradsim_utils.models.load_model")
    return info


def classifier_weight(model: nn.Module) -> torch.Tensor:
    """The weight matrix W (classes x channels) of the model's linear ``classifier``, on the CPU."""
    name = model_info(model).classifier
    if name is None:
        raise ValueError(f"{model_info(model).name}: its head is not global average pooling + one linear "
                         "layer, so it has no classifier matrix W (nets.find_head says why)")
    layer = dict(model.named_modules()).get(name)
    if not isinstance(layer, nn.Linear):
        raise ValueError(f"classifier {name!r} of {type(model).__name__} must be an nn.Linear, "
                         f"got {type(layer).__name__}")
    return layer.weight.detach().cpu()


# ---------------------------------------------------------------------------------------------
# layers: by name, and the layer that feeds global average pooling + linear


def get_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule called ``layer`` (a name from ``model.named_modules()``), or a ValueError."""
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"layer must be a non-empty module name, got {layer!r}")
    modules = dict(model.named_modules())
    if layer in modules:
        return modules[layer]
    names = [name for name in modules if name]
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
    children = [name for name, _ in model.named_children()]
    raise ValueError(
        f"unknown layer {layer!r} in {type(model).__name__}; close matches: {close}; "
        f"top-level layers: {children} (any name from model.named_modules() works)"
    )


class Head(NamedTuple):
    """Where a GAP + linear head sits: ``final_layer`` F with logits = ``classifier``(mean_hw F),
    and ``middle_layer``, the last module at twice F's side (stride 16 in a stride-32 network),
    or None when there is none."""

    final_layer: str
    classifier: str
    middle_layer: str | None


class HeadNotFoundError(ValueError):
    """No layer F of the model satisfies logits = W GAP(F) + b; the message says why."""


class _Record(NamedTuple):
    """One module call of a probe pass: its input's and output's spatial sides, its output's spatial mean."""

    name: str
    in_hw: tuple[int, ...] | None
    out_hw: tuple[int, ...]
    mean: torch.Tensor


def _probe(model: nn.Module, input_size: int):
    """One eval-mode forward of a seeded random image at ``input_size`` px with a hook on every module.

    Returns the logits; the calls of modules with a 4-D output, in the order they finish (a parent
    after its children); each nn.Linear's (input, output) and how often each module ran. Outputs are
    summarised when the hook fires, before any later in-place operation can change them.
    """
    records, linear_io, runs, handles = [], {}, {}, []

    def hook(name):
        def record(module, inputs, output):
            runs[name] = runs.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
                in_hw = tuple(x.shape[2:]) if x is not None and x.dim() == 4 else None
                records.append(_Record(name, in_hw, tuple(output.shape[2:]), output.float().mean(dim=(2, 3))))
            if isinstance(module, nn.Linear):
                linear_io[name] = (inputs[0].detach().float().clone(), output.detach().float().clone())
        return record

    training = model.training
    param = next(model.parameters())
    x = torch.randn(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook(name)))
        model.eval()
        with torch.no_grad():
            logits = model(x.to(param.device, param.dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    return logits, records, linear_io, runs


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to float32 rounding of a sum over space (relative to the largest value)."""
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()) + 1e-6)


def find_head(model: nn.Module, input_size: int = 224) -> Head:
    """The layer F whose output feeds global average pooling and one linear layer, found and checked
    numerically on one seeded random image of ``input_size`` px (forward hooks, eval mode).

    The classifier is the nn.Linear whose output is the logits (run once); F is the module, run once,
    with a spatial output (H'W' > 1) whose mean over space equals the classifier's input, so that
    logits = classifier(mean_hw F) holds to float tolerance (checked); of modules returning the
    same tensor the outermost (``layer4``, not ``layer4.1``). Module names are never pattern-matched.
    Raises HeadNotFoundError saying why for any other head: an MLP (VGG, MobileNetV3), a
    normalisation (ConvNeXt) or a functional ReLU (DenseNet) after the last layer, or no linear output.
    """
    logits, records, linear_io, runs = _probe(model, input_size)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise HeadNotFoundError(f"{type(model).__name__} does not return N x classes logits")
    logits = logits.detach().float()
    linears = [name for name, (_, out) in linear_io.items() if runs[name] == 1 and _close(out, logits)]
    if not linears:
        raise HeadNotFoundError(f"the logits of {type(model).__name__} are not the output of one nn.Linear layer")
    classifier = linears[-1]
    pooled = linear_io[classifier][0]
    found = [r for r in records if runs[r.name] == 1 and r.out_hw[0] * r.out_hw[1] > 1 and _close(r.mean, pooled)]
    if not found:
        raise HeadNotFoundError(
            f"no layer of {type(model).__name__} feeds global average pooling + the linear classifier "
            f"{classifier!r} ({pooled.shape[1]} inputs) directly: its head does more between the last "
            "feature map and the logits (an MLP as in VGG or MobileNetV3, a normalisation as in ConvNeXt, "
            "a functional ReLU as in DenseNet), so logits = W GAP(F) + b holds for no layer F")
    final = found[-1]
    weight = dict(model.named_modules())[classifier]
    if not _close(F.linear(final.mean, weight.weight.float(), None if weight.bias is None else weight.bias.float()),
                  logits):
        raise HeadNotFoundError(f"{classifier!r}(GAP({final.name!r})) does not reproduce the logits")
    middle_hw = tuple(2 * side for side in final.out_hw)
    # modules that halve a 2x-side input (the last stage, its first block) and their children come later
    halving = [r.name + "." for r in records if r.in_hw == middle_hw and r.out_hw == final.out_hw]
    middles = [r.name for r in records if runs[r.name] == 1 and r.out_hw == middle_hw
               and not r.name.startswith(tuple(halving))]
    return Head(final.name, classifier, middles[-1] if middles else None)


def feature_layer(model: nn.Module, layer: str | None = None, input_size: int | None = None) -> str:
    """The layer name for gradient weights and Grad-CAM on ``model``.

    ``layer`` given: checked to exist (:func:`get_layer`) and returned, for any model. ``None``:
    ``gradsim_info.final_layer`` when set (checked by :func:`find_head` at load time), else
    :func:`find_head`'s layer at ``input_size`` px (None: the model's input size, or 224); a model
    whose head is not GAP + linear raises HeadNotFoundError telling the caller to pass ``layer=``.
    """
    if layer is not None:
        get_layer(model, layer)
        return layer
    info = getattr(model, "gradsim_info", None)
    if isinstance(info, ModelInfo) and info.final_layer is not None:
        return info.final_layer
    size = input_size or (info.input_size if isinstance(info, ModelInfo) else 224)
    try:
        return find_head(model, size).final_layer
    except HeadNotFoundError as err:
        convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
        hint = f" (e.g. the last convolution {convs[-1]!r})" if convs else ""
        raise HeadNotFoundError(f"{err}. Pass layer= to name the layer{hint}; the identity "
                                "w = W_c / (H'W') does not hold there, gradient weights are computed by backward") from None


def gap_linear_head(model: nn.Module) -> Head | None:
    """The model's GAP + linear head: from ``gradsim_info`` (set by ``models.load_model``), else found by
    :func:`find_head` on a 224 px probe (a plain module); None when the model has no such head."""
    info = getattr(model, "gradsim_info", None)
    if isinstance(info, ModelInfo):
        return None if info.classifier is None else Head(info.final_layer, info.classifier, info.middle_layer)
    try:
        return find_head(model)
    except HeadNotFoundError:
        return None


def identity_applies(model: nn.Module, layer: str) -> bool:
    """Whether the gradient weights at ``layer`` are the classifier rows, w = W_c / (H'W'): true
    when ``layer`` feeds global average pooling and the linear classifier (:func:`gap_linear_head`),
    e.g. ``layer4`` of a ResNet; false at any other layer and for any other head."""
    head = gap_linear_head(model)
    return head is not None and layer == head.final_layer


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
                   memory_format: torch.memory_format | None = None, resize_size: int | None = None) -> torch.Tensor:
    """The one preparation of images as model input: float32 on ``device``, (x / 255 - mean) / std.

    images: N x 3 x H x W, uint8 on 0-255 or float on 0-1 (checked). Images already ``size`` x
    ``size`` (or ``size`` None) are only normalised: they are taken as the input crop itself (the
    benchmark is rendered at the model's input size; folders of the paper profile are loaded as the
    weights' crop by ``data.load_image_folder``). Other sizes: with ``resize_size``, the weights' own
    preprocessing (torchvision's ``weights.transforms()``, through the same torchvision functions, so
    equal on tensors): the shorter side resized to ``resize_size`` (bilinear, antialiased; uint8 stays
    uint8, rounded, as torchvision does), centre crop ``size`` x ``size``; without it, a bilinear
    antialiased resize straight to ``size`` x ``size``. Then normalised per channel with
    ``mean``/``std`` (sequences or tensors, on a 0-1 scale). ``memory_format``: the result's layout
    (``devices.place``'s format), or None to leave it as computed.
    """
    _check_batch(images)
    resize_size = checks.integers(1, resize_size=resize_size, optional=True)
    resize = size is not None and tuple(images.shape[-2:]) != (size, size)
    if resize and resize_size is not None:
        if size > resize_size:
            raise ValueError(f"the crop size {size} must not exceed resize_size {resize_size}")
        cropped = TF.resize(images.to(device), [resize_size], TF.InterpolationMode.BILINEAR, antialias=True)
        images, resize = TF.center_crop(cropped, [size]), False
    x = _unit_float(images, device)
    if resize:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean, std = (torch.as_tensor(v, device=device).view(1, 3, 1, 1) for v in (mean, std))
    x = (x - mean) / std
    return x if memory_format is None else x.contiguous(memory_format=memory_format)


def prepare_inputs(model: nn.Module, images: torch.Tensor,
                   memory_format: torch.memory_format | None = None) -> torch.Tensor:
    """:func:`prepare_images` for ``model``: on its device, at ``gradsim_info``'s input size, resize size
    (the weights' own preprocessing, when known) and normalisation."""
    info = model_info(model)
    return prepare_images(images, next(model.parameters()).device, info.mean, info.std, info.input_size,
                          memory_format, info.resize_size)


def _check_batch(images) -> None:
    """Raise unless ``images`` is a non-empty N x 3 x H x W tensor."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty N x 3 x H x W tensor, got shape {tuple(images.shape)}")


def _unit_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Checked N x 3 x H x W images as float32 on a 0-1 scale on ``device``: uint8 (0-255) is
    divided by 255; float must already lie in [0, 1] and be finite; anything else raises."""
    _check_batch(images)
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
