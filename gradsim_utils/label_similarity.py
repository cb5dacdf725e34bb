"""Similar classes from internal representations: the class-similarity matrices and their agreement
with a ground truth (seed 002, Park; METHODS.md "Label similarity").

Three class-similarity matrices, all cosines between class vectors (from
:class:`class_statistics.ClassStats` of the GAP statistics of ``gap_statistics``):
  * Welch (the method, Sec. 3.2): s^c_k = Welch's t of class c's A_k against all other images;
  * pure GAP (Eq. 4-6): the class means of A;
  * hidden state (Sec. 4): the class means of the real penultimate features (the classifier's
    input). The reference notebook computes this one from the GAP means by mistake, which makes it
    identical to pure GAP; here it is the classifier's input.
Top-k similar classes exclude the class itself (the reference's ranking starts with it). Agreement
with a ground truth: Spearman over class pairs and precision@k, with a stratified image bootstrap.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats as _scipy_stats

from .class_statistics import ClassStats, welch_from_sums
from .similarity import cosine_matrix
from .stats import Estimate, image_bootstrap_counts, paired_difference, percentile_interval, pool_seeds

__all__ = ["cosine_rows", "similarity_matrices", "top_k_similar", "top_k_overlap", "spearman_agreement",
           "precision_at_k", "chance_precision", "Agreement", "difference_estimate", "bootstrap_agreement"]


def cosine_rows(vectors) -> np.ndarray:
    """C x C cosine matrix of the rows of ``vectors`` (float64; a zero row has cosine 0)."""
    return cosine_matrix(torch.as_tensor(np.asarray(vectors, dtype=np.float64))).numpy()


def similarity_matrices(gap_stats: ClassStats, hidden_stats: ClassStats | None = None) -> dict[str, np.ndarray]:
    """``{"Welch t": cos(s^c, s^i), "pure GAP": cos(mu^c, mu^i), "hidden": cos(h^c, h^i)}``."""
    out = {"Welch t": cosine_rows(gap_stats.welch_t()), "pure GAP": cosine_rows(gap_stats.means())}
    if hidden_stats is not None:
        if hidden_stats.n_classes != gap_stats.n_classes:
            raise ValueError("gap_stats and hidden_stats have different class counts")
        out["hidden"] = cosine_rows(hidden_stats.means())
    return out


def _check_square(sim, name: str = "sim") -> np.ndarray:
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1] or sim.shape[0] < 2:
        raise ValueError(f"{name} must be a square C x C matrix with C >= 2, got shape {sim.shape}")
    if not np.isfinite(sim).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return sim


def top_k_similar(sim, k: int) -> np.ndarray:
    """C x k indices of each class's k most similar other classes, most similar first.

    The class itself is excluded; ties are broken by the lower class index (stable sort).
    """
    sim = _check_square(sim)
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= len(sim) - 1:
        raise ValueError(f"k must be an int in [1, {len(sim) - 1}] (classes minus the class itself), got {k!r}")
    masked = sim.copy()
    np.fill_diagonal(masked, -np.inf)
    return np.argsort(-masked, axis=1, kind="stable")[:, :k]


def top_k_overlap(sim_a, sim_b, k: int) -> np.ndarray:
    """Per class, the share of its ``k`` most similar other classes (``top_k_similar``) that the two
    class-similarity matrices have in common: an array (C,) of values in {0, 1/k, ..., 1}."""
    top_a, top_b = top_k_similar(sim_a, k), top_k_similar(sim_b, k)
    if top_a.shape != top_b.shape:
        raise ValueError(f"sim_a and sim_b have different class counts: {len(top_a)} vs {len(top_b)}")
    return np.array([len(set(a) & set(b)) / k for a, b in zip(top_a, top_b)])


def _upper(sim: np.ndarray) -> np.ndarray:
    i, j = np.triu_indices(sim.shape[-1], k=1)
    return sim[..., i, j]


def spearman_agreement(sim, truth) -> float:
    """Spearman correlation (``scipy.stats.spearmanr``) of the off-diagonal pairs i < j."""
    sim, truth = _check_square(sim), _check_square(truth, "truth")
    if sim.shape != truth.shape:
        raise ValueError(f"sim and truth differ in shape: {sim.shape} vs {truth.shape}")
    a, b = _upper(sim), _upper(truth)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        raise ValueError("a constant similarity matrix has no ranking (Spearman undefined)")
    return float(_scipy_stats.spearmanr(a, b).statistic)


def _relevant(truth: np.ndarray, k: int) -> np.ndarray:
    """C x C bool: class i counts as a hit for query c when truth[c, i] >= c's k-th best value."""
    masked = truth.copy()
    np.fill_diagonal(masked, -np.inf)
    kth = -np.sort(-masked, axis=1)[:, k - 1]
    return masked >= kth[:, None]


def precision_at_k(sim, truth, k: int, per_class: bool = False):
    """Mean over query classes of |top-k by ``sim`` among the relevant classes| / k.

    Relevant for query c: every other class at least as similar in ``truth`` as c's k-th most
    similar one (ties in the ground truth all count). The chance level is ``chance_precision``.
    """
    sim, truth = _check_square(sim), _check_square(truth, "truth")
    top = top_k_similar(sim, k)
    hits = np.take_along_axis(_relevant(truth, k), top, axis=1).mean(axis=1)
    return hits if per_class else float(hits.mean())


def chance_precision(truth, k: int) -> float:
    """Expected precision@k of a random ranking: mean over c of |relevant(c)| / (C - 1)."""
    truth = _check_square(truth, "truth")
    return float(_relevant(truth, k).sum(axis=1).mean() / (len(truth) - 1))


def _spearman_rows(sims: np.ndarray, truth_upper: np.ndarray) -> np.ndarray:
    """Spearman of each row of ``sims`` (B x P) with ``truth_upper`` (P,): Pearson of ranks."""
    ra = _scipy_stats.rankdata(sims, axis=1)
    rb = _scipy_stats.rankdata(truth_upper)
    ra = ra - ra.mean(axis=1, keepdims=True)
    rb = rb - rb.mean()
    den = np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum())
    return np.divide(ra @ rb, den, out=np.full(len(ra), np.nan), where=den > 0)


def _precision_rows(sims: np.ndarray, relevant: np.ndarray, k: int) -> np.ndarray:
    masked = sims.copy()
    idx = np.arange(sims.shape[-1])
    masked[:, idx, idx] = -np.inf
    top = np.argsort(-masked, axis=2, kind="stable")[:, :, :k]
    return np.take_along_axis(np.broadcast_to(relevant, masked.shape), top, axis=2).mean(axis=(1, 2))


def _cosine_batch(v: torch.Tensor) -> torch.Tensor:
    """Cosine matrices of the rows of each item of a batch (... x C x K); zero rows give 0."""
    norms = v.norm(dim=-1, keepdim=True)
    u = torch.where(norms > 0, v / norms.clamp(min=torch.finfo(v.dtype).tiny), torch.zeros_like(v))
    return (u @ u.transpose(-1, -2)).clamp_(-1.0, 1.0)


@dataclass
class Agreement:
    """Point estimates and stratified-bootstrap replicates of each method's agreement.

    ``point[(method, metric)]`` and ``samples[(method, metric)]`` (n_resamples,), metric in
    ("spearman", "precision"); replicates of different calls with the same labels, seed and
    n_resamples use the same resampled images, so differences between them are paired.
    """

    point: dict[tuple[str, str], float]
    samples: dict[tuple[str, str], np.ndarray]
    k: int
    level: float = 0.95
    matrices: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def pooled(cls, per_seed: "list[Agreement]", draws: np.ndarray) -> "Agreement":
        """Agreements of several training runs on the same resampled images, pooled over the runs
        by ``stats.pool_seeds`` (``draws`` (n_resamples, runs) from ``stats.seed_draws``); the
        matrices are the first run's."""
        first = per_seed[0]
        pooled = {key: pool_seeds([np.concatenate([[a.point[key]], a.samples[key]]) for a in per_seed], draws)
                  for key in first.point}
        return cls(point={key: float(v[0]) for key, v in pooled.items()},
                   samples={key: v[1:] for key, v in pooled.items()},
                   k=first.k, level=first.level, matrices=first.matrices)

    def estimate(self, method: str, metric: str) -> Estimate:
        """The point value with its percentile interval."""
        return percentile_interval(self.point[(method, metric)], self.samples[(method, metric)], self.level)


def difference_estimate(a: Agreement, method_a: str, b: Agreement, method_b: str, metric: str) -> Estimate:
    """Paired difference ``a[method_a] - b[method_b]`` of one metric with its percentile interval."""
    return paired_difference(a.point[(method_a, metric)], a.samples[(method_a, metric)],
                             b.point[(method_b, metric)], b.samples[(method_b, metric)], a.level)


def bootstrap_agreement(gap: dict[str, torch.Tensor], hidden: torch.Tensor | None, labels, truth, k: int,
                        n_resamples: int = 200, seed: int = 0, level: float = 0.95,
                        chunk: int = 50) -> Agreement:
    """Spearman and precision@k of every method against ``truth``, with a stratified bootstrap.

    Methods: ``"Welch t (<where>)"`` and ``"pure GAP (<where>)"`` for each entry of ``gap``
    (N x K per-image GAP statistics) and ``"hidden"`` (N x D). Each replicate resamples the
    images of every class with replacement (class sizes fixed) and recomputes the per-class
    sums of the resampled set (float32 products of resampling counts and shifted features; the
    point estimates use float64 :class:`ClassStats`).
    """
    y = torch.as_tensor(labels).cpu().numpy()
    truth = _check_square(truth, "truth")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() + 1 != len(truth):
        raise ValueError(f"labels must be class indices covering all {len(truth)} classes of truth")
    if not isinstance(n_resamples, int) or n_resamples < 2:
        raise ValueError(f"n_resamples must be an int >= 2, got {n_resamples!r}")
    features = {f"GAP ({w})": g for w, g in gap.items()}
    if hidden is not None:
        features["hidden"] = hidden
    point, samples, matrices = {}, {}, {}
    truth_upper, relevant = _upper(truth), _relevant(truth, k)
    drawn = image_bootstrap_counts(y, n_resamples, seed, draw="indices")
    groups = [(idx, drawn[:, idx].astype(np.float64)) for idx in (np.flatnonzero(y == c) for c in range(len(truth)))]
    counts = np.array([len(idx) for idx, _ in groups], dtype=np.float64)
    for name, x in features.items():
        x = torch.as_tensor(x).cpu().numpy().astype(np.float64)
        if x.ndim != 2 or len(x) != len(y):
            raise ValueError(f"features {name!r} must be N x K with N = {len(y)}, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"features {name!r} contain NaN or Inf")
        stats = ClassStats.from_features(x, y, len(truth))
        is_gap = name != "hidden"
        where = name[5:-1] if is_gap else None
        methods = {f"Welch t ({where})": stats.welch_t, f"pure GAP ({where})": stats.means} if is_gap \
            else {"hidden": stats.means}
        for method, fn in methods.items():
            matrices[method] = cosine_rows(fn())
            point[(method, "spearman")] = spearman_agreement(matrices[method], truth)
            point[(method, "precision")] = precision_at_k(matrices[method], truth, k)
            samples[(method, "spearman")], samples[(method, "precision")] = [], []
        # replicates: float32 products of the shifted class blocks with the resampling counts
        blocks = [(torch.from_numpy(x[idx] - x[0]).float(), torch.from_numpy(w).float()) for idx, w in groups]
        squares = [b * b for b, _ in blocks] if is_gap else None
        shift = torch.from_numpy(x[0]).float()
        n = torch.from_numpy(counts).float()
        def class_sums(values, start, stop):  # b x C x K, written class by class without a copy
            out = torch.empty(len(blocks), stop - start, x.shape[1])
            for c, (v, (_, w)) in enumerate(zip(values, blocks)):
                torch.matmul(w[start:stop], v, out=out[c])
            return out.transpose(0, 1)

        for start in range(0, n_resamples, chunk):
            stop = min(start + chunk, n_resamples)
            sums = class_sums([b for b, _ in blocks], start, stop)
            vectors = {}
            if is_gap:
                sumsq = class_sums(squares, start, stop)
                vectors[f"Welch t ({where})"] = welch_from_sums(n.expand(stop - start, -1), sums, sumsq)
                vectors[f"pure GAP ({where})"] = shift + sums / n[:, None]
            else:
                vectors["hidden"] = shift + sums / n[:, None]
            for method, v in vectors.items():
                sims = _cosine_batch(v).double().numpy()
                samples[(method, "spearman")].append(_spearman_rows(_upper(sims), truth_upper))
                samples[(method, "precision")].append(_precision_rows(sims, relevant, k))
    samples = {key: np.concatenate(v) for key, v in samples.items()}
    return Agreement(point=point, samples=samples, k=k, level=level, matrices=matrices)

