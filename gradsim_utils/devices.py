"""Where a pass runs and in which memory format (DESIGN.md section 5b): the one place that decides.

oneDNN's channels-last (NHWC) 1x1 stride-2 convolution computes its backward-weights pass wrongly
when the input channels are fewer than its channel block (8 on AVX2, 16 on AVX-512): it writes
past its workspace (a segfault, a hang or heap corruption) or returns wrong weight gradients with
no error (uxlfoundation/oneDNN issue 6035). The rule every module follows through
:func:`memory_format`: on the CPU, any pass whose backward enters a convolution (training, input
gradients, gradient weights before the last stage) runs in the contiguous format; channels-last,
measured faster for inference (DESIGN.md section 12), only where the backward never enters a
convolution. On CUDA every pass is contiguous.

Precision (issue 18): cuDNN convolutions use TF32 by default on Ampere and later GPUs (torch's
``torch.backends.cudnn.conv.fp32_precision`` is ``"tf32"``), a 10-bit mantissa, so gradients would
differ from float32 by about 1e-3 relative, beyond the tolerances of the identity and gradient
checks (chapter 2's GW = labels, finite differences). :func:`get_device` therefore sets
``torch.backends.fp32_precision = "ieee"`` for the process. Faster arithmetic is opt-in per step
through :func:`autocast` (bfloat16), used where no verdict rests on the last digits: chapter 8's
episodic training in the paper profile (its checks and scores run in float32).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["get_device", "memory_format", "place", "graph_enters_convolution", "AUTOCAST", "autocast"]

#: the values of ``autocast``: None (float32) or "bf16" (``torch.autocast`` in bfloat16)
AUTOCAST = (None, "bf16")


def get_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` gives CUDA when present, else CPU; any other value is passed to torch. Sets
    float32 arithmetic to IEEE (TF32 off) for the process (module docstring)."""
    torch.backends.fp32_precision = "ieee"
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    return dev


def memory_format(device: str | torch.device, *, backward_enters_conv: bool) -> torch.memory_format:
    """``channels_last`` for a CPU pass whose backward never enters a convolution, else contiguous."""
    if torch.device(device).type == "cpu" and not backward_enters_conv:
        return torch.channels_last
    return torch.contiguous_format


def place(model: nn.Module, device: str | torch.device, *, backward_enters_conv: bool) -> torch.memory_format:
    """Move ``model`` to ``device`` with its 4-D weights in :func:`memory_format`; return that format.

    Inputs must take the returned format too (``x.contiguous(memory_format=fmt)``): a convolution
    runs channels-last when either its input or its weight is. Every pass calls this at its start,
    so a model left channels-last by an inference pass is made contiguous again before training.
    """
    fmt = memory_format(device, backward_enters_conv=backward_enters_conv)
    model.to(device, memory_format=fmt)
    return fmt


def graph_enters_convolution(output: torch.Tensor) -> bool:
    """Whether the autograd graph behind ``output`` holds a convolution, i.e. whether a backward
    from ``output`` would run a convolution's backward pass."""
    stack, seen = [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "Convolution" in node.name():
            return True
        stack.extend(fn for fn, _ in node.next_functions)
    return False


def autocast(device: str | torch.device, dtype: str | None):
    """``torch.autocast`` on ``device``'s type in bfloat16 for ``dtype="bf16"``; a null context for None."""
    if dtype not in AUTOCAST:
        raise ValueError(f"autocast must be one of {AUTOCAST}, got {dtype!r}")
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
