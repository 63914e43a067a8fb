"""Where the model looks and what differs in the data, over the anatomy: one subject's CAM
(``plot_cam_overlay``) and the case gallery, group-mean CAMs and their AD - CN difference, this
version beside the champion, feature maps and their channel differences, and the raw input
difference with its Welch t-map (the baseline the maps are judged against).

Every function takes plain arrays (volumes on the input grid with their NIfTI affine, or layer
grids) and draws with ``slices``; heat maps use ``inferno``, differences ``RdBu_r`` (red = higher
in AD) on a scale symmetric about zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from scipy.ndimage import zoom

from ..cohort.preprocessing import brain_mask
from ..i18n import _
from ..meta import DEFAULT_CLASS_NAMES
from .slices import (
    Layer, colorbar, content_size_mm, crossing_mm, grey_range, grid_figure, masked_layer, row_label, SMALL_FONT,
    symmetric_limit, volume3d, draw_views, feature_affine, ortho_slices,
)
from .style import BRAIN_FIGURE_WIDTH_IN, CONVENTION, DIVERGING_CMAP, HEAT_CMAP, new_figure, message_axes, cam_name


# --------------------------------------------------------------------------------------------
# CAM overlays (Grad-CAM or HiResCAM, the evaluation's primary map)
# --------------------------------------------------------------------------------------------


def plot_cam_overlay(image, cam, affine=None, *, title: str | None = None, center_mm=None, alpha: float = 0.5,
                     show_below: float = 0.1, method: str = "gradcam",
                     fig: Figure | None = None) -> Figure:
    """One subject's CAM (``method``: gradcam or hirescam, for the labels) over its MRI in axial,
    coronal and sagittal views, with a colour bar.

    ``image``: [D, H, W] or [C, D, H, W] (first channel shown); ``cam``: [D, H, W] on the same grid;
    ``affine``: their NIfTI affine. The CAM is shown as a share of its maximum; values below
    ``show_below`` of it are left transparent. Slices cross at the CAM's peak unless ``center_mm``.
    """
    return plot_cam_gallery([(image, cam, affine, title or cam_name(method))], center_mm=center_mm, alpha=alpha,
                            show_below=show_below, method=method, fig=fig)


def plot_cam_gallery(
    cases, *, title: str | None = None, center_mm=None, alpha: float = 0.5, show_below: float = 0.1,
    positive_class: str = "AD", method: str = "gradcam", fig: Figure | None = None,
) -> Figure:
    """One row of three orthogonal CAM overlays per case (``method``: the map shown, gradcam or
    hirescam), slices through each case's CAM peak.

    ``cases``: ``engine.GalleryCase`` objects (image, primary_cam, affine, subject_id, prob, outcome) or
    tuples ``(image, cam, affine, row_title)``.
    """
    rows = []
    for case in cases:
        if isinstance(case, tuple):
            image, cam, affine, label = case
        else:
            image, cam, affine = case.image, case.primary_cam, case.affine
            label = _("{subject}: {outcome}, model's P({positive}) = {prob:.2f}").format(
                subject=case.subject_id, outcome=case.outcome, positive=positive_class, prob=case.prob)
        rows.append((volume3d(image), np.asarray(cam, dtype=np.float32), affine, label))
    row_views = []
    for image, cam, affine, _unused in rows:
        peak = float(np.nanmax(cam)) if np.any(np.isfinite(cam)) else 0.0
        shown = cam / peak if peak > 0 else np.zeros_like(cam)
        row_views.append(ortho_slices([image, shown], affine, center_mm=center_mm, peak_of=1))
    content = content_size_mm(row_views[0]) if row_views else (600.0, 250.0)
    fig, axes, bars = grid_figure(max(len(rows), 1), fig, title=title, shared_bar=True, content=content)
    if not rows:
        bars[0].set_axis_off()
        message_axes(axes[0], _("no cases to show"))
        return fig
    heat = None
    for r, (ax, views, (image, cam, affine, label)) in enumerate(zip(axes, row_views, rows)):
        low, high = grey_range(image)
        heat = draw_views(ax, views, [Layer(0, "gray", low, high),
                                      Layer(1, HEAT_CMAP, 0.0, 1.0, alpha, hide_below=show_below)],
                          scale_bar=r == len(rows) - 1)
        row_label(ax, label)
    bar = colorbar(fig, heat, bars[0],
                    _("{cam}, share of the subject's maximum (< {show_below:g} not shown)").format(
                        cam=cam_name(method), show_below=show_below))
    bar.solids.set_alpha(1.0)
    return fig


# --------------------------------------------------------------------------------------------
# Group-mean CAM and its AD-CN difference
# --------------------------------------------------------------------------------------------


def plot_group_cam(mean_by_class: Mapping[str, np.ndarray], diff, affine=None, *, background=None,
                   class_names: Sequence[str] = DEFAULT_CLASS_NAMES, counts: Mapping[str, int] | None = None,
                   center_mm=None, alpha: float = 0.6, show_below: float = 0.1, method: str = "gradcam",
                   fig: Figure | None = None) -> Figure:
    """Group-mean CAM per class (``method``: gradcam or hirescam, for the labels) over a grey
    ``background`` (e.g. the mean input) if given, and the AD - CN difference (RdBu_r, symmetric,
    over the same background), three views each, slices through the positive class's mean-CAM
    peak. Both means and the difference share one scale: a share of the highest group-mean value
    (raw CAM units mean nothing to a reader). Over a background, means below ``show_below`` and
    differences below ``show_below`` of their scale are transparent, so the anatomy shows."""
    cam = cam_name(method)
    negative, positive = class_names
    present = [name for name in (negative, positive) if name in mean_by_class]
    means = [np.asarray(mean_by_class[name], dtype=np.float32) for name in present]
    diff = np.asarray(diff, dtype=np.float32)
    high = max([float(np.nanmax(m)) for m in means if np.any(np.isfinite(m))] + [0.0]) or 1.0
    means = [m / high for m in means]
    diff = diff / high
    background = None if background is None else volume3d(background)
    peak_source = means[present.index(positive)] if positive in present else diff
    volumes = [peak_source, *means, diff] + ([] if background is None else [background])
    views = ortho_slices(volumes, affine, center_mm=center_mm, peak_of=0)
    fig, axes, bars = grid_figure(len(present) + 1, fig, title=_('{cam}: group means and their difference').format(
        cam=cam),
                                   content=content_size_mm(views))
    grey = grey_range(background) if background is not None else None
    counts = counts or {}
    hidden = _(' (< {show_below:g} not shown)').format(show_below=show_below) if background is not None else ""
    for r, name in enumerate(present):
        if background is not None:
            layers = [Layer(len(volumes) - 1, "gray", *grey),
                      Layer(1 + r, HEAT_CMAP, 0.0, 1.0, alpha, hide_below=show_below)]
        else:
            layers = [Layer(1 + r, HEAT_CMAP, 0.0, 1.0)]
        image = draw_views(axes[r], views, layers, scale_bar=False)
        row_label(axes[r], _("mean {cam}, {name}").format(
            cam=cam, name=name) + (f" (n = {counts[name]})" if name in counts else ""))
        colorbar(fig, image, bars[r], _('share of the highest group mean{hidden}').format(
            hidden=hidden)).solids.set_alpha(1.0)
    if not np.any(np.isfinite(diff)):
        bars[-1].set_axis_off()
        message_axes(axes[-1], _("difference {positive} - {negative} not computable: it needs subjects in both groups").format(
            positive=positive, negative=negative))
        return fig
    limit = symmetric_limit(diff)
    if background is not None:
        layers = [Layer(len(volumes) - 1, "gray", *grey),
                  Layer(1 + len(present), DIVERGING_CMAP, -limit, limit, 0.85, hide_abs_below=show_below * limit)]
        image = draw_views(axes[-1], views, layers)
    else:
        image = draw_views(axes[-1], views, [Layer(1 + len(present), DIVERGING_CMAP, -limit, limit)],
                           side_color="black")
    row_label(axes[-1], _("difference {positive} - {negative} (red: more {cam} in {positive}, blue: in {negative})").format(
        positive=positive, negative=negative, cam=cam))
    bar = colorbar(fig, image, bars[-1], _('{positive} - {negative}, same scale{hidden}').format(
        positive=positive, negative=negative, hidden=hidden))
    bar.solids.set_alpha(1.0)
    return fig


def plot_champion_comparison(this_map, champion_map, affine=None, *, background=None,
                             labels: Sequence[str] = (_("this version"), "champion"), group: str = "AD",
                             alpha: float = 0.6, fig: Figure | None = None) -> Figure:
    """The registry review's picture: each model's group-mean map of ``group`` over the same grey
    ``background`` (the cohort's mean input), one row per model, slices through that row's own
    peak (where each model looks most). Each row has its own colour scale: raw map units of two
    models are not comparable, their places are."""
    maps = [volume3d(np.asarray(m, dtype=np.float32)) for m in (this_map, champion_map)]
    background = None if background is None else volume3d(background)
    fig_views = [ortho_slices([m] + ([] if background is None else [background]), affine, peak_of=0) for m in maps]
    fig, axes, bars = grid_figure(2, fig, title=_('Where each model looks: mean map of the {group} group').format(
        group=group),
                                   content=content_size_mm(fig_views[0]))
    grey = grey_range(background) if background is not None else None
    for r, (volume, views, label) in enumerate(zip(maps, fig_views, labels)):
        high = float(np.nanmax(volume)) if np.any(np.isfinite(volume)) and np.nanmax(volume) > 0 else 1.0
        layers = ([Layer(1, "gray", *grey), Layer(0, HEAT_CMAP, 0.0, high, alpha)] if background is not None
                  else [Layer(0, HEAT_CMAP, 0.0, high)])
        image = draw_views(axes[r], views, layers, scale_bar=r == 1)
        row_label(axes[r], label)
        colorbar(fig, image, bars[r], _("map (raw units)")).solids.set_alpha(1.0)
    return fig


# --------------------------------------------------------------------------------------------
# Feature maps
# --------------------------------------------------------------------------------------------


def _feature_grids(diff_shape, affine, input_shape, background):
    """(input affine, feature-grid affine) for [C, d, h, w] maps of an input of ``input_shape``."""
    input_affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if input_shape is None:
        input_shape = np.shape(background)[-3:] if background is not None else diff_shape[1:]
    return input_affine, feature_affine(input_affine, input_shape, diff_shape[1:])


FEATURE_DIFF_HIDDEN = 0.2  # over the anatomy, feature-map differences below this share of the scale are not drawn


def _head_on_grid(background, shape) -> np.ndarray | None:
    """Which cells of a coarse grid of ``shape`` (same field of view and voxel order as
    ``background``) lie mostly in the head: the voxels that differ from the image's most common
    value (the background). None when the image has no clear background."""
    values = np.asarray(background, dtype=np.float32)
    sample = values[::3, ::3, ::3].ravel()
    levels, counts = np.unique(sample[np.isfinite(sample)], return_counts=True)
    if levels.size == 0 or counts.max() < 0.1 * sample.size:
        return None
    head = (~np.isclose(values, levels[np.argmax(counts)])).astype(np.float32)
    factors = [n / m for n, m in zip(shape, head.shape)]
    return zoom(head, factors, order=1, grid_mode=True, mode="nearest")[: shape[0], : shape[1], : shape[2]] >= 0.5


def plot_feature_maps(mean_positive, mean_negative, diff, channels, *, affine=None, input_shape=None,
                      background=None, class_names: Sequence[str] = DEFAULT_CLASS_NAMES, layer: str = "",
                      n_channels: int = 6, view: str = "axial", slice_mm=None,
                      fig: Figure | None = None) -> Figure:
    """Average feature maps per group and their difference, one column per channel.

    ``mean_positive``/``mean_negative``/``diff``: [C, d, h, w] layer activations (group means and
    AD - CN); ``channels``: channel indices, most separating first (the first ``n_channels`` are
    shown); ``affine``/``input_shape``: of the input, to orient the coarse grid (see
    ``feature_affine``); ``background``: an input-grid volume (e.g. the cohort's mean input) under
    the difference row, so differences sit on the anatomy (|difference| below
    ``FEATURE_DIFF_HIDDEN`` of the scale is transparent). One ``view`` slice per channel through
    the grid's centre (or ``slice_mm``);
    the means share one colour scale, the differences one symmetric scale (+-max|d| over the
    shown channels). Drawn in mm at the report's text width.
    """
    negative, positive = class_names
    channels = [int(c) for c in list(channels)[:n_channels]]
    title = (_("Average feature maps of {layer}: top {n} channels (by {positive}/{negative} separation), {view} slice")
             if layer else
             _("Average feature maps: top {n} channels (by {positive}/{negative} separation), {view} slice")).format(
        layer=layer, n=len(channels), positive=positive, negative=negative, view=_(view))
    if not channels:
        fig = fig if fig is not None else new_figure((BRAIN_FIGURE_WIDTH_IN, 2.0), layout=None)
        fig.suptitle(title, fontsize=10)
        message_axes(fig.add_subplot(), _("no channels to show"))
        return fig
    diff = np.asarray(diff)
    background = None if background is None else volume3d(background)
    input_affine, layer_affine = _feature_grids(diff.shape, affine, input_shape, background)
    stacked = [np.moveaxis(np.asarray(m)[channels], 0, -1) for m in (mean_positive, mean_negative, diff)]
    v = ortho_slices(stacked, layer_affine, center_mm=slice_mm, peak_of=None)[view]
    pos, neg, dif = v.planes  # [rows, cols, k]
    anatomy = None
    if background is not None:
        crossing = [0.0, 0.0, 0.0]
        crossing["xyz".index(v.axis)] = v.position_mm
        anatomy = ortho_slices(background, input_affine, center_mm=crossing)[view]
    high = max(float(np.nanmax(pos)), float(np.nanmax(neg)), 0.0) or 1.0
    low = min(float(np.nanmin(pos)), float(np.nanmin(neg)), 0.0)
    limit = symmetric_limit(dif)
    mosaic = _ChannelMosaic(v, channels)
    fig, grid = mosaic.figure(fig, title)
    rows = ((pos, _("mean {name}").format(name=positive), "viridis", low, high),
            (neg, _("mean {name}").format(name=negative), "viridis", low, high),
            (dif, f"{positive} - {negative}", DIVERGING_CMAP, -limit, limit))
    for r, (planes, label, cmap, vmin, vmax) in enumerate(rows):
        ax = fig.add_subplot(grid[r, 0])
        under = anatomy if r == 2 else None  # the differences sit on the anatomy
        hidden_below = FEATURE_DIFF_HIDDEN * limit if under is not None else None
        image = mosaic.draw_row(ax, planes, Layer(0, cmap, vmin, vmax, hide_abs_below=hidden_below), under=under,
                                grey=grey_range(background) if under is not None else None, numbered=r == 0,
                                side_color="white" if r < 2 or under is not None else "black")
        ax.set_ylabel(label, fontsize=8)
        hidden = _(' (< {feature_diff_hidden:.0%} not shown)').format(feature_diff_hidden=FEATURE_DIFF_HIDDEN)
        bar_label = _("activation") if r < 2 else (_("difference") + (hidden if under is not None else ""))
        bar = colorbar(fig, image, fig.add_subplot(grid[r, 1]), bar_label)
        bar.solids.set_alpha(1.0)
    fig.text(0.5, 0.06 / fig.get_figheight(), _("{view} slice {axis} = {mm:.0f} mm").format(
        view=_(v.name), axis=v.axis, mm=v.position_mm)
             + "; " + _(CONVENTION), ha="center",
             va="bottom", fontsize=SMALL_FONT, color="#333333")
    return fig


class _ChannelMosaic:
    """Three rows (two means, their difference) of one tile per channel, side by side: the slice
    ``view`` of each channel, a gap between tiles, room above them for the channel numbers and
    beside them for the row's label and colour bar, at the report's text width."""

    LABEL, BAR, SIDE, TOP, FOOT, ROW_GAP = 0.45, 0.95, 0.05, 0.45, 0.3, 0.12  # inches

    def __init__(self, view, channels: list[int]):
        self.view, self.channels = view, channels
        self.tile_w, self.tile_h = view.extent[1] - view.extent[0], view.extent[3] - view.extent[2]
        self.gap = 0.08 * self.tile_w
        self.head_room = 0.14 * self.tile_h  # channel numbers above the tiles
        self.width = len(channels) * self.tile_w + (len(channels) - 1) * self.gap

    def figure(self, fig: Figure | None, title: str):
        """(the figure, its 3 x 2 grid: the mosaics and their colour bars), titled."""
        image_width = BRAIN_FIGURE_WIDTH_IN - self.LABEL - self.BAR - self.SIDE
        row_height = image_width * (self.tile_h + self.head_room) / self.width
        height = 3 * row_height + 2 * self.ROW_GAP + self.TOP + self.FOOT
        fig = fig if fig is not None else new_figure((BRAIN_FIGURE_WIDTH_IN, height), layout=None)
        width, height = fig.get_figwidth(), fig.get_figheight()
        grid = fig.add_gridspec(3, 2, width_ratios=[image_width, 0.15], left=self.LABEL / width,
                                right=1 - (self.BAR - 0.3) / width, top=1 - self.TOP / height,
                                bottom=self.FOOT / height, wspace=0.3 / ((image_width + 0.15) / 2),
                                hspace=self.ROW_GAP / row_height)
        fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
        return fig, grid

    def draw_row(self, ax, planes, layer: Layer, *, under=None, grey=None, numbered: bool = False,
                 side_color: str = "white"):
        """Each channel's plane (``planes[..., c]``) in its tile, drawn as ``layer`` says, over the
        anatomy ``under`` when given (a SliceView of the input grid, grey from ``grey[0]`` to
        ``grey[1]``); ``numbered``: the channel numbers above the tiles. Returns the last image
        drawn (for the colour bar)."""
        v, image = self.view, None
        for c, channel in enumerate(self.channels):
            x0 = c * (self.tile_w + self.gap)
            extent = (x0, x0 + self.tile_w, 0.0, self.tile_h)
            if under is not None:
                a = under.extent
                ax.imshow(under.planes[0], cmap="gray", vmin=grey[0], vmax=grey[1], origin="lower",
                          interpolation="nearest", extent=(x0 + a[0] - v.extent[0], x0 + a[1] - v.extent[0],
                                                           a[2] - v.extent[2], a[3] - v.extent[2]))
                plane, colours = masked_layer(planes[..., c], layer, matplotlib.colormaps[layer.cmap])
                image = ax.imshow(plane, cmap=colours, vmin=layer.vmin, vmax=layer.vmax, alpha=0.8, origin="lower",
                                  interpolation="nearest", extent=extent)
            else:
                image = ax.imshow(planes[..., c], cmap=layer.cmap, vmin=layer.vmin, vmax=layer.vmax, origin="lower",
                                  interpolation="nearest", extent=extent)
            if numbered:
                ax.text(x0 + self.tile_w / 2, self.tile_h + 0.03 * self.tile_h, f"ch {channel}", ha="center",
                        va="bottom", fontsize=8)
            if c == 0:
                self._sides(ax, side_color)
        ax.set_xlim(0, self.width)
        ax.set_ylim(0, self.tile_h + self.head_room)
        ax.set_aspect("equal")
        ax.set_anchor("W")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        return image

    def _sides(self, ax, color: str) -> None:
        """The view's side letters (e.g. L and R) at the foot of the first tile."""
        for x, side, align in ((0.03, self.view.sides[0], "left"), (0.97, self.view.sides[1], "right")):
            ax.text(x * self.tile_w, 0.03 * self.tile_h, side, fontsize=SMALL_FONT, color=color, va="bottom",
                    ha=align, fontweight="bold")


def plot_channel_difference_maps(diff, channels, *, affine=None, input_shape=None, n_channels: int = 3,
                                 background=None, class_names: Sequence[str] = DEFAULT_CLASS_NAMES, layer: str = "",
                                 scores=None, fig: Figure | None = None) -> Figure:
    """AD - CN difference of single top-ranked channels in three orthogonal views (one row each,
    through the channel's largest |difference|), each on its own symmetric scale; over the
    ``background`` anatomy (an input-grid volume, e.g. the cohort's mean input) when given, with
    |difference| below ``FEATURE_DIFF_HIDDEN`` of the row's scale transparent and the slices
    through the largest |difference| inside the head (not at the edge of the field of view).

    ``scores``: optional ranking score per listed channel (e.g. mean |t|), shown in the row label.
    """
    negative, positive = class_names
    channels = [int(c) for c in list(channels)[:n_channels]]
    diff = np.asarray(diff)
    background = None if background is None else volume3d(background)
    layer_affine = input_affine = None
    if channels and (affine is not None or background is not None):
        input_affine, layer_affine = _feature_grids(diff.shape, affine, input_shape, background)
    head = _head_on_grid(background, diff.shape[1:]) if background is not None and channels else None
    row_views = []
    for channel in channels:
        strength = np.nan_to_num(np.abs(diff[channel]) * (1.0 if head is None else head), nan=0.0)
        peak = np.unravel_index(int(np.argmax(strength)), strength.shape) if strength.max() > 0 else None
        row_views.append(ortho_slices(diff[channel], layer_affine, center_voxel=peak, peak_of=0, absolute_peak=True))
    fig, axes, bars = grid_figure(max(len(channels), 1), fig,
                                   content=content_size_mm(row_views[0]) if row_views else (600.0, 250.0),
                                   title=_("Feature-map difference {positive} - {negative}{layer}, top channels").format(
                                       positive=positive, negative=negative, layer=f" ({layer})" if layer else ""))
    if not channels:
        bars[0].set_axis_off()
        message_axes(axes[0], _("no channels to show"))
        return fig
    scores = None if scores is None else list(scores)
    grey = grey_range(background) if background is not None else None
    for r, (channel, views) in enumerate(zip(channels, row_views)):
        limit = symmetric_limit(diff[channel])
        last = r == len(channels) - 1
        if background is not None:
            anatomy = ortho_slices(background, input_affine, center_mm=crossing_mm(views))
            layers = [Layer(0, "gray", *grey, source=1),
                      Layer(0, DIVERGING_CMAP, -limit, limit, 0.8, hide_abs_below=FEATURE_DIFF_HIDDEN * limit)]
            image = draw_views(axes[r], [views, anatomy], layers, scale_bar=last)
        else:
            image = draw_views(axes[r], views, [Layer(0, DIVERGING_CMAP, -limit, limit)], side_color="black",
                               scale_bar=last)
        score = "" if scores is None else f", mean |t| = {float(scores[r]):.2f}"
        row_label(axes[r], _("channel {channel} (rank {rank}{score}); red: higher in {positive}").format(
            channel=channel, rank=r + 1, score=score, positive=positive))
        hidden = _(' (< {feature_diff_hidden:.0%} not shown)').format(
            feature_diff_hidden=FEATURE_DIFF_HIDDEN) if background is not None else ""
        label = f"{positive} - {negative}{hidden}"
        colorbar(fig, image, bars[r], label).solids.set_alpha(1.0)
    return fig


# --------------------------------------------------------------------------------------------
# Raw input difference and Welch t-map
# --------------------------------------------------------------------------------------------


def plot_input_difference(diff, t=None, affine=None, *, background=None, class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
                          counts: Mapping[str, int] | None = None, center_mm=None,
                          fig: Figure | None = None) -> Figure:
    """Voxel-wise mean(AD) - mean(CN) of the preprocessed inputs, and the Welch t-map, in three
    views each, on symmetric diverging scales, over the grey ``background`` (e.g. the cohort's mean
    input) when given.

    Slices cross at the largest |t| (else |difference|) inside the head: the background's
    non-background voxels (``cohort.brain_mask``), or everywhere without one. A marker outside the
    head (a scanner artefact that goes with the diagnosis) would otherwise pick slices that barely
    show the brain; when the largest |t| lies outside the head, the figure says so and where."""
    negative, positive = class_names
    diff = volume3d(diff).astype(np.float32)
    t = None if t is None else volume3d(t).astype(np.float32)
    t_ok = t is not None and bool(np.any(np.isfinite(t)))
    background = None if background is None else volume3d(background).astype(np.float32)
    strength = np.abs(t if t_ok else diff)
    strength = np.where(np.isfinite(strength), strength, -np.inf)
    volumes = [t if t_ok else diff, diff] + ([t] if t_ok else [diff]) + ([] if background is None else [background])
    # scales_within: the head when a larger difference outside it would wash the brain out, else None
    center_voxel, outside_note, scales_within, head = None, None, None, head_mask(background)
    if np.isfinite(strength).any():
        peak = np.unravel_index(int(np.argmax(strength)), strength.shape)
        if head is not None and not head[peak] and np.isfinite(np.where(head, strength, -np.inf)).any():
            world = (np.eye(4) if affine is None else np.asarray(affine, dtype=float)) @ np.r_[peak, 1.0]
            what = "|t|" if t_ok else "|difference|"
            outside_note = (_('The largest {what} ({peak:.1f}) is outside the head, at ({v0:.0f}, {v1:.0f}, '
                              '{v2:.0f}) mm; slices and scales here: inside the head').format(
                                  what=what, peak=float(strength[peak]), v0=world[0], v1=world[1], v2=world[2]))
            peak = np.unravel_index(int(np.argmax(np.where(head, strength, -np.inf))), strength.shape)
            scales_within = head
        center_voxel = None if center_mm is not None else peak
    views = ortho_slices(volumes, affine, center_mm=center_mm, center_voxel=center_voxel, peak_of=0,
                         absolute_peak=True)
    fig, axes, bars = grid_figure(2, fig, content=content_size_mm(views), title=_("Input data: {positive} - {negative} "
                                                                                    "(the baseline against which the model's "
                                                                                    "maps are judged)").format(
                                                                                        positive=positive, negative=negative),
                                   subtitle=outside_note)
    within = (lambda v: np.where(scales_within, v, np.nan)) if scales_within is not None else (lambda v: v)
    grey = [] if background is None else [Layer(len(volumes) - 1, "gray", *grey_range(background))]
    counts = counts or {}
    n = "" if not counts else f" (n = {counts.get(positive, '?')} {positive}, {counts.get(negative, '?')} {negative})"
    if np.any(np.isfinite(diff)):
        limit = symmetric_limit(within(diff))
        hidden = INPUT_DIFF_HIDDEN * limit if grey else None
        image = draw_views(axes[0], views, grey + [Layer(1, DIVERGING_CMAP, -limit, limit, 0.85 if grey else 1.0,
                                                         hide_abs_below=hidden)],
                           side_color="white" if grey else "black", scale_bar=False)
        shown = _(' (< {input_diff_hidden:.0%} of the largest not shown)').format(
            input_diff_hidden=INPUT_DIFF_HIDDEN) if grey else ""
        row_label(axes[0], _('mean {positive} - mean {negative}{n}; red: higher in {positive}{shown}').format(
            positive=positive, negative=negative, n=n, shown=shown))
        colorbar(fig, image, bars[0], _("intensity difference")).solids.set_alpha(1.0)
    else:
        bars[0].set_axis_off()
        message_axes(axes[0], _('difference not computable: it needs subjects in both groups{n}').format(n=n))
    if t_ok:
        t_limit = symmetric_limit(within(t))
        image = draw_views(axes[1], views, grey + [Layer(2, DIVERGING_CMAP, -t_limit, t_limit, 0.85 if grey else 1.0,
                                                         hide_abs_below=T_HIDDEN if grey else None)],
                           side_color="white" if grey else "black")
        shown = _('; |t| < {t_hidden:g} not shown').format(t_hidden=T_HIDDEN) if grey else ""
        row_label(axes[1], _('Welch t (|t| > 2: roughly p < 0.05 per voxel, uncorrected{shown})').format(shown=shown))
        colorbar(fig, image, bars[1], _("Welch t")).solids.set_alpha(1.0)
    else:
        bars[1].set_axis_off()
        message_axes(axes[1], _("t-map not computable: it needs at least 2 subjects in each group"))
    return fig


# Over the anatomy, the input difference hides what is below this share of its largest value, and
# the t-map hides |t| below this value (about p = 0.05 per voxel, uncorrected), so the anatomy shows.
INPUT_DIFF_HIDDEN, T_HIDDEN = 0.25, 2.0


def head_mask(background) -> np.ndarray | None:
    """The head in ``background`` (its non-background voxels), or None when there is no background
    or the mask is empty or everything."""
    if background is None or not np.isfinite(background).all():
        return None
    head = brain_mask(background)
    return head if 0 < head.sum() < head.size else None
