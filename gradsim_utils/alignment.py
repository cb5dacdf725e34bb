"""Gradient-alignment learning, Hessian-vector products and Gaussian gradient MI (seed 001).

Seed 001 proposes to make the input gradients g_i = d L(f(x_i), y_i) / d x_i of same-class images
alike, with S_c the pairs (i, j), i < j, of class c:

    Euclidean:  L_grad = sum_c sum_{(i,j) in S_c} ||g_i - g_j||^2
    cosine:     L_grad = sum_c sum_{(i,j) in S_c} (1 - g_i.g_j / (||g_i|| ||g_j||))
    total:      L_total = L_cls + lambda L_grad,

trained by differentiating through g (double backward). Both forms are computed here from one Gram
matrix G = g g^T and a same-class pair mask, with no loop over pairs: ||g_i - g_j||^2 =
G_ii + G_jj - 2 G_ij. The Hessian-vector product H v = d/dx (dL/dx . v) is Pearlmutter's trick
(1994). The Gaussian mutual information of two paired sets is seed 001's closed form
I = 1/2 ln(|S_X| |S_Y| / |S_XY|), taken on a reduced dimension (PCA) because gradients have far
more dimensions than there are samples.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from torch import nn

from . import checks, data, extract, models, nets, provenance, similarity, training
from .cache import cache_key
from .devices import get_device, place
from .profiles import TINY_MODELS
from .stats import weighted_means

__all__ = [
    "FORMS", "CODE_VERSION", "same_class_pairs", "gradient_alignment_loss",
    "hvp", "gaussian_mutual_information",
    "fit_aligned", "train_aligned", "aligned_model", "start_model", "split_per_class", "inner_conv",
    "input_hessian_top_eigenvalue", "alignment_measures",
]

FORMS = ("euclidean", "cosine")
REDUCTIONS = ("sum", "mean")
HVP_METHODS = ("double-backward", "forward-over-reverse")
# Bump when anything below changes the trained weights or the reported metrics.
CODE_VERSION = "gradient-alignment-4"  # 3: one torch thread per core; 4: the machine recorded in the metrics


def _check_grads_labels(grads: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(grads, torch.Tensor) or grads.ndim < 2 or grads.shape[0] == 0:
        got = tuple(grads.shape) if isinstance(grads, torch.Tensor) else type(grads).__name__
        raise ValueError(f"grads must be a tensor of shape (N, ...) with N >= 1 samples, got {got}")
    labels = torch.as_tensor(labels, device=grads.device)
    if labels.shape != (grads.shape[0],) or labels.is_floating_point():
        raise ValueError(f"labels must be {grads.shape[0]} integer labels, got shape {tuple(labels.shape)} "
                         f"and dtype {labels.dtype}")
    return grads.reshape(grads.shape[0], -1), labels


def same_class_pairs(labels: torch.Tensor) -> torch.Tensor:
    """Boolean N x N mask of the seed's S_c, all c together: i < j and labels[i] == labels[j]."""
    labels = torch.as_tensor(labels)
    same = labels[:, None] == labels[None, :]
    return torch.triu(same, diagonal=1)


def gradient_alignment_loss(grads: torch.Tensor, labels: torch.Tensor, form: str = "cosine",
                            reduction: str = "mean") -> torch.Tensor:
    """Seed 001's L_grad over all same-class pairs of a batch, from one Gram matrix.

    grads: (N, ...) input gradients (any shape per sample, flattened); labels: (N,) class labels.
    form "euclidean": ||g_i - g_j||^2 = G_ii + G_jj - 2 G_ij; form "cosine": 1 - cos(g_i, g_j),
    where a zero gradient has cosine 0 with everything (no NaN). reduction "sum" is the seed's
    double sum; "mean" divides by the number of same-class pairs, so lambda does not scale with
    the batch size. Differentiable (through ``grads``, e.g. with ``create_graph=True``). A batch
    with no same-class pair gives 0.
    """
    checks.one_of(FORMS, form=form)
    checks.one_of(REDUCTIONS, reduction=reduction)
    flat, labels = _check_grads_labels(grads, labels)
    mask = same_class_pairs(labels)
    if form == "cosine":
        unit = F.normalize(flat, dim=1, eps=1e-12)
        per_pair = 1.0 - unit @ unit.T
    else:
        gram = flat @ flat.T
        sq = gram.diagonal()
        per_pair = sq[:, None] + sq[None, :] - 2.0 * gram
    total = per_pair[mask].sum()
    if reduction == "mean":
        total = total / mask.sum().clamp(min=1)
    return total


def _as_tuple(value, name: str) -> tuple[torch.Tensor, ...]:
    items = (value,) if isinstance(value, torch.Tensor) else tuple(value)
    if not items or not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in items):
        raise ValueError(f"{name} must be a float tensor or a non-empty sequence of float tensors")
    return items


def hvp(func, inputs, vectors, method: str = "double-backward"):
    """Hessian-vector product H v of the scalar ``func(*inputs)`` at ``inputs``, without forming H.

    Pearlmutter's trick: H v = d/dx (dL/dx . v). "double-backward" differentiates the dot product of
    the gradient (built with ``create_graph=True``) with v by reverse mode; "forward-over-reverse"
    pushes v forward through the gradient function (``torch.func.jvp`` of ``torch.func.grad``).
    Both cost a small constant times one gradient. ``inputs`` and ``vectors``: one tensor or
    matching sequences of tensors; the result has the same structure as ``inputs``.
    """
    checks.one_of(HVP_METHODS, method=method)
    single = isinstance(inputs, torch.Tensor)
    xs, vs = _as_tuple(inputs, "inputs"), _as_tuple(vectors, "vectors")
    if len(xs) != len(vs) or any(x.shape != v.shape for x, v in zip(xs, vs)):
        raise ValueError(f"vectors must match inputs in number and shape: {[tuple(x.shape) for x in xs]} vs "
                         f"{[tuple(v.shape) for v in vs]}")
    if method == "forward-over-reverse":
        grad_fn = torch.func.grad(lambda *args: func(*args), argnums=tuple(range(len(xs))))
        _, out = torch.func.jvp(grad_fn, xs, vs)
    else:
        with torch.enable_grad():
            leaves = tuple(x.detach().requires_grad_(True) for x in xs)
            value = func(*leaves)
            if value.numel() != 1:
                raise ValueError(f"func must return a scalar, got shape {tuple(value.shape)}")
            grads = torch.autograd.grad(value, leaves, create_graph=True)
            dot = sum((g * v).sum() for g, v in zip(grads, vs))
            out = torch.autograd.grad(dot, leaves, allow_unused=True)
            out = tuple(torch.zeros_like(x) if o is None else o for x, o in zip(leaves, out))
    return out[0] if single else tuple(out)


def _pca_standardised(x: np.ndarray, dim: int) -> np.ndarray:
    """The first ``dim`` principal-component scores of ``x``, each scaled to unit variance."""
    scores = PCA(n_components=dim, svd_solver="auto", random_state=0).fit_transform(x)
    std = scores.std(axis=0)
    if np.any(std <= 0):
        raise ValueError("a principal component has zero variance; lower dim")
    return scores / std


def gaussian_mutual_information(a, b, dim: int | None = None, shrinkage: str | float | None = "ledoit-wolf") -> float:
    """Seed 001's Gaussian MI, I = 1/2 (ln|S_a| + ln|S_b| - ln|S_ab|), in nats, on a reduced dimension.

    a (n, d_a) and b (n, d_b) are paired samples (row k of a goes with row k of b). Each set is
    reduced to its first ``dim`` principal components, standardised (MI is invariant to invertible
    linear maps of each set), and the joint 2 dim x 2 dim covariance S_ab is estimated, its diagonal
    blocks being S_a and S_b. ``dim=None`` takes min(d_a, d_b, n // 4): at least four samples per
    dimension of each set. ``shrinkage``: "ledoit-wolf" (scikit-learn's estimate, towards the
    identity, which biases MI down: a conservative estimate), a fixed weight in [0, 1], or None
    (sample covariance). Log-determinants by ``slogdet``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    if len(a) != len(b):
        raise ValueError(f"a and b must be paired (same number of rows), got {len(a)} and {len(b)}")
    n = len(a)
    if n < 8:
        raise ValueError(f"need at least 8 paired samples for a Gaussian MI estimate, got {n}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a or b contains NaN or Inf")
    limit = min(a.shape[1], b.shape[1], n // 4)
    if dim is None:
        dim = limit
    if not isinstance(dim, (int, np.integer)) or not 1 <= dim <= limit:
        raise ValueError(f"dim must be an int in [1, {limit}] (<= each set's dimension and n // 4), got {dim!r}")
    joint = np.hstack([_pca_standardised(a, int(dim)), _pca_standardised(b, int(dim))])
    if shrinkage == "ledoit-wolf":
        cov = LedoitWolf(assume_centered=False).fit(joint).covariance_
    elif shrinkage is None or (isinstance(shrinkage, (int, float)) and 0 <= shrinkage <= 1):
        cov = np.cov(joint, rowvar=False)
        if shrinkage:
            cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
    else:
        raise ValueError(f"shrinkage must be 'ledoit-wolf', a number in [0, 1] or None, got {shrinkage!r}")
    d = int(dim)
    logdets = [np.linalg.slogdet(m) for m in (cov[:d, :d], cov[d:, d:], cov)]
    if any(sign <= 0 for sign, _ in logdets):
        raise ValueError("a covariance matrix is singular; lower dim or use shrinkage")
    return float(0.5 * (logdets[0][1] + logdets[1][1] - logdets[2][1]))


# ---------------------------------------------------------------------------------------------
# training with L_cls + lambda L_grad


def _aligned_key(name, form, lam, seed, data_seed, image_size, n_train_per_class, n_analysis_per_class,
                 epochs, batch_size, base_width) -> str:
    return cache_key(
        step="gradient-alignment", code_version=CODE_VERSION, training_version=training.CODE_VERSION,
        name=name, form=form, lam=float(lam), seed=seed, data_seed=data_seed, image_size=image_size,
        n_train_per_class=n_train_per_class, n_analysis_per_class=n_analysis_per_class, epochs=epochs,
        batch_size=batch_size, base_width=base_width, recipe=training.RECIPE, mean=data.MEAN,
        std=data.STD, benchmark=training.benchmark_fingerprint(data_seed, image_size),
    )


def fit_aligned(build, images: torch.Tensor, labels: torch.Tensor, *, form: str = "cosine", lam: float = 0.0,
                seed: int = 0, epochs: int = 2, batch_size: int = 64, device="auto", desc: str | None = None,
                eval_images: torch.Tensor | None = None) -> tuple[nn.Module, dict]:
    """Train ``build()`` (called under ``torch.manual_seed(seed)``) on uint8 ``images`` with
    L_total = L_cls + lam * L_grad (seed 001).

    The optimiser and schedule are ``training.py``'s (AdamW + one-cycle, label-smoothed L_cls;
    ``training.RECIPE``). L_grad is :func:`gradient_alignment_loss` (``form``, mean over the batch's
    same-class pairs) of the input gradients of the plain cross-entropy, built with
    ``create_graph=True``; ``lam == 0`` skips the double backward, so training times compare.
    ``seed`` sets initialisation and batch order. Returns the model and its training metrics
    (seconds, mean L_cls and L_grad of the last epoch, threads, machine; ``preds`` of
    ``eval_images`` when given). Training runs in the contiguous memory format (``training.fit``,
    ``devices.memory_format``): with channels-last, the double backward of a tiny ResNet of base width
    4 corrupted the heap on CPU ("double free or corruption"), the oneDNN bug of DESIGN.md 5b.
    """
    checks.one_of(FORMS, form=form)
    if not (isinstance(lam, (int, float)) and np.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    dev = get_device(device)
    generator = torch.Generator().manual_seed(seed)

    def aligned_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if lam > 0:
            grads, logits = extract.input_gradients(model, x, y, create_graph=True)
            l_grad = gradient_alignment_loss(grads, y, form=form, reduction="mean")
        else:
            logits, l_grad = model(x), torch.zeros((), device=x.device)
        l_cls = F.cross_entropy(logits, y, label_smoothing=training.RECIPE["label_smoothing"])
        return l_cls + lam * l_grad, torch.stack([l_cls.detach(), l_grad.detach()])

    with torch.random.fork_rng(devices=[]), training.cpu_threads():
        torch.manual_seed(seed)
        model = build()
        seconds, (cls_loss, grad_loss), _ = training.fit(
            model, images, labels, epochs=epochs, batch_size=batch_size, generator=generator,
            device=dev, desc=desc, step_loss=aligned_step)
        metrics = {"train_seconds": seconds, "final_cls_loss": cls_loss, "final_grad_loss": grad_loss,
                   "threads": torch.get_num_threads(), "machine": provenance.training_machine(dev)}
        if eval_images is not None:
            metrics["preds"] = training.evaluate(model, eval_images, dev)
    return model, metrics


def train_aligned(name: str = "tiny-resnet18", *, form: str = "cosine", lam: float = 0.0, seed: int = 0,
                  data_seed: int = 0, image_size: int = 32, n_train_per_class: int = 150,
                  n_analysis_per_class: int = 50, epochs: int = 2, batch_size: int = 64,
                  base_width: int = 16, device="auto", progress: bool = True) -> tuple[dict, dict]:
    """Train a tiny ResNet on the benchmark with :func:`fit_aligned` (seed 001's L_cls + lam * L_grad).

    The model builder is ``nets.build_tiny_resnet``. ``seed`` sets initialisation and batch order;
    ``data_seed`` the benchmark images. Returns the state dict (CPU) and metrics: analysis accuracy,
    training seconds, mean L_cls and L_grad of the last epoch.
    """
    if name not in TINY_MODELS:  # form and lam: checked by fit_aligned
        raise ValueError(f"unknown tiny ResNet {name!r}; choose one of {list(TINY_MODELS)}")
    for field, value in (("image_size", image_size), ("n_train_per_class", n_train_per_class),
                         ("n_analysis_per_class", n_analysis_per_class), ("epochs", epochs),
                         ("batch_size", batch_size), ("base_width", base_width)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{field} must be an int >= 1, got {value!r}")
    train = data.make_benchmark(n_per_class=n_train_per_class, split="train", seed=data_seed, image_size=image_size)
    analysis = data.make_benchmark(n_per_class=n_analysis_per_class, split="analysis", seed=data_seed,
                                   image_size=image_size)
    model, fitted = fit_aligned(
        lambda: nets.build_tiny_resnet(name, len(train.class_names), base_width), train.images, train.labels,
        form=form, lam=lam, seed=seed, epochs=epochs, batch_size=batch_size, device=device,
        desc=f"{name} {form} lambda={lam:g}" if progress else None, eval_images=analysis.images)
    preds = fitted.pop("preds")
    metrics = {"analysis_accuracy": float((preds == analysis.labels).float().mean()), **fitted,
               "n_train": len(train.labels), "class_names": list(train.class_names)}
    return training.cpu_state(model), metrics


def aligned_model(name: str = "tiny-resnet18", *, form: str = "cosine", lam: float = 0.0, seed: int = 0,
                  data_seed: int = 0, image_size: int = 32, n_train_per_class: int = 150,
                  n_analysis_per_class: int = 50, epochs: int = 2, batch_size: int = 64,
                  base_width: int = 16, device="auto", progress: bool = True) -> tuple[nn.Module, dict]:
    """:func:`train_aligned`'s model, cached on disk, in eval mode with ``gradsim_info`` set.

    The returned model works with ``extract.representations`` and ``extract.loss_input_gradients``
    on uint8 benchmark images. Returns (model, metrics); the metrics' training seconds are those of
    the run that filled the cache.
    """
    settings = dict(form=form, lam=lam, seed=seed, data_seed=data_seed, image_size=image_size,
                    n_train_per_class=n_train_per_class, n_analysis_per_class=n_analysis_per_class,
                    epochs=epochs, batch_size=batch_size, base_width=base_width)
    dev = get_device(device)

    def compute() -> dict:
        state, metrics = train_aligned(name, device=dev, progress=progress, **settings)
        return {"state_dict": state, "metrics": metrics}

    key = _aligned_key(name, form, lam, seed, data_seed, image_size, n_train_per_class, n_analysis_per_class,
                       epochs, batch_size, base_width)

    def build() -> nn.Module:
        return nets.build_tiny_resnet(name, len(data.benchmark_class_names()), base_width)

    model, entry = training.cached_model("aligned", key, build, compute,
                                         f"{name} aligned {form} lambda={lam:g} (seed {seed}, data seed {data_seed})")
    metrics = entry["metrics"]
    model.gradsim_info = training.benchmark_info(name, image_size, metrics["class_names"],
                                                 f"aligned {form} lambda={lam:g}", metrics)
    return model.to(dev), metrics


def start_model(name: str, class_names, *, profile="smoke", weights: str | None = None, checkpoint=None,
                class_file=None, image_size: int | None = None, seed: int = 0,
                base_width: int = 16) -> tuple[nn.Module, torch.Tensor]:
    """The model :func:`fit_aligned` starts from on a dataset with ``class_names``, and the logit
    index of each class (labels to train on).

    ``tiny-resnetNN``, and any architecture with ``weights=None`` and no ``checkpoint``: random
    (seeded) weights with one output per class, run at ``image_size`` px (None, or a size the
    architecture cannot run: its own input size). Otherwise ``models.load_model``'s ``weights``,
    ``checkpoint`` and ``class_file`` are the starting weights, at the model's input size; their
    outputs must include the dataset's classes (``models.output_targets``), else ValueError naming
    ``weights``.
    """
    classes = tuple(class_names)
    if models.model_family(name) == "tiny":
        model = nets.build_tiny_resnet(name, len(classes), base_width)
        model.gradsim_info = training.benchmark_info(name, image_size or 32, classes)
        return model, torch.arange(len(classes))
    random_init = weights is None and checkpoint is None
    rebuild = random_init and models.model_family(name) in ("torchvision", "timm")
    model = models.load_model(name, profile, weights=weights, checkpoint=checkpoint,
                              class_names=classes if rebuild else class_file, device="cpu", seed=seed,
                              progress=False)
    targets = models.output_targets(model, classes, torch.arange(len(classes)))
    if targets is None:
        raise ValueError(f"weights: {name}'s outputs ({len(model.gradsim_info.class_names)} classes) do not include "
                         f"the dataset's classes {list(classes)[:5]}; train from weights=None (random, one output "
                         "per class) or give a checkpoint with its class_names file")
    if random_init and image_size is not None:
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, image_size, image_size))
            model.gradsim_info = replace(model.gradsim_info, input_size=image_size)
        except RuntimeError:  # e.g. a vision transformer's fixed patch grid: its own input size
            pass
    return model, targets


def split_per_class(labels, analysis_share: float = 0.5, seed: int = 0, parameter: str = "image_folder",
                    min_train: int = 1, min_analysis: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split of each class's images into training and analysis indices: round(share x n)
    analysis images per class (at least ``min_analysis``: one same-class pair), the rest training
    (at least ``min_train``). A class with fewer than ``min_train + min_analysis`` images raises
    ValueError naming ``parameter`` and the class."""
    labels = torch.as_tensor(labels).long()
    gen = torch.Generator().manual_seed(seed)
    train, analysis = [], []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < min_train + min_analysis:
            raise ValueError(f"{parameter}: class {c} has {len(idx)} images; the alignment experiment needs at least "
                             f"{min_train + min_analysis} per class ({min_train} to train, {min_analysis} to analyse)")
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_analysis = min(max(min_analysis, round(analysis_share * len(idx))), len(idx) - min_train)
        analysis.append(idx[:n_analysis].sort().values)
        train.append(idx[n_analysis:].sort().values)
    return torch.cat(train), torch.cat(analysis)


def input_hessian_top_eigenvalue(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                                 iters: int = 10, seed: int = 0) -> torch.Tensor:
    """Largest eigenvalue of each image's input Hessian d^2 L(f(x_i), y_i) / d x_i^2, by power iteration.

    In eval mode the Hessian of the batch's summed loss is block diagonal (one block per image), so
    one :func:`hvp` per iteration advances the power iteration of every image at once; each block
    is normalised separately. For a ReLU network the block is J^T (diag(p) - p p^T) J (positive
    semi-definite), so the iteration finds its largest eigenvalue. Returns (N,) Rayleigh quotients.
    The double backward enters every convolution, so the model and ``x`` run contiguous
    (``devices.place``).
    """
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an int >= 1, got {iters!r}")
    x = x.contiguous(memory_format=place(model, x.device, backward_enters_conv=True))
    labels = torch.as_tensor(labels, device=x.device).long()
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)

    def unit(t: torch.Tensor) -> torch.Tensor:
        return t / t.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *[1] * (t.ndim - 1))

    def loss(z: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(z), labels, reduction="sum")

    v = unit(v)
    for _ in range(iters):
        hv = hvp(loss, x, v)
        eig = (hv * v).flatten(1).sum(1)
        v = unit(hv)
    return eig.detach()


def _mean_within_between(cos: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean cosine over unordered same-class pairs (classes weighted equally) and over different-class pairs."""
    within = similarity.within_class_cosine_from_matrix(cos, labels)
    i, j, same = similarity.unordered_pairs(labels)
    return float(np.mean(list(within.values()))), float(cos[i[~same], j[~same]].mean())


def _kmeans_partition(x: torch.Tensor, labels: torch.Tensor, seed: int) -> np.ndarray:
    """K-means (k = number of classes, 10 restarts) on L2-normalised rows."""
    unit = F.normalize(x.flatten(1).double(), dim=1).numpy()
    k = len(torch.unique(labels))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(unit)


def _partition_ari(labels: np.ndarray, partition: np.ndarray, counts: np.ndarray | None) -> np.ndarray:
    """ARI of ``partition`` against ``labels``: on all images, then (with ``counts``) on the distinct
    images each bootstrap resample draws (the partition is kept, not refitted)."""
    drawn = [np.ones(len(labels), dtype=bool)] + ([] if counts is None else list(np.asarray(counts) > 0))
    return np.array([adjusted_rand_score(labels[d], partition[d]) for d in drawn])


def _pair_mi(x: torch.Tensor, labels: torch.Tensor, same: bool, dim: int, max_pairs: int, seed: int) -> float:
    """Gaussian MI between the two members of random ordered pairs (i != j) of the same / different class."""
    rng = np.random.default_rng(seed)
    lab = labels.numpy()
    i, j = np.nonzero((lab[:, None] == lab[None, :]) == same)
    keep = i != j
    i, j = i[keep], j[keep]
    pick = rng.choice(len(i), size=min(max_pairs, len(i)), replace=False)
    flat = x.flatten(1).double().numpy()
    return gaussian_mutual_information(flat[i[pick]], flat[j[pick]], dim=dim)


def inner_conv(model: nn.Module, layer: str = "layer4") -> str | None:
    """The last residual block's inner convolution in stage ``layer``
    (``extract.last_block_inner_conv``), or None when ``layer`` is not a stage of residual blocks."""
    try:
        return extract.last_block_inner_conv(model, layer)
    except ValueError:
        return None


def alignment_measures(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, seed: int = 0,
                       batch_size: int = 64, mi_pairs: int = 2000, device="auto", counts=None,
                       layer: str = "layer4") -> dict:
    """What the chapter reports for one trained model, on (analysis) ``images`` and true ``labels``.

    accuracy; input-gradient cosine (seed 001's g = dL/dx) within class (mean over unordered pairs,
    classes weighted equally) and between classes; mean ||g||; gradient-weight cosine within class
    at ``layer4`` (a function of the predicted labels, DESIGN.md s. 7) with the predicted-label
    agreement beside it, and at the last block's inner convolution (input-dependent); K-means ARI
    of input gradients and of inner-conv gradient weights; Gaussian MI of same-class and
    different-class pairs of input gradients, on dim = min(classes, N // 4) principal components;
    the mean same-class ||g_i - g_j||^2 and its norm part mean(||g_i||^2 + ||g_j||^2).
    ``layer`` (default ``layer4``) is the layer of the gradient weights; when it is not a stage of
    residual blocks (``extract.last_block_inner_conv`` fails, e.g. a VGG's convolution) the inner-conv
    measures are NaN (:func:`inner_conv`).

    With ``counts`` (R, N) from ``stats.image_bootstrap_counts`` the dict also holds "replicates":
    for accuracy, the input-gradient cosines within and between classes, mean ||g|| and the ARI of
    input gradients, a (1 + R,) array with the value above at index 0 and its value on each
    resample after it (the K-means partition is fitted once and rescored on the drawn images).
    """
    labels = torch.as_tensor(labels).long()
    lab = labels.numpy()
    grads = extract.loss_input_gradients(model, images, labels, batch_size=batch_size, device=device,
                                         progress=False)
    reps4 = extract.representations(model, images, layer=layer, batch_size=batch_size, device=device,
                                    keep_features=False, progress=False)
    gw4_within, _ = _mean_within_between(similarity.cosine_matrix(reps4.grad_weights), labels)
    inner_layer = inner_conv(model, layer)
    if inner_layer is None:
        inner_within = inner_between = ari_inner = float("nan")
    else:
        inner = extract.representations(model, images, layer=inner_layer, batch_size=batch_size, device=device,
                                        keep_features=False, progress=False)
        inner_within, inner_between = _mean_within_between(similarity.cosine_matrix(inner.grad_weights), labels)
        ari_inner = float(_partition_ari(lab, _kmeans_partition(inner.grad_weights, labels, seed), None)[0])
    dim = max(1, min(len(torch.unique(labels)), len(labels) // 4))
    flat = grads.flatten(1).double()
    gram = flat @ flat.T
    i, j, same = similarity.unordered_pairs(labels)
    i, j = i[same], j[same]
    norm_part = (gram[i, i] + gram[j, j]).mean()
    g_cos = similarity.cosine_matrix(grads)
    g_within, g_between = _mean_within_between(g_cos, labels)
    correct = (reps4.preds == labels).double().numpy()
    norms = grads.flatten(1).norm(dim=1).double().numpy()
    ari_g = _partition_ari(lab, _kmeans_partition(grads, labels, seed), counts)
    measures = {
        "accuracy": float(correct.mean()),
        "input_grad_within": g_within,
        "input_grad_between": g_between,
        "input_grad_norm": float(norms.mean()),
        "gw_layer4_within": gw4_within,
        "pred_agreement": similarity.within_class_agreement(reps4.preds, labels),
        "gw_inner_within": inner_within,
        "gw_inner_between": inner_between,
        "ari_input_grad": float(ari_g[0]),
        "ari_gw_inner": ari_inner,
        "mi_same_class": _pair_mi(grads, labels, True, dim, mi_pairs, seed),
        "mi_diff_class": _pair_mi(grads, labels, False, dim, mi_pairs, seed),
        "mi_dim": dim,
        "euclid_pair_mean": float(norm_part - 2 * gram[i, j].mean()),
        "euclid_norm_part": float(norm_part),
    }
    if counts is not None:
        pairs = similarity.pair_statistics(g_cos, lab, counts, with_auc=False)
        resampled = {"accuracy": weighted_means(correct, counts)[1:], "input_grad_within": pairs.within[1:],
                     "input_grad_between": pairs.between[1:], "input_grad_norm": weighted_means(norms, counts)[1:],
                     "ari_input_grad": ari_g[1:]}
        measures["replicates"] = {k: np.concatenate([[measures[k]], v]) for k, v in resampled.items()}
    return measures
