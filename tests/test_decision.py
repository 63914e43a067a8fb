"""The recommendation for the registry (heimer_mlflow.decision): one sentence, derived from the
verdict, the AUC's interval, the comparison with the champion and the gate, in the order the
module documents; the same sentence on the report's Model Facts page and in the description."""

from __future__ import annotations

import pandas as pd

from heimer_mlflow.decision import DO_NOT_PROMOTE, PROMOTE, REVIEW_FIRST, recommend
from heimer_mlflow.report.facts import find_confounds

SHORTCUT = "68% of the HiResCAM lies outside the brain (limit 26%)"


def champion(diff, lower, upper, p=0.045, verdict="pass"):
    return {"champion_version": "1", "roc_auc_diff": diff, "roc_auc_diff_ci_lower": lower,
            "roc_auc_diff_ci_upper": upper, "delong_p": p, "champion_verdict": verdict}


def test_a_higher_score_does_not_outweigh_a_shortcut():
    """The demo's challenger: AUC 1.00, significantly above the champion, its map outside the brain."""
    advice = recommend(verdict="review", verdict_reason=SHORTCUT, auc=1.0, auc_lower=1.0, auc_upper=1.0,
                       champion=champion(0.07, 0.004, 0.14))
    assert advice.action == REVIEW_FIRST
    assert advice.why.startswith("The checks found that 68% of the HiResCAM lies outside the brain")
    assert "do not promote it until a person has reviewed where it looks" in advice.why
    assert "It scores higher than the champion v1 (AUC difference +0.07, 95% CI +0.00 to +0.14, p = 0.045)" in advice.why
    assert advice.sentence.startswith("A person must review first: the checks found")


def test_each_rule_in_order():
    good = dict(verdict="pass", verdict_reason="", auc=0.93, auc_lower=0.85, auc_upper=0.99)
    assert recommend(**good).action == PROMOTE  # no champion: the checks passed, above chance
    assert "no champion to compare with" in recommend(**good).why
    failed = recommend(**good, gate="failed", gate_failures=["roc_auc_ci_lower>=0.9: roc_auc_ci_lower is 0.85"])
    assert failed.action == DO_NOT_PROMOTE and "roc_auc_ci_lower>=0.9" in failed.why
    chance = recommend(verdict="pass", verdict_reason="", auc=0.7, auc_lower=0.45, auc_upper=0.9)
    assert chance.action == DO_NOT_PROMOTE and "does not rule out chance" in chance.why
    worse = recommend(**good, champion=champion(-0.08, -0.15, -0.01, p=0.03))
    assert worse.action == DO_NOT_PROMOTE and "worse than the champion v1" in worse.why
    better = recommend(**good, champion=champion(0.05, 0.01, 0.09), gate="passed")
    assert better.action == PROMOTE and "the promotion gate passed" in better.why
    same = recommend(**good, champion=champion(0.01, -0.03, 0.05, p=0.6))
    assert same.action == REVIEW_FIRST and "not shown to separate AD from CN better" in same.why
    flagged = recommend(**good, champion=champion(0.01, -0.03, 0.05, p=0.6, verdict="review"))
    assert flagged.action == PROMOTE and "where the champion's did not" in flagged.why
    unknown = recommend(verdict="pass", verdict_reason="", auc=None)
    assert unknown.action == REVIEW_FIRST


def test_a_covariate_that_holds_every_scan_of_one_class_is_a_warning():
    table = pd.DataFrame({"label": ["AD"] * 4 + ["CN"] * 4, "site": ["clinic"] * 4 + ["A", "B", "A", "B"],
                          "sex": ["F", "M"] * 4})  # fmt: skip
    warnings = find_confounds(table, ["site", "sex"], "AD", "CN")
    assert warnings == ["Every AD scan has site = clinic, and no CN scan does: the data cannot tell the diagnosis "
                        "from the site."]
