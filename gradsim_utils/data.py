"""Data for the book (DESIGN.md sections 2-4): the controlled benchmark, Stable Diffusion images,
image folders, and the per-profile entry point :func:`load_profile_data`.

The controlled benchmark renders coloured shapes on cluttered backgrounds with numpy. Each class
is a combination of three attributes (palette, pattern, shape); the fraction of attributes two
classes share is the ground-truth class similarity. Every image also comes with its bounding box,
object mask and (optionally) a planted shortcut marker. The benchmark's constants live here too:
its class names (:func:`benchmark_class_names`) and the input normalisation ``MEAN``/``STD`` of
the models trained on it.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import re
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import checks, distributed, provenance
from .cache import atomic_write, cache_dir, cache_key
from .devices import get_device
from .profiles import Profile, chapter_settings, get_profile

__all__ = [
    "ATTRIBUTE_NAMES", "PALETTES", "PATTERNS", "SHAPES", "BASE_CLASSES", "NOVEL_CLASSES", "MEAN", "STD",
    "MARKER_RGB", "Benchmark", "make_benchmark", "class_name", "benchmark_class_names", "class_similarity",
    "AnimalClass", "ANIMAL_CLASSES", "DEFAULT_DIFFUSION_MODEL", "ModelUnavailableError",
    "image_seed", "load_diffusion_pipeline", "tiny_random_pipeline", "generate_diffusion",
    "IMAGE_EXTENSIONS", "CorruptImageError", "ImageFolder", "ANNOTATION_COLUMNS", "read_annotations",
    "load_image_folder", "load_profile_data", "square_image", "square_box", "DIFFUSION_IMAGE_SIZE",
    "generated_image_size",
]

# --------------------------------------------------------------------------------------------
# Controlled benchmark: attributes and classes
# --------------------------------------------------------------------------------------------

ATTRIBUTE_NAMES = ["palette", "pattern", "shape"]
PALETTES = {  # main body colour of the object (RGB)
    "red": (205, 45, 45),
    "blue": (45, 85, 210),
    "green": (40, 155, 65),
    "yellow": (235, 200, 35),
}
PATTERNS = ("solid", "striped", "dotted")
SHAPES = ("circle", "square", "triangle", "cross")

# (palette, pattern, shape). Pairs share 2, 1 or 0 attributes, e.g. red-striped-circle shares two
# with red-solid-circle and blue-striped-circle, one with yellow-striped-triangle, none with
# blue-dotted-square.
BASE_CLASSES = [
    ("red", "striped", "circle"),
    ("red", "solid", "circle"),
    ("blue", "striped", "circle"),
    ("blue", "dotted", "square"),
    ("green", "dotted", "square"),
    ("green", "solid", "triangle"),
    ("yellow", "striped", "triangle"),
    ("yellow", "dotted", "cross"),
    ("red", "solid", "cross"),
    ("blue", "solid", "triangle"),
]
# Held-out combinations of the same attribute values (few-shot / metric-learning chapter).
NOVEL_CLASSES = [
    ("green", "striped", "circle"),
    ("yellow", "solid", "square"),
    ("red", "dotted", "triangle"),
    ("blue", "striped", "cross"),
    ("green", "solid", "cross"),
    ("yellow", "dotted", "circle"),
    ("red", "striped", "square"),
    ("blue", "dotted", "triangle"),
]
_CLASS_SETS = {
    "base": list(range(len(BASE_CLASSES))),
    "novel": [len(BASE_CLASSES) + i for i in range(len(NOVEL_CLASSES))],
    "all": list(range(len(BASE_CLASSES) + len(NOVEL_CLASSES))),
}
_ALL_CLASSES = BASE_CLASSES + NOVEL_CLASSES

# Per-channel normalisation of benchmark pixels (0-1 scale) for the models trained on them: their
# mean and standard deviation, rounded, as measured on the train split (0.51/0.49/0.48 and
# 0.21/0.19/0.19). Part of every trained model's cache key.
MEAN = (0.5, 0.5, 0.5)
STD = (0.2, 0.2, 0.2)
_SPLITS = {"train": 0, "analysis": 1}
_MARKER_MODES = ("class", "random")

MARKER_RGB = (255, 0, 255)
_PATTERN_RGB = (238, 232, 215)  # cream stripes / dots on the body colour
_NEUTRAL_RGB = np.array([(105, 105, 105), (60, 60, 60), (150, 125, 95), (100, 72, 48), (170, 168, 158)],
                        dtype=np.float32)  # distractor colours, none of them a class palette
# Shape geometry in object units (the object spans about [-1, 1]): size parameter and the radius
# of the smallest circle around the shape (used to keep the object inside the image).
_SQUARE_HALF, _TRIANGLE_INRADIUS, _CROSS_ARM = 0.85, 0.62, 0.36
_BOUNDING_RADIUS = {"circle": 1.0, "square": _SQUARE_HALF * math.sqrt(2),
                    "triangle": 2 * _TRIANGLE_INRADIUS, "cross": math.hypot(1.0, _CROSS_ARM)}
_STRIPE_PERIOD, _DOT_PERIOD, _DOT_RADIUS = 0.55, 0.66, 0.23


def class_name(attributes: Sequence[str]) -> str:
    """Readable class name, e.g. ``("red", "striped", "circle") -> "red-striped-circle"``."""
    return "-".join(attributes)


def benchmark_class_names() -> tuple[str, ...]:
    """The class names of the benchmark's ten base classes, in label order."""
    return tuple(class_name(attributes) for attributes in BASE_CLASSES)


def class_similarity(class_attributes: Sequence[Sequence[str]]) -> torch.Tensor:
    """C x C matrix of the fraction of attributes two classes share (1 on the diagonal)."""
    attrs = np.array(class_attributes, dtype=object)
    if attrs.ndim != 2 or len(attrs) == 0:
        raise ValueError("class_attributes must be a non-empty list of equal-length attribute tuples")
    shared = (attrs[:, None, :] == attrs[None, :, :]).mean(axis=2)
    return torch.tensor(shared.astype(np.float32))


_PER_IMAGE_FIELDS = ("images", "labels", "boxes", "masks", "has_marker", "marker_masks")


@dataclass
class Benchmark:
    """Images of the controlled benchmark with their ground truth.

    images: uint8 (N, 3, H, W); labels: long (N,), indices into class_names; boxes: float (N, 4)
    as (x0, y0, x1, y1) pixel edges, tight around the visible mask (x1, y1 exclusive); masks: bool
    (N, H, W), visible object pixels; has_marker: bool (N,); marker_masks: bool (N, H, W);
    nuisance: per-image rendering parameters (scale, rotation, aspect, n_distractors, occluded).
    """

    images: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor
    has_marker: torch.Tensor
    marker_masks: torch.Tensor
    class_names: list[str]
    attribute_names: list[str]
    class_attributes: list[tuple[str, ...]]
    class_similarity: torch.Tensor
    split: str
    seed: int
    nuisance: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "Benchmark":
        """A Benchmark with the images at ``indices`` (ints, a bool mask or a slice)."""
        if not isinstance(indices, slice):
            indices = torch.as_tensor(indices)
            if indices.dtype == torch.bool:
                if indices.shape != self.labels.shape:
                    raise ValueError(f"boolean indices must have shape {tuple(self.labels.shape)}")
                indices = indices.nonzero().flatten()
            indices = indices.long()
        per_image = {name: getattr(self, name)[indices] for name in _PER_IMAGE_FIELDS}
        nuisance = {k: v[indices] for k, v in self.nuisance.items()}
        return replace(self, nuisance=nuisance, **per_image)


# --------------------------------------------------------------------------------------------
# Controlled benchmark: rendering
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y coordinates of the pixel centres of a size x size image."""
    centres = np.arange(size, dtype=np.float32) + 0.5
    return np.meshgrid(centres, centres)


@functools.lru_cache(maxsize=16)
def _upsample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights from n_in grid points to n_out pixels."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (pos - lo).astype(np.float32)
    mat = np.zeros((n_out, n_in), dtype=np.float32)
    mat[np.arange(n_out), lo] += 1 - frac
    mat[np.arange(n_out), hi] += frac
    return mat


def _smooth_noise(rng: np.random.Generator, size: int, grid: int, scale: float) -> np.ndarray:
    """Low-frequency noise (3, size, size): a random grid x grid field, linearly upsampled.

    Most of the amplitude is shared by the three channels, so the texture stays muted.
    """
    lum = rng.normal(0, scale, (1, grid, grid))
    chroma = rng.normal(0, scale / 3, (3, grid, grid))
    up = _upsample_matrix(grid, size)
    return up @ (lum + chroma).astype(np.float32) @ up.T


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted, cluttered (3, size, size) background: a greyish colour plus two octaves of noise."""
    base = rng.uniform(70, 175) + rng.uniform(-18, 18, (3, 1, 1))
    return (base.astype(np.float32) + _smooth_noise(rng, size, 4, 24.0)
            + _smooth_noise(rng, size, 9, 10.0))


def _paint_distractors(img: np.ndarray, rng: np.random.Generator) -> int:
    """Paint 0-3 small neutral-coloured ellipses onto ``img`` (3, H, W) in place; return how many."""
    size = img.shape[1]
    xs, ys = _pixel_grid(size)
    count = int(rng.integers(0, 4))
    for _ in range(count):
        cx, cy = (float(c) for c in rng.uniform(0, size, 2))
        ra, rb = (float(r) for r in rng.uniform(0.035, 0.08, 2) * size)
        angle = float(rng.uniform(0, math.pi))
        colour = _NEUTRAL_RGB[rng.integers(len(_NEUTRAL_RGB))] + rng.uniform(-10, 10, 3).astype(np.float32)
        reach = max(ra, rb)  # only the pixels of the window around the ellipse are computed
        window = (slice(max(0, int(cy - reach)), int(cy + reach) + 1),
                  slice(max(0, int(cx - reach)), int(cx + reach) + 1))
        dx, dy = xs[window] - cx, ys[window] - cy
        u = (math.cos(angle) * dx + math.sin(angle) * dy) / ra
        v = (-math.sin(angle) * dx + math.cos(angle) * dy) / rb
        img[(slice(None), *window)][:, u * u + v * v <= 1] = colour[:, None]
    return count


def _shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance (object units, negative inside) to the shape's outline."""
    if shape == "circle":
        return np.sqrt(u * u + v * v) - 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - _SQUARE_HALF
    if shape == "triangle":
        half_sqrt3 = math.sqrt(3) / 2
        return np.maximum(np.maximum(-v, half_sqrt3 * u + 0.5 * v),
                          -half_sqrt3 * u + 0.5 * v) - _TRIANGLE_INRADIUS
    au, av = np.abs(u), np.abs(v)  # cross: union of a horizontal and a vertical bar
    return np.minimum(np.maximum(au - 1.0, av - _CROSS_ARM), np.maximum(au - _CROSS_ARM, av - 1.0))


def _pattern(pattern: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Where the pattern colour replaces the body colour (bool, object coordinates)."""
    if pattern == "solid":
        return np.zeros(u.shape, dtype=bool)
    phase_u, phase_v = (float(p) for p in rng.uniform(0, 1, 2))
    if pattern == "striped":
        half_periods = u / _STRIPE_PERIOD + phase_u
        return half_periods - 2 * np.floor(0.5 * half_periods) >= 1
    du, dv = u / _DOT_PERIOD + phase_u, v / _DOT_PERIOD + phase_v
    du, dv = du - np.floor(du) - 0.5, dv - np.floor(dv) - 0.5
    return du * du + dv * dv <= (_DOT_RADIUS / _DOT_PERIOD) ** 2


def _occluder(rng: np.random.Generator, mask: np.ndarray, centre: tuple[float, float],
              radius: float) -> np.ndarray:
    """A horizontal or vertical bar through the object that covers less than 25 % of ``mask``."""
    xs, ys = _pixel_grid(mask.shape[0])
    coord, c = (ys, centre[1]) if rng.random() < 0.5 else (xs, centre[0])
    middle = c + float(rng.uniform(-0.7, 0.7)) * radius
    half = float(rng.uniform(0.1, 0.22)) * radius
    area = int(mask.sum())
    for _ in range(8):
        bar = np.abs(coord - middle) <= half
        if (bar & mask).sum() < 0.25 * area:
            return bar
        half *= 0.6
    return np.zeros_like(mask)


def _render_object(img: np.ndarray, rng: np.random.Generator, attributes: tuple[str, str, str],
                   occlusion_rate: float) -> tuple[np.ndarray, dict]:
    """Paint one object onto ``img`` (3, H, W) in place; return its visible mask and nuisance."""
    palette, pattern, shape = attributes
    size = img.shape[1]
    xs, ys = _pixel_grid(size)
    radius = float(rng.uniform(0.225, 0.33)) * size    # object spans about 45-66 % of the side
    aspect = math.exp(float(rng.uniform(-0.2, 0.2)))
    rx, ry = radius * math.sqrt(aspect), radius / math.sqrt(aspect)
    angle = float(rng.uniform(0, 2 * math.pi))
    reach = min(_BOUNDING_RADIUS[shape] * max(rx, ry), size / 2)
    cx, cy = (float(c) for c in rng.uniform(reach, size - reach, 2))
    dx, dy = xs - cx, ys - cy
    u = (math.cos(angle) * dx + math.sin(angle) * dy) / rx
    v = (-math.sin(angle) * dx + math.cos(angle) * dy) / ry
    alpha = np.clip(0.5 - _shape_distance(shape, u, v) * radius, 0.0, 1.0)
    body = np.array(PALETTES[palette]) * rng.uniform(0.85, 1.12) + rng.uniform(-18, 18, 3)
    accent = np.array(_PATTERN_RGB) + rng.uniform(-12, 12, 3)
    body, accent = (c.astype(np.float32)[:, None, None] for c in (body, accent))
    colour = body + (accent - body) * _pattern(pattern, u, v, rng)
    img += (colour - img) * alpha
    mask = alpha >= 0.5
    occluded = False
    if rng.random() < occlusion_rate:
        bar = _occluder(rng, mask, (cx, cy), radius)
        img[:, bar] = rng.uniform(95, 150)
        occluded = bool((bar & mask).any())
        mask &= ~bar
    nuisance = {"scale": 2 * radius / size, "rotation": angle, "aspect": aspect, "occluded": occluded}
    return mask, nuisance


def _place_marker(rng: np.random.Generator, mask: np.ndarray, side: int) -> tuple[int, int]:
    """Top-left corner of a side x side square that overlaps the object mask as little as possible.

    Up to 32 random positions are tried; the first covering at most 10 % of the square with object
    pixels is taken, else the one with the least overlap.
    """
    size = mask.shape[0]
    corners = rng.integers(0, size - side + 1, (32, 2))
    table = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    x, y = corners[:, 0], corners[:, 1]
    overlap = table[y + side, x + side] - table[y, x + side] - table[y + side, x] + table[y, x]
    good = np.flatnonzero(overlap <= 0.1 * side * side)
    pick = good[0] if len(good) else int(np.argmin(overlap))
    return int(x[pick]), int(y[pick])


def _rng(seed: int, split: int, class_id: int, index: int, stream: int) -> np.random.Generator:
    """Independent random stream for one (seed, split, class, image, purpose)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split, class_id, index, stream)))


_IMAGE_STREAM, _MARKER_STREAM, _MARKER_CHOICE_STREAM = 0, 1, 2
_OCCLUSION_RATE = 0.15


def _marker_classes(marker_class, marker_rate, marker_mode, names: list[str]) -> list[int]:
    """Validate the marker arguments; return the labels whose images may get a marker."""
    checks.one_of(_MARKER_MODES, marker_mode=marker_mode)
    if isinstance(marker_rate, bool) or not isinstance(marker_rate, (int, float)) \
            or not 0.0 <= marker_rate <= 1.0:
        raise ValueError(f"marker_rate must be a number in [0, 1], got {marker_rate!r}")
    if marker_mode == "random":
        if marker_class is not None:
            raise ValueError("marker_class must be None when marker_mode='random' "
                             "(random markers go to every class)")
        return list(range(len(names))) if marker_rate > 0 else []
    if marker_class is None:
        if marker_rate > 0:
            raise ValueError("marker_class is required when marker_mode='class' and marker_rate > 0")
        return []
    if isinstance(marker_class, str):
        if marker_class not in names:
            raise ValueError(f"marker_class {marker_class!r} is not one of the requested classes {names}")
        return [names.index(marker_class)] if marker_rate > 0 else []
    label = checks.integers(0, len(names) - 1, marker_class=marker_class)
    return [label] if marker_rate > 0 else []


def make_benchmark(n_per_class: int = 50, split: str = "analysis", seed: int = 0, image_size: int = 64,
                   classes: str = "base", marker_class: int | str | None = None,
                   marker_rate: float = 0.0, marker_mode: str = "class",
                   progress: bool = False) -> Benchmark:
    """Render ``n_per_class`` images of every class of the controlled benchmark.

    Each image is drawn from its own random stream, keyed by (seed, split, class, image index), so
    the train and analysis splits never share an image, and an image does not change with
    ``n_per_class``, ``classes`` or the marker settings (apart from the marker itself).

    classes: "base" (ten classes), "novel" (held-out attribute combinations) or "all" (both);
    labels count from 0 within the requested set. marker_mode "class" pastes a magenta square on
    ``round(marker_rate * n_per_class)`` images of ``marker_class`` (label or name); "random" does
    so in every class, so the marker carries no class information. Images are ordered by class.
    """
    n_per_class = checks.integers(1, n_per_class=n_per_class)
    seed = checks.integers(0, seed=seed)
    image_size = checks.integers(16, image_size=image_size)
    checks.one_of(_SPLITS, split=split)
    checks.one_of(_CLASS_SETS, classes=classes)
    split_id, class_ids = _SPLITS[split], _CLASS_SETS[classes]
    attributes = [_ALL_CLASSES[c] for c in class_ids]
    names = [class_name(a) for a in attributes]
    marked_classes = _marker_classes(marker_class, marker_rate, marker_mode, names)

    n = n_per_class * len(class_ids)
    images = np.empty((n, 3, image_size, image_size), dtype=np.uint8)
    masks = np.empty((n, image_size, image_size), dtype=bool)
    marker_masks = np.zeros((n, image_size, image_size), dtype=bool)
    has_marker = np.zeros(n, dtype=bool)
    nuisance = {"scale": np.empty(n, np.float32), "rotation": np.empty(n, np.float32),
                "aspect": np.empty(n, np.float32), "n_distractors": np.empty(n, np.int64),
                "occluded": np.empty(n, bool)}
    side = max(2, round(image_size / 6))
    items = [(label, cid, i) for label, cid in enumerate(class_ids) for i in range(n_per_class)]
    marked = {label: set(_rng(seed, split_id, class_ids[label], 0, _MARKER_CHOICE_STREAM).permutation(
        n_per_class)[:round(marker_rate * n_per_class)].tolist()) for label in marked_classes}
    for k, (label, cid, i) in enumerate(tqdm(items, desc=f"benchmark {split}") if progress else items):
        rng = _rng(seed, split_id, cid, i, _IMAGE_STREAM)
        canvas = _background(rng, image_size)
        nuisance["n_distractors"][k] = _paint_distractors(canvas, rng)
        mask, params = _render_object(canvas, rng, _ALL_CLASSES[cid], _OCCLUSION_RATE)
        for key, value in params.items():
            nuisance[key][k] = value
        images[k] = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
        if i in marked.get(label, ()):
            x, y = _place_marker(_rng(seed, split_id, cid, i, _MARKER_STREAM), mask, side)
            images[k, :, y:y + side, x:x + side] = np.array(MARKER_RGB, np.uint8)[:, None, None]
            marker_masks[k, y:y + side, x:x + side] = True
            mask &= ~marker_masks[k]
            has_marker[k] = True
        masks[k] = mask

    return Benchmark(
        images=torch.from_numpy(images),
        labels=torch.tensor([label for label, _, _ in items], dtype=torch.long),
        boxes=_tight_boxes(masks),
        masks=torch.from_numpy(masks),
        has_marker=torch.from_numpy(has_marker),
        marker_masks=torch.from_numpy(marker_masks),
        class_names=names,
        attribute_names=list(ATTRIBUTE_NAMES),
        class_attributes=[tuple(a) for a in attributes],
        class_similarity=class_similarity(attributes),
        split=split,
        seed=seed,
        nuisance={k: torch.from_numpy(v) for k, v in nuisance.items()},
    )


def _tight_boxes(masks: np.ndarray) -> torch.Tensor:
    """(N, 4) boxes (x0, y0, x1, y1), pixel edges, x1/y1 exclusive, around each non-empty mask."""
    cols, rows = masks.any(axis=1), masks.any(axis=2)
    if not (cols.any(axis=1).all()):
        raise RuntimeError("an object mask is empty; this is a bug in the benchmark renderer")
    width = masks.shape[2]
    x0 = cols.argmax(axis=1)
    x1 = width - cols[:, ::-1].argmax(axis=1)
    y0 = rows.argmax(axis=1)
    y1 = masks.shape[1] - rows[:, ::-1].argmax(axis=1)
    return torch.tensor(np.stack([x0, y0, x1, y1], axis=1), dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# Stable Diffusion images (the seeds' data path)
# --------------------------------------------------------------------------------------------

class AnimalClass(NamedTuple):
    """One animal class of the ``paper`` profile: name, ImageNet-1k index and diffusion prompt."""

    name: str
    imagenet_index: int
    prompt: str


# Ten visually distinct ImageNet-1k animals (indices checked against torchvision's category list).
ANIMAL_CLASSES = [
    AnimalClass(name, index, f"a photo of a {name}")
    for name, index in [
        ("goldfish", 1), ("bald eagle", 22), ("tree frog", 31), ("snail", 113),
        ("flamingo", 130), ("king penguin", 145), ("golden retriever", 207),
        ("monarch butterfly", 323), ("zebra", 340), ("African elephant", 386),
    ]
]
DEFAULT_DIFFUSION_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
_DIFFUSION_CODE_VERSION = 2
DIFFUSION_IMAGE_SIZE = 512  # Stable Diffusion v1.5's native resolution, the paper profile's images
_DIFFUSION_BATCH_SIZE = 4


class ModelUnavailableError(RuntimeError):
    """A diffusion model that cannot be loaded from the local disk (no download is attempted)."""


def image_seed(seed: int, class_index: int, image_index: int) -> int:
    """The 31-bit seed of one generated image, derived from (seed, class index, image index)."""
    state = np.random.SeedSequence(seed, spawn_key=(class_index, image_index)).generate_state(1)
    return int(state[0] & 0x7FFFFFFF)


def diffusion_dtype(device: str | torch.device = "auto") -> torch.dtype:
    """The dtype :func:`load_diffusion_pipeline` runs in on ``device``: float16 on CUDA, else float32."""
    return torch.float16 if get_device(device).type == "cuda" else torch.float32


def load_diffusion_pipeline(model_id: str = DEFAULT_DIFFUSION_MODEL, device: str = "auto",
                            safety_checker: bool = True):
    """Load a StableDiffusionPipeline from the Hugging Face cache or a local folder, never online.

    Moved to ``device`` in :func:`diffusion_dtype`. The model's safety checker is kept unless
    ``safety_checker=False`` explicitly drops it; :func:`generate_diffusion` excludes the images it
    flags. Raises ModelUnavailableError when the model is not on disk.
    """
    from diffusers import StableDiffusionPipeline

    checks.one_of((True, False), safety_checker=safety_checker)
    dev = get_device(device)
    no_checker = {} if safety_checker else {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipe = StableDiffusionPipeline.from_pretrained(str(model_id), local_files_only=True,
                                                       low_cpu_mem_usage=False, **no_checker)
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelUnavailableError(
            f"Stable Diffusion model {str(model_id)!r} is not available offline ({reason}). "
            f"Provide it in one of two ways: (1) on a machine with internet, run once "
            f"`python -c \"from diffusers import StableDiffusionPipeline as P; "
            f"P.from_pretrained('{model_id}')\"` to store it in the Hugging Face cache "
            f"(HF_HOME, default ~/.cache/huggingface) and make that cache available here; or "
            f"(2) pass a local folder written by `pipeline.save_pretrained(folder)` as model_id."
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev, diffusion_dtype(dev))


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE tokenizers (GPT-2, CLIP) use for the bytes."""
    printable = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tiny_random_pipeline(image_size: int = 64, seed: int = 0):
    """A tiny, randomly initialised StableDiffusionPipeline that runs offline on a CPU.

    Its tokenizer knows single bytes only (no merges); the UNet has two levels of 16/32 channels
    and the VAE four levels (8x downsampling) of 8/16 channels, so a 224 px image needs a 28 x 28
    latent. It produces structured noise, not pictures: it exists to run the generation code path.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    image_size = checks.integers(8, image_size=image_size)
    if image_size % 8:
        raise ValueError(f"image_size must be a multiple of 8, got {image_size}")
    seed = checks.integers(0, seed=seed)
    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    with tempfile.TemporaryDirectory(prefix="gradsim-tokenizer-") as tmp:
        Path(tmp, "vocab.json").write_text(json.dumps(vocab))
        Path(tmp, "merges.txt").write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=32, projection_dim=32,
            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"]))
        unet = UNet2DConditionModel(
            sample_size=image_size // 8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
            layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
            attention_head_dim=4, norm_num_groups=8)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16),
            latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=image_size)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_class_prompts(class_prompts) -> dict[str, str]:
    if not isinstance(class_prompts, Mapping) or not class_prompts:
        raise ValueError("class_prompts must be a non-empty dict {class name: prompt}")
    for name, prompt in class_prompts.items():
        if not isinstance(name, str) or not name.strip() or name.startswith(".") \
                or any(c in name for c in '/\\:*?"<>|'):
            raise ValueError(f"class_prompts has an invalid class name {name!r} (it names a folder)")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"class_prompts[{name!r}] must be a non-empty string, got {prompt!r}")
    return dict(class_prompts)


def diffusion_exclusions(folder) -> list[tuple[str, int, int]]:
    """(class, index, seed) of the images :func:`generate_diffusion` left out of ``folder`` because
    the pipeline's safety checker flagged them, from its ``manifest.json`` (empty when none)."""
    manifest_path = Path(folder) / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{folder} has no manifest.json (not made by generate_diffusion)")
    excluded = json.loads(manifest_path.read_text()).get("excluded", [])
    return [(e["class"], int(e["index"]), int(e["seed"])) for e in excluded]


def _missing_images(out_dir: Path, class_names, n_per_class: int) -> list[tuple[str, int]]:
    """(class, index) of the images of a generation run neither on disk nor excluded as flagged."""
    excluded = set()
    if (out_dir / "manifest.json").exists():
        excluded = {(name, i) for name, i, _ in diffusion_exclusions(out_dir)}
    return [(name, i) for name in class_names for i in range(n_per_class)
            if (name, i) not in excluded and not (out_dir / name / f"{i}.png").exists()]


def generate_diffusion(out_dir, class_prompts: Mapping[str, str], n_per_class: int,
                       model_id: str = DEFAULT_DIFFUSION_MODEL, seed: int = 0,
                       guidance_scale: float = 7.5, num_inference_steps: int = 30,
                       image_size: int = 512, device: str = "auto", pipeline=None,
                       batch_size: int = _DIFFUSION_BATCH_SIZE, progress: bool = True,
                       safety_checker: bool = True) -> Path:
    """Generate ``n_per_class`` images per prompt into ``out_dir/<class>/<i>.png``; return out_dir.

    Image i of the class at position c of ``class_prompts`` uses ``image_seed(seed, c, i)`` through
    its own CPU torch.Generator. Batches have a fixed composition: batch k holds positions
    ``k*batch_size ...`` of the full (class, index) list, whatever is already on disk, because a
    different batch can change a pixel by a grey level. Images already on disk are kept: a resumed
    run regenerates only the batches holding a missing image and writes only the missing files,
    so its PNGs are byte-identical to a fresh run's (same device, dtype and batch_size).

    The pipeline's safety flag of every image (diffusers' ``nsfw_content_detected``; None when the
    pipeline has no checker) is recorded in ``manifest.json``. A flagged image (which diffusers
    blacks out) is never written: it is listed under ``excluded`` with its class, index and seed
    (see :func:`diffusion_exclusions`) and not regenerated on resume; loaders read what is on disk.
    The manifest also records the model, prompts, per-image seeds, settings (dtype and device
    type included) and package versions; a folder made with different settings is refused.
    ``pipeline`` (e.g. :func:`tiny_random_pipeline`) replaces loading ``model_id``; then model_id
    is only recorded and the dtype and safety checker (or none) are the pipeline's. Otherwise the
    dtype is :func:`diffusion_dtype` and ``safety_checker=False`` explicitly loads the model
    without its checker (then nothing is flagged); the manifest records whether a checker ran.

    Under torchrun (:mod:`distributed`) rank r of w runs batches ``r, r + w, ...`` of that fixed
    list and writes their PNGs, so every image is the one a single process makes; after each round
    of w batches rank 0 gathers the flags and writes the manifest (``out_dir`` is shared by all).
    """
    prompts = _check_class_prompts(class_prompts)
    n_per_class = checks.integers(1, n_per_class=n_per_class)
    seed = checks.integers(0, seed=seed)
    num_inference_steps = checks.integers(1, num_inference_steps=num_inference_steps)
    image_size = checks.integers(8, image_size=image_size)
    if image_size % 8:
        raise ValueError(f"image_size must be a multiple of 8, got {image_size}")
    batch_size = checks.integers(1, batch_size=batch_size)
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
            or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    if not isinstance(model_id, (str, Path)) or not str(model_id).strip():
        raise ValueError(f"model_id must be a Hugging Face model id or a folder path, got {model_id!r}")

    out_dir = Path(out_dir)
    dev = get_device(device)
    checks.one_of((True, False), safety_checker=safety_checker)
    dtype = pipeline.dtype if pipeline is not None else diffusion_dtype(dev)
    if pipeline is not None:
        safety_checker = pipeline.safety_checker is not None
    settings = {"model_id": str(model_id), "prompts": prompts, "seed": seed,
                "guidance_scale": float(guidance_scale), "num_inference_steps": num_inference_steps,
                "image_size": image_size, "batch_size": batch_size,
                "dtype": str(dtype).removeprefix("torch."), "device": dev.type, "safety_checker": safety_checker}
    manifest_path = out_dir / "manifest.json"
    rank, world = distributed.rank_and_world()
    # rank 0's view of the folder, so every rank decides alike before any rank writes
    old, todo = distributed.broadcast_object(
        (json.loads(manifest_path.read_text()) if manifest_path.exists() else None,
         _missing_images(out_dir, prompts, n_per_class)) if rank == 0 else None)
    if old is not None:
        changed = sorted(k for k in settings if old.get(k) != settings[k])
        if changed:
            raise ValueError(f"{out_dir} holds images made with different settings ({', '.join(changed)}); "
                             "use another out_dir")
    seeds = {name: [image_seed(seed, c, i) for i in range(n_per_class)]
             for c, name in enumerate(prompts)}
    if not todo and old is not None:
        return out_dir
    old = old or {}
    if todo:  # load before writing anything, so a missing model leaves no trace
        pipe = pipeline if pipeline is not None else load_diffusion_pipeline(model_id, device, safety_checker)
        pipe = pipe.to(dev)
        pipe.set_progress_bar_config(disable=True)
    manifest = {**settings, "n_per_class": n_per_class, "image_seeds": seeds,
                "files": "<class>/<i>.png", "package_versions": provenance.package_versions(
                    ("torch", "diffusers", "transformers", "numpy", "pillow")),
                "nsfw_content_detected": old.get("nsfw_content_detected", {name: {} for name in prompts}),
                "excluded": old.get("excluded", [])}

    def write_manifest():
        manifest["n_excluded"] = len(manifest["excluded"])
        atomic_write(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2)))

    if rank == 0:
        write_manifest()
    every = [(name, i) for name in prompts for i in range(n_per_class)]
    wanted = set(todo)
    batches = [batch for batch in (every[k:k + batch_size] for k in range(0, len(every), batch_size))
               if wanted.intersection(batch)]
    rounds = range(0, len(batches), world)  # round k: batch k + r on rank r
    for k in tqdm(rounds, desc="diffusion", unit="batch" if world == 1 else "round",
                  disable=not progress or rank != 0):
        flagged = []  # (name, i, flag) of this rank's batch, in batch order
        if k + rank < len(batches):
            batch = batches[k + rank]
            generators = [torch.Generator("cpu").manual_seed(seeds[name][i]) for name, i in batch]
            with torch.inference_mode():
                result = pipe([prompts[name] for name, _ in batch], height=image_size, width=image_size,
                              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                              generator=generators, output_type="pil")
            flags = result.nsfw_content_detected
            for j, ((name, i), image) in enumerate(zip(batch, result.images)):
                if (name, i) not in wanted:
                    continue
                flag = None if flags is None else bool(flags[j])
                flagged.append((name, i, flag))
                if not flag:
                    atomic_write(out_dir / name / f"{i}.png", lambda tmp, im=image: im.save(tmp, format="PNG"))
        gathered = distributed.gather_object(flagged)
        if rank == 0:  # ranks in order are batches in order
            for name, i, flag in (item for part in gathered for item in part):
                manifest["nsfw_content_detected"][name][str(i)] = flag
                if flag:
                    manifest["excluded"].append({"class": name, "index": i, "seed": seeds[name][i]})
            write_manifest()
    distributed.barrier()  # no rank returns before the manifest is complete
    return out_dir


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_ON_ERROR = ("raise", "skip")


class CorruptImageError(ValueError):
    """One or more image files could not be read; ``paths`` lists them."""

    def __init__(self, message: str, paths: list[Path]):
        super().__init__(message)
        self.paths = paths


@dataclass
class ImageFolder:
    """Images loaded from a class-per-folder tree: uint8 (N, 3, S, S), labels (N,), and the paths.

    ``skipped``: unreadable files left out. ``excluded``: (class, index, seed) of generated images
    left out as flagged by a safety checker (:func:`diffusion_exclusions`). ``boxes``: float (N, 4) (x0, y0, x1, y1) pixel edges in
    the loaded S x S image, NaN rows for images without a box, or None when no annotation file was
    given; ``unboxed``: the loaded images without a box.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    paths: list[Path]
    skipped: list[Path] = field(default_factory=list)
    boxes: torch.Tensor | None = None
    unboxed: list[Path] = field(default_factory=list)
    excluded: list[tuple[str, int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def has_box(self) -> torch.Tensor:
        """bool (N,): which images have a box (all False without an annotation file)."""
        if self.boxes is None:
            return torch.zeros(len(self), dtype=torch.bool)
        return ~self.boxes.isnan().any(dim=1)


def _natural_key(path: Path):
    """Sort key that orders "2.png" before "10.png"."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _read_square(path: Path, size: int, resize_size: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB image file as :func:`square_image` makes it; and the file's own (width, height)."""
    with Image.open(path) as image:
        return square_image(image.convert("RGB"), size, resize_size), image.size


def _square_geometry(width: int, height: int, size: int, resize_size: int | None = None) -> tuple[int, int, int, int]:
    """The resized (width, height) of a ``width`` x ``height`` image and the (left, top) corner of its
    centre crop of size x size, as torchvision's Resize(resize_size) + CenterCrop(size): the shorter
    side becomes ``resize_size`` (None: ``size``), the longer side is truncated, the corner rounded."""
    resize_size = size if resize_size is None else resize_size
    short, long = sorted((width, height))
    new_short, new_long = resize_size, int(resize_size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_w, new_h, int(round((new_w - size) / 2)), int(round((new_h - size) / 2))


def square_image(image: Image.Image, size: int, resize_size: int | None = None) -> np.ndarray:
    """``image`` resized and centre-cropped to size x size (H x W x 3 uint8), keeping its aspect ratio.

    torchvision weights' own preprocessing, ``weights.transforms()`` without the normalisation:
    shorter side to ``resize_size`` (None: ``size``), bilinear (PIL's, antialiased), centre crop
    ``size`` (e.g. 256 and 224 for the ImageNet ResNets).
    """
    size = checks.integers(1, size=size)
    resize_size = checks.integers(size, resize_size=resize_size, optional=True)
    width, height, left, top = _square_geometry(image.width, image.height, size, resize_size)
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image.crop((left, top, left + size, top + size)))


def square_box(box: tuple[float, float, float, float], image_size: tuple[int, int], size: int,
               resize_size: int | None = None) -> list[float]:
    """A box (x0, y0, x1, y1) in the original ``image_size`` = (width, height) image's pixels, in the
    size x size image :func:`square_image` makes (clipped to it); NaNs when the crop cuts it away."""
    width, height = image_size
    new_w, new_h, left, top = _square_geometry(width, height, size, resize_size)
    x0, y0, x1, y1 = (min(max(v, 0.0), float(size)) for v in (
        box[0] * new_w / width - left, box[1] * new_h / height - top,
        box[2] * new_w / width - left, box[3] * new_h / height - top))
    return [x0, y0, x1, y1] if x1 > x0 and y1 > y0 else [math.nan] * 4


ANNOTATION_COLUMNS = ("file", "x0", "y0", "x1", "y1")


def read_annotations(path, root) -> dict[str, tuple[float, float, float, float]]:
    """Boxes from an annotation CSV, by file path relative to ``root`` (posix form).

    The CSV has the header ``file,x0,y0,x1,y1`` and one row per image: ``file`` relative to
    ``root`` (e.g. ``cats/001.jpg``), the box's pixel edges in the original image (x1, y1
    exclusive, x0 < x1, y0 < y1). A file may appear once; every listed file must exist under root.
    """
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise FileNotFoundError(f"annotations= file {path} does not exist")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if tuple(header) != ANNOTATION_COLUMNS:
            raise ValueError(f"annotations= file {path} must start with the header {','.join(ANNOTATION_COLUMNS)}, "
                             f"got {','.join(header) or 'an empty file'}")
        boxes, missing = {}, []
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            try:
                name = PurePosixPath(row[0].strip().replace("\\", "/")).as_posix()
                box = tuple(float(v) for v in row[1:])
                if len(box) != 4 or not all(math.isfinite(v) for v in box) or not (box[0] < box[2] and box[1] < box[3]):
                    raise ValueError("need four finite numbers with x0 < x1 and y0 < y1")
            except (ValueError, IndexError) as err:
                raise ValueError(f"annotations= file {path}, line {line}: bad row {row} ({err})") from None
            if name in boxes:
                raise ValueError(f"annotations= file {path}, line {line}: {name} has a second box")
            if not (root / name).is_file():
                missing.append(f"{name} (line {line})")
            boxes[name] = box
    if missing:
        raise FileNotFoundError(f"annotations= file {path} lists {len(missing)} file(s) not under {root}: "
                                f"{', '.join(missing[:5])}")
    return boxes


SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def sample_photos(image_size: int = 224) -> tuple[torch.Tensor, list[str]]:
    """Real photos shipped with scikit-image (a cat, a cup of coffee, an astronaut, a rocket) as a
    uint8 N x 3 x S x S tensor, for the offline real-model demonstration; and their names."""
    import skimage.data

    arrays = [square_image(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"), image_size)
              for name in SAMPLE_PHOTOS]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), list(SAMPLE_PHOTOS)


def load_image_folder(root, image_size: int = 224, class_names: Sequence[str] | None = None,
                      on_error: str = "raise", annotations=None, min_per_class: int = 2,
                      resize_size: int | None = None) -> ImageFolder:
    """Load ``root/<class>/<image>`` into memory, one label per class folder (any folder names).

    Classes are the sub-folders in sorted order, or ``class_names`` in that order. Files with an
    extension in IMAGE_EXTENSIONS are read (hidden files are ignored), in natural order; each is
    made as torchvision weights' transforms() would: shorter side to ``resize_size`` (None:
    ``image_size``; bilinear, antialiased), centre crop ``image_size`` (:func:`square_image`).
    Unreadable files: ``on_error="raise"`` raises CorruptImageError listing every one;
    ``"skip"`` leaves them out, lists them in ``skipped`` and warns with the count and names.
    Every class needs ``min_per_class`` readable images (2: one pair), else ValueError naming it.

    ``annotations``: an optional CSV of boxes (:func:`read_annotations`), header ``file,x0,y0,x1,y1``,
    ``file`` relative to ``root``, pixel edges in the original image, e.g. ``cats/001.jpg,10,20,200,180``.
    The boxes come back in ``boxes``, mapped like the image into the S x S crop (clipped); images
    without a row (or whose box the crop cuts away) get a NaN row and are listed in ``unboxed``.
    """
    root = Path(root)
    image_size = checks.integers(1, image_size=image_size)
    resize_size = checks.integers(image_size, resize_size=resize_size, optional=True)
    min_per_class = checks.integers(1, min_per_class=min_per_class)
    checks.one_of(_ON_ERROR, on_error=on_error)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} does not exist or is not a folder")
    if class_names is None:
        class_names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not class_names:
            raise ValueError(f"image folder root {root} has no class sub-folders")
    else:
        class_names = list(class_names)
        if not class_names or len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names must be a non-empty list of distinct names, got {class_names}")
        for name in class_names:
            if not (root / name).is_dir():
                raise FileNotFoundError(f"class folder {root / name} does not exist")
    known_boxes = read_annotations(annotations, root) if annotations is not None else None

    arrays, labels, paths, sizes, bad = [], [], [], [], []
    for label, name in enumerate(class_names):
        files = sorted((p for p in (root / name).iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.suffix.lower() in IMAGE_EXTENSIONS), key=_natural_key)
        if not files:
            raise ValueError(f"class folder {root / name} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        for path in files:
            try:
                array, original = _read_square(path, image_size, resize_size)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                bad.append((path, f"{type(err).__name__}: {err}"))
                continue
            arrays.append(array)
            sizes.append(original)
            labels.append(label)
            paths.append(path)
    if bad and on_error == "raise":
        listing = "\n".join(f"  {path} ({reason})" for path, reason in bad)
        raise CorruptImageError(f"{len(bad)} unreadable image file(s) under {root}:\n{listing}",
                                [path for path, _ in bad])
    if bad:
        names = ", ".join(str(path.relative_to(root)) for path, _ in bad[:10])
        warnings.warn(f"skipped {len(bad)} unreadable image file(s) under {root}: {names}"
                      f"{' ...' if len(bad) > 10 else ''}", stacklevel=2)
    counts = np.bincount(labels, minlength=len(class_names))
    few = [f"{root / name} ({int(counts[label])})" for label, name in enumerate(class_names)
           if counts[label] < min_per_class]
    if few:
        raise ValueError(f"class folder(s) with fewer than {min_per_class} readable images: {', '.join(few)}")
    boxes, unboxed = None, []
    if known_boxes is not None:
        rows = [square_box(known_boxes[key], size, image_size, resize_size) if key in known_boxes else [math.nan] * 4
                for key, size in zip((p.relative_to(root).as_posix() for p in paths), sizes)]
        boxes = torch.tensor(rows, dtype=torch.float32)
        unboxed = [path for path, row in zip(paths, rows) if math.isnan(row[0])]
    return ImageFolder(images=torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(),
                       labels=torch.tensor(labels, dtype=torch.long), class_names=list(class_names),
                       paths=paths, skipped=[path for path, _ in bad], boxes=boxes, unboxed=unboxed)


# --------------------------------------------------------------------------------------------
# Per-profile entry point
# --------------------------------------------------------------------------------------------

def generated_image_size(prof: Profile) -> int:
    """The side of a diffusion profile's generated images: DIFFUSION_IMAGE_SIZE, or the profile's image
    size for the dry run's tiny pipeline."""
    return prof.image_size if prof.data == "diffusion-dryrun" else DIFFUSION_IMAGE_SIZE


def load_profile_data(profile: Profile | str, split: str = "analysis", seed: int = 0,
                      device: str = "auto", progress: bool = False) -> Benchmark | ImageFolder:
    """The images a chapter analyses (or trains on) under ``profile``.

    "benchmark": :func:`make_benchmark` with the profile's per-class count for ``split`` and its
    image size. "diffusion": ANIMAL_CLASSES generated with the profile's Stable Diffusion model at
    512 px into a cache folder, loaded as the weights' preprocessing makes them (shorter side to the
    profile's "images" resize_size, bilinear, centre crop to its image size). "diffusion-dryrun": the same
    with :func:`tiny_random_pipeline` at the profile's image size. The diffusion profiles have
    only an analysis split; their cache key covers the dtype and device type, and the returned
    ImageFolder lists in ``excluded`` the images the safety checker flagged (not on disk).
    """
    prof = get_profile(profile) if isinstance(profile, str) else profile
    if not isinstance(prof, Profile):
        raise ValueError(f"profile must be a Profile or a profile name, got {profile!r}")
    checks.one_of(_SPLITS, split=split)
    seed = checks.integers(0, seed=seed)
    n = prof.n_train_per_class if split == "train" else prof.n_analysis_per_class
    if n < 1:
        raise ValueError(f"profile {prof.name!r} has no {split!r} split (0 images per class)")
    if prof.data == "benchmark":
        return make_benchmark(n_per_class=n, split=split, seed=seed, image_size=prof.image_size,
                              progress=progress)
    if prof.data not in ("diffusion", "diffusion-dryrun"):
        raise ValueError(f"profile {prof.name!r} has unknown data source {prof.data!r}")
    if split == "train":
        raise ValueError(f"profile {prof.name!r} uses pretrained models; its diffusion data has no 'train' split")

    prompts = {a.name: a.prompt for a in ANIMAL_CLASSES}
    dryrun = prof.data == "diffusion-dryrun"
    model_id = "gradsim-tiny-random" if dryrun else (prof.diffusion_model or DEFAULT_DIFFUSION_MODEL)
    size = generated_image_size(prof)
    dev = get_device(device)
    dtype = torch.float32 if dryrun else diffusion_dtype(dev)
    checker = not dryrun  # the tiny random pipeline has no safety checker
    key = cache_key(step="diffusion", version=_DIFFUSION_CODE_VERSION, model_id=model_id, prompts=prompts,
                    n_per_class=n, seed=seed, guidance_scale=7.5, steps=prof.diffusion_steps, size=size,
                    batch_size=_DIFFUSION_BATCH_SIZE, dtype=str(dtype), device=dev.type,
                    safety_checker=checker)
    folder = cache_dir() / "diffusion" / key
    pipeline = None
    if dryrun and (distributed.rank_and_world()[1] > 1 or _missing_images(folder, prompts, n)):  # ranks alike
        pipeline = tiny_random_pipeline(image_size=size, seed=seed)
    generate_diffusion(folder, prompts, n, model_id=model_id, seed=seed, guidance_scale=7.5,
                       num_inference_steps=prof.diffusion_steps, image_size=size, device=dev,
                       pipeline=pipeline, batch_size=_DIFFUSION_BATCH_SIZE, progress=progress,
                       safety_checker=checker)
    # the profile sets the count per class (1 in quick tests); the chapters check what they need
    images = load_image_folder(folder, image_size=prof.image_size, class_names=list(prompts), min_per_class=1,
                               resize_size=chapter_settings(prof, "images")["resize_size"])
    images.excluded = diffusion_exclusions(folder)
    return images
