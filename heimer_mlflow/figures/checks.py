"""The plausibility checks behind the verdict, per subject: the primary map's share outside the
brain, its gain per atlas region, and the model-randomisation sanity check."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..i18n import _, line_spacing
from ..meta import DEFAULT_CLASS_NAMES
from .style import AD_COLOR, CN_COLOR, MODEL_COLOR, NEUTRAL_COLOR, axes_to_draw, legend_below, message_axes, cam_name


# --------------------------------------------------------------------------------------------
# CAM share per atlas region, outside the brain
# --------------------------------------------------------------------------------------------


def plot_region_gain(region_names: Sequence[str], gains, *, labels=None, class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
                     method: str = "gradcam", ax=None):
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
    ax = axes_to_draw(ax, (6.0, 2.1 + 0.32 * max(len(names), 2)))
    if not names or gains.size == 0:
        return message_axes(ax, _('No atlas regions: the {cam} share per region needs an atlas (--atlas).').format(cam=cam),
                        title=_('{cam} per region').format(cam=cam))
    negative, positive = class_names
    y = np.arange(len(names))[::-1]  # the first region on top
    means = np.nanmean(gains, axis=0)
    ax.barh(y, means, height=0.6, color="#DDDDDD", edgecolor="#555555", label=_("mean over subjects"), zorder=1)
    jitter = (np.random.default_rng(0).random(gains.shape[0]) - 0.5) * 0.35
    if labels is None:
        ax.scatter(gains.ravel(), (y[None, :] + jitter[:, None]).ravel(), s=8, color="black", alpha=0.6, zorder=3,
                   label=_("subjects"))
    else:
        labels = np.asarray(labels).astype(int)
        for value, name, color, marker in ((0, negative, CN_COLOR, "o"), (1, positive, AD_COLOR, "^")):
            rows = labels == value
            if rows.any():
                ax.scatter(gains[rows].ravel(), (y[None, :] + jitter[rows, None]).ravel(), s=10, color=color,
                           marker=marker, alpha=0.7, zorder=3, label=_("{name} subjects").format(
                               name=name))
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label=_("1 = spread evenly over the brain"))
    ax.set_yticks(y, [name.replace("_", " ") for name in names], fontsize=8)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel(_('{cam} share / brain volume share').format(cam=cam))
    ax.set_xlim(left=0)
    ax.set_title(_('Where the model looks: {cam} per atlas region').format(cam=cam), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    legend_below(ax, owned)
    return ax


def plot_outside_brain(fractions, *, labels=None, class_names: Sequence[str] = DEFAULT_CLASS_NAMES, method: str = "gradcam",
                       ax=None):
    """Share of each subject's CAM (``method``, the primary map) outside the brain mask (skull,
    background) per true class.

    ``fractions``: per subject, in [0, 1]; ``labels``: 1 (AD) / 0 (CN) per subject, or None.
    Near 0 is what an anatomically plausible model shows; a large share suggests a shortcut.
    """
    cam = cam_name(method)
    ax = axes_to_draw(ax, (4.6, 3.6))
    values = np.asarray(fractions, dtype=float)
    if values.size == 0 or not np.any(np.isfinite(values)):
        return message_axes(ax, _('No {cam} shares to show.').format(
            cam=cam), title=_('{cam} outside the brain').format(cam=cam))
    negative, positive = class_names
    edges = np.linspace(0.0, 1.0, 21)
    groups = [(None, _("all subjects"), NEUTRAL_COLOR, "")] if labels is None else [
        (0, negative, CN_COLOR, "//"), (1, positive, AD_COLOR, "\\\\")]
    labels = None if labels is None else np.asarray(labels).astype(int)
    for value, name, color, hatch in groups:
        chosen = values if value is None else values[labels == value]
        chosen = chosen[np.isfinite(chosen)]
        ax.hist(chosen, bins=edges, color=color, alpha=0.45, hatch=hatch, edgecolor=color,
                label=_("{name} (n={n}, median {median:.2f})").format(
                    name=name, n=len(chosen), median=np.median(chosen) if len(chosen) else float("nan")))
    ax.set_xlim(0, 1)
    ax.set_xlabel(_('share of {cam} outside the brain mask (0 = all inside)').format(cam=cam))
    ax.set_ylabel(_("subjects"))
    ax.set_title(_('{cam} outside the brain (skull, background)').format(cam=cam), fontsize=10)
    ax.legend(fontsize=8)
    return ax


# --------------------------------------------------------------------------------------------
# Model-randomisation sanity check
# --------------------------------------------------------------------------------------------


def plot_sanity(spearman, *, subject_ids: Sequence[str] | None = None, mean: float | None = None,
                method: str = "gradcam", ax=None):
    """Rank correlation of each subject's CAM (``method``, the primary map) with the trained vs
    randomised-weights model."""
    cam = cam_name(method)
    ax = axes_to_draw(ax, (5.6, 3.8))
    values = np.asarray(spearman, dtype=float)
    if values.size == 0:
        return message_axes(ax, _("Sanity check not run: no subjects."), title=_('{cam} sanity check').format(cam=cam))
    ids = list(subject_ids) if subject_ids is not None else [str(i + 1) for i in range(len(values))]
    mean = float(np.nanmean(values)) if mean is None and np.any(np.isfinite(values)) else mean
    x = np.arange(len(values))
    ax.bar(x, np.nan_to_num(values), color=MODEL_COLOR, width=0.6)
    has_mean = mean is not None and math.isfinite(mean)
    if has_mean:
        ax.axhline(mean, color="black", linestyle="--", label=_("mean {mean:.2f}").format(mean=mean))
        ax.legend(fontsize=8, loc="lower right")
    ax.axhline(0.0, color=NEUTRAL_COLOR, linewidth=0.8)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xticks(x, ids, rotation=45 if len(ids) > 4 else 0, ha="right" if len(ids) > 4 else "center", fontsize=8)
    # The reading guide goes in the x label, so the layout engine keeps room for it.
    ax.set_xlabel(_("subject\n\nGood: correlation near 0 (the maps depend on what the model learned).\n"
                  "Near 1: the maps would look the same from an untrained model (not explanations)."), fontsize=8,
                  linespacing=line_spacing())
    ax.set_ylabel(_("Spearman rank correlation"))
    summary = "\n" + _("mean rank correlation {mean:.2f} over {n} subjects (bars)").format(
        mean=mean, n=len(values)) if has_mean else ""
    ax.set_title(_("Sanity check: trained vs randomised-weights {cam}{summary}").format(cam=cam, summary=summary),
                 fontsize=10, linespacing=line_spacing())
    return ax
