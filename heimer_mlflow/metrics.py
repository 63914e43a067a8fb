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
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_curve

from .errors import HeimerError

CONFIDENCE = 0.95
_Z = float(norm.ppf(0.5 + CONFIDENCE / 2))  # 1.95996...
DEFAULT_CLASS_NAMES = ("CN", "AD")  # (negative, positive), the order of the model's outputs

# Probabilities are clipped to [LOG_LOSS_CLIP, 1 - LOG_LOSS_CLIP] before taking logs (log loss,
# calibration fit), so a confident score of exactly 0 or 1 costs a large but finite penalty.
LOG_LOSS_CLIP = 1e-7
N_CALIBRATION_BINS = 10
MIN_PER_CLASS_AUC = 2  # the DeLong variance, and any spread of the bootstrap, needs two per class
MIN_SUBJECTS_CALIBRATION_FIT = 10
DECISION_THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)  # 0.01 ... 0.99
AGE_BAND_EDGES = (65, 75, 85)
AGE_BAND_LABELS = ("<65", "65-74", "75-84", ">=85")
MAX_NUMERIC_CATEGORIES = 10  # a numeric covariate with more distinct values is split into tertiles
_BOOTSTRAP_CHUNK = 250  # resamples held in memory at once; fixed, so results never depend on cohort size


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------


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

        def number(value) -> float | None:  # JSON has no NaN; booleans are not numbers
            plain = isinstance(value, (int, float)) and not isinstance(value, bool)
            return float(value) if plain and math.isfinite(value) else None

        def text(value) -> str | None:  # a scalar as text, None for anything else
            plain = isinstance(value, (str, int, float)) and not isinstance(value, bool)
            return str(value) if plain else None

        value = number(data.get("value"))
        reason = None if value is not None else (text(data.get("reason")) or "no value")
        return cls(value=value, lower=number(data.get("lower")), upper=number(data.get("upper")),
                   method=text(data.get("method")), se=number(data.get("se")), reason=reason)

    @property
    def computable(self) -> bool:
        return self.value is not None

    def to_dict(self) -> dict:
        """All fields, None for absent ones (JSON null)."""
        return {
            "value": self.value, "lower": self.lower, "upper": self.upper,
            "method": self.method, "se": self.se, "reason": self.reason,
        }  # fmt: skip

    def flat(self, name: str) -> dict[str, float]:
        """``{name, name_ci_lower, name_ci_upper, name_se}``, only the parts that exist."""
        if not self.computable:
            return {}
        parts = {
            name: self.value, f"{name}_ci_lower": self.lower, f"{name}_ci_upper": self.upper, f"{name}_se": self.se,
        }  # fmt: skip
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
        }  # fmt: skip
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
        }  # fmt: skip


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
        }  # fmt: skip


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
        }  # fmt: skip

    def to_dict(self) -> dict:
        return {
            "threshold": self.threshold, "note": self.note,
            **{name: estimate.to_dict() for name, estimate in self.estimates().items()},
        }  # fmt: skip


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


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def compute_metrics(
    y_true,
    y_score,
    *,
    threshold: float = 0.5,
    covariates: pd.DataFrame | None = None,
    n_bootstrap: int = 2000,
    seed: int = 0,
    class_names: tuple[str, str] = DEFAULT_CLASS_NAMES,
    clusters=None,
) -> ClassificationReport:
    """All clinical figures of one model on one cohort.

    ``y_true``: 0 (``class_names[0]``, CN) or 1 (``class_names[1]``, AD) per subject;
    ``y_score``: the probability of class 1, in [0, 1]; ``threshold``: a subject is called AD
    iff its score >= threshold. ``covariates``: one row per subject, in the same order (the
    index is ignored); each column gives subgroups (see ``subgroup_masks``). Bootstrap intervals
    use ``n_bootstrap`` stratified resamples drawn from ``seed``; the same seed gives the same
    intervals. ``clusters``: the participant of each scan (any ids, same order); when a
    participant has several scans, intervals resample participants (see the module notes).
    Raises ``HeimerError`` on invalid input.
    """
    y, score = _validated(y_true, y_score, class_names)
    codes = cluster_codes(clusters, y, class_names)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold <= 1:
        raise HeimerError(f"threshold must be a number in [0, 1]; got {threshold!r}")
    n_bootstrap = _validated_n_bootstrap(n_bootstrap)
    if covariates is not None and not (isinstance(covariates, pd.DataFrame) and len(covariates) == len(y)):
        found = f"{len(covariates)} rows" if isinstance(covariates, pd.DataFrame) else type(covariates).__name__
        raise HeimerError(f"covariates must be a DataFrame with one row per subject ({len(y)}); got {found}")
    threshold = float(threshold)

    overall = _group_metrics(y, score, threshold, n_bootstrap, seed, class_names, codes)
    subgroups = []
    if covariates is not None:
        # Each subgroup resamples from the same seed, so its intervals do not depend on which
        # other covariates or groups happen to be present.
        for covariate, group, mask in subgroup_masks(covariates):
            metrics = _group_metrics(y[mask], score[mask], threshold, n_bootstrap, seed, class_names,
                                     None if codes is None else codes[mask])
            subgroups.append(SubgroupResult(covariate, group, metrics))
    roc = RocCurve(*roc_curve(y, score)) if overall["roc_auc"].computable else None
    return ClassificationReport(
        threshold=threshold,
        class_names=tuple(class_names),
        n_bootstrap=n_bootstrap,
        seed=seed,
        overall=overall,
        threshold_rationale=_threshold_rationale(y, score, threshold, overall["roc_auc"], class_names),
        curves=Curves(roc=roc, reliability=reliability_curve(y, score), decision=decision_curve(y, score)),
        subgroups=subgroups,
    )


def paired_delta_auc(
    y_true, score_a, score_b, n_bootstrap: int = 2000, seed: int = 0, *, class_names=DEFAULT_CLASS_NAMES,
    clusters=None,
) -> Estimate:
    """AUC(model A) - AUC(model B) on the same subjects, positive when A separates better.

    The interval is a paired, stratified percentile bootstrap: both models are scored on the
    very same resamples, so the subject-to-subject variation common to both cancels out.
    ``se`` is the standard deviation of the resampled differences. With ``clusters`` (the
    participant of each scan) participants are resampled, not scans.
    """
    y, a = _validated(y_true, score_a, class_names, score_name="score_a")
    _, b = _validated(y_true, score_b, class_names, score_name="score_b")
    n_bootstrap = _validated_n_bootstrap(n_bootstrap)
    codes = cluster_codes(clusters, y, class_names)
    reason = _class_count_reason(y, MIN_PER_CLASS_AUC, "the AUC", class_names)
    if reason:
        return Estimate.missing(reason)
    auc_a, auc_b = _ResampledAuc(y, a), _ResampledAuc(y, b)
    point = auc_a.point() - auc_b.point()
    weights = stratified_bootstrap_weights(y, n_bootstrap, seed, clusters=codes)
    deltas = np.concatenate([auc_a(w) - auc_b(w) for w in weights])
    lower, upper = _percentile_interval(deltas)
    se = float(deltas.std(ddof=1)) if len(deltas) > 1 else None
    return Estimate(point, lower, upper, method=_bootstrap_method(codes), se=se)


def wilson_interval(successes: int, total: int) -> tuple[float, float]:
    """95% Wilson score interval of the proportion successes / total (total >= 1).

    Unlike the normal approximation it stays inside [0, 1] and is sensible for proportions
    near 0 or 1 and small totals, which is where clinical subgroups live.
    """
    p = successes / total
    z2 = _Z * _Z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = _Z / (1 + z2 / total) * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def delong_auc(y_true, y_score, *, class_names=DEFAULT_CLASS_NAMES, clusters=None) -> Estimate:
    """The AUC with DeLong's standard error and 95% interval (clipped to [0, 1]).

    DeLong et al. (1988), computed from midranks (Sun & Xu 2014): each AD subject's share of CN
    subjects it outscores, and each CN subject's share of AD subjects that outscore it; the
    AUC's variance is the sum of these components' variances over their class sizes. The
    standard error is 0 when the classes are perfectly separated. With ``clusters`` (the
    participant of each scan) and some participant scanned more than once, the variance is
    Obuchowski's (1997): the components summed per participant, participants independent.
    """
    y, score = _validated(y_true, y_score, class_names)
    codes = cluster_codes(clusters, y, class_names)
    reason = _class_count_reason(y, MIN_PER_CLASS_AUC, "the AUC", class_names)
    if reason:
        return Estimate.missing(reason)
    outscored_by_positive, outscoring_negative = _delong_components(y, score)
    auc = float(outscored_by_positive.mean())
    if codes is not None:
        se = math.sqrt(_clustered_variance(y, codes, outscored_by_positive, outscoring_negative))
        method = "obuchowski"
    else:
        se = math.sqrt(outscored_by_positive.var(ddof=1) / len(outscored_by_positive)
                       + outscoring_negative.var(ddof=1) / len(outscoring_negative))  # fmt: skip
        method = "delong"
    return Estimate(auc, max(0.0, auc - _Z * se), min(1.0, auc + _Z * se), method=method, se=se)


def _clustered_variance(y: np.ndarray, codes: np.ndarray, positive_part: np.ndarray, negative_part: np.ndarray) -> float:
    """Obuchowski's (1997) variance of an AUC (or of a difference of two, given the paired
    components' differences) over independent participants: per participant, the sum of its
    scans' components less their expectation, squared, summed, times I / (I - 1), over the
    squared class sizes. A participant has one class, so the covariance term is zero."""
    clusters = int(codes.max()) + 1
    total = 0.0
    for part, members in ((positive_part, y == 1), (negative_part, y == 0)):
        centred = part - part.mean()
        per_cluster = np.bincount(codes[members], weights=centred, minlength=clusters)
        total += float((per_cluster**2).sum()) / members.sum() ** 2
    return total * clusters / (clusters - 1)


def _delong_components(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: per AD subject, the share of CN subjects it outscores;
    per CN subject, the share of AD subjects that outscore it (ties count half). Their means are
    the AUC."""
    positives, negatives = score[y == 1], score[y == 0]
    n_pos, n_neg = len(positives), len(negatives)
    ranks = rankdata(np.concatenate([positives, negatives]))
    # A subject's midrank among all minus its midrank within its class = how many of the other
    # class score below it, ties counted half.
    outscored_by_positive = (ranks[:n_pos] - rankdata(positives)) / n_neg
    outscoring_negative = 1 - (ranks[n_pos:] - rankdata(negatives)) / n_pos
    return outscored_by_positive, outscoring_negative


def paired_delong(y_true, score_a, score_b, *, class_names=DEFAULT_CLASS_NAMES,
                  clusters=None) -> tuple[Estimate, float | None]:
    """AUC(model A) - AUC(model B) on the same subjects, with DeLong's variance for correlated
    ROC curves (DeLong et al. 1988): the difference with its 95% interval and standard error,
    and the two-sided p-value of "the two AUCs are equal". Both models' components are taken
    on the same subjects, so their covariance enters the variance of the difference (a paired
    test: the same hard cases hurt both models and cancel out). ``(missing, None)`` with fewer
    than two subjects per class. With ``clusters`` and some participant scanned more than once,
    the variance is Obuchowski's clustered form (participants independent, not scans).
    """
    y, a = _validated(y_true, score_a, class_names, score_name="score_a")
    _, b = _validated(y_true, score_b, class_names, score_name="score_b")
    codes = cluster_codes(clusters, y, class_names)
    reason = _class_count_reason(y, MIN_PER_CLASS_AUC, "the AUC", class_names)
    if reason:
        return Estimate.missing(reason), None
    (pos_a, neg_a), (pos_b, neg_b) = _delong_components(y, a), _delong_components(y, b)
    difference = float(pos_a.mean() - pos_b.mean())
    if codes is not None:
        variance = _clustered_variance(y, codes, pos_a - pos_b, neg_a - neg_b)
    else:  # var(A - B) = var(A) + var(B) - 2 cov(A, B), per class, over the class sizes
        variance = sum(np.var(ca - cb, ddof=1) / len(ca) for ca, cb in ((pos_a, pos_b), (neg_a, neg_b)))
    se = math.sqrt(max(float(variance), 0.0))
    if se > 0:
        p_value = float(2 * norm.sf(abs(difference) / se))
    else:  # identical rankings of both classes' pairs: the difference is exact
        p_value = 1.0 if difference == 0 else 0.0
    method = "obuchowski" if codes is not None else "delong"
    return Estimate(difference, difference - _Z * se, difference + _Z * se, method=method, se=se), p_value


def stratified_bootstrap_weights(y_true, n_bootstrap: int, seed: int, *, clusters=None) -> Iterator[np.ndarray]:
    """The bootstrap resamples, as how often each subject is drawn, in chunks.

    Each resample draws, with replacement, as many AD subjects from the AD subjects and as many
    CN subjects from the CN subjects as the cohort has (stratified: class sizes, hence
    prevalence, stay fixed, so every resample has both classes and an AUC). Yields int64 arrays
    [resamples in chunk, subjects] whose rows sum to the number of subjects; the chunks together
    hold ``n_bootstrap`` rows and are the same for the same ``y_true``, ``n_bootstrap`` and
    ``seed``. With ``clusters`` (codes 0..I-1 from :func:`cluster_codes`, one class each) the
    participants are drawn, per class as many as it has, and each scan weighs as often as its
    participant was drawn (rows then sum to a varying number of scans).
    """
    y = np.asarray(y_true)
    rng = np.random.default_rng(seed)
    if clusters is None:
        units, of_scan = y, None
    else:  # one unit per participant, with its class; scans follow their participant
        of_scan = np.asarray(clusters)
        units = np.zeros(int(of_scan.max()) + 1, dtype=y.dtype)
        units[of_scan] = y
    classes = [members for members in (np.flatnonzero(units == 1), np.flatnonzero(units == 0)) if len(members)]
    for start in range(0, n_bootstrap, _BOOTSTRAP_CHUNK):
        size = min(_BOOTSTRAP_CHUNK, n_bootstrap - start)
        weights = np.zeros((size, len(units)), dtype=np.int64)
        rows = np.arange(size)[:, None]
        for members in classes:
            drawn = rng.integers(0, len(members), size=(size, len(members)))
            # Count the draws per (resample, subject) with one bincount over row-offset indices.
            counts = np.bincount((drawn + rows * len(members)).ravel(), minlength=size * len(members))
            weights[:, members] = counts.reshape(size, len(members))
        yield weights if of_scan is None else weights[:, of_scan]


def cluster_codes(clusters, y: np.ndarray, class_names=DEFAULT_CLASS_NAMES) -> np.ndarray | None:
    """The participant of each scan as codes 0..I-1, or None when there are none or every scan
    is its own participant (then scans are independent and nothing changes). A participant
    whose scans carry both classes is an error: the cluster bootstrap keeps class sizes per
    participant."""
    if clusters is None:
        return None
    ids = pd.Series(np.asarray(clusters, dtype=object)).astype(str)
    if len(ids) != len(y):
        raise HeimerError(f"clusters must name one participant per subject ({len(y)}); got {len(ids)}")
    codes, uniques = pd.factorize(ids, sort=False)
    if len(uniques) == len(ids):
        return None
    per_participant = pd.Series(y).groupby(codes).nunique()
    mixed = per_participant.index[per_participant.to_numpy() > 1]
    if len(mixed):
        raise HeimerError(f"participant {uniques[int(mixed[0])]} has scans of both {class_names[0]} and "
                          f"{class_names[1]}; a participant belongs to one class: fix its labels or drop sessions")
    return codes.astype(np.int64)


def _bootstrap_method(codes) -> str:
    return "bootstrap" if codes is None else "cluster bootstrap"


def reliability_curve(y_true, y_score) -> ReliabilityCurve:
    """Mean score and observed AD fraction per non-empty equal-width score bin (see ``ReliabilityCurve``)."""
    y, score = _validated(y_true, y_score, DEFAULT_CLASS_NAMES)
    edges, bins = _calibration_bins(score)
    count = np.bincount(bins, minlength=N_CALIBRATION_BINS)
    score_sum = np.bincount(bins, weights=score, minlength=N_CALIBRATION_BINS)
    positive_sum = np.bincount(bins, weights=y, minlength=N_CALIBRATION_BINS)
    used = count > 0
    return ReliabilityCurve(
        bin_lower=edges[:-1][used],
        bin_upper=edges[1:][used],
        mean_predicted=score_sum[used] / count[used],
        observed_fraction=positive_sum[used] / count[used],
        count=count[used],
    )


def decision_curve(y_true, y_score) -> DecisionCurve:
    """Net benefit of the model, treat-all and treat-none at thresholds 0.01 ... 0.99 (see ``DecisionCurve``)."""
    labels, score = _validated(y_true, y_score, DEFAULT_CLASS_NAMES)
    y, n, pt = labels == 1, len(labels), DECISION_THRESHOLDS
    odds = pt / (1 - pt)
    called = score[None, :] >= pt[:, None]
    true_positives, false_positives = (called & y).sum(axis=1), (called & ~y).sum(axis=1)
    prevalence = y.mean()
    return DecisionCurve(
        thresholds=pt.copy(),
        net_benefit_model=true_positives / n - false_positives / n * odds,
        net_benefit_treat_all=prevalence - (1 - prevalence) * odds,
        net_benefit_treat_none=np.zeros_like(pt),
    )


def subgroup_masks(covariates: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """(covariate, group, boolean mask over subjects) for every non-empty subgroup.

    - A numeric column named ``age`` (any case): bands <65, 65-74, 75-84, >=85 years
      (65-74 means 65 <= age < 75, so 74.5 is in it).
    - Another numeric column with more than 10 distinct values: tertiles, labelled by their
      cut points: ``<= q1``, ``(q1, q2]``, ``> q2``.
    - Any other column (text, categories, booleans, few numeric values): one group per value.
    - Subjects with no value form the group ``"missing"``.
    """
    masks = []
    for column in covariates.columns:
        values = covariates[column].reset_index(drop=True)
        present = values.notna().to_numpy()
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if numeric and str(column).strip().lower() == "age":
            band = np.digitize(values.to_numpy(dtype=np.float64), AGE_BAND_EDGES)
            groups = [(label, present & (band == i)) for i, label in enumerate(AGE_BAND_LABELS)]
        elif numeric and values.nunique() > MAX_NUMERIC_CATEGORIES:
            groups = _tertile_groups(values.to_numpy(dtype=np.float64), present)
        else:
            groups = [(str(value), (values == value).to_numpy()) for value in _category_order(values)]
        groups.append(("missing", ~present))
        masks += [(str(column), label, mask) for label, mask in groups if mask.any()]
    return masks


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------


def _validated(y_true, y_score, class_names, score_name="y_score") -> tuple[np.ndarray, np.ndarray]:
    """(labels as int64 0/1, scores as float64), or HeimerError naming the first bad value."""
    y, score = np.asarray(y_true), np.asarray(y_score)
    for name, values in (("y_true", y), (score_name, score)):
        if values.ndim != 1:
            raise HeimerError(f"{name} must hold one value per subject (1-D); got shape {values.shape}")
    if len(y) != len(score):
        raise HeimerError(f"y_true has {len(y)} subjects but {score_name} has {len(score)}; they must match")
    if len(y) == 0:
        raise HeimerError("no subjects to evaluate: y_true is empty")
    try:
        labels = y.astype(np.float64)
        bad_label = ~np.isin(labels, (0.0, 1.0))
    except (TypeError, ValueError):  # text labels such as "AD"
        bad_label = np.ones(len(y), dtype=bool)
    if bad_label.any():
        i = int(np.argmax(bad_label))
        raise HeimerError(
            f"y_true must be 0 ({class_names[0]}) or 1 ({class_names[1]}) for every subject; "
            f"position {i} has {y[i].item()!r}"
        )
    try:
        score = score.astype(np.float64)
    except (TypeError, ValueError):
        raise HeimerError(f"{score_name} must be numbers (probabilities of {class_names[1]})") from None
    bad_score = ~(np.isfinite(score) & (score >= 0) & (score <= 1))
    if bad_score.any():
        i = int(np.argmax(bad_score))
        raise HeimerError(
            f"{score_name} must be a probability in [0, 1] for every subject; position {i} has {score[i].item()!r}"
        )
    return labels.astype(np.int64), score


def _validated_n_bootstrap(n_bootstrap) -> int:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, numbers.Integral) or n_bootstrap < 1:
        raise HeimerError(f"n_bootstrap must be a positive whole number; got {n_bootstrap!r}")
    return int(n_bootstrap)


def _class_count_reason(y: np.ndarray, minimum: int, figure: str, class_names) -> str | None:
    """Why ``figure`` cannot be computed from these class sizes, or None if it can."""
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    negative, positive = class_names
    if n_pos == 0 or n_neg == 0:
        present = positive if n_pos else negative
        return f"only one class present ({present}); {figure} needs both {negative} and {positive} subjects"
    if min(n_pos, n_neg) < minimum:
        return f"too few subjects ({n_pos} {positive}, {n_neg} {negative}); {figure} needs at least {minimum} of each"
    return None


class _ResampledAuc:
    """The AUC of one score on bootstrap resamples given as subject weights, for many at once.

    The AUC is the Mann-Whitney statistic: over AD-CN pairs, the share where the AD subject
    scores higher, ties counted half. Subjects are grouped by distinct score level; per
    resample, the weighted counts of AD and CN subjects at each level and the cumulative CN
    count below it give the statistic in O(resamples x subjects), with no sorting per resample
    and exact integer arithmetic up to the final division.
    """

    def __init__(self, y: np.ndarray, score: np.ndarray):
        order = np.argsort(score, kind="stable")
        ordered = score[order]
        self.order = order
        self.level_starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        self.positive = (y[order] == 1)[None, :]

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        """AUC of each row of ``weights`` [resamples, subjects] (times each subject is drawn)."""
        w = weights[:, self.order]
        positive_w = w * self.positive
        positives = np.add.reduceat(positive_w, self.level_starts, axis=1)
        negatives = np.add.reduceat(w - positive_w, self.level_starts, axis=1)
        negatives_below = np.cumsum(negatives, axis=1) - negatives
        twice_u = (positives * (2 * negatives_below + negatives)).sum(axis=1)
        # AD-CN pairs in each resample (fixed by the stratification, unless participants with
        # several scans are drawn)
        pairs = positives.sum(axis=1) * negatives.sum(axis=1)
        return twice_u / (2.0 * pairs)

    def point(self) -> float:
        """The AUC of the cohort itself (every subject drawn once)."""
        return float(self(np.ones((1, len(self.order)), dtype=np.int64))[0])


def _percentile_interval(samples: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2
    lower, upper = np.quantile(samples, [tail, 1 - tail])
    return float(lower), float(upper)


def _proportion(successes: int, total: int, reason_if_empty: str) -> Estimate:
    if total == 0:
        return Estimate.missing(reason_if_empty)
    return Estimate(successes / total, *wilson_interval(successes, total), method="wilson")


def _group_metrics(y, score, threshold, n_bootstrap, seed, class_names, codes=None) -> GroupMetrics:
    negative, positive = class_names
    is_pos, called = y == 1, score >= threshold
    tp, fn = int((is_pos & called).sum()), int((is_pos & ~called).sum())
    fp, tn = int((~is_pos & called).sum()), int((~is_pos & ~called).sum())
    n_pos, n_neg, n = tp + fn, fp + tn, len(y)
    if codes is not None:  # a subgroup: its own participants, and maybe one scan each now
        codes = cluster_codes(pd.factorize(codes)[0], y, class_names)
    method = _bootstrap_method(codes)

    auc_reason = _class_count_reason(y, MIN_PER_CLASS_AUC, "the AUC", class_names)
    both_reason = _class_count_reason(y, 1, "balanced accuracy", class_names)
    resampled = _bootstrap(y, score, called, n_bootstrap, seed, with_auc=auc_reason is None, codes=codes)
    if auc_reason:
        roc_auc = Estimate.missing(auc_reason)
    else:
        roc_auc = Estimate(_ResampledAuc(y, score).point(), *_percentile_interval(resampled["auc"]), method=method)
    if both_reason:
        balanced = Estimate.missing(both_reason)
    else:
        value = (tp / n_pos + tn / n_neg) / 2
        balanced = Estimate(value, *_percentile_interval(resampled["balanced_accuracy"]), method=method)
    if n_pos == 0:
        f1 = Estimate.missing(f"no {positive} subjects; F1 needs at least one")
    else:
        f1 = Estimate(2 * tp / (2 * tp + fp + fn), *_percentile_interval(resampled["f1"]), method=method)

    def proportion(name, successes, total, reason_if_empty):
        if codes is None or total == 0:  # independent scans: Wilson
            return _proportion(successes, total, reason_if_empty)
        if name not in resampled:  # no resample had a denominator: the figure stands without interval
            return Estimate(successes / total)
        return Estimate(successes / total, *_percentile_interval(resampled[name]), method=method)

    at = f"at threshold {threshold:g}"
    estimates = {
        "roc_auc": roc_auc,
        "roc_auc_delong": delong_auc(y, score, class_names=class_names, clusters=codes),
        "accuracy": proportion("accuracy", tp + tn, n, "no subjects"),
        "balanced_accuracy": balanced,
        "sensitivity": proportion("sensitivity", tp, n_pos, f"no {positive} subjects; sensitivity needs at least one"),
        "specificity": proportion("specificity", tn, n_neg, f"no {negative} subjects; specificity needs at least one"),
        "ppv": proportion("ppv", tp, tp + fp, f"no subject called {positive} {at}; PPV needs at least one"),
        "npv": proportion("npv", tn, tn + fn, f"no subject called {negative} {at}; NPV needs at least one"),
        "f1": f1,
        **_calibration(y, score, class_names),
    }
    participants = None if codes is None else int(codes.max()) + 1
    return GroupMetrics(n, n_pos, n_neg, ConfusionMatrix(tn=tn, fp=fp, fn=fn, tp=tp), estimates, participants)


def _bootstrap(y, score, called, n_bootstrap, seed, *, with_auc, codes=None) -> dict[str, np.ndarray]:
    """Resampled AUC (if ``with_auc``), F1 and balanced accuracy, all from the same resamples;
    with participant ``codes`` (a cluster bootstrap) the proportions at the threshold too.

    Resamples keep the class sizes (in scans, or in participants when clustered), so a class
    present in the cohort is present in every resample; a figure whose class is absent, or
    whose denominator is zero in a resample, is left out.
    """
    is_pos = y == 1
    auc = _ResampledAuc(y, score) if with_auc else None
    samples: dict[str, list[np.ndarray]] = {name: [] for name in (
        "auc", "f1", "balanced_accuracy", "accuracy", "sensitivity", "specificity", "ppv", "npv")}
    for weights in stratified_bootstrap_weights(y, n_bootstrap, seed, clusters=codes):
        tp = weights[:, is_pos & called].sum(axis=1)
        fp = weights[:, ~is_pos & called].sum(axis=1)
        n_pos, n_neg = weights[:, is_pos].sum(axis=1), weights[:, ~is_pos].sum(axis=1)
        if auc is not None:
            samples["auc"].append(auc(weights))
        if n_pos.all():
            samples["f1"].append(2 * tp / (tp + fp + n_pos))  # 2TP + FP + FN, as FN = n_pos - TP
            if n_neg.all():
                samples["balanced_accuracy"].append((tp / n_pos + 1 - fp / n_neg) / 2)
        if codes is not None:
            tn, fn = n_neg - fp, n_pos - tp
            with np.errstate(invalid="ignore", divide="ignore"):
                for name, part, whole in (("accuracy", tp + tn, n_pos + n_neg), ("sensitivity", tp, n_pos),
                                          ("specificity", tn, n_neg), ("ppv", tp, tp + fp), ("npv", tn, tn + fn)):
                    ratio = part / whole
                    samples[name].append(ratio[np.isfinite(ratio)])
    return {name: np.concatenate(parts) for name, parts in samples.items() if parts and sum(map(len, parts))}


def _calibration_bins(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bin edges, bin index per subject); bins are (lower, upper], the first also holds 0."""
    edges = np.linspace(0.0, 1.0, N_CALIBRATION_BINS + 1)
    return edges, np.searchsorted(edges[1:-1], score)  # as sklearn's calibration_curve


def _calibration(y, score, class_names) -> dict[str, Estimate]:
    clipped = np.clip(score, LOG_LOSS_CLIP, 1 - LOG_LOSS_CLIP)
    _, bins = _calibration_bins(score)
    # Per bin, n_b/n * |observed fraction - mean score| = |sum(y) - sum(score)| / n.
    gaps = np.bincount(bins, weights=y - score, minlength=N_CALIBRATION_BINS)
    return {
        "brier_score": Estimate(float(np.mean((score - y) ** 2))),
        "log_loss": Estimate(float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))),
        "expected_calibration_error": Estimate(float(np.abs(gaps).sum() / len(y))),
        **_calibration_fit(y, logit(clipped), class_names),
    }


def _calibration_fit(y, log_odds, class_names, max_iterations=100) -> dict[str, Estimate]:
    """Slope and intercept of the unpenalised logistic regression of y on the score's log-odds.

    Fitted by Newton-Raphson (IRLS), which converges in a handful of steps when the maximum
    likelihood estimate exists; it does not when the scores separate the classes perfectly
    (the slope runs off to infinity), which is checked first.
    """
    reason = _class_count_reason(y, 1, "the calibration fit", class_names)
    if reason is None and len(y) < MIN_SUBJECTS_CALIBRATION_FIT:
        reason = f"too few subjects ({len(y)}); the calibration fit needs at least {MIN_SUBJECTS_CALIBRATION_FIT}"
    if reason is None:
        pos, neg = log_odds[y == 1], log_odds[y == 0]
        if log_odds.min() == log_odds.max():
            reason = "all scores are equal; the calibration slope is undefined"
        elif pos.min() >= neg.max() or pos.max() <= neg.min():
            reason = "the scores separate the classes perfectly; the calibration slope is infinite"
    if reason is None:
        design = np.column_stack([np.ones_like(log_odds), log_odds])
        beta = np.zeros(2)
        for _ in range(max_iterations):
            fitted = expit(design @ beta)
            gradient = design.T @ (y - fitted)
            hessian = (design * (fitted * (1 - fitted))[:, None]).T @ design
            step = np.linalg.solve(hessian, gradient)
            beta = beta + step
            if np.abs(step).max() < 1e-10:
                return {"calibration_slope": Estimate(beta[1]), "calibration_intercept": Estimate(beta[0])}
        reason = f"the calibration fit did not converge in {max_iterations} Newton steps"
    return {"calibration_slope": Estimate.missing(reason), "calibration_intercept": Estimate.missing(reason)}


def _threshold_rationale(y, score, threshold, roc_auc: Estimate, class_names) -> ThresholdRationale:
    note = (
        f"Subjects are called {class_names[1]} when their score is >= {threshold:g}; "
        "every figure at the threshold uses it. "
        "The Youden threshold (maximising sensitivity + specificity - 1) is chosen on this same data, so its "
        "sensitivity and specificity are optimistic; it is shown for information only."
    )
    if not roc_auc.computable:
        missing = Estimate.missing(f"no ROC curve: {roc_auc.reason}")
        return ThresholdRationale(threshold, missing, missing, missing, note)
    # Every operating point, so the maximum is found exactly; ties go to the highest threshold.
    fpr, tpr, thresholds = roc_curve(y, score, drop_intermediate=False)
    best = thresholds[1 + int(np.argmax((tpr - fpr)[1:]))]  # point 0 (threshold +inf) calls nobody AD
    called, is_pos = score >= best, y == 1
    # Counted afresh rather than read off the curve, where 1 - fpr may differ from TN/N in the last bit.
    sensitivity, specificity = (called & is_pos).sum() / is_pos.sum(), (~called & ~is_pos).sum() / (~is_pos).sum()
    return ThresholdRationale(threshold, Estimate(best), Estimate(sensitivity), Estimate(specificity), note)


def _tertile_groups(values: np.ndarray, present: np.ndarray) -> list[tuple[str, np.ndarray]]:
    q1, q2 = np.quantile(values[present], [1 / 3, 2 / 3])
    with np.errstate(invalid="ignore"):  # missing values compare False and land in no tertile
        return [
            (f"<= {q1:.4g}", present & (values <= q1)),
            (f"({q1:.4g}, {q2:.4g}]", present & (values > q1) & (values <= q2)),
            (f"> {q2:.4g}", present & (values > q2)),
        ]


def _category_order(values: pd.Series) -> list:
    """Distinct values: a categorical's own order, otherwise sorted (by text if types mix)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [c for c in values.cat.categories if (values == c).any()]
    distinct = list(values.dropna().unique())
    try:
        return sorted(distinct)
    except TypeError:
        return sorted(distinct, key=str)


# --------------------------------------------------------------------------------------------
# Means over subjects, and paired differences (the counterfactual tests)
# --------------------------------------------------------------------------------------------


def mean_estimates(values: np.ndarray, *, n_bootstrap: int, seed: int, clusters=None) -> list[Estimate]:
    """The mean of each column of ``values`` [subjects, k] with a percentile bootstrap 95% interval
    over subjects, the same resamples for every column (so differences of columns are consistent);
    with ``clusters`` (one participant per row) participants are resampled with all their scans.
    A column with a non-finite value is not computable."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or not len(values):
        return [Estimate.missing("no subjects") for _ in range(values.shape[-1] if values.ndim == 2 else 0)]
    strata = np.zeros(len(values), dtype=np.int64)  # one stratum: subjects are not split by class here
    codes = cluster_codes(clusters, strata)
    finite = np.isfinite(values).all(axis=0)
    safe = np.where(np.isfinite(values), values, 0.0)
    samples = np.concatenate([(w @ safe) / w.sum(axis=1, keepdims=True)
                              for w in stratified_bootstrap_weights(strata, _validated_n_bootstrap(n_bootstrap), seed,
                                                                    clusters=codes)])  # fmt: skip
    out = []
    for column in range(values.shape[1]):
        if not finite[column]:
            out.append(Estimate.missing("a subject's score was not finite"))
            continue
        lower, upper = _percentile_interval(samples[:, column])
        out.append(Estimate(float(values[:, column].mean()), lower, upper, method=_bootstrap_method(codes)))
    return out


def paired_signed_rank(a, b, *, clusters=None) -> tuple[Estimate, float | None]:
    """(mean of a - b with a t interval, two-sided Wilcoxon signed-rank p) over paired subjects;
    with ``clusters`` the pairs are first averaged per participant (one pair per person). Exact
    p-values for up to 50 pairs without ties, else the normal approximation (scipy's choice)."""
    from scipy.stats import t as student_t
    from scipy.stats import wilcoxon

    difference = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if clusters is not None:
        difference = pd.Series(difference).groupby(pd.Series(np.asarray(clusters, dtype=object)).astype(str).to_numpy(),
                                                   sort=False).mean().to_numpy()  # fmt: skip
    difference = difference[np.isfinite(difference)]
    n = len(difference)
    if n < 2:
        return Estimate.missing(f"{n} paired subject(s): a paired test needs at least 2"), None
    mean = float(difference.mean())
    se = float(difference.std(ddof=1) / math.sqrt(n))
    half = float(student_t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * se
    p_value = None
    if np.any(difference != 0):
        p_value = float(wilcoxon(difference, zero_method="wilcox", alternative="two-sided").pvalue)
    return Estimate(mean, mean - half, mean + half, method="paired t interval", se=se), p_value


def holm(p_values: dict[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment of a family of p-values (None stays None)."""
    present = sorted((p, name) for name, p in p_values.items() if p is not None)
    adjusted, running = {}, 0.0
    for rank, (p, name) in enumerate(present):
        running = max(running, min(1.0, (len(present) - rank) * p))
        adjusted[name] = running
    return {name: adjusted.get(name) for name in p_values}
