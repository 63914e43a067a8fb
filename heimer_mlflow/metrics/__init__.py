"""Clinical classification metrics of an AD-vs-CN model: numbers in, plain results out.

``compute_metrics(y_true, y_score, threshold=...)`` returns a ``ClassificationReport`` that the
figure, report and tracking code consume; nothing here plots or talks to MLflow.

Conventions:

- ``y_true`` is 1 for the positive class (AD) and 0 for the negative class (CN); ``y_score`` is
  the model's probability of the positive class; a subject is *called positive* iff
  ``score >= threshold``.
- Every interval is a two-sided 95% interval: Wilson score intervals for proportions, a
  stratified percentile bootstrap for AUC, F1 and balanced accuracy (all from the same
  resamples), DeLong for the AUC as well.
- Scans of one participant are not independent. Given ``clusters`` (the participant of each
  scan), when some participant has several scans, every interval resamples participants
  (a stratified cluster bootstrap: participants are drawn with all their scans) - the
  proportions too, since Wilson intervals assume independent scans - and the analytic AUC
  interval and the paired test use Obuchowski's (1997) clustered form of DeLong's variance.
  Point estimates stay per scan.
- A figure that cannot be computed (one class only, a zero denominator, too few subjects) is an
  ``Estimate`` with ``value=None`` and a ``reason``, never a NaN. The flat metrics for MLflow
  hold only computable figures; ``not_computable()`` lists the others with their reasons.

The package: :mod:`.results` (what is returned), :mod:`.classification` (``compute_metrics``) and
:mod:`.intervals` (the statistics no kept library does).
"""

from .classification import (
    AGE_BAND_EDGES, AGE_BAND_LABELS, DECISION_THRESHOLDS, MAX_NUMERIC_CATEGORIES, MIN_SUBJECTS_CALIBRATION_FIT,
    N_CALIBRATION_BINS, compute_metrics, decision_curve, reliability_curve, subgroup_masks,
)
from .intervals import (
    MIN_PER_CLASS_AUC, cluster_codes, delong_auc, holm, mean_estimates, paired_delong, paired_delta_auc,
    paired_signed_rank, stratified_bootstrap_weights, wilson_interval,
)
from .results import (
    CONFIDENCE, LOG_LOSS_CLIP, ClassificationReport, ConfusionMatrix, Curves, DecisionCurve, Estimate, GroupMetrics,
    ReliabilityCurve, RocCurve, SubgroupResult, ThresholdRationale,
)

__all__ = [
    "AGE_BAND_EDGES", "AGE_BAND_LABELS", "CONFIDENCE", "ClassificationReport", "ConfusionMatrix", "Curves",
    "DECISION_THRESHOLDS", "DecisionCurve", "Estimate", "GroupMetrics", "LOG_LOSS_CLIP", "MAX_NUMERIC_CATEGORIES",
    "MIN_PER_CLASS_AUC", "MIN_SUBJECTS_CALIBRATION_FIT", "N_CALIBRATION_BINS", "ReliabilityCurve", "RocCurve",
    "SubgroupResult", "ThresholdRationale", "cluster_codes", "compute_metrics", "decision_curve", "delong_auc",
    "holm", "mean_estimates", "paired_delong", "paired_delta_auc", "paired_signed_rank", "reliability_curve",
    "stratified_bootstrap_weights", "subgroup_masks", "wilson_interval",
]
