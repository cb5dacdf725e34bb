"""Cosine similarity of representations, vectorised (seed 000's Cos_Sim tables).

cos(a, b) = <a, b> / (||a|| ||b||). A zero vector has no direction: its cosine with anything is
defined as 0 (as scikit-learn's ``cosine_similarity`` does), never NaN.
"""
from __future__ import annotations

import torch

__all__ = [
    "cosine_matrix",
    "unordered_pairs",
    "within_class_cosine",
    "within_class_cosine_from_matrix",
    "within_class_agreement",
    "predicted_label_cosine",
]


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


def _check_labels(labels: torch.Tensor, n: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must be a 1-D tensor with one label per sample ({n}), got shape {tuple(labels.shape)}")
    return labels


def within_class_cosine(x: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """Mean cosine over all unordered pairs of distinct samples of each class.

    Returns ``{class: mean cosine}``; a class with fewer than two samples has no pair and raises.
    """
    return within_class_cosine_from_matrix(cosine_matrix(x), labels)


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
