"""Streaming per-class statistics and class-vs-rest Welch t (seed 002, Park; METHODS.md "Label similarity").

The method's class vector (Sec. 3.2) is s^c_k = Welch's t of class c's feature k against all other
images, t = (m_c - m_r) / sqrt(v_c / n_c + v_r / n_r), as ``scipy.stats.ttest_ind(equal_var=False)``.
It needs only per-class count, sum and sum of squares per channel (the rest of the images is the
total minus the class), so :class:`ClassStats` accumulates them in one streaming pass, in float64,
with memory O(classes x channels). Across processes (DESIGN.md section 5c) the ranks share one
shift and :meth:`ClassStats.all_reduce` sums count, sum and sum of squares over them.
"""
from __future__ import annotations

import numpy as np
import torch

from . import distributed

__all__ = ["welch_from_sums", "ClassStats"]


def welch_from_sums(count, sums, sumsq):
    """Class-vs-rest Welch t from per-class sufficient statistics (leading batch axes allowed).

    count (..., C), sums and sumsq (..., C, K) of (shifted) values. For class c:
    n1 = count_c, m1 = S_c / n1, v1 = (Q_c - S_c^2 / n1) / (n1 - 1); the rest uses the totals
    minus class c. t = (m1 - m2) / sqrt(v1 / n1 + v2 / n2). A zero denominator (the channel is
    constant within the class and within the rest) gives t = 0, never NaN or Inf. Every class and
    every rest must hold at least two images (else ValueError). numpy input: float64, numpy
    output; torch input keeps its dtype and device (the bootstrap uses float32).
    """
    as_numpy = not isinstance(sums, torch.Tensor)
    if as_numpy:
        count, sums, sumsq = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (count, sums, sumsq))
    count = torch.as_tensor(count, dtype=sums.dtype, device=sums.device)
    n1 = count[..., :, None]
    n2 = count.sum(dim=-1, keepdim=True)[..., None] - n1
    if (n1 < 2).any() or (n2 < 2).any():
        raise ValueError("Welch's t needs at least two images in every class and in the rest; "
                         f"class counts are {count.reshape(-1, count.shape[-1])[0].int().tolist()}")
    s2 = sums.sum(dim=-2, keepdim=True) - sums
    m1, m2 = sums / n1, s2 / n2
    v1 = (sumsq - sums * m1).clamp_(min=0).div_(n1 * (n1 - 1))           # v1 / n1
    v2 = (sumsq.sum(dim=-2, keepdim=True) - sumsq).sub_(s2 * m2).clamp_(min=0).div_(n2 * (n2 - 1))
    denom = v1.add_(v2).sqrt_()
    diff = m1.sub_(m2)
    t = torch.where(denom > 0, diff / denom.clamp(min=torch.finfo(denom.dtype).tiny), torch.zeros_like(diff))
    return t.numpy() if as_numpy else t


class ClassStats:
    """Streaming per-class count, sum and sum of squares per channel, accumulated in float64.

    Values are shifted by ``shift`` (K,), or when None by the first sample seen (variance is
    shift-invariant; this keeps the sum-of-squares formula accurate when means are large and keeps
    constant channels exactly constant). Statistics of several processes add up only when they
    share the shift: give every rank the same ``shift`` (e.g. rank 0's first sample, broadcast),
    then :meth:`all_reduce`. Memory is O(classes x channels), whatever the number of images.
    """

    def __init__(self, n_classes: int, n_channels: int, shift=None):
        if not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
        if not isinstance(n_channels, int) or n_channels < 1:
            raise ValueError(f"n_channels must be a positive int, got {n_channels!r}")
        self.count = np.zeros(n_classes, dtype=np.int64)
        self.sum = np.zeros((n_classes, n_channels))
        self.sumsq = np.zeros((n_classes, n_channels))
        self.shift: np.ndarray | None = None
        if shift is not None:
            shift = np.array(torch.as_tensor(shift).detach().cpu().numpy() if isinstance(shift, torch.Tensor)
                             else shift, dtype=np.float64)
            if shift.shape != (n_channels,) or not np.isfinite(shift).all():
                raise ValueError(f"shift must be {n_channels} finite values, got shape {shift.shape}")
            self.shift = shift

    @property
    def n_classes(self) -> int:
        return len(self.count)

    def update(self, features, labels) -> "ClassStats":
        """Add a chunk of ``features`` (B x K) with integer ``labels`` (B,) in [0, n_classes)."""
        x = torch.as_tensor(features).detach().cpu().numpy() if isinstance(features, torch.Tensor) \
            else np.asarray(features)
        y = torch.as_tensor(labels).cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if x.ndim != 2 or x.shape[1] != self.sum.shape[1]:
            raise ValueError(f"features must be B x {self.sum.shape[1]}, got shape {x.shape}")
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"labels must be {x.shape[0]} integer class indices, got shape {y.shape}, dtype {y.dtype}")
        if len(y) and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"labels must lie in [0, {self.n_classes}), got {y.min()}..{y.max()}")
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).any(axis=1).sum())
            raise ValueError(f"features contain NaN or Inf ({bad} of {len(x)} rows)")
        if not len(y):
            return self
        if self.shift is None:
            self.shift = x[0].astype(np.float64)
        xs = torch.from_numpy(x.astype(np.float64) - self.shift)
        index = torch.from_numpy(y.astype(np.int64))
        self.count += np.bincount(y, minlength=self.n_classes)
        torch.from_numpy(self.sum).index_add_(0, index, xs)  # in place on the float64 arrays
        torch.from_numpy(self.sumsq).index_add_(0, index, xs.mul_(xs))
        return self

    def all_reduce(self) -> "ClassStats":
        """Sum count, sum and sum of squares over all ranks, in place (a no-op in one process).

        Every rank must hold the same ``shift`` (given to the constructor), else ValueError on every
        rank: sums shifted by different first samples cannot be added.
        """
        shifts = distributed.all_gather_object(self.shift)
        if len(shifts) > 1 and (any(s is None for s in shifts)
                                or not all(np.array_equal(s, shifts[0]) for s in shifts)):
            raise ValueError("ClassStats.all_reduce needs the same shift on every rank; pass "
                             "shift= (e.g. rank 0's first sample, broadcast) to every rank's ClassStats")
        for array in (self.count, self.sum, self.sumsq):
            distributed.all_reduce_sum(torch.from_numpy(array))  # in place on the numpy arrays
        return self

    def state(self) -> dict[str, torch.Tensor]:
        """count, sum, sum of squares and shift as tensors (for ``torch.save``; see :meth:`from_state`)."""
        if self.shift is None:
            raise ValueError("ClassStats has seen no sample yet (no shift); nothing to save")
        return {"count": torch.from_numpy(self.count.copy()), "sum": torch.from_numpy(self.sum.copy()),
                "sumsq": torch.from_numpy(self.sumsq.copy()), "shift": torch.from_numpy(self.shift.copy())}

    @classmethod
    def from_state(cls, state: dict) -> "ClassStats":
        """The statistics :meth:`state` gave."""
        stats = cls(len(state["count"]), int(state["sum"].shape[1]), shift=state["shift"])
        stats.count[:] = state["count"].numpy()
        stats.sum[:] = state["sum"].numpy()
        stats.sumsq[:] = state["sumsq"].numpy()
        return stats

    @classmethod
    def from_features(cls, features, labels, n_classes: int | None = None) -> "ClassStats":
        """Statistics of all rows of ``features`` at once (``n_classes``: max label + 1 if None)."""
        y = torch.as_tensor(labels)
        n_classes = int(y.max()) + 1 if n_classes is None else n_classes
        return cls(n_classes, int(np.shape(features)[1])).update(features, labels)

    def _check(self, minimum: int) -> None:
        small = np.flatnonzero(self.count < minimum)
        if small.size:
            what = "no images" if self.count[small[0]] == 0 else f"{self.count[small[0]]} image(s)"
            raise ValueError(f"class {int(small[0])} has {what}; every class needs at least {minimum} "
                             f"(classes below that: {small.tolist()[:10]})")

    def means(self) -> np.ndarray:
        """Class means (C x K); an empty class raises ValueError."""
        self._check(1)
        return self.shift + self.sum / self.count[:, None]

    def welch_t(self) -> np.ndarray:
        """Class-vs-rest Welch t (C x K); a class with fewer than two images raises ValueError."""
        self._check(2)
        return welch_from_sums(self.count, self.sum, self.sumsq)

