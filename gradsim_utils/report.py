"""Numbers from executed cells into the book's text (myst-nb glue), never typed by hand."""
from __future__ import annotations

import numbers

import numpy as np
import torch
from myst_nb import glue as _myst_glue

__all__ = ["glue", "as_builtin"]


def as_builtin(value):
    """numpy / torch scalars as Python int, float or bool (their repr is what glue formats)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"only a one-element tensor can be glued, got shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return value
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def glue(name: str, value, display: bool = False):
    """``myst_nb.glue`` of ``value`` as a Python builtin, so ``{glue:text}`name:.3f``` formats it."""
    return _myst_glue(name, as_builtin(value), display=display)
