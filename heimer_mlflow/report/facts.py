"""Page 1 of the report: a Model Facts page (after Sendak et al., npj Digit Med 2020: summary,
mechanism, validation and performance, uses and directions, warnings), filled from the
evaluation record alone: what the model outputs and for whom, the evaluation data in one line,
performance with intervals, the verdict with its decisive evidence, the comparison with the
champion, the gate's result, the recommendation for the registry (heimer_mlflow.decision, the
same sentence as the version's description) and the warnings a reviewer must not miss.

Plain data for the template; every registry or manifest value stays text (the template escapes).
"""

from __future__ import annotations

import math

from ..decision import interval, p_text, recommend
from ..meta import CAM_NAMES
from .text import fmt_ci, fmt_num, fmt_pct, fmt_value

# covariate names (lower case) that say where or when a scan was taken, or who it shows
SITE_COLUMNS = ("site", "site_id", "centre", "center", "scanner", "manufacturer", "institution")
DATE_COLUMNS = ("scan_date", "acquisition_date", "acq_date", "session_date", "visit_date", "exam_date", "date")
AGE_COLUMNS = ("age", "age_at_scan", "age_years")
SEX_COLUMNS = ("sex", "gender")
# a subgroup with fewer scans than this, or fewer of either class than MIN_SUBGROUP_CLASS, is too small to judge
MIN_SUBGROUP = 20
MIN_SUBGROUP_CLASS = 5


def _column(predictions, names) -> str | None:
    if predictions is None:
        return None
    by_lower = {str(c).strip().lower(): c for c in predictions.columns}
    return next((by_lower[n] for n in names if n in by_lower), None)


def _numbers(series):
    import pandas as pd

    values = pd.to_numeric(series, errors="coerce")
    return values[values.apply(lambda v: math.isfinite(v) if v == v else False)]


def _population(predictions, positive: str, negative: str, n: dict) -> dict:
    """Who the evaluation data show: counts per class, age, sex, sites, dates (when recorded)."""
    out = {"counts": f"{n['n_positive']} {positive}, {n['n_negative']} {negative}", "age": None, "sex": None,
           "sites": None, "n_sites": None, "site_column": None, "dates": None, "age_range": None}
    if (age := _column(predictions, AGE_COLUMNS)) is not None:
        ages = _numbers(predictions[age])
        if len(ages):
            out["age"] = f"age {ages.min():.0f} to {ages.max():.0f} years (median {ages.median():.0f})"
            out["age_range"] = (float(ages.min()), float(ages.max()))
    if (sex := _column(predictions, SEX_COLUMNS)) is not None:
        counts = predictions[sex].dropna().astype(str).value_counts()
        out["sex"] = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    if (site := _column(predictions, SITE_COLUMNS)) is not None:
        values = sorted(predictions[site].dropna().astype(str).unique())
        out["n_sites"], out["site_column"] = len(values), str(site)
        out["sites"] = ", ".join(values[:6]) + (f" and {len(values) - 6} more" if len(values) > 6 else "")
    if (date := _column(predictions, DATE_COLUMNS)) is not None:
        import pandas as pd

        dates = pd.to_datetime(predictions[date], errors="coerce").dropna()
        if len(dates):
            out["dates"] = f"scanned {dates.min():%Y-%m-%d} to {dates.max():%Y-%m-%d}"
    return out


def _data_line(cohort: dict, n: dict, population: dict) -> str:
    scans = f"{n['n_subjects']} scans" + (f" of {n['n_participants']} participants" if n["clustered"] else "")
    parts = [f"{scans} ({population['counts']})"]
    if population["n_sites"]:
        parts.append(f"from {population['n_sites']} site{'s' if population['n_sites'] != 1 else ''} "
                     f"({population['sites']})")
    else:
        parts.append("sites not recorded")
    parts.append(population["dates"] or "scan dates not recorded")
    excluded = cohort.get("n_excluded")
    if excluded not in (None, "-", "0"):
        parts.append(f"{excluded} excluded")
    return "; ".join(parts) + f". Source: {cohort['source']}."


def _evidence(record, checks: dict, cam: dict, numbers: dict) -> list[str]:
    """The verdict's decisive evidence: each check with its number and limit, the failed first."""
    verdict = record.verdict
    lines = []
    outside = verdict.check("outside_brain")
    if outside is not None and outside.value is not None:
        lines.append((outside.passed is False, f"{fmt_pct(outside.value)} of the {cam['name']} lies outside the brain "
                                               f"(limit {fmt_pct(outside.limit)})"))
    gain = verdict.check("region_gain")
    if gain is not None and gain.value is not None:
        best = max(checks.get("gains") or [], key=lambda g: float(g["gain"]) if g["gain"] != "n/a" else -1,
                   default=None)
        where = f" ({best['region']})" if best else ""
        lines.append((gain.passed is False, f"largest region gain {fmt_num(gain.value, 1)}{where} (needs above "
                                            f"{fmt_num(gain.limit, 0)})"))
    elif gain is not None:
        lines.append((False, "region gains not assessed (no atlas)"))
    sanity = verdict.check("sanity")
    if sanity is not None and sanity.value is not None:
        lines.append((sanity.passed is False, f"maps of a randomised copy correlate {fmt_num(sanity.value, 2)} with the "
                                              f"trained model's (limit {fmt_num(sanity.limit, 1)})"))
    lines.sort(key=lambda item: not item[0])
    return [text for _, text in lines]


def _warnings(predictions, metrics, cohort: dict, population: dict, positive: str, negative: str, cam: dict,
              overall_auc) -> list[str]:  # fmt: skip
    out = ["Research use only: not a diagnostic device; its output must not be used to diagnose, treat or manage "
           "any person."]
    small = []
    for row in metrics.subgroups:
        g = row.metrics
        if g.n_subjects is None:
            continue
        if g.n_subjects < MIN_SUBGROUP or min(g.n_positive or 0, g.n_negative or 0) < MIN_SUBGROUP_CLASS:
            named = f"{row.covariate} {row.group}" if row.group[:1] in "<>" else f"{row.covariate} = {row.group}"
            small.append(f"{named} ({g.n_subjects or 0}: {g.n_positive or 0} {positive}, "
                         f"{g.n_negative or 0} {negative})")
    if small:
        shown = "; ".join(small[:6]) + (f"; and {len(small) - 6} more" if len(small) > 6 else "")
        out.append(f"Subgroups too small to judge (fewer than {MIN_SUBGROUP} scans or {MIN_SUBGROUP_CLASS} of a "
                   f"class): {shown}.")
    if population["n_sites"] is None:
        out.append("The data do not record sites or scanners: how the model does on other sites is unknown.")
    elif population["n_sites"] == 1:
        out.append(f"All scans come from one site ({population['sites']}): other sites and scanners are untested.")
    else:
        out.append(f"Sites and scanners other than these {population['n_sites']} are untested.")
    if population["age_range"] is None:
        out.append("The data do not record age: how the model does at different ages is unknown.")
    else:
        low, high = population["age_range"]
        out.append(f"No one younger than {low:.0f} or older than {high:.0f} was in the data.")
    confounds = find_confounds(predictions, cohort.get("covariates") or [], positive, negative)
    out += confounds
    if overall_auc is not None and overall_auc >= 0.99:
        out.append(f"An AUC of {overall_auc:.2f} on a clinical task is itself a reason to look for a shortcut.")
    if cam.get("disagree"):
        out.append("Grad-CAM and HiResCAM disagree for this model: trust HiResCAM (Explainability section).")
    if cohort.get("n_excluded") not in (None, "-", "0"):
        out.append(f"{cohort['n_excluded']} scans were excluded and are not in these figures (Data section).")
    return out


def find_confounds(predictions, covariates: list[str], positive: str, negative: str) -> list[str]:
    """A categorical covariate with a value that holds every scan of one class and none of the
    other (e.g. every AD scan from one site): the classes can be told apart by it alone."""
    if predictions is None or "label" not in predictions:
        return []
    out = []
    labels = predictions["label"].astype(str)
    for column in covariates:
        if column not in predictions.columns:
            continue
        values = predictions[column]
        if values.nunique(dropna=True) < 2 or values.nunique(dropna=True) > 20:
            continue
        for cls, other in ((positive, negative), (negative, positive)):
            of_cls = values[labels == cls].dropna().astype(str).unique()
            if len(of_cls) == 1 and not (values[labels == other].astype(str) == of_cls[0]).any():
                out.append(f"Every {cls} scan has {column} = {of_cls[0]}, and no {other} scan does: the data cannot "
                           f"tell the diagnosis from the {column}.")
                break
    return out


def build_facts(*, record, metrics, predictions, cohort: dict, n: dict, positive: str, negative: str,
                threshold: str, checks: dict, cam: dict, champion: dict, numbers: dict, gate: dict | None) -> dict:
    """The Model Facts page's content (see the module's docstring)."""
    overall = metrics.overall.estimates
    auc = overall.get("roc_auc")
    performance = []
    for key, label in (("roc_auc", "AUC"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
                       ("balanced_accuracy", "Balanced accuracy")):
        est = overall.get(key)
        if est is not None and est.computable:
            ci = fmt_ci(est, key)
            performance.append({"label": label, "value": fmt_value(est.value, key),
                                "ci": "" if ci == "-" else f"95% CI {ci}"})
        else:
            performance.append({"label": label, "value": "not computable", "ci": est.reason if est else ""})
    population = _population(predictions, positive, negative, n)
    who = "; ".join(p for p in (population["counts"], population["age"], population["sex"] and f"sex {population['sex']}")
                    if p)  # fmt: skip
    comparison = None
    champion_dict = None
    if champion.get("available") and champion.get("recorded"):
        c = record.comparison
        champion_dict = c.to_dict() if c is not None else None
        if c is not None and c.roc_auc_diff is not None:
            direction = ("higher" if (c.roc_auc_diff_ci_lower or 0) > 0 else "lower" if (c.roc_auc_diff_ci_upper or 0) < 0
                         else "not shown to differ")  # fmt: skip
            said = {"higher": "scores higher than", "lower": "scores lower than",
                    "not shown to differ": "is not shown to score differently from"}[direction]
            comparison = (f"This version {said} the champion v{c.champion_version}: AUC difference "
                          f"{interval(c.roc_auc_diff, c.roc_auc_diff_ci_lower, c.roc_auc_diff_ci_upper, signed=True)}, "
                          f"DeLong p = {p_text(c.delong_p)}, on {c.n_shared} shared scans. The champion's verdict: "
                          f"{c.champion_verdict or 'not recorded'}"
                          + (f" ({fmt_pct(c.champion_cam_outside_brain_fraction)} of its "
                             f"{CAM_NAMES.get(c.champion_cam_method, 'map')} outside the brain)"
                             if c.champion_cam_outside_brain_fraction is not None else "") + ".")
        elif c is not None:
            comparison = f"Champion v{c.champion_version}: no AUC difference ({c.note or 'not computable'})."
    elif champion.get("available"):
        comparison = (f"Champion v{champion.get('version')}: AUC difference {champion.get('delta') or 'not computable'} "
                      "(found when this report was rendered).")
    else:
        comparison = "No champion to compare with: " + (champion.get("why") or "").split(": ", 1)[-1]
    if gate is None:
        gate_line = "Not judged in this rendering."
    elif not gate.get("rules"):
        gate_line = "No promotion rules were given."
    elif gate.get("status") == "passed":
        gate_line = f"Passed: {gate['rules']}."
    else:
        gate_line = f"Failed: {'; '.join(gate.get('failures') or [])} (rules: {gate['rules']})."
    advice = recommend(verdict=record.verdict.result, verdict_reason=record.verdict.reason,
                       auc=auc.value if auc else None, auc_lower=auc.lower if auc else None,
                       auc_upper=auc.upper if auc else None, champion=champion_dict,
                       gate=(gate or {}).get("status") if (gate or {}).get("rules") else None,
                       gate_failures=(gate or {}).get("failures") or ())  # fmt: skip
    return {
        "output": (f"The probability that a 3D T1-weighted brain MRI shows {positive} rather than {negative}; a scan is "
                   f"called {positive} at a probability of {threshold} or more."),
        "intended_use": ("Research on telling Alzheimer's disease from cognitively normal ageing on brain MRI "
                         "preprocessed like the model's training data; not for diagnosis or any decision about a person."),
        "population": who,
        "data_line": _data_line(cohort, n, population),
        "performance": performance,
        "evidence": _evidence(record, checks, cam, numbers),
        "comparison": comparison,
        "gate": gate_line,
        "recommendation": {"action": advice.action, "words": advice.words, "why": advice.why, "sentence": advice.sentence,
                           "css": advice.action.replace(" ", "-")},
        "warnings": _warnings(predictions, metrics, cohort, population, positive, negative, cam,
                              auc.value if auc and auc.computable else None),
        "population_detail": population,
    }
