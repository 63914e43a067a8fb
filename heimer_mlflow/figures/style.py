"""What every figure shares: the palette, sizes, a new Figure or Axes, a legend, a message in
place of a plot, and deterministic PNG output."""

from __future__ import annotations

import pathlib

from matplotlib.figure import Figure

from ..i18n import N_, line_spacing
from ..meta import CAM_NAMES

AD_COLOR = "#D55E00"  # Okabe-Ito vermillion: the positive class (AD)
CN_COLOR = "#0072B2"  # Okabe-Ito blue: the negative class (CN)
TRAIN_COLOR = "#000000"
VAL_COLOR = "#E69F00"  # Okabe-Ito orange
NEUTRAL_COLOR = "#7F7F7F"
MODEL_COLOR = "#009E73"  # Okabe-Ito bluish green
HEAT_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"
DPI = 100
CONVENTION = N_("Neurological convention: subject's left on the image left (L/R marked); coordinates in mm (world space)")
# The report prints brain figures at the full text width of an A4 page (210 mm - 2 x 16 mm):
# drawn at this width they print at scale 1, so every font size below is its printed size.
BRAIN_FIGURE_WIDTH_IN = 7.0
# ... and at most this tall (report.css: figure.brain img max-height; the page's text height less a
# caption): a taller grid of brain rows (a gallery of 4 cases) is drawn narrower instead, so it
# still prints at scale 1 on one page.
MAX_FIGURE_HEIGHT_IN = 228 / 25.4
MIN_PRINTED_FONT_PT = 6.0  # no text in a printed figure is smaller (tests check every figure)


def cam_name(method: str | None) -> str:
    """The display name of a CAM method (``gradcam`` -> Grad-CAM, ``hirescam`` -> HiResCAM);
    None or empty (evaluations before HiResCAM existed) is Grad-CAM."""
    method = (method or "gradcam").strip().lower()
    return CAM_NAMES.get(method, method)


def save_figure(fig: Figure, path, dpi: int = DPI) -> pathlib.Path:
    """Write ``fig`` as a PNG with byte-identical output for identical figures."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
    return path


def new_figure(figsize, layout: str | None = "constrained") -> Figure:
    return Figure(figsize=figsize, dpi=DPI, layout=layout)


def axes_to_draw(ax, figsize=(5.0, 4.0)):
    """The Axes to draw into: ``ax`` itself, or the single Axes of a new Figure."""
    if ax is not None:
        return ax
    return new_figure(figsize).add_subplot()


def legend_below(ax, owned: bool, ncol: int = 2, **kwargs):
    """A legend under the plot (never over the data) when this package made the figure (its
    constrained layout keeps room for it), else a legend inside ``ax`` where it covers least."""
    if owned:
        handles, labels = ax.get_legend_handles_labels()
        return ax.figure.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8, **kwargs)
    return ax.legend(fontsize=8, **kwargs)


def message_axes(ax, text: str, title: str | None = None):
    """An Axes that says, in words, why there is nothing to draw."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10, transform=ax.transAxes,
            linespacing=line_spacing())
    if title:
        ax.set_title(title)
    return ax
