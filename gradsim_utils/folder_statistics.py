"""Class statistics of an ImageNet-style image folder, streamed class by class (seed 002's paper path).

Each class folder is loaded, cropped and passed through the model alone, and only its GAP and
hidden-state sums are kept (:class:`class_statistics.ClassStats`), so the ImageNet validation set
fits in memory; folder names map to ImageNet indices with ``models.imagenet_class_indices``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import data, models
from .class_statistics import ClassStats
from .gap_statistics import gap_features

__all__ = ["FolderStats", "image_folder_stats"]


@dataclass
class FolderStats:
    """Streamed statistics of an image folder: class names, ImageNet indices, ClassStats, thumbnails."""

    class_names: list[str]
    imagenet_indices: list[int]
    gap: dict[str, ClassStats]
    hidden: ClassStats
    thumbnails: torch.Tensor
    n_images: int
    accuracy: float


def image_folder_stats(root, model: nn.Module, class_names: Sequence[str] | None = None,
                       where: Sequence[str] = ("conv",), batch_size: int = 32, resize: int = 256,
                       crop: int = 224, device: str | torch.device = "auto", progress: bool = True) -> FolderStats:
    """Stream ``root/<class>/<image>`` class by class through ``model``: per-class GAP and hidden sums.

    Each image is resized so its shorter side is ``resize`` (bilinear, antialiased) and centre-cropped
    to ``crop``: the reference's Resize(256) + CenterCrop(224), torchvision's default bilinear, as its
    weights' transforms() (``data.load_image_folder`` with ``resize_size``). Only one class's images are in memory
    at a time; ``accuracy`` is top-1 against the folders' ImageNet indices
    (``models.imagenet_class_indices``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; pass an ImageNet-style folder "
                                "(one sub-folder per class, e.g. the ImageNet validation set)")
    if class_names is None:
        class_names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    class_names = list(class_names)
    if len(class_names) < 2:
        raise ValueError(f"image folder {root} needs at least two class folders, found {class_names}")
    categories = getattr(getattr(model, "gradsim_info", None), "class_names", None)
    if not categories:
        raise ValueError("model must come from models.load_model (its ImageNet class names are needed)")
    indices = models.imagenet_class_indices(class_names, categories)
    if not 0 < crop <= resize:
        raise ValueError(f"need 0 < crop <= resize, got crop={crop}, resize={resize}")
    gap_stats: dict[str, ClassStats] = {}
    hidden_stats = None
    thumbs, n_images, correct = [], 0, 0
    for label, name in enumerate(tqdm(class_names, desc="classes", unit="class", disable=not progress)):
        images = data.load_image_folder(root, image_size=crop, class_names=[name], resize_size=resize).images
        feats = gap_features(model, images, where=where, batch_size=batch_size, device=device, progress=False)
        labels = torch.full((len(images),), label, dtype=torch.long)
        for w, g in feats.gap.items():
            gap_stats.setdefault(w, ClassStats(len(class_names), g.shape[1])).update(g, labels)
        if hidden_stats is None:
            hidden_stats = ClassStats(len(class_names), feats.hidden.shape[1])
        hidden_stats.update(feats.hidden, labels)
        thumbs.append(F.interpolate(images[:1].float(), size=(96, 96), mode="bilinear", antialias=True).round().byte())
        n_images += len(images)
        correct += int((feats.logits.argmax(1) == indices[label]).sum())
    return FolderStats(class_names=class_names, imagenet_indices=indices, gap=gap_stats, hidden=hidden_stats,
                       thumbnails=torch.cat(thumbs), n_images=n_images, accuracy=correct / n_images)
