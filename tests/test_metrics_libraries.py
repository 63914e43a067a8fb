"""The figures scipy and scikit-learn now compute (Wilson interval, Brier score, log loss, the
calibration fit) are the numbers the hand-written formulas gave, kept here as the reference; the
reliability bins are scikit-learn's ``calibration_curve``'s."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit, logit
from scipy.stats import norm
from sklearn.calibration import calibration_curve

from heimer_mlflow import metrics

Z = float(norm.ppf(0.975))


def wilson_by_hand(successes: int, total: int) -> tuple[float, float]:
    p = successes / total
    z2 = Z * Z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = Z / (1 + z2 / total) * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def calibration_fit_by_hand(y, log_odds):
    """Newton-Raphson (IRLS) to a step below 1e-10, as the package did it."""
    design = np.column_stack([np.ones_like(log_odds), log_odds])
    beta = np.zeros(2)
    for _ in range(100):
        fitted = expit(design @ beta)
        step = np.linalg.solve((design * (fitted * (1 - fitted))[:, None]).T @ design, design.T @ (y - fitted))
        beta = beta + step
        if np.abs(step).max() < 1e-10:
            return beta[1], beta[0]
    raise AssertionError("no convergence")


def _cohorts(n_cohorts=30):
    rng = np.random.default_rng(7)
    for trial in range(n_cohorts):
        n = int(rng.integers(12, 250))
        y = rng.integers(0, 2, n).astype(float)
        y[:2] = [0, 1]
        score = np.clip(rng.beta(2, 2, n) * 0.6 + 0.4 * y * rng.random(n), 0, 1)
        if trial % 5 == 0:
            score[2:5] = [0.0, 1.0, 0.5]  # the clip of the log loss and the bin edges
        yield y, score


def test_wilson_is_the_formula_for_every_count_up_to_80():
    for total in range(1, 81):
        for successes in range(total + 1):
            assert metrics.wilson_interval(successes, total) == pytest.approx(wilson_by_hand(successes, total),
                                                                             abs=1e-12, rel=0)  # fmt: skip


def test_brier_log_loss_and_calibration_fit_are_the_formulas():
    """Brier and log loss agree to rounding (<= 1e-12). The fit: both are Newton's method on the
    same likelihood, stopped by different rules (a step below 1e-10 by hand, scikit-learn's
    gradient tolerance of 1e-12), so they agree to about 1e-10: seven digits beyond the three
    the report prints."""
    fits = 0
    for y, score in _cohorts():
        found = metrics.compute_metrics(y, score, n_bootstrap=10).overall
        clipped = np.clip(score, metrics.LOG_LOSS_CLIP, 1 - metrics.LOG_LOSS_CLIP)
        assert found["brier_score"].value == pytest.approx(np.mean((score - y) ** 2), abs=1e-12, rel=0)
        log_loss = -np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
        assert found["log_loss"].value == pytest.approx(log_loss, abs=1e-12, rel=0)
        if found["calibration_slope"].computable:
            slope, intercept = calibration_fit_by_hand(y, logit(clipped))
            assert found["calibration_slope"].value == pytest.approx(slope, abs=1e-9, rel=0)
            assert found["calibration_intercept"].value == pytest.approx(intercept, abs=1e-9, rel=0)
            fits += 1
    assert fits >= 20


def test_the_calibration_fit_says_why_there_is_none():
    y = np.array([0.0] * 6 + [1.0] * 6)
    separated = metrics.compute_metrics(y, np.linspace(0.05, 0.95, 12), n_bootstrap=10).overall
    assert "separate the classes perfectly" in separated["calibration_slope"].reason


def test_reliability_bins_are_scikit_learns():
    for y, score in _cohorts():
        curve = metrics.reliability_curve(y, score)
        observed, predicted = calibration_curve(y, score, n_bins=metrics.N_CALIBRATION_BINS, strategy="uniform")
        np.testing.assert_allclose(curve.observed_fraction, observed, atol=1e-12, rtol=0)
        np.testing.assert_allclose(curve.mean_predicted, predicted, atol=1e-12, rtol=0)
        assert curve.count.sum() == len(y)
