"""One look for every figure of the book: readable at book width, colour-blind-safe palette."""
from __future__ import annotations

import matplotlib as mpl
import seaborn as sns

__all__ = ["PALETTE", "setup"]

#: seaborn's colour-blind-safe qualitative palette (ten colours).
PALETTE = sns.color_palette("colorblind", 10)


def setup(dpi: int = 110) -> None:
    """Apply the book's figure style: white grid, colour-blind palette, legible font sizes."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=0.9)
    mpl.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi, "figure.autolayout": False,
                         "axes.titlesize": "medium", "image.cmap": "viridis"})
