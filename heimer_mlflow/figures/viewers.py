"""Maps a reviewer can scroll, inside the MLflow UI: self-contained interactive slice viewers
(``nilearn.plotting.view_img``, brainsprite: one HTML file with the volumes inlined and its own
script), logged as ``viewers/*.html``. MLflow's artifact viewer runs an HTML artifact's scripts in
a sandboxed frame, so they open and draw in the run's Artifacts tab.

One viewer each for the primary map's mean over the positive group (AD), the AD - CN difference of
the map and its Welch t-map, and, with a champion, the champion's AD mean map over the same
anatomy. All over the cohort's mean anatomy. Colour maps never start at black (``inferno`` or
``hot`` with a threshold draw black blocks over the brain where values just pass it): the mean
map uses ``YlOrRd`` from its threshold up, the signed maps ``RdBu_r`` (white at zero, so values
just past the threshold are pale). Thresholds: a third of the map's robust maximum (the 99.5th
percentile) for the mean map, a fifth for the difference, |t| >= 3 for the t-map. Inputs finer
than 1.5 mm are resampled to 2 mm for the viewer so each file stays a few MB.

``viewers/viewers.json`` lists them (file, title, what it shows) for the report and the version's
description.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..i18n import _
from ..meta import CAM_NAMES

log = logging.getLogger(__name__)

T_THRESHOLD = 3.0
MAX_VIEWER_BYTES = 8_000_000  # a larger viewer is still logged, with a warning


def _robust_max(volume: np.ndarray, positive_only: bool) -> float:
    values = volume[np.isfinite(volume)]
    values = values[values > 0] if positive_only else np.abs(values[values != 0])
    return float(np.percentile(values, 99.5)) if values.size else 0.0


def _image(volume, affine):
    data = np.nan_to_num(np.asarray(volume, dtype=np.float32))
    if data.ndim == 4:
        data = data[..., 0] if data.shape[-1] == 1 else data[0]
    return nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))


def _coarse(image):
    """The image on a 2 mm grid when its voxels are finer than 1.5 mm (viewer size), else as is."""
    zooms = image.header.get_zooms()[:3]
    if min(zooms) >= 1.5:
        return image
    from nilearn.image import resample_img

    target = np.diag([2.0, 2.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return resample_img(image, target_affine=target, interpolation="continuous", force_resample=True,
                            copy_header=True)


def _write(stat, background, path: Path, *, title: str, threshold: float, vmax: float, cmap: str,
           symmetric: bool) -> Path:
    from nilearn.plotting import view_img

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        view = view_img(stat, bg_img=background, threshold=threshold, vmax=vmax, vmin=None if symmetric else 0.0,
                        cmap=cmap, symmetric_cmap=symmetric, black_bg=False, dim=0, opacity=0.9, title=title,
                        annotate=True, draw_cross=True, colorbar=True, resampling_interpolation="nearest")
        view.save_as_html(str(path))
    size = path.stat().st_size
    if size > MAX_VIEWER_BYTES:
        log.warning("viewer %s is %.1f MB", path.name, size / 1e6)
    return path


def _short(title: str) -> str:
    """The title drawn on the viewer (brainsprite clips it at the colour bar): the part after the
    map's name (``AD mean``, ``AD - CN t-map``), with ``v1:`` for the champion."""
    head, _, rest = title.rpartition(", ")
    champion = head.split(":")[0] + ": " if head.lower().startswith("champion") else ""
    return f"{champion}{rest}"[:24]


def write_viewers(evaluation, out_dir, *, champion_volume: Path | None = None) -> list[dict]:
    """Write the viewers of a finished evaluation to ``out_dir`` (the run's ``viewers/``) with
    ``viewers.json``; returns its entries (``file``, ``path`` in the run, ``title``, ``what``).
    A viewer that cannot be drawn is left out with a warning; the evaluation goes on."""
    engine, affine = evaluation.engine, evaluation.grid_affine
    anatomy = engine.maps.get("input")
    if engine.maps.get("cam") is None or anatomy is None or not anatomy.mean:
        return []
    background = _coarse(_image(np.mean([np.asarray(_image(v, affine).dataobj) for v in anatomy.mean.values()], axis=0),
                                affine))
    out = Path(out_dir)
    viewers = _viewers(evaluation, champion_volume)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for viewer in viewers:
        if not (viewer.vmax > 0 and np.isfinite(viewer.vmax)):
            log.info("viewer %s left out: the map is empty", viewer.file)
            continue
        try:
            stat = _coarse(_image(viewer.volume, affine))
            _write(stat, background, out / viewer.file, title=_short(viewer.title), threshold=float(viewer.threshold),
                   vmax=float(viewer.vmax), cmap=viewer.cmap, symmetric=viewer.symmetric)
        except Exception:  # noqa: BLE001 - a viewer is a convenience: never fail the evaluation for it
            log.warning("viewer %s could not be written; it is left out", viewer.file, exc_info=True)
            continue
        entries.append({"file": viewer.file, "path": f"viewers/{viewer.file}", "title": viewer.title,
                        "what": viewer.what})
    (out / "viewers.json").write_text(json.dumps(entries, indent=1), encoding="utf-8")
    return entries


@dataclass(frozen=True)
class _Viewer:
    """One viewer to write: its file name, what its title and caption say, and the map with how to
    draw it (shown from ``threshold`` up to ``vmax``; ``symmetric``: a signed map)."""

    file: str
    title: str
    what: str
    volume: np.ndarray
    threshold: float
    vmax: float
    cmap: str
    symmetric: bool


def _viewers(evaluation, champion_volume: Path | None) -> list[_Viewer]:
    """The primary map's viewers (the positive group's mean, the group difference, its t-map, as
    far as the engine made them) and, given its volume, the champion's mean map."""
    from ..artifacts import safe_name

    engine, affine = evaluation.engine, evaluation.grid_affine
    cam = engine.maps["cam"]
    meta = evaluation.model.meta
    positive, negative = meta.positive_class, meta.negative_class
    name, method = CAM_NAMES[engine.cam_method], engine.cam_method
    pair = f"{safe_name(positive)}-{safe_name(negative)}"
    viewers = []
    if positive in cam.mean:
        mean = np.asarray(_image(cam.mean[positive], affine).dataobj)
        top = _robust_max(mean, True)
        viewers.append(_Viewer(
            f"{method}_{safe_name(positive)}_mean.html",
            _("{map}, {positive} mean").format(map=name, positive=positive),
            _("where the model looks, averaged over the {positive} scans (shown from a third of its robust "
              "maximum up)").format(positive=positive), mean, top / 3, top, "YlOrRd", False))
    if cam.diff is not None:
        diff = np.asarray(_image(cam.diff, affine).dataobj)
        top = _robust_max(diff, False)
        viewers.append(_Viewer(
            f"{method}_{pair}_difference.html",
            _("{map}, {positive} - {negative} difference").format(map=name, positive=positive, negative=negative),
            _("red: more attention in {positive}, blue: more in {negative} (shown from a fifth of its robust "
              "maximum)").format(positive=positive, negative=negative), diff, top / 5, top, "RdBu_r", True))
    if cam.t is not None:
        t = np.asarray(_image(cam.t, affine).dataobj)
        viewers.append(_Viewer(
            f"{method}_{pair}_t.html",
            _("{map}, {positive} - {negative} t-map").format(map=name, positive=positive, negative=negative),
            _("Welch t of the difference, shown where |t| >= {limit:g}").format(limit=T_THRESHOLD), t, T_THRESHOLD,
            max(_robust_max(t, False), T_THRESHOLD + 1), "RdBu_r", True))
    comparison = evaluation.comparison
    if champion_volume is not None and comparison is not None:
        theirs = np.asarray(nib.load(str(champion_volume)).dataobj, dtype=np.float32)
        top = _robust_max(theirs, True)
        champion_map = CAM_NAMES.get(comparison.champion_cam_method, "Grad-CAM")
        viewers.append(_Viewer(
            f"champion_v{safe_name(comparison.champion_version)}_{safe_name(positive)}_mean.html",
            _("Champion v{version}: {map}, {positive} mean").format(
                version=comparison.champion_version, map=champion_map, positive=positive),
            _("the champion's map of the {positive} scans over the same anatomy, to compare with this "
              "version's").format(positive=positive), theirs, top / 3, top, "YlOrRd", False))
    return viewers
