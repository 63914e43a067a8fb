"""What changes the score: the counterfactual tests' deletion curves and region drops, drawn from
the numbers ``interventions.summarise`` gives (a ``CounterfactualSummary``), into an Axes."""

from __future__ import annotations

from ..i18n import N_, _
from ..meta import CONFIDENCE_PERCENT, DEFAULT_CAM
from .style import AD_COLOR, MODEL_COLOR, NEUTRAL_COLOR, axes_to_draw, legend_below, message_axes, cam_name

ORDER_STYLE = {  # order -> (label, colour, line style, marker)
    "morf": (N_("most relevant first (MoRF)"), AD_COLOR, "-", "o"),
    "lerf": (N_("least relevant first (LeRF)"), MODEL_COLOR, "--", "s"),
    "random": (N_("random blob in the brain (control)"), NEUTRAL_COLOR, ":", "^"),
}


def plot_deletion_curves(summary, *, method: str = DEFAULT_CAM, ax=None):
    """Mean P(positive) against the share of the brain's volume replaced by the controls' mean
    input, for the primary map's most and least relevant voxels first and a random blob, each point
    with its 95% interval over the re-scored subjects."""
    cam = cam_name(method)
    owned = ax is None
    ax = axes_to_draw(ax, (5.6, 3.9))
    positive = getattr(summary, "positive_class", "AD")
    title = _("Deletion curves: P({positive}) as the {cam}'s voxels are replaced").format(positive=positive, cam=cam)
    if summary is None or not summary.computed or not summary.curves:
        reason = getattr(summary, "reason", None) or "the counterfactual tests did not run"
        return message_axes(ax, _('No deletion curves: {reason}.').format(reason=reason), title=title)
    for order, (label, color, style, marker) in ORDER_STYLE.items():
        curve = summary.curves.get(order)
        if not curve:
            continue
        shares = [100 * s for s in curve["share"]]
        prob, lower, upper = curve["prob"], curve["lower"], curve["upper"]
        ax.plot(shares, prob, linestyle=style, marker=marker, color=color, label=_(label), zorder=3)
        if all(v is not None for v in (*lower, *upper)):
            ax.fill_between(shares, lower, upper, color=color, alpha=0.15, linewidth=0, zorder=1)
    ax.set_xlabel(_("share of the brain's volume replaced (%)"))
    ax.set_ylabel(_("mean P({positive}) over {n} subjects").format(positive=positive, n=summary.n_subjects))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xticks([100 * s for s in summary.curves[next(iter(summary.curves))]["share"]])
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    legend_below(ax, owned, ncol=2)
    return ax


def plot_region_drops(summary, *, ax=None):
    """How much mean P(positive) falls when each region (and everything outside the brain) is
    replaced by the controls' mean input, with 95% intervals; horizontal bars, largest on top."""
    entries = []
    if summary is not None and summary.computed:
        outside = summary.estimate("cf_drop_outside_brain")
        candidates = [(_("outside the brain"), outside), *((r.replace("_", " "), e) for r, e in summary.region_drops().items())]
        entries = sorted(((n, e) for n, e in candidates if e is not None and e.computable), key=lambda item: item[1].value)
    ax = axes_to_draw(ax, (6.0, 1.9 + 0.34 * max(len(entries), 2)))
    positive = getattr(summary, "positive_class", "AD")
    title = _('What changes the score: drop in P({positive}) when a region is replaced').format(positive=positive)
    if not entries:
        reason = getattr(summary, "reason", None) or "the counterfactual tests did not run"
        return message_axes(ax, _('No region drops: {reason}.').format(reason=reason), title=title)
    y = list(range(len(entries)))
    values = [e.value for _, e in entries]
    errors = [[max(0.0, e.value - (e.lower if e.lower is not None else e.value)) for _, e in entries],
              [max(0.0, (e.upper if e.upper is not None else e.value) - e.value) for _, e in entries]]
    colors = [AD_COLOR if name == _("outside the brain") else MODEL_COLOR for name, _e in entries]
    ax.barh(y, values, xerr=errors, height=0.6, color=colors, alpha=0.8, capsize=3, ecolor="black", zorder=2)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(y, [name for name, _ in entries], fontsize=8)
    ax.set_xlabel(_("mean P({positive}) before minus after, with {level}% interval ({n} subjects)").format(
        level=CONFIDENCE_PERCENT, positive=positive, n=summary.n_subjects))
    ax.set_xlim(min(-0.05, min(e.lower or 0 for _, e in entries) - 0.02), max(0.3, max(e.upper or 0 for _, e in entries) + 0.05))
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return ax
