"""Brain volumes as pictures: reorient to RAS with the NIfTI affine, cut three orthogonal slices
through a point in mm, and draw them side by side in one Axes (``draw_views``) in rows of a
figure at the report's text width (``grid_figure``), with colour bars.

Views are in the *neurological* convention: the subject's left on the image's left (marked L and
R); slice positions are world coordinates in mm, with a 50 mm scale bar.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

from ..i18n import NEEDS_FONT, N_, _, current_language
from .style import BRAIN_FIGURE_WIDTH_IN, CONVENTION, MAX_FIGURE_HEIGHT_IN, new_figure

VIEWS = (N_("axial"), N_("coronal"), N_("sagittal"))  # N_: the names are drawn translated


# --------------------------------------------------------------------------------------------
# Orientation: reorient to RAS, cut three orthogonal slices
# --------------------------------------------------------------------------------------------


def reorient_to_ras(volume: np.ndarray, affine) -> tuple[np.ndarray, np.ndarray]:
    """``volume`` (first three axes spatial, extra trailing axes kept) and its affine, with voxel
    axes permuted and flipped so that they run Left->Right, Posterior->Anterior, Inferior->Superior
    (the closest canonical orientation of an oblique affine, as ``nibabel.as_closest_canonical``)."""
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    volume = np.asarray(volume)
    ornt = io_orientation(affine)
    return apply_orientation(volume, ornt), affine @ inv_ornt_aff(ornt, volume.shape[:3])


@dataclass(frozen=True)
class SliceView:
    """One orthogonal view, ready for ``imshow(plane, origin="lower", extent=extent)``.

    ``planes`` hold one 2D array per volume given (rows = the view's vertical axis);
    ``extent`` is (left, right, bottom, top) in mm; ``position_mm`` is the slice's world
    coordinate along its normal (``axis``: x, y or z); ``sides`` are the anatomical directions at
    (left, right, bottom, top) of the image.
    """

    name: str
    planes: tuple[np.ndarray, ...]
    extent: tuple[float, float, float, float]
    axis: str
    position_mm: float
    xlabel: str
    ylabel: str
    sides: tuple[str, str, str, str]

    @property
    def title(self) -> str:
        return f"{_(self.name)} {self.axis} = {self.position_mm:.0f} mm"


# For each view: (normal axis, horizontal axis, vertical axis), RAS axes 0=x, 1=y, 2=z.
_VIEW_AXES = {"axial": (2, 0, 1), "coronal": (1, 0, 2), "sagittal": (0, 1, 2)}
_AXIS_NAMES = ("x", "y", "z")
_AXIS_SIDES = (("L", "R"), ("P", "A"), ("I", "S"))


def ortho_slices(volumes, affine=None, *, center_mm=None, center_voxel=None, peak_of: int | None = 0,
                 absolute_peak: bool = False) -> dict[str, SliceView]:
    """Axial, coronal and sagittal slices of 3D ``volumes`` (same grid, one affine), reoriented to RAS.

    The slices cross at ``center_mm`` (world coordinates), else at ``center_voxel`` (an index in
    the *stored* voxel order), else at the maximum (``absolute_peak``: of the absolute value) of
    ``volumes[peak_of]``, else at the volume's centre. Identical anatomy stored in any voxel order
    (with its matching affine) gives identical planes and extents.
    """
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    single = isinstance(volumes, np.ndarray)
    volumes = [volumes] if single else list(volumes)
    shape = np.asarray(volumes[0]).shape[:3]
    ras, ras_affine = [], None
    for volume in volumes:
        if np.asarray(volume).shape[:3] != shape:
            raise ValueError(f"volumes must share one grid: {np.asarray(volume).shape[:3]} != {shape}")
        data, ras_affine = reorient_to_ras(volume, affine)
        ras.append(data)
    ras_shape = ras[0].shape[:3]
    if center_mm is not None:
        ijk = np.linalg.solve(ras_affine, np.r_[np.asarray(center_mm, dtype=float), 1.0])[:3]
    elif center_voxel is not None:
        world = affine @ np.r_[np.asarray(center_voxel, dtype=float), 1.0]
        ijk = np.linalg.solve(ras_affine, world)[:3]
    elif peak_of is not None and _has_peak(ras[peak_of]):
        values = np.asarray(ras[peak_of], dtype=np.float64)
        values = np.abs(values) if absolute_peak else values
        ijk = np.unravel_index(int(np.argmax(np.where(np.isnan(values), -np.inf, values))), ras_shape)
    else:
        ijk = (np.asarray(ras_shape) - 1) / 2
    ijk = np.clip(np.rint(np.asarray(ijk, dtype=float)).astype(int), 0, np.asarray(ras_shape) - 1)
    world = ras_affine @ np.r_[ijk, 1.0]
    step = np.abs(np.diag(ras_affine)[:3])
    step = np.where(step > 0, step, 1.0)
    # Voxel-centre coordinates of the first and last voxel along each axis, through the crossing point.
    low = np.array([(ras_affine @ np.r_[np.where(np.arange(3) == a, 0, ijk), 1.0])[a] for a in range(3)])
    high = np.array([(ras_affine @ np.r_[np.where(np.arange(3) == a, np.asarray(ras_shape) - 1, ijk), 1.0])[a]
                     for a in range(3)])
    views = {}
    for name in VIEWS:
        normal, horizontal, vertical = _VIEW_AXES[name]
        index = [slice(None)] * 3
        index[normal] = ijk[normal]
        planes = []
        for data in ras:
            plane = data[tuple(index)]  # remaining axes in (horizontal, vertical) order, as x<y<z
            planes.append(np.ascontiguousarray(np.swapaxes(plane, 0, 1)))  # rows = vertical axis
        extent = (low[horizontal] - step[horizontal] / 2, high[horizontal] + step[horizontal] / 2,
                  low[vertical] - step[vertical] / 2, high[vertical] + step[vertical] / 2)
        h_sides, v_sides = _AXIS_SIDES[horizontal], _AXIS_SIDES[vertical]
        views[name] = SliceView(
            name=name, planes=tuple(planes), extent=tuple(float(e) for e in extent), axis=_AXIS_NAMES[normal],
            position_mm=float(world[normal]),
            xlabel=f"{_AXIS_NAMES[horizontal]} (mm, {h_sides[0]}->{h_sides[1]})",
            ylabel=f"{_AXIS_NAMES[vertical]} (mm, {v_sides[0]}->{v_sides[1]})",
            sides=(*h_sides, *v_sides),
        )
    return views


def _has_peak(volume) -> bool:
    """Whether ``volume`` has finite values that are not all equal (else there is no peak to cut at)."""
    finite = np.asarray(volume)[np.isfinite(volume)]
    return finite.size > 0 and finite.min() != finite.max()


def feature_affine(input_affine, input_shape, feature_shape) -> np.ndarray:
    """The affine of a feature map covering the input's field of view on a coarser grid
    (voxel centres aligned as by ``align_corners=False`` interpolation)."""
    input_affine = np.eye(4) if input_affine is None else np.asarray(input_affine, dtype=np.float64)
    scale = np.asarray(input_shape[-3:], dtype=float) / np.asarray(feature_shape[-3:], dtype=float)
    grid = np.eye(4)
    grid[:3, :3] = np.diag(scale)
    grid[:3, 3] = (scale - 1) / 2
    return input_affine @ grid


# --------------------------------------------------------------------------------------------
# Drawing brain views
# --------------------------------------------------------------------------------------------


def grey_range(volume: np.ndarray) -> tuple[float, float]:
    """Robust grey-scale limits (1st-99.5th percentile of non-zero voxels, on every 2nd voxel)."""
    sample = np.asarray(volume[::2, ::2, ::2], dtype=np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    nonzero = sample[sample != 0]
    low, high = np.percentile(nonzero if nonzero.size else sample, [1.0, 99.5])
    return float(low), float(high if high > low else low + 1)


def symmetric_limit(*arrays) -> float:
    """max |value| over the arrays (1 when all are zero or NaN): the +- limit of a diverging scale."""
    values = [np.nanmax(np.abs(a)) for a in arrays if a is not None and np.size(a) and np.any(np.isfinite(a))]
    limit = float(max(values, default=0.0))
    return limit if limit > 0 else 1.0


@dataclass(frozen=True)
class Layer:
    """How to draw one plane of a ``SliceView`` (index into ``planes``).

    ``source``: which of the view sets given to ``draw_views`` the plane comes from (a coarse
    feature grid and the fine anatomy have one set each; they cover the same field of view)."""

    plane: int
    cmap: str = "gray"
    vmin: float | None = None
    vmax: float | None = None
    alpha: float = 1.0
    hide_below: float | None = None  # values below this are transparent
    source: int = 0
    hide_abs_below: float | None = None  # values with |value| below this are transparent (diverging maps)


_VIEW_GAP_MM = 12.0


_TOP_MARGIN_MM, _BOTTOM_MARGIN_MM = 17.0, 18.0
SMALL_FONT = 7.0  # view titles, side letters, scale bar, colour-bar ticks: 7 pt printed


def content_size_mm(views: Mapping[str, SliceView]) -> tuple[float, float]:
    """(width, height) in mm of three views drawn side by side by ``draw_views``."""
    widths = [v.extent[1] - v.extent[0] for v in views.values()]
    heights = [v.extent[3] - v.extent[2] for v in views.values()]
    return sum(widths) + _VIEW_GAP_MM * (len(widths) - 1) + 2, max(heights) + _TOP_MARGIN_MM + _BOTTOM_MARGIN_MM


def masked_layer(plane, layer: Layer, cmap):
    if layer.hide_below is not None:
        plane = np.ma.masked_less(plane, layer.hide_below)
    if layer.hide_abs_below is not None:
        plane = np.ma.masked_where(~(np.abs(np.ma.filled(plane, np.nan)) >= layer.hide_abs_below), plane)
    if layer.hide_below is not None or layer.hide_abs_below is not None:
        cmap = cmap.with_extremes(bad=(0, 0, 0, 0))
    return plane, cmap


def draw_views(ax, views, layers: Sequence[Layer], *, side_color: str = "white", scale_bar: bool = True):
    """Draw the three views side by side in one Axes (mm units, equal aspect, like nilearn), each
    titled with its slice position and marked with its anatomical sides; returns the last image
    (for a colour bar). One Axes per row keeps large figures fast to build and render.

    ``views``: one ``{name: SliceView}`` mapping, or a list of them (``Layer.source`` picks one),
    e.g. a coarse feature map over the fine anatomy: the first set gives the geometry and titles."""
    view_sets = [views] if isinstance(views, Mapping) else list(views)
    first = view_sets[0]
    offset, image = 0.0, None
    top = max(v.extent[3] - v.extent[2] for v in first.values())
    text = dict(fontsize=8, fontweight="bold", color=side_color)
    for name, view in first.items():
        left, right, bottom, upper = view.extent
        for layer in layers:
            source = view_sets[layer.source][name]
            s_left, s_right, s_bottom, s_upper = source.extent
            extent = (offset + s_left - left, offset + s_right - left, s_bottom - bottom, s_upper - bottom)
            plane, cmap = masked_layer(source.planes[layer.plane], layer, matplotlib.colormaps[layer.cmap])
            image = ax.imshow(plane, cmap=cmap, vmin=layer.vmin, vmax=layer.vmax, alpha=layer.alpha, origin="lower",
                              extent=extent, interpolation="nearest")
        width, height = right - left, upper - bottom
        ax.text(offset + width / 2, top + 2, view.title, ha="center", va="bottom", fontsize=8)
        ax.text(offset + 2, height / 2, view.sides[0], ha="left", va="center", **text)
        ax.text(offset + width - 2, height / 2, view.sides[1], ha="right", va="center", **text)
        ax.text(offset + width / 2, height - 2, view.sides[3], ha="center", va="top", **text)
        offset += width + _VIEW_GAP_MM
    if scale_bar:
        ax.plot([0, 50], [-6, -6], color="black", linewidth=2, solid_capstyle="butt")
        ax.text(25, -8, "50 mm", ha="center", va="top", fontsize=SMALL_FONT)
    ax.set_xlim(-1, offset - _VIEW_GAP_MM + 1)
    ax.set_ylim(-_BOTTOM_MARGIN_MM, top + _TOP_MARGIN_MM)
    ax.set_aspect("equal")
    ax.set_anchor("W")
    ax.set_axis_off()
    return image


def grid_figure(rows: int, fig: Figure | None, *, title=None, row_height: float | None = None,
                 content=(600.0, 250.0), shared_bar=False, caption: str = CONVENTION,
                 width: float = BRAIN_FIGURE_WIDTH_IN, subtitle: str | None = None):
    """A figure with one brain Axes per row and a colour-bar Axes per row (or one for all rows).

    The figure is ``width`` inches wide (the report's text width: it prints at scale 1, so the
    font sizes here are printed sizes) and each row as tall as ``content`` ((width, height) in mm
    per row, see ``content_size_mm``) needs at that width; ``row_height`` (inches) instead fixes
    the rows' height and derives the width. Rows that would make the figure taller than a page
    allows (``MAX_FIGURE_HEIGHT_IN``) are made lower and the figure narrower, so that it prints at
    scale 1 on one page. A fixed layout (no constrained/tight layout solver): fast for tall
    galleries. ``subtitle``: one more line under the title (a finding the reader must not miss)."""
    head, foot, row_gap, bar_room, side = 0.5 + (0.2 if subtitle else 0.0), 0.3, 0.35, 1.0, 0.1
    if row_height is None:
        image_width = width - bar_room - 2 * side
        row_height = image_width * content[1] / content[0]
        highest = (MAX_FIGURE_HEIGHT_IN - head - foot - row_gap * (rows - 1)) / rows
        if row_height > highest:
            row_height = highest
            image_width = row_height * content[0] / content[1]
    else:
        image_width = row_height * content[0] / content[1]
    width, height = image_width + bar_room + 2 * side, row_height * rows + row_gap * (rows - 1) + head + foot
    fig = fig if fig is not None else new_figure((width, height), layout=None)
    width, height = fig.get_figwidth(), fig.get_figheight()
    grid = fig.add_gridspec(rows, 2, width_ratios=[image_width, 0.15], left=side / width,
                            right=1 - (bar_room - 0.25) / width, top=1 - head / height, bottom=foot / height,
                            wspace=0.25 / ((image_width + 0.15) / 2), hspace=row_gap / row_height)
    axes = [fig.add_subplot(grid[r, 0]) for r in range(rows)]
    bars = [fig.add_subplot(grid[:, 1])] * rows if shared_bar else [fig.add_subplot(grid[r, 1]) for r in range(rows)]
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.1 / height, va="top")
    if subtitle:
        fig.text(0.5, 1 - 0.32 / height, subtitle, ha="center", va="top", fontsize=8.5, color="#8b0000")
    if caption:
        fig.text(0.5, 0.06 / height, _(caption), ha="center", va="bottom", fontsize=SMALL_FONT, color="#333333")
    return fig, axes, bars


def colorbar(fig, image, cax, label: str):
    bar = fig.colorbar(image, cax=cax)
    bar.set_label(label, fontsize=SMALL_FONT + 0.5)
    bar.ax.tick_params(labelsize=SMALL_FONT)
    return bar


def row_label(ax, text: str) -> None:
    if current_language() in NEEDS_FONT:  # Hangul stands taller: lift the label clear of the views' titles
        ax.annotate(text, (0.0, 1.0), xycoords="axes fraction", xytext=(0, 5), textcoords="offset points", fontsize=9,
                    fontweight="bold", va="bottom", ha="left")
        return
    ax.text(0.0, 1.0, text, transform=ax.transAxes, fontsize=9, fontweight="bold", va="bottom", ha="left")


def volume3d(array) -> np.ndarray:
    """A 3D volume from [D, H, W] or [C, D, H, W] (first channel)."""
    array = np.asarray(array)
    return array[0] if array.ndim == 4 else array


def crossing_mm(views: Mapping[str, SliceView]) -> tuple[float, float, float]:
    """The world point (x, y, z in mm) where the three views of ``ortho_slices`` cross."""
    return views["sagittal"].position_mm, views["coronal"].position_mm, views["axial"].position_mm
