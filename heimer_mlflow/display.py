"""Brain maps for notebooks in the scikit-learn Display style: compute once, keep the numbers, draw on demand.

``GradCamDisplay``, ``FeatureMapDisplay`` and ``GroupDifferenceDisplay`` take a plain
``torch.nn.Module`` (or what ``heimer_mlflow.load_model`` returns, whose metadata then gives the
defaults) and volumes as NumPy arrays or tensors ([D, H, W] or [1, D, H, W]), NIfTI paths or
nibabel images. No MLflow run, tracking store or registered model is involved.

Each ``from_*`` class method computes with the code ``evaluate`` runs (``engine.GradCam3d``: one
forward and one gradient, hooks removed afterwards, maps upsampled trilinearly to the input grid;
``engine.GroupStats``: the Welch statistics of the evaluation's group maps) and keeps the results
as attributes. ``plot(ax=None)`` draws the three orthogonal views (axial, coronal, sagittal; RAS,
neurological convention, L/R marked, mm) into ``ax`` or into a new figure, keeps ``figure_`` and
``ax_``, and returns the display::

    display = GradCamDisplay.from_model(model, "sub-01.nii.gz", layer="features.4.0")
    display.probability, display.cam.shape     # the numbers
    display.plot()                             # the figure: display.figure_.savefig("cam.png")

New figures are plain ``matplotlib.figure.Figure`` objects (no pyplot state); a notebook shows a
plotted display's figure as its output (``_repr_png_``). Pass ``ax=`` to draw into a figure of
your own, e.g. ``plt.subplots()``.
"""

from __future__ import annotations

import difflib
import io
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from .cohort import brain_mask, load_volume, normalise_intensity
from .engine import Attribution, GradCam3d, GroupStats, check_cam_method, conv_layers
from .engine.exported import ExportedModel, is_exported
from .engine.gradcam import as_logits, layer_names
from .errors import HeimerError, one_line
from .meta import DEFAULT_CAM
from .figures.brain_maps import INPUT_DIFF_HIDDEN, T_HIDDEN, head_mask
from .figures.slices import Layer, crossing_mm, draw_views, feature_affine, grey_range, ortho_slices
from .figures.style import BRAIN_FIGURE_WIDTH_IN, CONVENTION, DIVERGING_CMAP, DPI, HEAT_CMAP, cam_name

__all__ = ["FeatureMapDisplay", "GradCamDisplay", "GroupDifferenceDisplay", "read_volume"]

FEATURE_CMAP = "viridis"  # activations, as in the evaluation's feature-map figures


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def read_volume(volume, affine=None, *, what: str = "volume") -> tuple[np.ndarray, np.ndarray | None]:
    """(voxels [D, H, W] float32, affine) of an array or tensor [D, H, W] / [1, D, H, W], a NIfTI
    path or a nibabel image. The affine comes from the file or image unless ``affine`` is given;
    an array without one has None (voxel indices are read as RAS millimetres)."""
    own_affine = None
    if isinstance(volume, (str, os.PathLike)):
        if not Path(volume).is_file():
            raise HeimerError(f"{what} file {str(volume)!r} does not exist; pass a NIfTI path, a nibabel image or an array")
        try:
            data, own_affine = load_volume(str(volume))
        except (ValueError, OSError) as e:
            raise HeimerError(f"{what} file {str(volume)!r} cannot be used: {one_line(e, 300)}") from None
    elif hasattr(volume, "dataobj") and hasattr(volume, "affine"):  # a nibabel image
        data, own_affine = np.asarray(volume.dataobj, dtype=np.float32), volume.affine
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
    else:
        if isinstance(volume, torch.Tensor):
            volume = volume.detach().cpu()
        data = np.asarray(volume, dtype=np.float32)
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 3:
        raise HeimerError(f"{what} has shape {list(data.shape)}: pass one volume, [D, H, W] or [1, D, H, W]")
    if not np.all(np.isfinite(data)):
        raise HeimerError(f"{what} has {int((~np.isfinite(data)).sum())} NaN or infinite voxels")
    chosen = affine if affine is not None else own_affine
    if chosen is None:
        return data, None
    chosen = np.asarray(chosen, dtype=np.float64)
    if chosen.shape != (4, 4):
        raise HeimerError(f"affine has shape {list(chosen.shape)}: pass a 4 x 4 NIfTI affine")
    return data, chosen


def _model_input(data: np.ndarray, intensity: str) -> np.ndarray:
    """``data`` normalised as the evaluation's cohort loader does it (``cohort.CohortDataset``)."""
    return normalise_intensity(data, intensity, brain_mask(data) if intensity == "zscore" else None)


def _unwrap(model) -> tuple[torch.nn.Module, Any]:
    """(module, metadata or None) of a ``torch.nn.Module`` (an exported program, as
    ``mlflow.pytorch.load_model`` returns a pt2 model, included) or of what
    ``heimer_mlflow.load_model`` returns."""
    if is_exported(model):
        return ExportedModel(model), None
    if isinstance(model, torch.nn.Module):
        return model, None
    if isinstance(getattr(model, "module", None), torch.nn.Module):
        return model.module, getattr(model, "meta", None)
    raise HeimerError(f"model is a {type(model).__name__}: pass a torch.nn.Module or what heimer_mlflow.load_model returns")


def _check_layer(module: torch.nn.Module, layer: str | None) -> None:
    """A one-line error naming the closest module paths when ``layer`` is not one of ``module``'s."""
    names = layer_names(module)
    if layer is None or layer in names:
        return
    close = difflib.get_close_matches(layer, names, n=4, cutoff=0.6)
    guess = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    raise HeimerError(f"layer {layer!r} is not a module of {type(module).__name__}: {guess}"
                      f"its Conv3d layers are {', '.join(conv_layers(module)) or 'none'}")


def _target_column(target, width: int, meta) -> int:
    """The output column to explain: ``target``, else the one logit, else the positive class's
    (from the model's metadata, as the evaluation picks it), else the last."""
    if target is None:
        if width == 1:
            return 0
        if meta is not None and width == len(meta.class_names):
            return meta.positive_index
        return width - 1
    try:
        column = operator.index(target)
    except TypeError:
        raise HeimerError(f"target {target!r} is not a class index: pass an int from 0 to {width - 1}") from None
    if not 0 <= column < width:
        raise HeimerError(f"target {column} is not an output of the model: it has {width} logit(s), 0 to {width - 1}")
    return column


@dataclass
class _Pass:
    """One forward and one gradient of a module for one volume (``GradCam3d.attribute``)."""

    volume: np.ndarray  # [D, H, W] float32, as the model saw it (intensity-normalised)
    affine: np.ndarray | None
    attribution: Attribution
    layer: str
    target: int
    class_name: str  # of the explained column: the metadata's name, else "positive" (one logit) or "class k"
    probability: float


def _attribute(model, volume, *, layer, target, affine, intensity) -> _Pass:
    module, meta = _unwrap(model)
    if layer is None and meta is not None:
        layer = meta.target_layer
    intensity = intensity or (meta.intensity if meta is not None else "none")
    data, affine = read_volume(volume, affine)
    image = _model_input(data, intensity)
    _check_layer(module, layer)
    gradcam = GradCam3d(module, layer)
    device = next(module.parameters(), torch.empty(0)).device
    x = torch.from_numpy(np.ascontiguousarray(image))[None, None].to(device)
    was_training = module.training
    module.eval()
    try:
        # A forward first, as the evaluation probes its first batch: the output width picks the
        # column to explain, and a volume the model cannot take fails here with one clear line.
        try:
            with torch.no_grad():
                width = as_logits(module(x), 1).shape[1]
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            raise HeimerError(f"the model fails on a volume of shape {list(image.shape)} ({one_line(e, 300)}); "
                              "check the volume's grid against the model's input shape") from None
        column = _target_column(target, width, meta)
        attribution = gradcam.attribute(x, column)
    finally:
        module.train(was_training)
    logits = attribution.logits[0]
    probability = torch.sigmoid(logits[0]) if width == 1 else torch.softmax(logits, dim=0)[column]
    if meta is not None and width in (1, len(meta.class_names)):
        class_name = meta.positive_class if width == 1 else meta.class_names[column]
    else:
        class_name = "positive" if width == 1 else f"class {column}"
    return _Pass(image, affine, attribution, gradcam.layer_path, column, class_name, float(probability))


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


class _OrthoDisplay:
    """``plot`` bookkeeping shared by the displays: the Axes, the colour bar, ``figure_`` and ``ax_``."""

    figure_: Any = None
    ax_: Any = None
    _owns_figure = False

    def _axes_for(self, ax, views):
        """``ax``, or the Axes of a new figure as wide as the report's brain figures and as tall as the views need."""
        self._owns_figure = ax is None
        if ax is not None:
            return ax
        width = sum(v.extent[1] - v.extent[0] for v in views.values()) + 26.0  # the gaps between views, in mm
        height = max(v.extent[3] - v.extent[2] for v in views.values()) + 35.0  # view titles and the scale bar
        fig = Figure(figsize=(BRAIN_FIGURE_WIDTH_IN, 0.8 + (BRAIN_FIGURE_WIDTH_IN - 0.9) * height / width), dpi=DPI,
                     layout="constrained")
        return fig.add_subplot()

    def _finish(self, ax, image, *, title: str, bar_label: str | None):
        ax.set_title(title, fontsize=9, loc="left")
        if bar_label is not None:
            bar = ax.figure.colorbar(image, ax=ax, fraction=0.025, pad=0.01)
            bar.set_label(bar_label, fontsize=7.5)
            bar.ax.tick_params(labelsize=7)
            bar.solids.set_alpha(1.0)
        if self._owns_figure:
            ax.figure.supxlabel(CONVENTION, fontsize=7, color="#333333")
        self.ax_, self.figure_ = ax, ax.figure
        return self

    def _repr_png_(self):
        """A notebook shows the figure ``plot()`` made (a figure of the caller's own, e.g. pyplot's, shows itself)."""
        if self.figure_ is None or not self._owns_figure:
            return None
        buffer = io.BytesIO()
        self.figure_.savefig(buffer, format="png", dpi=DPI)
        return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Grad-CAM / HiResCAM of one subject
# --------------------------------------------------------------------------------------------


class GradCamDisplay(_OrthoDisplay):
    """One subject's Grad-CAM or HiResCAM over its MRI in three orthogonal views.

    Usually made by ``from_model`` (compute the map) or ``from_maps`` (a map you already have).

    Attributes: ``volume`` [D, H, W] (the model's input: intensity-normalised), ``cam`` [D, H, W]
    (the raw map on the input grid, as the evaluation saves it), ``affine`` (4 x 4, or None),
    ``method`` (``gradcam`` or ``hirescam``), ``layer``, ``target`` (the explained output column)
    and ``class_name`` (its class: from the model's metadata, else ``positive`` for one logit or
    ``class k``), ``probability`` (the model's probability of that class; None when not known); after ``plot``:
    ``figure_``, ``ax_``.
    """

    def __init__(self, volume, cam, *, affine=None, method: str = DEFAULT_CAM, layer: str | None = None,
                 target: int | None = None, class_name: str | None = None, probability: float | None = None):
        self.volume, self.cam, self.affine = volume, cam, affine
        self.method, self.layer, self.target, self.class_name = check_cam_method(method), layer, target, class_name
        self.probability = probability

    @classmethod
    def from_model(cls, model, volume, *, layer: str | None = None, target: int | None = None,
                   method: str = DEFAULT_CAM, affine=None, intensity: str | None = None) -> GradCamDisplay:
        """The map of ``model`` for ``volume``, computed as ``evaluate`` computes it.

        ``model``: a ``torch.nn.Module`` (run on its parameters' device, in eval mode, its mode
        restored) or ``heimer_mlflow.load_model(...)``'s result (its metadata gives ``layer``,
        ``intensity`` and the positive class). ``volume``: array or tensor [D, H, W] / [1, D, H, W],
        NIfTI path or nibabel image. ``layer``: module path of the target layer (default: the
        metadata's, else the last Conv3d). ``target``: the output column to explain (default: the
        one logit, else the positive class's, else the last). ``method``: ``hirescam`` (the
        evaluation's default) or ``gradcam``. ``affine``: the volume's (default: the file's).
        ``intensity``: ``zscore``, ``minmax`` or ``none``, applied to the volume as the
        evaluation applies it (default: the metadata's, else ``none``).
        """
        check_cam_method(method)
        run = _attribute(model, volume, layer=layer, target=target, affine=affine, intensity=intensity)
        cam = run.attribution.upsampled(method)[0].cpu().numpy()
        return cls(run.volume, cam, affine=run.affine, method=method, layer=run.layer, target=run.target,
                   class_name=run.class_name, probability=run.probability)

    @classmethod
    def from_maps(cls, volume, cam, *, affine=None, method: str = DEFAULT_CAM, layer: str | None = None,
                  probability: float | None = None) -> GradCamDisplay:
        """A map you already have (e.g. ``volumes/*_hirescam.nii.gz`` of an evaluation run) over
        ``volume``; both arrays, NIfTI paths or nibabel images on one grid."""
        data, affine = read_volume(volume, affine)
        cam_data, cam_affine = read_volume(cam, None, what="cam")
        if cam_data.shape != data.shape:
            raise HeimerError(f"cam has shape {list(cam_data.shape)} but the volume {list(data.shape)}: "
                              "upsample the map to the volume's grid")
        return cls(data, cam_data, affine=affine if affine is not None else cam_affine, method=method, layer=layer,
                   probability=probability)

    def plot(self, ax=None, *, alpha: float = 0.5, show_below: float = 0.1, colorbar: bool = True,
             title: str | None = None) -> GradCamDisplay:
        """Draw the map over the anatomy in three views crossing at the map's peak, as the
        evaluation's case gallery does: the map as a share of its maximum, shares below
        ``show_below`` transparent. Into ``ax`` (a matplotlib Axes) or a new figure; returns self."""
        cam = np.asarray(self.cam, dtype=np.float32)
        peak = float(np.nanmax(cam)) if np.any(np.isfinite(cam)) else 0.0
        shown = cam / peak if peak > 0 else np.zeros_like(cam)
        views = ortho_slices([np.asarray(self.volume), shown], self.affine, peak_of=1)
        ax = self._axes_for(ax, views)
        image = draw_views(ax, views, [Layer(0, "gray", *grey_range(np.asarray(self.volume))),
                                       Layer(1, HEAT_CMAP, 0.0, 1.0, alpha, hide_below=show_below)])
        if title is None:
            title = cam_name(self.method) + (f" of {self.layer}" if self.layer else "")
            if self.probability is not None:
                title += f", P{f'({self.class_name})' if self.class_name else ''} = {self.probability:.2f}"
        label = f"{cam_name(self.method)}, share of the maximum (< {show_below:g} not shown)" if colorbar else None
        return self._finish(ax, image, title=title, bar_label=label)

    def __repr__(self) -> str:
        p = "" if self.probability is None else f", probability={self.probability:.3f}"
        return f"{type(self).__name__}(method={self.method!r}, layer={self.layer!r}, shape={tuple(np.shape(self.cam))}{p})"


# --------------------------------------------------------------------------------------------
# Feature maps of one subject
# --------------------------------------------------------------------------------------------


class FeatureMapDisplay(_OrthoDisplay):
    """The mean activation of a few channels of one layer for one subject, over its MRI.

    Attributes: ``volume`` [D, H, W] (the model's input), ``affine``, ``layer``, ``activation``
    [C, d, h, w] (every channel, on the layer's grid), ``channels`` (those averaged),
    ``feature_map`` [d, h, w] (their mean), ``feature_affine`` (the layer grid's affine: same field
    of view as the volume), ``probability``, ``target``; after ``plot``: ``figure_``, ``ax_``.
    """

    def __init__(self, volume, activation, *, channels=None, n_channels: int = 4, affine=None,
                 layer: str | None = None, target: int | None = None, probability: float | None = None):
        activation = np.asarray(activation, dtype=np.float32)
        if activation.ndim != 4:
            raise HeimerError(f"activation has shape {list(activation.shape)}: expected [C, d, h, w] (one subject)")
        self.volume, self.activation, self.affine, self.layer = volume, activation, affine, layer
        self.target, self.probability = target, probability
        self.channels = _pick_channels(activation, channels, n_channels)
        self.feature_map = activation[self.channels].mean(axis=0)
        self.feature_affine = feature_affine(affine, np.shape(volume), self.feature_map.shape)

    @classmethod
    def from_model(cls, model, volume, *, layer: str | None = None, channels=None, n_channels: int = 4,
                   target: int | None = None, affine=None, intensity: str | None = None) -> FeatureMapDisplay:
        """The activation of ``layer`` for ``volume``, captured in the pass the evaluation makes
        (``engine.GradCam3d``); the arguments as for ``GradCamDisplay.from_model``. ``channels``:
        the channels to average; default: the ``n_channels`` with the largest mean activation."""
        run = _attribute(model, volume, layer=layer, target=target, affine=affine, intensity=intensity)
        activation = run.attribution.activations[run.layer][0].cpu().numpy()
        return cls(run.volume, activation, channels=channels, n_channels=n_channels, affine=run.affine,
                   layer=run.layer, target=run.target, probability=run.probability)

    def plot(self, ax=None, *, alpha: float = 0.7, show_below: float = 0.1, colorbar: bool = True,
             title: str | None = None, center_mm=None) -> FeatureMapDisplay:
        """Draw the mean feature map on its own grid over the anatomy, three views crossing at the
        grid's centre cell, where the evaluation's feature-map figure slices (its largest |value|
        often lies at the border, where the coarse map covers the edge of the head and hardly any
        anatomy shows), or at ``center_mm`` (x, y, z in mm); |values| below ``show_below`` of the
        largest are transparent. A map with negative values gets a diverging scale symmetric about
        zero. Returns self."""
        fmap = self.feature_map
        limit = float(np.nanmax(np.abs(fmap))) if np.any(np.isfinite(fmap)) else 0.0
        limit = limit if limit > 0 else 1.0
        signed = bool(np.nanmin(fmap) < 0)
        views = ortho_slices(fmap, self.feature_affine, center_mm=center_mm, peak_of=None)
        anatomy = ortho_slices(np.asarray(self.volume), self.affine, center_mm=crossing_mm(views))
        ax = self._axes_for(ax, views)
        overlay = (Layer(0, DIVERGING_CMAP, -limit, limit, alpha, hide_abs_below=show_below * limit) if signed else
                   Layer(0, FEATURE_CMAP, 0.0, limit, alpha, hide_below=show_below * limit))
        image = draw_views(ax, [views, anatomy], [Layer(0, "gray", *grey_range(np.asarray(self.volume)), source=1),
                                                  overlay])
        if title is None:
            shown = ", ".join(map(str, self.channels))
            title = f"Feature map{f' of {self.layer}' if self.layer else ''}: mean of channel(s) {shown}"
        label = f"activation (< {show_below:g} of the largest not shown)" if colorbar else None
        return self._finish(ax, image, title=title, bar_label=label)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(layer={self.layer!r}, channels={self.channels}, "
                f"activation_shape={self.activation.shape})")


def _pick_channels(activation: np.ndarray, channels, n_channels: int) -> list[int]:
    n = activation.shape[0]
    if channels is None:
        order = np.argsort(-activation.reshape(n, -1).mean(axis=1), kind="stable")
        return [int(c) for c in order[: max(1, n_channels)]]
    chosen = [int(c) for c in np.atleast_1d(channels)]
    wrong = [c for c in chosen if not 0 <= c < n]
    if not chosen or wrong:
        raise HeimerError(f"channels {wrong or chosen} are not channels of the layer: it has {n}, 0 to {n - 1}")
    return chosen


# --------------------------------------------------------------------------------------------
# Group difference (e.g. AD - CN) of volumes
# --------------------------------------------------------------------------------------------


class GroupDifferenceDisplay(_OrthoDisplay):
    """Voxel-wise mean difference and Welch t of two groups of volumes (e.g. AD vs CN inputs, or
    their CAMs), the statistics behind the evaluation's group maps.

    Made by ``from_arrays`` from the volumes, or directly from maps you have (e.g.
    ``evaluation.engine.maps["input"]``'s ``diff`` and ``t``). Attributes: ``diff`` (mean of group a
    minus mean of group b), ``t`` (Welch t; NaN where a group has fewer than 2 volumes),
    ``means`` and ``counts`` (by group name), ``labels`` ((a, b), e.g. ("AD", "CN")), ``affine``,
    ``background`` (the anatomy drawn under the maps: the mean of the two group means); after
    ``plot``: ``figure_``, ``ax_``.
    """

    def __init__(self, diff, t=None, *, means=None, counts=None, labels=("AD", "CN"), affine=None,
                 background=None):
        self.diff, self.t = _one_channel(diff), _one_channel(t)
        self.means = {name: _one_channel(mean) for name, mean in (means or {}).items()}
        self.counts, self.labels, self.affine = dict(counts or {}), tuple(labels), affine
        self.background = _one_channel(background)

    @classmethod
    def from_arrays(cls, volumes_a, volumes_b, *, labels=("AD", "CN"), affine=None,
                    intensity: str = "none") -> GroupDifferenceDisplay:
        """Statistics of two groups, each a list of volumes (arrays, tensors, NIfTI paths or
        nibabel images, on one grid) or an array [N, D, H, W]; read one at a time and summed in
        float64 as the evaluation streams its cohort (``engine.GroupStats``), so memory does not
        grow with N. ``intensity`` normalises each volume as ``from_model`` does; the affine is
        ``affine`` or the first file's."""
        name_a, name_b = labels
        if name_a == name_b:
            raise HeimerError(f"labels {list(labels)} name one group twice: give the two groups different names")
        stats = GroupStats([name_b, name_a], positive_index=1)
        shape = None
        for label, name, volumes in ((1, name_a, volumes_a), (0, name_b, volumes_b)):
            n = 0
            for n, volume in enumerate(_each_volume(volumes, name), start=1):
                data, own_affine = read_volume(volume, affine, what=f"{name} volume {n - 1}")
                if shape is not None and data.shape != shape:
                    raise HeimerError(f"{name} volume {n - 1} has shape {list(data.shape)}, the first {list(shape)}: "
                                      "resample every volume onto one grid")
                shape, affine = data.shape, affine if affine is not None else own_affine
                cell = stats.cell(label, predicted_positive=bool(label))  # a class pools both of its cells
                stats.update([cell], input=torch.from_numpy(_model_input(data, intensity))[None])
            if n == 0:
                raise HeimerError(f"group {name!r} has no volumes")
        maps = stats.compute("input")
        means = {name: maps.mean[name] for name in (name_a, name_b)}
        return cls(maps.diff, maps.t, means=means, counts={name: maps.count[name] for name in (name_a, name_b)},
                   labels=(name_a, name_b), affine=affine, background=(means[name_a] + means[name_b]) / 2)

    def plot(self, ax=None, *, statistic: str = "diff", colorbar: bool = True,
             title: str | None = None) -> GroupDifferenceDisplay:
        """Draw ``statistic`` (``diff`` or ``t``) on a diverging scale symmetric about zero (red:
        higher in group a) over the background, in three views crossing at its largest |value|
        inside the head. Over the anatomy, differences below a quarter of the largest and |t|
        below 2 are transparent, as in the evaluation's input-difference figure. Returns self."""
        if statistic not in ("diff", "t"):
            raise HeimerError(f"unknown statistic {statistic!r}: use diff or t")
        values = self.diff if statistic == "diff" else self.t
        name_a, name_b = self.labels
        if values is None or not np.any(np.isfinite(values)):
            need = "a volume in each group" if statistic == "diff" else "at least 2 volumes in each group"
            raise HeimerError(f"the {statistic} map is not computable: it needs {need}")
        strength = np.where(np.isfinite(values), np.abs(values), -np.inf)
        head = head_mask(self.background)
        if head is not None and np.isfinite(np.where(head, strength, -np.inf)).any():
            # a marker outside the head (an artefact that goes with the group) must not pick the slices
            strength = np.where(head, strength, -np.inf)
        peak = np.unravel_index(int(np.argmax(strength)), strength.shape)
        limit = float(np.max(strength[np.isfinite(strength)])) or 1.0
        volumes = [values] + ([] if self.background is None else [self.background])
        views = ortho_slices(volumes, self.affine, center_voxel=peak, peak_of=None)
        ax = self._axes_for(ax, views)
        if self.background is None:
            layers, side = [Layer(0, DIVERGING_CMAP, -limit, limit)], "black"
        else:
            hidden = INPUT_DIFF_HIDDEN * limit if statistic == "diff" else T_HIDDEN
            layers = [Layer(1, "gray", *grey_range(self.background)),
                      Layer(0, DIVERGING_CMAP, -limit, limit, 0.85, hide_abs_below=hidden)]
            side = "white"
        image = draw_views(ax, views, layers, side_color=side)
        if title is None:
            counts = (f" (n = {self.counts[name_a]} {name_a}, {self.counts[name_b]} {name_b})"
                      if name_a in self.counts and name_b in self.counts else "")
            what = f"mean {name_a} - mean {name_b}" if statistic == "diff" else f"Welch t, {name_a} vs {name_b}"
            title = f"{what}{counts}; red: higher in {name_a}"
        label = None
        if colorbar:
            label = "difference" if statistic == "diff" else "Welch t"
            if self.background is not None:
                label += (f" (< {INPUT_DIFF_HIDDEN:.0%} of the largest not shown)" if statistic == "diff" else
                          f" (|t| < {T_HIDDEN:g} not shown)")
        return self._finish(ax, image, title=title, bar_label=label)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(labels={self.labels}, counts={self.counts}, shape={self.diff.shape})"


def _one_channel(array) -> np.ndarray | None:
    """A map as [D, H, W] float32; the evaluation's input maps carry a channel axis, [1, D, H, W]."""
    if array is None:
        return None
    array = np.asarray(array, dtype=np.float32)
    return array[0] if array.ndim == 4 and array.shape[0] == 1 else array


def _each_volume(volumes, name: str):
    """The volumes of one group, one at a time: items of a list, or the first axis of an array [N, ...]."""
    if isinstance(volumes, (str, os.PathLike)) or (hasattr(volumes, "ndim") and volumes.ndim < 4):
        raise HeimerError(f"group {name!r} must be several volumes: a list of arrays, NIfTI paths or images, "
                          "or an array [N, D, H, W]")
    yield from volumes

