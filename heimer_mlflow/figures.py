"""Every figure of an evaluation, drawn from numbers computed elsewhere (scikit-learn Display style).

Each ``plot_<name>(...)`` takes plain numbers and arrays (and, where convenient, the
``ClassificationReport`` / ``EngineResult`` parts that hold them) plus an optional matplotlib
``Axes`` (``ax=``) or ``Figure`` (``fig=``) to draw into, and returns that Axes or Figure. Nothing
here computes a metric or a map, and nothing talks to MLflow. ``render_all`` draws every figure
that the available inputs allow and saves each as ``OUT_DIR/<name>.png``.

Conventions:

- No pyplot: figures are ``matplotlib.figure.Figure`` objects rendered by Agg, so no global
  figure state leaks and nothing needs closing.
- PNG bytes are deterministic (``save_figure`` drops the software/date metadata).
- Colours: AD (positive class) vermillion-red, CN (negative class) blue, from the Okabe-Ito
  colour-blind-safe palette; heat maps use perceptually uniform maps (``inferno``); differences use
  ``RdBu_r`` (red = higher in AD, blue = higher in CN) on a scale symmetric about zero.
- Brain views are reoriented to RAS with the NIfTI affine (``reorient_to_ras``), whatever the
  stored voxel order, and shown in the *neurological* convention: the subject's left is on the
  image's left (marked L and R). Slice positions are world coordinates in mm (from the affine), with
  a 50 mm scale bar; the three views of a row share one Axes (fast to draw, nilearn-like).
"""

from __future__ import annotations

import logging
import math
import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

from .meta import CAM_NAMES

AD_COLOR = "#D55E00"  # Okabe-Ito vermillion: the positive class (AD)
CN_COLOR = "#0072B2"  # Okabe-Ito blue: the negative class (CN)
TRAIN_COLOR = "#000000"
VAL_COLOR = "#E69F00"  # Okabe-Ito orange
NEUTRAL_COLOR = "#7F7F7F"
MODEL_COLOR = "#009E73"  # Okabe-Ito bluish green
HEAT_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"
DPI = 100
CONVENTION = "Neurological convention: subject's left on the image left (L/R marked); coordinates in mm (world space)"
OUTCOME_TITLES = {
    "TP": "true positives ({positive} called {positive})", "TN": "true negatives ({negative} called {negative})",
    "FP": "false positives ({negative} called {positive})", "FN": "false negatives ({positive} called {negative})",
}  # fmt: skip
VIEWS = ("axial", "coronal", "sagittal")
# The report prints brain figures at the full text width of an A4 page (210 mm - 2 x 16 mm):
# drawn at this width they print at scale 1, so every font size below is its printed size.
BRAIN_FIGURE_WIDTH_IN = 7.0
MIN_PRINTED_FONT_PT = 6.0  # no text in a printed figure is smaller (tests check every figure)


def cam_name(method: str | None) -> str:
    """The display name of a CAM method (``gradcam`` -> Grad-CAM, ``hirescam`` -> HiResCAM);
    None or empty (evaluations before HiResCAM existed) is Grad-CAM."""
    method = (method or "gradcam").strip().lower()
    return CAM_NAMES.get(method, method)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_figure(fig: Figure, path, dpi: int = DPI) -> pathlib.Path:
    """Write ``fig`` as a PNG with byte-identical output for identical figures."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi, metadata={"Software": None})
    return path


def _figure(figsize, layout: str | None = "constrained") -> Figure:
    return Figure(figsize=figsize, dpi=DPI, layout=layout)


def _axes(ax, figsize=(5.0, 4.0)):
    """The Axes to draw into: ``ax`` itself, or the single Axes of a new Figure."""
    if ax is not None:
        return ax
    return _figure(figsize).add_subplot()


def _legend_below(ax, owned: bool, ncol: int = 2, **kwargs):
    """A legend under the plot (never over the data) when this module made the figure (its
    constrained layout keeps room for it), else a legend inside ``ax`` where it covers least."""
    if owned:
        handles, labels = ax.get_legend_handles_labels()
        return ax.figure.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8, **kwargs)
    return ax.legend(fontsize=8, **kwargs)


def _message(ax, text: str, title: str | None = None):
    """An Axes that says, in words, why there is nothing to draw."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10, transform=ax.transAxes)
    if title:
        ax.set_title(title)
    return ax


# --------------------------------------------------------------------------------------------
# 1. Training curves
# --------------------------------------------------------------------------------------------


def _series(values) -> tuple[np.ndarray, np.ndarray, bool]:
    """(x, y, stepped) from per-epoch numbers, (step, value) pairs or MLflow ``Metric`` objects."""
    xs, ys, stepped = [], [], False
    for i, item in enumerate(values or []):
        if hasattr(item, "value") and hasattr(item, "step"):
            x, y, stepped = item.step, item.value, True
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            (x, y), stepped = item, True
        else:
            x, y = i + 1, item
        if y is not None and math.isfinite(float(y)):
            xs.append(float(x))
            ys.append(float(y))
    return np.asarray(xs), np.asarray(ys), stepped


def plot_training_curves(history: Mapping | None, *, fig: Figure | None = None) -> Figure:
    """Loss and accuracy per epoch, training (solid) vs validation (dashed).

    ``history`` maps metric names (``train_loss``, ``val_loss``, ``train_accuracy``,
    ``val_accuracy``; any name containing ``loss`` or ``acc``) to per-epoch values or
    ``(step, value)`` pairs. With no usable history the figure says so in words.
    """
    fig = fig if fig is not None else _figure((BRAIN_FIGURE_WIDTH_IN, 3.0))
    panels = {"loss": {}, "accuracy": {}}
    stepped = False
    for name, values in sorted((history or {}).items()):
        kind = "loss" if "loss" in name.lower() else "accuracy" if "acc" in name.lower() else None
        if kind is None:
            continue
        x, y, by_step = _series(values)
        if len(y):
            panels[kind][name] = (x, y)
            stepped |= by_step
    if not any(panels.values()):
        _message(fig.add_subplot(), "No training history available:\nthe model's source run logged no "
                 "training or validation loss/accuracy.", title="Training curves")  # fmt: skip
        return fig
    axes = fig.subplots(1, 2)
    for ax, (kind, curves) in zip(axes, panels.items()):
        if not curves:
            _message(ax, f"no {kind} history logged", title=kind.capitalize())
            continue
        for name, (x, y) in curves.items():
            validation = name.lower().startswith(("val", "valid")) or "val" in name.lower().split("_")
            ax.plot(x, y, color=VAL_COLOR if validation else TRAIN_COLOR, linestyle="--" if validation else "-",
                    marker="o" if len(x) <= 30 else None, markersize=3,
                    label=("validation" if validation else "training") if name.lower().startswith(("train", "val"))
                    else name)  # fmt: skip
        ax.set_xlabel("epoch (logged step)" if stepped else "epoch")
        ax.set_ylabel("cross-entropy loss" if kind == "loss" else "accuracy (share correct)")
        if kind == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{kind.capitalize()}: training vs validation")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------
# 2-6. Performance
# --------------------------------------------------------------------------------------------


def _fmt_ci(value, lower, upper, digits=2) -> str:
    text = f"{value:.{digits}f}"
    if lower is not None and upper is not None:
        text += f" (95% CI {lower:.{digits}f}-{upper:.{digits}f})"
    return text


def plot_roc(
    fpr=None, tpr=None, *, auc: float | None = None, auc_lower: float | None = None,
    auc_upper: float | None = None, reason: str | None = None, operating_point: tuple[float, float] | None = None,
    threshold: float | None = None, class_names: Sequence[str] = ("CN", "AD"), ax=None,
):  # fmt: skip
    """ROC curve with the AUC and its 95% CI in the legend, and the chance diagonal.

    ``fpr``/``tpr``: the curve's points (None when not computable, then ``reason`` is shown).
    ``operating_point``: (1 - specificity, sensitivity) at the threshold, marked on the curve.
    """
    ax = _axes(ax, (4.2, 4.0))
    negative, positive = class_names
    if fpr is None or tpr is None or len(fpr) == 0:
        return _message(ax, f"ROC curve not computable:\n{reason or 'no curve given'}", title="ROC curve")
    label = "model" if auc is None else f"model, AUC {_fmt_ci(auc, auc_lower, auc_upper)}"
    ax.plot(fpr, tpr, color=AD_COLOR, linewidth=2, drawstyle="default", label=label)
    ax.plot([0, 1], [0, 1], color=NEUTRAL_COLOR, linestyle=":", label="chance (AUC 0.50)")
    if operating_point is not None:
        at = "" if threshold is None else f" {threshold:g}"
        ax.plot(*operating_point, "o", color="black", markersize=6, label=f"threshold{at}")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel(f"1 - specificity (share of {negative} called {positive})")
    ax.set_ylabel(f"sensitivity (share of {positive} called {positive})")
    ax.set_title("ROC curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return ax


def plot_score_histogram(
    y_true, y_score, *, threshold: float = 0.5, class_names: Sequence[str] = ("CN", "AD"), bins: int = 20,
    youden_threshold: float | None = None, ax=None,
):  # fmt: skip
    """Distribution of the model's AD probability per true class (AD red, CN blue), threshold line.

    ``y_true`` is 1 for the positive class (``class_names[1]``), 0 for the negative;
    ``youden_threshold``, if given, is marked (dotted) for information.
    """
    owned = ax is None
    ax = _axes(ax, (4.6, 4.2 if youden_threshold is not None else 3.8))
    negative, positive = class_names
    y_true, y_score = np.asarray(y_true).astype(int), np.asarray(y_score, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for value, name, color, hatch in ((0, negative, CN_COLOR, "//"), (1, positive, AD_COLOR, "\\\\")):
        scores = y_score[y_true == value]
        ax.hist(scores, bins=edges, color=color, alpha=0.45, hatch=hatch, edgecolor=color, linewidth=1,
                label=f"true {name} (n={len(scores)})")  # fmt: skip
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    if youden_threshold is not None:
        ax.axvline(youden_threshold, color=NEUTRAL_COLOR, linestyle=":",
                   label=f"Youden {youden_threshold:.2f} (chosen on this data; information only)")  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"model score: probability of {positive}")
    ax.set_ylabel("subjects")
    ax.set_title(f"Scores by true class (called {positive} at >= {threshold:g})", fontsize=10)
    _legend_below(ax, owned, ncol=1 if youden_threshold is not None else 2)
    return ax


def plot_confusion_matrix(tn: int, fp: int, fn: int, tp: int, *, class_names: Sequence[str] = ("CN", "AD"),
                          threshold: float | None = None, ax=None):  # fmt: skip
    """Counts and row percentages (share of each true class), true class down, prediction across."""
    ax = _axes(ax, (4.0, 3.5))
    negative, positive = class_names
    counts = np.array([[tn, fp], [fn, tp]], dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        percent = f"{100 * share[i, j]:.0f}%" if totals[i, 0] > 0 else "-"
        ax.text(j, i, f"{int(n)}\n{percent}", ha="center", va="center", fontsize=12,
                color="white" if share[i, j] > 0.6 else "black")  # fmt: skip
    ax.set_xticks([0, 1], [negative, positive])
    ax.set_yticks([0, 1], [f"{negative}\n(n={int(totals[0, 0])})", f"{positive}\n(n={int(totals[1, 0])})"])
    ax.set_xlabel("model's call")
    ax.set_ylabel("true class")
    at = "" if threshold is None else f" at threshold {threshold:g}"
    ax.set_title(f"Confusion matrix{at}\n(count, % of true class)", fontsize=10)
    return ax


def plot_calibration(
    mean_predicted, observed_fraction, count, *, brier: float | None = None, ece: float | None = None,
    class_names: Sequence[str] = ("CN", "AD"), fig: Figure | None = None,
) -> Figure:  # fmt: skip
    """Reliability curve (observed AD share against mean score per bin) with the diagonal of
    perfect calibration, Brier score and ECE in the legend, and subjects per bin below."""
    fig = fig if fig is not None else _figure((4.2, 4.8))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    positive = class_names[1]
    mean_predicted, observed, count = (np.asarray(a, dtype=float) for a in (mean_predicted, observed_fraction, count))
    top.plot([0, 1], [0, 1], color=NEUTRAL_COLOR, linestyle=":", label="perfect calibration")
    parts = [f"Brier {brier:.3f}" if brier is not None else None, f"ECE {ece:.3f}" if ece is not None else None]
    label = "model" + (f" ({', '.join(p for p in parts if p)})" if any(parts) else "")
    top.plot(mean_predicted, observed, "o-", color=AD_COLOR, label=label)
    for x, y, n in zip(mean_predicted, observed, count):
        top.annotate(f"{int(n)}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    top.set_xlim(0, 1)
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel(f"observed share of {positive}")
    top.set_title("Calibration (reliability curve)")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    if len(mean_predicted):
        bottom.bar(mean_predicted, count, width=0.06, color=NEUTRAL_COLOR)
    bottom.set_xlabel(f"mean model score in bin (probability of {positive})")
    bottom.set_ylabel("subjects")
    return fig


def plot_decision_curve(
    thresholds, net_benefit_model, net_benefit_treat_all, net_benefit_treat_none=None, *,
    threshold: float | None = None, class_names: Sequence[str] = ("CN", "AD"), ax=None,
):  # fmt: skip
    """Net benefit of acting on the model's call against treating everyone or nobody as AD."""
    ax = _axes(ax, (4.6, 3.6))
    positive = class_names[1]
    pt = np.asarray(thresholds, dtype=float)
    model, every = np.asarray(net_benefit_model, dtype=float), np.asarray(net_benefit_treat_all, dtype=float)
    none = np.zeros_like(pt) if net_benefit_treat_none is None else np.asarray(net_benefit_treat_none, dtype=float)
    ax.plot(pt, model, color=MODEL_COLOR, linewidth=2, label="model")
    ax.plot(pt, every, color=AD_COLOR, linestyle="--", label=f"treat all as {positive}")
    ax.plot(pt, none, color=NEUTRAL_COLOR, linestyle=":", label="treat none")
    if threshold is not None:
        ax.axvline(threshold, color="black", linewidth=0.8, alpha=0.6, label=f"threshold {threshold:g}")
    top = max(float(np.max(model, initial=0)), float(np.max(every, initial=0)), 0.05)
    ax.set_ylim(-0.1 * top - 0.02, 1.1 * top)
    ax.set_xlim(0, 1)
    ax.set_xlabel("threshold probability (risk at which one would act)")
    ax.set_ylabel("net benefit (true positives per subject)")
    ax.set_title("Decision curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def _roc_from_report(report):
    overall, roc = report.overall, report.curves.roc
    auc = overall.estimates.get("roc_auc")
    sens, spec = overall.estimates.get("sensitivity"), overall.estimates.get("specificity")
    point = None
    if sens is not None and spec is not None and sens.computable and spec.computable:
        point = (1 - spec.value, sens.value)
    return plot_roc(
        None if roc is None else roc.fpr, None if roc is None else roc.tpr,
        auc=auc.value if auc else None, auc_lower=auc.lower if auc else None, auc_upper=auc.upper if auc else None,
        reason=auc.reason if auc else None, operating_point=point, threshold=report.threshold,
        class_names=tuple(report.class_names),
    )  # fmt: skip


def _calibration_from_report(report) -> Figure:
    rel, est = report.curves.reliability, report.overall.estimates
    brier, ece = est.get("brier_score"), est.get("expected_calibration_error")
    return plot_calibration(rel.mean_predicted, rel.observed_fraction, rel.count,
                            brier=brier.value if brier else None, ece=ece.value if ece else None,
                            class_names=tuple(report.class_names))  # fmt: skip


def plot_performance_from_report(report, y_true=None, y_score=None) -> dict[str, Figure]:
    """The performance figures of a ``metrics.ClassificationReport`` (ROC, confusion matrix,
    score histogram if ``y_true``/``y_score`` are given, calibration, decision curve, subgroups)."""
    engine = None
    if y_true is not None and y_score is not None:
        engine = _Scores({"label": np.asarray(y_true).astype(int), "prob": np.asarray(y_score, dtype=float)})
    plan = figure_plan(report, engine, None)
    return {name: draw() for name, draw in plan if name != "training_curves"}


@dataclass
class _Scores:
    """Just the per-subject scores of an engine result (positive class = label 1)."""

    subjects: dict


def plot_subgroups(rows: Sequence[tuple[str, Mapping[str, object]]], overall: Mapping[str, object] | None = None, *,
                   names: Sequence[str] = ("sensitivity", "specificity", "roc_auc"),
                   fig: Figure | None = None) -> Figure:  # fmt: skip
    """Forest plot: each subgroup's figures with their 95% CIs, the whole cohort as a dashed line.

    ``rows``: ``(label, {name: estimate})`` per subgroup, where an estimate has ``value``,
    ``lower``, ``upper`` (``value`` None = not computable, shown as "n/a"); ``overall``: the
    whole cohort's estimates.
    """
    titles = {"sensitivity": "sensitivity", "specificity": "specificity", "roc_auc": "ROC AUC",
              "balanced_accuracy": "balanced accuracy", "accuracy": "accuracy", "ppv": "PPV", "npv": "NPV"}
    fig = fig if fig is not None else _figure((BRAIN_FIGURE_WIDTH_IN, 0.3 * len(rows) + 1.6))
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    if fig.get_layout_engine() is not None:
        fig.get_layout_engine().set(wspace=0.08)  # room between the panels' end and start ticks
    y = np.arange(len(rows))[::-1]
    for ax, name in zip(axes, names):
        for yi, (_, estimates) in zip(y, rows):
            e = estimates.get(name)
            if e is None or e.value is None:
                ax.text(0.5, yi, "n/a", ha="center", va="center", fontsize=8, color=NEUTRAL_COLOR)
                continue
            if e.lower is not None and e.upper is not None:
                ax.plot([e.lower, e.upper], [yi, yi], color="black", linewidth=1)
            ax.plot(e.value, yi, "s", color=MODEL_COLOR, markersize=5)
        whole = (overall or {}).get(name)
        if whole is not None and whole.value is not None:
            ax.axvline(whole.value, color=AD_COLOR, linestyle="--", linewidth=1, label=f"all: {whole.value:.2f}")
            ax.legend(fontsize=7.5, loc="lower left")
        ax.set_xlim(-0.02, 1.02)
        ax.set_xticks([0.0, 0.5, 1.0], ["0", "0.5", "1"])
        ax.set_xlabel(titles.get(name, name) + " (95% CI)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [label for label, _ in rows], fontsize=8)
    axes[0].set_ylim(-0.7, len(rows) - 0.3)
    fig.suptitle("Results per subgroup", fontsize=11)
    return fig


def plot_subgroups_from_report(report, names=("sensitivity", "specificity", "roc_auc")) -> Figure:
    rows = [(f"{row.covariate}: {row.group} (n={row.metrics.n_subjects})", row.metrics.estimates)
            for row in report.subgroups]  # fmt: skip
    return plot_subgroups(rows, report.overall.estimates, names=names)


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
        return f"{self.name} {self.axis} = {self.position_mm:.0f} mm"


# For each view: (normal axis, horizontal axis, vertical axis), RAS axes 0=x, 1=y, 2=z.
_VIEW_AXES = {"axial": (2, 0, 1), "coronal": (1, 0, 2), "sagittal": (0, 1, 2)}
_AXIS_NAMES = ("x", "y", "z")
_AXIS_SIDES = (("L", "R"), ("P", "A"), ("I", "S"))


def ortho_slices(volumes, affine=None, *, center_mm=None, center_voxel=None, peak_of: int | None = 0,
                 absolute_peak: bool = False) -> dict[str, SliceView]:  # fmt: skip
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
                     for a in range(3)])  # fmt: skip
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
                  low[vertical] - step[vertical] / 2, high[vertical] + step[vertical] / 2)  # fmt: skip
        h_sides, v_sides = _AXIS_SIDES[horizontal], _AXIS_SIDES[vertical]
        views[name] = SliceView(
            name=name, planes=tuple(planes), extent=tuple(float(e) for e in extent), axis=_AXIS_NAMES[normal],
            position_mm=float(world[normal]),
            xlabel=f"{_AXIS_NAMES[horizontal]} (mm, {h_sides[0]}->{h_sides[1]})",
            ylabel=f"{_AXIS_NAMES[vertical]} (mm, {v_sides[0]}->{v_sides[1]})",
            sides=(*h_sides, *v_sides),
        )  # fmt: skip
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


def _grey_range(volume: np.ndarray) -> tuple[float, float]:
    """Robust grey-scale limits (1st-99.5th percentile of non-zero voxels, on every 2nd voxel)."""
    sample = np.asarray(volume[::2, ::2, ::2], dtype=np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    nonzero = sample[sample != 0]
    low, high = np.percentile(nonzero if nonzero.size else sample, [1.0, 99.5])
    return float(low), float(high if high > low else low + 1)


def _symmetric_limit(*arrays) -> float:
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
_SMALL_FONT = 7.0  # view titles, side letters, scale bar, colour-bar ticks: 7 pt printed


def _content_size_mm(views: Mapping[str, SliceView]) -> tuple[float, float]:
    """(width, height) in mm of three views drawn side by side by ``draw_views``."""
    widths = [v.extent[1] - v.extent[0] for v in views.values()]
    heights = [v.extent[3] - v.extent[2] for v in views.values()]
    return sum(widths) + _VIEW_GAP_MM * (len(widths) - 1) + 2, max(heights) + _TOP_MARGIN_MM + _BOTTOM_MARGIN_MM


def _masked(plane, layer: Layer, cmap):
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
            plane, cmap = _masked(source.planes[layer.plane], layer, matplotlib.colormaps[layer.cmap])
            image = ax.imshow(plane, cmap=cmap, vmin=layer.vmin, vmax=layer.vmax, alpha=layer.alpha, origin="lower",
                              extent=extent, interpolation="nearest")  # fmt: skip
        width, height = right - left, upper - bottom
        ax.text(offset + width / 2, top + 2, view.title, ha="center", va="bottom", fontsize=8)
        ax.text(offset + 2, height / 2, view.sides[0], ha="left", va="center", **text)
        ax.text(offset + width - 2, height / 2, view.sides[1], ha="right", va="center", **text)
        ax.text(offset + width / 2, height - 2, view.sides[3], ha="center", va="top", **text)
        offset += width + _VIEW_GAP_MM
    if scale_bar:
        ax.plot([0, 50], [-6, -6], color="black", linewidth=2, solid_capstyle="butt")
        ax.text(25, -8, "50 mm", ha="center", va="top", fontsize=_SMALL_FONT)
    ax.set_xlim(-1, offset - _VIEW_GAP_MM + 1)
    ax.set_ylim(-_BOTTOM_MARGIN_MM, top + _TOP_MARGIN_MM)
    ax.set_aspect("equal")
    ax.set_anchor("W")
    ax.set_axis_off()
    return image


def _grid_figure(rows: int, fig: Figure | None, *, title=None, row_height: float | None = None,
                 content=(600.0, 250.0), shared_bar=False, caption: str = CONVENTION,
                 width: float = BRAIN_FIGURE_WIDTH_IN, subtitle: str | None = None):  # fmt: skip
    """A figure with one brain Axes per row and a colour-bar Axes per row (or one for all rows).

    The figure is ``width`` inches wide (the report's text width: it prints at scale 1, so the
    font sizes here are printed sizes) and each row as tall as ``content`` ((width, height) in mm
    per row, see ``_content_size_mm``) needs at that width; ``row_height`` (inches) instead fixes
    the rows' height and derives the width. A fixed layout (no constrained/tight layout solver):
    fast for tall galleries. ``subtitle``: one more line under the title (a finding the reader must
    not miss)."""
    head, foot, row_gap, bar_room, side = 0.5 + (0.2 if subtitle else 0.0), 0.3, 0.35, 1.0, 0.1
    if row_height is None:
        image_width = width - bar_room - 2 * side
        row_height = image_width * content[1] / content[0]
    else:
        image_width = row_height * content[0] / content[1]
    width, height = image_width + bar_room + 2 * side, row_height * rows + row_gap * (rows - 1) + head + foot
    fig = fig if fig is not None else _figure((width, height), layout=None)
    width, height = fig.get_figwidth(), fig.get_figheight()
    grid = fig.add_gridspec(rows, 2, width_ratios=[image_width, 0.15], left=side / width,
                            right=1 - (bar_room - 0.25) / width, top=1 - head / height, bottom=foot / height,
                            wspace=0.25 / ((image_width + 0.15) / 2), hspace=row_gap / row_height)  # fmt: skip
    axes = [fig.add_subplot(grid[r, 0]) for r in range(rows)]
    bars = [fig.add_subplot(grid[:, 1])] * rows if shared_bar else [fig.add_subplot(grid[r, 1]) for r in range(rows)]
    if title:
        fig.suptitle(title, fontsize=11, y=1 - 0.1 / height, va="top")
    if subtitle:
        fig.text(0.5, 1 - 0.32 / height, subtitle, ha="center", va="top", fontsize=8.5, color="#8b0000")
    if caption:
        fig.text(0.5, 0.06 / height, caption, ha="center", va="bottom", fontsize=_SMALL_FONT, color="#333333")
    return fig, axes, bars


def _colorbar(fig, image, cax, label: str):
    bar = fig.colorbar(image, cax=cax)
    bar.set_label(label, fontsize=_SMALL_FONT + 0.5)
    bar.ax.tick_params(labelsize=_SMALL_FONT)
    return bar


def _row_label(ax, text: str) -> None:
    ax.text(0.0, 1.0, text, transform=ax.transAxes, fontsize=9, fontweight="bold", va="bottom", ha="left")


def _volume3d(array) -> np.ndarray:
    """A 3D volume from [D, H, W] or [C, D, H, W] (first channel)."""
    array = np.asarray(array)
    return array[0] if array.ndim == 4 else array


def _crossing_mm(views: Mapping[str, SliceView]) -> tuple[float, float, float]:
    """The world point (x, y, z in mm) where the three views of ``ortho_slices`` cross."""
    return views["sagittal"].position_mm, views["coronal"].position_mm, views["axial"].position_mm


# --------------------------------------------------------------------------------------------
# 7. CAM overlays (Grad-CAM or HiResCAM, the evaluation's primary map)
# --------------------------------------------------------------------------------------------


def plot_cam_overlay(image, cam, affine=None, *, title: str | None = None, center_mm=None, alpha: float = 0.5,
                     show_below: float = 0.1, method: str = "gradcam",
                     fig: Figure | None = None) -> Figure:  # fmt: skip
    """One subject's CAM (``method``: gradcam or hirescam, for the labels) over its MRI in axial,
    coronal and sagittal views, with a colour bar.

    ``image``: [D, H, W] or [C, D, H, W] (first channel shown); ``cam``: [D, H, W] on the same grid;
    ``affine``: their NIfTI affine. The CAM is shown as a share of its maximum; values below
    ``show_below`` of it are left transparent. Slices cross at the CAM's peak unless ``center_mm``.
    """
    return plot_cam_gallery([(image, cam, affine, title or cam_name(method))], center_mm=center_mm, alpha=alpha,
                            show_below=show_below, method=method, fig=fig)  # fmt: skip


def plot_cam_gallery(
    cases, *, title: str | None = None, center_mm=None, alpha: float = 0.5, show_below: float = 0.1,
    positive_class: str = "AD", method: str = "gradcam", fig: Figure | None = None,
) -> Figure:  # fmt: skip
    """One row of three orthogonal CAM overlays per case (``method``: the map shown, gradcam or
    hirescam), slices through each case's CAM peak.

    ``cases``: ``engine.GalleryCase`` objects (image, cam, affine, subject_id, prob, outcome) or
    tuples ``(image, cam, affine, row_title)``.
    """
    rows = []
    for case in cases:
        if isinstance(case, tuple):
            image, cam, affine, label = case
        else:
            image, cam, affine = case.image, case.cam, case.affine
            label = f"{case.subject_id}: {case.outcome}, model's P({positive_class}) = {case.prob:.2f}"
        rows.append((_volume3d(image), np.asarray(cam, dtype=np.float32), affine, label))
    row_views = []
    for image, cam, affine, _ in rows:
        peak = float(np.nanmax(cam)) if np.any(np.isfinite(cam)) else 0.0
        shown = cam / peak if peak > 0 else np.zeros_like(cam)
        row_views.append(ortho_slices([image, shown], affine, center_mm=center_mm, peak_of=1))
    content = _content_size_mm(row_views[0]) if row_views else (600.0, 250.0)
    fig, axes, bars = _grid_figure(max(len(rows), 1), fig, title=title, shared_bar=True, content=content)
    if not rows:
        bars[0].set_axis_off()
        _message(axes[0], "no cases to show")
        return fig
    heat = None
    for r, (ax, views, (image, cam, affine, label)) in enumerate(zip(axes, row_views, rows)):
        low, high = _grey_range(image)
        heat = draw_views(ax, views, [Layer(0, "gray", low, high),
                                      Layer(1, HEAT_CMAP, 0.0, 1.0, alpha, hide_below=show_below)],
                          scale_bar=r == len(rows) - 1)  # fmt: skip
        _row_label(ax, label)
    bar = _colorbar(fig, heat, bars[0],
                    f"{cam_name(method)}, share of the subject's maximum (< {show_below:g} not shown)")
    bar.solids.set_alpha(1.0)
    return fig


# --------------------------------------------------------------------------------------------
# 8. Group-mean CAM and its AD-CN difference
# --------------------------------------------------------------------------------------------


def plot_group_cam(mean_by_class: Mapping[str, np.ndarray], diff, affine=None, *, background=None,
                   class_names: Sequence[str] = ("CN", "AD"), counts: Mapping[str, int] | None = None,
                   center_mm=None, alpha: float = 0.6, show_below: float = 0.1, method: str = "gradcam",
                   fig: Figure | None = None) -> Figure:  # fmt: skip
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
    background = None if background is None else _volume3d(background)
    peak_source = means[present.index(positive)] if positive in present else diff
    volumes = [peak_source, *means, diff] + ([] if background is None else [background])
    views = ortho_slices(volumes, affine, center_mm=center_mm, peak_of=0)
    fig, axes, bars = _grid_figure(len(present) + 1, fig, title=f"{cam}: group means and their difference",
                                   content=_content_size_mm(views))  # fmt: skip
    grey = _grey_range(background) if background is not None else None
    counts = counts or {}
    hidden = f" (< {show_below:g} not shown)" if background is not None else ""
    for r, name in enumerate(present):
        if background is not None:
            layers = [Layer(len(volumes) - 1, "gray", *grey),
                      Layer(1 + r, HEAT_CMAP, 0.0, 1.0, alpha, hide_below=show_below)]  # fmt: skip
        else:
            layers = [Layer(1 + r, HEAT_CMAP, 0.0, 1.0)]
        image = draw_views(axes[r], views, layers, scale_bar=False)
        _row_label(axes[r], f"mean {cam}, {name}" + (f" (n = {counts[name]})" if name in counts else ""))
        _colorbar(fig, image, bars[r], f"share of the highest group mean{hidden}").solids.set_alpha(1.0)
    if not np.any(np.isfinite(diff)):
        bars[-1].set_axis_off()
        _message(axes[-1], f"difference {positive} - {negative} not computable: it needs subjects in both groups")
        return fig
    limit = _symmetric_limit(diff)
    if background is not None:
        layers = [Layer(len(volumes) - 1, "gray", *grey),
                  Layer(1 + len(present), DIVERGING_CMAP, -limit, limit, 0.85, hide_abs_below=show_below * limit)]
        image = draw_views(axes[-1], views, layers)
    else:
        image = draw_views(axes[-1], views, [Layer(1 + len(present), DIVERGING_CMAP, -limit, limit)],
                           side_color="black")  # fmt: skip
    _row_label(axes[-1], f"difference {positive} - {negative} (red: more {cam} in {positive}, blue: in {negative})")
    bar = _colorbar(fig, image, bars[-1], f"{positive} - {negative}, same scale{hidden}")
    bar.solids.set_alpha(1.0)
    return fig


# --------------------------------------------------------------------------------------------
# 9. Feature maps
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
    from scipy.ndimage import zoom

    values = np.asarray(background, dtype=np.float32)
    sample = values[::3, ::3, ::3].ravel()
    levels, counts = np.unique(sample[np.isfinite(sample)], return_counts=True)
    if levels.size == 0 or counts.max() < 0.1 * sample.size:
        return None
    head = (~np.isclose(values, levels[np.argmax(counts)])).astype(np.float32)
    factors = [n / m for n, m in zip(shape, head.shape)]
    return zoom(head, factors, order=1, grid_mode=True, mode="nearest")[: shape[0], : shape[1], : shape[2]] >= 0.5


def plot_feature_maps(mean_positive, mean_negative, diff, channels, *, affine=None, input_shape=None,
                      background=None, class_names: Sequence[str] = ("CN", "AD"), layer: str = "",
                      n_channels: int = 6, view: str = "axial", slice_mm=None,
                      fig: Figure | None = None) -> Figure:  # fmt: skip
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
    k = max(len(channels), 1)
    title = (f"Average feature maps{f' of {layer}' if layer else ''}: top {len(channels)} channels "
             f"(by {positive}/{negative} separation), {view} slice")  # fmt: skip
    if not channels:
        fig = fig if fig is not None else _figure((BRAIN_FIGURE_WIDTH_IN, 2.0), layout=None)
        fig.suptitle(title, fontsize=10)
        _message(fig.add_subplot(), "no channels to show")
        return fig
    diff = np.asarray(diff)
    background = None if background is None else _volume3d(background)
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
    limit = _symmetric_limit(dif)
    tile_w, tile_h = v.extent[1] - v.extent[0], v.extent[3] - v.extent[2]
    gap = 0.08 * tile_w
    head_room = 0.14 * tile_h  # channel numbers above the tiles
    label_room, bar_room, side, top, foot, row_gap = 0.45, 0.95, 0.05, 0.45, 0.3, 0.12
    image_width = BRAIN_FIGURE_WIDTH_IN - label_room - bar_room - side
    mosaic_w = k * tile_w + (k - 1) * gap
    row_height = image_width * (tile_h + head_room) / mosaic_w
    height = 3 * row_height + 2 * row_gap + top + foot
    fig = fig if fig is not None else _figure((BRAIN_FIGURE_WIDTH_IN, height), layout=None)
    width, height = fig.get_figwidth(), fig.get_figheight()
    grid = fig.add_gridspec(3, 2, width_ratios=[image_width, 0.15], left=label_room / width,
                            right=1 - (bar_room - 0.3) / width, top=1 - top / height, bottom=foot / height,
                            wspace=0.3 / ((image_width + 0.15) / 2), hspace=row_gap / row_height)  # fmt: skip
    fig.suptitle(title, fontsize=10, y=1 - 0.08 / height, va="top")
    rows = ((pos, f"mean {positive}", "viridis", low, high), (neg, f"mean {negative}", "viridis", low, high),
            (dif, f"{positive} - {negative}", DIVERGING_CMAP, -limit, limit))  # fmt: skip
    grey = _grey_range(background) if background is not None else None
    for r, (planes, label, cmap, vmin, vmax) in enumerate(rows):
        ax = fig.add_subplot(grid[r, 0])
        overlay = r == 2 and anatomy is not None
        image = None
        for c, channel in enumerate(channels):
            x0 = c * (tile_w + gap)
            extent = (x0, x0 + tile_w, 0.0, tile_h)
            if overlay:
                a = anatomy.extent
                ax.imshow(anatomy.planes[0], cmap="gray", vmin=grey[0], vmax=grey[1], origin="lower",
                          interpolation="nearest", extent=(x0 + a[0] - v.extent[0], x0 + a[1] - v.extent[0],
                                                           a[2] - v.extent[2], a[3] - v.extent[2]))  # fmt: skip
                plane, colours = _masked(planes[..., c], Layer(0, cmap, hide_abs_below=FEATURE_DIFF_HIDDEN * limit),
                                         matplotlib.colormaps[cmap])  # fmt: skip
                image = ax.imshow(plane, cmap=colours, vmin=vmin, vmax=vmax, alpha=0.8, origin="lower",
                                  interpolation="nearest", extent=extent)  # fmt: skip
            else:
                image = ax.imshow(planes[..., c], cmap=cmap, vmin=vmin, vmax=vmax, origin="lower",
                                  interpolation="nearest", extent=extent)  # fmt: skip
            if r == 0:
                ax.text(x0 + tile_w / 2, tile_h + 0.03 * tile_h, f"ch {channel}", ha="center", va="bottom", fontsize=8)
            if c == 0:
                color = "white" if r < 2 or overlay else "black"
                ax.text(x0 + 0.03 * tile_w, 0.03 * tile_h, v.sides[0], fontsize=_SMALL_FONT, color=color,
                        va="bottom", fontweight="bold")  # fmt: skip
                ax.text(x0 + 0.97 * tile_w, 0.03 * tile_h, v.sides[1], fontsize=_SMALL_FONT, color=color,
                        va="bottom", ha="right", fontweight="bold")  # fmt: skip
        ax.set_xlim(0, mosaic_w)
        ax.set_ylim(0, tile_h + head_room)
        ax.set_aspect("equal")
        ax.set_anchor("W")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(label, fontsize=8)
        hidden = f" (< {FEATURE_DIFF_HIDDEN:.0%} not shown)"
        bar_label = "activation" if r < 2 else ("difference" + (hidden if overlay else ""))
        bar = _colorbar(fig, image, fig.add_subplot(grid[r, 1]), bar_label)
        bar.solids.set_alpha(1.0)
    fig.text(0.5, 0.06 / height, f"{v.name} slice {v.axis} = {v.position_mm:.0f} mm; " + CONVENTION, ha="center",
             va="bottom", fontsize=_SMALL_FONT, color="#333333")  # fmt: skip
    return fig


def plot_channel_difference_maps(diff, channels, *, affine=None, input_shape=None, n_channels: int = 3,
                                 background=None, class_names: Sequence[str] = ("CN", "AD"), layer: str = "",
                                 scores=None, fig: Figure | None = None) -> Figure:  # fmt: skip
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
    background = None if background is None else _volume3d(background)
    layer_affine = input_affine = None
    if channels and (affine is not None or background is not None):
        input_affine, layer_affine = _feature_grids(diff.shape, affine, input_shape, background)
    head = _head_on_grid(background, diff.shape[1:]) if background is not None and channels else None
    row_views = []
    for channel in channels:
        strength = np.nan_to_num(np.abs(diff[channel]) * (1.0 if head is None else head), nan=0.0)
        peak = np.unravel_index(int(np.argmax(strength)), strength.shape) if strength.max() > 0 else None
        row_views.append(ortho_slices(diff[channel], layer_affine, center_voxel=peak, peak_of=0, absolute_peak=True))
    fig, axes, bars = _grid_figure(max(len(channels), 1), fig,
                                   content=_content_size_mm(row_views[0]) if row_views else (600.0, 250.0),
                                   title=f"Feature-map difference {positive} - {negative}"
                                   f"{f' ({layer})' if layer else ''}, top channels")  # fmt: skip
    if not channels:
        bars[0].set_axis_off()
        _message(axes[0], "no channels to show")
        return fig
    scores = None if scores is None else list(scores)
    grey = _grey_range(background) if background is not None else None
    for r, (channel, views) in enumerate(zip(channels, row_views)):
        limit = _symmetric_limit(diff[channel])
        last = r == len(channels) - 1
        if background is not None:
            anatomy = ortho_slices(background, input_affine, center_mm=_crossing_mm(views))
            layers = [Layer(0, "gray", *grey, source=1),
                      Layer(0, DIVERGING_CMAP, -limit, limit, 0.8, hide_abs_below=FEATURE_DIFF_HIDDEN * limit)]
            image = draw_views(axes[r], [views, anatomy], layers, scale_bar=last)
        else:
            image = draw_views(axes[r], views, [Layer(0, DIVERGING_CMAP, -limit, limit)], side_color="black",
                               scale_bar=last)  # fmt: skip
        score = "" if scores is None else f", mean |t| = {float(scores[r]):.2f}"
        _row_label(axes[r], f"channel {channel} (rank {r + 1}{score}); red: higher in {positive}")
        hidden = f" (< {FEATURE_DIFF_HIDDEN:.0%} not shown)" if background is not None else ""
        label = f"{positive} - {negative}{hidden}"
        _colorbar(fig, image, bars[r], label).solids.set_alpha(1.0)
    return fig


# --------------------------------------------------------------------------------------------
# 10. Raw input difference and Welch t-map
# --------------------------------------------------------------------------------------------


def plot_input_difference(diff, t=None, affine=None, *, background=None, class_names: Sequence[str] = ("CN", "AD"),
                          counts: Mapping[str, int] | None = None, center_mm=None,
                          fig: Figure | None = None) -> Figure:  # fmt: skip
    """Voxel-wise mean(AD) - mean(CN) of the preprocessed inputs, and the Welch t-map, in three
    views each, on symmetric diverging scales, over the grey ``background`` (e.g. the cohort's mean
    input) when given.

    Slices cross at the largest |t| (else |difference|) inside the head: the background's
    non-background voxels (``cohort.brain_mask``), or everywhere without one. A marker outside the
    head (a scanner artefact that goes with the diagnosis) would otherwise pick slices that barely
    show the brain; when the largest |t| lies outside the head, the figure says so and where."""
    negative, positive = class_names
    diff = _volume3d(diff).astype(np.float32)
    t = None if t is None else _volume3d(t).astype(np.float32)
    t_ok = t is not None and bool(np.any(np.isfinite(t)))
    background = None if background is None else _volume3d(background).astype(np.float32)
    strength = np.abs(t if t_ok else diff)
    strength = np.where(np.isfinite(strength), strength, -np.inf)
    volumes = [t if t_ok else diff, diff] + ([t] if t_ok else [diff]) + ([] if background is None else [background])
    center_voxel, outside_note, head = None, None, _head(background)
    if np.isfinite(strength).any():
        peak = np.unravel_index(int(np.argmax(strength)), strength.shape)
        if head is not None and not head[peak] and np.isfinite(np.where(head, strength, -np.inf)).any():
            world = (np.eye(4) if affine is None else np.asarray(affine, dtype=float)) @ np.r_[peak, 1.0]
            what = "|t|" if t_ok else "|difference|"
            outside_note = (f"The largest {what} ({float(strength[peak]):.1f}) is outside the head, at ({world[0]:.0f}, "
                            f"{world[1]:.0f}, {world[2]:.0f}) mm; slices and scales here: inside the head")  # fmt: skip
            peak = np.unravel_index(int(np.argmax(np.where(head, strength, -np.inf))), strength.shape)
        else:
            head = None  # the scales take every voxel
        center_voxel = None if center_mm is not None else peak
    views = ortho_slices(volumes, affine, center_mm=center_mm, center_voxel=center_voxel, peak_of=0,
                         absolute_peak=True)  # fmt: skip
    fig, axes, bars = _grid_figure(2, fig, content=_content_size_mm(views), title=f"Input data: {positive} - "
                                   f"{negative} (the baseline against which the model's maps are judged)",
                                   subtitle=outside_note)  # fmt: skip
    # With a marker outside the head, scales from inside it: else the marker's contrast washes the brain out.
    within = (lambda v: np.where(head, v, np.nan)) if head is not None else (lambda v: v)
    grey = [] if background is None else [Layer(len(volumes) - 1, "gray", *_grey_range(background))]
    counts = counts or {}
    n = "" if not counts else f" (n = {counts.get(positive, '?')} {positive}, {counts.get(negative, '?')} {negative})"
    if np.any(np.isfinite(diff)):
        limit = _symmetric_limit(within(diff))
        hidden = INPUT_DIFF_HIDDEN * limit if grey else None
        image = draw_views(axes[0], views, grey + [Layer(1, DIVERGING_CMAP, -limit, limit, 0.85 if grey else 1.0,
                                                         hide_abs_below=hidden)],
                           side_color="white" if grey else "black", scale_bar=False)  # fmt: skip
        shown = f" (< {INPUT_DIFF_HIDDEN:.0%} of the largest not shown)" if grey else ""
        _row_label(axes[0], f"mean {positive} - mean {negative}{n}; red: higher in {positive}{shown}")
        _colorbar(fig, image, bars[0], "intensity difference").solids.set_alpha(1.0)
    else:
        bars[0].set_axis_off()
        _message(axes[0], f"difference not computable: it needs subjects in both groups{n}")
    if t_ok:
        t_limit = _symmetric_limit(within(t))
        image = draw_views(axes[1], views, grey + [Layer(2, DIVERGING_CMAP, -t_limit, t_limit, 0.85 if grey else 1.0,
                                                         hide_abs_below=T_HIDDEN if grey else None)],
                           side_color="white" if grey else "black")  # fmt: skip
        shown = f"; |t| < {T_HIDDEN:g} not shown" if grey else ""
        _row_label(axes[1], f"Welch t (|t| > 2: roughly p < 0.05 per voxel, uncorrected{shown})")
        _colorbar(fig, image, bars[1], "Welch t").solids.set_alpha(1.0)
    else:
        bars[1].set_axis_off()
        _message(axes[1], "t-map not computable: it needs at least 2 subjects in each group")
    return fig


# Over the anatomy, the input difference hides what is below this share of its largest value, and
# the t-map hides |t| below this value (about p = 0.05 per voxel, uncorrected), so the anatomy shows.
INPUT_DIFF_HIDDEN, T_HIDDEN = 0.25, 2.0


def _head(background) -> np.ndarray | None:
    """The head in ``background`` (its non-background voxels), or None when there is no background
    or the mask is empty or everything."""
    if background is None or not np.isfinite(background).all():
        return None
    from .cohort import brain_mask  # torch comes with it; only when a background is drawn

    head = brain_mask(background)
    return head if 0 < head.sum() < head.size else None


# --------------------------------------------------------------------------------------------
# 11. CAM share per atlas region, outside the brain
# --------------------------------------------------------------------------------------------


def plot_region_gain(region_names: Sequence[str], gains, *, labels=None, class_names: Sequence[str] = ("CN", "AD"),
                     method: str = "gradcam", ax=None):  # fmt: skip
    """Each region's share of the CAM (``method``, the primary map) inside the brain relative to its
    share of the brain's volume (1 = a map spread evenly over the brain).

    ``gains``: [subjects, regions] (or a mapping region -> per-subject values); ``labels``:
    1 (AD) / 0 (CN) per subject, to colour the points. Horizontal bars (one row per region, any
    number of regions, names readable): the mean over subjects; points: each subject
    (deterministic jitter).
    """
    cam = cam_name(method)
    names = list(region_names)
    if isinstance(gains, Mapping):
        gains = np.column_stack([np.asarray(gains[name], dtype=float) for name in names]) if names else np.zeros((0, 0))
    gains = np.asarray(gains, dtype=float).reshape(-1, len(names)) if names else np.zeros((0, 0))
    owned = ax is None
    ax = _axes(ax, (6.0, 2.1 + 0.32 * max(len(names), 2)))
    if not names or gains.size == 0:
        return _message(ax, f"No atlas regions: the {cam} share per region needs an atlas (--atlas).",
                        title=f"{cam} per region")  # fmt: skip
    negative, positive = class_names
    y = np.arange(len(names))[::-1]  # the first region on top
    means = np.nanmean(gains, axis=0)
    ax.barh(y, means, height=0.6, color="#DDDDDD", edgecolor="#555555", label="mean over subjects", zorder=1)
    jitter = (np.random.default_rng(0).random(gains.shape[0]) - 0.5) * 0.35
    if labels is None:
        ax.scatter(gains.ravel(), (y[None, :] + jitter[:, None]).ravel(), s=8, color="black", alpha=0.6, zorder=3,
                   label="subjects")  # fmt: skip
    else:
        labels = np.asarray(labels).astype(int)
        for value, name, color, marker in ((0, negative, CN_COLOR, "o"), (1, positive, AD_COLOR, "^")):
            rows = labels == value
            if rows.any():
                ax.scatter(gains[rows].ravel(), (y[None, :] + jitter[rows, None]).ravel(), s=10, color=color,
                           marker=marker, alpha=0.7, zorder=3, label=f"{name} subjects")  # fmt: skip
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label="1 = spread evenly over the brain")
    ax.set_yticks(y, [name.replace("_", " ") for name in names], fontsize=8)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel(f"{cam} share / brain volume share")
    ax.set_xlim(left=0)
    ax.set_title(f"Where the model looks: {cam} per atlas region", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    _legend_below(ax, owned)
    return ax


def plot_outside_brain(fractions, *, labels=None, class_names: Sequence[str] = ("CN", "AD"), method: str = "gradcam",
                       ax=None):  # fmt: skip
    """Share of each subject's CAM (``method``, the primary map) outside the brain mask (skull,
    background) per true class.

    ``fractions``: per subject, in [0, 1]; ``labels``: 1 (AD) / 0 (CN) per subject, or None.
    Near 0 is what an anatomically plausible model shows; a large share suggests a shortcut.
    """
    cam = cam_name(method)
    ax = _axes(ax, (4.6, 3.6))
    values = np.asarray(fractions, dtype=float)
    if values.size == 0 or not np.any(np.isfinite(values)):
        return _message(ax, f"No {cam} shares to show.", title=f"{cam} outside the brain")
    negative, positive = class_names
    edges = np.linspace(0.0, 1.0, 21)
    groups = [(None, "all subjects", NEUTRAL_COLOR, "")] if labels is None else [
        (0, negative, CN_COLOR, "//"), (1, positive, AD_COLOR, "\\\\")]  # fmt: skip
    labels = None if labels is None else np.asarray(labels).astype(int)
    for value, name, color, hatch in groups:
        chosen = values if value is None else values[labels == value]
        chosen = chosen[np.isfinite(chosen)]
        ax.hist(chosen, bins=edges, color=color, alpha=0.45, hatch=hatch, edgecolor=color,
                label=f"{name} (n={len(chosen)}, median {np.median(chosen) if len(chosen) else float('nan'):.2f})")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"share of {cam} outside the brain mask (0 = all inside)")
    ax.set_ylabel("subjects")
    ax.set_title(f"{cam} outside the brain (skull, background)", fontsize=10)
    ax.legend(fontsize=8)
    return ax


# --------------------------------------------------------------------------------------------
# 12. Model-randomisation sanity check
# --------------------------------------------------------------------------------------------


def plot_sanity(spearman, *, subject_ids: Sequence[str] | None = None, mean: float | None = None,
                method: str = "gradcam", ax=None):  # fmt: skip
    """Rank correlation of each subject's CAM (``method``, the primary map) with the trained vs
    randomised-weights model."""
    cam = cam_name(method)
    ax = _axes(ax, (5.6, 3.8))
    values = np.asarray(spearman, dtype=float)
    if values.size == 0:
        return _message(ax, "Sanity check not run: no subjects.", title=f"{cam} sanity check")
    ids = list(subject_ids) if subject_ids is not None else [str(i + 1) for i in range(len(values))]
    mean = float(np.nanmean(values)) if mean is None and np.any(np.isfinite(values)) else mean
    x = np.arange(len(values))
    ax.bar(x, np.nan_to_num(values), color=MODEL_COLOR, width=0.6)
    has_mean = mean is not None and math.isfinite(mean)
    if has_mean:
        ax.axhline(mean, color="black", linestyle="--", label=f"mean {mean:.2f}")
        ax.legend(fontsize=8, loc="lower right")
    ax.axhline(0.0, color=NEUTRAL_COLOR, linewidth=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xticks(x, ids, rotation=45 if len(ids) > 4 else 0, ha="right" if len(ids) > 4 else "center", fontsize=8)
    # The reading guide goes in the x label, so the layout engine keeps room for it.
    ax.set_xlabel("subject\n\nGood: correlation near 0 (the maps depend on what the model learned).\n"
                  "Near 1: the maps would look the same from an untrained model (not explanations).", fontsize=8)
    ax.set_ylabel("Spearman rank correlation")
    summary = f"\nmean rank correlation {mean:.2f} over {len(values)} subjects (bars)" if has_mean else ""
    ax.set_title(f"Sanity check: trained vs randomised-weights {cam}{summary}", fontsize=10)
    return ax


# --------------------------------------------------------------------------------------------
# Everything at once
# --------------------------------------------------------------------------------------------


def _first_affine(engine_result):
    for cases in (getattr(engine_result, "gallery", None) or {}).values():
        for case in cases:
            return case.affine
    return None


def _class_names(report, engine_result) -> tuple[str, str]:
    """(negative, positive): the report's, else the engine's (two classes), else (CN, AD)."""
    if report is not None:
        return tuple(report.class_names)
    stats = getattr(engine_result, "stats", None)
    names = list(getattr(stats, "class_names", []) or [])
    if len(names) == 2 and getattr(stats, "positive_index", None) in (0, 1):
        return names[1 - stats.positive_index], names[stats.positive_index]
    return "CN", "AD"


def figure_plan(report=None, engine_result=None, history=None, *, affine=None, input_shape=None,
                max_gallery_cases: int = 3) -> list[tuple[str, Callable[[], Figure]]]:  # fmt: skip
    """``(name, draw)`` for every figure the given pieces allow; ``draw()`` returns the Figure.

    Figures are drawn lazily, so ``render_all`` holds one at a time. Absent pieces are skipped.
    """
    plan: list[tuple[str, Callable[[], Figure]]] = [("training_curves", lambda: plot_training_curves(history))]
    class_names = _class_names(report, engine_result)
    negative, positive = class_names
    stats = getattr(engine_result, "stats", None)
    subjects = getattr(engine_result, "subjects", None) or {}
    y_true = y_score = None
    if "label" in subjects and "prob" in subjects:
        y_true = (np.asarray(subjects["label"]) == getattr(stats, "positive_index", 1)).astype(int)
        y_score = np.asarray(subjects["prob"], dtype=float)
    if report is not None:
        overall, curves = report.overall, report.curves
        plan += [
            ("roc", lambda: _roc_from_report(report).figure),
            ("confusion_matrix", lambda: plot_confusion_matrix(
                **overall.confusion.to_dict(), class_names=class_names, threshold=report.threshold).figure),
        ]  # fmt: skip
        if y_true is not None:
            youden = report.threshold_rationale.youden_threshold
            plan.append(("score_histogram", lambda: plot_score_histogram(
                y_true, y_score, threshold=report.threshold, class_names=class_names,
                youden_threshold=youden.value if youden.computable else None).figure))  # fmt: skip
        plan += [
            ("calibration", lambda: _calibration_from_report(report)),
            ("decision_curve", lambda: plot_decision_curve(
                curves.decision.thresholds, curves.decision.net_benefit_model, curves.decision.net_benefit_treat_all,
                curves.decision.net_benefit_treat_none, threshold=report.threshold, class_names=class_names).figure),
        ]  # fmt: skip
        if report.subgroups:
            plan.append(("subgroups", lambda: plot_subgroups_from_report(report)))
    elif y_true is not None:
        threshold = getattr(engine_result, "threshold", 0.5)
        plan.append(("score_histogram", lambda: plot_score_histogram(
            y_true, y_score, threshold=threshold, class_names=class_names).figure))  # fmt: skip
    if engine_result is None:
        return plan

    affine = _first_affine(engine_result) if affine is None else affine
    method = getattr(engine_result, "cam_method", None) or "gradcam"  # the primary map
    for outcome, cases in (getattr(engine_result, "gallery", None) or {}).items():
        if cases:
            what = OUTCOME_TITLES.get(outcome, outcome).format(negative=negative, positive=positive)
            title = f"{cam_name(method)}, most confident {what}"
            plan.append((f"gradcam_{outcome}", lambda cases=cases, title=title: plot_cam_gallery(
                cases[:max_gallery_cases], positive_class=positive, title=title, method=method)))  # fmt: skip
    maps = getattr(engine_result, "maps", None) or {}
    inputs = maps.get("input")
    if input_shape is None and inputs is not None:
        input_shape = np.asarray(inputs.diff).shape[-3:]

    def anatomy():
        """The cohort's mean input (both groups pooled): the anatomy under the maps."""
        if inputs is None:
            return None
        pooled = [_volume3d(inputs.mean[name]) for name in class_names if name in inputs.mean]
        return np.mean(pooled, axis=0) if pooled else None

    if "cam" in maps:
        cam = maps["cam"]

        def group_cam():
            return plot_group_cam(cam.mean, cam.diff, affine, background=anatomy(), class_names=class_names,
                                  counts=cam.count, method=method)  # fmt: skip

        plan.append(("group_cam", group_cam))
    layer = getattr(engine_result, "target_layer", None)
    features = maps.get(f"features/{layer}") if layer else None
    ranking = (getattr(engine_result, "feature_ranking", None) or {}).get(layer)
    if features is not None and ranking is not None and all(name in features.mean for name in class_names):
        plan += [
            ("feature_maps", lambda: plot_feature_maps(
                features.mean[positive], features.mean[negative], features.diff, ranking["channel"], affine=affine,
                input_shape=input_shape, background=anatomy(), class_names=class_names, layer=layer)),
            ("feature_channel_differences", lambda: plot_channel_difference_maps(
                features.diff, ranking["channel"], affine=affine, input_shape=input_shape, background=anatomy(),
                class_names=class_names, layer=layer, scores=ranking.get("mean_abs_t"))),
        ]  # fmt: skip
    if inputs is not None:
        plan.append(("input_difference", lambda: plot_input_difference(
            inputs.diff, inputs.t, affine, background=anatomy(), class_names=class_names,
            counts=inputs.count)))  # fmt: skip
    if "cam_outside_brain_fraction" in subjects:
        plan.append(("cam_outside_brain", lambda: plot_outside_brain(
            subjects["cam_outside_brain_fraction"], labels=y_true, class_names=class_names, method=method).figure))
    regions = list(getattr(engine_result, "region_names", None) or [])
    if regions and all(f"cam_roi_gain_{name}" in subjects for name in regions):
        gains = {name: subjects[f"cam_roi_gain_{name}"] for name in regions}
        plan.append(("region_gain", lambda: plot_region_gain(
            regions, gains, labels=y_true, class_names=class_names, method=method).figure))  # fmt: skip
    sanity = getattr(engine_result, "sanity", None)
    if sanity is not None and len(sanity.spearman):
        plan.append(("sanity", lambda: plot_sanity(
            sanity.spearman, subject_ids=sanity.subject_ids, mean=sanity.mean, method=method).figure))  # fmt: skip
    return plan


def build_figures(report=None, engine_result=None, history=None, **options) -> dict[str, Figure]:
    """Every figure the given pieces allow, as ``{name: Figure}`` (see ``figure_plan``)."""
    return {name: draw() for name, draw in figure_plan(report, engine_result, history, **options)}


def render_all(report=None, engine_result=None, history=None, out_dir=".", *, affine=None, dpi: int = DPI,
               max_gallery_cases: int = 3, strict: bool = True) -> dict[str, pathlib.Path]:  # fmt: skip
    """Draw every figure the given pieces allow and save each as ``out_dir/<name>.png``.

    ``report``: ``metrics.ClassificationReport`` or None; ``engine_result``: ``engine.EngineResult``
    or None; ``history``: training history (may be empty); ``affine``: of the inputs' grid (default:
    the first gallery case's). Pieces that are absent are skipped: no atlas, no gain figure; no
    false positives, no FP gallery. With ``strict=False`` a figure that fails to draw is logged as
    a warning and left out instead of raising. Returns ``{name: path}`` in drawing order.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, draw in figure_plan(report, engine_result, history, affine=affine,
                                  max_gallery_cases=max_gallery_cases):  # fmt: skip
        try:
            paths[name] = save_figure(draw(), out / f"{name}.png", dpi=dpi)
        except Exception:
            if strict:
                raise
            log.warning("figure %s could not be drawn; it is left out", name, exc_info=True)
    return paths


def plot_champion_comparison(this_map, champion_map, affine=None, *, background=None,
                             labels: Sequence[str] = ("this version", "champion"), group: str = "AD",
                             alpha: float = 0.6, fig: Figure | None = None) -> Figure:  # fmt: skip
    """The registry review's picture: each model's group-mean map of ``group`` over the same grey
    ``background`` (the cohort's mean input), one row per model, slices through that row's own
    peak (where each model looks most). Each row has its own colour scale: raw map units of two
    models are not comparable, their places are."""
    maps = [_volume3d(np.asarray(m, dtype=np.float32)) for m in (this_map, champion_map)]
    background = None if background is None else _volume3d(background)
    fig_views = [ortho_slices([m] + ([] if background is None else [background]), affine, peak_of=0) for m in maps]
    fig, axes, bars = _grid_figure(2, fig, title=f"Where each model looks: mean map of the {group} group",
                                   content=_content_size_mm(fig_views[0]))  # fmt: skip
    grey = _grey_range(background) if background is not None else None
    for r, (volume, views, label) in enumerate(zip(maps, fig_views, labels)):
        high = float(np.nanmax(volume)) if np.any(np.isfinite(volume)) and np.nanmax(volume) > 0 else 1.0
        layers = ([Layer(1, "gray", *grey), Layer(0, HEAT_CMAP, 0.0, high, alpha)] if background is not None
                  else [Layer(0, HEAT_CMAP, 0.0, high)])  # fmt: skip
        image = draw_views(axes[r], views, layers, scale_bar=r == 1)
        _row_label(axes[r], label)
        _colorbar(fig, image, bars[r], "map (raw units)").solids.set_alpha(1.0)
    return fig
