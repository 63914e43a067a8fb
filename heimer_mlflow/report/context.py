"""The report's context: an evaluation run's artifact folder read into a typed
:class:`~heimer_mlflow.report.sections.ReportContext` for ``templates/report.html.j2``.

``evaluation.json`` is read as the typed record (:mod:`heimer_mlflow.record`) and ``metrics.json``
as its ``MetricsRecord``; the verdict and its checks are shown as the record says they were
applied, with the limits of the time, and the comparison with the champion as the record holds
it (an older record gets its comparison when it is read, :func:`heimer_mlflow.record.migrate_champion_comparison`):
building the context words and formats, it computes no statistic. Every piece is optional: a
missing or unreadable one becomes a note in the report, never a failed render; only a record
newer than this code stops the render, in one line.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from ..champion import TABLE_METRICS
from ..i18n import N_, _, current_language, pgettext
from ..meta import CAM_NAMES, CONFIDENCE, CONFIDENCE_PERCENT, DEFAULT_CLASS_NAMES, negative_class
from ..metrics import Estimate, subgroup_masks  # the subgroups' definition (which subjects), not a statistic
from ..record import EvaluationRecord, MetricsRecord, estimate
from ..verdict import judge
from .checklist import build_checklist
from .counterfactual import counterfactual_section
from .facts import build_facts
from .sections import (
    Atlas, CamComparison, CamRow, CamSettings, ChampionSection, ChannelRow, Checks, CohortSection, ComparisonRow,
    Counts, CovariateCount, Document, Exclusion, Features, Figure, GalleryCase, HeadlineFigure, MetricRow,
    ModelSection, Performance, Provenance, RegionGain, ReportContext, SanityRow, SubgroupRow, Viewer,
)
from .text import (
    CAM_EXPLAINED, EXTRA_FIGURE_SIZE, FIGURE_SECTIONS, FIGURES, GLOSSARY, MAX_TAGS, METRIC_LABELS, clip, fmt_ci,
    fmt_est, fmt_num, fmt_pct, fmt_value, recorded, text,
)

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
HEADLINE_METRICS = ("roc_auc", "sensitivity", "specificity", "balanced_accuracy")
RANKED_CHANNELS = 8  # of each layer, in the feature table


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
# Building the context
# --------------------------------------------------------------------------------------------


def build_context(artifact_dir: Path, *, record: EvaluationRecord | None = None, created: _dt.datetime | None = None,
                  figure_dir: str = "figures", available_figures: set[str] | None = None,
                  run_id: str | None = None, gate: dict | None = None,
                  viewers: list[dict] | None = None) -> ReportContext:
    """Everything the template shows. ``record``: the evaluation record as read (and migrated,
    :func:`heimer_mlflow.record.migrate_champion_comparison`); default: read from
    ``artifact_dir``. Raises ``HeimerError`` (one line) only for an ``evaluation.json`` newer than
    this code. ``gate``: the promotion gate judged on the run's metrics (``{"rules", "status",
    "failures"}``; None: not judged here). ``viewers``: the run's interactive map viewers
    (``viewers/viewers.json``'s entries)."""
    artifact_dir = Path(artifact_dir)
    problems: list[str] = []
    if record is None:
        record = read_record(artifact_dir, problems, where=f"run {run_id}" if run_id else str(artifact_dir))
    metrics = MetricsRecord.from_dict(read_json(artifact_dir / "metrics.json", problems))
    predictions = read_csv(artifact_dir / "predictions.csv", problems)
    exclusions = read_csv(artifact_dir / "exclusions.csv", problems, required=False)

    class_names, positive, negative = _classes(record, metrics)
    numbers = record.plausibility.numbers or metrics.plausibility
    cam = _cam_comparison(record.cam_method, numbers, predictions)
    cohort = _cohort_section(record, predictions, exclusions, class_names)
    n = _counts(metrics)
    performance = _performance(record, metrics)
    checks = _checks(record, numbers)
    champion = _champion_section(record, metrics)
    context = ReportContext(
        document=_document(record, artifact_dir, created, run_id, cam.name, problems),
        positive=positive, negative=negative, class_names=class_names, model=_model_section(record),
        cohort=cohort, n=n, performance=performance, checks=checks, cam=cam,
        gradcam=_cam_settings(record, positive), gallery=_gallery(record, class_names), features=_features(record),
        figures=_figures(figure_dir, available_figures, positive, negative, cam.name),
        extra_figures=_extra_figures(figure_dir, available_figures), figure_sections=FIGURE_SECTIONS,
        champion=champion, cf=counterfactual_section(record, cam.name, positive, negative),
        provenance=_provenance(record, viewers),
        glossary=tuple((_(term).format(level=CONFIDENCE_PERCENT), _(words).format(level=CONFIDENCE_PERCENT))
                       for term, words in GLOSSARY),
        facts=build_facts(record=record, metrics=metrics, predictions=predictions, cohort=cohort, n=n,
                          positive=positive, negative=negative, threshold=performance.threshold, checks=checks,
                          cam=cam, champion=champion, gate=gate),
        checklist=(),
    )
    return replace(context, checklist=build_checklist(context))


def _classes(record: EvaluationRecord, metrics: MetricsRecord) -> tuple[tuple[str, str], str, str]:
    """(class names in output order, the positive class, the negative class)."""
    meta = record.model.metadata
    class_names = metrics.class_names or meta.get("class_names") or list(DEFAULT_CLASS_NAMES)
    if not (isinstance(class_names, list) and len(class_names) == 2):
        class_names = list(DEFAULT_CLASS_NAMES)
    class_names = tuple(str(c) for c in class_names)
    positive = str(meta.get("positive_class") or class_names[1])
    return class_names, positive, negative_class(class_names, positive)


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


def _document(record: EvaluationRecord, artifact_dir: Path, created, run_id: str | None, cam_name: str,
              problems: list[str]) -> Document:
    name, version = record.model.name, record.model.version
    display_name = name or _("unregistered model")
    stamp = _document_time(record, created, artifact_dir / "evaluation.json")
    evaluated_in = str(record.configuration.get("lang") or "en")
    described = (_("Evaluation of the AD vs CN classifier {model} version {version} with performance, calibration "
                   "and explainability checks.") if version else
                 _("Evaluation of the AD vs CN classifier {model} with performance, calibration and "
                   "explainability checks."))
    keywords = [_("Alzheimer's disease"), "MRI", "3D CNN", cam_name, _("model evaluation"), display_name.replace(",", " ")]
    return Document(
        title=_("Evaluation report: {model}").format(model=display_name) + (f" v{version}" if version else ""),
        display_name=display_name, name=name or "", version=version or "",
        description=described.format(model=display_name, version=version),
        keywords=", ".join(k for k in keywords if k),
        generator=f"heimer-mlflow {record.versions.get('heimer-mlflow') or ''}".strip(),
        date=_document_date(stamp), date_iso=stamp.strftime("%Y-%m-%dT%H:%M:%SZ"), datetime=stamp,
        lang=current_language(), language_name=_(LANGUAGE_NAMES[current_language()]),
        figures_language=_(LANGUAGE_NAMES.get(evaluated_in, LANGUAGE_NAMES["en"])),
        figures_in_other_language=evaluated_in != current_language(), page_css=page_css(),
        run_id=run_id or record.run_id or "", problems=tuple(problems),
        artifact_files=tuple(f for f in REPORT_ARTIFACTS if (artifact_dir / f).is_file()), ci_level=CONFIDENCE_PERCENT,
    )


def _model_section(record: EvaluationRecord) -> ModelSection:
    model, meta = record.model, record.model.metadata
    tags = sorted(model.tags.items(), key=lambda kv: str(kv[0]))
    shape = meta.get("input_shape")
    return ModelSection(
        uri=text(model.uri), aliases=tuple(model.aliases), description=clip(model.description or ""),
        tags=tuple((clip(str(k), 250), clip(text(v))) for k, v in tags[:MAX_TAGS]),
        tags_cut=max(0, len(tags) - MAX_TAGS), source_run_id=text(model.source_run_id), model_id=text(model.model_id),
        metadata=tuple((str(k), text(v)) for k, v in meta.items()), inferred=tuple(model.inferred),
        given=tuple(model.given), notes=tuple(clip(n[:1].upper() + n[1:]) for n in model.notes),
        serialization=_(SERIALIZATION_TEXT.get(model.serialization or "", SERIALIZATION_UNKNOWN)),
        intensity=text(meta.get("intensity") or "none"),
        input_shape=("[" + text(shape) + "]") if isinstance(shape, list) else text(shape),
    )


def _cohort_section(record: EvaluationRecord, predictions, exclusions, class_names) -> CohortSection:
    cohort = record.cohort
    return CohortSection(
        source=text(cohort.source), n_subjects=text(cohort.n_subjects), n_excluded=text(cohort.n_excluded),
        counts=tuple((k, text(v)) for k, v in cohort.counts.items()), covariates=tuple(cohort.covariates),
        covariate_counts=_covariate_counts(predictions, cohort.covariates, class_names),
        excluded=_exclusions(exclusions, record),
    )


def _covariate_counts(predictions, covariates: list[str], class_names: tuple[str, str]) -> tuple[CovariateCount, ...]:
    """Subjects per class in each subgroup (the same groups as the subgroup results)."""
    if predictions is None or "label" not in predictions:
        return ()
    present = [c for c in covariates if c in predictions.columns]
    if not present:
        return ()
    try:
        groups = subgroup_masks(predictions[present].reset_index(drop=True))
    except Exception:  # noqa: BLE001 - fall back to plain values
        groups = [(c, str(v), (predictions[c] == v).to_numpy()) for c in present
                  for v in sorted(predictions[c].dropna().unique(), key=str)]
    labels = predictions["label"].astype(str).to_numpy()
    return tuple(CovariateCount(str(covariate), str(group), {name: int(((labels == name) & mask).sum())
                                                             for name in class_names}, int(mask.sum()))
                 for covariate, group, mask in groups)


def _exclusions(exclusions, record: EvaluationRecord) -> tuple[Exclusion, ...]:
    if exclusions is not None and len(exclusions):
        rows = exclusions.astype(object).where(exclusions.notna(), None).to_dict("records")
    else:
        rows = record.cohort.excluded
    return tuple(Exclusion(*(text(row.get(key)) for key in ("subject_id", "path", "reason"))) for row in rows)


def _counts(metrics: MetricsRecord) -> Counts:
    overall = metrics.overall
    return Counts(n_subjects=text(overall.n_subjects), n_positive=text(overall.n_positive),
                  n_negative=text(overall.n_negative), n_participants=text(overall.n_participants),
                  clustered=overall.n_participants is not None and overall.n_participants != overall.n_subjects)


def _headline(estimates: dict[str, Estimate]) -> tuple[HeadlineFigure, ...]:
    rows = []
    for key in HEADLINE_METRICS:
        est = estimates.get(key)
        computable = est is not None and est.computable
        rows.append(HeadlineFigure(
            label=_(METRIC_LABELS[key][0]).split(" (")[0], meaning=_(METRIC_LABELS[key][1]),
            value=fmt_value(est.value, key) if computable else _("n/a"), ci=fmt_ci(est, key),
            reason="" if computable else recorded(text(est.reason if est is not None else None))))
    return tuple(rows)


def _metric_rows(estimates: dict[str, Estimate], not_computable: list[tuple[str, str]]) -> tuple[MetricRow, ...]:
    rows = []
    for name in [*METRIC_LABELS, *sorted(k for k in estimates if k not in METRIC_LABELS)]:
        if name not in estimates:
            continue
        est = estimates[name]
        label, meaning = METRIC_LABELS.get(name, (name.replace("_", " ").capitalize(), ""))
        digits = 3 if name in ("brier_score", "expected_calibration_error") else 2
        rows.append(MetricRow(name=name, label=_(label), meaning=_(meaning) if meaning else "",
                              computable=est.computable, value=fmt_value(est.value, name, digits=digits),
                              ci=fmt_ci(est, name), method=METHOD_NAMES.get(est.method, est.method or "-"),
                              reason="" if est.computable else recorded(est.reason)))
    listed = {row.name for row in rows}
    rows += [MetricRow(name, _(METRIC_LABELS.get(name, (name, ""))[0]), "", False, _("n/a"), "-", "-", recorded(reason))
             for name, reason in not_computable if name not in listed]
    return tuple(rows)


def _subgroup_rows(metrics: MetricsRecord) -> tuple[SubgroupRow, ...]:
    return tuple(SubgroupRow(covariate=row.covariate, group=row.group, n=text(row.metrics.n_subjects),
                             n_positive=text(row.metrics.n_positive), n_negative=text(row.metrics.n_negative),
                             auc=fmt_est(row.metrics.estimates.get("roc_auc"), "roc_auc"),
                             sensitivity=fmt_est(row.metrics.estimates.get("sensitivity"), "sensitivity"),
                             specificity=fmt_est(row.metrics.estimates.get("specificity"), "specificity"))
                 for row in metrics.subgroups)


def _performance(record: EvaluationRecord, metrics: MetricsRecord) -> Performance:
    overall, youden = metrics.overall, metrics.youden

    def youden_value(key: str, name: str) -> str:
        return fmt_value(youden[key].value if key in youden else None, name)

    return Performance(
        headline=_headline(overall.estimates),
        confusion={k: (_("n/a") if v is None else f"{v:.0f}") for k, v in overall.confusion.items()},
        threshold=fmt_num(metrics.threshold if metrics.threshold is not None else record.engine.threshold, 2),
        threshold_note=recorded(metrics.threshold_note) or "",
        youden=fmt_num(youden["youden_threshold"].value, 2) if "youden_threshold" in youden else _("n/a"),
        youden_sens=youden_value("youden_sensitivity", "sensitivity"),
        youden_spec=youden_value("youden_specificity", "specificity"),
        n_bootstrap=text(metrics.n_bootstrap),
        confidence=fmt_pct(metrics.confidence if metrics.confidence is not None else CONFIDENCE),
        metric_rows=_metric_rows(overall.estimates, metrics.not_computable), subgroups=_subgroup_rows(metrics),
        n_epochs=max((len(points) for points in record.history.values()), default=0),
    )


def _comparison_rows(this: dict[str, Estimate], champion: dict[str, Estimate]) -> tuple[ComparisonRow, ...]:
    return tuple(ComparisonRow(_(METRIC_LABELS[name][0]), fmt_est(this.get(name), name), fmt_est(champion.get(name), name))
                 for name in TABLE_METRICS if name in this or name in champion)


def _champion_section(record: EvaluationRecord, metrics: MetricsRecord) -> ChampionSection:
    """The comparison with the champion as the record holds it (an older record: as migrated when
    it was read; one that could not be migrated: no champion was found for it)."""
    if not record.comparison_recorded:
        return ChampionSection(False, _("No champion to compare with: no other version of this model carries the "
                                        "alias 'champion' with an evaluation on the same data set."))
    c = record.comparison
    if c is None:
        if record.comparison_note:  # what the evaluation found, in its words
            return ChampionSection(False, _("No champion to compare with: {note}.").format(note=record.comparison_note))
        return ChampionSection(False, _("No champion to compare with: when this evaluation ran, no other version of "
                                        "this model carried the alias 'champion' with an evaluation on the same data "
                                        "set."))
    theirs = {k: e for k, e in ((k, estimate(v)) for k, v in c.champion_estimates.items()) if e is not None}
    difference = None
    if c.roc_auc_diff is not None:
        difference = Estimate(c.roc_auc_diff, c.roc_auc_diff_ci_lower, c.roc_auc_diff_ci_upper)
    outside = c.champion_cam_outside_brain_fraction
    return ChampionSection(
        available=True, version=c.champion_version or "-", run_id=c.champion_run_id or "-",
        rows=_comparison_rows(metrics.overall.estimates, theirs), n_matched=c.n_shared, note=c.note,
        method=_("DeLong's test for paired AUCs"),
        delta=None if difference is None else fmt_est(difference, "roc_auc_delta"),
        delta_value=c.roc_auc_diff, delta_lower=c.roc_auc_diff_ci_lower, delta_upper=c.roc_auc_diff_ci_upper,
        p=None if c.delong_p is None else (f"{c.delong_p:.2g}" if c.delong_p >= 0.001 else "< 0.001"),
        champion_verdict_word=verdict_word(c.champion_verdict) if c.champion_verdict else _("not recorded"),
        champion_reason=c.champion_verdict_reason, champion_map=CAM_NAMES.get(c.champion_cam_method, "Grad-CAM"),
        champion_outside=fmt_pct(outside, 1) if outside is not None else None,
    )


def _cohort_mean(numbers: dict[str, float], predictions, name: str) -> tuple[float | None, int]:
    """(mean, subjects with a value) of a per-subject number: the logged summary, else (a record
    from before the summary held it) the predictions table's column."""
    values = None
    if predictions is not None and name in predictions.columns:
        values = pd.to_numeric(predictions[name], errors="coerce").dropna()
        values = values[values.apply(math.isfinite)]
    summary = numbers.get(name)
    if summary is not None:
        return summary, len(values) if values is not None else 0
    if values is not None and len(values):
        return float(values.mean()), len(values)
    return None, 0


def _cam_disagreement(shares: dict[str, float | None], agreement: float | None) -> list[str]:
    """Why the two maps disagree (none: they agree, or it is not known)."""
    reasons = []
    if agreement is not None and agreement < MIN_CAM_AGREEMENT:
        reasons.append(_("their rank agreement inside the brain is {agreement}, below {limit}").format(
            agreement=f"{agreement:.2f}", limit=f"{MIN_CAM_AGREEMENT:.1f}"))
    both = all(v is not None for v in shares.values())
    gap = abs(shares["gradcam"] - shares["hirescam"]) if both else None
    if gap is not None and gap > MAX_OUTSIDE_SHARE_GAP:
        reasons.append(_("Grad-CAM puts {gradcam}% of its map outside the brain and HiResCAM {hirescam}%, a gap of "
                         "{gap} percentage points (more than {limit})").format(
            gradcam=f"{shares['gradcam'] * 100:.0f}", hirescam=f"{shares['hirescam'] * 100:.0f}", gap=f"{gap * 100:.0f}",
            limit=f"{MAX_OUTSIDE_SHARE_GAP * 100:.0f}"))
    return reasons


def _cam_comparison(method: str, numbers: dict[str, float], predictions) -> CamComparison:
    """The primary map's name and the two maps side by side: mean outside-brain shares, their
    agreement, and whether (and why) they disagree."""
    other = "hirescam" if method == "gradcam" else "gradcam"
    shares = {m: _cohort_mean(numbers, predictions, f"{m}_outside_brain_fraction")[0] for m in CAM_NAMES}
    agreement, n_agreement = _cohort_mean(numbers, predictions, "cam_method_agreement")
    both = all(v is not None for v in shares.values())
    reasons = _cam_disagreement(shares, agreement)
    if agreement is None and both:
        agreement_text = _("not computable: for every subject one of the maps is constant inside the brain "
                           "(for example all zero)")
    elif agreement is None:
        agreement_text = _("not recorded")
    else:
        agreement_text = fmt_num(agreement, 2) + (
            " " + _("(mean over {n} subjects)").format(n=n_agreement) if n_agreement else "")
    return CamComparison(
        method=method, name=CAM_NAMES[method], other=other, other_name=CAM_NAMES[other],
        explained=(_(CAM_EXPLAINED["gradcam"]), _(CAM_EXPLAINED["hirescam"])), compared=both or agreement is not None,
        rows=tuple(CamRow(CAM_NAMES[m], m == method, fmt_pct(shares[m], 1)) for m in CAM_NAMES),
        primary_outside=fmt_pct(shares[method], 1), agreement=agreement_text,
        min_agreement=f"{MIN_CAM_AGREEMENT:.1f}", max_gap=f"{MAX_OUTSIDE_SHARE_GAP * 100:.0f}",
        disagree=bool(reasons), reasons=tuple(reasons), agreement_known=agreement is not None,
        verdict_on_gradcam=bool(reasons) and method == "gradcam",
    )


def _checks(record: EvaluationRecord, numbers: dict[str, float]) -> Checks:
    """The plausibility checks as applied: each number against the limit the record says was used
    (an older record: the limits every evaluation used then), whatever today's defaults are."""
    verdict, limits, sanity = record.verdict, record.verdict.limits, record.engine.sanity
    outside = numbers.get("cam_outside_brain_fraction")
    floor = numbers.get("cam_outside_brain_floor") or 0.0  # absent in runs before it existed
    applied = verdict.check("outside_brain")
    outside_limit = applied.limit if applied is not None and applied.limit is not None else (
        floor + limits.max_outside_brain_excess)
    sanity_mean = sanity.mean if sanity else numbers.get("sanity_spearman_mean")
    prefix = "cam_roi_gain_"
    return Checks(
        verdict=verdict.result, verdict_pass=verdict.result == "pass", verdict_word=verdict_word(verdict.result),
        verdict_reason=_reason_in_language(record, numbers), verdict_recorded=record.verdict_recorded,
        outside=fmt_pct(outside, 1), outside_limit=fmt_pct(outside_limit), outside_floor=fmt_pct(floor, 1),
        outside_excess=fmt_pct(limits.max_outside_brain_excess),
        outside_ok=None if outside is None else outside <= outside_limit,
        gains=tuple(RegionGain(k[len(prefix):].replace("_", " "), fmt_num(v, 2), v > limits.min_region_gain)
                    for k, v in sorted(numbers.items()) if k.startswith(prefix)),
        sanity_ok=None if sanity_mean is None else sanity_mean <= limits.max_sanity_spearman,
        sanity_limit=f"{limits.max_sanity_spearman:.1f}", sanity_mean=fmt_num(sanity_mean, 2),
        sanity_rows=() if sanity is None else tuple(SanityRow(s, fmt_num(r, 2))
                                                    for s, r in zip(sanity.subject_ids, sanity.spearman)),
    )


def _cam_settings(record: EvaluationRecord, positive: str) -> CamSettings:
    engine = record.engine
    return CamSettings(layer=text(engine.target_layer), target_class=text(engine.gradcam.get("target_class") or positive),
                       upsampling=text(engine.gradcam.get("upsampling")),
                       normalisation=text(engine.gradcam.get("display_normalisation")),
                       statistics=text(engine.gradcam.get("statistics")))


def _gallery(record: EvaluationRecord, class_names: tuple[str, str]) -> tuple[GalleryCase, ...]:
    return tuple(GalleryCase(outcome, text(case.subject_id), fmt_num(case.prob, 2),
                             class_names[case.label] if case.label in (0, 1) else text(case.label))
                 for outcome, cases in record.engine.gallery.items() for case in cases)


def _features(record: EvaluationRecord) -> Features:
    """The layers analysed and each layer's most discriminative channels, as recorded."""
    rows = []
    for layer, table in record.engine.feature_ranking.items():
        for i, channel in enumerate(table.get("channel", [])[:RANKED_CHANNELS]):
            def at(key, i=i):
                values = table.get(key, [])
                return values[i] if i < len(values) else None
            rows.append(ChannelRow(layer, fmt_num(channel, 0), fmt_num(at("mean_abs_t"), 2),
                                   fmt_num(at("channel_mean_t"), 2), fmt_num(at("channel_mean_diff"), 4)))
    return Features(tuple(record.engine.feature_layers), tuple(rows))


def _figures(figure_dir: str, available: set[str] | None, positive: str, negative: str,
             cam_name: str) -> dict[str, Figure]:
    """Every figure the report knows, with its words; ``present``: the evaluation drew it."""
    fill = {"pos": positive, "neg": negative, "cam": cam_name, "level": CONFIDENCE_PERCENT}
    return {key: Figure(key, _(title).format(**fill), _(caption).format(**fill), size, f"{figure_dir}/{key}.png",
                        key in set(available or ()))
            for key, (title, caption, size) in FIGURES.items()}


def _extra_figures(figure_dir: str, available: set[str] | None) -> tuple[Figure, ...]:
    """The figures the evaluation drew that this report does not know."""
    return tuple(Figure(f, f.replace("_", " ").capitalize(), _("An additional figure the evaluation produced."),
                        EXTRA_FIGURE_SIZE, f"{figure_dir}/{f}.png", True)
                 for f in sorted(set(available or ()) - set(FIGURES)))


def _atlas(atlas) -> Atlas | None:
    """A named atlas as the appendix shows it: what it is, where from, its licence, the labels
    behind each region and how the inputs were judged to be in MNI space."""
    if atlas is None:
        return None
    return Atlas(name=text(atlas.name), title=text(atlas.title), licence=text(atlas.licence), source=text(atlas.source),
                 space_check=text(atlas.space_check), brain_mask=text(atlas.brain_mask) if atlas.brain_mask else "",
                 regions=tuple((region, ", ".join(labels)) for region, labels in atlas.regions.items()))


def _provenance(record: EvaluationRecord, viewers: list[dict] | None) -> Provenance:
    return Provenance(
        device=text(record.engine.device), versions=tuple(sorted((k, text(v)) for k, v in record.versions.items())),
        configuration=tuple(sorted((str(k), text(v)) for k, v in record.configuration.items())),
        timings=tuple(sorted((k, fmt_num(v, 2)) for k, v in record.timings.items())), atlas=_atlas(record.atlas),
        viewers=tuple(Viewer(text(v.get("title")), text(v.get("path")), text(v.get("what")))
                      for v in viewers or () if isinstance(v, dict)),
    )


# --------------------------------------------------------------------------------------------
# Words: the verdict, the date, the page footer
# --------------------------------------------------------------------------------------------

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

    prefix = "cam_roi_gain_"
    regions = record.engine.region_names or [k[len(prefix):] for k in numbers if k.startswith(prefix)]
    try:
        again = judge(numbers, regions, verdict.method, verdict.limits, counterfactual=record.counterfactual)
    except Exception:  # noqa: BLE001 - a record this code cannot re-judge keeps its words
        return verdict.reason
    return again.reason if again.result == verdict.result else verdict.reason
