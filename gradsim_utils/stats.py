"""Confidence intervals shared by every chapter: percentile bootstrap over images or pairs.

Every interval of the book is a percentile bootstrap interval (efron1994bootstrap): at ``level``
the replicates' quantiles q = (1 - level) / 2 and 1 - q, NaN replicates (a statistic undefined on
that resample) left out. Here are the pieces every method module uses:

* ``image_bootstrap_counts``: the stratified resampling of images (how often each image is drawn);
* ``percentile_bounds`` / ``percentile_interval``: the interval of given replicates;
* ``paired_difference``: the interval of a difference of two statistics on the same resamples;
* ``runner_up_gap``: the interval of an argmax verdict ("model m scores highest"), as the gap to the
  best of the others on each resample;
* ``bootstrap_ci`` / ``mean_ci``: thin wrappers over ``scipy.stats.bootstrap`` (95 %, percentile
  method, a fixed seed, vectorised resampling) for a statistic of independent samples;
* ``seed_draws`` / ``pool_seeds`` / ``weighted_means`` / ``two_level_interval``: intervals that cover
  training seeds as well as images, a two-level bootstrap (resample the seeds, and within each drawn
  seed its images; owen2007pigeonhole). Every (1 + R, ...) array keeps the statistic on the data at
  index 0 and the R replicates after it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["Estimate", "image_bootstrap_counts", "percentile_bounds", "percentile_interval",
           "paired_difference", "runner_up_gap", "bootstrap_ci", "mean_ci",
           "seed_draws", "pool_seeds", "weighted_means", "two_level_interval"]


@dataclass(frozen=True)
class Estimate:
    """A statistic with its confidence interval: ``value`` in [``low``, ``high``] at ``level``."""

    value: float
    low: float
    high: float
    level: float = 0.95

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def format(self, fmt: str = ".3f") -> str:
        """``value [low, high]`` with the given number format, for tables."""
        return f"{self.value:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}]"


def image_bootstrap_counts(labels, n_resamples: int = 1000, seed: int = 0, draw: str = "multinomial") -> np.ndarray:
    """How often each image is drawn in each of ``n_resamples`` stratified bootstrap resamples.

    Returns an int array (n_resamples, N): within every class of ``labels`` (in sorted order) the
    class's n_c images are drawn n_c times with replacement, so class sizes stay fixed
    (efron1994bootstrap); one label for all images is the plain bootstrap. Both ``draw`` rules give
    this distribution from ``numpy.random.default_rng(seed)``, consuming it differently:
    ``"multinomial"`` takes each class's counts from ``rng.multinomial(n_c, 1 / n_c)``,
    ``"indices"`` draws n_c indices per resample with ``rng.integers`` and counts them.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    if draw not in ("multinomial", "indices"):
        raise ValueError(f"draw must be 'multinomial' or 'indices', got {draw!r}")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_resamples, len(labels)), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if draw == "multinomial":
            counts[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)), size=n_resamples)
        else:  # one bincount over all resamples: index r * n_c + i counts image i in resample r
            drawn = rng.integers(0, len(idx), size=(n_resamples, len(idx)))
            flat = (drawn + np.arange(n_resamples)[:, None] * len(idx)).ravel()
            counts[:, idx] = np.bincount(flat, minlength=n_resamples * len(idx)).reshape(n_resamples, len(idx))
    return counts


def percentile_bounds(replicates, level: float = 0.95, axis: int | None = None) -> tuple:
    """Lower and upper bound of the percentile interval: the quantiles q = (1 - level) / 2 and 1 - q
    of ``replicates`` (``numpy.nanquantile``, linear interpolation, NaN left out), along ``axis``
    (None: all of them, two floats; an int: two arrays). A slice without a finite value gives NaN."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    q = (1 - level) / 2
    low, high = np.nanquantile(np.asarray(replicates, dtype=np.float64), [q, 1 - q], axis=axis)
    return (float(low), float(high)) if axis is None else (low, high)


def percentile_interval(value, replicates, level: float = 0.95) -> Estimate:
    """``value`` with the percentile interval of its bootstrap ``replicates`` (``percentile_bounds``);
    no finite replicate (none drawn, or the statistic undefined on every one) gives a zero-width
    interval at ``value``."""
    replicates = np.asarray(replicates, dtype=np.float64)
    finite = replicates[np.isfinite(replicates)]
    if len(finite) == 0:
        return Estimate(float(value), float(value), float(value), level)
    return Estimate(float(value), *percentile_bounds(finite, level), level)


def paired_difference(value_a, replicates_a, value_b, replicates_b, level: float = 0.95) -> Estimate:
    """``value_a - value_b`` with the percentile interval of the replicate differences; a and b must
    come from the same resamples (same labels, seed and count), so the difference is paired."""
    replicates_a, replicates_b = np.asarray(replicates_a), np.asarray(replicates_b)
    if replicates_a.shape != replicates_b.shape:
        raise ValueError(f"the two statistics have different replicates: {replicates_a.shape} vs "
                         f"{replicates_b.shape}; a paired difference needs the same resamples")
    return percentile_interval(value_a - value_b, replicates_a - replicates_b, level)


def runner_up_gap(values: dict, replicates: dict, name, larger_is_better: bool = True,
                  level: float = 0.95) -> Estimate:
    """How far ``name`` leads the best of the others: theta_name - max_{m != name} theta_m (with
    ``larger_is_better=False``: min_{m != name} theta_m - theta_name), with the percentile interval of
    the same gap on each resample. ``values`` maps each candidate to its statistic, ``replicates`` to
    its bootstrap replicates on shared resamples (same length for all); a positive interval says
    ``name`` is best on (nearly) every resample, not only on the one sample drawn."""
    if name not in values or len(values) < 2:
        raise ValueError(f"name must be one of at least two candidates, got {name!r} among {list(values)}")
    if set(values) != set(replicates):
        raise ValueError(f"values and replicates name different candidates: {sorted(values)} vs {sorted(replicates)}")
    sign = 1.0 if larger_is_better else -1.0
    others = [m for m in values if m != name]
    reps = {m: sign * np.asarray(replicates[m], dtype=np.float64) for m in values}
    if len({r.shape for r in reps.values()}) != 1:
        raise ValueError("every candidate needs replicates on the same resamples (equal shapes)")
    value = sign * float(values[name]) - max(sign * float(values[m]) for m in others)
    gaps = reps[name] - np.max([reps[m] for m in others], axis=0)
    return percentile_interval(value, gaps, level)


def bootstrap_ci(samples, statistic: Callable = np.mean, *, n_resamples: int = 1000,
                 level: float = 0.95, seed: int = 0, paired: bool = False) -> Estimate:
    """Percentile bootstrap CI of ``statistic`` over the first axis of ``samples``.

    ``samples`` is one array (N, ...) or, with ``paired=True``, a tuple of arrays resampled
    together (same indices), e.g. (scores, labels) for an AUC. ``statistic`` must accept an
    ``axis`` keyword (numpy reductions do), as ``scipy.stats.bootstrap`` vectorises over it.
    Fewer than two samples raise ``ValueError``; constant samples give a zero-width interval.
    """
    data = tuple(np.asarray(s) for s in samples) if paired else (np.asarray(samples),)
    n = len(data[0])
    if n < 2:
        raise ValueError(f"a bootstrap interval needs at least two samples, got {n}")
    if any(not np.all(np.isfinite(d)) for d in data if np.issubdtype(d.dtype, np.number)):
        raise ValueError("samples contain NaN or Inf")
    value = float(statistic(*data, axis=0)) if paired else float(statistic(data[0], axis=0))
    if all(np.ptp(d, axis=0).max() == 0 for d in data):
        return Estimate(value, value, value, level)
    result = _scipy_stats.bootstrap(
        data, statistic, n_resamples=n_resamples, confidence_level=level, method="percentile",
        paired=paired, vectorized=True, random_state=np.random.default_rng(seed),
    )
    return Estimate(value, float(result.confidence_interval.low), float(result.confidence_interval.high), level)


def mean_ci(samples, **kwargs) -> Estimate:
    """Mean with its 95 % percentile-bootstrap interval (see ``bootstrap_ci``)."""
    return bootstrap_ci(np.asarray(samples, dtype=float), np.mean, **kwargs)


def seed_draws(n_seeds: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """Which training seeds each of ``n_resamples`` resamples uses: an int array (R, S) of seed
    indices drawn with replacement (all zeros for one seed). The generator is
    ``default_rng([seed, 1])``, a stream apart from ``image_bootstrap_counts(seed=seed)``."""
    if not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"n_seeds must be a positive int, got {n_seeds!r}")
    if not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    return np.random.default_rng([seed, 1]).integers(0, n_seeds, size=(n_resamples, n_seeds))


def pool_seeds(per_seed, draws) -> np.ndarray:
    """Two-level replicates from per-seed ones: ``per_seed`` (S, 1 + R, ...) holds each training
    seed's statistic (index 0) and its R image-bootstrap replicates; ``draws`` (R, S) comes from
    ``seed_draws``. Returns (1 + R, ...): index 0 is the mean over seeds of the statistic, index r
    the mean over the drawn seeds ``draws[r - 1]`` of their replicate r (NaN replicates left out;
    all NaN gives NaN). With one seed it returns ``per_seed[0]``. The pooling is linear, so a
    difference of pooled statistics is the pooled difference (paired intervals stay paired)."""
    per_seed, draws = np.asarray(per_seed, dtype=np.float64), np.asarray(draws)
    if per_seed.ndim < 2:
        raise ValueError(f"per_seed must have shape (seeds, 1 + resamples, ...), got {per_seed.shape}")
    n_seeds, n_resamples = per_seed.shape[0], per_seed.shape[1] - 1
    if draws.shape != (n_resamples, n_seeds) or (draws.size and (draws.min() < 0 or draws.max() >= n_seeds)):
        raise ValueError(f"draws must be seed indices of shape ({n_resamples}, {n_seeds}) for per_seed of shape "
                         f"{per_seed.shape}, got shape {draws.shape}")
    drawn = per_seed[draws, np.arange(1, n_resamples + 1)[:, None]]  # (R, S, ...): replicate r of each drawn seed
    finite = np.isfinite(drawn)
    with np.errstate(invalid="ignore", divide="ignore"):
        replicates = np.where(finite, drawn, 0).sum(axis=1) / finite.sum(axis=1)
    return np.concatenate([per_seed[:, 0].mean(axis=0, keepdims=True), replicates])


def weighted_means(values, counts, groups=None) -> np.ndarray:
    """The mean of per-unit ``values`` (..., N) on the data and on each bootstrap resample:
    ``counts`` (R, N) says how often each unit is drawn (``image_bootstrap_counts``). Returns
    (..., 1 + R) with index 0 the plain mean and index r sum_i c_ri v_i / sum_i c_ri. With ``groups``
    (N labels) every group weighs the same: the mean over groups of the group means."""
    values, counts = np.asarray(values, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or values.shape[-1] != counts.shape[1]:
        raise ValueError(f"values (..., N) and counts (R, N) must share N, got {values.shape} and {counts.shape}")
    if groups is None:
        groups = np.zeros(values.shape[-1], dtype=np.int64)
    groups = np.asarray(groups)
    if groups.shape != (values.shape[-1],):
        raise ValueError(f"groups must give one label per unit ({values.shape[-1]}), got shape {groups.shape}")
    per_group = []
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        weights = np.concatenate([np.ones((1, len(idx))), counts[:, idx]])  # (1 + R, n_g)
        per_group.append(values[..., idx] @ weights.T / weights.sum(axis=1))
    return np.mean(per_group, axis=0)


def two_level_interval(per_seed_values, labels=None, n_resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> Estimate:
    """Mean over training seeds of the per-seed mean of per-unit values, with a two-level percentile
    interval: each resample draws the seeds with replacement and, within every drawn seed, its units
    (stratified by ``labels``, classes weighted equally). ``per_seed_values`` is an array (S, N) when
    every seed scores the same units (crossed: the seeds share the image draws), or a list of S
    arrays when each seed has its own units (nested: e.g. the queries a model classifies correctly);
    ``labels`` is then None or a list of S label arrays. With one seed this is the image-bootstrap
    interval of the mean."""
    nested = isinstance(per_seed_values, (list, tuple))
    values = [np.asarray(v, dtype=np.float64) for v in per_seed_values] if nested else \
        np.asarray(per_seed_values, dtype=np.float64)
    if not nested and values.ndim != 2:
        raise ValueError(f"per_seed_values must be (seeds, units) or a list of per-seed arrays, got {values.shape}")
    if nested:
        labels = labels if labels is not None else [np.zeros(len(v), dtype=np.int64) for v in values]
        if len(labels) != len(values):
            raise ValueError(f"labels must be a list of {len(values)} per-seed label arrays, got {len(labels)}")
        per_seed = np.stack([weighted_means(v, image_bootstrap_counts(g, n_resamples, [seed, s]), g)
                             for s, (v, g) in enumerate(zip(values, labels))])
    else:
        labels = np.zeros(values.shape[1], dtype=np.int64) if labels is None else np.asarray(labels)
        per_seed = weighted_means(values, image_bootstrap_counts(labels, n_resamples, seed), labels)
    pooled = pool_seeds(per_seed, seed_draws(len(per_seed), n_resamples, seed))
    return percentile_interval(pooled[0], pooled[1:], level)
