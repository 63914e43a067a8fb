"""How well the scores separate the classes: ROC, score histogram, confusion matrix,
calibration, decision curve and results per subgroup."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from ..i18n import _, line_spacing
from ..meta import CONFIDENCE_PERCENT, DEFAULT_CLASS_NAMES
from .style import (
    AD_COLOR, BRAIN_FIGURE_WIDTH_IN, CN_COLOR, MODEL_COLOR, NEUTRAL_COLOR, axes_to_draw, new_figure, legend_below, message_axes,
)

if TYPE_CHECKING:
    from ..metrics import ClassificationReport


def _fmt_ci(value, lower, upper, digits=2) -> str:
    text = f"{value:.{digits}f}"
    if lower is not None and upper is not None:
        text += " " + _("({level}% CI {lower}-{upper})").format(level=CONFIDENCE_PERCENT, lower=f"{lower:.{digits}f}",
                                                                upper=f"{upper:.{digits}f}")
    return text


def plot_roc(
    fpr=None, tpr=None, *, auc: float | None = None, auc_lower: float | None = None,
    auc_upper: float | None = None, reason: str | None = None, operating_point: tuple[float, float] | None = None,
    threshold: float | None = None, class_names: Sequence[str] = DEFAULT_CLASS_NAMES, ax=None,
):
    """ROC curve with the AUC and its 95% CI in the legend, and the chance diagonal.

    ``fpr``/``tpr``: the curve's points (None when not computable, then ``reason`` is shown).
    ``operating_point``: (1 - specificity, sensitivity) at the threshold, marked on the curve.
    """
    ax = axes_to_draw(ax, (4.2, 4.0))
    negative, positive = class_names
    if fpr is None or tpr is None or len(fpr) == 0:
        return message_axes(ax, _('ROC curve not computable:\n{reason}').format(
            reason=reason or _('no curve given')), title=_("ROC curve"))
    label = _("model") if auc is None else _("model, AUC {auc}").format(auc=_fmt_ci(auc, auc_lower, auc_upper))
    ax.plot(fpr, tpr, color=AD_COLOR, linewidth=2, drawstyle="default", label=label)
    ax.plot([0, 1], [0, 1], color=NEUTRAL_COLOR, linestyle=":", label=_("chance (AUC 0.50)"))
    if operating_point is not None:
        at = "" if threshold is None else f" {threshold:g}"
        ax.plot(*operating_point, "o", color="black", markersize=6, label=_("threshold") + at)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel(_('1 - specificity (share of {negative} called {positive})').format(
        negative=negative, positive=positive))
    ax.set_ylabel(_('sensitivity (share of {positive} called {positive})').format(positive=positive))
    ax.set_title(_("ROC curve"))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return ax


def plot_score_histogram(
    y_true, y_score, *, threshold: float = 0.5, class_names: Sequence[str] = DEFAULT_CLASS_NAMES, bins: int = 20,
    youden_threshold: float | None = None, ax=None,
):
    """Distribution of the model's AD probability per true class (AD red, CN blue), threshold line.

    ``y_true`` is 1 for the positive class (``class_names[1]``), 0 for the negative;
    ``youden_threshold``, if given, is marked (dotted) for information.
    """
    owned = ax is None
    ax = axes_to_draw(ax, (4.6, 4.2 if youden_threshold is not None else 3.8))
    negative, positive = class_names
    y_true, y_score = np.asarray(y_true).astype(int), np.asarray(y_score, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for value, name, color, hatch in ((0, negative, CN_COLOR, "//"), (1, positive, AD_COLOR, "\\\\")):
        scores = y_score[y_true == value]
        ax.hist(scores, bins=edges, color=color, alpha=0.45, hatch=hatch, edgecolor=color, linewidth=1,
                label=_("true {name} (n={n})").format(name=name, n=len(scores)))
    ax.axvline(threshold, color="black", linestyle="--", label=_("threshold {threshold:g}").format(threshold=threshold))
    if youden_threshold is not None:
        ax.axvline(youden_threshold, color=NEUTRAL_COLOR, linestyle=":",
                   label=_('Youden {youden_threshold:.2f} (chosen on this data; information only)').format(
                       youden_threshold=youden_threshold))
    ax.set_xlim(0, 1)
    ax.set_xlabel(_('model score: probability of {positive}').format(positive=positive))
    ax.set_ylabel(_("subjects"))
    ax.set_title(_('Scores by true class (called {positive} at >= {threshold:g})').format(
        positive=positive, threshold=threshold), fontsize=10)
    legend_below(ax, owned, ncol=1 if youden_threshold is not None else 2)
    return ax


def plot_confusion_matrix(tn: int, fp: int, fn: int, tp: int, *, class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
                          threshold: float | None = None, ax=None):
    """Counts and row percentages (share of each true class), true class down, prediction across."""
    ax = axes_to_draw(ax, (4.0, 3.5))
    negative, positive = class_names
    counts = np.array([[tn, fp], [fn, tp]], dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        percent = f"{100 * share[i, j]:.0f}%" if totals[i, 0] > 0 else "-"
        ax.text(j, i, f"{int(n)}\n{percent}", ha="center", va="center", fontsize=12,
                color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks([0, 1], [negative, positive])
    ax.set_yticks([0, 1], [f"{negative}\n(n={int(totals[0, 0])})", f"{positive}\n(n={int(totals[1, 0])})"])
    ax.set_xlabel(_("model's call"))
    ax.set_ylabel(_("true class"))
    at = "" if threshold is None else " " + _("at threshold {threshold:g}").format(threshold=threshold)
    ax.set_title(_("Confusion matrix{at}\n(count, % of true class)").format(
        at=at), fontsize=10, linespacing=line_spacing())
    return ax


def plot_calibration(
    mean_predicted, observed_fraction, count, *, brier: float | None = None, ece: float | None = None,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES, fig: Figure | None = None,
) -> Figure:
    """Reliability curve (observed AD share against mean score per bin) with the diagonal of
    perfect calibration, Brier score and ECE in the legend, and subjects per bin below."""
    fig = fig if fig is not None else new_figure((4.2, 4.8))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    positive = class_names[1]
    mean_predicted, observed, count = (np.asarray(a, dtype=float) for a in (mean_predicted, observed_fraction, count))
    top.plot([0, 1], [0, 1], color=NEUTRAL_COLOR, linestyle=":", label=_("perfect calibration"))
    parts = [f"Brier {brier:.3f}" if brier is not None else None, f"ECE {ece:.3f}" if ece is not None else None]
    label = _("model") + (f" ({', '.join(p for p in parts if p)})" if any(parts) else "")
    top.plot(mean_predicted, observed, "o-", color=AD_COLOR, label=label)
    for x, y, n in zip(mean_predicted, observed, count):
        top.annotate(f"{int(n)}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    top.set_xlim(0, 1)
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel(_('observed share of {positive}').format(positive=positive))
    top.set_title(_("Calibration (reliability curve)"))
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=8)
    if len(mean_predicted):
        bottom.bar(mean_predicted, count, width=0.06, color=NEUTRAL_COLOR)
    bottom.set_xlabel(_('mean model score in bin (probability of {positive})').format(positive=positive))
    bottom.set_ylabel(_("subjects"))
    return fig


def plot_decision_curve(
    thresholds, net_benefit_model, net_benefit_treat_all, net_benefit_treat_none=None, *,
    threshold: float | None = None, class_names: Sequence[str] = DEFAULT_CLASS_NAMES, ax=None,
):
    """Net benefit of acting on the model's call against treating everyone or nobody as AD."""
    ax = axes_to_draw(ax, (4.6, 3.6))
    positive = class_names[1]
    pt = np.asarray(thresholds, dtype=float)
    model, every = np.asarray(net_benefit_model, dtype=float), np.asarray(net_benefit_treat_all, dtype=float)
    none = np.zeros_like(pt) if net_benefit_treat_none is None else np.asarray(net_benefit_treat_none, dtype=float)
    ax.plot(pt, model, color=MODEL_COLOR, linewidth=2, label=_("model"))
    ax.plot(pt, every, color=AD_COLOR, linestyle="--", label=_('treat all as {positive}').format(positive=positive))
    ax.plot(pt, none, color=NEUTRAL_COLOR, linestyle=":", label=_("treat none"))
    if threshold is not None:
        ax.axvline(threshold, color="black", linewidth=0.8, alpha=0.6, label=_("threshold {threshold:g}").format(
            threshold=threshold))
    top = max(float(np.max(model, initial=0)), float(np.max(every, initial=0)), 0.05)
    ax.set_ylim(-0.1 * top - 0.02, 1.1 * top)
    ax.set_xlim(0, 1)
    ax.set_xlabel(_("threshold probability (risk at which one would act)"))
    ax.set_ylabel(_("net benefit (true positives per subject)"))
    ax.set_title(_("Decision curve"))
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
    )


def _calibration_from_report(report) -> Figure:
    rel, est = report.curves.reliability, report.overall.estimates
    brier, ece = est.get("brier_score"), est.get("expected_calibration_error")
    return plot_calibration(rel.mean_predicted, rel.observed_fraction, rel.count,
                            brier=brier.value if brier else None, ece=ece.value if ece else None,
                            class_names=tuple(report.class_names))


def plot_subgroups(rows: Sequence[tuple[str, Mapping[str, object]]], overall: Mapping[str, object] | None = None, *,
                   names: Sequence[str] = ("sensitivity", "specificity", "roc_auc"),
                   fig: Figure | None = None) -> Figure:
    """Forest plot: each subgroup's figures with their 95% CIs, the whole cohort as a dashed line.

    ``rows``: ``(label, {name: estimate})`` per subgroup, where an estimate has ``value``,
    ``lower``, ``upper`` (``value`` None = not computable, shown as "n/a"); ``overall``: the
    whole cohort's estimates.
    """
    titles = {"sensitivity": _("sensitivity"), "specificity": _("specificity"), "roc_auc": "ROC AUC",
              "balanced_accuracy": _("balanced accuracy"), "accuracy": _("accuracy"), "ppv": "PPV", "npv": "NPV"}
    fig = fig if fig is not None else new_figure((BRAIN_FIGURE_WIDTH_IN, 0.3 * len(rows) + 1.6))
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    if fig.get_layout_engine() is not None:
        fig.get_layout_engine().set(wspace=0.08)  # room between the panels' end and start ticks
    y = np.arange(len(rows))[::-1]
    for ax, name in zip(axes, names):
        for yi, (_label, estimates) in zip(y, rows):
            e = estimates.get(name)
            if e is None or e.value is None:
                ax.text(0.5, yi, _("n/a"), ha="center", va="center", fontsize=8, color=NEUTRAL_COLOR)
                continue
            if e.lower is not None and e.upper is not None:
                ax.plot([e.lower, e.upper], [yi, yi], color="black", linewidth=1)
            ax.plot(e.value, yi, "s", color=MODEL_COLOR, markersize=5)
        whole = (overall or {}).get(name)
        if whole is not None and whole.value is not None:
            ax.axvline(whole.value, color=AD_COLOR, linestyle="--", linewidth=1, label=_("all: {value:.2f}").format(
                value=whole.value))
            ax.legend(fontsize=7.5, loc="lower left")
        ax.set_xlim(-0.02, 1.02)
        ax.set_xticks([0.0, 0.5, 1.0], ["0", "0.5", "1"])
        ax.set_xlabel(titles.get(name, name) + f" ({CONFIDENCE_PERCENT}% CI)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, [label for label, _ in rows], fontsize=8)
    axes[0].set_ylim(-0.7, len(rows) - 0.3)
    fig.suptitle(_("Results per subgroup"), fontsize=11)
    return fig


def plot_subgroups_from_report(report, names=("sensitivity", "specificity", "roc_auc")) -> Figure:
    rows = [(f"{row.covariate}: {row.group} (n={row.metrics.n_subjects})", row.metrics.estimates)
            for row in report.subgroups]
    return plot_subgroups(rows, report.overall.estimates, names=names)



def performance_plan(report: ClassificationReport | None, scores: tuple[np.ndarray, np.ndarray] | None = None, *,
                     class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
                     threshold: float = 0.5) -> list[tuple[str, Callable[[], Figure]]]:
    """``(name, draw)`` for the performance figures: those of ``report`` (ROC, confusion matrix,
    calibration, decision curve, subgroups) and, with ``scores`` (``y_true`` 1 for the positive
    class, ``y_score``), the score histogram. ``class_names`` and ``threshold`` are the report's
    when there is one."""
    plan: list[tuple[str, Callable[[], Figure]]] = []
    if report is None:
        if scores is not None:
            plan.append(("score_histogram", lambda: plot_score_histogram(
                *scores, threshold=threshold, class_names=class_names).figure))
        return plan
    class_names, curves = tuple(report.class_names), report.curves
    plan += [
        ("roc", lambda: _roc_from_report(report).figure),
        ("confusion_matrix", lambda: plot_confusion_matrix(
            **report.overall.confusion.to_dict(), class_names=class_names, threshold=report.threshold).figure),
    ]
    if scores is not None:
        youden = report.threshold_rationale.youden_threshold
        plan.append(("score_histogram", lambda: plot_score_histogram(
            *scores, threshold=report.threshold, class_names=class_names,
            youden_threshold=youden.value if youden.computable else None).figure))
    plan += [
        ("calibration", lambda: _calibration_from_report(report)),
        ("decision_curve", lambda: plot_decision_curve(
            curves.decision.thresholds, curves.decision.net_benefit_model, curves.decision.net_benefit_treat_all,
            curves.decision.net_benefit_treat_none, threshold=report.threshold, class_names=class_names).figure),
    ]
    if report.subgroups:
        plan.append(("subgroups", lambda: plot_subgroups_from_report(report)))
    return plan


def plot_performance_from_report(report: ClassificationReport, y_true=None, y_score=None) -> dict[str, Figure]:
    """The performance figures of a ``metrics.ClassificationReport`` (ROC, confusion matrix,
    score histogram if ``y_true``/``y_score`` are given, calibration, decision curve, subgroups)."""
    scores = None
    if y_true is not None and y_score is not None:
        scores = (np.asarray(y_true).astype(int), np.asarray(y_score, dtype=float))
    return {name: draw() for name, draw in performance_plan(report, scores)}
