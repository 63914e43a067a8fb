"""Training curves from the model's source run: loss and accuracy per epoch, training against
validation."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from ..i18n import N_, _
from .style import BRAIN_FIGURE_WIDTH_IN, TRAIN_COLOR, VAL_COLOR, new_figure, message_axes

KIND_TITLES = {"loss": N_("Loss"), "accuracy": N_("Accuracy")}


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
    fig = fig if fig is not None else new_figure((BRAIN_FIGURE_WIDTH_IN, 3.0))
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
        message_axes(fig.add_subplot(), _("No training history available:\nthe model's source run logged no "
                 "training or validation loss/accuracy."), title=_("Training curves"))
        return fig
    axes = fig.subplots(1, 2)
    for ax, (kind, curves) in zip(axes, panels.items()):
        if not curves:
            message_axes(ax, _("no loss history logged") if kind == "loss" else _("no accuracy history logged"),
                     title=_(KIND_TITLES[kind]))
            continue
        for name, (x, y) in curves.items():
            validation = name.lower().startswith(("val", "valid")) or "val" in name.lower().split("_")
            ax.plot(x, y, color=VAL_COLOR if validation else TRAIN_COLOR, linestyle="--" if validation else "-",
                    marker="o" if len(x) <= 30 else None, markersize=3,
                    label=(_("validation") if validation else _("training")) if name.lower().startswith(("train", "val"))
                    else name)
        ax.set_xlabel(_("epoch (logged step)") if stepped else _("epoch"))
        ax.set_ylabel(_("cross-entropy loss") if kind == "loss" else _("accuracy (share correct)"))
        if kind == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        ax.set_title(_("{kind}: training vs validation").format(kind=_(KIND_TITLES[kind])))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig
