"""Does a saliency map find the object? Box and mask localisation scores (seeds 000 and 004).

Seed 004 (section 4.3) turns a map into a box: normalise it to [0, 1], keep the pixels at or above
a threshold (0.2), take the box around the largest connected region, and count a query as
localised when that box's IoU with the ground-truth box is at least 0.5. Boxes are
``(x0, y0, x1, y1)`` in pixel edges with ``x1``/``y1`` exclusive, as ``data.make_benchmark`` gives.

Two floors that never look at the image separate a method from where objects sit (issue 16):

* area chance (``area_chance``): a uniformly random point lands on the object with probability equal
  to the object's share of the image, the pointing game's usual chance level;
* the centre prior (``centre_prior``): one fixed centred Gaussian for every image. On data whose
  objects sit near the middle it beats area chance by far, so a localisation claim is judged
  against the stronger of the two.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

__all__ = ["SEED004_THRESHOLD", "SEED004_MIN_IOU", "CENTRE_PRIOR_SIGMA", "centre_prior", "area_chance", "normalise_maps", "threshold_box", "threshold_boxes",
           "paired_box_iou", "localisation_hits", "localisation_accuracy", "pointing_game", "mask_iou", "box_masks"]

SEED004_THRESHOLD = 0.2
SEED004_MIN_IOU = 0.5
CENTRE_PRIOR_SIGMA = 0.25  # the centre prior's standard deviation, a quarter of the image side


def _as_maps(maps) -> torch.Tensor:
    maps = torch.as_tensor(maps, dtype=torch.float64)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"maps must be (H, W) or (N, H, W), got shape {tuple(maps.shape)}")
    if not torch.isfinite(maps).all():
        raise ValueError("maps contain NaN or Inf")
    return maps


def normalise_maps(maps) -> torch.Tensor:
    """Min-max normalise each map to [0, 1]: (m - min m) / (max m - min m); a constant map gives 0."""
    maps = _as_maps(maps)
    flat = maps.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    span = (high - low).clamp_min(torch.finfo(maps.dtype).tiny)
    out = (maps - low[:, None, None]) / span[:, None, None]
    return torch.where((high > low)[:, None, None], out, torch.zeros_like(out))


def centre_prior(size: int | tuple[int, int], sigma: float = CENTRE_PRIOR_SIGMA) -> torch.Tensor:
    """A fixed centred isotropic Gaussian, one map for every image: (H, W) float32.

    m(y, x) = exp(-((y' - 1/2)^2 + (x' - 1/2)^2) / (2 sigma^2)) at the pixel centres y' = (y + 0.5) / H,
    x' = (x + 0.5) / W (coordinates in image sides, so ``sigma`` is a share of the side; 0.25 by
    default). Not normalised to a sum: its largest value is 1 at the centre (an odd side) or just
    below 1 on the four middle pixels (an even side, where they tie). Every score here ignores the
    map's scale (the pointing game takes the maximum, boxes min-max normalise, AUC uses ranks).
    """
    height, width = (size, size) if isinstance(size, int) else size
    if min(height, width) < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    ys = (torch.arange(height) + 0.5) / height - 0.5
    xs = (torch.arange(width) + 0.5) / width - 0.5
    return torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma ** 2))


def area_chance(masks) -> torch.Tensor:
    """Per image, the object's share of the pixels of its (N, H, W) boolean mask: the probability that
    a uniformly random point hits the object, i.e. the pointing game's chance level (float64, (N,))."""
    masks = torch.as_tensor(masks)
    if masks.dtype != torch.bool:
        raise ValueError(f"masks must be boolean, got {masks.dtype}")
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3:
        raise ValueError(f"masks must be (H, W) or (N, H, W), got shape {tuple(masks.shape)}")
    return masks.flatten(1).double().mean(1)


def threshold_box(saliency_map, threshold: float = SEED004_THRESHOLD) -> torch.Tensor:
    """Box around the largest connected region of ``normalise(map) >= threshold`` (seed 004).

    Regions are 8-connected (``scipy.ndimage.label``); ties in size go to the region with the
    larger summed saliency. A constant map (no peak) gives the whole image: every pixel ties.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    norm = normalise_maps(saliency_map)[0].numpy()
    height, width = norm.shape
    if norm.max() == 0.0:
        return torch.tensor([0.0, 0.0, float(width), float(height)])
    regions, n_regions = ndimage.label(norm >= threshold, structure=np.ones((3, 3), dtype=bool))
    index = np.arange(1, n_regions + 1)
    sizes = ndimage.sum_labels(np.ones_like(norm), regions, index)
    mass = ndimage.sum_labels(norm, regions, index)
    best = index[np.lexsort((mass, sizes))[-1]]
    rows, cols = np.nonzero(regions == best)
    return torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)


def threshold_boxes(maps, threshold: float = SEED004_THRESHOLD) -> torch.Tensor:
    """``threshold_box`` of each map in an (N, H, W) stack: (N, 4), the same boxes and ties.

    One labelling of the whole stack (8-connected within a map, never across maps); per map the
    region with the most pixels, then the larger summed saliency, then the later label wins.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    norm = normalise_maps(maps).numpy()
    n, height, width = norm.shape
    boxes = torch.tensor([[0.0, 0.0, float(width), float(height)]]).repeat(n, 1)  # constant maps: the image
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    regions, n_regions = ndimage.label((norm >= threshold) & (norm.max(axis=(1, 2)) > 0)[:, None, None],
                                       structure=structure)
    if n_regions == 0:
        return boxes
    index = np.arange(1, n_regions + 1)
    sizes = ndimage.sum_labels(np.ones_like(norm), regions, index)
    mass = ndimage.sum_labels(norm, regions, index)
    slices = ndimage.find_objects(regions)
    owner = np.array([s[0].start for s in slices])
    order = np.lexsort((index, mass, sizes, owner))
    last_of_owner = np.r_[owner[order][1:] != owner[order][:-1], True]
    for k in order[last_of_owner]:
        _, rows, cols = slices[k]
        boxes[owner[k]] = torch.tensor([cols.start, rows.start, cols.stop, rows.stop], dtype=torch.float32)
    return boxes


def paired_box_iou(boxes_a, boxes_b) -> torch.Tensor:
    """IoU of box i of ``boxes_a`` with box i of ``boxes_b``: |A n B| / |A u B|, both (N, 4)."""
    a, b = torch.as_tensor(boxes_a, dtype=torch.float64), torch.as_tensor(boxes_b, dtype=torch.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"boxes must both be (N, 4), got {tuple(a.shape)} and {tuple(b.shape)}")
    if ((a[:, 2:] < a[:, :2]) | (b[:, 2:] < b[:, :2])).any():
        raise ValueError("boxes must satisfy x1 >= x0 and y1 >= y0")
    top_left = torch.maximum(a[:, :2], b[:, :2])
    bottom_right = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (bottom_right - top_left).clamp_min(0).prod(1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(1), (b[:, 2:] - b[:, :2]).prod(1)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))


def localisation_hits(ious, min_iou: float = SEED004_MIN_IOU) -> np.ndarray:
    """Whether each box's IoU with the ground truth is >= ``min_iou`` (seed 004, 0.5): bool, shaped as ``ious``."""
    return np.asarray(ious, dtype=np.float64) >= min_iou


def localisation_accuracy(ious, min_iou: float = SEED004_MIN_IOU) -> float:
    """Share of maps whose box has IoU >= ``min_iou`` with the ground truth (seed 004, 0.5)."""
    hits = localisation_hits(ious, min_iou)
    if hits.size == 0:
        raise ValueError("no IoUs to score (empty input)")
    return float(hits.mean())


def pointing_game(maps, masks) -> torch.Tensor:
    """Hit (bool per map) when the map's maximum falls on the object mask; ties count if any hits."""
    maps = _as_maps(maps)
    masks = torch.as_tensor(masks, dtype=torch.bool)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.shape != maps.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ in shape")
    peaks = maps == maps.flatten(1).max(1).values[:, None, None]
    return (peaks & masks).flatten(1).any(1)


def box_masks(boxes, size: int | tuple[int, int]) -> torch.Tensor:
    """(N, H, W) bool masks of (N, 4) boxes (x0, y0, x1, y1) in pixel edges, possibly fractional (a
    folder's boxes after resizing): a pixel is in its box when its centre is. A NaN row (no box) gives
    an empty mask."""
    boxes = torch.as_tensor(boxes, dtype=torch.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) x0, y0, x1, y1, got shape {tuple(boxes.shape)}")
    h, w = (size, size) if isinstance(size, int) else size
    ys, xs = torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5
    x0, y0, x1, y1 = (boxes[:, i, None] for i in range(4))
    in_x, in_y = (xs >= x0) & (xs <= x1), (ys >= y0) & (ys <= y1)  # NaN compares False
    return in_y[:, :, None] & in_x[:, None, :]


def mask_iou(binary_a, binary_b) -> torch.Tensor:
    """IoU of two (N, H, W) binary masks per item; two empty masks give 0."""
    a, b = torch.as_tensor(binary_a, dtype=torch.bool), torch.as_tensor(binary_b, dtype=torch.bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim == 2:
        a, b = a[None], b[None]
    inter = (a & b).flatten(1).sum(1).double()
    union = (a | b).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))
