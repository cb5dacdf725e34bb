"""Run profiles (DESIGN.md section 3).

A profile fixes everything a chapter needs to know about scale: which data, which models, how
large. Chapters take ``profile`` as a papermill parameter and read the rest from here; any field
can be overridden with ``get_profile(name, **overrides)``. The sizes of single chapters live here
too, in ``Profile.extra`` (one dict of plain settings per chapter), read with
``chapter_settings(profile, chapter, **overrides)``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

__all__ = ["Profile", "PROFILES", "get_profile", "training_seeds", "chapter_settings"]

TINY_MODELS = tuple(f"tiny-resnet{d}" for d in (18, 34, 50, 101, 152))
TORCHVISION_MODELS = tuple(f"resnet{d}" for d in (18, 34, 50, 101, 152))
LITE_MODEL_NAMES = tuple(f"efficientnet-lite{i}" for i in range(3))


@dataclass(frozen=True)
class Profile:
    """Scale settings of one profile.

    data: "benchmark" (controlled, offline), "diffusion" (Stable Diffusion images) or
    "diffusion-dryrun" (a tiny random diffusers pipeline). weights: torchvision weights name for
    the ImageNet models, or None for random weights. regime: the key of ``report.REGIMES`` that the
    profile's own models and data form ("tiny" or "paper"). n_training_seeds: how many training runs
    of each tiny ResNet the chapters pool (:func:`training_seeds`). extra: per-chapter settings,
    ``{chapter: {setting: value}}`` (see :func:`chapter_settings`); left out of the hash.
    """

    name: str
    data: str
    models: tuple[str, ...]
    image_size: int
    n_train_per_class: int
    n_analysis_per_class: int
    epochs: int = 1
    batch_size: int = 64
    base_width: int = 16
    weights: str | None = None
    diffusion_model: str | None = None
    diffusion_steps: int = 30
    regime: str = "tiny"
    n_training_seeds: int = 1
    extra: dict = field(default_factory=dict, hash=False)


# Chapter 8 ("sfam", the fields of metric_learning.MetricConfig): what the profiles below leave as is.
_SFAM = dict(base_width=16, weights=None, n_train_per_class=300, train_steps=150, train_way=10, train_shot=4,
             train_query=4, lr=3e-3, n_eval_per_class=60, n_episodes=1000, n_loc_episodes=1000,
             n_sanity_pairs=48, n_sanity_stages=None, batch_size=128, micro_batch=None, autocast=None)
# How the diffusion profiles' images are loaded ("images"): as the paper weights' transforms()
# (IMAGENET1K_V1 of every ResNet: shorter side to 256, bilinear, centre crop to image_size; tested).
_PAPER_IMAGES = dict(resize_size=256)
_TINY_METRIC = (("euclidean", "tiny-resnet18"), ("cosine", "tiny-resnet18"))
_TORCHVISION_METRIC = (("euclidean", "resnet18"), ("cosine", "resnet50"))
# Chapter 9 ("alignment") always trains on the benchmark: paper-dryrun runs the smoke sizes,
# paper the quick ones. configs: (form, lambda) pairs; lambda 0 is the plain classifier.
_ALIGNMENT_SMOKE = dict(image_size=32, n_train_per_class=8, n_analysis_per_class=4, epochs=1, n_seeds=1,
                        configs=(("cosine", 0.0), ("cosine", 1.0)), n_curvature_images=4, power_iterations=3)
_ALIGNMENT_QUICK = dict(image_size=32, n_train_per_class=150, n_analysis_per_class=50, epochs=2, n_seeds=3,
                        configs=(("cosine", 0.0), ("cosine", 0.1), ("cosine", 1.0), ("euclidean", 1.0)),
                        n_curvature_images=20, power_iterations=8)
# The second offline regime ("lite", DESIGN.md section 5a): the pretrained EfficientNet-Lite models,
# frozen, on n_analysis_per_class benchmark images per class rendered at each model's input size.
_LITE_QUICK = dict(models=LITE_MODEL_NAMES, n_analysis_per_class=20)
_LITE_SMOKE = dict(models=LITE_MODEL_NAMES[:2], n_analysis_per_class=4)  # two: loops over models run
# Chapter 7 ("rsvc") trains its marker pair on the benchmark too (marker_train / marker_analysis images
# per class, marker_epochs); its depth comparison analyses `classes` classes, the layer-wise heatmap
# `layer_classes`.

PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", data="benchmark", models=("tiny-resnet18", "tiny-resnet50"),
        image_size=32, n_train_per_class=20, n_analysis_per_class=6, epochs=1, n_training_seeds=2,
        extra={"sfam": {**_SFAM, "backbones": _TINY_METRIC, "image_size": 32, "base_width": 8,
                        "n_train_per_class": 20, "train_steps": 3, "train_shot": 2, "train_query": 2,
                        "n_eval_per_class": 8, "n_episodes": 100, "n_loc_episodes": 60, "n_sanity_pairs": 8},
               "lite": _LITE_SMOKE,
               "rsvc": dict(marker_train=40, marker_analysis=6, marker_epochs=1, classes=2, layer_classes=2),
               "alignment": _ALIGNMENT_SMOKE},
    ),
    "quick": Profile(
        name="quick", data="benchmark", models=TINY_MODELS,
        image_size=32, n_train_per_class=500, n_analysis_per_class=50, epochs=2,
        n_training_seeds=3,
        extra={"sfam": {**_SFAM, "backbones": _TINY_METRIC, "image_size": 64, "base_width": 8,
                        "n_train_per_class": 300, "train_steps": 120, "n_eval_per_class": 80,
                        "n_episodes": 1000, "n_loc_episodes": 1000, "n_sanity_pairs": 48},
               "lite": _LITE_QUICK,
               "rsvc": dict(marker_train=300, marker_analysis=50, marker_epochs=3, classes=5, layer_classes=3),
               "alignment": _ALIGNMENT_QUICK},
    ),
    "paper": Profile(
        name="paper", data="diffusion", models=TORCHVISION_MODELS,
        image_size=224, n_train_per_class=0, n_analysis_per_class=100,
        weights="IMAGENET1K_V1", diffusion_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        diffusion_steps=30, regime="paper",
        extra={"images": _PAPER_IMAGES, "lite": _LITE_QUICK,
               "sfam": {**_SFAM, "backbones": _TORCHVISION_METRIC, "image_size": 224, "weights": "IMAGENET1K_V1",
                        "train_steps": 2000, "train_way": 20, "train_shot": 5, "train_query": 10, "lr": 1e-3,
                        "n_eval_per_class": 60, "n_episodes": 2000, "n_loc_episodes": 10000,
                        "n_sanity_pairs": 100, "batch_size": 64, "micro_batch": 100},
               "rsvc": dict(marker_train=300, marker_analysis=50, marker_epochs=3, classes=10, layer_classes=10),
               "alignment": _ALIGNMENT_QUICK},
    ),
    "paper-dryrun": Profile(
        name="paper-dryrun", data="diffusion-dryrun", models=TORCHVISION_MODELS,
        image_size=224, n_train_per_class=0, n_analysis_per_class=2,
        weights=None, diffusion_model=None, diffusion_steps=2, regime="paper",
        extra={"images": _PAPER_IMAGES, "lite": _LITE_SMOKE,
               "sfam": {**_SFAM, "backbones": _TORCHVISION_METRIC, "image_size": 224, "weights": None,
                        "train_steps": 0, "n_eval_per_class": 7, "n_episodes": 20, "n_loc_episodes": 10,
                        "n_sanity_pairs": 3, "n_sanity_stages": 3, "batch_size": 32},
               "rsvc": dict(marker_train=40, marker_analysis=6, marker_epochs=1, classes=3, layer_classes=2),
               "alignment": _ALIGNMENT_SMOKE},
    ),
}


def get_profile(name: str = "quick", **overrides) -> Profile:
    """The profile called ``name``, with any field replaced by ``overrides``."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return replace(PROFILES[name], **overrides)


def training_seeds(profile: str | Profile, seed: int = 0) -> tuple[int, ...]:
    """The training seeds of a profile's tiny ResNets: ``seed, seed + 1, ...`` (``n_training_seeds``
    of them). The first equals the data seed, so its models are the ones a single run trains."""
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    return tuple(seed + k for k in range(prof.n_training_seeds))


def chapter_settings(profile: str | Profile, chapter: str, **overrides) -> dict:
    """A copy of ``profile``'s settings for ``chapter`` (e.g. "sfam", "rsvc", "alignment"), with any
    setting replaced by ``overrides``; an override that names no setting of the chapter is an error."""
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    if chapter not in prof.extra:
        raise ValueError(f"profile {prof.name!r} has no settings for chapter {chapter!r}; it has {sorted(prof.extra)}")
    settings = copy.deepcopy(prof.extra[chapter])
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ValueError(f"unknown {chapter} setting(s) {unknown} for profile {prof.name!r}; "
                         f"choose from {sorted(settings)}")
    return {**settings, **overrides}
