"""Every figure of an evaluation, drawn from numbers computed elsewhere (scikit-learn Display style).

Each ``plot_<name>(...)`` takes plain numbers and arrays (and, where convenient, the
``ClassificationReport`` / ``EngineResult`` parts that hold them) plus an optional matplotlib
``Axes`` (``ax=``) or ``Figure`` (``fig=``) to draw into, and returns that Axes or Figure. Nothing
here computes a metric or a map, and nothing talks to MLflow. ``render_all`` draws every figure
that the available inputs allow and saves each as ``OUT_DIR/<name>.png``.

Modules: ``performance`` (ROC, score histogram, confusion matrix, calibration, decision curve,
subgroups), ``training`` (training curves), ``slices`` (orientation, orthogonal slices, brain
views), ``brain_maps`` (CAM overlays and gallery, group maps, champion comparison, feature maps,
raw input difference), ``checks`` (outside-brain share, region gain, sanity check), ``plan``
(which figures an evaluation gets, drawn and saved); ``style`` holds what they share.

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

from .brain_maps import (
    plot_cam_gallery, plot_cam_overlay, plot_champion_comparison, plot_channel_difference_maps, plot_feature_maps,
    plot_group_cam, plot_input_difference,
)
from .checks import plot_outside_brain, plot_region_gain, plot_sanity
from .performance import (
    performance_plan, plot_calibration, plot_confusion_matrix, plot_decision_curve, plot_performance_from_report,
    plot_roc, plot_score_histogram, plot_subgroups, plot_subgroups_from_report,
)
from .plan import figure_plan, render_all, render_evaluation
from .slices import VIEWS, Layer, SliceView, draw_views, feature_affine, ortho_slices, reorient_to_ras
from .style import BRAIN_FIGURE_WIDTH_IN, DPI, MAX_FIGURE_HEIGHT_IN, MIN_PRINTED_FONT_PT, cam_name, save_figure
from .training import plot_training_curves

__all__ = [
    "BRAIN_FIGURE_WIDTH_IN", "DPI", "Layer", "MAX_FIGURE_HEIGHT_IN", "MIN_PRINTED_FONT_PT", "SliceView", "VIEWS", "cam_name",
    "draw_views", "feature_affine", "figure_plan", "ortho_slices", "performance_plan", "plot_calibration",
    "plot_cam_gallery", "plot_cam_overlay", "plot_champion_comparison", "plot_channel_difference_maps",
    "plot_confusion_matrix", "plot_decision_curve", "plot_feature_maps", "plot_group_cam", "plot_input_difference",
    "plot_outside_brain", "plot_performance_from_report", "plot_region_gain", "plot_roc", "plot_sanity",
    "plot_score_histogram", "plot_subgroups", "plot_subgroups_from_report", "plot_training_curves",
    "render_all", "render_evaluation", "reorient_to_ras", "save_figure",
]
