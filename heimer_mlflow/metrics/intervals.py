"""Intervals and tests no kept library gives in the form needed here: DeLong's AUC variance and
Obuchowski's clustered form, the paired DeLong test, the stratified (cluster) bootstrap and its
percentile intervals, the signed-rank test with clusters, Holm's correction; and the Wilson
interval (scipy's) every proportion uses."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator

import numpy as np
import pandas as pd
from scipy.stats import binomtest, norm, rankdata, wilcoxon
from scipy.stats import t as student_t

from ..errors import HeimerError
from ..meta import DEFAULT_CLASS_NAMES, N_BOOTSTRAP
from .results import CONFIDENCE, Estimate

Z = float(norm.ppf(0.5 + CONFIDENCE / 2))  # 1.95996...
MIN_PER_CLASS_AUC = 2  # the DeLong variance, and any spread of the bootstrap, needs two per class
BOOTSTRAP_CHUNK = 250  # resamples held in memory at once; fixed, so results never depend on cohort size


def wilson_interval(successes: int, total: int) -> tuple[float, float]:
    """95% Wilson score interval of the proportion successes / total (total >= 1).

    Unlike the normal approximation it stays inside [0, 1] and is sensible for proportions
    near 0 or 1 and small totals, which is where clinical subgroups live.
    """
    interval = binomtest(int(successes), int(total)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return max(0.0, float(interval.low)), min(1.0, float(interval.high))


def delong_auc(y_true, y_score, *, class_names=DEFAULT_CLASS_NAMES, clusters=None) -> Estimate:
    """The AUC with DeLong's standard error and 95% interval (clipped to [0, 1]).

    DeLong et al. (1988), computed from midranks (Sun & Xu 2014): each AD subject's share of CN
    subjects it outscores, and each CN subject's share of AD subjects that outscore it; the
    AUC's variance is the sum of these components' variances over their class sizes. The
    standard error is 0 when the classes are perfectly separated. With ``clusters`` (the
    participant of each scan) and some participant scanned more than once, the variance is
    Obuchowski's (1997): the components summed per participant, participants independent.
    """
    y, score = validated(y_true, y_score, class_names)
    codes = cluster_codes(clusters, y, class_names)
    reason = class_count_reason(y, MIN_PER_CLASS_AUC, "the AUC", class_names)
    if reason:
        return Estimate.missing(reason)
    outscored_by_positive, outscoring_negative = _delong_components(y, score)
    auc = float(outscored_by_positive.mean())
    if codes is not None:
        se = math.sqrt(_clustered_variance(y, codes, outscored_by_positive, outscoring_negative))
        method = "obuchowski"
    else:
        se = math.sqrt(outscored_by_positive.var(ddof=1) / len(outscored_by_positive)
                       + outscoring_negative.var(ddof=1) / len(outscoring_negative))
        method = "delong"
    return Estimate(auc, max(0.0, auc - Z * se), min(1.0, auc + Z * se), method=method, se=se)


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
    y, a = validated(y_true, score_a, class_names, score_name="score_a")
    _, b = validated(y_true, score_b, class_names, score_name="score_b")
    codes = cluster_codes(clusters, y, class_names)
    reason = class_count_reason(y, MIN_PER_CLASS_AUC, "the AUC", class_names)
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
    return Estimate(difference, difference - Z * se, difference + Z * se, method=method, se=se), p_value


def paired_delta_auc(
    y_true, score_a, score_b, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, *, class_names=DEFAULT_CLASS_NAMES,
    clusters=None,
) -> Estimate:
    """AUC(model A) - AUC(model B) on the same subjects, positive when A separates better.

    The interval is a paired, stratified percentile bootstrap: both models are scored on the
    very same resamples, so the subject-to-subject variation common to both cancels out.
    ``se`` is the standard deviation of the resampled differences. With ``clusters`` (the
    participant of each scan) participants are resampled, not scans.
    """
    y, a = validated(y_true, score_a, class_names, score_name="score_a")
    _, b = validated(y_true, score_b, class_names, score_name="score_b")
    n_bootstrap = checked_n_bootstrap(n_bootstrap)
    codes = cluster_codes(clusters, y, class_names)
    reason = class_count_reason(y, MIN_PER_CLASS_AUC, "the AUC", class_names)
    if reason:
        return Estimate.missing(reason)
    auc_a, auc_b = ResampledAuc(y, a), ResampledAuc(y, b)
    point = auc_a.point() - auc_b.point()
    weights = stratified_bootstrap_weights(y, n_bootstrap, seed, clusters=codes)
    deltas = np.concatenate([auc_a(w) - auc_b(w) for w in weights])
    lower, upper = percentile_interval(deltas)
    se = float(deltas.std(ddof=1)) if len(deltas) > 1 else None
    return Estimate(point, lower, upper, method=bootstrap_method(codes), se=se)


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
    for start in range(0, n_bootstrap, BOOTSTRAP_CHUNK):
        size = min(BOOTSTRAP_CHUNK, n_bootstrap - start)
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


def bootstrap_method(codes) -> str:
    return "bootstrap" if codes is None else "cluster bootstrap"


def validated(y_true, y_score, class_names, score_name="y_score") -> tuple[np.ndarray, np.ndarray]:
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


def checked_n_bootstrap(n_bootstrap) -> int:
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, numbers.Integral) or n_bootstrap < 1:
        raise HeimerError(f"n_bootstrap must be a positive whole number; got {n_bootstrap!r}")
    return int(n_bootstrap)


def class_count_reason(y: np.ndarray, minimum: int, figure: str, class_names) -> str | None:
    """Why ``figure`` cannot be computed from these class sizes, or None if it can."""
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    negative, positive = class_names
    if n_pos == 0 or n_neg == 0:
        present = positive if n_pos else negative
        return f"only one class present ({present}); {figure} needs both {negative} and {positive} subjects"
    if min(n_pos, n_neg) < minimum:
        return f"too few subjects ({n_pos} {positive}, {n_neg} {negative}); {figure} needs at least {minimum} of each"
    return None


class ResampledAuc:
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


def percentile_interval(samples: np.ndarray) -> tuple[float, float]:
    tail = (1 - CONFIDENCE) / 2
    lower, upper = np.quantile(samples, [tail, 1 - tail])
    return float(lower), float(upper)


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
                              for w in stratified_bootstrap_weights(strata, checked_n_bootstrap(n_bootstrap), seed,
                                                                    clusters=codes)])
    out = []
    for column in range(values.shape[1]):
        if not finite[column]:
            out.append(Estimate.missing("a subject's score was not finite"))
            continue
        lower, upper = percentile_interval(samples[:, column])
        out.append(Estimate(float(values[:, column].mean()), lower, upper, method=bootstrap_method(codes)))
    return out


def paired_signed_rank(a, b, *, clusters=None) -> tuple[Estimate, float | None]:
    """(mean of a - b with a t interval, two-sided Wilcoxon signed-rank p) over paired subjects;
    with ``clusters`` the pairs are first averaged per participant (one pair per person). Exact
    p-values for up to 50 pairs without ties, else the normal approximation (scipy's choice)."""
    difference = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if clusters is not None:
        difference = pd.Series(difference).groupby(pd.Series(np.asarray(clusters, dtype=object)).astype(str).to_numpy(),
                                                   sort=False).mean().to_numpy()
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
