"""GAP statistics of every convolution, from forward hooks (seed 002, Park; METHODS.md "Label similarity").

For every convolution l and channel c, Eq. 2 of the seed:

    A_{l,c}(x) = (1 / H'W') sum_{ij} ReLU(C_{l,c}(x)_{ij}),

concatenated over layers (Eq. 3). ``where="conv"`` hooks the raw convolution output, before its
BatchNorm, as the public reference code does; ``where="bn"`` hooks the BatchNorm that follows it.
The default layer list is every ``nn.Conv2d`` except the residual ``downsample`` projections (the
reference's list: 7,616 channels for ResNet-34). The hidden state is the classifier's input.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from . import extract
from .devices import get_device, place

__all__ = ["WHERE", "conv_layer_names", "GapStatsHook", "GapFeatures", "gap_features"]

WHERE = ("conv", "bn")


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

    One batched forward per batch under ``extract.frozen_eval`` (eval mode, modes restored); ``images`` as
    for ``extract.representations`` (checked by ``extract.as_image_tensor``, each batch made input
    by ``extract.model_input``: uint8 or 0-1 float for a model from ``models.load_model``).
    """
    images = extract.as_image_tensor(images)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dev = get_device(device)
    fmt = place(model, dev, backward_enters_conv=False)
    parts: dict[str, list[torch.Tensor]] = {}
    with extract.frozen_eval(model), torch.inference_mode(), GapStatsHook(model, layers, where, classifier) as hook:
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
    return GapFeatures(gap={w: torch.cat(parts[w]) for w in hook.where},
                       hidden=torch.cat(parts["hidden"]) if "hidden" in parts else None,
                       logits=torch.cat(parts["logits"]), layers=layer_names, channels=channels)

