"""Which figures an evaluation gets, drawn lazily and saved as ``<name>.png``.

``figure_plan`` lists ``(name, draw)`` for every figure the given results allow (no atlas, no
region-gain figure; no false positives, no FP gallery); ``render_all`` draws and saves them one
at a time; ``render_evaluation`` does that for a finished evaluation and adds the comparison with
the champion.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

from ..i18n import N_, _
from ..meta import CAM_NAMES, DEFAULT_CLASS_NAMES
from .brain_maps import (
    plot_cam_gallery, plot_champion_comparison, plot_channel_difference_maps, plot_feature_maps, plot_group_cam,
    plot_input_difference,
)
from .checks import plot_outside_brain, plot_region_gain, plot_sanity
from .counterfactual import plot_deletion_curves, plot_region_drops
from .performance import performance_plan
from .slices import volume3d
from .style import DPI, cam_name, save_figure
from .training import plot_training_curves

if TYPE_CHECKING:
    from ..champion import ChampionRun
    from ..engine.result import EngineResult
    from ..result import Evaluation
    from ..metrics import ClassificationReport

log = logging.getLogger(__name__)

OUTCOME_TITLES = {
    "TP": N_("true positives ({positive} called {positive})"), "TN": N_("true negatives ({negative} called {negative})"),
    "FP": N_("false positives ({negative} called {positive})"), "FN": N_("false negatives ({positive} called {negative})"),
}
Plan = list[tuple[str, Callable[[], Figure]]]
# The case galleries show the primary map (HiResCAM by default): gallery_TP.png, ..., named for the
# gallery, not for Grad-CAM (their former names: report.text.FORMER_FIGURE_NAMES).


def _class_names(report: ClassificationReport | None, engine_result: EngineResult | None) -> tuple[str, str]:
    """(negative, positive): the report's, else the engine's (two classes), else (CN, AD)."""
    if report is not None:
        return tuple(report.class_names)
    if engine_result is not None:
        names, positive = list(engine_result.stats.class_names), engine_result.stats.positive_index
        if len(names) == 2 and positive in (0, 1):
            return names[1 - positive], names[positive]
    return DEFAULT_CLASS_NAMES


def figure_plan(report: ClassificationReport | None = None, engine_result: EngineResult | None = None,
                history: Mapping | None = None, *, affine=None, input_shape=None,
                max_gallery_cases: int | None = None) -> Plan:
    """``(name, draw)`` for every figure the given pieces allow; ``draw()`` returns the Figure.

    ``report``: ``metrics.ClassificationReport`` or None; ``engine_result``: ``engine.EngineResult``
    or None; ``history``: training history (may be empty); ``affine``: of the inputs' grid
    (default: the first gallery case's). Figures are drawn lazily, so ``render_all`` holds one at a
    time. Absent pieces are skipped. ``max_gallery_cases``: cases per gallery figure (default: all
    the engine kept, ``--gallery-size``, as the volumes logged).
    """
    plan: Plan = [("training_curves", lambda: plot_training_curves(history))]
    class_names = _class_names(report, engine_result)
    scores = None
    if engine_result is not None and {"label", "prob"} <= set(engine_result.subjects):
        subjects = engine_result.subjects
        scores = ((np.asarray(subjects["label"]) == engine_result.stats.positive_index).astype(int),
                  np.asarray(subjects["prob"], dtype=float))
    threshold = engine_result.threshold if engine_result is not None else 0.5
    plan += performance_plan(report, scores, class_names=class_names, threshold=threshold)
    if engine_result is not None:
        plan += _map_plan(engine_result, class_names, None if scores is None else scores[0], affine=affine,
                          input_shape=input_shape, max_gallery_cases=max_gallery_cases)
    return plan


def _map_plan(engine_result: EngineResult, class_names: tuple[str, str], y_true, *, affine, input_shape,
              max_gallery_cases: int | None) -> Plan:
    """The figures of the maps and their checks: gallery, group CAM, feature maps, raw input
    difference, outside-brain shares, region gains, sanity check."""
    plan: Plan = []
    negative, positive = class_names
    subjects, maps = engine_result.subjects, engine_result.maps
    if affine is None:
        affine = next((cases[0].affine for cases in engine_result.gallery.values() if cases), None)
    method = engine_result.cam_method or "gradcam"  # the primary map
    for outcome, cases in engine_result.gallery.items():
        if cases:
            what = _(OUTCOME_TITLES.get(outcome, outcome)).format(negative=negative, positive=positive)
            title = _("{cam}, most confident {what}").format(cam=cam_name(method), what=what)
            plan.append((f"gallery_{outcome}", lambda cases=cases, title=title: plot_cam_gallery(
                cases[:max_gallery_cases], positive_class=positive, title=title, method=method)))
    inputs = maps.get("input")
    if input_shape is None and inputs is not None:
        input_shape = np.asarray(inputs.diff).shape[-3:]

    def anatomy():
        """The cohort's mean input (both groups pooled): the anatomy under the maps."""
        if inputs is None:
            return None
        pooled = [volume3d(inputs.mean[name]) for name in class_names if name in inputs.mean]
        return np.mean(pooled, axis=0) if pooled else None

    if "cam" in maps:
        cam = maps["cam"]
        plan.append(("group_cam", lambda: plot_group_cam(
            cam.mean, cam.diff, affine, background=anatomy(), class_names=class_names, counts=cam.count,
            method=method)))
    layer = engine_result.target_layer
    features = maps.get(f"features/{layer}") if layer else None
    ranking = engine_result.feature_ranking.get(layer)
    if features is not None and ranking is not None and all(name in features.mean for name in class_names):
        plan += [
            ("feature_maps", lambda: plot_feature_maps(
                features.mean[positive], features.mean[negative], features.diff, ranking["channel"], affine=affine,
                input_shape=input_shape, background=anatomy(), class_names=class_names, layer=layer)),
            ("feature_channel_differences", lambda: plot_channel_difference_maps(
                features.diff, ranking["channel"], affine=affine, input_shape=input_shape, background=anatomy(),
                class_names=class_names, layer=layer, scores=ranking.get("mean_abs_t"))),
        ]
    if inputs is not None:
        plan.append(("input_difference", lambda: plot_input_difference(
            inputs.diff, inputs.t, affine, background=anatomy(), class_names=class_names,
            counts=inputs.count)))
    if "cam_outside_brain_fraction" in subjects:
        plan.append(("cam_outside_brain", lambda: plot_outside_brain(
            subjects["cam_outside_brain_fraction"], labels=y_true, class_names=class_names, method=method).figure))
    regions = list(engine_result.region_names)
    if regions and all(f"cam_roi_gain_{name}" in subjects for name in regions):
        gains = {name: subjects[f"cam_roi_gain_{name}"] for name in regions}
        plan.append(("region_gain", lambda: plot_region_gain(
            regions, gains, labels=y_true, class_names=class_names, method=method).figure))
    sanity = engine_result.sanity
    if sanity is not None and len(sanity.spearman):
        plan.append(("sanity", lambda: plot_sanity(
            sanity.spearman, subject_ids=sanity.subject_ids, mean=sanity.mean, method=method).figure))
    return plan


def render_all(report: ClassificationReport | None = None, engine_result: EngineResult | None = None,
               history: Mapping | None = None, out_dir=".", *, affine=None, dpi: int = DPI,
               max_gallery_cases: int | None = None, strict: bool = True) -> dict[str, pathlib.Path]:
    """Draw every figure the given pieces allow and save each as ``out_dir/<name>.png``.

    Pieces as for ``figure_plan``. With ``strict=False`` a figure that fails to draw is logged as
    a warning and left out instead of raising. Returns ``{name: path}`` in drawing order.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, draw in figure_plan(report, engine_result, history, affine=affine,
                                  max_gallery_cases=max_gallery_cases):
        try:
            paths[name] = save_figure(draw(), out / f"{name}.png", dpi=dpi)
        except Exception:
            if strict:
                raise
            log.warning("figure %s could not be drawn; it is left out", name, exc_info=True)
    return paths


def render_evaluation(evaluation: Evaluation, out_dir, *, champion_run: ChampionRun | None = None,
                      ) -> dict[str, pathlib.Path]:
    """Every figure of a finished evaluation, saved in ``out_dir``; with ``champion_run`` (the
    champion's evaluation on the same data), also ``champion_comparison``."""
    out = pathlib.Path(out_dir)
    paths = render_all(evaluation.metrics, evaluation.engine, evaluation.history, out, affine=evaluation.grid_affine)
    cf = evaluation.counterfactual
    if cf is not None and cf.status != "off":  # what changes the score (or why it was not computable)
        method = evaluation.engine.cam_method
        paths["cf_deletion_curves"] = save_figure(plot_deletion_curves(cf, method=method).figure,
                                                  out / "cf_deletion_curves.png")
        paths["cf_region_drops"] = save_figure(plot_region_drops(cf).figure, out / "cf_region_drops.png")
    if champion_run is not None:
        paths.update(_champion_comparison(evaluation, champion_run, out))
    return paths


def _champion_comparison(evaluation: Evaluation, champion_run: ChampionRun, out: pathlib.Path) -> dict[str, pathlib.Path]:
    """champion_comparison.png: the positive group's mean map of this version and of the champion
    over the cohort's mean anatomy; nothing when the champion's run lacks the volume."""
    from ..artifacts import safe_name

    positive = evaluation.model.meta.positive_class
    path = champion_run.volume(f"cam_mean_{safe_name(positive)}.nii.gz")
    cam = evaluation.engine.maps.get("cam")
    if path is None or cam is None or positive not in cam.mean:
        return {}
    anatomy = evaluation.engine.maps["input"].mean
    background = np.mean([volume3d(v) for v in anatomy.values()], axis=0)
    comparison = evaluation.comparison
    figure = plot_champion_comparison(
        volume3d(cam.mean[positive]), np.asarray(nib.load(path).dataobj, dtype=np.float32),
        affine=evaluation.grid_affine, background=background,
        labels=(_("this version (v{version}), {map}").format(version=evaluation.model.version,
                                                             map=CAM_NAMES[evaluation.engine.cam_method]),
                _("champion (v{version}), {map}").format(version=comparison.champion_version,
                                                         map=CAM_NAMES.get(comparison.champion_cam_method, "Grad-CAM"))),
        group=positive,
    )
    return {"champion_comparison": save_figure(figure, out / "champion_comparison.png")}
