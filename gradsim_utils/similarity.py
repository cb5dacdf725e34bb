"""Cosine similarity of representations, vectorised (seed 000's Cos_Sim tables).

cos(a, b) = <a, b> / (||a|| ||b||). A zero vector has no direction: its cosine with anything is
defined as 0 (as scikit-learn's ``cosine_similarity`` does), never NaN.

``pair_statistics`` summarises one cosine matrix by the within-class mean (classes weighted
equally), the between-class mean and the AUC of within- vs between-class pair cosines, with a
percentile bootstrap over *images* (stratified by class): pairs that share an image are not
independent, so resampling pairs would understate the uncertainty.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import torch

from .stats import Estimate, paired_difference, percentile_interval, pool_seeds

__all__ = [
    "cosine_matrix",
    "unordered_pairs", "between_class_pairs",
    "within_class_cosine",
    "within_class_cosine_from_matrix",
    "within_class_agreement",
    "predicted_label_cosine",
    "PairStatistics",
    "pair_statistics",
    "SEED000_COSINE",
    "gw_p_fm_vectors",
]

#: Size (N x D) from which ``within_class_cosine`` uses one thread per core (below, starting
#: threads costs more than it saves: measured on 2 cores).
THREADED_MIN_ENTRIES = 2**22

#: Decimals kept when pair cosines are ranked for the AUC (differences below are round-off).
AUC_DECIMALS = 9

#: Seed 000's cosine table (seed000, "Experimental Results"), quoted: model -> Cos_Sim_{GW,P,FM}.
SEED000_COSINE = {
    "ResNet-18": {"GW": 0.832475, "P": 0.750405, "FM": 0.809194},
    "ResNet-34": {"GW": 0.891979, "P": 0.760314, "FM": 0.821133},
    "ResNet-50": {"GW": 0.970702, "P": 0.781508, "FM": 0.842356},
    "ResNet-101": {"GW": 0.898816, "P": 0.777873, "FM": 0.841248},
    "ResNet-152": {"GW": 0.918961, "P": 0.784820, "FM": 0.834101},
}


def _as_2d_float(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (N, ...) with N samples, got shape {tuple(x.shape)}")
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    norms = x.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, x / norms.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))


def cosine_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """All pairwise cosines between rows of ``a`` (N, ...) and ``b`` (M, ...): one matrix product.

    Inputs are flattened per sample; the result is float64 (N, M), zero rows give 0.
    """
    ua = _unit_rows(_as_2d_float(a, "a"))
    ub = ua if b is None else _unit_rows(_as_2d_float(b, "b"))
    if ua.shape[1] != ub.shape[1]:
        raise ValueError(f"a and b differ in dimension: {ua.shape[1]} vs {ub.shape[1]}")
    return (ua @ ub.T).clamp_(-1.0, 1.0)


def unordered_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (i, j), i < j, of all unordered pairs of samples, and whether each shares a label."""
    labels = torch.as_tensor(labels)
    i, j = torch.triu_indices(len(labels), len(labels), offset=1)
    return i, j, labels[i] == labels[j]


def between_class_pairs(labels: torch.Tensor, n_pairs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_pairs`` unordered pairs (i, j), i < j, of samples with different labels, drawn without
    replacement (all of them if there are fewer) with ``numpy.random.default_rng(seed)``; in the
    order of ``unordered_pairs``. The baseline of a within-class pair statistic."""
    if not isinstance(n_pairs, (int, np.integer)) or n_pairs < 0:
        raise ValueError(f"n_pairs must be a non-negative int, got {n_pairs!r}")
    i, j, same = unordered_pairs(labels)
    between = (~same).nonzero().flatten().numpy()
    drawn = np.sort(np.random.default_rng(seed).choice(between, size=min(int(n_pairs), len(between)), replace=False))
    return i[drawn], j[drawn]


def _check_labels(labels: torch.Tensor, n: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be a 1-D tensor with one label per sample ({n}), got shape {tuple(labels.shape)}")
    return labels


@numba.njit(inline="always")
def _row_norm(row):
    """||row|| in float64 (the sum of squares in float64, whatever the row's dtype)."""
    square = 0.0
    for k in range(row.shape[0]):
        value = np.float64(row[k])
        square += value * value
    return np.sqrt(square)


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _unit_sum_squares(x, order, starts, norms, squares):
    """Per class c, whose rows are x[order[starts[c]:starts[c + 1]]]: norms[i] = ||x_i|| for its
    rows and squares[c] = ||sum_i x_i / ||x_i||| |^2, all in float64 (a zero row adds nothing).

    Rows go four at a time: their norms (each row read from memory once), then one pass adding the
    four scaled rows (now in cache) to a D-long accumulator that stays in cache. A class's last
    group repeats its last row with weight 0. "reassoc" and "contract" let the compiler vectorise
    the sums and fuse multiply-adds, nothing else: NaN and Inf surface as a NaN or Inf norm.
    """
    total = np.empty(x.shape[1])
    members = np.empty(4, np.int64)
    weights = np.empty(4)
    for c in range(len(starts) - 1):
        total[:] = 0.0
        last = starts[c + 1] - 1
        for first in range(starts[c], last + 1, 4):
            for j in range(4):
                i = members[j] = order[min(first + j, last)]
                norms[i] = _row_norm(x[i])
                weights[j] = 1.0 / norms[i] if first + j <= last and norms[i] > 0.0 else 0.0
            r0, r1, r2, r3 = x[members[0]], x[members[1]], x[members[2]], x[members[3]]
            w0, w1, w2, w3 = weights[0], weights[1], weights[2], weights[3]
            for k in range(x.shape[1]):
                total[k] += (r0[k] * w0 + r1[k] * w1) + (r2[k] * w2 + r3[k] * w3)
        squares[c] = np.sum(total * total)


def within_class_cosine(x: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """Mean cosine over all unordered pairs of distinct samples of each class.

    Returns ``{class: mean cosine}``; a class with fewer than two samples has no pair and raises.
    With unit rows u_i (zero rows stay zero) the class's Gram block U U^T sums to
    1^T U U^T 1 = ||U^T 1||^2, so the pair mean is (||sum_i u_i||^2 - sum_i ||u_i||^2) / (n (n - 1)):
    the normalised matrix product reduced algebraically, O(N D) instead of O(N^2 D). The compiled
    kernel ``_unit_sum_squares`` makes one float64 pass over the rows without a float64 copy of
    ``x``; from ``THREADED_MIN_ENTRIES`` entries on, the classes are split into
    ``torch.get_num_threads()`` runs of about equal row counts, one thread each. Tensors on a GPU
    are copied to the CPU first.
    """
    x = torch.as_tensor(x)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must have shape (N, ...) with N >= 2 samples, got shape {tuple(x.shape)}")
    x = x.detach().reshape(x.shape[0], -1).cpu()
    labels = _check_labels(labels, x.shape[0]).cpu()
    classes, index, sizes = torch.unique(labels, return_inverse=True, return_counts=True)
    if sizes.min() < 2:
        c = classes[sizes.argmin()].item()
        raise ValueError(f"class {c} has {sizes.min().item()} sample(s); a within-class cosine needs two")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.double()  # float16, bfloat16 and integers (up to 2**53) are exact in float64
    rows, sizes = np.ascontiguousarray(x.numpy()), sizes.numpy()
    order = np.argsort(index.numpy(), kind="stable")  # rows grouped by class
    starts = np.concatenate([[0], np.cumsum(sizes)])
    n_runs = min(torch.get_num_threads(), len(classes)) if rows.size >= THREADED_MIN_ENTRIES else 1
    cuts = np.searchsorted(starts[1:], np.linspace(0, len(rows), n_runs + 1)[1:-1]) + 1
    runs = [run for run in np.split(np.arange(len(classes)), np.unique(cuts)) if len(run)]
    norms, squares = np.empty(len(rows)), np.empty(len(classes))

    def run_classes(run: np.ndarray) -> None:
        first, last = run[0], run[-1] + 1
        _unit_sum_squares(rows, order, starts[first:last + 1], norms, squares[first:last])

    if len(runs) == 1:
        run_classes(runs[0])
    else:
        with ThreadPoolExecutor(len(runs)) as pool:  # the kernel releases the GIL
            list(pool.map(run_classes, runs))
    if not np.isfinite(norms).all():  # a NaN or Inf entry makes its row's norm NaN or Inf
        raise ValueError("x contains NaN or Inf")
    self_terms = np.bincount(index.numpy(), weights=norms > 0, minlength=len(classes))
    means = (squares - self_terms) / (sizes * (sizes - 1.0))
    return {c: float(m) for c, m in zip(classes.tolist(), means)}


def within_class_cosine_from_matrix(sims: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """``within_class_cosine`` for an already computed N x N cosine matrix ``sims``."""
    labels = _check_labels(labels, sims.shape[0])
    means = {}
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().squeeze(1)
        if idx.numel() < 2:
            raise ValueError(f"class {c} has {idx.numel()} sample(s); a within-class cosine needs two")
        block = sims[idx][:, idx]
        upper = torch.triu_indices(idx.numel(), idx.numel(), offset=1)
        means[c] = block[upper[0], upper[1]].mean().item()
    return means


def predicted_label_cosine(class_weights: torch.Tensor, preds: torch.Tensor) -> torch.Tensor:
    """The cosine matrix the gradient-weight identity predicts from labels alone (DESIGN.md s. 7).

    If w(x_i) = W[c_i] / (H'W'), then cos(w_i, w_j) = cos(W[c_i], W[c_j]): 1 for a shared
    predicted class. ``class_weights`` is the classifier matrix W (classes x channels).
    """
    class_cos = cosine_matrix(class_weights)
    preds = torch.as_tensor(preds).long()
    return class_cos[preds][:, preds]


def within_class_agreement(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of unordered same-class pairs (i, j) whose predicted labels are equal."""
    preds = torch.as_tensor(preds)
    labels = _check_labels(labels, len(preds))
    i, j, same = unordered_pairs(labels)
    if not same.any():
        raise ValueError("no class has two samples, so there is no within-class pair")
    return (preds[i[same]] == preds[j[same]]).double().mean().item()


@dataclass(frozen=True)
class PairStatistics:
    """Within-class mean, between-class mean and within-vs-between AUC of a cosine matrix.

    Each field is an array whose element 0 is the full-sample value and elements 1.. the bootstrap
    replicates (NaN where a replicate has no pair of distinct images of that kind).
    ``estimate(field)`` gives the value with its percentile interval; ``difference(other, field)``
    the paired difference with another representation scored on the same resamples.
    """

    within: np.ndarray
    between: np.ndarray
    auc: np.ndarray

    @classmethod
    def pooled(cls, per_seed: "list[PairStatistics]", draws: np.ndarray) -> "PairStatistics":
        """Statistics of several training runs on the same images and resamples, pooled over the
        runs by ``stats.pool_seeds`` (``draws`` from ``stats.seed_draws``): mean over runs, with
        replicates that resample runs as well as images."""
        return cls(**{f: pool_seeds([getattr(p, f) for p in per_seed], draws) for f in ("within", "between", "auc")})

    def estimate(self, field: str, level: float = 0.95) -> Estimate:
        """``field`` ("within", "between", "auc") with its percentile bootstrap interval."""
        if field not in ("within", "between", "auc"):
            raise ValueError(f"field must be 'within', 'between' or 'auc', got {field!r}")
        values = getattr(self, field)
        return percentile_interval(values[0], values[1:], level)

    def difference(self, other: "PairStatistics", field: str, level: float = 0.95) -> Estimate:
        """``self.field - other.field`` with a paired interval (both must share resamples)."""
        a, b = getattr(self, field), getattr(other, field)
        return paired_difference(a[0], a[1:], b[0], b[1:], level)


def _auc_replicates(s: np.ndarray, within: np.ndarray, counts: np.ndarray, i: np.ndarray,
                    j: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUC P(s_within > s_between) + 0.5 P(tie) for each row of ``counts``.

    Pair (i, j) has weight n_i n_j. Scores are compared after rounding to ``AUC_DECIMALS`` decimals:
    vectors that are equal up to float32 round-off (gradient weights of one predicted class) give
    cosines that differ around 1e-15, and those must tie, not be ranked by round-off noise.
    The between-class pairs are sorted by score once and their
    weights cumulated per row; each within-class pair then reads the between weight strictly
    below its score and tied with it (two searchsorted positions), in exact integer arithmetic.
    """
    s = np.round(s, AUC_DECIMALS)
    order = np.argsort(s[~within], kind="stable")
    sb, ib, jb = s[~within][order], i[~within][order], j[~within][order]
    sw, iw, jw = s[within], i[within], j[within]
    left = np.searchsorted(sb, sw, side="left")
    right = np.searchsorted(sb, sw, side="right")
    # pairs x resamples layout: row gathers and a cumulative sum down contiguous rows
    dtype = np.int32 if len(counts[0]) ** 2 < 2**31 // 4 else np.int64  # exact: no overflow
    counts_t = np.ascontiguousarray(np.asarray(counts).T, dtype=dtype)
    out = np.empty(counts_t.shape[1])
    block = max(1, int(4e6 // max(1, len(sb))))
    for start in range(0, counts_t.shape[1], block):
        c = counts_t[:, start:start + block]
        cum = np.zeros((len(sb) + 1, c.shape[1]), dtype=np.int64)
        np.cumsum(c[ib] * c[jb], axis=0, out=cum[1:])
        ww = (c[iw] * c[jw]).astype(np.int64)
        twice = (ww * (cum[left] + cum[right])).sum(0)  # 2 * (below + tie / 2)
        out[start:start + c.shape[1]] = _ratio(twice / 2.0, ww.sum(0) * cum[-1].astype(np.float64))
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den is 0 (no pair of that kind in a replicate)."""
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(den.shape, np.nan), where=den > 0)


def pair_statistics(sims: torch.Tensor, labels, counts: np.ndarray | None = None,
                    with_auc: bool = True) -> PairStatistics:
    """Within-class mean cosine, between-class mean and AUC from an N x N cosine matrix ``sims``.

    Pairs are unordered pairs of distinct images. Within = mean over classes (equal weights) of
    the mean cosine of the class's pairs (seed 000's Cos_Sim, classes of equal size give the
    plain pair mean); between = mean over all pairs of different classes; AUC = probability that
    a random within-class pair has a higher cosine than a random between-class pair (ties 1/2),
    i.e. ``sklearn.metrics.roc_auc_score(same_class, cosine)``. With ``counts`` (from
    ``image_bootstrap_counts``) every pair (i, j) of a replicate has weight n_i n_j, so copies
    of one image are never paired with themselves. Needs a class with two images and two classes.
    ``with_auc=False`` leaves the AUC out (NaN), which is most of the cost with many replicates.
    """
    sims = torch.as_tensor(sims)
    if sims.ndim != 2 or sims.shape[0] != sims.shape[1]:
        raise ValueError(f"sims must be a square N x N matrix, got shape {tuple(sims.shape)}")
    labels = np.asarray(_check_labels(labels, sims.shape[0]))
    n = len(labels)
    _, class_index = np.unique(labels, return_inverse=True)
    n_classes = class_index.max() + 1
    if np.bincount(class_index).max() < 2 or n_classes < 2:
        raise ValueError("pair statistics need a class with at least two images and at least two classes")
    ones = np.ones((1, n), dtype=np.int64)
    counts = ones if counts is None else np.concatenate([ones, np.asarray(counts)])
    if counts.shape[1] != n:
        raise ValueError(f"counts must have one column per image ({n}), got shape {counts.shape}")
    i, j = np.triu_indices(n, k=1)
    s = sims.numpy().astype(np.float64)[i, j]
    within = class_index[i] == class_index[j]
    c = counts.astype(np.float64)
    # sum over pairs i != j of n_i n_j S_ij is c^T S c with a zero diagonal: matrix products
    s_full = sims.numpy().astype(np.float64).copy()
    np.fill_diagonal(s_full, 0.0)
    class_means = []
    for k in range(n_classes):
        idx = np.flatnonzero(class_index == k)
        if len(idx) < 2:
            continue
        ck = c[:, idx]
        weight = ck.sum(1) ** 2 - (ck ** 2).sum(1)
        class_means.append(_ratio(((ck @ s_full[np.ix_(idx, idx)]) * ck).sum(1), weight))
    class_means = np.stack(class_means)
    counted = np.isfinite(class_means)
    within_mean = _ratio(np.where(counted, class_means, 0.0).sum(0), counted.sum(0))
    same = class_index[:, None] == class_index[None, :]
    class_totals = np.stack([c[:, class_index == k].sum(1) for k in range(n_classes)])
    between_w = c.sum(1) ** 2 - (class_totals ** 2).sum(0)
    between_mean = _ratio(((c @ np.where(same, 0.0, s_full)) * c).sum(1), between_w)
    auc = _auc_replicates(s, within, c, i, j) if with_auc else np.full(len(c), np.nan)
    return PairStatistics(within=within_mean, between=between_mean, auc=auc)


def gw_p_fm_vectors(reps) -> dict[str, torch.Tensor]:
    """Seed 000's three vectors per image from an ``extract.Representations``: gradient weights
    "GW" (N x K), softmax probabilities "P" (N x C) and the flattened feature map "FM"."""
    if reps.features is None:
        raise ValueError("reps has no features: extract them with keep_features=True")
    return {"GW": reps.grad_weights, "P": reps.probs, "FM": reps.features.flatten(1)}
