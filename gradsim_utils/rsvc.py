"""RSVC: representational similarity via interpretable visual concepts (seed 003, Kondapaneni et al.).

Steps (reference settings from the public code nkondapa/RSVC, see METHODS.md):

1. Patches: each image of a class is cut into square patches (64 px at stride 51 on 224 px, i.e. the
   fractions 64/224 and 51/224 of the side), each resized to the model's input.
2. Activations a in R^C at a layer, averaged over space (non-negative after a ReLU).
3. Concepts of model 1: NMF A ~ U W (sklearn, ``init="nndsvd"``, 10 components), W (k x C) the
   concepts. Coefficients of any activation on the fixed W by non-negative least squares,
   u = argmin_{u >= 0} ||a - u W||^2 (scipy ``nnls``), never NMF's own U of another fit.
4. Similarity of concept j of model 1 to model 2: the z-scored coefficients u_j of model 1 predicted
   from the z-scored activations of model 2 by a Lasso (alpha 0.1), cross-validated with folds split
   by image (GroupKFold); Pearson r between held-out true and predicted u_j, pooled over the folds
   (the reference code averages one r per fold instead; METHODS.md leaves it open). The book
   z-scores with each fold's training rows (``standardise="per_fold"``); the reference code z-scores
   all rows before splitting (``"all_rows"``, its compare_models.py), so the held-out rows' mean and
   spread enter the standardisation. Beside it the
   self-prediction ceiling (model 1's own activations) and the max-correlation baseline
   max_l r(u_j^(1), u_l^(2)) between the two models' own concepts.
5. Importance of concept j: integrated gradients (captum, 30 steps, baseline 0) through the head in
   concept space, u -> fc(u W), averaged over the class's patches, of the class logit (the book's
   choice, ``score="logit"``) or of the class log-softmax (``"log_softmax"``: the reference code
   integrates the gradient of the cross-entropy and flips its sign, concept_integrated_gradients.py
   and its visualisation script).

``compare_pair`` gathers everything the book measures for one class of a model pair (both
directions, both importance scores, both standardisations), for any regime.

Also: the pink-square known-difference pair (two tiny ResNets trained on benchmarks that differ
only in where the magenta square is), grouped bootstrap intervals, and the layer-wise heatmap.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import nnls
from sklearn.decomposition import NMF
from sklearn.linear_model import Lasso
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from . import data, extract, nets, provenance, training
from .cache import cache_key, content_digest
from .devices import get_device
from .profiles import TINY_MODELS
from .stats import image_bootstrap_counts, percentile_bounds

__all__ = [
    "PATCH_FRACTION", "STRIDE_FRACTION", "Patches", "patch_positions", "extract_patches",
    "patch_marker_coverage", "layer_activations", "Concepts", "fit_concepts", "nnls_coefficients",
    "STANDARDISATIONS", "IMPORTANCE_SCORES", "pearson_columns", "cross_validated_prediction",
    "held_out_similarity", "group_bootstrap_pearson", "max_correlation",
    "concept_attributions", "ClassComparison", "compare_class", "compare_both_directions", "PAIR_MEASURES",
    "compare_pair", "concept_purity",
    "layerwise_similarity", "marker_benchmarks", "marker_models",
]

PATCH_FRACTION = 64 / 224   # reference: 64 px patches on 224 px images
STRIDE_FRACTION = 51 / 224  # reference: stride 51 px
#: z-scoring of the regression: with each fold's training rows (the book), or all rows before the
#: split (the reference code's compare_models.py).
STANDARDISATIONS = ("per_fold", "all_rows")
#: what the importance integrates: the class logit (the book), or the class log-softmax (the reference).
IMPORTANCE_SCORES = ("logit", "log_softmax")
CODE_VERSION = "rsvc-2"  # 2: contiguous training on CPU (devices.memory_format), the machine recorded


# ---------------------------------------------------------------------------------------------
# patches and activations


@dataclass
class Patches:
    """Square crops of images: pixels (P, 3, p, p) in the images' dtype, the index of the source
    image of each patch (P,), and its box (x0, y0, x1, y1) in source pixels (x1, y1 exclusive)."""

    images: torch.Tensor
    image_index: torch.Tensor
    boxes: torch.Tensor

    def __len__(self) -> int:
        return len(self.image_index)


def patch_positions(size: int, patch_size: int, stride: int) -> list[int]:
    """Top-left offsets along one side: 0, stride, 2 stride, ... while the patch fits, as the
    reference's unfold does (64 px at stride 51 on 224 px gives 0, 51, 102, 153: a 4 x 4 grid
    that leaves the last few pixels uncovered)."""
    if not 1 <= patch_size <= size:
        raise ValueError(f"patch_size must lie in [1, {size}] (the image side), got {patch_size}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return list(range(0, size - patch_size + 1, stride))


def extract_patches(images: torch.Tensor, patch_size: int | None = None,
                    stride: int | None = None) -> Patches:
    """Cut every image (N, 3, S, S) into a grid of patches; defaults follow the reference's
    fractions of the side (64/224 and 51/224). Resizing to the model input happens later, in
    ``nets.prepare_inputs``."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0 \
            or images.shape[2] != images.shape[3]:
        raise ValueError("images must be a non-empty N x 3 x S x S tensor, got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    size = images.shape[-1]
    patch_size = patch_size or max(2, round(PATCH_FRACTION * size))
    stride = stride or max(1, round(STRIDE_FRACTION * size))
    offsets = patch_positions(size, patch_size, stride)
    grid = [(y, x) for y in offsets for x in offsets]
    crops = torch.stack([images[:, :, y:y + patch_size, x:x + patch_size] for y, x in grid], dim=1)
    n, g = images.shape[0], len(grid)
    boxes = torch.tensor([(x, y, x + patch_size, y + patch_size) for y, x in grid], dtype=torch.long)
    return Patches(images=crops.reshape(n * g, *crops.shape[2:]).contiguous(),
                   image_index=torch.arange(n).repeat_interleave(g),
                   boxes=boxes.repeat(n, 1))


def patch_marker_coverage(patches: Patches, marker_masks: torch.Tensor) -> torch.Tensor:
    """Fraction of its source image's marker pixels that each patch contains (0 without marker)."""
    masks = marker_masks[patches.image_index]
    total = masks.flatten(1).sum(1).float()
    inside = torch.stack([m[y0:y1, x0:x1].sum() for m, (x0, y0, x1, y1) in zip(masks, patches.boxes.tolist())])
    return torch.where(total > 0, inside.float() / total.clamp(min=1), torch.zeros_like(total))


@torch.no_grad()
def layer_activations(model: nn.Module, images: torch.Tensor, layers, batch_size: int = 128,
                      device: str | torch.device = "auto", progress: bool = False) -> dict[str, torch.Tensor]:
    """Spatial mean of each layer's output, {layer: (N, C) float32 CPU}, from one pass per batch
    (``extract.layer_outputs``) of uint8/float images for a model from ``models.load_model``."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError("layers must name at least one layer")
    return extract.layer_outputs(model, images, layers, batch_size, device, spatial_mean=True, progress=progress)[1]


# ---------------------------------------------------------------------------------------------
# concepts


@dataclass
class Concepts:
    """NMF of activations A (P x C) ~ U W: concepts W (k x C), NMF's coefficients U (P x k)."""

    W: np.ndarray
    U: np.ndarray
    reconstruction_error: float


def _nonnegative(acts, name: str) -> np.ndarray:
    a = np.asarray(acts, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty P x C matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    if (a < 0).any():
        raise ValueError(f"{name} has negative values (min {a.min():.3g}); NMF needs a layer after a "
                         "ReLU (e.g. a ResNet stage output such as 'layer4')")
    return a


def fit_concepts(acts, n_concepts: int = 10, seed: int = 0, max_iter: int = 200) -> Concepts:
    """NMF A ~ U W with sklearn (``init="nndsvd"``, coordinate descent with scikit-learn's default
    200 iterations), as the reference does. Both are deterministic, so ``seed`` (passed on as
    ``random_state``) does not change the result."""
    a = _nonnegative(acts, "acts")
    if not isinstance(n_concepts, int) or not 1 <= n_concepts <= min(a.shape):
        raise ValueError(f"n_concepts must be an int in [1, {min(a.shape)}] (min of patches and "
                         f"channels), got {n_concepts!r}")
    nmf = NMF(n_components=n_concepts, init="nndsvd", random_state=seed, max_iter=max_iter)
    with threadpool_limits(limits=1):  # one BLAS thread: about 3x faster here than two (2 shared cores)
        U = nmf.fit_transform(a)
    return Concepts(W=nmf.components_, U=U, reconstruction_error=float(nmf.reconstruction_err_))


def nnls_coefficients(acts, W) -> np.ndarray:
    """u_i = argmin_{u >= 0} ||a_i - u W||_2 for every row a_i of ``acts`` (scipy ``nnls``)."""
    a = _nonnegative(acts, "acts")
    W = np.asarray(W, dtype=np.float64)
    if W.ndim != 2 or W.shape[1] != a.shape[1]:
        raise ValueError(f"W must be k x {a.shape[1]} (concepts x channels), got shape {W.shape}")
    basis = W.T
    return np.stack([nnls(basis, row)[0] for row in a])


# ---------------------------------------------------------------------------------------------
# similarity


def pearson_columns(a, b) -> np.ndarray:
    """Pearson r of matching columns of a and b (P x k). A constant column gives r = 0 (no linear
    relation can be read from it), never NaN."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must be P x k matrices of the same shape, got {a.shape} and {b.shape}")
    a, b = a - a.mean(0), b - b.mean(0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(0) / denom
    return np.where(denom > 1e-12 * max(1.0, denom.max(initial=0.0)), r, 0.0)


def _check_groups(groups, n: int, n_folds: int) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must give one image id per row ({n}), got shape {groups.shape}")
    n_groups = len(np.unique(groups))
    if n_folds < 2 or n_folds > n_groups:
        raise ValueError(f"n_folds must lie in [2, {n_groups}] (the number of images), got {n_folds}")
    return groups


def cross_validated_prediction(X, Y, groups, n_folds: int = 5, alpha: float = 0.1, max_iter: int = 1000,
                               standardise: str = "per_fold") -> tuple[np.ndarray, np.ndarray]:
    """Held-out Lasso predictions of Y (P x k) from X (P x C), folds split by image (GroupKFold).

    X and Y are z-scored, a Lasso(alpha) is fit per column of Y on the training rows, and the
    held-out rows are predicted. ``standardise="per_fold"`` (the book) z-scores with the mean and
    standard deviation of each fold's training rows; ``"all_rows"`` (the reference code) z-scores
    once with all rows, held-out ones included, before splitting. Returns the z-scored true Y and
    the predictions (both P x k, in held-out order restored to the input's).
    """
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must be matrices with the same rows, got {X.shape} and {Y.shape}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if standardise not in STANDARDISATIONS:
        raise ValueError(f"standardise must be one of {list(STANDARDISATIONS)}, got {standardise!r}")
    groups = _check_groups(groups, X.shape[0], n_folds)
    true, pred = np.zeros_like(Y), np.zeros_like(Y)
    everything = np.arange(X.shape[0])
    for train, test in GroupKFold(n_splits=n_folds).split(X, groups=groups):
        fit_rows = train if standardise == "per_fold" else everything
        xs, ys = StandardScaler().fit(X[fit_rows]), StandardScaler().fit(Y[fit_rows])
        lasso = Lasso(alpha=alpha, max_iter=max_iter, precompute=True)
        with threadpool_limits(limits=1):
            lasso.fit(xs.transform(X[train]), ys.transform(Y[train]))
        true[test] = ys.transform(Y[test])
        pred[test] = lasso.predict(xs.transform(X[test])).reshape(len(test), -1)
    return true, pred


def _fold_count(groups, n_folds: int) -> int:
    """``n_folds``, capped at the number of images (each fold holds out at least one image)."""
    return min(n_folds, len(np.unique(np.asarray(groups))))


def held_out_similarity(X, Y, groups, n_folds: int = 5, alpha: float = 0.1,
                        standardise: str = "per_fold") -> np.ndarray:
    """RSVC similarity without interval: per column of Y, the Pearson r of the held-out predictions
    of :func:`cross_validated_prediction` pooled over folds (folds capped at the number of images,
    as in :func:`compare_class`)."""
    return pearson_columns(*cross_validated_prediction(X, Y, groups, _fold_count(groups, n_folds), alpha,
                                                       standardise=standardise))


def group_bootstrap_pearson(y, yhat, groups, n_resamples: int = 1000, level: float = 0.95,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column Pearson r of y and yhat (P x k) with a percentile bootstrap interval that
    resamples whole images (``groups``), so the patches of one image stay together. Vectorised:
    each resample is a vector of per-patch weights (how often its image was drawn)."""
    y, yhat = np.asarray(y, np.float64), np.asarray(yhat, np.float64)
    value = pearson_columns(y, yhat)
    _, g = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = g.max() + 1
    if n_groups < 2:
        raise ValueError("a bootstrap over images needs at least two images")
    counts = image_bootstrap_counts(np.zeros(n_groups), n_resamples, seed)  # whole images, one stratum
    w = counts[:, g].astype(np.float64)                      # (B, P)
    total = w.sum(1, keepdims=True)
    my, mh = w @ y / total, w @ yhat / total
    cov = w @ (y * yhat) / total - my * mh
    vy = np.clip(w @ (y * y) / total - my ** 2, 0, None)
    vh = np.clip(w @ (yhat * yhat) / total - mh ** 2, 0, None)
    denom = np.sqrt(vy * vh)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 1e-12, cov / denom, 0.0)
    low, high = percentile_bounds(r, level, axis=0)
    return value, low, high


def max_correlation(U1, U2) -> np.ndarray:
    """Baseline: for each concept j of model 1, max_l Pearson(U1[:, j], U2[:, l]) (constant
    columns count as r = 0)."""
    U1, U2 = np.asarray(U1, np.float64), np.asarray(U2, np.float64)
    if U1.ndim != 2 or U2.ndim != 2 or U1.shape[0] != U2.shape[0]:
        raise ValueError(f"U1 and U2 must have the same rows, got {U1.shape} and {U2.shape}")
    a = U1 - U1.mean(0)
    b = U2 - U2.mean(0)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a.T @ b) / np.outer(na, nb)
    r = np.where(np.outer(na, nb) > 1e-12, r, 0.0)
    return r.max(axis=1)


# ---------------------------------------------------------------------------------------------
# importance


class _ConceptHead(nn.Module):
    """u (N x k) -> head(u W), the classifier head read in concept space; its log-softmax with
    ``log_softmax=True``."""

    def __init__(self, W: torch.Tensor, head: nn.Module, log_softmax: bool = False):
        super().__init__()
        self.register_buffer("W", W)
        self.head = head
        self.log_softmax = log_softmax

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        out = self.head(u @ self.W)
        return out.log_softmax(-1) if self.log_softmax else out


def concept_attributions(U, W, head: nn.Module, target: int, n_steps: int = 30,
                         score: str = "logit") -> np.ndarray:
    """Integrated gradients (captum, baseline u = 0) of class ``target``'s score g_t of
    u -> head(u W), per patch and concept (P x k). ``score="logit"`` (the book): g = head(u W);
    ``"log_softmax"`` (the reference code: minus the cross-entropy): g = log_softmax(head(u W)).
    Completeness: each row sums to g_t(u) - g_t(0) (exactly for a linear head and the logit, up to
    the quadrature error otherwise)."""
    from captum.attr import IntegratedGradients

    if score not in IMPORTANCE_SCORES:
        raise ValueError(f"score must be one of {list(IMPORTANCE_SCORES)}, got {score!r}")
    U = torch.as_tensor(np.asarray(U), dtype=torch.float32)
    W = torch.as_tensor(np.asarray(W), dtype=torch.float32)
    if U.ndim != 2 or W.ndim != 2 or U.shape[1] != W.shape[0]:
        raise ValueError(f"U (P x k) and W (k x C) must agree in k, got {tuple(U.shape)} and {tuple(W.shape)}")
    device = next(head.parameters()).device
    f = _ConceptHead(W.to(device), head, log_softmax=score == "log_softmax").eval()
    with torch.enable_grad():
        attr = IntegratedGradients(f).attribute(U.to(device), baselines=0.0, target=int(target),
                                                n_steps=n_steps)
    return attr.detach().cpu().double().numpy()


# ---------------------------------------------------------------------------------------------
# one class, two models


@dataclass
class ClassComparison:
    """RSVC of one class in one direction (model 1's concepts predicted from model 2).

    similarity / ci_low / ci_high: held-out Pearson r per concept of model 1 with its grouped
    bootstrap interval; ceiling: model 1 predicting its own concepts; max_corr: the baseline;
    importance: mean IG attribution of each concept to the class score (the logit or the
    log-softmax, ``importance_score`` of :func:`compare_class`; None without a head);
    coefficients: NNLS coefficients of model 1's patches (P x k); concepts: the NMF.
    """

    similarity: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    ceiling: np.ndarray
    max_corr: np.ndarray
    importance: np.ndarray | None
    coefficients: np.ndarray
    concepts: Concepts
    predicted: np.ndarray
    standardized: np.ndarray


def compare_class(acts1, acts2, groups, n_concepts: int = 10, n_folds: int = 5, alpha: float = 0.1,
                  head: nn.Module | None = None, target: int | None = None, ig_steps: int = 30,
                  n_resamples: int = 1000, seed: int = 0, coefficients2=None,
                  concepts: Concepts | None = None, standardise: str = "per_fold",
                  importance_score: str = "logit") -> ClassComparison:
    """RSVC for one class: concepts of model 1 from ``acts1`` (P x C1), predicted from ``acts2``
    (P x C2, the same patches); ``groups`` the image of each patch. ``head``/``target`` add the
    IG importance (of ``importance_score``, see :func:`concept_attributions`). ``standardise``: the
    regression's z-scoring (:func:`cross_validated_prediction`), for the similarity and the ceiling.
    ``coefficients2``: model 2's own NNLS coefficients for the max-correlation baseline (computed
    here from an NMF of acts2 if None); ``concepts``: model 1's NMF, if already fitted on ``acts1``."""
    a1, a2 = _nonnegative(acts1, "acts1"), np.asarray(acts2, np.float64)
    if a2.shape[0] != a1.shape[0]:
        raise ValueError(f"acts1 and acts2 must describe the same patches, got {a1.shape[0]} and {a2.shape[0]} rows")
    n_folds = _fold_count(groups, n_folds)
    concepts = concepts if concepts is not None else fit_concepts(a1, n_concepts, seed)
    U = nnls_coefficients(a1, concepts.W)
    true, pred = cross_validated_prediction(a2, U, groups, n_folds, alpha, standardise=standardise)
    value, low, high = group_bootstrap_pearson(true, pred, groups, n_resamples, seed=seed)
    t_self, p_self = cross_validated_prediction(a1, U, groups, n_folds, alpha, standardise=standardise)
    if coefficients2 is None:
        coefficients2 = nnls_coefficients(a2, fit_concepts(a2, n_concepts, seed).W)
    importance = None
    if head is not None:
        if target is None:
            raise ValueError("target (the class index) is required with head")
        importance = concept_attributions(U, concepts.W, head, target, ig_steps, importance_score).mean(0)
    return ClassComparison(similarity=value, ci_low=low, ci_high=high,
                           ceiling=pearson_columns(t_self, p_self),
                           max_corr=max_correlation(U, coefficients2), importance=importance,
                           coefficients=U, concepts=concepts, predicted=pred, standardized=true)


def compare_both_directions(acts1, acts2, groups, n_concepts: int = 10, head1: nn.Module | None = None,
                            head2: nn.Module | None = None, target: int | None = None,
                            target2: int | None = None, **kwargs) -> tuple[ClassComparison, ClassComparison]:
    """:func:`compare_class` for 1 -> 2 (model 1's concepts predicted from model 2) and 2 -> 1, with
    one NMF per model (each model's concepts also give the other direction's max-corr baseline).
    ``target``: the output of ``head1`` whose importance is integrated; ``target2``: that of
    ``head2`` (default ``target``, for two models with the same classes)."""
    seed = kwargs.get("seed", 0)
    c1 = fit_concepts(_nonnegative(acts1, "acts1"), n_concepts, seed)
    c2 = fit_concepts(_nonnegative(acts2, "acts2"), n_concepts, seed)
    u2 = nnls_coefficients(acts2, c2.W)
    one = compare_class(acts1, acts2, groups, n_concepts, head=head1, target=target, coefficients2=u2,
                        concepts=c1, **kwargs)
    two = compare_class(acts2, acts1, groups, n_concepts, head=head2,
                        target=target if target2 is None else target2,
                        coefficients2=one.coefficients, concepts=c2, **kwargs)
    return one, two


#: the per-concept measurements of :func:`compare_pair`, in its dicts' order
PAIR_MEASURES = ("similarity", "ci_low", "ci_high", "ceiling", "max_corr", "importance",
                 "importance (log-softmax)", "similarity (all rows z-scored)")


def compare_pair(acts1, acts2, groups, n_concepts: int = 10, heads=(None, None), targets=(None, None),
                 n_folds: int = 5, alpha: float = 0.1, ig_steps: int = 30, n_resamples: int = 1000,
                 seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Everything the chapter measures for one class of a model pair, both directions (1 -> 2 first):
    :func:`compare_both_directions` (similarity with its interval, ceiling, max-corr baseline, IG of
    the class logit), the IG of the class log-softmax (the reference's score) and the similarity with
    all rows z-scored before the folds (the reference's regression). ``heads[i]`` and ``targets[i]``:
    model i's classifier on the pooled layer and the output scored for this class (both None: the
    importances are NaN). Returns one dict per direction of per-concept arrays, keys
    :data:`PAIR_MEASURES`."""
    one, two = compare_both_directions(acts1, acts2, groups, n_concepts, head1=heads[0], head2=heads[1],
                                       target=targets[0], target2=targets[1], n_folds=n_folds, alpha=alpha,
                                       ig_steps=ig_steps, n_resamples=n_resamples, seed=seed)
    out = []
    for res, head, target, predictor in ((one, heads[0], targets[0], acts2), (two, heads[1], targets[1], acts1)):
        missing = np.full(len(res.similarity), np.nan)
        log_softmax = (concept_attributions(res.coefficients, res.concepts.W, head, target, ig_steps,
                                            score="log_softmax").mean(0) if head is not None else missing)
        out.append(dict(zip(PAIR_MEASURES, (
            res.similarity, res.ci_low, res.ci_high, res.ceiling, res.max_corr,
            res.importance if res.importance is not None else missing, log_softmax,
            held_out_similarity(predictor, res.coefficients, groups, n_folds, alpha, "all_rows")))))
    return out


def concept_purity(coefficients, coverage, top: int = 20, threshold: float = 0.5) -> np.ndarray:
    """Per concept, the share of its ``top`` patches (largest coefficients) that contain the
    marker: at least ``threshold`` of the source image's marker pixels lie inside the patch."""
    U = np.asarray(coefficients)
    cov = np.asarray(coverage)
    top = min(top, U.shape[0])
    order = np.argsort(-U, axis=0, kind="stable")[:top]
    return (cov[order] >= threshold).mean(axis=0)


def layerwise_similarity(acts1: dict, acts2: dict, n_concepts: int = 10, seed: int = 0) -> np.ndarray:
    """Layer x layer matrix from {layer: [per-class activations (P_c x C)]} of two models on the
    same patches: per class, NMF concepts of each layer of each model (NNLS coefficients); for a
    layer pair, the mean over model 1's concepts of the max Pearson over model 2's, and the reverse,
    averaged; then averaged over classes (the reference's layer-wise measure)."""
    def coefficients(acts: dict) -> dict:
        return {layer: [nnls_coefficients(a, fit_concepts(a, n_concepts, seed).W) for a in per_class]
                for layer, per_class in acts.items()}

    c1, c2 = coefficients(acts1), coefficients(acts2)
    if {len(v) for v in c1.values()} != {len(v) for v in c2.values()}:
        raise ValueError("acts1 and acts2 must hold the same classes for every layer")
    out = np.zeros((len(c1), len(c2)))
    for i, l1 in enumerate(c1):
        for j, l2 in enumerate(c2):
            out[i, j] = np.mean([(max_correlation(u1, u2).mean() + max_correlation(u2, u1).mean()) / 2
                                 for u1, u2 in zip(c1[l1], c2[l2])])
    return out


# ---------------------------------------------------------------------------------------------
# the known-difference pair (pink square)


def _marker_train_set(mode: str, marker_class: int, marker_rate: float, n_per_class: int,
                      image_size: int, seed: int) -> data.Benchmark:
    """Training set of model A (``mode="class"``) or B (``"random"``); see :func:`marker_benchmarks`."""
    kw = dict(marker_class=marker_class) if mode == "class" else {}
    return data.make_benchmark(n_per_class, "train", seed=seed, image_size=image_size,
                               marker_rate=marker_rate, marker_mode=mode, **kw)


def marker_benchmarks(marker_class: int, marker_rate: float, n_train_per_class: int,
                      n_analysis_per_class: int, image_size: int = 32, seed: int = 0,
                      include_train: bool = True):
    """Training sets of models A and B and the shared analysis sets.

    A: the magenta square on ``marker_rate`` of ``marker_class``'s training images only. B: the
    square on ``marker_rate`` of every class's images (no class information). The benchmark draws
    which images get a square and where from streams keyed by the image, so B's images of
    ``marker_class`` are pixel-identical to A's (the square pasted once per image); B only adds
    squares to the other classes. Analysis: the same pixels for both models, with squares on
    ``marker_rate`` of ``marker_class``'s images, plus a copy with squares on every image (to
    measure each model's reliance on the shortcut). Returns (train_a, train_b, analysis,
    all_marked); the first two are None when ``include_train`` is False.
    """
    kw = dict(seed=seed, image_size=image_size)
    train = [_marker_train_set(mode, marker_class, marker_rate, n_train_per_class, image_size, seed)
             for mode in ("class", "random")] if include_train else [None, None]
    analysis = data.make_benchmark(n_analysis_per_class, "analysis", marker_class=marker_class,
                                   marker_rate=marker_rate, marker_mode="class", **kw)
    all_marked = data.make_benchmark(n_analysis_per_class, "analysis", marker_rate=1.0,
                                     marker_mode="random", **kw)
    return train[0], train[1], analysis, all_marked


def _check_schedule(name: str, epochs, batch_size, base_width) -> None:
    if name not in TINY_MODELS:
        raise ValueError(f"name must be a tiny ResNet {list(TINY_MODELS)}, got {name!r}")
    for arg, value in (("epochs", epochs), ("batch_size", batch_size), ("base_width", base_width)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be an integer >= 1, got {value!r}")


def _cached_training(key: str, name: str, make_train, evaluation: data.Benchmark, epochs: int,
                     batch_size: int, base_width: int, seed: int, dev: torch.device,
                     progress: bool, label: str) -> nn.Module:
    """Load the model cached under ``key`` or train it on ``make_train()`` with training.py's recipe
    (``training.fit``, ``training.cached_model``); return it in eval mode with ``gradsim_info``
    (accuracy on ``evaluation``). The entry keeps its flat layout: weights, accuracy, seconds, machine."""
    n_classes = len(evaluation.class_names)

    def fit() -> dict:
        train = make_train()
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]), training.cpu_threads():
            torch.manual_seed(seed)
            net = nets.build_tiny_resnet(name, n_classes, base_width)
            seconds, _, _ = training.fit(net, train.images, train.labels, epochs=epochs, batch_size=batch_size,
                                          generator=generator, device=dev, desc=name if progress else None)
            preds = training.evaluate(net, evaluation.images, dev)
            machine = provenance.training_machine(dev)
        accuracy = float((preds == evaluation.labels).float().mean())
        return {"state_dict": training.cpu_state(net), "accuracy": accuracy, "train_seconds": seconds,
                "machine": machine}

    net, entry = training.cached_model("models", key, lambda: nets.build_tiny_resnet(name, n_classes, base_width),
                                       fit, label)
    net.gradsim_info = training.benchmark_info(name, evaluation.images.shape[-1], evaluation.class_names,
                                               "trained", dict(entry, analysis_accuracy=entry["accuracy"]))
    return net.to(dev)


def _schedule_key(name, epochs, batch_size, base_width, seed) -> dict:
    return dict(code_version=CODE_VERSION, training_version=training.CODE_VERSION, recipe=training.RECIPE,
                name=name, epochs=epochs, batch_size=batch_size, base_width=base_width, seed=seed,
                mean=data.MEAN, std=data.STD)


def marker_models(name: str, marker_class: int, marker_rate: float, n_train_per_class: int,
                  analysis: data.Benchmark, epochs: int = 3, batch_size: int = 64, base_width: int = 16,
                  seed: int = 0, device: str | torch.device = "auto",
                  progress: bool = True, train_seed: int | None = None) -> tuple[nn.Module, nn.Module]:
    """Models A and B of the known-difference test (training sets of :func:`marker_benchmarks`),
    cached under the settings and a fingerprint of the renderer (a few images with and without the
    square), so a warm run renders no training image. ``seed`` draws the images, ``train_seed``
    (None: ``seed``) the shared initialisation and batch order of A and B."""
    _check_schedule(name, epochs, batch_size, base_width)
    size = analysis.images.shape[-1]
    probe = data.make_benchmark(1, "train", seed=seed, image_size=size, marker_class=marker_class,
                                marker_rate=1.0)
    renderer = content_digest(probe.images, probe.marker_masks)[:16] + training.benchmark_fingerprint(seed, size)
    run = training.run_seed(seed, train_seed)
    out = []
    for mode in ("class", "random"):
        key = cache_key(step="rsvc-marker-model", **_schedule_key(name, epochs, batch_size, base_width, seed),
                        **training.run_key(seed, train_seed),
                        mode=mode, marker_class=marker_class, marker_rate=marker_rate,
                        n_train_per_class=n_train_per_class, image_size=size, renderer=renderer,
                        evaluation=content_digest(analysis.images, analysis.labels)[:16])
        make = (lambda m=mode: _marker_train_set(m, marker_class, marker_rate, n_train_per_class, size, seed))
        label = f"{name} marker model {'A' if mode == 'class' else 'B'} (seed {seed}, training seed {run})"
        out.append(_cached_training(key, name, make, analysis, epochs, batch_size, base_width,
                                    run, get_device(device), progress, label))
    return out[0], out[1]
