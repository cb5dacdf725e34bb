"""SFAM, the Similar Feature Activation Map of seed 004, its baselines and its sanity check.

Notation of seed 004: ``A`` (N x h x w) is the last feature map of a metric-learning backbone,
``V = p(A)`` its global average pool. The support vector is the mean over the K support images
(Eq. 1), ``V^S = (1/K) sum_k p(f(S_k))``. With ``d_n = v^Q_n - v^S_n`` and ``D = sum_n d_n^2``,
the channel-wise contribution importance score (CIS, Eq. 2) is

    omega_n = (D - d_n^2) / ((N - 1) D),        sum_n omega_n = 1,

and for a cosine model the same formula on L2-normalised vectors (Eq. 5). The map (Eq. 3, 4, 6)
is ``L = sum_n Norm(omega_n) A^n`` with min-max ``Norm`` over channels, upsampled bilinearly.

Every method here maps feature tensors to maps with matrix products: the backbone runs once per
image, and the maps of P query-support pairs are gathered from those features (no per-pair or
per-channel Python loop). Baselines (all on the same feature maps):

- ``gradcam``: Grad-CAM on the similarity score s (negative squared Euclidean distance or cosine).
  Because ``V`` is the spatial mean of ``A``, ``ds/dA^n_{ij} = (ds/dv_n) / (hw)`` for every
  position: the Grad-CAM channel weights are the gradient of s with respect to the embedding,
  in closed form (the gradient-weight identity of DESIGN.md section 7, now for a metric head).
  The seed's CG-RAM weights channels by this gradient too.
- ``decomposition`` (Zhu et al. 2021): point-to-point activation
  ``D(i,j;x,y) = <A_Q(i,j), A_S(x,y)>`` summed over the other image's positions. On non-negative
  (post-ReLU) features the max-normalisation and clamp at 0 change nothing, and the sum is
  ``hw * sum_n v^S_n A^n_Q``: a map weighted by the *other* image's embedding.
- ``ram`` (our reading; RAM's code is not public): the seed describes RAM as channel importance
  from the image's *own* representation, so ``sum_n v_n A^n`` with the image's own embedding.
- ``gradfam`` (our reading of Wu et al. 2022): Grad-CAM of the embedding itself (the gradient of
  ``sum_j v_j``), i.e. equal channel weights: the channel-mean activation.
- ``random`` (random h x w field, upsampled) and ``centre`` (``localisation.centre_prior``, a centred
  Gaussian with sigma a quarter of the side): floors.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats as _scipy_stats
from torch import nn

from .devices import get_device
from .localisation import centre_prior, normalise_maps, paired_box_iou, threshold_boxes

__all__ = ["METRICS", "ORDERS", "METHODS", "METHOD_LABELS", "SEED004_LOCALISATION", "pool", "support_vector", "cis",
           "minmax_weights", "channel_weights", "combine", "upsample", "pair_maps",
           "box_ious", "pair_box_ious", "randomisation_stages", "randomise", "rank_correlation", "ssim", "sanity_cascade"]

METRICS = ("euclidean", "cosine")
#: Orders of the cascading randomisation: Adebayo et al. 2018's, and seed 004's (Fig. 5).
ORDERS = ("top-down", "bottom-up")
METHODS = ("sfam", "gradcam", "decomposition", "ram", "gradfam", "random", "centre")
METHOD_LABELS = {
    "sfam": "SFAM (seed 004)",
    "gradcam": "Grad-CAM on the similarity (~ CG-RAM)",
    "decomposition": "Decomposition (Zhu et al.)",
    "ram": "RAM (our reading)",
    "gradfam": "Grad-FAM (our reading)",
    "random": "random map",
    "centre": "centre prior",
}

#: Seed 004's localisation tables (section 4.3, on CUB-200), quoted as printed: Table 1 (FRN, Euclidean)
#: and Table 2 (GPW, cosine), metric -> method -> (IoU %, accuracy %); "-" where the seed has no number.
SEED004_LOCALISATION = {
    "euclidean": {"gradcam": ("24.13", "16.43"), "ram": ("49.85", "61.24"), "gradfam": ("49.72", "62.31"),
                  "decomposition": ("-", "-"), "sfam": ("52.33", "69.74")},
    "cosine": {"gradcam": ("25.16", "20.23"), "ram": ("52.97", "60.13"), "gradfam": ("53.38", "60.34"),
               "decomposition": ("52.91", "58.77"), "sfam": ("55.65", "69.08")},
}
_EPS = 1e-12


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    return metric


def _check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def _check_maps(features: torch.Tensor, name: str) -> torch.Tensor:
    features = _check_finite(features, name)
    if features.ndim < 3:
        raise ValueError(f"{name} must be (..., channels, h, w), got shape {tuple(features.shape)}")
    return features


def pool(features: torch.Tensor) -> torch.Tensor:
    """The embedding ``V = p(A)``: global average pooling over the last two (spatial) axes."""
    return _check_maps(features, "features").mean(dim=(-2, -1))


def support_vector(support_features: torch.Tensor) -> torch.Tensor:
    """Seed 004 Eq. 1: the mean of the K support embeddings; input (..., K, N, h, w) -> (..., N)."""
    support_features = _check_maps(support_features, "support_features")
    if support_features.ndim < 4:
        raise ValueError("support_features must be (..., K, channels, h, w), got shape "
                         f"{tuple(support_features.shape)}")
    return pool(support_features).mean(dim=-2)


def cis(v_q, v_s, metric: str = "euclidean") -> torch.Tensor:
    """Channel-wise contribution importance score, seed 004 Eq. 2 (Euclidean) or Eq. 5 (cosine).

    omega_n = (D - d_n^2) / ((N - 1) D) with d = v_q - v_s and D = sum_n d_n^2, where for
    ``metric="cosine"`` both vectors are L2-normalised first. Batched over leading axes: inputs
    (..., N), output (..., N), each row summing to 1. D = 0 (identical embeddings, or two zero
    vectors) leaves Eq. 2 undefined; we return uniform weights 1/N there, never NaN. D counts as
    zero up to round-off: D <= 1e-12 (|v_q|^2 + |v_s|^2) (e.g. parallel vectors under cosine).
    """
    _check_metric(metric)
    v_q, v_s = _check_finite(v_q, "v_q"), _check_finite(v_s, "v_s")
    if v_q.shape != v_s.shape or v_q.ndim < 1:
        raise ValueError(f"v_q and v_s must have the same shape (..., N), got {tuple(v_q.shape)} "
                         f"and {tuple(v_s.shape)}")
    n = v_q.shape[-1]
    if n < 2:
        raise ValueError(f"CIS needs at least two channels, got N={n}")
    if metric == "cosine":
        v_q, v_s = F.normalize(v_q, dim=-1, eps=_EPS), F.normalize(v_s, dim=-1, eps=_EPS)
    d2 = (v_q - v_s).pow(2)
    total = d2.sum(-1, keepdim=True)
    omega = (total - d2) / ((n - 1) * total.clamp_min(torch.finfo(d2.dtype).tiny))
    scale = (v_q.pow(2) + v_s.pow(2)).sum(-1, keepdim=True)
    return torch.where(total > 1e-12 * scale, omega, torch.full_like(omega, 1.0 / n))


def minmax_weights(weights: torch.Tensor) -> torch.Tensor:
    """Seed 004 Eq. 4: (w - min w) / (max w - min w) over the last axis; equal weights give ones."""
    weights = _check_finite(weights, "weights")
    low = weights.min(-1, keepdim=True).values
    span = weights.max(-1, keepdim=True).values - low
    out = (weights - low) / span.clamp_min(torch.finfo(weights.dtype).tiny)
    return torch.where(span > 0, out, torch.ones_like(out))


def _similarity_gradients(v_q: torch.Tensor, v_s: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ds/dv_q and ds/dv_s for s = -||v_q - v_s||^2 (Euclidean) or s = cos(v_q, v_s)."""
    if metric == "euclidean":
        diff = v_q - v_s
        return -2 * diff, 2 * diff
    nq = v_q.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    ns = v_s.norm(dim=-1, keepdim=True).clamp_min(_EPS)
    uq, us = v_q / nq, v_s / ns
    cos = (uq * us).sum(-1, keepdim=True)
    return (us - cos * uq) / nq, (uq - cos * us) / ns


def channel_weights(method: str, v_q: torch.Tensor, v_s: torch.Tensor, v_s_each: torch.Tensor,
                    metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel weights of ``method`` for the query map (P, N) and each support map (P, K, N).

    v_q (P, N) query embeddings, v_s (P, N) support vectors (Eq. 1), v_s_each (P, K, N) the
    embeddings of the individual support images. For ``gradcam`` the support weights are
    ds/dv^S divided by K (each support image enters V^S with weight 1/K).
    """
    _check_metric(metric)
    k = v_s_each.shape[-2]
    if method == "sfam":
        w = minmax_weights(cis(v_q, v_s, metric))
        return w, w[:, None, :].expand_as(v_s_each)
    if method == "gradcam":
        g_q, g_s = _similarity_gradients(v_q, v_s, metric)
        return g_q, (g_s / k)[:, None, :].expand_as(v_s_each)
    if method == "decomposition":
        return v_s, v_q[:, None, :].expand_as(v_s_each)
    if method == "ram":
        return v_q, v_s_each
    if method == "gradfam":
        return torch.ones_like(v_q), torch.ones_like(v_s_each)
    raise ValueError(f"no channel weights for method {method!r}; weighted methods are "
                     f"{[m for m in METHODS if m not in ('random', 'centre')]}")


def combine(weights: torch.Tensor, features: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``sum_n weights_n A^n`` for every item: weights (..., N), features (..., N, h, w) -> (..., h, w)."""
    maps = torch.einsum("...n,...nhw->...hw", weights, features)
    return maps.clamp_min(0) if relu else maps


def upsample(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (seed 004, after Eq. 4) of (..., h, w) maps to ``size``."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    lead = maps.shape[:-2]
    out = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]).float(), size=size, mode="bilinear",
                        align_corners=False)
    return out.reshape(*lead, *size)


def _checked_pairs(features, query_idx, support_idx, metric: str, methods) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (M, N, h, w), query_idx (P,) and support_idx (P, K), checked, as ``pair_maps`` takes them."""
    _check_metric(metric)
    features = _check_maps(features, "features")
    query_idx = torch.as_tensor(query_idx, dtype=torch.long)
    support_idx = torch.as_tensor(support_idx, dtype=torch.long)
    if support_idx.ndim == 1:
        support_idx = support_idx[:, None]
    if query_idx.ndim != 1 or support_idx.ndim != 2 or len(query_idx) != len(support_idx):
        raise ValueError(f"query_idx must be (P,) and support_idx (P, K) with the same P, got "
                         f"{tuple(query_idx.shape)} and {tuple(support_idx.shape)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    return features, query_idx, support_idx


def _random_fields(support_shape: tuple[int, int], hw: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``random`` method's fields at feature resolution: all P query fields, then all P x K support
    fields, from one generator seeded with ``seed`` (on the CPU)."""
    generator = torch.Generator().manual_seed(seed)
    p, k = support_shape
    return torch.rand(p, *hw, generator=generator), torch.rand(p, k, *hw, generator=generator)


def _method_maps(features: torch.Tensor, embeddings: torch.Tensor, query_idx: torch.Tensor,
                 support_idx: torch.Tensor, metric: str, methods, image_size: int | None,
                 random_q: torch.Tensor | None, random_s: torch.Tensor | None, support_maps: bool) -> dict:
    """``pair_maps`` of the given pairs, with the ``random`` fields given (rows of ``_random_fields``);
    without ``support_maps`` the support maps are not built."""
    a_q, a_s = features[query_idx], features[support_idx]
    v_q, v_s_each = embeddings[query_idx], embeddings[support_idx]
    v_s = support_vector(a_s)                                         # Eq. 1
    (p, k), hw = support_idx.shape, features.shape[-2:]
    out = {}
    for method in methods:
        if method == "random":
            q_map, s_map = random_q, random_s
        elif method == "centre":
            q_map = centre_prior(hw).expand(p, *hw)
            s_map = centre_prior(hw).expand(p, k, *hw)
        else:
            w_q, w_s = channel_weights(method, v_q, v_s, v_s_each, metric)
            relu = method == "gradcam"
            q_map, s_map = combine(w_q, a_q, relu), combine(w_s, a_s, relu) if support_maps else None
        if image_size is not None and method == "centre":
            q_map = centre_prior(image_size).expand(p, image_size, image_size)
            s_map = centre_prior(image_size).expand(p, k, image_size, image_size)
        elif image_size is not None:
            q_map, s_map = upsample(q_map, image_size), upsample(s_map, image_size) if support_maps else s_map
        out[method] = (q_map, s_map) if support_maps else q_map
    return out


def pair_maps(features: torch.Tensor, query_idx, support_idx, metric: str,
              methods=METHODS, image_size: int | None = None, seed: int = 0,
              support_maps: bool = False) -> dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """Maps of P query-support pairs from features computed once per image.

    features: (M, N, h, w), one backbone pass over the M distinct images; query_idx (P,) and
    support_idx (P, K) index into it. Returns ``{method: query maps (P, H, W)}`` (upsampled to
    ``image_size`` when given), or ``{method: (query maps, support maps (P, K, H, W))}`` with
    ``support_maps=True``. Grad-CAM maps get Grad-CAM's ReLU; the other weighted maps are
    non-negative on post-ReLU features already and are left as they are. All P pairs at once:
    ``pair_box_ious`` streams them instead.
    """
    features, query_idx, support_idx = _checked_pairs(features, query_idx, support_idx, metric, methods)
    random_q, random_s = (_random_fields(support_idx.shape, features.shape[-2:], seed) if "random" in methods
                          else (None, None))
    return _method_maps(features, pool(features), query_idx, support_idx, metric, methods, image_size,
                        random_q, random_s, support_maps)


def pair_box_ious(features: torch.Tensor, query_idx, support_idx, boxes, metric: str, methods=METHODS,
                  image_size: int | None = None, threshold: float = 0.2, seed: int = 0, batch_size: int = 256,
                  device: str | torch.device = "auto") -> dict[str, np.ndarray]:
    """``box_ious(pair_maps(features, query_idx, support_idx, metric, methods, image_size, seed), boxes,
    threshold)``, streamed: {method: IoU (P,)} of each query map's box with ``boxes`` (P, 4), the
    queries' ground-truth boxes on the maps' grid.

    The features go to ``device`` once; the query maps of ``batch_size`` pairs at a time are built
    and upsampled there, boxed (``box_ious``) and dropped, so memory holds one batch of maps, never
    all P. The ``random`` fields are drawn for all pairs first, as ``pair_maps`` draws them, so the
    IoUs on the CPU are those of ``box_ious(pair_maps(...))``. The regions are labelled on the CPU
    (``scipy.ndimage``; torch has no connected components): each batch's distinct maps travel there.
    """
    features, query_idx, support_idx = _checked_pairs(features, query_idx, support_idx, metric, methods)
    boxes = torch.as_tensor(boxes).cpu()
    if tuple(boxes.shape) != (len(query_idx), 4):
        raise ValueError(f"boxes must be ({len(query_idx)}, 4), one box per pair, got shape {tuple(boxes.shape)}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    dev = get_device(device)
    random_q = _random_fields(support_idx.shape, features.shape[-2:], seed)[0] if "random" in methods else None
    features = features.to(dev)
    embeddings = pool(features)
    ious = {method: [] for method in methods}
    for start in range(0, len(query_idx), batch_size):
        batch = slice(start, start + batch_size)
        maps = _method_maps(features, embeddings, query_idx[batch].to(dev), support_idx[batch].to(dev), metric,
                            methods, image_size, None if random_q is None else random_q[batch].to(dev), None,
                            support_maps=False)
        for method, values in box_ious(maps, boxes[batch], threshold).items():
            ious[method].append(values)
    return {method: np.concatenate(values) if values else np.zeros(0) for method, values in ious.items()}


# ---------------------------------------------------------------------------------------------
# sanity check: cascading randomisation, from the top (Adebayo et al. 2018) or from the bottom (seed 004)


def randomisation_stages(model: nn.Module, order: str = "top-down") -> list[tuple[str, list[nn.Module]]]:
    """The cascade of a (tiny or torchvision) ResNet: ``[(name, modules), ...]``, per stage the
    modules newly randomised (a residual block, or the stem ``conv1`` + ``bn1``).

    ``order="top-down"`` (Adebayo et al. 2018): the last residual block first, then also the one
    before, and so on down to the stem. ``order="bottom-up"`` (seed 004, Fig. 5: "from the 1-st
    convolution layer to the 4-th, the 7-th, the 9-th, and the 12-th"): the same stages reversed,
    the stem first and the last block last.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {list(ORDERS)}, got {order!r}")
    net = getattr(model, "trunk", model)  # a metric_learning.MetricModel keeps its ResNet there
    stages = []
    for layer in ("layer4", "layer3", "layer2", "layer1"):
        blocks = getattr(net, layer, None)
        if blocks is None:
            raise ValueError(f"model has no {layer}; the cascade expects a ResNet")
        for i in reversed(range(len(blocks))):
            stages.append((f"{layer}.{i}", [blocks[i]]))
    stages.append(("conv1", [net.conv1, net.bn1]))
    return stages if order == "top-down" else stages[::-1]


def _seeded_stages(model: nn.Module, order: str, seed: int) -> list[tuple[str, list[nn.Module], int]]:
    """:func:`randomisation_stages` with each stage's seed: ``seed`` plus the stage's position counted
    from the top (1 for the last block), whatever the order, so a block gets the same random weights
    in both orders and the fully random network is the same."""
    from_top = {name: position for position, (name, _) in enumerate(randomisation_stages(model), start=1)}
    return [(name, modules, seed + from_top[name]) for name, modules in randomisation_stages(model, order)]


def _reset(modules: list[nn.Module], seed: int) -> None:
    """Re-initialise ``modules`` in place (seeded): every sub-module's ``reset_parameters`` (convolutions
    to their default random initialisation, BatchNorm to scale 1 and shift 0) and running statistics."""
    devices = sorted({p.device.index or 0 for m in modules for p in m.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):  # the global CPU and CUDA generators are left as they were
        torch.manual_seed(seed)
        for module in modules:
            for sub in module.modules():
                if hasattr(sub, "reset_parameters"):
                    sub.reset_parameters()
                if hasattr(sub, "reset_running_stats"):
                    sub.reset_running_stats()


def randomise(model: nn.Module, n_stages: int, seed: int = 0, order: str = "top-down") -> nn.Module:
    """A copy of ``model`` with the first ``n_stages`` stages of :func:`randomisation_stages` (in
    ``order``) re-initialised.

    A stage's seed is ``seed`` plus its position counted from the top (the last block: 1), in
    either order, so the cascade is the same whether it is built at once or stage by stage (as
    :func:`sanity_cascade` does), and both orders end in the same fully random network.
    """
    total = len(randomisation_stages(model, order))
    if not 0 <= n_stages <= total:
        raise ValueError(f"n_stages must be in [0, {total}], got {n_stages}")
    clone = copy.deepcopy(model)
    for _, modules, stage_seed in _seeded_stages(clone, order, seed)[:n_stages]:
        _reset(modules, stage_seed)
    return clone.eval()


def rank_correlation(maps_a, maps_b) -> np.ndarray:
    """Spearman rank correlation of map i of ``maps_a`` with map i of ``maps_b`` (pixels flattened).

    The Pearson correlation of the ranks (``scipy.stats.rankdata``, ties averaged), vectorised
    over maps. Undefined cases: two constant maps (e.g. two all-zero Grad-CAM maps) rank alike, 1;
    a constant map against a non-constant one shares no ranking, 0.
    """
    a = np.asarray(maps_a, dtype=np.float64).reshape(len(maps_a), -1)
    b = np.asarray(maps_b, dtype=np.float64).reshape(len(maps_b), -1)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    ra = _scipy_stats.rankdata(a, axis=1)
    rb = _scipy_stats.rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    denom = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    both_constant = ((ra ** 2).sum(1) == 0) & ((rb ** 2).sum(1) == 0)
    rho = np.where(denom > 0, (ra * rb).sum(1) / np.where(denom > 0, denom, 1.0), 0.0)
    return np.where(both_constant, 1.0, rho)


def ssim(maps_a, maps_b) -> np.ndarray:
    """SSIM (``skimage.metrics.structural_similarity``) of each pair of min-max normalised maps."""
    from skimage.metrics import structural_similarity  # slow to import; only this function needs it

    a, b = normalise_maps(maps_a).numpy(), normalise_maps(maps_b).numpy()
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    return np.array([structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b)])


def box_ious(maps: dict[str, torch.Tensor], boxes: torch.Tensor, threshold: float = 0.2) -> dict[str, np.ndarray]:
    """Seed 004 section 4.3 for every method: box of the largest region of ``normalise(map) >=
    threshold``, IoU with the ground-truth box (x0, y0, x1, y1) of the same image: {method: (P,)}.

    Identical maps (a map that ignores the support, repeated queries, the centre prior) are boxed once;
    maps on a GPU are deduplicated there and the distinct ones labelled on the CPU.
    """
    out = {}
    for method, m in maps.items():
        unique, inverse = torch.unique(m.reshape(len(m), -1), dim=0, return_inverse=True)  # on the maps' device
        found = threshold_boxes(unique.reshape(-1, *m.shape[1:]).cpu(), threshold)[inverse.cpu()]
        out[method] = paired_box_iou(found, torch.as_tensor(boxes).cpu()).numpy()
    return out


def sanity_cascade(model: nn.Module, images: torch.Tensor, query_idx, support_idx, metric: str,
                   methods=METHODS, image_size: int | None = None, seed: int = 0,
                   n_stages: int | None = None, order: str = "top-down") -> list[dict]:
    """Cascading randomisation of ``model``, scored per pair: from the top (``order="top-down"``,
    Adebayo et al. 2018) or from the stem up (``"bottom-up"``, seed 004's Fig. 5).

    ``model.features(images)`` must return the feature maps (e.g. a ``MetricModel``). Stage 0 is
    the trained model; stage s has the first s stages of :func:`randomisation_stages` in ``order``
    re-initialised (as :func:`randomise` does, with the same seeds; built incrementally here).
    ``n_stages`` evaluates only that many stages, evenly spaced, always including the first and
    the last (every block random). Each evaluated stage's maps are compared with stage 0's by
    Spearman rank correlation and SSIM. Returns records ``{stage, randomised, method, pair,
    spearman, ssim}``, ``randomised`` naming the stage's newly randomised block.
    """
    query_idx = torch.as_tensor(query_idx, dtype=torch.long)
    support_idx = torch.as_tensor(support_idx, dtype=torch.long).reshape(len(query_idx), -1)
    used, inverse = torch.unique(torch.cat([query_idx, support_idx.flatten()]), return_inverse=True)
    q_local, s_local = inverse[:len(query_idx)], inverse[len(query_idx):].reshape(support_idx.shape)
    subset = images[used]
    total = len(randomisation_stages(model, order))
    chosen = set(range(total + 1)) if n_stages is None else \
        {0, *np.unique(np.linspace(1, total, max(1, n_stages)).round().astype(int)).tolist()}
    net = copy.deepcopy(model).eval()
    stages = [("none", [], None)] + _seeded_stages(net, order, seed)
    records = []
    for stage, (name, modules, stage_seed) in enumerate(stages):
        if stage:
            _reset(modules, stage_seed)
        if stage not in chosen:
            continue
        maps = pair_maps(net.features(subset), q_local, s_local, metric, methods, image_size, seed)
        if stage == 0:
            reference = maps
        for method in methods:
            rho = rank_correlation(reference[method], maps[method])
            sim = ssim(reference[method], maps[method])
            records += [{"stage": stage, "randomised": name, "method": method, "pair": p,
                         "spearman": float(r), "ssim": float(v)} for p, (r, v) in enumerate(zip(rho, sim))]
    return records
