"""The template context: an evaluation run's artifact folder read into plain data (strings and
numbers) for ``templates/report.html.j2``.

``evaluation.json`` is read as the typed record (:mod:`heimer_mlflow.record`) and ``metrics.json``
as its ``MetricsRecord``; the verdict and its checks are shown as the record says they were
applied, with the limits of the time. Every piece is optional: a missing or unreadable one becomes
a note in the report, never a failed render; only a record newer than this code stops the render,
in one line.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from pathlib import Path

from markupsafe import Markup

from ..champion import TABLE_METRICS
from ..i18n import N_, _, current_language, pgettext
from ..meta import CAM_NAMES, CONFIDENCE_PERCENT, DEFAULT_CLASS_NAMES, N_BOOTSTRAP, negative_class
from ..metrics import Estimate
from ..record import EvaluationRecord, MetricsRecord, estimate
from .checklist import build_checklist
from .facts import build_facts
from .text import (
    CAM_EXPLAINED, EXTRA_FIGURE_SIZE, FIGURE_SECTIONS, FIGURES, GLOSSARY, MAX_TAGS, METRIC_LABELS, clip, fmt_ci,
    fmt_est, fmt_num, fmt_pct, fmt_value, recorded, text,
)  # fmt: skip

log = logging.getLogger(__name__)

REPORT_ARTIFACTS = ("evaluation.json", "metrics.json", "predictions.csv", "exclusions.csv")
# The two maps disagree (one of them is unreliable for this architecture) when their rank agreement
# inside the brain is below MIN_CAM_AGREEMENT or their mean outside-brain shares differ by more than
# MAX_OUTSIDE_SHARE_GAP. Advice on which map to trust, not part of the verdict.
MIN_CAM_AGREEMENT = 0.5
MAX_OUTSIDE_SHARE_GAP = 0.20

# how an interval was obtained, as the report names it (Obuchowski's method is DeLong's for clusters)
METHOD_NAMES = {"obuchowski": "clustered DeLong"}
# the record's model.serialization, for the model identity table
SERIALIZATION_TEXT = {
    "pt2": N_("pt2 (a torch.export program: loading it ran no code from the model file)"),
    "pickle": N_("pickle (the module object: loading it ran code named in the model file)"),
}
SERIALIZATION_UNKNOWN = N_("not recorded (evaluated before it was)")


# --------------------------------------------------------------------------------------------
# Reading the artifact folder (every piece optional: a missing piece becomes a note)
# --------------------------------------------------------------------------------------------


def read_json(path: Path, problems: list[str]) -> dict:
    if not path.is_file():
        problems.append(_("{name} is missing").format(name=path.name))
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        problems.append(_("{name} could not be read ({error})").format(name=path.name, error=type(error).__name__))
        return {}
    if not isinstance(data, dict):
        problems.append(_("{name} is not a JSON object").format(name=path.name))
        return {}
    return data


def read_record(artifact_dir: Path, problems: list[str], *, where: str) -> EvaluationRecord:
    """The folder's evaluation record (an empty one, with a note, when it cannot be read)."""
    return EvaluationRecord.from_dict(read_json(Path(artifact_dir) / "evaluation.json", problems), where=where)


def read_csv(path: Path, problems: list[str], *, required: bool = True):
    import pandas as pd

    if not path.is_file():
        if required:
            problems.append(_("{name} is missing").format(name=path.name))
        return None
    try:
        return pd.read_csv(path, dtype={"subject_id": str}, keep_default_na=False, na_values=[""])
    except Exception as error:  # noqa: BLE001 - any unreadable table becomes a note
        problems.append(_("{name} could not be read ({error})").format(name=path.name, error=type(error).__name__))
        return None


# --------------------------------------------------------------------------------------------
# Building the template context
# --------------------------------------------------------------------------------------------


def _document_time(record: EvaluationRecord, created: _dt.datetime | None, evaluation_path: Path) -> _dt.datetime:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        try:
            return _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
        except (ValueError, OverflowError, OSError):
            log.warning("ignoring SOURCE_DATE_EPOCH=%r (not an integer)", epoch)
    if created is not None:
        return created if created.tzinfo else created.replace(tzinfo=_dt.timezone.utc)
    if record.evaluated_at:
        try:
            stamp = _dt.datetime.fromisoformat(record.evaluated_at.replace("Z", "+00:00"))
            return stamp if stamp.tzinfo else stamp.replace(tzinfo=_dt.timezone.utc)
        except ValueError:
            pass
    try:
        return _dt.datetime.fromtimestamp(int(evaluation_path.stat().st_mtime), _dt.timezone.utc)
    except OSError:
        return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def _metric_rows(estimates: dict[str, Estimate], not_computable: list[tuple[str, str]]) -> list[dict]:
    rows = []
    order = [*METRIC_LABELS, *sorted(k for k in estimates if k not in METRIC_LABELS)]
    for name in order:
        if name not in estimates:
            continue
        est = estimates[name]
        label, meaning = METRIC_LABELS.get(name, (name.replace("_", " ").capitalize(), ""))
        rows.append({
            "name": name, "label": _(label), "meaning": _(meaning) if meaning else "", "computable": est.computable,
            "value": fmt_value(est.value, name, digits=3 if name in ("brier_score", "expected_calibration_error") else 2),
            "ci": fmt_ci(est, name), "method": METHOD_NAMES.get(est.method, est.method or "-"), "reason": "" if est.computable else recorded(est.reason),
        })  # fmt: skip
    listed = {row["name"] for row in rows}
    for name, reason in not_computable:
        if name not in listed:
            rows.append({"name": name, "label": _(METRIC_LABELS.get(name, (name, ""))[0]), "meaning": "",
                         "computable": False, "value": _("n/a"), "ci": "-", "method": "-", "reason": recorded(reason)})
    return rows


def _covariate_counts(predictions, covariates: list[str], class_names: tuple[str, str]) -> list[dict]:
    """Subjects per class in each subgroup (the same groups as the subgroup results)."""
    if predictions is None or "label" not in predictions:
        return []
    present = [c for c in covariates if c in predictions.columns]
    if not present:
        return []
    try:
        from ..metrics import subgroup_masks

        groups = subgroup_masks(predictions[present].reset_index(drop=True))
    except Exception:  # noqa: BLE001 - fall back to plain values
        groups = [(c, str(v), (predictions[c] == v).to_numpy()) for c in present
                  for v in sorted(predictions[c].dropna().unique(), key=str)]
    labels = predictions["label"].astype(str).to_numpy()
    rows = []
    for covariate, group, mask in groups:
        counts = {name: int(((labels == name) & mask).sum()) for name in class_names}
        rows.append({"covariate": str(covariate), "group": str(group), "counts": counts, "n": int(mask.sum())})
    return rows


def _subgroup_rows(metrics: MetricsRecord) -> list[dict]:
    return [{"covariate": row.covariate, "group": row.group, "n": text(row.metrics.n_subjects),
             "n_positive": text(row.metrics.n_positive), "n_negative": text(row.metrics.n_negative),
             **{key: fmt_est(row.metrics.estimates.get(name), name)
                for key, name in (("auc", "roc_auc"), ("sensitivity", "sensitivity"), ("specificity", "specificity"))}}
            for row in metrics.subgroups]  # fmt: skip


def _exclusion_rows(exclusions, record: EvaluationRecord) -> list[dict]:
    if exclusions is not None and len(exclusions):
        rows = exclusions.astype(object).where(exclusions.notna(), None).to_dict("records")
    else:
        rows = record.cohort.excluded
    return [{key: text(row.get(key)) for key in ("subject_id", "path", "reason")} for row in rows]


def _scores(predictions, positive: str):
    """(subject_id, y in {0, 1}, score) arrays from a predictions table, or None."""
    import numpy as np

    if predictions is None or not {"subject_id", "label"} <= set(predictions.columns):
        return None
    column = f"prob_{positive}" if f"prob_{positive}" in predictions.columns else next(
        (c for c in predictions.columns if c.startswith("prob_")), None)
    if column is None:
        return None
    frame = predictions[["subject_id", "label", column]].dropna()
    y = (frame["label"].astype(str) == positive).astype(int).to_numpy()
    return frame["subject_id"].astype(str).to_numpy(), y, frame[column].astype(float).to_numpy(np.float64)


def _table_rows(this: dict[str, Estimate], champion: dict[str, Estimate]) -> list[dict]:
    return [{"label": _(METRIC_LABELS[name][0]), "this": fmt_est(this.get(name), name),
             "champion": fmt_est(champion.get(name), name)}
            for name in TABLE_METRICS if name in this or name in champion]  # fmt: skip


def _delta(est: Estimate | None) -> dict:
    """The AUC difference for the template: in words, and its value and interval as numbers."""
    if est is None:
        return {"delta": None, "delta_value": None, "delta_lower": None, "delta_upper": None}
    return {"delta": fmt_est(est, "roc_auc_delta"), "delta_value": est.value, "delta_lower": est.lower,
            "delta_upper": est.upper}  # fmt: skip


def _comparison_context(record: EvaluationRecord, champion, metrics: MetricsRecord, predictions, positive,
                        class_names) -> dict:  # fmt: skip
    """The recorded comparison (evaluations since it was recorded, also when there was none); for
    older records, one found at render time (``champion``)."""
    if not record.comparison_recorded:
        return _champion_context(champion, metrics, predictions, positive, class_names)
    if record.comparison is None:
        if record.comparison_note:  # what the evaluation found, in its words
            return {"available": False, "why": _("No champion to compare with: {note}.").format(
                note=record.comparison_note)}
        return {"available": False,
                "why": _("No champion to compare with: when this evaluation ran, no other version of this model "
                         "carried the alias 'champion' with an evaluation on the same data set.")}
    c = record.comparison
    champion_estimates = {k: e for k, e in ((k, estimate(v)) for k, v in c.champion_estimates.items()) if e is not None}
    difference = None
    if c.roc_auc_diff is not None:
        difference = Estimate(c.roc_auc_diff, c.roc_auc_diff_ci_lower, c.roc_auc_diff_ci_upper)
    return {
        "available": True, "recorded": True, "version": c.champion_version or "-", "run_id": c.champion_run_id or "-",
        "rows": _table_rows(metrics.overall.estimates, champion_estimates), "n_matched": c.n_shared,
        "note": c.note, "method": _("DeLong's test for paired AUCs"), **_delta(difference),
        "p": None if c.delong_p is None else (f"{c.delong_p:.2g}" if c.delong_p >= 0.001 else "< 0.001"),
        "p_value": c.delong_p, "champion_verdict": c.champion_verdict or "not recorded",
        "champion_verdict_word": verdict_word(c.champion_verdict) if c.champion_verdict else _("not recorded"),
        "champion_reason": c.champion_verdict_reason, "champion_map": CAM_NAMES.get(c.champion_cam_method, "Grad-CAM"),
        "champion_outside": fmt_pct(c.champion_cam_outside_brain_fraction, 1)
        if c.champion_cam_outside_brain_fraction is not None else None,
    }  # fmt: skip


def _champion_context(champion, this: MetricsRecord, predictions, positive: str, class_names) -> dict:
    """The comparison found at render time, for records from before evaluations recorded theirs.
    ``champion``: ``{"version", "metrics": its metrics.json dict, "predictions": its table}``."""
    if not isinstance(champion, dict) or not champion:
        return {"available": False,
                "why": _("No champion to compare with: no other version of this model carries the alias "
                         "'champion' with an evaluation on the same data set.")}
    other = MetricsRecord.from_dict(champion.get("metrics"))
    difference, n_matched, note = None, 0, ""
    mine, theirs = _scores(predictions, positive), _scores(champion.get("predictions"), positive)
    if mine is None or theirs is None:
        note = _("The paired comparison needs both models' per-subject predictions; one is missing.")
    else:
        import numpy as np

        ids_a, y_a, s_a = mine
        ids_b, y_b, s_b = theirs
        index_b = {sid: i for i, sid in enumerate(ids_b)}
        pairs = [(i, index_b[sid]) for i, sid in enumerate(ids_a) if sid in index_b and y_b[index_b[sid]] == y_a[i]]
        n_matched = len(pairs)
        if n_matched:
            ia, ib = (np.array(p) for p in zip(*pairs))
            try:
                from ..metrics import paired_delta_auc

                clusters = None
                if "participant_id" in predictions.columns:  # scans of one participant resampled together
                    of = dict(zip(predictions["subject_id"].astype(str), predictions["participant_id"].astype(str)))
                    clusters = [of[sid] for sid in ids_a[ia]]
                difference = paired_delta_auc(y_a[ia], s_a[ia], s_b[ib], n_bootstrap=this.n_bootstrap or N_BOOTSTRAP,
                                              seed=this.seed or 0, class_names=tuple(class_names),
                                              clusters=clusters)  # fmt: skip
            except Exception as error:  # noqa: BLE001 - a comparison problem must not stop the report
                note = _("The paired comparison could not be computed ({error}).").format(
                    error=f"{type(error).__name__}: {error}")
        else:
            note = _("No subject appears in both evaluations with the same label.")
    return {"available": True, "recorded": False, "method": _("paired bootstrap"), "p": None,
            "version": text(champion.get("version")), "rows": _table_rows(this.overall.estimates, other.overall.estimates),
            "n_matched": n_matched, "n_this": 0 if mine is None else len(mine[0]), "note": note,
            **_delta(difference)}  # fmt: skip


def _cohort_mean(numbers: dict[str, float], predictions, name: str) -> tuple[float | None, int]:
    """(mean, subjects with a value) of a per-subject number: the logged summary, else the
    predictions table's column."""
    values = None
    if predictions is not None and name in predictions.columns:
        import pandas as pd

        values = pd.to_numeric(predictions[name], errors="coerce").dropna()
        values = values[values.apply(math.isfinite)]
    summary = numbers.get(name)
    if summary is not None:
        return summary, len(values) if values is not None else 0
    if values is not None and len(values):
        return float(values.mean()), len(values)
    return None, 0


def _cam_context(method: str, numbers: dict[str, float], predictions) -> dict:
    """The primary map's name and the two maps side by side: mean outside-brain shares, their
    agreement, and whether (and why) they disagree."""
    other = "hirescam" if method == "gradcam" else "gradcam"
    shares = {m: _cohort_mean(numbers, predictions, f"{m}_outside_brain_fraction")[0] for m in CAM_NAMES}
    agreement, n_agreement = _cohort_mean(numbers, predictions, "cam_method_agreement")
    both = all(v is not None for v in shares.values())
    reasons = []
    if agreement is not None and agreement < MIN_CAM_AGREEMENT:
        reasons.append(_("their rank agreement inside the brain is {agreement}, below {limit}").format(
            agreement=f"{agreement:.2f}", limit=f"{MIN_CAM_AGREEMENT:.1f}"))
    gap = abs(shares["gradcam"] - shares["hirescam"]) if both else None
    if gap is not None and gap > MAX_OUTSIDE_SHARE_GAP:
        reasons.append(_("Grad-CAM puts {gradcam}% of its map outside the brain and HiResCAM {hirescam}%, a gap of "
                         "{gap} percentage points (more than {limit})").format(
            gradcam=f"{shares['gradcam'] * 100:.0f}", hirescam=f"{shares['hirescam'] * 100:.0f}", gap=f"{gap * 100:.0f}",
            limit=f"{MAX_OUTSIDE_SHARE_GAP * 100:.0f}"))
    if agreement is None and both:
        agreement_text = _("not computable: for every subject one of the maps is constant inside the brain "
                           "(for example all zero)")
    elif agreement is None:
        agreement_text = _("not recorded")
    else:
        agreement_text = fmt_num(agreement, 2) + (
            " " + _("(mean over {n} subjects)").format(n=n_agreement) if n_agreement else "")
    return {
        "method": method, "name": CAM_NAMES[method], "other": other, "other_name": CAM_NAMES[other],
        "explained": [_(CAM_EXPLAINED["gradcam"]), _(CAM_EXPLAINED["hirescam"])],
        "compared": both or agreement is not None,
        "rows": [{"name": CAM_NAMES[m], "primary": m == method, "outside": fmt_pct(shares[m], 1)} for m in CAM_NAMES],
        "primary_outside": fmt_pct(shares[method], 1),
        "agreement": agreement_text, "min_agreement": f"{MIN_CAM_AGREEMENT:.1f}",
        "max_gap": f"{MAX_OUTSIDE_SHARE_GAP * 100:.0f}",
        "disagree": bool(reasons), "reasons": reasons, "agreement_known": agreement is not None,
        "verdict_on_gradcam": bool(reasons) and method == "gradcam",
    }


def _checks_context(record: EvaluationRecord, numbers: dict[str, float], sanity_mean: float | None) -> dict:
    """The plausibility checks as applied: each number against the limit the record says was used
    (an older record: the limits every evaluation used then), whatever today's defaults are."""
    verdict, limits = record.verdict, record.verdict.limits
    outside = numbers.get("cam_outside_brain_fraction")
    floor = numbers.get("cam_outside_brain_floor") or 0.0  # absent in runs before it existed
    applied = verdict.check("outside_brain")
    outside_limit = applied.limit if applied is not None and applied.limit is not None else (
        floor + limits.max_outside_brain_excess)
    prefix = "cam_roi_gain_"
    return {
        "verdict": verdict.result, "verdict_pass": verdict.result == "pass", "verdict_word": verdict_word(verdict.result),
        "verdict_reason": _reason_in_language(record, numbers),
        "verdict_recorded": record.verdict_recorded,
        "outside": fmt_pct(outside, 1), "outside_limit": fmt_pct(outside_limit), "outside_floor": fmt_pct(floor, 1),
        "outside_excess": fmt_pct(limits.max_outside_brain_excess),
        "outside_ok": None if outside is None else outside <= outside_limit,
        "gains": [{"region": k[len(prefix):].replace("_", " "), "gain": fmt_num(v, 2), "above": v > limits.min_region_gain}
                  for k, v in sorted(numbers.items()) if k.startswith(prefix)],
        "sanity_ok": None if sanity_mean is None else sanity_mean <= limits.max_sanity_spearman,
        "sanity_limit": f"{limits.max_sanity_spearman:.1f}",
    }  # fmt: skip


def _counterfactual_context(record: EvaluationRecord, cam_name: str, positive: str, negative: str) -> dict:
    """The counterfactual tests as recorded, in numbers and plain sentences: what was replaced with
    what, the largest effect, whether the map points at what the score uses, the checks as applied
    and the paired comparison with the champion. A record from before the tests says so."""
    from ..interventions import OUTSIDE, format_p, paired_sentence, replacement_text

    cf = record.counterfactual
    if cf is None:
        return {"available": False, "why": _("This evaluation was made before heimer-mlflow ran counterfactual tests.")}
    if not cf.computed:
        return {"available": False, "why": _("Not computed: {reason}.").format(reason=recorded(cf.reason))}

    def interval(e) -> str:
        if e.lower is None:
            return f"{e.value:.2f}"
        return _("{value} ({level}% interval {lower} to {upper})").format(value=f"{e.value:.2f}", level=CONFIDENCE_PERCENT,
                                                                          lower=f"{e.lower:.2f}",
                                                                     upper=f"{e.upper:.2f}")

    def what(name: str) -> str:
        return _("what lies outside the brain") if name == OUTSIDE else _("the {region}").format(
            region=name.replace("_", " "))

    before = (cf.curves.get("morf") or {}).get("prob", [None])[0]
    # the recorded replacement is in the evaluation's language; another language words it anew
    replacement = cf.replacement if current_language() == "en" else replacement_text(negative)
    sentences = [_("To test what the score depends on, the model scored {n} subjects it calls {positive} again with "
                   "parts of their scan replaced by {replacement}.").format(n=cf.n_subjects, positive=positive,
                                                                            replacement=replacement)]
    headline = ""
    largest = cf.largest_effect()
    if largest is not None:
        name, drop = largest
        meaning = (_("the score depends on something outside the brain, which a brain disease cannot explain")
                   if name == OUTSIDE and drop.value >= 0.2 else
                   _("the score depends on {what}").format(what=what(name)) if drop.value >= 0.05 else
                   _("no single region the test replaced moves the score much"))  # fmt: skip
        if before is not None:
            headline = _("Replacing {what} with the {negative} subjects' average lowers the mean probability of "
                         "{positive} from {before} to {after}, a drop of {drop}: {meaning}.").format(
                what=what(name), negative=negative, positive=positive, before=f"{before:.2f}",
                after=f"{before - drop.value:.2f}", drop=interval(drop), meaning=meaning)
        else:
            headline = _("Replacing {what} with the {negative} subjects' average lowers the mean probability of "
                         "{positive}, a drop of {drop}: {meaning}.").format(
                what=what(name), negative=negative, positive=positive, drop=interval(drop), meaning=meaning)
        sentences.append(headline)
    morf, lerf, random = (cf.estimate(k) for k in ("cf_drop_map_morf", "cf_drop_map_lerf", "cf_drop_random"))
    check = record.verdict.check("map_faithful")
    if morf is not None and random is not None and morf.computable and random.computable:
        faithful = check.passed if check is not None and check.passed is not None else morf.value - random.value > 0.02
        with_lerf = lerf is not None and lerf.computable
        if faithful:
            sentence = (_("Replacing the voxels the {cam} marks as most relevant (2, 5 and 10% of the brain) lowers it "
                          "by {morf} on average, against {random} for random blobs of the same size and {lerf} for its "
                          "least relevant voxels: the {cam} points at what the score uses.") if with_lerf else
                        _("Replacing the voxels the {cam} marks as most relevant (2, 5 and 10% of the brain) lowers it "
                          "by {morf} on average, against {random} for random blobs of the same size: the {cam} points "
                          "at what the score uses."))
        else:
            sentence = (_("Replacing the voxels the {cam} marks as most relevant (2, 5 and 10% of the brain) lowers it "
                          "by {morf} on average, against {random} for random blobs of the same size and {lerf} for its "
                          "least relevant voxels: the {cam} does not point at what the score uses.") if with_lerf else
                        _("Replacing the voxels the {cam} marks as most relevant (2, 5 and 10% of the brain) lowers it "
                          "by {morf} on average, against {random} for random blobs of the same size: the {cam} does "
                          "not point at what the score uses."))
        sentences.append(sentence.format(cam=cam_name, morf=interval(morf), random=f"{random.value:.2f}",
                                         lerf=f"{lerf.value:.2f}" if with_lerf else ""))
    rows = [{"name": _("outside the brain"), "drop": cf.estimate("cf_drop_outside_brain")}]
    rows += [{"name": r.replace("_", " "), "drop": cf.estimate(f"cf_drop_{r}")} for r in cf.region_names]
    rows += [{"name": _("{cam}: most relevant first (mean of the steps)").format(cam=cam_name), "drop": morf},
             {"name": _("{cam}: least relevant first (mean of the steps)").format(cam=cam_name), "drop": lerf},
             {"name": _("random blob in the brain (mean of the steps)"), "drop": random},
             {"name": _("faithfulness (most minus least relevant first)"), "drop": cf.estimate("cf_faithfulness")}]
    table = [{"name": r["name"], "value": fmt_num(r["drop"].value, 3) if r["drop"] is not None and r["drop"].computable
              else _("n/a"), "ci": fmt_ci(r["drop"], "cf") if r["drop"] is not None else "",
              "reason": recorded(text(r["drop"].reason)) if r["drop"] is not None and not r["drop"].computable else ""}
             for r in rows]  # fmt: skip
    checks = []
    for name, words in (("shortcut_confirmed", _("Shortcut test: mean drop when the outside of the brain is replaced")),
                        ("map_faithful", _("Faithfulness: {cam} most-relevant drop minus the random blob's").format(
                            cam=cam_name))):
        c = record.verdict.check(name)
        if c is not None:
            limit = "" if c.limit is None else (_("below {limit}") if name == "shortcut_confirmed" else
                                                _("above {limit}")).format(limit=f"{c.limit:.2f}")  # fmt: skip
            checks.append({"label": words, "value": fmt_num(c.value, 3), "limit": limit,
                           "result": _("not assessed") if c.passed is None else (_("pass") if c.passed else _("review"))})
    vs = [{"name": _("outside the brain") if p.name == OUTSIDE else p.name.replace("_", " "), "n": p.n_pairs,
           "this": fmt_num(p.this, 3), "champion": fmt_num(p.champion, 3),
           "diff": f"{p.diff.value:+.3f} [{p.diff.lower:+.3f}, {p.diff.upper:+.3f}]", "p": format_p(p.p_holm)}
          for p in cf.vs_champion]  # fmt: skip
    return {
        "available": True, "n_subjects": cf.n_subjects, "n_requested": cf.n_requested,
        "forward_passes": cf.forward_passes, "replacement": replacement, "sentences": sentences,
        "headline": headline, "rows": table, "checks": checks, "vs_champion": vs,
        "vs_sentence": paired_sentence(cf.vs_champion[0]) + "." if cf.vs_champion else "",
        "champion_note": cf.champion_note or "", "champion_version": cf.champion_version or "",
        "seconds": fmt_num(cf.seconds, 1), "steps": ", ".join(f"{100 * s:g}%" for s in cf.steps),
    }


LANGUAGE_NAMES = {"en": N_("English"), "ko": N_("Korean")}
VERDICT_WORDS = {"pass": N_("PASS"), "review": N_("REVIEW")}
MONTHS = (N_("January"), N_("February"), N_("March"), N_("April"), N_("May"), N_("June"), N_("July"), N_("August"),
          N_("September"), N_("October"), N_("November"), N_("December"))


def _css_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def page_css() -> Markup:
    """The words the stylesheet writes, in the report's language: the page footer (``@page`` margin
    boxes, the page counters where the catalog's sentence puts ``{page}`` and ``{pages}``), the
    figure numbers and the page pointers. Built from the message catalog only, never from registry
    text; inserted into the template's <style>, after report.css, so it overrides the English."""
    import re

    def with_counters(sentence: str, counters: dict[str, str]) -> str:
        """A CSS content value: the sentence's words as strings, its {placeholders} as counters."""
        pattern = "(" + "|".join(re.escape("{" + name + "}") for name in counters) + ")"
        return " ".join(counters[p[1:-1]] if p[1:-1] in counters else _css_string(p)
                        for p in re.split(pattern, sentence) if p)

    # (the calls stay outside the f-strings: the catalog's extractor does not look inside them)
    pages = with_counters(_("Page {page} of {pages}"), {"page": "counter(page)", "pages": "counter(pages)"})
    footer = _css_string(_("Research use only. Not a diagnostic device."))
    figure = with_counters(pgettext("caption", "Figure {number}. "), {"number": "counter(figure)"})
    pointer = with_counters(_(", p. {page}"), {"page": "target-counter(attr(href), page)"})
    css = (f"@page {{ @bottom-left {{ content: {footer}; }} @bottom-right {{ content: {pages}; }} }}\n"
           f"figcaption::before {{ content: {figure}; }}\n"
           f"@media print {{ a.pointer::after {{ content: {pointer}; }} }}")
    if "<" in css:  # the <style> element must not end early
        raise ValueError("a translation of the page footer contains '<'")
    return Markup(css)


def verdict_word(result: str | None) -> str:
    """The verdict as the report shows it (PASS / REVIEW, translated); another value in capitals."""
    return _(VERDICT_WORDS[result]) if result in VERDICT_WORDS else str(result or "").upper()


def _document_date(stamp: _dt.datetime) -> str:
    """'05 December 2026'; '2026년 12월 5일' in Korean (the month names through the catalog)."""
    return _("{day:0>2} {month} {year}").format(day=stamp.day, month=_(MONTHS[stamp.month - 1]), year=stamp.year)


def _reason_in_language(record: EvaluationRecord, numbers: dict[str, float]) -> str:
    """The verdict's reason in the report's language. The record holds it in the language of the
    evaluation (``configuration["lang"]``, English before it was recorded); in another language it
    is worded anew from the recorded numbers, checks and limits, when that gives the recorded
    result (else the recorded reason, as written)."""
    verdict = record.verdict
    recorded_in = str(record.configuration.get("lang") or "en")
    if recorded_in == current_language() or not numbers or verdict.result not in VERDICT_WORDS:
        return verdict.reason
    from ..verdict import judge

    prefix = "cam_roi_gain_"
    regions = record.engine.region_names or [k[len(prefix):] for k in numbers if k.startswith(prefix)]
    try:
        again = judge(numbers, regions, verdict.method, verdict.limits, counterfactual=record.counterfactual)
    except Exception:  # noqa: BLE001 - a record this code cannot re-judge keeps its words
        return verdict.reason
    return again.reason if again.result == verdict.result else verdict.reason


def _atlas_context(atlas) -> dict | None:
    """A named atlas as the appendix shows it: what it is, where from, its licence, the labels
    behind each region and how the inputs were judged to be in MNI space."""
    if atlas is None:
        return None
    return {"name": text(atlas.name), "title": text(atlas.title), "licence": text(atlas.licence),
            "source": text(atlas.source), "space_check": text(atlas.space_check),
            "brain_mask": text(atlas.brain_mask) if atlas.brain_mask else "",
            "regions": [(region, ", ".join(labels)) for region, labels in atlas.regions.items()]}


def build_context(artifact_dir: Path, *, champion=None, created: _dt.datetime | None = None,
                  figure_dir: str = "figures", available_figures: set[str] | None = None,
                  run_id: str | None = None, gate: dict | None = None, viewers: list[dict] | None = None) -> dict:
    """Everything the template shows, as plain data (strings and numbers). Raises ``HeimerError``
    (one line) only for an ``evaluation.json`` newer than this code. ``gate``: the promotion gate
    judged on the run's metrics (``{"rules", "status", "failures"}``; None: not judged here).
    ``viewers``: the run's interactive map viewers (``viewers/viewers.json``'s entries)."""
    artifact_dir = Path(artifact_dir)
    problems: list[str] = []
    record = read_record(artifact_dir, problems, where=f"run {run_id}" if run_id else str(artifact_dir))
    metrics = MetricsRecord.from_dict(read_json(artifact_dir / "metrics.json", problems))
    predictions = read_csv(artifact_dir / "predictions.csv", problems)
    exclusions = read_csv(artifact_dir / "exclusions.csv", problems, required=False)

    model, cohort, engine = record.model, record.cohort, record.engine
    meta = model.metadata
    class_names = metrics.class_names or meta.get("class_names") or list(DEFAULT_CLASS_NAMES)
    if not (isinstance(class_names, list) and len(class_names) == 2):
        class_names = list(DEFAULT_CLASS_NAMES)
    class_names = [str(c) for c in class_names]
    positive = str(meta.get("positive_class") or class_names[1])
    negative = negative_class(class_names, positive)
    name, version = model.name, model.version
    stamp = _document_time(record, created, artifact_dir / "evaluation.json")

    overall = metrics.overall
    headline = []
    for key in ("roc_auc", "sensitivity", "specificity", "balanced_accuracy"):
        est = overall.estimates.get(key)
        computable = est is not None and est.computable
        headline.append({"label": _(METRIC_LABELS[key][0]).split(" (")[0], "meaning": _(METRIC_LABELS[key][1]),
                         "value": fmt_value(est.value, key) if computable else _("n/a"), "ci": fmt_ci(est, key),
                         "reason": "" if computable else recorded(text(est.reason if est is not None else None))})
    numbers = record.plausibility.numbers or metrics.plausibility
    sanity = engine.sanity
    sanity_rows = [] if sanity is None else [{"subject_id": s, "rho": fmt_num(r, 2)}
                                             for s, r in zip(sanity.subject_ids, sanity.spearman)]  # fmt: skip
    sanity_mean = sanity.mean if sanity else numbers.get("sanity_spearman_mean")
    gallery = [{"outcome": outcome, "subject_id": text(case.subject_id), "prob": fmt_num(case.prob, 2),
                "label": class_names[case.label] if case.label in (0, 1) else text(case.label)}
               for outcome, cases in engine.gallery.items() for case in cases]  # fmt: skip
    ranking = []
    for layer, table in engine.feature_ranking.items():
        for i, channel in enumerate(table.get("channel", [])[:8]):
            def at(key, i=i):
                values = table.get(key, [])
                return values[i] if i < len(values) else None
            ranking.append({"layer": layer, "channel": fmt_num(channel, 0),
                            "mean_abs_t": fmt_num(at("mean_abs_t"), 2), "mean_t": fmt_num(at("channel_mean_t"), 2),
                            "diff": fmt_num(at("channel_mean_diff"), 4)})
    figures_present = set(available_figures or ())
    cam = _cam_context(record.cam_method, numbers, predictions)
    fmt = {"pos": positive, "neg": negative, "cam": cam["name"], "level": CONFIDENCE_PERCENT}
    figure_info = {key: {"name": key, "title": _(t).format(**fmt), "caption": _(c).format(**fmt), "size": s,
                         "src": f"{figure_dir}/{key}.png", "present": key in figures_present}
                   for key, (t, c, s) in FIGURES.items()}
    extra_figures = [{"name": f, "title": f.replace("_", " ").capitalize(),
                      "caption": _("An additional figure the evaluation produced."), "size": EXTRA_FIGURE_SIZE,
                      "src": f"{figure_dir}/{f}.png", "present": True}
                     for f in sorted(figures_present - set(FIGURES))]
    display_name = name or _("unregistered model")
    title = _("Evaluation report: {model}").format(model=display_name) + (f" v{version}" if version else "")
    n_epochs = max((len(points) for points in record.history.values()), default=0)
    youden = metrics.youden
    tags = model.tags
    evaluated_in = str(record.configuration.get("lang") or "en")

    ctx = {
        "title": title, "display_name": display_name, "name": name or "", "version": version or "",
        "page_css": page_css(), "lang": current_language(), "language_name": _(LANGUAGE_NAMES[current_language()]),
        # the figures were drawn at evaluation time, in the evaluation's language
        "figures_language": _(LANGUAGE_NAMES.get(evaluated_in, LANGUAGE_NAMES["en"])),
        "figures_in_other_language": evaluated_in != current_language(),
        "date": _document_date(stamp), "date_iso": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"), "datetime": stamp,
        "generator": f"heimer-mlflow {record.versions.get('heimer-mlflow') or ''}".strip(),
        "keywords": ", ".join(k for k in [_("Alzheimer's disease"), "MRI", "3D CNN", cam["name"], _("model evaluation"),
                                           display_name.replace(",", " ")] if k),
        "description": (_("Evaluation of the AD vs CN classifier {model} version {version} with performance, "
                          "calibration "
                          "and explainability checks.") if version else
                        _("Evaluation of the AD vs CN classifier {model} with performance, calibration and "
                          "explainability checks.")).format(model=display_name, version=version),
        "problems": problems,
        "run_id": run_id or record.run_id or "",
        "positive": positive, "negative": negative, "class_names": class_names,
        "model": {
            "uri": text(model.uri), "aliases": model.aliases, "description": clip(model.description or ""),
            "tags": [(clip(str(k), 250), clip(text(v)))
                     for k, v in sorted(tags.items(), key=lambda kv: str(kv[0]))[:MAX_TAGS]],
            "tags_cut": max(0, len(tags) - MAX_TAGS),
            "source_run_id": text(model.source_run_id), "model_id": text(model.model_id),
            "metadata": [(str(k), text(v)) for k, v in meta.items()], "inferred": model.inferred,
            "given": model.given, "notes": [clip(n[:1].upper() + n[1:]) for n in model.notes],
            "serialization": _(SERIALIZATION_TEXT.get(model.serialization or "", SERIALIZATION_UNKNOWN)),
            "intensity": text(meta.get("intensity") or "none"),
            "input_shape": ("[" + text(meta.get("input_shape")) + "]") if isinstance(meta.get("input_shape"), list)
                           else text(meta.get("input_shape")),
        },
        "cohort": {
            "source": text(cohort.source), "n_subjects": text(cohort.n_subjects), "n_excluded": text(cohort.n_excluded),
            "counts": [(k, text(v)) for k, v in cohort.counts.items()], "covariates": cohort.covariates,
            "covariate_counts": _covariate_counts(predictions, cohort.covariates, tuple(class_names)),
            "excluded": _exclusion_rows(exclusions, record),
        },
        "headline": headline,
        "n": {"n_subjects": text(overall.n_subjects), "n_positive": text(overall.n_positive),
              "n_negative": text(overall.n_negative), "n_participants": text(overall.n_participants),
              "clustered": overall.n_participants is not None and overall.n_participants != overall.n_subjects},
        "confusion": {k: (_("n/a") if v is None else f"{v:.0f}") for k, v in overall.confusion.items()},
        "threshold": fmt_num(metrics.threshold if metrics.threshold is not None else engine.threshold, 2),
        "threshold_note": recorded(metrics.threshold_note) or "",
        "youden": fmt_num(youden["youden_threshold"].value, 2) if "youden_threshold" in youden else _("n/a"),
        "youden_sens": fmt_value(youden["youden_sensitivity"].value if "youden_sensitivity" in youden else None,
                                 "sensitivity"),
        "youden_spec": fmt_value(youden["youden_specificity"].value if "youden_specificity" in youden else None,
                                 "specificity"),
        "n_bootstrap": text(metrics.n_bootstrap),
        "confidence": fmt_pct(metrics.confidence if metrics.confidence is not None else 0.95), "ci_level": CONFIDENCE_PERCENT,
        "metric_rows": _metric_rows(overall.estimates, metrics.not_computable),
        "subgroups": _subgroup_rows(metrics),
        **_checks_context(record, numbers, sanity_mean),
        "sanity_rows": sanity_rows, "sanity_mean": fmt_num(sanity_mean, 2), "cam": cam,
        "gradcam": {"layer": text(engine.target_layer),
                    "target_class": text(engine.gradcam.get("target_class") or positive),
                    "upsampling": text(engine.gradcam.get("upsampling")),
                    "normalisation": text(engine.gradcam.get("display_normalisation")),
                    "statistics": text(engine.gradcam.get("statistics"))},
        "feature_layers": engine.feature_layers, "ranking": ranking, "gallery": gallery,
        "regions": engine.region_names, "atlas": _atlas_context(record.atlas),
        "device": text(engine.device), "n_epochs": n_epochs,
        "versions": sorted((k, text(v)) for k, v in record.versions.items()),
        "configuration": sorted((str(k), text(v)) for k, v in record.configuration.items()),
        "timings": sorted((k, fmt_num(v, 2)) for k, v in record.timings.items()),
        "figures": figure_info, "extra_figures": extra_figures, "figure_sections": FIGURE_SECTIONS,
        "champion": _comparison_context(record, champion, metrics, predictions, positive, class_names),
        "cf": _counterfactual_context(record, cam["name"], positive, negative),
        "glossary": [(_(term).format(level=CONFIDENCE_PERCENT), _(words).format(level=CONFIDENCE_PERCENT)) for term, words in GLOSSARY],
        "artifact_files": [f for f in REPORT_ARTIFACTS if (artifact_dir / f).is_file()],
        "viewers": [{"title": text(v.get("title")), "path": text(v.get("path")), "what": text(v.get("what"))}
                    for v in viewers or () if isinstance(v, dict)],
    }
    ctx["facts"] = build_facts(record=record, metrics=metrics, predictions=predictions, cohort=ctx["cohort"],
                               n=ctx["n"], positive=positive, negative=negative, threshold=ctx["threshold"],
                               checks={"gains": ctx["gains"], "verdict_reason": ctx["verdict_reason"]}, cam=cam, champion=ctx["champion"], numbers=numbers,
                               gate=gate)  # fmt: skip
    ctx["checklist"] = build_checklist(ctx)
    return ctx
