"""Figures are legible at book width: plotting.png raises small text and records the smallest size."""
import base64
import io

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from gradsim_utils import plotting  # noqa: E402


@pytest.mark.parametrize("width_in", [4.0, 11.0, 15.0])
def test_small_text_is_raised_to_min_text_px_at_book_width(width_in):
    plotting.setup()
    fig, axes = plt.subplots(1, 2, figsize=(width_in, 3), constrained_layout=True)
    axes[0].set_title("six points", fontsize=6)
    axes[1].tick_params(labelsize=5)
    line, = axes[1].plot([0, 1])
    axes[1].legend([line], ["line"], fontsize=4)
    image = Image.open(io.BytesIO(base64.b64decode(plotting.png(fig))))
    shown = min(1.0, plotting.BOOK_WIDTH_PX / image.width)
    recorded = float(image.info[plotting.TEXT_PX_KEY])
    assert recorded * shown >= plotting.MIN_TEXT_PX - 0.05
    fig.canvas.draw()
    smallest_pt = min(t.get_fontsize() for t in fig.findobj(matplotlib.text.Text) if t.get_text() and t.get_visible())
    assert recorded == pytest.approx(smallest_pt * fig.dpi / 72, abs=0.01)
    plt.close(fig)


def test_min_font_pt_grows_with_the_width_a_figure_is_scaled_down_from():
    assert plotting.min_font_pt(2.0, 110) == pytest.approx(10 * 72 / 110)
    assert plotting.min_font_pt(16.0, 110) == pytest.approx(2 * plotting.min_font_pt(8.0, 110))
