"""Similar classes from internal representations (seed 002, Park; METHODS.md "Label similarity").

GAP statistics. For every convolution l and channel c, Eq. 2 of the seed:

    A_{l,c}(x) = (1 / H'W') sum_{ij} ReLU(C_{l,c}(x)_{ij}),

concatenated over layers (Eq. 3). ``where="conv"`` hooks the raw convolution output, before its
BatchNorm, as the public reference code does; ``where="bn"`` hooks the BatchNorm that follows it.
The default layer list is every ``nn.Conv2d`` except the residual ``downsample`` projections (the
reference's list: 7,616 channels for ResNet-34).

Three class-similarity matrices, all cosines between class vectors:
  * Welch (the method, Sec. 3.2): s^c_k = Welch's t of class c's A_k against all other images,
    t = (m_c - m_r) / sqrt(v_c / n_c + v_r / n_r), as ``scipy.stats.ttest_ind(equal_var=False)``;
  * pure GAP (Eq. 4-6): the class means of A;
  * hidden state (Sec. 4): the class means of the real penultimate features (the classifier's
    input). The reference notebook computes this one from the GAP means by mistake, which makes it
    identical to pure GAP; here it is the classifier's input.
Top-k similar classes exclude the class itself (the reference's ranking starts with it).

Welch's t needs only per-class count, sum and sum of squares per channel (the rest of the images
is the total minus the class), so :class:`ClassStats` accumulates them in one streaming pass, in
float64, with memory O(classes x channels).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import stats as _scipy_stats
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import data, extract, models
from .devices import get_device, place
from .similarity import cosine_matrix
from .stats import Estimate

__all__ = [
    "WHERE", "conv_layer_names", "GapStatsHook", "GapFeatures", "gap_features",
    "ClassStats", "welch_from_sums", "cosine_rows", "similarity_matrices", "top_k_similar",
    "spearman_agreement", "precision_at_k", "chance_precision", "Agreement", "difference_estimate",
    "bootstrap_agreement", "FolderStats", "image_folder_stats",
]

WHERE = ("conv", "bn")


# --------------------------------------------------------------------------------------------
# GAP statistics of every conv layer (forward hooks)
# --------------------------------------------------------------------------------------------

def conv_layer_names(model: nn.Module, layers: Sequence[str] | None = None) -> list[str]:
    """Names of the convolutions whose GAP statistics are taken, in forward (module) order.

    ``layers=None``: every ``nn.Conv2d`` outside a ``downsample`` projection (the reference's
    choice). Otherwise a list of module names or ``fnmatch`` patterns (``"layer4.*"``) matched
    against all ``nn.Conv2d`` names; a pattern that matches no convolution raises ValueError.
    """
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer")
    if layers is None:
        return [name for name in convs if "downsample" not in name.split(".")]
    if isinstance(layers, str) or not len(layers):
        raise ValueError(f"layers must be None or a non-empty list of names/patterns, got {layers!r}")
    unmatched = [p for p in layers if not fnmatch.filter(convs, p)]
    if unmatched:
        raise ValueError(f"layers {unmatched} match no nn.Conv2d of {type(model).__name__}; "
                         f"convolutions are named like {convs[:3]} ... {convs[-2:]}")
    return [name for name in convs if any(fnmatch.fnmatchcase(name, p) for p in layers)]


def _bn_after(model: nn.Module, conv_name: str) -> str:
    """The BatchNorm that follows ``conv_name`` in torchvision's ResNet naming (convN -> bnN)."""
    head, _, last = conv_name.rpartition(".")
    bn_name = (head + "." if head else "") + last.replace("conv", "bn", 1)
    module = dict(model.named_modules()).get(bn_name)
    conv = dict(model.named_modules())[conv_name]
    if not isinstance(module, nn.BatchNorm2d) or module.num_features != conv.out_channels:
        raise ValueError(f"where='bn' needs a BatchNorm2d named {bn_name!r} after conv {conv_name!r}; "
                         "use where='conv' for this model")
    return bn_name


class GapStatsHook:
    """Forward hooks that record GAP statistics and the classifier's input; a context manager.

    On entering, one hook per hooked module stores ReLU-then-spatial-mean of its output
    (Eq. 2) for ``where`` in ("conv", "bn"), and a pre-hook on ``classifier`` stores its input
    (the hidden state). ``collect()`` returns and clears the last forward's values; leaving the
    ``with`` block removes every hook, also on error.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None,
                 where: Sequence[str] = WHERE, classifier: str | None = "fc"):
        where = (where,) if isinstance(where, str) else tuple(where)
        if not where or any(w not in WHERE for w in where):
            raise ValueError(f"where must be a subset of {WHERE}, got {where!r}")
        self.model = model
        self.where = where
        self.layers = conv_layer_names(model, layers)
        modules = dict(model.named_modules())
        self.hooked = {w: [name if w == "conv" else _bn_after(model, name) for name in self.layers]
                       for w in where}
        self.channels = [modules[name].out_channels for name in self.layers]
        if classifier is not None and classifier not in modules:
            raise ValueError(f"classifier {classifier!r} is not a module of {type(model).__name__}; "
                             "pass the name of the final linear layer (or None)")
        self.classifier = classifier
        self._store: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _gap_hook(self, key: str):
        def hook(module, inputs, output):
            if key in self._store:
                raise ValueError(f"module {key.split(':', 1)[1]!r} ran twice in one forward; hook a module that runs once")
            self._store[key] = F.relu(output.detach()).mean(dim=(2, 3)).float()
        return hook

    def _hidden_hook(self, module, inputs):
        self._store["hidden"] = inputs[0].detach().flatten(1).float()

    def __enter__(self) -> "GapStatsHook":
        modules = dict(self.model.named_modules())
        for w, names in self.hooked.items():
            for name in names:
                self._handles.append(modules[name].register_forward_hook(self._gap_hook(f"{w}:{name}")))
        if self.classifier is not None:
            self._handles.append(modules[self.classifier].register_forward_pre_hook(self._hidden_hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._store.clear()

    def collect(self) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """``({where: B x K GAP statistics}, B x D hidden state or None)`` of the last forward."""
        missing = [n for w, names in self.hooked.items() for n in names if f"{w}:{n}" not in self._store]
        if missing:
            raise ValueError(f"layers {missing[:3]} did not run in the forward pass")
        gaps = {w: torch.cat([self._store[f"{w}:{n}"] for n in names], dim=1) for w, names in self.hooked.items()}
        hidden = self._store.get("hidden")
        if self.classifier is not None and hidden is None:
            raise ValueError(f"classifier {self.classifier!r} did not run in the forward pass")
        self._store.clear()
        return gaps, hidden


@dataclass
class GapFeatures:
    """Per-image GAP statistics ``gap[where]`` (N x K), hidden state (N x D), logits (N x C)."""

    gap: dict[str, torch.Tensor]
    hidden: torch.Tensor | None
    logits: torch.Tensor
    layers: list[str]
    channels: list[int]


def gap_features(model: nn.Module, images: torch.Tensor, layers: Sequence[str] | None = None,
                 where: Sequence[str] = WHERE, classifier: str | None = "fc", batch_size: int = 64,
                 device: str | torch.device = "auto", progress: bool = True) -> GapFeatures:
    """GAP statistics (Eq. 2-3) of ``images`` for each ``where``, the hidden state and the logits.

    One batched forward per batch in eval mode (the model's modes are restored); ``images`` as
    for ``extract.representations`` (checked by ``extract.as_image_tensor``, each batch made input
    by ``extract.model_input``: uint8 or 0-1 float for a model from ``models.load_model``).
    """
    images = extract.as_image_tensor(images)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dev = get_device(device)
    fmt = place(model, dev, backward_enters_conv=False)
    modes = {m: m.training for m in model.modules()}
    parts: dict[str, list[torch.Tensor]] = {}
    try:
        model.eval()
        with torch.inference_mode(), GapStatsHook(model, layers, where, classifier) as hook:
            for start in tqdm(range(0, len(images), batch_size), desc="GAP statistics", unit="batch",
                              disable=not progress):
                x = extract.model_input(model, images[start:start + batch_size], dev)
                logits = model(x.contiguous(memory_format=fmt))
                gaps, hidden = hook.collect()
                for w, g in gaps.items():
                    parts.setdefault(w, []).append(g.cpu())
                parts.setdefault("logits", []).append(logits.float().cpu())
                if hidden is not None:
                    parts.setdefault("hidden", []).append(hidden.cpu())
            layer_names, channels = list(hook.layers), list(hook.channels)
    finally:
        for m, flag in modes.items():
            m.training = flag
    return GapFeatures(gap={w: torch.cat(parts[w]) for w in hook.where},
                       hidden=torch.cat(parts["hidden"]) if "hidden" in parts else None,
                       logits=torch.cat(parts["logits"]), layers=layer_names, channels=channels)


# --------------------------------------------------------------------------------------------
# Streaming per-class statistics and Welch's t
# --------------------------------------------------------------------------------------------

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

    Values are shifted by the first sample seen (variance is shift-invariant; this keeps the
    sum-of-squares formula accurate when means are large and keeps constant channels exactly
    constant). Memory is O(classes x channels), whatever the number of images.
    """

    def __init__(self, n_classes: int, n_channels: int):
        if not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an int >= 2, got {n_classes!r}")
        if not isinstance(n_channels, int) or n_channels < 1:
            raise ValueError(f"n_channels must be a positive int, got {n_channels!r}")
        self.count = np.zeros(n_classes, dtype=np.int64)
        self.sum = np.zeros((n_classes, n_channels))
        self.sumsq = np.zeros((n_classes, n_channels))
        self.shift: np.ndarray | None = None

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


# --------------------------------------------------------------------------------------------
# Similarity matrices, rankings and their agreement with a ground truth
# --------------------------------------------------------------------------------------------

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

    def estimate(self, method: str, metric: str) -> Estimate:
        """The point value with its percentile interval."""
        return _percentile(self.point[(method, metric)], self.samples[(method, metric)], self.level)


def _percentile(value: float, samples: np.ndarray, level: float) -> Estimate:
    alpha = (1 - level) / 2
    low, high = np.nanquantile(samples, [alpha, 1 - alpha])
    return Estimate(float(value), float(low), float(high), level)



def difference_estimate(a: Agreement, method_a: str, b: Agreement, method_b: str, metric: str) -> Estimate:
    """Paired difference ``a[method_a] - b[method_b]`` of one metric with its percentile interval."""
    diff = a.samples[(method_a, metric)] - b.samples[(method_b, metric)]
    return _percentile(a.point[(method_a, metric)] - b.point[(method_b, metric)], diff, a.level)


def _stratified_weights(labels: np.ndarray, n_resamples: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class: (image indices, n_resamples x n_c resampling counts within the class)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in range(labels.max() + 1):
        idx = np.flatnonzero(labels == c)
        draws = rng.integers(0, len(idx), size=(n_resamples, len(idx)))
        flat = (draws + np.arange(n_resamples)[:, None] * len(idx)).ravel()
        counts = np.bincount(flat, minlength=n_resamples * len(idx)).reshape(n_resamples, len(idx))
        out.append((idx, counts.astype(np.float64)))  # float: BLAS products below
    return out


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
    groups = _stratified_weights(y, n_resamples, seed)
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


# --------------------------------------------------------------------------------------------
# The paper path: an ImageNet-style image folder, streamed class by class
# --------------------------------------------------------------------------------------------

@dataclass
class FolderStats:
    """Streamed statistics of an image folder: class names, ImageNet indices, ClassStats, thumbnails."""

    class_names: list[str]
    imagenet_indices: list[int]
    gap: dict[str, ClassStats]
    hidden: ClassStats
    thumbnails: torch.Tensor
    n_images: int
    accuracy: float


def image_folder_stats(root, model: nn.Module, class_names: Sequence[str] | None = None,
                       where: Sequence[str] = ("conv",), batch_size: int = 32, resize: int = 256,
                       crop: int = 224, device: str | torch.device = "auto", progress: bool = True) -> FolderStats:
    """Stream ``root/<class>/<image>`` class by class through ``model``: per-class GAP and hidden sums.

    Each image is resized so its shorter side is ``resize`` and centre-cropped to ``crop`` (the
    reference's Resize(256) + CenterCrop(224); bicubic here). Only one class's images are in memory
    at a time; ``accuracy`` is top-1 against the folders' ImageNet indices
    (``models.imagenet_class_indices``).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; pass an ImageNet-style folder "
                                "(one sub-folder per class, e.g. the ImageNet validation set)")
    if class_names is None:
        class_names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    class_names = list(class_names)
    if len(class_names) < 2:
        raise ValueError(f"image folder {root} needs at least two class folders, found {class_names}")
    categories = getattr(getattr(model, "gradsim_info", None), "class_names", None)
    if not categories:
        raise ValueError("model must come from models.load_model (its ImageNet class names are needed)")
    indices = models.imagenet_class_indices(class_names, categories)
    if not 0 < crop <= resize:
        raise ValueError(f"need 0 < crop <= resize, got crop={crop}, resize={resize}")
    off = (resize - crop) // 2
    gap_stats: dict[str, ClassStats] = {}
    hidden_stats = None
    thumbs, n_images, correct = [], 0, 0
    for label, name in enumerate(tqdm(class_names, desc="classes", unit="class", disable=not progress)):
        folder = data.load_image_folder(root, image_size=resize, class_names=[name])
        images = folder.images[:, :, off:off + crop, off:off + crop]
        feats = gap_features(model, images, where=where, batch_size=batch_size, device=device, progress=False)
        labels = torch.full((len(images),), label, dtype=torch.long)
        for w, g in feats.gap.items():
            gap_stats.setdefault(w, ClassStats(len(class_names), g.shape[1])).update(g, labels)
        if hidden_stats is None:
            hidden_stats = ClassStats(len(class_names), feats.hidden.shape[1])
        hidden_stats.update(feats.hidden, labels)
        thumbs.append(F.interpolate(images[:1].float(), size=(96, 96), mode="bilinear", antialias=True).round().byte())
        n_images += len(images)
        correct += int((feats.logits.argmax(1) == indices[label]).sum())
    return FolderStats(class_names=class_names, imagenet_indices=indices, gap=gap_stats, hidden=hidden_stats,
                       thumbnails=torch.cat(thumbs), n_images=n_images, accuracy=correct / n_images)
