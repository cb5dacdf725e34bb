"""Confidence intervals shared by every chapter: percentile bootstrap over images or pairs.

Thin wrappers over ``scipy.stats.bootstrap`` so every table reports intervals the same way
(95 %, percentile method, a fixed seed, vectorised resampling).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats as _scipy_stats

__all__ = ["Estimate", "bootstrap_ci", "mean_ci"]


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
