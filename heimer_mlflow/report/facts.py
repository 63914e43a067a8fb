"""Page 1 of the report: a Model Facts page (after Sendak et al., npj Digit Med 2020: summary,
mechanism, validation and performance, uses and directions, warnings), filled from the
evaluation record alone: what the model outputs and for whom, the evaluation data in one line,
performance with intervals, the verdict with its decisive evidence, the comparison with the
champion, the gate's result, the recommendation for the registry (heimer_mlflow.decision, the
same sentence as the version's description) and the warnings a reviewer must not miss.

Typed data for the template (:class:`~heimer_mlflow.report.sections.ModelFacts`); every registry or manifest
value stays text (the template escapes).
"""

from __future__ import annotations

import math

import pandas as pd

from ..decision import interval, p_text, recommend
from ..i18n import N_, _, ngettext
from ..meta import CAM_NAMES, CONFIDENCE_PERCENT
from .sections import (
    CamComparison, ChampionSection, Checks, CohortSection, Counts, ModelFacts, PerformanceLine, Population, Recommendation,
)
from .text import fmt_ci, fmt_num, fmt_pct, fmt_value, recorded

# covariate names (lower case) that say where or when a scan was taken, or who it shows
SITE_COLUMNS = ("site", "site_id", "centre", "center", "scanner", "manufacturer", "institution")
DATE_COLUMNS = ("scan_date", "acquisition_date", "acq_date", "session_date", "visit_date", "exam_date", "date")
AGE_COLUMNS = ("age", "age_at_scan", "age_years")
SEX_COLUMNS = ("sex", "gender")
VERDICT_WORDS = {"pass": N_("pass"), "review": N_("review")}  # the recorded verdicts, as a sentence says them
# a subgroup with fewer scans than this, or fewer of either class than MIN_SUBGROUP_CLASS, is too small to judge
MIN_SUBGROUP = 20
MIN_SUBGROUP_CLASS = 5


def _column(predictions, names) -> str | None:
    if predictions is None:
        return None
    by_lower = {str(c).strip().lower(): c for c in predictions.columns}
    return next((by_lower[n] for n in names if n in by_lower), None)


def _numbers(series):
    values = pd.to_numeric(series, errors="coerce")
    return values[values.apply(lambda v: math.isfinite(v) if v == v else False)]


def _population(predictions, positive: str, negative: str, n: Counts) -> Population:
    """Who the evaluation data show: counts per class, age, sex, sites, dates (when recorded)."""
    out = {"counts": _("{n_positive} {positive}, {n_negative} {negative}").format(
        n_positive=n.n_positive, positive=positive, n_negative=n.n_negative, negative=negative)}
    if (age := _column(predictions, AGE_COLUMNS)) is not None:
        ages = _numbers(predictions[age])
        if len(ages):
            out["age"] = _("age {low} to {high} years (median {median})").format(
                low=f"{ages.min():.0f}", high=f"{ages.max():.0f}", median=f"{ages.median():.0f}")
            out["age_range"] = (float(ages.min()), float(ages.max()))
    if (sex := _column(predictions, SEX_COLUMNS)) is not None:
        counts = predictions[sex].dropna().astype(str).value_counts()
        out["sex"] = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    if (site := _column(predictions, SITE_COLUMNS)) is not None:
        values = sorted(predictions[site].dropna().astype(str).unique())
        out["n_sites"], out["site_column"] = len(values), str(site)
        out["sites"] = ", ".join(values[:6]) + (" " + _("and {n} more").format(
            n=len(values) - 6) if len(values) > 6 else "")
    if (date := _column(predictions, DATE_COLUMNS)) is not None:
        dates = pd.to_datetime(predictions[date], errors="coerce").dropna()
        if len(dates):
            out["dates"] = _("scanned {first} to {last}").format(
                first=f"{dates.min():%Y-%m-%d}", last=f"{dates.max():%Y-%m-%d}")
    return Population(**out)


def _data_line(cohort: CohortSection, n: Counts, population: Population) -> str:
    scans = (_("{n} scans of {participants} participants").format(n=n.n_subjects, participants=n.n_participants)
             if n.clustered else _("{n} scans").format(n=n.n_subjects))
    parts = [f"{scans} ({population.counts})"]
    if population.n_sites:
        parts.append(ngettext("from {n} site ({sites})", "from {n} sites ({sites})", population.n_sites).format(
            n=population.n_sites, sites=population.sites))
    else:
        parts.append(_("sites not recorded"))
    parts.append(population.dates or _("scan dates not recorded"))
    if cohort.n_excluded not in ("-", "0"):
        parts.append(_("{n} excluded").format(n=cohort.n_excluded))
    return "; ".join(parts) + ". " + _("Source: {source}.").format(source=cohort.source)


def _evidence(record, checks: Checks, cam: CamComparison) -> tuple[str, ...]:
    """The verdict's decisive evidence: each check with its number and limit, the failed first."""
    verdict = record.verdict
    lines = []
    outside = verdict.check("outside_brain")
    if outside is not None and outside.value is not None:
        lines.append((outside.passed is False, _("{share} of the {cam} lies outside the brain (limit {limit})").format(
            share=fmt_pct(outside.value), cam=cam.name, limit=fmt_pct(outside.limit))))
    gain = verdict.check("region_gain")
    if gain is not None and gain.value is not None:
        best = max(checks.gains, key=lambda g: float(g.gain) if g.gain != _("n/a") else -1, default=None)
        where = f" ({best.region})" if best else ""
        lines.append((gain.passed is False, _("largest region gain {gain}{where} (needs above {limit})").format(
            gain=fmt_num(gain.value, 1), where=where, limit=fmt_num(gain.limit, 0))))
    elif gain is not None:
        lines.append((False, _("region gains not assessed (no atlas)")))
    sanity = verdict.check("sanity")
    if sanity is not None and sanity.value is not None:
        lines.append((sanity.passed is False, _("maps of a randomised copy correlate {rho} with the trained model's "
                                                "(limit {limit})").format(rho=fmt_num(sanity.value, 2),
                                                                          limit=fmt_num(sanity.limit, 1))))
    lines.sort(key=lambda item: not item[0])
    return tuple(text for _, text in lines)


def _warnings(predictions, metrics, cohort: CohortSection, population: Population, positive: str, negative: str,
              cam: CamComparison, overall_auc) -> tuple[str, ...]:
    out = [_("Research use only: not a diagnostic device; its output must not be used to diagnose, treat or manage "
             "any person.")]
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
        shown = "; ".join(small[:6]) + ("; " + _("and {n} more").format(n=len(small) - 6) if len(small) > 6 else "")
        out.append(_("Subgroups too small to judge (fewer than {n} scans or {n_class} of a class): {shown}.").format(
            n=MIN_SUBGROUP, n_class=MIN_SUBGROUP_CLASS, shown=shown))
    if population.n_sites is None:
        out.append(_("The data do not record sites or scanners: how the model does on other sites is unknown."))
    elif population.n_sites == 1:
        out.append(_("All scans come from one site ({site}): other sites and scanners are untested.").format(
            site=population.sites))
    else:
        out.append(_("Sites and scanners other than these {n} are untested.").format(n=population.n_sites))
    if population.age_range is None:
        out.append(_("The data do not record age: how the model does at different ages is unknown."))
    else:
        low, high = population.age_range
        out.append(_("No one younger than {low} or older than {high} was in the data.").format(low=f"{low:.0f}",
                                                                                               high=f"{high:.0f}"))
    confounds = find_confounds(predictions, list(cohort.covariates), positive, negative)
    out += confounds
    if overall_auc is not None and overall_auc >= 0.99:
        out.append(_("An AUC of {auc} on a clinical task is itself a reason to look for a shortcut.").format(
            auc=f"{overall_auc:.2f}"))
    if cam.disagree:
        out.append(_("Grad-CAM and HiResCAM disagree for this model: trust HiResCAM (Explainability section)."))
    if cohort.n_excluded not in ("-", "0"):
        out.append(_("{n} scans were excluded and are not in these figures (Data section).").format(
            n=cohort.n_excluded))
    return tuple(out)


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
                out.append(_("Every {cls} scan has {column} = {value}, and no {other} scan does: the data cannot tell "
                             "the diagnosis from the {column}.").format(cls=cls, column=column, value=of_cls[0],
                                                                        other=other))
                break
    return out


def build_facts(*, record, metrics, predictions, cohort: CohortSection, n: Counts, positive: str, negative: str,
                threshold: str, checks: Checks, cam: CamComparison, champion: ChampionSection,
                gate: dict | None) -> ModelFacts:
    """The Model Facts page's content (see the module's docstring)."""
    auc = metrics.overall.estimates.get("roc_auc")
    population = _population(predictions, positive, negative, n)
    who = "; ".join(p for p in (population.counts, population.age,
                                population.sex and _("sex {counts}").format(counts=population.sex)) if p)
    # the reason in the report's language (context._reason_in_language), the recorded one else
    compared = record.comparison if champion.available else None
    advice = recommend(verdict=record.verdict.result, verdict_reason=checks.verdict_reason or record.verdict.reason,
                       auc=auc.value if auc else None, auc_lower=auc.lower if auc else None,
                       auc_upper=auc.upper if auc else None, champion=compared.to_dict() if compared else None,
                       gate=(gate or {}).get("status") if (gate or {}).get("rules") else None,
                       gate_failures=(gate or {}).get("failures") or ())
    return ModelFacts(
        output=_("The probability that a 3D T1-weighted brain MRI shows {positive} rather than {negative}; a scan "
                 "is called {positive} at a probability of {threshold} or more.").format(
            positive=positive, negative=negative, threshold=threshold),
        intended_use=_("Research on telling Alzheimer's disease from cognitively normal ageing on brain MRI "
                       "preprocessed like the model's training data; not for diagnosis or any decision about a person."),
        population=who, population_detail=population, data_line=_data_line(cohort, n, population),
        performance=_performance(metrics.overall.estimates), evidence=_evidence(record, checks, cam),
        comparison=_comparison_line(compared, champion), gate=_gate_line(gate),
        recommendation=Recommendation(advice.action, advice.words, advice.why, advice.sentence,
                                      advice.action.replace(" ", "-")),
        warnings=_warnings(predictions, metrics, cohort, population, positive, negative, cam,
                           auc.value if auc and auc.computable else None),
    )


def _performance(estimates) -> tuple[PerformanceLine, ...]:
    lines = []
    for key, label in (("roc_auc", "AUC"), ("sensitivity", _("Sensitivity")), ("specificity", _("Specificity")),
                       ("balanced_accuracy", _("Balanced accuracy"))):
        est = estimates.get(key)
        if est is not None and est.computable:
            ci = fmt_ci(est, key)
            lines.append(PerformanceLine(label, fmt_value(est.value, key), "" if ci == "-" else _(
                "{level}% CI {ci}").format(level=CONFIDENCE_PERCENT, ci=ci)))
        else:
            lines.append(PerformanceLine(label, _("not computable"), recorded(est.reason) if est else ""))
    return tuple(lines)


def _comparison_line(c, champion: ChampionSection) -> str:
    """The comparison with the champion in one sentence: the AUC difference, DeLong's p, the
    champion's verdict (``c``: the record's comparison, None when there is none)."""
    if c is None:
        return _("No champion to compare with: {why}").format(why=champion.why.split(": ", 1)[-1])
    if c.roc_auc_diff is None:
        return _("Champion v{version}: no AUC difference ({note}).").format(
            version=c.champion_version, note=c.note or _("not computable"))
    said = (_("This version scores higher than the champion v{version}") if (c.roc_auc_diff_ci_lower or 0) > 0 else
            _("This version scores lower than the champion v{version}") if (c.roc_auc_diff_ci_upper or 0) < 0 else
            _("This version is not shown to score differently from the champion v{version}"))
    champion_verdict = _(VERDICT_WORDS[c.champion_verdict]) if c.champion_verdict in VERDICT_WORDS else (
        c.champion_verdict or _("not recorded"))
    if c.champion_cam_outside_brain_fraction is not None:
        champion_verdict += " " + _("({share} of its {map} outside the brain)").format(
            share=fmt_pct(c.champion_cam_outside_brain_fraction), map=CAM_NAMES.get(c.champion_cam_method) or _("map"))
    return said.format(version=c.champion_version) + ": " + _(
        "AUC difference {diff}, DeLong p = {p}, on {n} shared scans. The champion's verdict: {verdict}.").format(
        diff=interval(c.roc_auc_diff, c.roc_auc_diff_ci_lower, c.roc_auc_diff_ci_upper, signed=True),
        p=p_text(c.delong_p), n=c.n_shared, verdict=champion_verdict)


def _gate_line(gate: dict | None) -> str:
    if gate is None:
        return _("Not judged in this rendering.")
    if not gate.get("rules"):
        return _("No promotion rules were given.")
    if gate.get("status") == "passed":
        return _("Passed: {rules}.").format(rules=gate["rules"])
    return _("Failed: {failures} (rules: {rules}).").format(failures="; ".join(gate.get("failures") or []),
                                                            rules=gate["rules"])
