"""Grad-CAM maps, batched, and the saliency metrics seed 000 compares them with (CC, SIM, KLD, AUC).

Grad-CAM (selvaraju2017gradcam) of image i at a layer with output F_i (K x H' x W') and gradient
weights w_i (``extract.representations``, seed 000's w_k):

    L_i = ReLU(sum_k w_{i,k} F_{i,k}),  upsampled bilinearly to the image size.

``normalise="gradcam"`` rescales as pytorch-grad-cam 1.5 does (``scale_cam_image``): min-max with
a 1e-7 guard at the feature resolution, bilinear resize, min-max again. At ``layer4`` of a ResNet
the weights are W_c / (H'W') (DESIGN.md section 7), so ``method="identity"`` needs a forward pass
only; ``method="backward"`` differentiates and works at any layer.

Pair metrics follow bylinskii2019metrics (MIT saliency benchmark code), P the scored map and Q the
reference, both (H, W) or (N, H, W) stacks scored pair by pair (float64):

* CC  = Pearson r of the pixel values (symmetric); 0 when either map is constant.
* SIM = sum_i min(P_i, Q_i) after each map is divided by its sum (symmetric, in [0, 1]).
* KLD = sum_i Q_i log(eps + Q_i / (P_i + eps)), eps = 2.2204e-16, both sum-normalised: KL(Q || P),
  asymmetric; a zero of P where Q > 0 costs about Q_i * 36. ``pair_metrics`` reports both
  directions and their mean.
* AUC = ROC AUC of P's pixels against Q binarised: Q's top ``top`` share of pixels (default 20 %,
  ties at the cut included) are positives, the rest negatives; ties in P count one half
  (Mann-Whitney, equal to ``sklearn.metrics.roc_auc_score``). A boolean Q is used as given.

``auc``, ``pair_auc`` and ``pair_metrics`` work on ``device`` ("auto": CUDA when present, else the
CPU), in float64 everywhere, pixel ranks included (``average_ranks``, in torch): on the CPU they give
the very numbers scipy's ranks gave; on a GPU the sums may differ in the last bits (summation order).
Exact agreement with the CPU path matters more here than the speed float32 would give.

Edge cases (DESIGN.md section 10): a map with zero sum is the uniform distribution in SIM and KLD;
a reference with no positives or no negatives gives AUC 0.5; identical maps give CC 1 (non-constant),
SIM 1, KLD 0. SIM and KLD need non-negative maps (Grad-CAM maps are). NaN or Inf raise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import extract, nets
from .cache import cache_key, cached_torch, content_digest
from .devices import get_device, place
from .stats import Estimate, percentile_interval

__all__ = ["KLD_EPS", "cc", "sim", "kld", "binarise_top", "average_ranks", "auc", "pair_auc", "pair_metrics",
           "pair_mean_replicates", "estimate_from_replicates", "pair_mean_ci", "GradCAM", "gradcam", "gradcam_with_control", "gradcam_maps", "cached_gradcam", "cached_gradcam_with_control", "SEED000_GRADCAM"]

KLD_EPS = 2.2204e-16  # MATLAB eps, as in the MIT saliency benchmark's KLdiv.m
_GRADCAM_GUARD = 1e-7  # pytorch-grad-cam's scale_cam_image: img / (1e-7 + max)
_GRADCAM_CODE_VERSION = 2  # bump when gradcam's output changes, to invalidate cached maps

#: Seed 000's Grad-CAM table (seed000, "Experimental Results", Grad-CAM columns), quoted:
#: model -> mean CC, KLD, SIM and AUC between the maps of same-class image pairs.
SEED000_GRADCAM = {
    "ResNet-18": {"CC": 0.514107, "KLD": 0.546371, "SIM": 0.640893, "AUC": 0.473252},
    "ResNet-34": {"CC": 0.547336, "KLD": 0.303619, "SIM": 0.717424, "AUC": 0.482986},
    "ResNet-50": {"CC": 0.387207, "KLD": 0.845985, "SIM": 0.534813, "AUC": 0.441505},
    "ResNet-101": {"CC": 0.451866, "KLD": 0.607102, "SIM": 0.587721, "AUC": 0.471974},
    "ResNet-152": {"CC": 0.513276, "KLD": 0.560512, "SIM": 0.600739, "AUC": 0.498934},
}


# ------------------------------------------------------------------------------------------
# metrics


def _as_maps(x, name: str, device: torch.device | None = None) -> torch.Tensor:
    """``x`` as a float64 (N, H, W) tensor on ``device`` (None: where it is); a single (H, W) map becomes N = 1."""
    x = torch.as_tensor(x)
    if x.dtype == torch.bool:
        raise ValueError(f"{name} must be a real-valued map, got a boolean array")
    x = x.to(device=device, dtype=torch.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1] * x.shape[2] == 0:
        raise ValueError(f"{name} must be an (H, W) map or an (N, H, W) stack, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def _pair(a, b, names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Both maps as (N, HW) float64, broadcast over N; whether the caller passed single maps."""
    single = torch.as_tensor(a).ndim == 2 and torch.as_tensor(b).ndim == 2
    a, b = _as_maps(a, names[0]), _as_maps(b, names[1])
    if a.shape[1:] != b.shape[1:] or (a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0])):
        raise ValueError(f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} do not pair up")
    a, b = torch.broadcast_tensors(a, b)
    return a.flatten(1), b.flatten(1), single


def _out(values: torch.Tensor, single: bool) -> torch.Tensor:
    return values[0] if single else values


def _check_non_negative(x: torch.Tensor, name: str) -> None:
    if (x < 0).any():
        raise ValueError(f"{name} must be non-negative (a saliency map, e.g. after ReLU), got min {x.min().item():.3g}")


def _distribution(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their sums; a zero row becomes uniform."""
    total = x.sum(1, keepdim=True)
    uniform = torch.full_like(x, 1.0 / x.shape[1])
    return torch.where(total > 0, x / total.clamp_min(torch.finfo(x.dtype).tiny), uniform)


def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit norm; a constant row becomes 0 (so its CC is 0)."""
    centred = x - x.mean(1, keepdim=True)
    norm = centred.norm(dim=1, keepdim=True)
    constant = (x.amax(1, keepdim=True) == x.amin(1, keepdim=True))
    return torch.where(constant, torch.zeros_like(x), centred / norm.clamp_min(torch.finfo(x.dtype).tiny))


def cc(a, b) -> torch.Tensor:
    """Pearson correlation coefficient of two maps, pixel by pixel (bylinskii2019metrics).

    CC = sum_i (a_i - mean a)(b_i - mean b) / sqrt(sum (a_i - mean a)^2 sum (b_i - mean b)^2).
    (H, W) inputs give a 0-d tensor, (N, H, W) stacks one value per pair. A constant map has no
    variance, so r is undefined; it is defined as 0 here.
    """
    a, b, single = _pair(a, b, ("a", "b"))
    return _out((_standardise(a) * _standardise(b)).sum(1).clamp(-1.0, 1.0), single)


def sim(a, b) -> torch.Tensor:
    """Similarity (histogram intersection) of two non-negative maps: sum_i min(A_i, B_i).

    A = a / sum a, B = b / sum b (bylinskii2019metrics); 1 for identical maps, 0 for disjoint
    support. A map with zero sum counts as uniform.
    """
    a, b, single = _pair(a, b, ("a", "b"))
    _check_non_negative(a, "a")
    _check_non_negative(b, "b")
    return _out(torch.minimum(_distribution(a), _distribution(b)).sum(1), single)


def kld(p, q) -> torch.Tensor:
    """KL divergence of the reference ``q`` from the scored map ``p``: KL(Q || P).

    KLD = sum_i Q_i log(eps + Q_i / (P_i + eps)), P = p / sum p, Q = q / sum q, eps = 2.2204e-16
    (bylinskii2019metrics, MIT ``KLdiv.m``). Asymmetric: swap the arguments for the other
    direction. 0 for identical maps; maps with zero sum count as uniform.
    """
    p, q, single = _pair(p, q, ("p", "q"))
    _check_non_negative(p, "p")
    _check_non_negative(q, "q")
    return _out(_kld_rows(_distribution(p), _distribution(q)), single)


def _kld_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(Q || P) per row of already sum-normalised maps; 0 log(...) = 0."""
    return (q * torch.log(KLD_EPS + q / (p + KLD_EPS))).sum(1)


def binarise_top(ref, top: float = 0.2) -> torch.Tensor:
    """Positives of a continuous reference map: its ``top`` share of pixels (bool, same shape).

    A pixel is positive when it is >= the k-th largest value of its map, k = ceil(top * H * W),
    so ties at the cut are all included; a constant map is all positive (AUC then 0.5).
    """
    if not 0.0 < top < 1.0:
        raise ValueError(f"top must be a share in (0, 1), got {top!r}")
    single = torch.as_tensor(ref).ndim == 2
    maps = _as_maps(ref, "ref")
    flat = maps.flatten(1)
    k = int(np.ceil(top * flat.shape[1]))
    cut = flat.topk(k, dim=1).values[:, -1:]
    out = (flat >= cut).reshape(maps.shape)
    return out[0] if single else out


def average_ranks(x) -> torch.Tensor:
    """Ranks 1..M within each row of an (N, M) tensor, tied values sharing their average rank: float64
    on ``x``'s device, equal to ``scipy.stats.rankdata(x, method="average", axis=1)``.

    Each row is sorted; a run of equal values at sorted positions s..e (0-based) gets (s + e) / 2 + 1,
    a half-integer and so exact in float64. The runs' ends come from running maxima and minima of
    the positions where a value changes; no loop, no copy to the CPU.
    """
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"x must be (N, M), got shape {tuple(x.shape)}")
    values, order = x.sort(dim=1)
    n, m = values.shape
    position = torch.arange(m, device=x.device).expand(n, m)
    starts = torch.ones_like(values, dtype=torch.bool)
    starts[:, 1:] = values[:, 1:] != values[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, position, 0).cummax(1).values
    last = torch.where(ends, position, m).flip(1).cummin(1).values.flip(1)
    ranks = (first + last).to(torch.float64) / 2 + 1
    return torch.empty_like(ranks).scatter_(1, order, ranks)


def _positives(ref, top: float, name: str, device: torch.device) -> torch.Tensor:
    ref = torch.as_tensor(ref)
    if ref.dtype == torch.bool:
        return (ref[None] if ref.ndim == 2 else ref).flatten(1).to(device)
    return binarise_top(_as_maps(ref, name, device), top).flatten(1)


def _auc_rows(ranks: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mann-Whitney AUC per row from the scored map's ranks and the reference's positives."""
    n_pos = positives.sum(1).to(ranks.dtype)
    n_neg = positives.shape[1] - n_pos
    u = ranks.where(positives, 0.0).sum(1) - n_pos * (n_pos + 1) / 2
    defined = (n_pos > 0) & (n_neg > 0)
    return torch.where(defined, u / (n_pos * n_neg).clamp_min(1), torch.full_like(u, 0.5))


def auc(s, ref, top: float = 0.2, device: str | torch.device = "auto") -> torch.Tensor:
    """ROC AUC of map ``s``'s pixels as scores for the reference's positive pixels.

    ``ref`` boolean: its True pixels are the positives (e.g. an object mask); ``ref`` real: the
    positives are its top ``top`` share of pixels (``binarise_top``). AUC = P(s_pos > s_neg)
    + P(tie) / 2, as ``sklearn.metrics.roc_auc_score(positives.ravel(), s.ravel())``; 0.5 when
    the reference has no positives or no negatives. Below 0.5: ``s`` is lower on the reference's
    positives than elsewhere. Computed on ``device``; the result is on ``s``'s device.
    """
    s_t, ref_t, dev = torch.as_tensor(s), torch.as_tensor(ref), get_device(device)
    s_maps = _as_maps(s_t, "s", dev)
    single = s_t.ndim == 2 and ref_t.ndim == 2
    positives = _positives(ref_t, top, "ref", dev)
    if positives.shape[1] != s_maps.shape[1] * s_maps.shape[2]:
        raise ValueError(f"s {tuple(s_maps.shape)} and ref {tuple(ref_t.shape)} differ in map size")
    ranks, positives = torch.broadcast_tensors(average_ranks(s_maps.flatten(1)), positives)
    return _out(_auc_rows(ranks, positives), single).to(s_t.device)


def pair_auc(maps, i, j, positives, chunk: int = 2048, device: str | torch.device = "auto") -> np.ndarray:
    """AUC of maps[i[p]] scored against the boolean ``positives[j[p]]``, for every pair p.

    ``positives`` (N, H, W) bool: any binarisation of the reference maps (``binarise_top``, a
    fixed threshold, an object mask). Ranks are computed once per map; pairs in vectorised chunks,
    all on ``device``.
    """
    dev = get_device(device)
    maps = _as_maps(maps, "maps", dev)
    positives = torch.as_tensor(positives)
    if positives.dtype != torch.bool or positives.shape != maps.shape:
        raise ValueError(f"positives must be a boolean stack of shape {tuple(maps.shape)}, "
                         f"got {positives.dtype} {tuple(positives.shape)}")
    i, j = (index.to(dev) for index in _pair_indices(i, j, len(maps), chunk))
    ranks, flat_pos = average_ranks(maps.flatten(1)), positives.flatten(1).to(dev)
    parts = [_auc_rows(ranks[i[s:s + chunk]], flat_pos[j[s:s + chunk]]) for s in range(0, len(i), chunk)]
    return (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)).cpu().numpy()


def _pair_indices(i, j, n: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    i, j = torch.as_tensor(i).long().flatten(), torch.as_tensor(j).long().flatten()
    if i.shape != j.shape:
        raise ValueError(f"i and j must have the same length, got {len(i)} and {len(j)}")
    if len(i) and (min(i.min(), j.min()) < 0 or max(i.max(), j.max()) >= n):
        raise ValueError(f"pair indices must lie in [0, {n})")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    return i, j


def pair_metrics(maps, i, j, top: float = 0.2, chunk: int = 2048, device: str | torch.device = "auto") -> pd.DataFrame:
    """CC, SIM, KLD and AUC of the map pairs (maps[i[p]], maps[j[p]]), one row per pair.

    ``maps``: (N, H, W) non-negative maps; ``i``, ``j``: pair indices (e.g. all same-class pairs
    from ``similarity.unordered_pairs``). Per-map quantities (standardised maps, distributions,
    pixel ranks, top-``top`` positives) are computed once; pairs are scored in vectorised chunks
    of ``chunk`` pairs, no loop over pairs, all on ``device`` (float64). Columns: i, j, cc, sim,
    kld_ij (KL(map_j || map_i): i scored, j reference), kld_ji, kld_mean, auc_ij (i scored against
    j's positives), auc_ji, auc_mean.
    """
    dev = get_device(device)
    maps = _as_maps(maps, "maps", dev)
    _check_non_negative(maps, "maps")
    i, j = _pair_indices(i, j, len(maps), chunk)
    flat = maps.flatten(1)
    z, dist = _standardise(flat), _distribution(flat)
    ranks, positives = average_ranks(flat), binarise_top(maps, top).flatten(1)
    cols = {name: [] for name in ("cc", "sim", "kld_ij", "kld_ji", "auc_ij", "auc_ji")}
    for start in range(0, len(i), chunk):
        a, b = i[start:start + chunk].to(dev), j[start:start + chunk].to(dev)
        dist_a, dist_b = dist[a], dist[b]  # gathered once for SIM and both KLDs
        cols["cc"].append((z[a] * z[b]).sum(1).clamp(-1.0, 1.0))
        cols["sim"].append(torch.minimum(dist_a, dist_b).sum(1))
        cols["kld_ij"].append(_kld_rows(dist_a, dist_b))
        cols["kld_ji"].append(_kld_rows(dist_b, dist_a))
        cols["auc_ij"].append(_auc_rows(ranks[a], positives[b]))
        cols["auc_ji"].append(_auc_rows(ranks[b], positives[a]))
    out = {name: (torch.cat(v) if v else torch.zeros(0, dtype=torch.float64)).cpu().numpy()
           for name, v in cols.items()}
    frame = pd.DataFrame({"i": i.numpy(), "j": j.numpy(), **out})
    frame["kld_mean"] = (frame.kld_ij + frame.kld_ji) / 2
    frame["auc_mean"] = (frame.auc_ij + frame.auc_ji) / 2
    return frame


def pair_mean_replicates(values, i, j, counts: np.ndarray, groups=None) -> np.ndarray:
    """Mean pair value over ``groups`` (equal weights), on the data and on image-bootstrap replicates.

    Returns (1 + R,): element 0 uses every pair once; element r uses ``counts[r - 1]`` (R, N) from
    ``stats.image_bootstrap_counts``, pair (i, j) weighted n_i n_j (images are resampled, not
    pairs: pairs that share an image are dependent). ``groups`` (one label per pair, e.g. the class
    of a within-class pair) or None (one group). NaN where a replicate has no pair at all.
    """
    values = np.asarray(values, dtype=np.float64)
    i, j = np.asarray(i), np.asarray(j)
    if not (len(values) == len(i) == len(j)) or len(values) == 0:
        raise ValueError(f"values, i and j must have one equal, non-zero length, got {len(values)}, {len(i)}, {len(j)}")
    if not np.isfinite(values).all():
        raise ValueError("values contain NaN or Inf")
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] <= max(i.max(), j.max()):
        raise ValueError(f"counts must be (R, N) with a column for every image index, got shape {counts.shape}")
    groups = np.zeros(len(values), dtype=np.int64) if groups is None else np.asarray(groups)
    if groups.shape != values.shape:
        raise ValueError(f"groups must give one label per pair ({len(values)}), got shape {groups.shape}")
    weights = np.concatenate([np.ones((1, counts.shape[1])), counts])
    group_means = []
    for g in np.unique(groups):
        in_g = groups == g
        w = weights[:, i[in_g]] * weights[:, j[in_g]]
        total = w.sum(1)
        group_means.append(np.divide(w @ values[in_g], total, out=np.full(len(w), np.nan), where=total > 0))
    group_means = np.stack(group_means)
    counted = np.isfinite(group_means)  # a replicate may draw one image of a class only: no pair
    return np.divide(np.where(counted, group_means, 0.0).sum(0), counted.sum(0),
                     out=np.full(len(weights), np.nan), where=counted.any(0))


def estimate_from_replicates(replicates, level: float = 0.95) -> Estimate:
    """Element 0 with the percentile interval of elements 1.. at ``level`` (``stats.percentile_interval``)."""
    replicates = np.asarray(replicates, dtype=np.float64)
    return percentile_interval(replicates[0], replicates[1:], level)


def pair_mean_ci(values, i, j, counts: np.ndarray, groups=None, level: float = 0.95) -> Estimate:
    """``pair_mean_replicates`` as a value with its percentile image-bootstrap interval."""
    return estimate_from_replicates(pair_mean_replicates(values, i, j, counts, groups), level)


# ------------------------------------------------------------------------------------------
# Grad-CAM


@dataclass
class GradCAM:
    """Grad-CAM maps (N, H, W) float32 on the CPU, the class each map explains and the logits;
    ``method``: "identity", "backward" or "uniform" (how the channel weights were obtained)."""

    maps: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    layer: str
    method: str

    def __len__(self) -> int:
        return self.maps.shape[0]


def _scale_like_gradcam(cams: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """pytorch-grad-cam's ``scale_cam_image`` twice: min-max (1e-7 guard), resize, min-max."""
    def minmax(x: torch.Tensor) -> torch.Tensor:
        x = x - x.amin(dim=(1, 2), keepdim=True)
        return x / (_GRADCAM_GUARD + x.amax(dim=(1, 2), keepdim=True))
    up = F.interpolate(minmax(cams)[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return minmax(up)


def _cams_forward(model: nn.Module, x: torch.Tensor, layer: str, targets: torch.Tensor | None,
                  classifier: torch.Tensor | None):
    """ReLU(sum_k w_k F_k) from one forward pass (no autograd): cams, c, logits.

    w_k = W_{c,k} / (H'W') (the identity) with W the ``classifier`` weight, or 1 / K when it is None
    (the class-agnostic mean map).
    """
    with torch.inference_mode(), extract.LayerTap(model, layer, start_graph=False) as tap:
        tap.reset()
        logits = model(x)
        feats = tap.features
        c = logits.argmax(1) if targets is None else targets.to(logits.device)
        if (c >= logits.shape[1]).any():
            raise ValueError(f"targets must lie in [0, {logits.shape[1]}), got max {c.max().item()}")
        weights = (torch.full(feats.shape[:2], 1.0 / feats.shape[1], device=feats.device) if classifier is None
                   else classifier[c] / (feats.shape[2] * feats.shape[3]))
        cams = torch.einsum("nk,nkhw->nhw", weights, feats).relu()
    return cams.float(), c, logits


def _cams_backward(model: nn.Module, x: torch.Tensor, layer: str, targets: torch.Tensor | None,
                   device: torch.device):
    """ReLU(sum_k w_k F_k) with w from ``extract.representations`` (one backward per batch)."""
    reps = extract.representations(model, x, layer=layer, batch_size=len(x), targets=targets, device=device,
                                   progress=False)
    cams = torch.einsum("nk,nkhw->nhw", reps.grad_weights, reps.features).relu()
    return cams, reps.targets, reps.logits


def gradcam(model: nn.Module, images, layer: str = "layer4", targets=None, batch_size: int = 32,
            normalise: str | None = "gradcam", method: str = "auto", weights: str = "gradient",
            device: str | torch.device = "auto", progress: bool = False) -> GradCAM:
    """Batched Grad-CAM maps of ``images`` at ``layer``: ReLU(sum_k w_k F_k), upsampled to H x W.

    ``images``: N x 3 x H x W (uint8 0-255 or float 0-1 for a model from ``models.load_model``,
    prepared float input for a plain module); maps come out at the images' H x W. ``targets``:
    None (each image's argmax class), one class or N classes. ``normalise``: "gradcam" (min-max
    per map as pytorch-grad-cam, equal to its ``GradCAM`` output) or None (raw upsampled
    ReLU map). ``method``: "backward" (gradient weights by autograd, any layer), "identity"
    (W_c / (H'W') from the classifier, forward only; only where ``nets.identity_applies``) or "auto"
    (identity where it applies, else backward). ``weights="uniform"`` replaces w_k by 1/K (a
    control: the channel-mean activation map, the same for every class; forward only).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if method not in ("auto", "identity", "backward"):
        raise ValueError(f"method must be 'auto', 'identity' or 'backward', got {method!r}")
    if normalise not in ("gradcam", None):
        raise ValueError(f"normalise must be 'gradcam' or None, got {normalise!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if weights not in ("gradient", "uniform"):
        raise ValueError(f"weights must be 'gradient' or 'uniform', got {weights!r}")
    nets.get_layer(model, layer)
    applies = nets.identity_applies(model, layer)
    if method == "identity" and not applies:
        raise ValueError(f"method='identity' needs the layer that feeds global average pooling + the linear "
                         f"classifier (layer4 of a ResNet); got layer {layer!r} of {type(model).__name__} "
                         "(use method='backward')")
    method = ("identity" if applies else "backward") if method == "auto" else method
    method = "uniform" if weights == "uniform" else method
    images = extract.as_image_tensor(images)
    n, size = images.shape[0], tuple(images.shape[2:])
    targets = extract.as_targets(targets, n, extract.num_classes(model))
    dev = get_device(device)
    model.to(dev)
    forward_only = method in ("identity", "uniform")
    classifier = (dict(model.named_modules())[nets.gap_linear_head(model).classifier].weight
                  if method == "identity" else None)
    if forward_only:
        fmt = place(model, dev, backward_enters_conv=False)
    maps, cs, logits = [], [], []
    with extract.frozen_eval(model):
        for start in tqdm(range(0, n, batch_size), desc=f"Grad-CAM {layer}", unit="batch", disable=not progress):
            t = None if targets is None else targets[start:start + batch_size]
            if forward_only:
                x = extract.model_input(model, images[start:start + batch_size], dev).contiguous(memory_format=fmt)
                cams, c, y = _cams_forward(model, x, layer, t, classifier)
            else:
                cams, c, y = _cams_backward(model, images[start:start + batch_size], layer, t, dev)
            cams = (_scale_like_gradcam(cams, size) if normalise == "gradcam"
                    else F.interpolate(cams[:, None], size=size, mode="bilinear", align_corners=False)[:, 0])
            maps.append(cams.cpu())
            cs.append(c.cpu())
            logits.append(y.cpu())
    return GradCAM(maps=torch.cat(maps), targets=torch.cat(cs), logits=torch.cat(logits), layer=layer, method=method)


def gradcam_with_control(model: nn.Module, images, layer: str, targets=None, batch_size: int = 32,
                         device: str | torch.device = "auto", progress: bool = False) -> tuple[GradCAM, GradCAM]:
    """Grad-CAM maps and their class-free control from one backward pass per batch.

    Both from the same features F of ``layer`` (autograd weights, as ``gradcam(method="backward")``):
    ReLU(sum_k w_k F_k) and ReLU(sum_k F_k / K) (as ``gradcam(weights="uniform")``), each scaled as
    pytorch-grad-cam does and upsampled to the images' H x W. ``targets`` as in ``gradcam``; the
    control's ``targets`` are the same classes (it does not use them).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    nets.get_layer(model, layer)
    images = extract.as_image_tensor(images)
    n, size = images.shape[0], tuple(images.shape[2:])
    targets = extract.as_targets(targets, n, extract.num_classes(model))
    dev = get_device(device)
    gradient_maps, control_maps, cs, logits = [], [], [], []
    for start in tqdm(range(0, n, batch_size), desc=f"Grad-CAM {layer}", unit="batch", disable=not progress):
        t = None if targets is None else targets[start:start + batch_size]
        reps = extract.representations(model, images[start:start + batch_size], layer=layer, batch_size=batch_size,
                                       targets=t, device=dev, progress=False)
        uniform = torch.full(reps.grad_weights.shape, 1.0 / reps.features.shape[1], dtype=reps.features.dtype)
        for weights, out in ((reps.grad_weights, gradient_maps), (uniform, control_maps)):
            out.append(_scale_like_gradcam(torch.einsum("nk,nkhw->nhw", weights, reps.features).relu().float(), size))
        cs.append(reps.targets)
        logits.append(reps.logits)
    targets_, logits_ = torch.cat(cs), torch.cat(logits)
    return (GradCAM(maps=torch.cat(gradient_maps), targets=targets_, logits=logits_, layer=layer, method="backward"),
            GradCAM(maps=torch.cat(control_maps), targets=targets_, logits=logits_, layer=layer, method="uniform"))


def gradcam_maps(model: nn.Module, images, layer: str = "layer4", targets=None, batch_size: int = 32,
                 **kwargs) -> torch.Tensor:
    """The (N, H, W) maps of ``gradcam`` (same arguments)."""
    return gradcam(model, images, layer=layer, targets=targets, batch_size=batch_size, **kwargs).maps


def _digest(tensors) -> str:
    """SHA-256 of named tensors' values (layout-independent), for content-addressed cache keys."""
    return content_digest(*(part for name, tensor in tensors for part in (name, tensor)))


def _gradcam_cache_key(step: str, model: nn.Module, images: torch.Tensor, layer: str, targets, **options) -> str:
    """The disk-cache key of Grad-CAM maps: the model's parameters and buffers, the images, the layer,
    the targets and any ``options`` that change the maps."""
    return cache_key(step=step, version=_GRADCAM_CODE_VERSION, layer=layer, model=_digest(model.state_dict().items()),
                     images=_digest([("images", images)]),
                     targets=None if targets is None else torch.as_tensor(targets).tolist(), **options)


def cached_gradcam(model: nn.Module, images, layer: str = "layer4", targets=None, **kwargs) -> GradCAM:
    """``gradcam`` cached on disk (``cache.cached_torch``), keyed by the model's parameters and
    buffers, the images, the targets and every argument that changes the maps."""
    images_t = extract.as_image_tensor(images)
    options = {k: kwargs.get(k, v) for k, v in (("normalise", "gradcam"), ("method", "auto"), ("weights", "gradient"))}
    key = _gradcam_cache_key("gradcam", model, images_t, layer, targets, options=options)

    def compute() -> dict:
        result = gradcam(model, images_t, layer=layer, targets=targets, **kwargs)
        return {"maps": result.maps, "targets": result.targets, "logits": result.logits, "layer": result.layer,
                "method": result.method}

    return GradCAM(**cached_torch("gradcam", key, compute))


def cached_gradcam_with_control(model: nn.Module, images, layer: str, targets=None, **kwargs) -> tuple[GradCAM, GradCAM]:
    """``gradcam_with_control`` cached on disk (``cache.cached_torch``), keyed as ``cached_gradcam``."""
    images_t = extract.as_image_tensor(images)
    key = _gradcam_cache_key("gradcam_with_control", model, images_t, layer, targets)

    def compute() -> dict:
        return {kind: vars(result) for kind, result in
                zip(("gradient", "control"), gradcam_with_control(model, images_t, layer=layer, targets=targets, **kwargs))}

    stored = cached_torch("gradcam_with_control", key, compute)
    return GradCAM(**stored["gradient"]), GradCAM(**stored["control"])
