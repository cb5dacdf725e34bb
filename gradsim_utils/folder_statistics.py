"""Class statistics of an ImageNet-style image folder, streamed class by class (seed 002's paper path).

Each class folder is loaded, cropped and passed through the model alone, and only its GAP and
hidden-state sums are kept (:class:`class_statistics.ClassStats`), so the ImageNet validation set
fits in memory; folder names map to ImageNet indices with ``models.imagenet_class_indices``.
Under torchrun the classes are shared out between the processes (:mod:`distributed`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import data, distributed, models
from .cache import atomic_write
from .class_statistics import ClassStats
from .gap_statistics import gap_features

__all__ = ["FolderStats", "image_folder_stats"]


@dataclass
class FolderStats:
    """Streamed statistics of an image folder: class names, ImageNet indices, ClassStats, thumbnails;
    ``model`` and ``weights``: the model's name and weights (``ModelInfo``) that made them."""

    class_names: list[str]
    imagenet_indices: list[int]
    gap: dict[str, ClassStats]
    hidden: ClassStats
    thumbnails: torch.Tensor
    n_images: int
    accuracy: float
    model: str | None = None
    weights: str | None = None

    def check_model(self, name: str, weights: str | None, source: str) -> None:
        """ValueError naming ``source`` (e.g. the parameter that gave the file) unless these statistics
        were made with the model ``name`` and ``weights``."""
        if (self.model, self.weights) != (name, weights):
            raise ValueError(f"{source} holds statistics of {self.model} ({self.weights or 'random weights'}), "
                             f"not of {name} ({weights or 'random weights'}): make them with that model, "
                             "or choose the model they were made with")

    def save(self, path) -> Path:
        """Write these statistics to ``path`` (atomically, ``torch.save``); read back with :meth:`load`."""
        state = {"class_names": self.class_names, "imagenet_indices": self.imagenet_indices,
                 "gap": {w: s.state() for w, s in self.gap.items()}, "hidden": self.hidden.state(),
                 "thumbnails": self.thumbnails, "n_images": self.n_images, "accuracy": self.accuracy,
                 "model": self.model, "weights": self.weights}
        return atomic_write(Path(path), lambda tmp: torch.save(state, tmp))

    @classmethod
    def load(cls, path) -> "FolderStats":
        """The statistics :meth:`save` wrote to ``path`` (e.g. by ``python -m gradsim_utils.scale_out folder-stats``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"folder statistics file {path} does not exist")
        state = torch.load(path, weights_only=True)
        return cls(class_names=state["class_names"], imagenet_indices=state["imagenet_indices"],
                   gap={w: ClassStats.from_state(s) for w, s in state["gap"].items()},
                   hidden=ClassStats.from_state(state["hidden"]), thumbnails=state["thumbnails"],
                   n_images=state["n_images"], accuracy=state["accuracy"], model=state.get("model"),
                   weights=state.get("weights"))


def image_folder_stats(root, model: nn.Module, class_names: Sequence[str] | None = None,
                       where: Sequence[str] = ("conv",), batch_size: int = 32, resize: int = 256,
                       crop: int = 224, device: str | torch.device = "auto", progress: bool = True) -> FolderStats:
    """Stream ``root/<class>/<image>`` class by class through ``model``: per-class GAP and hidden sums.

    Each image is resized so its shorter side is ``resize`` (bilinear, antialiased) and centre-cropped
    to ``crop``: the reference's Resize(256) + CenterCrop(224), torchvision's default bilinear, as its
    weights' transforms() (``data.load_image_folder`` with ``resize_size``). Only one class's images are in memory
    at a time; ``accuracy`` is top-1 against the folders' ImageNet indices
    (``models.imagenet_class_indices``).

    Under torchrun rank r of w streams classes ``r, r + w, ...``; rank 0 streams class 0 first and
    broadcasts its first image's features, the shift of every rank's :class:`ClassStats` (the one a
    single process uses), so the merged sums (``ClassStats.all_reduce``), counts of correct
    predictions and thumbnails are one process's, up to float64 summation order, on every rank.
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

    def class_features(label):
        images = data.load_image_folder(root, image_size=crop, class_names=[class_names[label]],
                                        resize_size=resize).images
        return images, gap_features(model, images, where=where, batch_size=batch_size, device=device, progress=False)

    rank, world = distributed.rank_and_world()
    mine = list(distributed.shard(len(class_names)))  # rank 0: class 0 first
    first = class_features(mine[0]) if mine else None
    gap_stats: dict[str, ClassStats] = {}
    hidden_stats = None
    if world > 1:  # one shift for all ranks: the first image's features, as in one process
        shift = distributed.broadcast_object(
            ({w: g[0].clone() for w, g in first[1].gap.items()},
             first[1].hidden[0].clone()) if rank == 0 else None)
        gap_stats = {w: ClassStats(len(class_names), len(g), shift=g) for w, g in shift[0].items()}
        hidden_stats = ClassStats(len(class_names), len(shift[1]), shift=shift[1])
    thumbs, counts = {}, torch.zeros(2, dtype=torch.long)  # images, correct predictions
    for step, label in enumerate(tqdm(mine, desc="classes", unit="class", disable=not progress or rank != 0)):
        images, feats = first if step == 0 else class_features(label)
        first = None
        labels = torch.full((len(images),), label, dtype=torch.long)
        for w, g in feats.gap.items():
            gap_stats.setdefault(w, ClassStats(len(class_names), g.shape[1])).update(g, labels)
        if hidden_stats is None:
            hidden_stats = ClassStats(len(class_names), feats.hidden.shape[1])
        hidden_stats.update(feats.hidden, labels)
        thumbs[label] = F.interpolate(images[:1].float(), size=(96, 96), mode="bilinear", antialias=True).round().byte()
        counts += torch.tensor([len(images), int((feats.logits.argmax(1) == indices[label]).sum())])
    for stats in (*gap_stats.values(), hidden_stats):
        stats.all_reduce()
    n_images, correct = distributed.all_reduce_sum(counts).tolist()
    thumbs = {k: v for part in distributed.all_gather_object(thumbs) for k, v in part.items()}
    return FolderStats(class_names=class_names, imagenet_indices=indices, gap=gap_stats, hidden=hidden_stats,
                       thumbnails=torch.cat([thumbs[k] for k in range(len(class_names))]),
                       n_images=n_images, accuracy=correct / n_images, model=model.gradsim_info.name,
                       weights=model.gradsim_info.weights)
