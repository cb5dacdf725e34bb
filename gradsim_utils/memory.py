"""Memory per image, measured on a one- and two-image pass, and estimates at the paper profile's sizes
(issue 18, point 3).

GPU memory of a step that runs a batch of B images through a model is estimated as

    state + B * (saved + transient)

* ``state``: the parameters and buffers; for training also their gradients and AdamW's two moments
  (4x the parameters in all).
* ``saved``: the bytes autograd keeps for the backward pass, per image. It is read with
  ``torch.autograd.graph.saved_tensors_hooks`` while the step's forward runs on one image;
  distinct storages are counted once, parameters and buffers not at all (what is left is per image,
  up to BatchNorm's per-channel batch statistics in train mode, a few kB).
* ``transient``: twice the largest single layer output per image. A forward pass holds a layer's
  input and output at once; a backward pass holds a gradient and its input.

The modes are: ``forward`` (no graph: saved = 0); ``layer`` (frozen weights, differentiated
from ``layer`` on, as ``extract.representations`` does); ``input`` (frozen weights, gradient with
respect to the input, as ``extract.loss_input_gradients``); ``train`` (train mode, weights with
gradients); ``aligned`` (``train`` plus an input-gradient term: the input gradient is built with
``create_graph=True`` and differentiated again, as chapter 9's ``alignment.fit_aligned`` with
lambda > 0; saved then counts what the forward and that first backward keep). Host memory of a step
is the images and per-image outputs it keeps, scaled to N images.
These are estimates: the allocator's caching, cuDNN workspaces and the CUDA context (about 0.5 GiB)
come on top.
"""
from __future__ import annotations

import contextlib
import inspect
import warnings
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from . import alignment, extract, models, profiles

__all__ = ["MODES", "PassMemory", "run_pass", "check_mode", "pass_memory", "gpu_bytes", "GIB", "CUB_IMAGES",
           "IMAGENET_VAL_IMAGES", "Step", "build_model", "built_models", "paper_steps", "estimate"]

MODES = ("forward", "layer", "input", "train", "aligned")
TRAINS = ("train", "aligned")   # modes whose weights get gradients (and AdamW state)
GIB = 2 ** 30


@dataclass(frozen=True)
class PassMemory:
    """Bytes of one model pass at one image size: ``state`` (parameters and buffers, with gradients
    and AdamW moments in ``train`` mode), ``saved`` and ``transient`` per image (module docstring),
    and ``output`` per image: the bytes of ``layer``'s output (the features a chapter may keep)."""

    mode: str
    state: int
    saved: int
    transient: int
    output: int


def _state_bytes(model: nn.Module, train: bool) -> int:
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return params * (4 if train else 1) + buffers


@contextlib.contextmanager
def _pass_flags(model: nn.Module, mode: str):
    """Train mode and weight gradients as ``mode`` needs them; restored afterwards."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.train(mode in TRAINS)
    for p in model.parameters():
        p.requires_grad_(mode in TRAINS)
    try:
        yield
    finally:
        model.train(was_training)
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def run_pass(model: nn.Module, x: torch.Tensor, mode: str, layer: str | None = None,
             backward: bool = False) -> torch.Tensor | None:
    """One pass of ``mode`` (module docstring) over ``x``; returns ``layer``'s output (None without a layer).

    The loss is the cross-entropy against class 0 (its cost is the head's, negligible). ``aligned``
    adds the squared norm of the input gradient, built with ``create_graph=True``. ``backward``:
    also run the final backward pass (not needed to read what autograd saves; needed to count it)."""
    tap = extract.LayerTap(model, layer, start_graph=(mode == "layer")) if layer else contextlib.nullcontext()
    with _pass_flags(model, mode), tap, torch.set_grad_enabled(mode != "forward"):
        if mode in ("input", "aligned"):
            x = x.clone().requires_grad_(True)
        logits = model(x)
        if mode == "aligned" or (backward and mode != "forward"):
            loss = F.cross_entropy(logits, torch.zeros(len(x), dtype=torch.long, device=x.device))
            if mode == "aligned":
                # backward(inputs=...) rather than autograd.grad: FlopCounterMode's module hooks reject the
                # latter; its warning about a parameter-gradient cycle does not apply (only x gets .grad)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
                    loss.backward(inputs=[x], create_graph=True)
                loss = loss + x.grad.square().sum()
            if backward:
                loss.backward()
        return getattr(tap, "features", None)


def _measure(model: nn.Module, x: torch.Tensor, mode: str, layer: str | None) -> tuple[int, int, int]:
    """(saved bytes, largest module output, ``layer``'s output bytes) of one pass over ``x``."""
    exclude = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in exclude:
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    largest = [0]

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(record) for m in model.modules() if not list(m.children())]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            features = run_pass(model, x, mode, layer)
        output = 0 if features is None else features[0].numel() * features.element_size()
    finally:
        for h in handles:
            h.remove()
    return sum(saved.values()), largest[0], output


def check_mode(mode: str, layer: str | None) -> None:
    """A clear error for an unknown ``mode``, or ``mode="layer"`` without its layer."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "layer" and layer is None:
        raise ValueError("mode='layer' needs the layer the gradient starts at, e.g. layer='layer4'")


def pass_memory(model: nn.Module, image_size: int, mode: str = "layer", layer: str | None = None,
                measure_at: tuple[int, int] | None = None) -> PassMemory:
    """Measure one model pass on random ``image_size`` px input (module docstring). ``layer``: the
    layer the step differentiates from (``mode="layer"``, required) or keeps the output of.

    ``measure_at=(s1, s2)``: measure at these two smaller sides and extrapolate each per-image
    quantity linearly in the pixel count, v(S) = v(s1) + (v(s2) - v(s1)) (S^2 - s1^2) / (s2^2 - s1^2).
    For a ResNet it is exact when all three sides are multiples of 32 (every feature map then scales
    with the pixel count) and costs a fraction of a full-size pass."""
    check_mode(mode, layer)
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    if measure_at is not None:
        s1, s2 = measure_at
        if not (isinstance(s1, int) and isinstance(s2, int) and 8 <= s1 < s2):
            raise ValueError(f"measure_at must be two int sides 8 <= s1 < s2, got {measure_at!r}")
        small, large = (pass_memory(model, side, mode, layer) for side in (s1, s2))
        share = (image_size ** 2 - s1 ** 2) / (s2 ** 2 - s1 ** 2)
        scale = lambda field: round(getattr(small, field) + (getattr(large, field) - getattr(small, field)) * share)
        return PassMemory(mode=mode, state=small.state, saved=scale("saved"), transient=scale("transient"),
                          output=scale("output"))
    x = torch.rand(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    saved, largest, output = _measure(model, x, mode, layer)
    return PassMemory(mode=mode, state=_state_bytes(model, mode in TRAINS), saved=saved, transient=2 * largest,
                      output=output)


def gpu_bytes(memory: PassMemory, batch_size: int) -> int:
    """state + batch_size * (saved + transient): the estimated peak of one step's batch."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return memory.state + batch_size * (memory.saved + memory.transient)


# ---------------------------------------------------------------------------------------------
# the paper profile's heavy steps

#: CUB-200-2011's size (wah2011cub): 11,788 images of 200 classes; chapter 8 trains on the even
#: classes and evaluates on every fourth (``metric_learning.load_cub``), about a half and a quarter.
CUB_IMAGES = 11_788
#: The ImageNet validation set (ILSVRC-2012): 50,000 images, 50 per class; chapter 6's paper path.
IMAGENET_VAL_IMAGES = 50_000


@dataclass(frozen=True)
class Step:
    """One heavy step of a chapter: ``model`` runs ``batch_size`` images at ``image_size`` px in
    ``mode`` (at or from ``layer``); the host keeps ``n_images`` uint8 images of ``stored_side`` px
    and, when ``keeps_output``, ``layer``'s output for each, plus ``n_maps`` float32 maps of
    ``image_size`` px. ``n_passed``: the images that go through the pass in the whole chapter (all
    models' runs, epochs, episodes; None: ``n_images``). ``base_width``: a tiny ResNet's width
    (None: the profile's)."""

    chapter: str
    what: str
    model: str
    mode: str
    layer: str | None
    batch_size: int
    image_size: int
    n_images: int
    stored_side: int
    keeps_output: bool = False
    n_maps: int = 0
    n_passed: int | None = None
    base_width: int | None = None

    @property
    def passed(self) -> int:
        """Images through the pass in the whole chapter."""
        return self.n_images if self.n_passed is None else self.n_passed


def build_model(step: Step) -> nn.Module:
    """``step.model`` with random weights on the CPU, built by ``models.load_model`` (any family it
    knows) with the paper profile's settings and ``step.base_width`` for a tiny ResNet."""
    widths = {} if step.base_width is None else {"base_width": step.base_width}
    return models.load_model(step.model, profiles.get_profile("paper", **widths), weights=None, device="cpu",
                             progress=False)


def _default(function, parameter: str):
    """The default value of ``function``'s ``parameter``."""
    return inspect.signature(function).parameters[parameter].default


def paper_steps(profile, batch_sizes: dict[str, int], stored_side: int | None = None) -> list[Step]:
    """The heavy steps of chapters 2-9 at ``profile``'s sizes (a ``profiles.Profile``, the paper one;
    chapter 7 compares its default pair, ResNet-18 and ResNet-50).

    ``batch_sizes``: each chapter's default ``batch_size`` by chapter number ("02", ...), e.g. read
    from the chapters' parameters cells (``book.chapter_parameters``). ``stored_side``: the side
    the chapters keep images at (None: the model's input size). Chapter 9 trains tiny ResNets on the
    benchmark in every profile (``profile.extra["alignment"]``) at ``alignment.train_aligned``'s
    default batch size and width; its curvature pass (``n_curvature_images`` images, a few HVPs per
    model) is smaller than its training in memory and in work and is left out. Chapter 1 (Stable
    Diffusion) is not a classifier pass: ``cost.diffusion``.
    """
    n = profile.n_analysis_per_class * 10
    side = profile.image_size
    stored = stored_side or side
    sfam = profile.extra["sfam"]
    episode = sfam["train_way"] * (sfam["train_shot"] + sfam["train_query"])
    micro = min(sfam.get("micro_batch") or episode, episode)
    training_what = f"episodic training ({episode} images an episode" + (f", {micro} at a time)" if micro < episode else ")")
    steps = []
    for name in profile.models:
        steps += [
            Step("02", "features and gradient weights at layer4", name, "layer", "layer4", batch_sizes["02"], side, n,
                 stored, True),
            Step("02", "gradient weights at layer3", name, "layer", "layer3", batch_sizes["02"], side, n, stored, True),
            Step("02", "loss input gradients", name, "input", None, batch_sizes["02"], side, n, stored),
            Step("03", "features and gradient weights at layer4", name, "layer", "layer4", batch_sizes["03"], side, n,
                 stored, True),
            Step("03", "gradient weights at layer3", name, "layer", "layer3", batch_sizes["03"], side, n, stored, True),
            Step("03", "loss input gradients", name, "input", None, batch_sizes["03"], side, n, stored),
            Step("04", "features and gradient weights at layer4", name, "layer", "layer4", batch_sizes["04"],
                 side, n, stored, True),
            # two maps per image: Grad-CAM and the class-free map, each its own pass
            Step("05", "Grad-CAM and class-free maps at layer4", name, "layer", "layer4", batch_sizes["05"], side, n, stored,
                 n_maps=2 * n, n_passed=2 * n),
        ]
    steps.append(Step("06", "class statistics, one class of the ImageNet validation set at a time", "resnet34",
                      "forward", "layer4", batch_sizes["06"], side, 50, 256, n_passed=IMAGENET_VAL_IMAGES))
    steps += [Step("07", "layer outputs of the compared pair", name, "forward", "layer4", batch_sizes["07"], side, n,
                   stored, True) for name in ("resnet18", "resnet50")]
    for _, name in sfam["backbones"]:
        steps += [Step("08", training_what, name, "train", None, micro,
                       sfam["image_size"], CUB_IMAGES // 2, sfam["image_size"], n_passed=sfam["train_steps"] * episode),
                  Step("08", "feature maps of the novel classes", name, "forward", "layer4", sfam["batch_size"],
                       sfam["image_size"], CUB_IMAGES // 4, sfam["image_size"], True)]
    align = profile.extra["alignment"]
    n_train, n_analysis = align["n_train_per_class"] * 10, align["n_analysis_per_class"] * 10
    runs = align["n_seeds"] * align["epochs"] * n_train   # images one setting trains on, over its seeds
    aligned = sum(lam > 0 for _, lam in align["configs"])
    trained = align["n_seeds"] * len(align["configs"])
    tiny = dict(model="tiny-resnet18", image_size=align["image_size"], stored_side=align["image_size"],
                base_width=_default(alignment.train_aligned, "base_width"))
    batch, measures_batch = (_default(alignment.train_aligned, "batch_size"),
                             _default(alignment.alignment_measures, "batch_size"))
    steps += [Step("09", "training with the alignment loss (double backward)", mode="aligned", layer=None,
                   batch_size=batch, n_images=n_train, n_passed=aligned * runs, **tiny),
              Step("09", "plain training (lambda = 0)", mode="train", layer=None, batch_size=batch, n_images=n_train,
                   n_passed=(len(align["configs"]) - aligned) * runs, **tiny),
              Step("09", "loss input gradients of the analysis images", mode="input", layer=None,
                   batch_size=measures_batch, n_images=n_analysis, n_passed=trained * n_analysis, **tiny),
              Step("09", "features and gradient weights at layer4 and the inner conv", mode="layer", layer="layer4",
                   batch_size=measures_batch, n_images=n_analysis, n_passed=2 * trained * n_analysis, **tiny)]
    return steps


def built_models(steps: list[Step], nets: dict | None = None) -> dict:
    """``nets`` (a new dict if None) with every step's model, by (model, base_width), built once
    by ``build_model``."""
    nets = {} if nets is None else nets
    for step in steps:
        if (step.model, step.base_width) not in nets:
            nets[step.model, step.base_width] = build_model(step)
    return nets


def estimate(steps: list[Step], measure_at: tuple[int, int] | None = (64, 96), nets: dict | None = None) -> pd.DataFrame:
    """One row per step: GPU GiB (``gpu_bytes``) and host GiB (images, kept outputs and maps).

    Models with random weights (memory does not depend on the weights) from ``built_models(steps,
    nets)``: pass the same dict to ``cost.estimate`` to build each once. Each (model, mode, layer,
    size) is measured once, from ``measure_at`` when the size is a larger multiple of 32."""
    passes, nets = {}, built_models(steps, nets)
    rows = []
    for step in steps:
        key = (step.model, step.base_width, step.mode, step.layer or "layer4", step.image_size)
        if key not in passes:
            net = nets[step.model, step.base_width]
            at = measure_at if measure_at and step.image_size % 32 == 0 and step.image_size > measure_at[1] else None
            passes[key] = pass_memory(net, step.image_size, step.mode, step.layer or "layer4", at)
        memory = passes[key]
        host = (step.n_images * 3 * step.stored_side ** 2
                + (step.n_images * memory.output if step.keeps_output else 0)
                + step.n_maps * 4 * step.image_size ** 2)
        rows.append({"chapter": step.chapter, "step": step.what, "model": step.model, "batch": step.batch_size,
                     "gpu_gib": gpu_bytes(memory, step.batch_size) / GIB, "host_gib": host / GIB})
    return pd.DataFrame(rows)
