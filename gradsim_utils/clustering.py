"""Clustering of representations and its scores (seed 000's K-means and GMM tables).

Seed 000 clusters gradient weights (GW), probabilities (P) and feature maps (FM) with K-means and a
Gaussian mixture, k = number of classes, and reports ARI (hubert1985ari), NMI and the silhouette
(rousseeuw1987silhouette). The seed does not say how; our choices, all scikit-learn:

* preprocessing: flatten, centre, divide by the overall standard deviation (one scalar, so distances keep
  their geometry and GMM's ``reg_covar`` is relative to the data's scale), then PCA to
  ``n_components`` (fitted once on all images; ``None`` keeps every dimension);
* K-means: ``KMeans(n_clusters=k, n_init=n_init, random_state=seed)``; GMM:
  ``GaussianMixture(k, covariance_type="diag", n_init=n_init, reg_covar=1e-4, random_state=seed)``
  (1e-4 of the data's unit variance keeps piles of identical points from collapsing a component);
* ARI and NMI against the true labels; the silhouette (euclidean, in the clustered space) under the
  *cluster* labels (what a clustering table usually reports) and, separately, under the true labels;
* intervals: stratified bootstrap over images: each replicate draws every class's images with
  replacement, clusters the replicate (copies included) with its own seed and scores its
  *distinct* images: a copy of an image is trivially in its own cluster and at distance 0 from
  itself, which would inflate ARI and the silhouette. About 63 % of the images are distinct, and
  NMI (not chance-corrected) is biased upward on fewer images: with a few images per class (smoke,
  paper-dryrun) the intervals are not meaningful;
* one BLAS/OpenMP thread: the problems are small, and on a shared 2-core machine scikit-learn's
  K-means ran about 10x faster single-threaded than with its default threads (measured).

Degenerate cases have fixed rules instead of errors or NaN: fewer distinct points than k (e.g. a
model that predicts one class for everything: its gradient weights at ``layer4`` are one point)
lets the clusterer return fewer clusters (scikit-learn's warning is silenced); a silhouette over
fewer than two labels, or with every point its own label, is 0 ("no cluster structure");
constant data gives all-zero coordinates.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from .stats import Estimate, image_bootstrap_counts, paired_difference, percentile_interval, pool_seeds

__all__ = ["METHODS", "SCORES", "SEED000_CLUSTERING", "prepare", "cluster", "silhouette",
           "partition_scores", "ClusterResult", "evaluate_clustering", "evaluate_partition",
           "evaluate_representations", "refinement_share"]

METHODS = ("kmeans", "gmm")
SCORES = ("ari", "nmi", "silhouette", "silhouette_true")

#: Seed 000's clustering tables (seed000, "Clustering using K-means / GMM"), quoted:
#: method -> model -> representation -> (ARI, NMI, silhouette).
SEED000_CLUSTERING = {
    "kmeans": {
        "ResNet-18": {"GW": (0.95, 0.98, 0.79), "P": (0.30, 0.64, 0.42), "FM": (0.41, 0.72, 0.42)},
        "ResNet-34": {"GW": (0.63, 0.85, 0.62), "P": (0.50, 0.78, 0.42), "FM": (0.57, 0.80, 0.51)},
        "ResNet-50": {"GW": (1.00, 1.00, 0.89), "P": (0.41, 0.69, 0.33), "FM": (0.41, 0.73, 0.49)},
        "ResNet-101": {"GW": (0.95, 0.98, 0.83), "P": (0.34, 0.66, 0.39), "FM": (0.23, 0.57, 0.41)},
        "ResNet-152": {"GW": (0.77, 0.91, 0.81), "P": (0.53, 0.77, 0.43), "FM": (0.39, 0.69, 0.35)},
    },
    "gmm": {
        "ResNet-18": {"GW": (0.95, 0.98, 0.79), "P": (0.30, 0.64, 0.38), "FM": (0.46, 0.74, 0.42)},
        "ResNet-34": {"GW": (0.61, 0.85, 0.62), "P": (0.48, 0.78, 0.40), "FM": (0.52, 0.77, 0.48)},
        "ResNet-50": {"GW": (1.00, 1.00, 0.89), "P": (0.34, 0.68, 0.30), "FM": (0.41, 0.73, 0.49)},
        "ResNet-101": {"GW": (0.95, 0.98, 0.83), "P": (0.37, 0.69, 0.31), "FM": (0.24, 0.58, 0.39)},
        "ResNet-152": {"GW": (0.77, 0.91, 0.81), "P": (0.57, 0.80, 0.43), "FM": (0.40, 0.71, 0.30)},
    },
}


def _as_matrix(x, name: str = "x") -> np.ndarray:
    x = np.asarray(torch.as_tensor(x).detach().cpu().to(torch.float64))
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 2 samples, got shape {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def _as_labels(labels, n: int, name: str = "labels") -> np.ndarray:
    labels = np.asarray(torch.as_tensor(labels).cpu())
    if labels.shape != (n,):
        raise ValueError(f"{name} must hold one label per sample ({n}), got shape {labels.shape}")
    return labels


def prepare(x, n_components: int | None = 32, seed: int = 0) -> np.ndarray:
    """Flatten, centre, scale by the overall standard deviation, reduce by PCA (``None``: no PCA).

    ``n_components`` is clipped to min(N, D); constant data (standard deviation 0) is returned
    as zeros, so every later step sees one point instead of dividing by zero.
    """
    x = _as_matrix(x)
    if n_components is not None and (not isinstance(n_components, int) or n_components < 1):
        raise ValueError(f"n_components must be a positive int or None, got {n_components!r}")
    x = x - x.mean(0)
    scale = x.std()
    if scale == 0:
        return np.zeros((x.shape[0], x.shape[1] if n_components is None else min(n_components, x.shape[1])))
    x = x / scale
    if n_components is None:
        return x
    with threadpool_limits(limits=1):
        return PCA(min(n_components, *x.shape), random_state=seed).fit_transform(x)


def cluster(x: np.ndarray, k: int, method: str = "kmeans", seed: int = 0, n_init: int = 5) -> np.ndarray:
    """Cluster labels of the rows of ``x``: K-means or a diagonal-covariance GMM, ``n_init`` restarts."""
    x = _as_matrix(x)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k > x.shape[0]:
        raise ValueError(f"k={k} clusters need at least {k} samples, got {x.shape[0]}")
    if not isinstance(n_init, int) or n_init < 1:
        raise ValueError(f"n_init must be a positive int, got {n_init!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fewer distinct points than k
        if method == "kmeans":
            return KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x)
        gmm = GaussianMixture(k, covariance_type="diag", n_init=n_init, random_state=seed, reg_covar=1e-4)
        return gmm.fit(x).predict(x)


def silhouette(x: np.ndarray, labels) -> float:
    """Mean silhouette (euclidean) of ``x`` under ``labels``; 0 when it is undefined.

    scikit-learn needs 2 <= number of labels <= N - 1; outside that range there is no cluster
    structure to score, and we return 0 (documented rule, never NaN).
    """
    x = _as_matrix(x)
    labels = _as_labels(labels, x.shape[0])
    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels > x.shape[0] - 1:
        return 0.0
    return float(silhouette_score(x, labels))


def partition_scores(x: np.ndarray, true_labels, cluster_labels) -> dict[str, float]:
    """ARI and NMI of ``cluster_labels`` against ``true_labels``; silhouettes of ``x`` under both."""
    x = _as_matrix(x)
    true_labels = _as_labels(true_labels, x.shape[0], "true_labels")
    cluster_labels = _as_labels(cluster_labels, x.shape[0], "cluster_labels")
    return {
        "ari": float(adjusted_rand_score(true_labels, cluster_labels)),
        "nmi": float(normalized_mutual_info_score(true_labels, cluster_labels)),
        "silhouette": silhouette(x, cluster_labels),
        "silhouette_true": silhouette(x, true_labels),
    }


@dataclass(frozen=True)
class ClusterResult:
    """Scores of a clustering: ``values[score]`` holds the full-sample value, then the replicates.

    ``labels`` are the full-sample cluster labels; ``estimate(score)`` the value with its
    percentile bootstrap interval over images.
    """

    labels: np.ndarray
    values: dict[str, np.ndarray]

    @classmethod
    def pooled(cls, per_seed: "list[ClusterResult]", draws: np.ndarray) -> "ClusterResult":
        """Results of several training runs on the same images, resamples and bootstrap seed,
        pooled over the runs by ``stats.pool_seeds`` (``draws`` from ``stats.seed_draws``);
        ``labels`` are the first run's."""
        return cls(labels=per_seed[0].labels,
                   values={s: pool_seeds([r.values[s] for r in per_seed], draws) for s in per_seed[0].values})

    def estimate(self, score: str, level: float = 0.95) -> Estimate:
        """``score`` (one of ``SCORES``) with its percentile interval over the replicates."""
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        values = self.values[score]
        return percentile_interval(values[0], values[1:], level)

    def difference(self, other: "ClusterResult", score: str, level: float = 0.95) -> Estimate:
        """``self - other`` for ``score`` with a paired interval: both must come from the same
        labels, ``n_resamples`` and ``seed`` (hence the same image resamples)."""
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        a, b = self.values[score], other.values[score]
        return paired_difference(a[0], a[1:], b[0], b[1:], level)


def _replicates(x: np.ndarray, labels: np.ndarray, n_resamples: int, seed: int, partition) -> ClusterResult:
    """Score ``partition(x_rows, replicate_seed, index)`` on all images, then on bootstrap replicates."""
    with threadpool_limits(limits=1):
        full = partition(x, seed, np.arange(len(labels)))
        rows = [partition_scores(x, labels, full)]
        counts = image_bootstrap_counts(labels, n_resamples, seed) if n_resamples else []
        for r, draw in enumerate(counts, start=1):
            index = np.repeat(np.arange(len(labels)), draw)
            part = partition(x[index], seed + r, index)
            distinct = np.unique(index, return_index=True)[1]  # score each drawn image once
            rows.append(partition_scores(x[index][distinct], labels[index][distinct], part[distinct]))
    values = {score: np.array([row[score] for row in rows]) for score in SCORES}
    return ClusterResult(labels=np.asarray(full), values=values)


def evaluate_clustering(x, labels, method: str = "kmeans", k: int | None = None,
                        n_components: int | None = 32, n_init: int = 5, n_resamples: int = 10,
                        seed: int = 0) -> ClusterResult:
    """Cluster ``x`` (after ``prepare``) with ``method`` into ``k`` clusters (default: number of
    classes) and score it against ``labels``, on all images and on ``n_resamples`` bootstrap
    replicates (each clustered afresh with its own seed)."""
    labels = _as_labels(labels, len(x))
    k = len(np.unique(labels)) if k is None else k
    z = prepare(x, n_components, seed)
    if k > z.shape[0]:
        raise ValueError(f"k={k} clusters need at least {k} samples, got {z.shape[0]}")
    return _replicates(z, labels, n_resamples, seed,
                       lambda rows, s, index: cluster(rows, min(k, len(rows)), method, s, n_init))


def evaluate_partition(x, labels, partition, n_components: int | None = 32, n_resamples: int = 10,
                       seed: int = 0) -> ClusterResult:
    """Score a given partition (e.g. the predicted classes: the baseline that needs no clustering)
    exactly as ``evaluate_clustering`` scores a clustering, on the same replicates."""
    labels = _as_labels(labels, len(x))
    partition = _as_labels(partition, len(x), "partition")
    z = prepare(x, n_components, seed)
    return _replicates(z, labels, n_resamples, seed, lambda rows, s, index: partition[index])


def evaluate_representations(vectors: dict, labels, preds, k: int | None = None, n_components: int | None = 32,
                             n_init: int = 5, n_resamples: int = 10, seed: int = 0, baseline_space: str = "GW"):
    """Seed 000's clustering table for one model: every representation in ``vectors`` (name -> N x ...)
    clustered by every method in ``METHODS`` (``evaluate_clustering``), in that order, and the
    partition cluster = ``preds`` scored in the space of ``vectors[baseline_space]`` on the same
    replicates (``evaluate_partition``). Returns ``({(name, method): ClusterResult}, baseline)``."""
    if baseline_space not in vectors:
        raise ValueError(f"baseline_space {baseline_space!r} is not one of {tuple(vectors)}")
    results = {(name, method): evaluate_clustering(x, labels, method=method, k=k, n_components=n_components,
                                                   n_init=n_init, n_resamples=n_resamples, seed=seed)
               for name, x in vectors.items() for method in METHODS}
    baseline = evaluate_partition(vectors[baseline_space], labels, preds, n_components=n_components,
                                  n_resamples=n_resamples, seed=seed)
    return results, baseline


def refinement_share(fine, coarse) -> float:
    """Share of samples whose ``coarse`` label is the most common one within their ``fine`` group:
    sum_g max_c |{i in g: coarse_i = c}| / N. It is 1 exactly when every ``fine`` group lies inside
    one ``coarse`` group (the coarse partition is a union of fine ones, e.g. clusters = unions of
    predicted classes), and at least 1 / (number of coarse labels) otherwise."""
    fine = np.asarray(torch.as_tensor(fine).cpu())
    coarse = _as_labels(coarse, len(fine), "coarse")
    if fine.ndim != 1 or len(fine) == 0:
        raise ValueError(f"fine must be a non-empty 1-d labelling, got shape {fine.shape}")
    _, fine_idx = np.unique(fine, return_inverse=True)
    _, coarse_idx = np.unique(coarse, return_inverse=True)
    counts = np.zeros((fine_idx.max() + 1, coarse_idx.max() + 1), dtype=np.int64)
    np.add.at(counts, (fine_idx, coarse_idx), 1)
    return float(counts.max(axis=1).sum() / len(fine))
