"""One batched pass per batch: logits, probabilities, a layer's features and gradient weights.

For image i with target class c_i (its own argmax unless given), logit y_c and the hooked layer's
output F (K x H' x W'), the gradient weights of seed 000 are

    w_{i,k} = (1 / H'W') * sum_{h,w} d y_{c_i}(x_i) / d F_{i,k,h,w}.

In eval mode the images of a batch do not interact, so one backward of sum_i y_{c_i}(x_i) gives
every image its own gradient. Autograd starts at the hooked tensor (parameters are frozen for the
call and the hook hands on a fresh leaf), so only the layers after the hook are differentiated:
for torchvision ResNet's ``layer4`` that is avgpool + fc. ``input_gradients=True`` differentiates
down to the input as well (d y_c / d x, seed 001's variant), which needs the full graph.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, fields, replace
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from . import distributed, nets
from .devices import get_device, graph_enters_convolution, place

__all__ = [
    "Representations",
    "input_gradients",
    "LayerTap",
    "last_block_inner_conv",
    "frozen_eval",
    "as_image_tensor",
    "as_targets",
    "num_classes",
    "model_input",
    "representations",
    "representations_sharded",
    "gradient_weight_identity_error",
    "loss_input_gradients",
]


@dataclass
class Representations:
    """What one pass over N images gives; every tensor is on the CPU with first dim N.

    logits (N x C), probs = softmax(logits), preds = argmax(logits), targets (the class c whose
    logit y_c was differentiated), features F (N x K x H' x W', or None), pooled = mean_{h,w} F
    (N x K, kept even without features), grad_weights (N x K), input_grads (d y_c / d x,
    N x 3 x H x W, or None), feature_hw = (H', W').
    """

    logits: torch.Tensor
    probs: torch.Tensor
    preds: torch.Tensor
    targets: torch.Tensor
    features: torch.Tensor | None
    pooled: torch.Tensor
    grad_weights: torch.Tensor
    input_grads: torch.Tensor | None
    layer: str
    model_name: str
    feature_hw: tuple[int, int]

    def __len__(self) -> int:
        return self.logits.shape[0]




def last_block_inner_conv(model: nn.Module, stage: str = "layer4") -> str:
    """Name of the last convolution inside the last residual block of ``stage``.

    ``conv2`` of a BasicBlock, ``conv3`` of a Bottleneck: its output comes before the block's batch
    norm, residual addition and ReLU, so gradient weights there depend on the input (DESIGN.md s. 7).
    """
    blocks = nets.get_layer(model, stage)
    if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
        raise ValueError(f"{stage!r} must be a non-empty nn.Sequential of residual blocks")
    last = len(blocks) - 1
    convs = [name for name, module in blocks[last].named_children() if isinstance(module, nn.Conv2d)
             and name.startswith("conv")]
    if not convs:
        raise ValueError(f"the last block of {stage!r} has no conv1/conv2/conv3 layers")
    return f"{stage}.{last}.{max(convs)}"


class LayerTap:
    """A forward hook on one layer, as a context manager that always removes it.

    Each forward records the layer's output F as ``self.features`` and hands the rest of the
    network a copy of it, so later in-place operations (``out += identity``, ReLU(inplace))
    cannot change F. With ``start_graph=True`` F is a fresh leaf that requires grad: autograd
    records nothing before the layer. With ``start_graph=False`` F stays in the caller's graph.
    A layer that runs more than once per forward (a shared ReLU) is rejected: its output is
    ambiguous. Call ``reset()`` before each forward.
    """

    def __init__(self, model: nn.Module, layer: str, start_graph: bool = True):
        self.name = layer
        self.module = nets.get_layer(model, layer)
        self.start_graph = start_graph
        self.features: torch.Tensor | None = None
        self._handle = None

    def reset(self) -> None:
        """Forget the last forward's features."""
        self.features = None

    def _hook(self, module: nn.Module, inputs, output):
        if not (isinstance(output, torch.Tensor) and output.dim() == 4):
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"layer {self.name!r} must output a 4-D tensor (N x K x H' x W'), got {got}"
            )
        if self.features is not None:
            raise ValueError(
                f"layer {self.name!r} ran more than once in one forward pass (a shared module); "
                "hook a layer that runs once, e.g. a conv, a block or a stage"
            )
        self.features = output.detach().requires_grad_() if self.start_graph else output
        return self.features.clone()

    def __enter__(self) -> "LayerTap":
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self._handle = None
        self.features = None


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the block; each module's and parameter's flag restored."""
    training = {module: module.training for module in model.modules()}
    requires_grad = {param: param.requires_grad for param in model.parameters()}
    try:
        model.eval()
        for param in requires_grad:
            param.requires_grad_(False)
        yield
    finally:
        for module, flag in training.items():
            module.training = flag
        for param, flag in requires_grad.items():
            param.requires_grad_(flag)


@torch.no_grad()
def layer_outputs(model: nn.Module, images, layers=(), batch_size: int = 64, device: str | torch.device = "auto",
                  spatial_mean: bool = False, progress: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits (N, classes) and each of ``layers``' outputs (N, C, h, w), or their spatial means (N, C)
    with ``spatial_mean``, float32 on the CPU, from one inference pass per batch (no gradients; eval
    mode and frozen parameters for the call). ``images`` are uint8/float images for a model from
    ``models.load_model`` (resized and normalised by ``nets.prepare_inputs``)."""
    dev = get_device(device)
    memory_format = place(model, dev, backward_enters_conv=False)
    logits, out = [], {layer: [] for layer in layers}
    with frozen_eval(model), ExitStack() as stack:
        taps = [stack.enter_context(LayerTap(model, layer, start_graph=False)) for layer in layers]
        for start in tqdm(range(0, len(images), batch_size), desc="inference", unit="batch", disable=not progress):
            for tap in taps:
                tap.reset()
            x = nets.prepare_inputs(model, images[start:start + batch_size]).contiguous(memory_format=memory_format)
            logits.append(model(x).float().cpu())
            for tap in taps:
                out[tap.name].append((tap.features.mean(dim=(2, 3)) if spatial_mean else tap.features).float().cpu())
    return torch.cat(logits), {layer: torch.cat(parts).contiguous() for layer, parts in out.items()}


def _has_non_finite(x: torch.Tensor) -> bool:
    """Whether ``x`` holds a NaN or Inf. One reduction first: a finite sum proves every value
    finite (NaN and Inf propagate); only a non-finite sum (or an overflow) needs the full check."""
    return not (torch.isfinite(x.sum()) or torch.isfinite(x).all())


def as_image_tensor(images) -> torch.Tensor:
    """``images`` as an N x C x H x W tensor; ValueError on a wrong shape or NaN/Inf values."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch tensor or numpy array, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty N x C x H x W batch, got shape {tuple(images.shape)}")
    if images.is_floating_point() and _has_non_finite(images):
        bad = int((~torch.isfinite(images)).flatten(1).any(1).sum())
        raise ValueError(f"images contain NaN or Inf values ({bad} of {images.shape[0]} images)")
    return images


def as_targets(targets, n: int, n_classes: int | None) -> torch.Tensor | None:
    """``targets`` (None, one int, or N class indices) as an int64 tensor of shape (N,)."""
    if targets is None:
        return None
    t = torch.as_tensor(targets)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"targets must be integer class indices, got dtype {t.dtype}")
    t = t.long().expand(n).clone() if t.dim() == 0 else t.long()
    if t.shape != (n,):
        raise ValueError(f"targets must be one int or {n} class indices, got shape {tuple(t.shape)}")
    if (t < 0).any() or (n_classes is not None and (t >= n_classes).any()):
        raise ValueError(f"targets must lie in [0, {n_classes}), got {t.min().item()}..{t.max().item()}")
    return t


def model_input(model: nn.Module, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The model's input for ``batch`` on ``device``: ``nets.prepare_inputs`` for a model with
    ``gradsim_info``, else ``batch`` itself, which must then be prepared float input. Detached, and
    a copy when made under ``torch.inference_mode`` (usable in autograd)."""
    if hasattr(model, "gradsim_info"):
        x = nets.prepare_inputs(model, batch)
    elif batch.is_floating_point():
        x = batch
    else:
        raise ValueError(
            f"images of dtype {batch.dtype} need a model from models.load_model (which knows its "
            "normalisation); for a plain nn.Module pass prepared float input"
        )
    x = x.to(device, non_blocking=True).detach()
    return x.clone() if x.is_inference() else x


def num_classes(model: nn.Module) -> int | None:
    """The class count from ``gradsim_info.class_names`` when known, else None (checked on logits)."""
    info = getattr(model, "gradsim_info", None)
    names = getattr(info, "class_names", None)
    return len(names) if names else None


def _batch_pass(model: nn.Module, tap: LayerTap, x: torch.Tensor, targets: torch.Tensor | None,
                input_gradients: bool) -> dict[str, torch.Tensor]:
    """Forward one prepared batch and differentiate sum_i y_{c_i}: per-batch tensors by field."""
    tap.reset()
    if input_gradients:
        x.requires_grad_(True)
    logits = model(x)
    if logits.dim() != 2:
        raise ValueError(f"the model must output N x C logits, got shape {tuple(logits.shape)}")
    if tap.features is None:
        raise ValueError(f"layer {tap.name!r} did not run in the forward pass")
    c = logits.detach().argmax(1) if targets is None else targets.to(logits.device)
    if (c >= logits.shape[1]).any():
        raise ValueError(f"targets must lie in [0, {logits.shape[1]}), got max {c.max().item()}")
    score = logits.gather(1, c[:, None]).sum()
    wrt = [tap.features, x] if input_gradients else [tap.features]
    grads = torch.autograd.grad(score, wrt)
    out = {
        "logits": logits.detach(),
        "targets": c,
        "features": tap.features.detach(),
        "pooled": tap.features.detach().mean(dim=(2, 3)),
        "grad_weights": grads[0].mean(dim=(2, 3)),
    }
    if input_gradients:
        out["input_grads"] = grads[1]
    return out


def _backward_enters_conv(model: nn.Module, tap: LayerTap, x: torch.Tensor) -> bool:
    """Whether differentiating the logits down to ``tap``'s layer runs a convolution's backward,
    read from the autograd graph of a probe forward of ``x`` (one image). With ``start_graph`` the
    graph holds only the layers after the hook: avgpool + fc after a ResNet's ``layer4`` (False),
    ``layer4``'s convolutions after ``layer3`` (True). A layer that did not run gives True; the
    batch pass then names the error."""
    tap.reset()
    logits = model(x)
    enters = tap.features is None or graph_enters_convolution(logits)
    tap.reset()
    return enters


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-batch CPU tensors into one contiguous tensor."""
    return torch.cat(parts).contiguous()


def representations(
    model: nn.Module,
    images,
    layer: str = "layer4",
    batch_size: int = 64,
    targets=None,
    device: str | torch.device = "auto",
    keep_features: bool = True,
    input_gradients: bool = False,
    progress: bool = True,
) -> Representations:
    """Logits, probabilities, predictions, ``layer``'s features and gradient weights of ``images``.

    ``grad_weights[i, k] = mean_{h,w} d y_{c_i} / d F_{i,k,h,w}`` with ``c_i = targets[i]`` or
    ``argmax(logits[i])``; ``input_grads[i] = d y_{c_i} / d x_i`` when ``input_gradients``.
    ``images``: N x 3 x H x W, uint8 (0-255) or float (0-1) for a model from ``models.load_model``
    (prepared per batch by ``nets.prepare_inputs``), prepared float input for a plain module.
    ``targets``: None, one class index for all images, or N indices. The model is moved to
    ``device`` (``"auto"``: CUDA when present), like ``model.to``, in the memory format of
    ``devices.place``: channels-last on CPU when the backward stops before any convolution
    (``layer4`` of a ResNet; decided from the autograd graph of a one-image probe), contiguous
    otherwise (earlier layers, ``input_gradients``). It runs in eval mode with frozen parameters;
    its train/eval modes, ``requires_grad`` flags and hooks are as before when this returns or raises.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    images = as_image_tensor(images)
    n = images.shape[0]
    targets = as_targets(targets, n, num_classes(model))
    dev = get_device(device)
    model.to(dev)
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.inference_mode(False), torch.enable_grad(), frozen_eval(model), \
            LayerTap(model, layer, start_graph=not input_gradients) as tap:
        probe = model_input(model, images[:1], dev)
        enters_conv = input_gradients or _backward_enters_conv(model, tap, probe)
        memory_format = place(model, dev, backward_enters_conv=enters_conv)
        for start in tqdm(range(0, n, batch_size), desc=f"extract {layer}", unit="batch",
                          disable=not progress):
            stop = min(start + batch_size, n)
            x = model_input(model, images[start:stop], dev).contiguous(memory_format=memory_format)
            t = None if targets is None else targets[start:stop]
            out = _batch_pass(model, tap, x, t, input_gradients)
            feature_hw = tuple(out["features"].shape[2:])
            if not keep_features:
                del out["features"]
            for key, value in out.items():   # to the CPU batch by batch: the device holds one batch
                parts.setdefault(key, []).append(value.cpu())
    logits = _cat(parts["logits"])
    return Representations(
        logits=logits,
        probs=logits.softmax(dim=1),
        preds=logits.argmax(dim=1),
        targets=_cat(parts["targets"]),
        features=_cat(parts["features"]) if keep_features else None,
        pooled=_cat(parts["pooled"]),
        grad_weights=_cat(parts["grad_weights"]),
        input_grads=_cat(parts["input_grads"]) if input_gradients else None,
        layer=layer,
        model_name=_model_name(model),
        feature_hw=feature_hw,
    )


def representations_sharded(model: nn.Module, images, targets=None, **kwargs) -> Representations | None:
    """:func:`representations` over the processes of torchrun: rank 0 gets all N images' result.

    Rank r runs the r-th contiguous share of ``images`` (and of per-image ``targets``;
    ``distributed.shard(..., contiguous=True)``); the shares are gathered to rank 0 and concatenated
    in rank order, which is the images' order. Other ranks return None. In one process this is
    :func:`representations` itself. ``kwargs`` go to :func:`representations`.
    """
    rank, world = distributed.rank_and_world()
    if world == 1:
        return representations(model, images, targets=targets, **kwargs)
    images = as_image_tensor(images)
    if len(images) < world:
        raise ValueError(f"images: {len(images)} image(s) cannot be shared out among {world} processes")
    targets = as_targets(targets, len(images), num_classes(model))
    local = representations(model, distributed.shard(images, contiguous=True),
                            targets=None if targets is None else distributed.shard(targets, contiguous=True),
                            **kwargs)
    parts = distributed.gather_object(local)
    if parts is None:
        return None
    tensors = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Representations)
               if isinstance(getattr(local, f.name), torch.Tensor)}
    return replace(parts[0], **tensors)


def _model_name(model: nn.Module) -> str:
    """``gradsim_info.name`` for a model from ``models.load_model``, else the class name."""
    info = getattr(model, "gradsim_info", None)
    return str(getattr(info, "name", None) or type(model).__name__)


def gradient_weight_identity_error(model: nn.Module, reps: Representations, classifier: str = "fc") -> float:
    """max_i ||w_i - W_{c_i} / (H'W')||_inf / ||W_{c_i} / (H'W')||_inf, W = ``classifier``'s weight.

    Near zero (rounding only) when the hooked layer feeds global average pooling and then the
    linear layer ``classifier`` (torchvision ResNet's ``layer4``): then d y_c / d F_{k,h,w} =
    W_{c,k} / (H'W') for every input, so the gradient weights are the predicted class's row.
    """
    fc = nets.get_layer(model, classifier)
    if not isinstance(fc, nn.Linear):
        raise ValueError(f"classifier {classifier!r} must be an nn.Linear, got {type(fc).__name__}")
    k = reps.grad_weights.shape[1]
    if fc.in_features != k:
        raise ValueError(
            f"classifier {classifier!r} takes {fc.in_features} features but layer {reps.layer!r} "
            f"has {k} channels: the identity only applies to the layer that feeds it"
        )
    h, w = reps.feature_hw
    expected = fc.weight.detach().cpu()[reps.targets] / (h * w)
    scale = expected.abs().amax(dim=1).clamp_min(torch.finfo(expected.dtype).tiny)
    error = (reps.grad_weights - expected).abs().amax(dim=1) / scale
    return float(error.max())


def input_gradients(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                    create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """g_i = d L(f(x_i), y_i) / d x_i for a prepared float batch ``x``, and the logits.

    L is the cross-entropy with the true label, summed over the batch, so each image gets its own
    gradient when images do not interact (eval mode). In train mode BatchNorm's batch statistics
    couple the images: then g_i also carries the (O(1/N)) effect of x_i on the others' losses.
    ``create_graph=True`` keeps the graph, so a loss of g can be differentiated (double backward).
    The backward enters every convolution: model and ``x`` run contiguous (``devices.place``).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError("x must be a prepared float batch (N, ...), e.g. from nets.prepare_inputs")
    fmt = place(model, x.device, backward_enters_conv=True)
    with torch.enable_grad():
        x = x.detach().contiguous(memory_format=fmt).requires_grad_(True)
        logits = model(x)
        loss = F.cross_entropy(logits, torch.as_tensor(labels, device=logits.device).long(), reduction="sum")
        (grads,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return grads, logits


def loss_input_gradients(model: nn.Module, images, labels, batch_size: int = 64,
                         device: str | torch.device = "auto", progress: bool = True) -> torch.Tensor:
    """Seed 001's gradient: g_i = d L(f(x_i), y_i) / d x_i, L the cross-entropy with true label y_i.

    One backward of the batch's summed loss gives each image its own gradient (images do not
    interact in eval mode). The gradient is taken with respect to the model's prepared input (after
    ``nets.prepare_inputs``); the result is N x 3 x H x W on the CPU.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    images = as_image_tensor(images)
    labels = torch.as_tensor(labels)
    if labels.shape != (images.shape[0],) or labels.is_floating_point():
        raise ValueError(f"labels must be {images.shape[0]} integer class indices, got shape {tuple(labels.shape)}")
    dev = get_device(device)
    grads = []
    with torch.inference_mode(False), torch.enable_grad(), frozen_eval(model):
        for start in tqdm(range(0, images.shape[0], batch_size), desc="input gradients", unit="batch",
                          disable=not progress):
            stop = min(start + batch_size, images.shape[0])
            x = model_input(model, images[start:stop], dev)
            grads.append(input_gradients(model, x, labels[start:stop])[0].cpu())
    return torch.cat(grads)
