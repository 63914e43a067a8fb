"""What ``compute_metrics`` returns: every figure an :class:`Estimate` (a value with its interval,
or the reason it has none), grouped per set of subjects, with the curves the figures draw."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from ..meta import CONFIDENCE  # every interval is two-sided at this level
from ..scalars import finite_float, scalar_text

# Probabilities are clipped to [LOG_LOSS_CLIP, 1 - LOG_LOSS_CLIP] before taking logs (log loss,
# calibration fit), so a confident score of exactly 0 or 1 costs a large but finite penalty.
LOG_LOSS_CLIP = 1e-7


@dataclass(frozen=True)
class Estimate:
    """One figure with its 95% interval, or the reason it cannot be computed.

    ``value`` is None exactly when the figure is not computable, and ``reason`` then says why
    (``reason`` is None otherwise). ``lower``/``upper`` are the interval bounds, None when the
    figure has no interval; ``method`` names how they were obtained (``"wilson"``,
    ``"bootstrap"``, ``"delong"``; with several scans per participant ``"cluster bootstrap"``
    and ``"obuchowski"``); ``se`` is a standard error where the method gives one.
    All numbers are finite Python floats.
    """

    value: float | None
    lower: float | None = None
    upper: float | None = None
    method: str | None = None
    se: float | None = None
    reason: str | None = None

    def __post_init__(self):
        if (self.value is None) == (self.reason is None):
            raise ValueError("an Estimate has either a value or a reason why it has none")
        for name in ("value", "lower", "upper", "se"):
            number = getattr(self, name)
            if number is not None:
                if not math.isfinite(number):
                    raise ValueError(f"Estimate.{name} must be finite, got {number}")
                object.__setattr__(self, name, float(number))  # plain floats serialise everywhere

    @classmethod
    def missing(cls, reason: str) -> Estimate:
        """A figure that cannot be computed, and why."""
        return cls(value=None, reason=reason)

    @classmethod
    def from_dict(cls, data) -> Estimate | None:
        """An Estimate from its JSON (:meth:`to_dict`), None when absent. A figure without a value
        is not computable, with its reason ("no value" when none was written)."""
        if not isinstance(data, dict):
            return None

        value = finite_float(data.get("value"))
        reason = None if value is not None else (scalar_text(data.get("reason")) or "no value")
        return cls(value=value, lower=finite_float(data.get("lower")), upper=finite_float(data.get("upper")),
                   method=scalar_text(data.get("method")), se=finite_float(data.get("se")), reason=reason)

    @property
    def computable(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict:
        """All fields, None for absent ones (JSON null)."""
        return {
            "value": self.value, "lower": self.lower, "upper": self.upper,
            "method": self.method, "se": self.se, "reason": self.reason,
        }

    def flat(self, name: str) -> dict[str, float]:
        """``{name, name_ci_lower, name_ci_upper, name_se}``, only the parts that exist."""
        if not self.computable:
            return {}
        parts = {
            name: self.value, f"{name}_ci_lower": self.lower, f"{name}_ci_upper": self.upper, f"{name}_se": self.se,
        }
        return {key: number for key, number in parts.items() if number is not None}


@dataclass(frozen=True)
class ConfusionMatrix:
    """Subject counts at the threshold (positive = AD)."""

    tn: int
    fp: int
    fn: int
    tp: int

    def to_dict(self) -> dict[str, int]:
        return {"tn": self.tn, "fp": self.fp, "fn": self.fn, "tp": self.tp}


@dataclass(frozen=True)
class GroupMetrics:
    """All figures for one set of subjects (the whole cohort, or one subgroup).

    ``estimates`` maps each figure's name (the DESIGN run-metric names) to its ``Estimate``:

    - ``roc_auc``: probability that a random AD subject scores higher than a random CN subject
      (ties count half); interval by stratified bootstrap. ``roc_auc_delong``: the same AUC
      with DeLong's asymptotic interval and standard error.
    - At the threshold: ``accuracy`` (share of subjects classified correctly),
      ``sensitivity`` (share of AD called AD), ``specificity`` (share of CN called CN),
      ``ppv`` (share of those called AD who have AD), ``npv`` (share of those called CN who
      are CN), all with Wilson intervals; ``balanced_accuracy`` (mean of sensitivity and
      specificity) and ``f1`` (harmonic mean of PPV and sensitivity, 2TP / (2TP + FP + FN),
      0 when nobody is called AD), with bootstrap intervals.
    - Calibration: ``brier_score`` (mean squared difference between score and outcome; 0 is
      perfect, 0.25 is a constant 0.5), ``log_loss`` (mean negative log-likelihood, scores
      clipped to [1e-7, 1 - 1e-7]), ``expected_calibration_error`` (mean absolute gap between
      the observed AD fraction and the mean score over 10 equal-width score bins, weighted by
      bin size), ``calibration_slope`` and ``calibration_intercept`` (the unpenalised logistic
      regression ``logit P(AD) = intercept + slope * logit(score)``: slope 1 and intercept 0
      when calibrated; slope < 1 means overconfident scores, too extreme; > 1 underconfident).
    """

    n_subjects: int  # scans
    n_positive: int
    n_negative: int
    confusion: ConfusionMatrix
    estimates: dict[str, Estimate]
    n_participants: int | None = None  # the clusters the intervals resample; None: one per scan

    def __getitem__(self, name: str) -> Estimate:
        return self.estimates[name]

    def to_flat_metrics(self) -> dict[str, float | int]:
        """Counts and every computable figure with its interval bounds, nothing else."""
        flat: dict[str, float | int] = {
            "n_subjects": self.n_subjects, "n_participants": self.participants, "n_positive": self.n_positive,
            "n_negative": self.n_negative, **self.confusion.to_dict(),
        }
        for name, estimate in self.estimates.items():
            flat.update(estimate.flat(name))
        return flat

    @property
    def participants(self) -> int:
        """How many participants the scans come from (each scan its own when not told)."""
        return self.n_subjects if self.n_participants is None else self.n_participants

    def not_computable(self) -> list[tuple[str, str]]:
        """(name, reason) of every figure that could not be computed."""
        return [(name, e.reason) for name, e in self.estimates.items() if not e.computable]

    def to_dict(self) -> dict:
        return {
            "n_subjects": self.n_subjects, "n_participants": self.participants,
            "n_positive": self.n_positive, "n_negative": self.n_negative,
            "confusion": self.confusion.to_dict(),
            "estimates": {name: estimate.to_dict() for name, estimate in self.estimates.items()},
        }


@dataclass(frozen=True)
class RocCurve:
    """``sklearn.metrics.roc_curve`` points: ``thresholds[0]`` is +inf (nobody called AD)."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray

    def to_dict(self) -> dict:
        # JSON has no infinity: the +inf first threshold is written as null.
        thresholds = [float(t) if np.isfinite(t) else None for t in self.thresholds]
        return {"fpr": self.fpr.tolist(), "tpr": self.tpr.tolist(), "thresholds": thresholds}


@dataclass(frozen=True)
class ReliabilityCurve:
    """Observed AD fraction against mean score in 10 equal-width score bins; non-empty bins only.

    Bins are (lower, upper], the first also holds 0, as in
    ``sklearn.calibration.calibration_curve(n_bins=10, strategy="uniform")``, whose
    ``prob_pred``/``prob_true`` equal ``mean_predicted``/``observed_fraction``.
    """

    bin_lower: np.ndarray
    bin_upper: np.ndarray
    mean_predicted: np.ndarray
    observed_fraction: np.ndarray
    count: np.ndarray

    def to_dict(self) -> dict:
        return _arrays_as_lists(self)


def _arrays_as_lists(curve) -> dict:
    """A curve of finite numpy arrays as JSON-ready lists, one per field."""
    return {f.name: getattr(curve, f.name).tolist() for f in fields(curve)}


@dataclass(frozen=True)
class DecisionCurve:
    """Net benefit per threshold probability pt (0.01 ... 0.99).

    Net benefit = TP/n - FP/n * pt / (1 - pt): true positives found per subject, less the false
    positives weighted by the odds at which a clinician would accept one for finding one AD.
    The model calls AD iff score >= pt; treat-all calls everyone AD, treat-none nobody (0).
    """

    thresholds: np.ndarray
    net_benefit_model: np.ndarray
    net_benefit_treat_all: np.ndarray
    net_benefit_treat_none: np.ndarray

    def to_dict(self) -> dict:
        return _arrays_as_lists(self)


@dataclass(frozen=True)
class Curves:
    """The whole cohort's curves. ``roc`` is None exactly when ``roc_auc`` is not computable
    (its reason says why); the reliability and decision curves always exist."""

    roc: RocCurve | None
    reliability: ReliabilityCurve
    decision: DecisionCurve

    def to_dict(self) -> dict:
        return {
            "roc": None if self.roc is None else self.roc.to_dict(),
            "reliability": self.reliability.to_dict(), "decision": self.decision.to_dict(),
        }


@dataclass(frozen=True)
class ThresholdRationale:
    """The threshold used for every at-threshold figure and, for information, the Youden one.

    The Youden threshold maximises sensitivity + specificity - 1 on *this* data; its sensitivity
    and specificity are therefore optimistic and it is not used for any other figure.
    """

    threshold: float
    youden_threshold: Estimate
    youden_sensitivity: Estimate
    youden_specificity: Estimate
    note: str

    def estimates(self) -> dict[str, Estimate]:
        return {
            "youden_threshold": self.youden_threshold, "youden_sensitivity": self.youden_sensitivity,
            "youden_specificity": self.youden_specificity,
        }

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold, "note": self.note,
            **{name: estimate.to_dict() for name, estimate in self.estimates().items()},
        }


@dataclass(frozen=True)
class SubgroupResult:
    """The figures of the subjects whose ``covariate`` falls in ``group`` (a value, a band, or
    ``"missing"`` for subjects without a value, so nobody drops out silently)."""

    covariate: str
    group: str
    metrics: GroupMetrics

    def to_dict(self) -> dict:
        return {"covariate": self.covariate, "group": self.group, **self.metrics.to_dict()}


@dataclass(frozen=True)
class ClassificationReport:
    """Everything ``compute_metrics`` found; plain data for figures, report and tracking."""

    threshold: float
    class_names: tuple[str, str]  # (negative, positive)
    n_bootstrap: int
    seed: int
    overall: GroupMetrics
    threshold_rationale: ThresholdRationale
    curves: Curves
    subgroups: list[SubgroupResult]

    def to_flat_metrics(self) -> dict[str, float | int]:
        """Run metrics for MLflow: the whole cohort's computable figures (DESIGN names, plus
        ``<name>_ci_lower``/``_ci_upper``/``_se``, counts and the Youden figures). Subgroup
        figures are in ``to_json_dict()`` only."""
        flat = self.overall.to_flat_metrics()
        for name, estimate in self.threshold_rationale.estimates().items():
            flat.update(estimate.flat(name))
        return flat

    def not_computable(self) -> list[tuple[str, str]]:
        """(name, reason) of the whole-cohort figures missing from ``to_flat_metrics()``."""
        rationale = self.threshold_rationale.estimates().items()
        return self.overall.not_computable() + [(name, e.reason) for name, e in rationale if not e.computable]

    def to_json_dict(self) -> dict:
        """Everything as JSON-ready builtins (no NaN or infinity; absent numbers are null)."""
        return {
            "confidence": CONFIDENCE,
            "threshold": self.threshold,
            "class_names": list(self.class_names),
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
            "log_loss_clip": LOG_LOSS_CLIP,
            "overall": self.overall.to_dict(),
            "threshold_rationale": self.threshold_rationale.to_dict(),
            "curves": self.curves.to_dict(),
            "subgroups": [row.to_dict() for row in self.subgroups],
            "not_computable": [{"name": name, "reason": reason} for name, reason in self.not_computable()],
        }
