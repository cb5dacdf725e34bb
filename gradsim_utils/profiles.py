"""Run profiles (DESIGN.md section 3).

A profile fixes everything a chapter needs to know about scale: which data, which models, how
large. Chapters take ``profile`` as a papermill parameter and read the rest from here; any field
can be overridden with ``get_profile(name, **overrides)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["Profile", "PROFILES", "get_profile"]

TINY_MODELS = tuple(f"tiny-resnet{d}" for d in (18, 34, 50, 101, 152))
TORCHVISION_MODELS = tuple(f"resnet{d}" for d in (18, 34, 50, 101, 152))


@dataclass(frozen=True)
class Profile:
    """Scale settings of one profile.

    data: "benchmark" (controlled, offline), "diffusion" (Stable Diffusion images) or
    "diffusion-dryrun" (a tiny random diffusers pipeline). weights: torchvision weights name for
    the ImageNet models, or None for random weights.
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
    extra: dict = field(default_factory=dict)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", data="benchmark", models=("tiny-resnet18", "tiny-resnet50"),
        image_size=32, n_train_per_class=20, n_analysis_per_class=6, epochs=1,
    ),
    "quick": Profile(
        name="quick", data="benchmark", models=TINY_MODELS,
        image_size=32, n_train_per_class=500, n_analysis_per_class=50, epochs=2,
    ),
    "paper": Profile(
        name="paper", data="diffusion", models=TORCHVISION_MODELS,
        image_size=224, n_train_per_class=0, n_analysis_per_class=100,
        weights="IMAGENET1K_V1", diffusion_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        diffusion_steps=30,
    ),
    "paper-dryrun": Profile(
        name="paper-dryrun", data="diffusion-dryrun", models=TORCHVISION_MODELS,
        image_size=224, n_train_per_class=0, n_analysis_per_class=2,
        weights=None, diffusion_model=None, diffusion_steps=2,
    ),
}


def get_profile(name: str = "quick", **overrides) -> Profile:
    """The profile called ``name``, with any field replaced by ``overrides``."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return replace(PROFILES[name], **overrides)

