"""``compute_metrics``: the clinical figures of one evaluation, at the threshold, across
thresholds, per subgroup, with their intervals (:mod:`.intervals`); calibration by scikit-learn."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import pandas as pd
from scipy.special import logit
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, roc_curve

from ..errors import HeimerError
from ..meta import DEFAULT_CLASS_NAMES, N_BOOTSTRAP
from .intervals import (
    MIN_PER_CLASS_AUC, ResampledAuc, bootstrap_method, checked_n_bootstrap, class_count_reason, cluster_codes,
    delong_auc, percentile_interval, stratified_bootstrap_weights, validated, wilson_interval,
)
from .results import (
    LOG_LOSS_CLIP, ClassificationReport, ConfusionMatrix, Curves, DecisionCurve, Estimate, GroupMetrics,
    ReliabilityCurve, RocCurve, SubgroupResult, ThresholdRationale,
)

N_CALIBRATION_BINS = 10
MIN_SUBJECTS_CALIBRATION_FIT = 10
DECISION_THRESHOLDS = np.round(np.arange(1, 100) / 100, 2)  # 0.01 ... 0.99
AGE_BAND_EDGES = (65, 75, 85)
AGE_BAND_LABELS = ("<65", "65-74", "75-84", ">=85")
MAX_NUMERIC_CATEGORIES = 10  # a numeric covariate with more distinct values is split into tertiles


def compute_metrics(
    y_true,
    y_score,
    *,
    threshold: float = 0.5,
    covariates: pd.DataFrame | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
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
    y, score = validated(y_true, y_score, class_names)
    codes = cluster_codes(clusters, y, class_names)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold <= 1:
        raise HeimerError(f"threshold must be a number in [0, 1]; got {threshold!r}")
    n_bootstrap = checked_n_bootstrap(n_bootstrap)
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


def reliability_curve(y_true, y_score) -> ReliabilityCurve:
    """Mean score and observed AD fraction per non-empty equal-width score bin (see ``ReliabilityCurve``)."""
    y, score = validated(y_true, y_score, DEFAULT_CLASS_NAMES)
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
    labels, score = validated(y_true, y_score, DEFAULT_CLASS_NAMES)
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
    method = bootstrap_method(codes)

    auc_reason = class_count_reason(y, MIN_PER_CLASS_AUC, "the AUC", class_names)
    both_reason = class_count_reason(y, 1, "balanced accuracy", class_names)
    resampled = _bootstrap(y, score, called, n_bootstrap, seed, with_auc=auc_reason is None, codes=codes)
    if auc_reason:
        roc_auc = Estimate.missing(auc_reason)
    else:
        roc_auc = Estimate(ResampledAuc(y, score).point(), *percentile_interval(resampled["auc"]), method=method)
    if both_reason:
        balanced = Estimate.missing(both_reason)
    else:
        value = (tp / n_pos + tn / n_neg) / 2
        balanced = Estimate(value, *percentile_interval(resampled["balanced_accuracy"]), method=method)
    if n_pos == 0:
        f1 = Estimate.missing(f"no {positive} subjects; F1 needs at least one")
    else:
        f1 = Estimate(2 * tp / (2 * tp + fp + fn), *percentile_interval(resampled["f1"]), method=method)

    def proportion(name, successes, total, reason_if_empty):
        if codes is None or total == 0:  # independent scans: Wilson
            return _proportion(successes, total, reason_if_empty)
        if name not in resampled:  # no resample had a denominator: the figure stands without interval
            return Estimate(successes / total)
        return Estimate(successes / total, *percentile_interval(resampled[name]), method=method)

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
    auc = ResampledAuc(y, score) if with_auc else None
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
        "brier_score": Estimate(float(brier_score_loss(y, score))),
        "log_loss": Estimate(float(log_loss(y, clipped, labels=[0, 1]))),
        "expected_calibration_error": Estimate(float(np.abs(gaps).sum() / len(y))),
        **_calibration_fit(y, logit(clipped), class_names),
    }


def _calibration_fit(y, log_odds, class_names, max_iterations=100) -> dict[str, Estimate]:
    """Slope and intercept of the unpenalised logistic regression of y on the score's log-odds.

    Fitted by scikit-learn's Newton solver (no penalty), which converges in a handful of steps
    when the maximum likelihood estimate exists; it does not when the scores separate the
    classes perfectly (the slope runs off to infinity), which is checked first.
    """
    reason = class_count_reason(y, 1, "the calibration fit", class_names)
    if reason is None and len(y) < MIN_SUBJECTS_CALIBRATION_FIT:
        reason = f"too few subjects ({len(y)}); the calibration fit needs at least {MIN_SUBJECTS_CALIBRATION_FIT}"
    if reason is None:
        pos, neg = log_odds[y == 1], log_odds[y == 0]
        if log_odds.min() == log_odds.max():
            reason = "all scores are equal; the calibration slope is undefined"
        elif pos.min() >= neg.max() or pos.max() <= neg.min():
            reason = "the scores separate the classes perfectly; the calibration slope is infinite"
    if reason is None:
        # C=inf: no penalty, the maximum-likelihood fit; Newton steps until the gradient vanishes
        model = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=max_iterations)
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            try:
                model.fit(log_odds[:, None], y)
            except ConvergenceWarning:
                reason = f"the calibration fit did not converge in {max_iterations} Newton steps"
            else:
                return {"calibration_slope": Estimate(float(model.coef_[0, 0])),
                        "calibration_intercept": Estimate(float(model.intercept_[0]))}
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
