"""Clinical metrics equal scikit-learn, intervals behave, and what cannot be computed says why."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from heimer_mlflow.errors import HeimerError
from heimer_mlflow.metrics import (
    DECISION_THRESHOLDS,
    Estimate,
    compute_metrics,
    delong_auc,
    paired_delong,
    paired_delta_auc,
    stratified_bootstrap_weights,
    wilson_interval,
)

DOCUMENTED_METRICS = {
    "roc_auc", "roc_auc_ci_lower", "roc_auc_ci_upper", "accuracy", "balanced_accuracy", "sensitivity",
    "specificity", "ppv", "npv", "f1", "brier_score", "log_loss", "expected_calibration_error", "n_subjects",
}  # fmt: skip


def cohort(n=300, seed=0, separation=0.3, decimals=2):
    """Labels and scores that overlap, with ties (rounded) and scores exactly 0, 0.5 and 1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = np.clip(rng.normal(0.35 + separation * y, 0.2), 0, 1).round(decimals)
    score[:3] = [0.0, 0.5, 1.0]
    return y, score


@pytest.fixture(scope="module")
def report():
    y, score = cohort()
    return y, score, compute_metrics(y, score, n_bootstrap=500, seed=1)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.71])
def test_figures_equal_scikit_learn(threshold):
    y, score = cohort(seed=2)
    overall = compute_metrics(y, score, threshold=threshold, n_bootstrap=50).overall
    called = (score >= threshold).astype(int)
    expected = {
        "roc_auc": roc_auc_score(y, score),
        "accuracy": accuracy_score(y, called),
        "balanced_accuracy": balanced_accuracy_score(y, called),
        "sensitivity": recall_score(y, called),
        "specificity": recall_score(y, called, pos_label=0),
        "ppv": precision_score(y, called),
        "npv": precision_score(y, called, pos_label=0),
        "f1": f1_score(y, called),
        "brier_score": brier_score_loss(y, score),
        "log_loss": log_loss(y, np.clip(score, 1e-7, 1 - 1e-7)),
    }
    for name, value in expected.items():
        np.testing.assert_allclose(overall[name].value, value, rtol=1e-12, err_msg=name)
    np.testing.assert_allclose(overall["roc_auc_delong"].value, roc_auc_score(y, score), rtol=1e-12)
    tn, fp, fn, tp = confusion_matrix(y, called).ravel()
    assert overall.confusion.to_dict() == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert (overall.n_subjects, overall.n_positive, overall.n_negative) == (len(y), y.sum(), len(y) - y.sum())


def test_curves_equal_scikit_learn(report):
    y, score, result = report
    roc = result.curves.roc
    for ours, theirs in zip((roc.fpr, roc.tpr, roc.thresholds), roc_curve(y, score)):
        np.testing.assert_array_equal(ours, theirs)
    reliability = result.curves.reliability
    prob_true, prob_pred = calibration_curve(y, score, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(reliability.observed_fraction, prob_true, rtol=1e-12)
    np.testing.assert_allclose(reliability.mean_predicted, prob_pred, rtol=1e-12)
    assert reliability.count.sum() == len(y)
    assert np.all(reliability.bin_lower <= reliability.mean_predicted)
    assert np.all(reliability.mean_predicted <= reliability.bin_upper)
    # ECE is the count-weighted mean gap of those very bins.
    ece = np.sum(reliability.count / len(y) * np.abs(prob_true - prob_pred))
    np.testing.assert_allclose(result.overall["expected_calibration_error"].value, ece, rtol=1e-12)


def test_calibration_fit_equals_unpenalised_logistic_regression(report):
    y, score, result = report
    log_odds = logit(np.clip(score, 1e-7, 1 - 1e-7))[:, None]
    fit = LogisticRegression(penalty=None, tol=1e-12, max_iter=10_000).fit(log_odds, y)
    np.testing.assert_allclose(result.overall["calibration_slope"].value, fit.coef_[0, 0], rtol=1e-5)
    np.testing.assert_allclose(result.overall["calibration_intercept"].value, fit.intercept_[0], rtol=1e-5, atol=1e-6)


def test_calibration_slope_one_when_calibrated_below_one_when_overconfident():
    rng = np.random.default_rng(3)
    probability = rng.uniform(0.02, 0.98, 20_000)
    y = (rng.random(probability.size) < probability).astype(int)
    calibrated = compute_metrics(y, probability, n_bootstrap=1).overall
    assert calibrated["calibration_slope"].value == pytest.approx(1, abs=0.08)
    assert calibrated["calibration_intercept"].value == pytest.approx(0, abs=0.05)
    assert calibrated["expected_calibration_error"].value < 0.02
    overconfident = compute_metrics(y, expit(3 * logit(probability)), n_bootstrap=1).overall
    assert overconfident["calibration_slope"].value == pytest.approx(1 / 3, abs=0.05)


def test_expected_calibration_error_zero_on_perfectly_calibrated_bins():
    # Bin (0.2, 0.3]: 20 subjects at 0.25, 5 AD; bin (0.7, 0.8]: 20 at 0.75, 15 AD.
    score = np.r_[np.full(20, 0.25), np.full(20, 0.75)]
    y = np.r_[np.ones(5), np.zeros(15), np.ones(15), np.zeros(5)].astype(int)
    overall = compute_metrics(y, score, n_bootstrap=10).overall
    assert overall["expected_calibration_error"].value == pytest.approx(0, abs=1e-15)
    assert overall["calibration_slope"].value == pytest.approx(1, rel=1e-9)
    assert overall["calibration_intercept"].value == pytest.approx(0, abs=1e-9)


def test_decision_curve_against_hand_computation():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 0])
    score = np.array([0.9, 0.7, 0.2, 0.6, 0.25, 0.1, 0.05, 0.3, 0.4, 0.5])
    curve = compute_metrics(y, score, n_bootstrap=10).curves.decision
    np.testing.assert_array_equal(curve.thresholds, DECISION_THRESHOLDS)
    assert (curve.thresholds[0], curve.thresholds[-1], len(curve.thresholds)) == (0.01, 0.99, 99)
    at = int(np.flatnonzero(curve.thresholds == 0.3)[0])
    # Called AD at pt = 0.3: 0.9, 0.7, 0.6, 0.3, 0.4, 0.5 -> TP 3 (0.9, 0.7, 0.4), FP 3 (0.6, 0.3, 0.5).
    assert curve.net_benefit_model[at] == pytest.approx(3 / 10 - 3 / 10 * 0.3 / 0.7, rel=1e-12)
    assert curve.net_benefit_treat_all[at] == pytest.approx(0.4 - 0.6 * 0.3 / 0.7, rel=1e-12)
    assert np.all(curve.net_benefit_treat_none == 0)


def test_wilson_interval_known_values():
    np.testing.assert_allclose(wilson_interval(8, 10), (0.4901625, 0.9433178), atol=1e-6)
    np.testing.assert_allclose(wilson_interval(0, 10), (0.0, 0.2775328), atol=1e-6)
    np.testing.assert_allclose(wilson_interval(10, 10), (0.7224672, 1.0), atol=1e-6)
    np.testing.assert_allclose(wilson_interval(50, 100), (0.4038315, 0.5961685), atol=1e-6)


def test_proportions_carry_their_wilson_intervals(report):
    _, _, result = report
    c = result.overall.confusion
    for name, (k, n) in {
        "accuracy": (c.tp + c.tn, c.tp + c.tn + c.fp + c.fn), "sensitivity": (c.tp, c.tp + c.fn),
        "specificity": (c.tn, c.tn + c.fp), "ppv": (c.tp, c.tp + c.fp), "npv": (c.tn, c.tn + c.fn),
    }.items():  # fmt: skip
        estimate = result.overall[name]
        assert (estimate.lower, estimate.upper) == wilson_interval(k, n)
        assert estimate.method == "wilson"


def test_bootstrap_is_seeded_contains_the_estimate_and_narrows_with_n():
    y, score = cohort(n=120, seed=4)
    first, again = (compute_metrics(y, score, n_bootstrap=300, seed=7).overall for _ in range(2))
    other = compute_metrics(y, score, n_bootstrap=300, seed=8).overall
    for name in ("roc_auc", "f1", "balanced_accuracy"):
        assert (first[name].lower, first[name].upper) == (again[name].lower, again[name].upper)
        assert (first[name].lower, first[name].upper) != (other[name].lower, other[name].upper)
        assert first[name].lower <= first[name].value <= first[name].upper
        assert first[name].method == "bootstrap"
    y_big, score_big = cohort(n=2000, seed=4)
    big = compute_metrics(y_big, score_big, n_bootstrap=300, seed=7).overall
    for name in ("roc_auc", "f1", "balanced_accuracy", "roc_auc_delong", "sensitivity"):
        assert big[name].upper - big[name].lower < 0.5 * (first[name].upper - first[name].lower), name


def test_vectorised_bootstrap_equals_a_naive_loop():
    y, score = cohort(n=60, seed=5)
    threshold, n_bootstrap, seed = 0.45, 40, 9
    weights = np.concatenate(list(stratified_bootstrap_weights(y, n_bootstrap, seed)))
    assert weights.shape == (n_bootstrap, len(y))
    assert np.all(weights[:, y == 1].sum(axis=1) == y.sum()), "stratified: AD count fixed"
    naive = {"roc_auc": [], "f1": [], "balanced_accuracy": []}
    for row in weights:
        drawn = np.repeat(np.arange(len(y)), row)
        called = (score[drawn] >= threshold).astype(int)
        naive["roc_auc"].append(roc_auc_score(y[drawn], score[drawn]))
        naive["f1"].append(f1_score(y[drawn], called))
        naive["balanced_accuracy"].append(balanced_accuracy_score(y[drawn], called))
    overall = compute_metrics(y, score, threshold=threshold, n_bootstrap=n_bootstrap, seed=seed).overall
    for name, samples in naive.items():
        interval = (overall[name].lower, overall[name].upper)
        np.testing.assert_allclose(interval, np.quantile(samples, [0.025, 0.975]), rtol=1e-12, err_msg=name)
    # The weights come in fixed-size chunks that continue one random stream.
    assert len(list(stratified_bootstrap_weights(y, 600, seed))) == 3


def test_delong_matches_structural_components_by_brute_force():
    y, score = cohort(n=80, seed=6, decimals=1)  # many ties
    pos, neg = score[y == 1], score[y == 0]
    kernel = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = kernel.mean(axis=1), kernel.mean(axis=0)
    se = math.sqrt(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg))
    estimate = delong_auc(y, score)
    np.testing.assert_allclose((estimate.value, estimate.se), (kernel.mean(), se), rtol=1e-12)
    expected = (kernel.mean() - 1.959964 * se, kernel.mean() + 1.959964 * se)
    np.testing.assert_allclose((estimate.lower, estimate.upper), expected, rtol=1e-6)


def test_youden_threshold_maximises_sensitivity_plus_specificity(report):
    y, score, result = report
    rationale = result.threshold_rationale
    def youden(t):
        return recall_score(y, score >= t) + recall_score(y, score >= t, pos_label=0) - 1

    best = max(np.unique(score), key=lambda t: (youden(t), t))  # ties: the highest threshold
    assert rationale.youden_threshold.value == best
    assert rationale.youden_sensitivity.value == recall_score(y, score >= best)
    assert rationale.youden_specificity.value == recall_score(y, score >= best, pos_label=0)
    assert rationale.threshold == 0.5 and "optimistic" in rationale.note


def test_one_class_is_not_computable_with_reasons_and_no_nan():
    y, score = np.ones(12, dtype=int), np.linspace(0.2, 0.9, 12)
    result = compute_metrics(y, score, n_bootstrap=20, covariates=pd.DataFrame({"site": ["A"] * 6 + ["B"] * 6}))
    overall = result.overall
    assert not overall["roc_auc"].computable and "only one class present" in overall["roc_auc"].reason
    for name in ("roc_auc_delong", "specificity", "balanced_accuracy", "calibration_slope", "calibration_intercept"):
        assert overall[name].value is None and overall[name].reason, name
    assert overall["sensitivity"].computable and overall["brier_score"].computable
    assert result.curves.roc is None and not result.threshold_rationale.youden_threshold.computable
    flat = result.to_flat_metrics()
    assert "roc_auc" not in flat and "specificity" not in flat and flat["n_subjects"] == 12
    assert all(math.isfinite(v) for v in flat.values())
    missing = dict(result.not_computable())
    assert set(missing) >= {"roc_auc", "specificity", "balanced_accuracy", "youden_threshold"} and all(missing.values())
    text = json.dumps(result.to_json_dict(), allow_nan=False)  # raises on NaN or infinity
    assert "only one class present" in text


def test_zero_denominators_and_small_groups_say_why():
    y, score = np.array([1, 0, 0, 1, 0]), np.array([0.2, 0.1, 0.3, 0.4, 0.35])
    overall = compute_metrics(y, score, threshold=0.9, n_bootstrap=20).overall
    assert "no subject called AD at threshold 0.9" in overall["ppv"].reason
    assert overall["f1"].value == 0 and overall["npv"].computable  # F1 = 2TP / (2TP + FP + FN), as scikit-learn
    assert "at least 10" in overall["calibration_slope"].reason
    one_ad = compute_metrics([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3], n_bootstrap=20).overall
    assert "too few subjects (1 AD, 3 CN)" in one_ad["roc_auc"].reason and "at least 2" in one_ad["roc_auc"].reason
    y_separated, score_separated = np.repeat([0, 1], 10), np.repeat([0.2, 0.8], 10)
    separated = compute_metrics(y_separated, score_separated, n_bootstrap=20)
    assert "separate the classes perfectly" in separated.overall["calibration_slope"].reason


def test_flat_metrics_use_design_names(report):
    _, _, result = report
    flat = result.to_flat_metrics()
    assert DOCUMENTED_METRICS <= set(flat)
    assert {"sensitivity_ci_lower", "sensitivity_ci_upper", "calibration_slope", "calibration_intercept"} <= set(flat)
    assert result.not_computable() == []
    text = json.dumps(result.to_json_dict(), allow_nan=False)
    assert json.loads(text)["curves"]["roc"]["thresholds"][0] is None  # scikit-learn's +inf


def test_subgroups_age_bands_site_values_tertiles_and_missing():
    y, score = cohort(n=200, seed=7)
    rng = np.random.default_rng(7)
    age = rng.uniform(55, 95, 200)
    age[[0, 1, 2, 3]] = [64.99, 65, 74.5, 85]
    age[4] = np.nan
    covariates = pd.DataFrame({"Age": age, "site": rng.choice(["B", "A"], 200), "mmse": rng.normal(25, 3, 200)},
                              index=np.arange(200) + 1000)  # fmt: skip
    result = compute_metrics(y, score, covariates=covariates, n_bootstrap=100)
    groups = {(row.covariate, row.group): row.metrics for row in result.subgroups}
    assert [g for c, g in groups if c == "Age"] == ["<65", "65-74", "75-84", ">=85", "missing"]
    assert [g for c, g in groups if c == "site"] == ["A", "B"]
    assert len([g for c, g in groups if c == "mmse"]) == 3
    bands = np.digitize(age, [65, 75, 85])
    assert groups[("Age", "65-74")].n_subjects == np.sum(bands == 1) and groups[("Age", "missing")].n_subjects == 1
    assert sum(groups[("Age", band)].n_subjects for band in ["<65", "65-74", "75-84", ">=85", "missing"]) == 200
    site_a = covariates["site"].to_numpy() == "A"
    expected = compute_metrics(y[site_a], score[site_a], n_bootstrap=100).overall
    assert groups[("site", "A")].to_dict() == expected.to_dict()
    assert groups[("site", "A")].n_positive == y[site_a].sum() and groups[("site", "A")]["roc_auc"].lower is not None


def test_paired_delta_auc():
    y, score = cohort(n=200, seed=8)
    same = paired_delta_auc(y, score, score, n_bootstrap=200, seed=1)
    assert (same.value, same.lower, same.upper) == (0, 0, 0)
    noisy = np.clip(score + np.random.default_rng(8).normal(0, 0.3, len(y)), 0, 1)
    better = paired_delta_auc(y, score, noisy, n_bootstrap=500, seed=1)
    np.testing.assert_allclose(better.value, roc_auc_score(y, score) - roc_auc_score(y, noisy), rtol=1e-12)
    assert 0 < better.lower < better.value < better.upper and better.se > 0
    assert paired_delta_auc(y, score, noisy, 500, 1) == better
    assert "only one class" in paired_delta_auc(np.ones(5, int), score[:5], score[:5]).reason


def test_paired_delong_matches_the_covariance_of_structural_components_by_brute_force():
    """DeLong et al. (1988), eq. for correlated AUCs: S = S10 / m + S01 / n over the two models'
    placement values; var(A - B) = S_aa + S_bb - 2 S_ab; z = (A - B) / sqrt(var)."""
    y, score = cohort(n=120, seed=9, decimals=1)  # ties
    other = np.clip(score + np.random.default_rng(9).normal(0, 0.25, len(y)), 0, 1).round(1)
    placements = []
    for s in (score, other):
        pos, neg = s[y == 1], s[y == 0]
        kernel = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        placements.append((kernel.mean(axis=1), kernel.mean(axis=0)))
    s10 = np.cov(np.stack([p[0] for p in placements]))
    s01 = np.cov(np.stack([p[1] for p in placements]))
    cov = s10 / (y == 1).sum() + s01 / (y == 0).sum()
    se = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = roc_auc_score(y, score) - roc_auc_score(y, other)
    p_value = 2 * (1 - 0.5 * (1 + math.erf(abs(diff) / se / math.sqrt(2))))
    estimate, p = paired_delong(y, score, other)
    np.testing.assert_allclose((estimate.value, estimate.se, p), (diff, se, p_value), rtol=1e-9)
    np.testing.assert_allclose((estimate.lower, estimate.upper), (diff - 1.959964 * se, diff + 1.959964 * se), rtol=1e-6)
    assert 0 < estimate.lower and p < 0.05  # the noisier copy separates worse, clearly
    # antisymmetric; the same model against itself: no difference, p = 1
    swapped, p_swapped = paired_delong(y, other, score)
    assert swapped.value == pytest.approx(-diff) and p_swapped == pytest.approx(p)
    assert paired_delong(y, score, score) == (Estimate(0.0, 0.0, 0.0, method="delong", se=0.0), 1.0)
    # pairing matters: the unpaired variance (covariance ignored) is larger for correlated models
    assert se < math.sqrt(cov[0, 0] + cov[1, 1])
    missing, none = paired_delong(np.ones(5, int), score[:5], other[:5])
    assert none is None and "only one class" in missing.reason


def test_estimate_never_holds_nan():
    with pytest.raises(ValueError):
        Estimate(float("nan"))
    with pytest.raises(ValueError):
        Estimate(None)  # not computable needs a reason
    assert Estimate.missing("why").to_dict()["reason"] == "why" and Estimate.missing("why").flat("x") == {}


@pytest.mark.parametrize(
    "y_true, y_score, kwargs, message",
    [
        ([0, 1, 1], [0.1, 0.2], {}, "y_true has 3 subjects but y_score has 2"),
        ([0, 2, 1], [0.1, 0.2, 0.3], {}, "position 1 has 2"),
        (["CN", "AD"], [0.1, 0.2], {}, "must be 0 (CN) or 1 (AD)"),
        ([0, 1, 1], [0.1, 1.2, 0.3], {}, "probability in [0, 1] for every subject; position 1 has 1.2"),
        ([0, 1, 1], [0.1, np.nan, 0.3], {}, "position 1 has nan"),
        ([], [], {}, "no subjects"),
        ([0, 1], [0.1, 0.2], {"threshold": 1.5}, "threshold must be a number in [0, 1]"),
        ([0, 1], [0.1, 0.2], {"n_bootstrap": 0}, "n_bootstrap must be a positive whole number"),
        ([0, 1], [0.1, 0.2], {"covariates": pd.DataFrame({"site": ["A"]})}, "one row per subject (2); got 1 rows"),
    ],
)
def test_invalid_input_raises_one_clear_line(y_true, y_score, kwargs, message):
    with pytest.raises(HeimerError) as caught:
        compute_metrics(y_true, y_score, **kwargs)
    assert message in str(caught.value) and "\n" not in str(caught.value)


# ------------------------------------------------------------------ participants with several scans


def _duplicated_cohort(n_per_class=20, repeats=2, seed=3):
    """A cohort, and the same cohort with every participant scanned ``repeats`` times (same
    scores: the most correlated sessions can be), participants in the same order."""
    rng = np.random.default_rng(seed)
    y = np.repeat([1, 0], n_per_class)
    score = np.clip(np.where(y == 1, 0.62, 0.38) + rng.normal(0, 0.2, len(y)), 0, 1)
    participants = np.array([f"sub-{i:02d}" for i in range(len(y))])
    return (y, score), (np.repeat(y, repeats), np.repeat(score, repeats), np.repeat(participants, repeats))


def test_cluster_bootstrap_on_duplicated_sessions_equals_the_bootstrap_of_participants():
    (y, score), (y2, score2, who) = _duplicated_cohort()
    once = compute_metrics(y, score, n_bootstrap=500, seed=1).overall
    naive = compute_metrics(y2, score2, n_bootstrap=500, seed=1).overall
    clustered = compute_metrics(y2, score2, n_bootstrap=500, seed=1, clusters=who).overall
    for name in ("roc_auc", "f1", "balanced_accuracy"):
        assert clustered[name].value == pytest.approx(once[name].value)
        # the same participants drawn the same number of times: the very same intervals
        assert (clustered[name].lower, clustered[name].upper) == pytest.approx((once[name].lower, once[name].upper))
        assert clustered[name].method == "cluster bootstrap"
    # counting each scan as a participant makes the AUC look twice as well measured
    width = lambda e: e.upper - e.lower  # noqa: E731
    assert width(naive["roc_auc"]) < 0.85 * width(clustered["roc_auc"])
    assert (clustered.n_subjects, clustered.n_participants) == (80, 40)
    flat = compute_metrics(y2, score2, n_bootstrap=50, clusters=who).to_flat_metrics()
    assert (flat["n_subjects"], flat["n_participants"]) == (80, 40)


def test_proportions_resample_participants_when_they_have_several_scans():
    (y, score), (y2, score2, who) = _duplicated_cohort()
    once = compute_metrics(y, score, n_bootstrap=500, seed=1).overall
    naive = compute_metrics(y2, score2, n_bootstrap=500, seed=1).overall
    clustered = compute_metrics(y2, score2, n_bootstrap=500, seed=1, clusters=who).overall
    width = lambda e: e.upper - e.lower  # noqa: E731
    for name in ("sensitivity", "specificity", "accuracy", "ppv", "npv"):
        e = clustered[name]
        assert e.method == "cluster bootstrap" and naive[name].method == "wilson"
        assert e.value == pytest.approx(naive[name].value) and e.lower <= e.value <= e.upper
        # as wide as the participants' own (Wilson) interval, wider than one that counts scans
        assert 0.75 < width(e) / width(once[name]) < 1.3, name
        assert width(e) > 1.1 * width(naive[name]), name


def test_obuchowski_variance_on_duplicated_sessions_is_delongs_of_the_participants():
    (y, score), (y2, score2, who) = _duplicated_cohort()
    plain = delong_auc(y, score)
    clustered = delong_auc(y2, score2, clusters=who)
    naive = delong_auc(y2, score2)
    assert clustered.method == "obuchowski" and clustered.value == pytest.approx(plain.value)
    # I/(I-1) over the squared class size vs DeLong's 1/(M(M-1)): within 3% here
    assert clustered.se == pytest.approx(plain.se, rel=0.03)
    assert naive.se < 0.75 * clustered.se
    from heimer_mlflow.metrics import paired_delong

    other = np.clip(score + np.random.default_rng(0).normal(0, 0.15, len(score)), 0, 1)
    diff_plain, p_plain = paired_delong(y, score, other)
    diff_clustered, p_clustered = paired_delong(y2, score2, np.repeat(other, 2), clusters=who)
    assert diff_clustered.value == pytest.approx(diff_plain.value)
    assert diff_clustered.se == pytest.approx(diff_plain.se, rel=0.03) and p_clustered == pytest.approx(p_plain, rel=0.1)


def test_one_scan_per_participant_changes_nothing():
    (y, score), _ = _duplicated_cohort()
    ids = [f"p{i}" for i in range(len(y))]
    assert compute_metrics(y, score, n_bootstrap=200, clusters=ids).to_json_dict() == \
        compute_metrics(y, score, n_bootstrap=200).to_json_dict()


def test_a_participant_in_two_classes_is_an_error():
    y = np.array([1, 0, 1, 0, 1, 0])
    with pytest.raises(HeimerError, match="participant sub-1 has scans of both CN and AD"):
        compute_metrics(y, np.linspace(0.1, 0.9, 6), clusters=["sub-1", "sub-1", "sub-2", "sub-3", "sub-4", "sub-5"])
