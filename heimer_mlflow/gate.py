"""Promotion gates: rules on an evaluation's run metrics and verdict that a script can act on.

``--require "roc_auc_ci_lower>=0.75" --require-verdict pass``: each rule names a run metric
(the names logged to the run), a comparison and a number. The rules are read and their metric
names checked before any compute (a typo must not cost a GPU hour); they are judged once the
run has FINISHED, and the outcome goes to the run and the model version as ``heimer.gate``. A
failed gate ends the command with exit code 3 (:data:`EXIT_GATE_FAILED`), distinct from 2 (a
user error) and 1 (anything unexpected), and raises :class:`GateFailed` in Python.
"""

from __future__ import annotations

import difflib
import functools
import math
import operator
import re
from dataclasses import dataclass, field

from .errors import HeimerError

EXIT_GATE_FAILED = 3
VERDICTS = ("pass",)  # the only verdict worth requiring: "review" is what a gate keeps out

_COMPARISONS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_RULE = re.compile(r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_.\-/]*)\s*(?P<op>>=|<=|==|>|<)\s*(?P<value>\S+)\s*$")


@dataclass(frozen=True)
class Rule:
    """``metric op value``, e.g. ``roc_auc_ci_lower>=0.75``."""

    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Rule:
        match = _RULE.match(str(text))
        value = _parse_number(match["value"]) if match else None
        if match is None or value is None:
            raise HeimerError(
                f"--require {text!r} is not a rule: write METRIC>=NUMBER (or <=, >, <, ==), "
                "e.g. \"roc_auc_ci_lower>=0.75\""
            )
        return cls(match["metric"], match["op"], value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    def failure(self, metrics: dict[str, float], not_computable: dict[str, str]) -> str | None:
        """Why the run's ``metrics`` break this rule, or None when they keep it. A metric the run
        could not compute breaks every rule on it (a gate must not pass on a missing number)."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            reason = not_computable.get(self.metric) or not_computable.get(_base_name(self.metric))
            return f"{self}: {self.metric} could not be computed" + (f" ({reason})" if reason else "")
        if not _COMPARISONS[self.op](float(value), self.value):
            return f"{self}: {self.metric} is {float(value):.4g}"
        return None


@dataclass
class Gate:
    """The rules of one evaluation (metric rules and, optionally, a required verdict)."""

    rules: list[Rule] = field(default_factory=list)
    verdict: str | None = None

    @classmethod
    def parse(cls, require=(), require_verdict: str | None = None) -> Gate:
        """Rules from ``--require`` (repeatable; MLproject joins them with ``;``) and ``--require-verdict``."""
        if isinstance(require, str):
            require = [require]
        require_verdict = require_verdict or None  # MLproject passes absent options as ""
        texts = [part for rule in require or () for part in str(rule).split(";") if part.strip()]
        if require_verdict is not None and require_verdict not in VERDICTS:
            raise HeimerError(f"--require-verdict {require_verdict!r}: the verdict a gate can require is "
                              f"{', '.join(VERDICTS)}")
        return cls([Rule.parse(text) for text in texts], require_verdict)

    def __bool__(self) -> bool:
        return bool(self.rules) or self.verdict is not None

    def describe(self) -> str:
        parts = [str(rule) for rule in self.rules] + ([f"verdict={self.verdict}"] if self.verdict else [])
        return "; ".join(parts)

    def check_names(self, region_names=()) -> None:
        """Every rule names a metric an evaluation can log: a user error before any compute."""
        known = run_metric_names(tuple(region_names))
        for rule in self.rules:
            if rule.metric not in known:
                close = difflib.get_close_matches(rule.metric, sorted(known), n=4, cutoff=0.6)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                regions = "" if region_names else " (cam_roi_gain_<region> needs --atlas)"
                raise HeimerError(f"--require {str(rule)!r}: {rule.metric!r} is not a metric this evaluation "
                                  f"logs{regions}{hint}")

    def judge(self, metrics: dict[str, float], verdict: str, verdict_reason: str,
              not_computable: dict[str, str] | None = None) -> GateResult:
        failures = [f for f in (rule.failure(metrics, not_computable or {}) for rule in self.rules) if f]
        if self.verdict is not None and verdict != self.verdict:
            failures.append(f"verdict={self.verdict}: the verdict is {verdict} ({verdict_reason})")
        return GateResult(self.describe(), failures)


@dataclass(frozen=True)
class GateResult:
    rules: str  # the rules as given, "; "-joined
    failures: list[str]  # one line per broken rule

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def status(self) -> str:
        return "passed" if self.passed else "failed"

    def summary(self) -> str:
        """One line: ``passed: RULES``, or ``failed: N of M rule(s) broke: BROKEN RULES`` (a rule
        that held is not listed as if it had failed)."""
        if self.passed:
            return f"passed: {self.rules}"
        broken = [failure.split(": ", 1)[0] for failure in self.failures]
        total = len([rule for rule in self.rules.split("; ") if rule])
        return f"failed: {len(broken)} of {total} rule(s) broke: {'; '.join(broken)}"

    def tags(self) -> dict[str, str]:
        """``heimer.gate`` (passed/failed), the rules and, when failed, the broken ones."""
        tags = {"heimer.gate": self.status, "heimer.gate_rules": self.rules[:5000]}
        if self.failures:
            tags["heimer.gate_failed"] = "; ".join(self.failures)[:5000]
        return tags


class GateFailed(Exception):
    """The evaluation finished and was logged, but broke a promotion rule. ``evaluation`` holds
    the results; ``failures`` one line per broken rule. The CLI exits with code 3."""

    def __init__(self, evaluation, result: GateResult):
        self.evaluation, self.result, self.failures = evaluation, result, result.failures
        super().__init__("; ".join(result.failures))


# Plausibility numbers an evaluation logs beside the classification metrics (Evaluation.plausibility).
SUMMARY_METRICS = ("cam_outside_brain_fraction", "cam_outside_brain_floor", "sanity_spearman_mean",
                   "gradcam_outside_brain_fraction", "hirescam_outside_brain_fraction", "cam_method_agreement",
                   "cam_n_subjects", "n_excluded", "vs_champion_roc_auc_diff", "vs_champion_roc_auc_diff_ci_lower",
                   "vs_champion_roc_auc_diff_ci_upper", "vs_champion_delong_p")


@functools.lru_cache(maxsize=None)
def run_metric_names(region_names: tuple[str, ...] = ()) -> frozenset[str]:
    """Every run metric name an evaluation can log. The classification names come from the
    metrics module itself (a 40-subject example, milliseconds), so they cannot drift from it."""
    import numpy as np

    from .metrics import compute_metrics

    y = np.tile([0, 1], 20)
    score = np.clip(0.3 * y + np.random.default_rng(0).random(40) * 0.7, 0, 1)
    from .interventions import OUTSIDE, metric_names

    names = set(compute_metrics(y, score, n_bootstrap=20).to_flat_metrics())
    counterfactual = {f"{n}{end}" for n in metric_names(region_names) for end in ("", "_ci_lower", "_ci_upper")}
    vs_champion = {f"vs_champion_cf_drop_{r}_{end}" for r in (OUTSIDE, *region_names)
                   for end in ("diff", "diff_ci_lower", "diff_ci_upper", "p")}
    return frozenset(names | set(SUMMARY_METRICS) | {f"cam_roi_gain_{r}" for r in region_names} | counterfactual
                     | vs_champion | {"cf_n_subjects", "cf_forward_passes"})


def _parse_number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _base_name(metric: str) -> str:
    return re.sub(r"_(ci_lower|ci_upper|se)$", "", metric)
