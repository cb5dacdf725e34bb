"""One look for every figure of the book: readable at book width, colour-blind-safe palette.

A figure wider than the book's text column is scaled down by the browser, and its text with it: text of
``s`` points in a figure ``w`` inches wide shows at ``s * BOOK_WIDTH_PX / (72 * w)`` px. In a notebook,
:func:`setup` therefore renders figures through :func:`png`, which first raises every text of the
figure to :func:`min_font_pt` (at least ``MIN_TEXT_PX`` at book width) and records the smallest text,
in px of the saved image, in the PNG's text chunk ``TEXT_PX_KEY``, where the browser test reads it back.
"""
from __future__ import annotations

import base64
import io

import matplotlib as mpl
import matplotlib.pyplot as plt
import seaborn as sns
from IPython import get_ipython
from matplotlib.figure import Figure
from matplotlib.text import Text

__all__ = ["BOOK_WIDTH_PX", "MIN_TEXT_PX", "PALETTE", "TEXT_PX_KEY", "min_font_pt", "png", "setup"]

#: seaborn's colour-blind-safe qualitative palette (ten colours).
PALETTE = sns.color_palette("colorblind", 10)

#: Width of the book's text column in CSS px at a 1,280 px window (sphinx-book-theme 1.x; book/_static
#: keeps figures at most this wide at narrower windows too).
BOOK_WIDTH_PX = 688

#: The smallest figure text the book shows, in CSS px.
MIN_TEXT_PX = 10.0

#: PNG text key holding the smallest text size (px of the image) of a figure rendered by :func:`png`.
TEXT_PX_KEY = "gradsim:min-text-px"


def setup(dpi: int = 110) -> None:
    """Apply the book's figure style (white grid, colour-blind palette, legible font sizes) and, inside
    IPython, show figures through :func:`png`."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE, font_scale=0.9)
    mpl.rcParams.update({"figure.dpi": dpi, "savefig.dpi": dpi, "figure.autolayout": False,
                         "axes.titlesize": "medium", "image.cmap": "viridis"})
    shell = get_ipython()
    if shell is not None:  # in plain Python (no shell) figures are saved by their caller
        # loading the inline backend now, not at the first figure, keeps it from replacing the printer
        plt.switch_backend(mpl.get_backend())
        shell.display_formatter.formatters["image/png"].for_type(Figure, png)


def min_font_pt(width_in: float, dpi: float) -> float:
    """Smallest font size (points) that shows at ``MIN_TEXT_PX`` or more in a figure ``width_in`` inches
    wide saved at ``dpi``, displayed at its own width or scaled down to ``BOOK_WIDTH_PX``."""
    shown = min(1.0, BOOK_WIDTH_PX / (width_in * dpi))
    return MIN_TEXT_PX * 72 / (dpi * shown)


def _texts(fig: Figure) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_text() and t.get_visible()]


def _raise_texts(fig: Figure, width_in: float) -> None:
    floor = min_font_pt(width_in, fig.dpi)
    fig.canvas.draw()  # creates the tick labels, which tick_params (not set_fontsize) keeps for new ticks
    for ax in fig.axes:
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            if any(label.get_fontsize() < floor for label in axis.get_ticklabels(which="both")):
                ax.tick_params(axis=name, which="both", labelsize=floor)
    for text in _texts(fig):
        if text.get_fontsize() < floor:
            text.set_fontsize(floor)


def png(fig: Figure) -> str | None:
    """The figure as a base64 PNG (IPython's image/png format), its text raised to be legible at book
    width. Raising text can widen the PNG's tight bounding box, so it is raised again for the new width
    until the width stays."""
    if not fig.axes:
        return None
    width, pad = fig.get_figwidth(), 2 * mpl.rcParams["savefig.pad_inches"]
    for _ in range(5):
        _raise_texts(fig, width)
        tight = fig.get_tightbbox(fig.canvas.get_renderer()).width + pad
        if tight <= width:
            break
        width = tight * 1.01  # a little beyond, so that the loop ends with the text on the safe side
    smallest = min((t.get_fontsize() for t in _texts(fig)), default=0.0) * fig.dpi / 72
    out = io.BytesIO()
    fig.savefig(out, format="png", bbox_inches="tight", facecolor=fig.get_facecolor(),
                metadata={TEXT_PX_KEY: f"{smallest:.2f}"})
    return base64.b64encode(out.getvalue()).decode("ascii")
