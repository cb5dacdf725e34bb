"""Training of the tiny ResNets on the controlled benchmark (DESIGN.md sections 3-5).

One recipe for every depth: AdamW with a one-cycle learning rate and label smoothing, on
contiguous tensors (``devices.memory_format``: channels-last training hits a oneDNN bug on CPUs),
with torchvision's initialisation. No augmentation: the benchmark already
varies position, scale, rotation, colour and clutter, and fresh images are cheap to render.
Evaluation uses the analysis split, which training never sees.

One setting depends on depth: the last BatchNorm of each residual branch starts at zero (so the
net starts out as a shallow one) for ResNet-101 and -152 only. Measured with 12,000 training
images seen at 32 px: without it ResNet-152 reached 91 % analysis accuracy instead of 96 %;
with it, ResNet-18 and -50 learnt the one class pair that differs only in shape
(red-solid-circle vs red-solid-cross) more slowly (94 % and 97 % instead of 97.5 % and 99.5 %).
Horizontal flips changed nothing measurable and are not used.

The chapters pool several training runs per model (``train_seed``: initialisation and batch
order; ``profiles.training_seeds``). Measured on an Intel Xeon (AVX-512, 2 cores), quick sizes,
ResNet-34's analysis accuracy over training seeds 0-2: base width 16, 500 images per class (the
quick profile) 0.958 / 0.944 / 0.898; width 12: 0.96 / 0.948 / 0.966, but no faster than 16 on that
CPU (26 against 28 s; probably because oneDNN works in channel blocks of 8 or 16); width 8 (2.3x
faster): 0.94 / 0.89 / 0.892, and 0.902 / 0.916 / 0.886 with 400 images per class. Every miss is
the shape-only pair. Width 12 is the candidate fix for the one run below 90 %; the other depths
have not been measured at width 12.

:func:`model_cache_key` hashes everything that determines the trained weights; ``models.py``
caches ``train_tiny_resnet``'s result under it. The networks are ``nets.build_tiny_resnet``'s; the
input normalisation is the benchmark's (``data.MEAN``/``data.STD``).

Every model the book trains goes through this module twice: :func:`optimise` is the one training
loop (AdamW + one-cycle over a stream of batches; :func:`fit` feeds it epochs of benchmark images,
``metric_learning`` episodes), and :func:`cached_model` the one path "train once, cache, rebuild"
(the trained tiny ResNets of ``models``, ``alignment``'s and ``rsvc``'s, the metric models).
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import data, devices, provenance
from .cache import cache_key, cached_torch, content_digest, torch_entry
from .devices import get_device, place
from .nets import ModelInfo, build_tiny_resnet, prepare_images, resnet_depth
from .profiles import TINY_MODELS, Profile

__all__ = ["CODE_VERSION", "RECIPE", "benchmark_fingerprint", "cpu_threads",
           "check_batches", "cross_entropy_step", "backward_in_chunks", "optimise", "fit", "one_cycle",
           "run_seed", "run_key", "model_cache_key", "confusion_matrix", "evaluate", "train_tiny_resnet",
           "cpu_state", "cached_model", "benchmark_info"]

# Bump when anything below changes the trained weights or the reported metrics.
# 2: contiguous training on CPU (devices.memory_format), the machine recorded in the metrics
CODE_VERSION = "tiny-resnet-training-2"

# Optimisation settings (see the module docstring); zero-init of residual branches from this depth.
RECIPE = {"max_lr": 4e-3, "weight_decay": 5e-4, "label_smoothing": 0.1, "pct_start": 0.25,
          "zero_init_min_depth": 101}

EVAL_BATCH = 256


def benchmark_fingerprint(seed: int, image_size: int) -> str:
    """SHA-256 prefix of the first image of every class in both splits.

    Each benchmark image depends only on (seed, split, class, index), so this changes whenever the
    renderer's output does, at the cost of rendering twenty images.
    """
    firsts = [data.make_benchmark(n_per_class=1, split=split, seed=seed, image_size=image_size).images
              for split in ("train", "analysis")]
    return content_digest(*firsts)[:16]


def _check_name(name: str) -> None:
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny ResNet {name!r}; choose one of {list(TINY_MODELS)}")


def _check_profile(profile: Profile) -> None:
    """The profile must describe a benchmark with a train split and a positive schedule."""
    if not isinstance(profile, Profile):
        raise ValueError(f"profile must be a Profile, got {type(profile).__name__}")
    fields = {f: getattr(profile, f) for f in
              ("n_train_per_class", "n_analysis_per_class", "epochs", "batch_size", "base_width")}
    bad = {f: v for f, v in fields.items() if not isinstance(v, int) or v < 1}
    if bad:
        raise ValueError(f"profile {profile.name!r} cannot train tiny ResNets: {bad} must be integers >= 1")


def run_seed(seed: int, train_seed: int | None) -> int:
    """The seed of a training run's initialisation and batch order: ``train_seed``, or the data
    ``seed`` when None (the first run of ``profiles.training_seeds``)."""
    return seed if train_seed is None else train_seed


def run_key(seed: int, train_seed: int | None) -> dict:
    """The cache-key part that names a training run: empty for the first run (``run_seed`` equal
    to the data seed), so its key and weights stay those of a single-run book."""
    run = run_seed(seed, train_seed)
    return {} if run == seed else {"train_seed": run}


def model_cache_key(name: str, profile: Profile, seed: int, train_seed: int | None = None) -> str:
    """Hash of everything that determines the weights and metrics of a trained tiny ResNet: ``seed``
    draws the images, ``train_seed`` (None: ``seed``) the initialisation and the batch order."""
    _check_name(name)
    _check_profile(profile)
    return cache_key(**run_key(seed, train_seed),
        step="tiny-resnet", code_version=CODE_VERSION, name=name, seed=seed, recipe=RECIPE,
        image_size=profile.image_size, n_train_per_class=profile.n_train_per_class,
        n_analysis_per_class=profile.n_analysis_per_class, epochs=profile.epochs,
        batch_size=profile.batch_size, base_width=profile.base_width, mean=data.MEAN, std=data.STD,
        benchmark=benchmark_fingerprint(seed, profile.image_size),
    )


@contextmanager
def cpu_threads(n: int | None = None):
    """Use ``n`` torch threads (default: one per available core) for the block, then restore the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))) if n is None else n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Predicted labels of ``images`` (uint8, N x 3 x H x W), batched, in eval mode."""
    fmt = place(model, device, backward_enters_conv=False)
    model.eval()
    preds = [model(prepare_images(images[i:i + EVAL_BATCH], device, data.MEAN, data.STD, memory_format=fmt))
             .argmax(1).cpu()
             for i in range(0, len(images), EVAL_BATCH)]
    return torch.cat(preds)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Counts (n_classes x n_classes): row = true label, column = predicted label."""
    flat = torch.bincount(labels * n_classes + preds, minlength=n_classes * n_classes)
    return flat.view(n_classes, n_classes)


def train_tiny_resnet(name: str, profile: Profile, seed: int = 0, device: str | torch.device = "auto",
                      progress: bool = True, train_seed: int | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Train ``name`` on the benchmark's train split; evaluate on its analysis split.

    ``seed`` draws both splits; ``train_seed`` (None: ``seed``) the initialisation and the batch
    order, so runs with different training seeds see the same images.

    Returns the state dict (on the CPU) and metrics: analysis accuracy (overall and per class),
    the confusion matrix, training seconds (optimisation only), images per second, the number of
    training images and epochs, the final training loss, the class names and the machine
    (``provenance.training_machine``: float results differ between CPUs in the last digits).
    """
    _check_name(name)
    _check_profile(profile)
    dev = get_device(device)
    train = data.make_benchmark(n_per_class=profile.n_train_per_class, split="train", seed=seed,
                                image_size=profile.image_size)
    analysis = data.make_benchmark(n_per_class=profile.n_analysis_per_class, split="analysis",
                                   seed=seed, image_size=profile.image_size)
    n_classes = len(train.class_names)
    init_seed = run_seed(seed, train_seed)
    generator = torch.Generator().manual_seed(init_seed)
    with torch.random.fork_rng(devices=[]), cpu_threads():
        torch.manual_seed(init_seed)
        zero_init = resnet_depth(name) >= RECIPE["zero_init_min_depth"]
        model = build_tiny_resnet(name, n_classes, profile.base_width, zero_init_residual=zero_init)
        seconds, (loss,), n_seen = fit(model, train.images, train.labels, epochs=profile.epochs,
                                       batch_size=profile.batch_size, generator=generator, device=dev,
                                       desc=name if progress else None)
        preds = evaluate(model, analysis.images, dev)
        machine = provenance.training_machine(dev)
    confusion = confusion_matrix(analysis.labels, preds, n_classes)
    metrics = {
        "analysis_accuracy": float(confusion.diag().sum() / confusion.sum()),
        "per_class_accuracy": (confusion.diag() / confusion.sum(1).clamp(min=1)).tolist(),
        "confusion": confusion,
        "train_seconds": seconds,
        "images_per_second": n_seen / seconds,
        "n_train": len(train.labels),
        "epochs": profile.epochs,
        "final_train_loss": loss,
        "class_names": list(train.class_names),
        "machine": machine,
    }
    return cpu_state(model), metrics


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict on the CPU, contiguous: the weights :func:`cached_model` stores."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def cached_model(namespace: str, key: str, build: Callable[[], nn.Module],
                 train: Callable[[], dict], label: str) -> tuple[nn.Module, dict]:
    """The model cached as ``<namespace>/<key>.pt`` (``cache.cached_torch``), trained now on a miss.

    Prints one line naming the model by ``label`` (its name and what it was trained with) and where
    its weights come from: ``"<label>: cached weights <namespace>/<key>"``, or ``"training <label>: no
    cached weights <namespace>/<key>"`` (the key hashes everything the weights depend on).

    ``train()`` returns the entry to store: the weights under ``"state_dict"`` (:func:`cpu_state`)
    beside what else the caller keeps (metrics). Hit or miss, the weights are loaded into
    ``build()`` after the cache is read, so a cold and a warm run return the same model and leave
    the global random state alike. Returns the model in eval mode and the entry without the weights.
    """
    where = f"{namespace}/{key}"
    print(f"{label}: cached weights {where}" if torch_entry(namespace, key).exists()
          else f"training {label}: no cached weights {where}", flush=True)
    entry = cached_torch(namespace, key, train)
    model = build()
    model.load_state_dict(entry["state_dict"])
    return model.eval(), {k: v for k, v in entry.items() if k != "state_dict"}


def benchmark_info(name: str, image_size: int, class_names, weights: str | None = None,
                   metrics: dict | None = None) -> ModelInfo:
    """The ``ModelInfo`` of a tiny ResNet on benchmark images (``data.MEAN``/``data.STD``); with
    ``metrics`` of its training (``analysis_accuracy``, ``train_seconds``, ``machine``) when trained."""
    trained = {} if metrics is None else dict(analysis_accuracy=float(metrics["analysis_accuracy"]),
                                              train_seconds=float(metrics["train_seconds"]),
                                              machine=metrics["machine"])
    return ModelInfo(name, image_size, data.MEAN, data.STD, tuple(class_names), weights=weights, **trained)


def cross_entropy_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The recipe's loss, label-smoothed cross-entropy, and the terms ``fit`` reports (itself)."""
    loss = F.cross_entropy(model(x), y, label_smoothing=RECIPE["label_smoothing"])
    return loss, loss.detach()[None]


def check_batches(n_images: int, batch_size: int, epochs: int) -> None:
    """ValueError naming the parameter unless ``n_images`` fill at least one batch of ``batch_size``
    (>= 2: BatchNorm needs two values per channel) and ``epochs`` >= 1."""
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an integer >= 2 (BatchNorm's batch statistics), got {batch_size!r}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if n_images < batch_size:
        raise ValueError(f"{n_images} training images do not fill one batch (batch_size={batch_size}): "
                         "raise n_train_per_class or lower batch_size")


def one_cycle(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int,
              pct_start: float) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's one-cycle schedule (OneCycleLR's defaults) for any ``total_steps >= 1``.

    OneCycleLR's warm-up ends at step ``pct_start * total_steps - 1`` and it divides by that
    length (ZeroDivisionError when it is 0). A warm-up shorter than two steps is therefore dropped:
    the learning rate starts at ``max_lr`` and anneals (cosine) to OneCycleLR's final value.
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if pct_start * total_steps >= 2:
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps,
                                                   pct_start=pct_start)
    for group in optimizer.param_groups:
        group["lr"] = max_lr
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=max_lr / (25 * 1e4))


def backward_in_chunks(model: nn.Module, x: torch.Tensor, loss_of_outputs: Callable[[torch.Tensor], torch.Tensor],
                       micro_batch: int) -> torch.Tensor:
    """Backpropagate ``loss_of_outputs(model(x))`` holding the graph of ``micro_batch`` inputs at a time.

    Gradient caching (gao2021gradcache): the outputs of every chunk without a graph; the loss on
    them and its gradient G with respect to the outputs (and to any parameter the loss uses); then
    each chunk again with a graph, backpropagating <model(x_chunk), G_chunk>. The gradients add up
    to the full batch's when the model treats images independently. BatchNorm in train mode
    normalises each chunk by that chunk's statistics, and its running statistics are updated once
    per chunk (the first pass leaves them as they were). Returns the loss, detached.
    """
    if not isinstance(micro_batch, int) or micro_batch < 1:
        raise ValueError(f"micro_batch must be a positive int, got {micro_batch!r}")
    chunks = x.split(micro_batch)
    buffers = [b.clone() for b in model.buffers()]
    with torch.no_grad():
        outputs = torch.cat([model(chunk) for chunk in chunks])
    for b, saved in zip(model.buffers(), buffers):
        b.copy_(saved)
    outputs.requires_grad_(True)
    loss = loss_of_outputs(outputs)
    loss.backward()
    for chunk, grad in zip(chunks, outputs.grad.split(micro_batch)):
        model(chunk).backward(grad)
    return loss.detach()


def optimise(model: nn.Module, batches: Callable[[torch.memory_format], Iterable[tuple]], step_loss,
             *, n_steps: int, max_lr: float, weight_decay: float, pct_start: float,
             device: torch.device, autocast: str | None = None) -> tuple[float, list[torch.Tensor]]:
    """The one training loop: AdamW (``max_lr``, ``weight_decay``) with :func:`one_cycle` over
    ``n_steps``; returns wall seconds and each step's reported terms (on the CPU).

    The model is placed on ``device`` in ``devices.memory_format`` for a backward through
    convolutions (contiguous) and set to train mode; ``batches(fmt)`` then yields ``n_steps``
    tuples of arguments, inputs in that format, and ``step_loss(model, *batch) -> (loss, terms)``
    gives the loss to minimise and a 1-D tensor of terms to report. A ``step_loss`` that has already
    backpropagated (:func:`backward_in_chunks`) returns its loss without a graph. ``autocast``:
    ``step_loss`` runs under ``devices.autocast`` (None: float32; "bf16": bfloat16 where torch's
    autocast lists the op, the weights and AdamW staying float32).
    """
    devices.autocast(device, autocast)  # a ValueError naming autocast before any work
    optimizer = torch.optim.AdamW(model.parameters(), lr=max_lr, weight_decay=weight_decay)
    schedule = one_cycle(optimizer, max_lr, n_steps, pct_start)
    fmt = place(model, device, backward_enters_conv=True)
    model.train()
    start = time.perf_counter()
    reported = []
    for batch in batches(fmt):
        optimizer.zero_grad(set_to_none=True)
        with devices.autocast(device, autocast):
            loss, terms = step_loss(model, *batch)
        if loss.requires_grad:
            loss.backward()
        optimizer.step()
        schedule.step()
        reported.append(terms.cpu())
    return time.perf_counter() - start, reported


def fit(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, batch_size: int,
        generator: torch.Generator, device: torch.device, desc: str | None,
        step_loss=cross_entropy_step) -> tuple[float, list[float], int]:
    """:func:`optimise` over epochs of benchmark images with ``RECIPE``'s settings; returns wall
    seconds, the mean of each reported loss term over the last epoch, and the number of images seen.

    ``step_loss(model, x, y) -> (loss, terms)`` gives the loss to minimise for one batch (``x``
    as ``nets.prepare_images`` makes it with the benchmark's normalisation) and a 1-D tensor of
    terms to report. Every epoch draws a fresh permutation and uses its full batches only
    (BatchNorm dislikes a tiny last batch); the few images left over differ from epoch to epoch;
    fewer images than one batch is a ValueError (:func:`check_batches`).
    """
    check_batches(len(labels), batch_size, epochs)
    steps = len(labels) // batch_size

    def batches(fmt: torch.memory_format):
        for epoch in range(epochs):
            order = torch.randperm(len(labels), generator=generator)
            for step in tqdm(range(steps), desc=f"{desc} epoch {epoch + 1}/{epochs}", disable=desc is None,
                             leave=False):
                idx = order[step * batch_size:(step + 1) * batch_size]
                yield (prepare_images(images[idx], device, data.MEAN, data.STD, memory_format=fmt),
                       labels[idx].to(device))

    seconds, reported = optimise(model, batches, step_loss, n_steps=epochs * steps, max_lr=RECIPE["max_lr"],
                                 weight_decay=RECIPE["weight_decay"], pct_start=RECIPE["pct_start"], device=device)
    return seconds, (sum(reported[-steps:]) / steps).tolist(), epochs * steps * batch_size
