"""The template context: an evaluation run's artifact folder read into plain data (strings and
numbers) for ``templates/report.html.j2``. Every piece is optional: a missing or unreadable one
becomes a note in the report, never a failed render."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from pathlib import Path

from ..champion import TABLE_METRICS
from ..meta import CAM_NAMES
from .text import (
    CAM_EXPLAINED, EXTRA_FIGURE_SIZE, FIGURE_SECTIONS, FIGURES, GLOSSARY, MAX_TAGS, METRIC_LABELS, _clip, _d,
    _fmt_ci, _fmt_est, _fmt_num, _fmt_pct, _fmt_value, _l, _num, _text,
)  # fmt: skip

log = logging.getLogger(__name__)

MAX_SANITY_SPEARMAN = 0.5  # mirrors heimer_mlflow.evaluation (not imported: it pulls in torch)
MAX_OUTSIDE_BRAIN_EXCESS = 0.10  # idem: above the floor the target layer's resolution imposes
REPORT_ARTIFACTS = ("evaluation.json", "metrics.json", "predictions.csv", "exclusions.csv")


# --------------------------------------------------------------------------------------------
# Reading the artifact folder (every piece optional: a missing piece becomes a note)
# --------------------------------------------------------------------------------------------


def _read_json(path: Path, problems: list[str]) -> dict:
    if not path.is_file():
        problems.append(f"{path.name} is missing")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        problems.append(f"{path.name} could not be read ({type(error).__name__})")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path.name} is not a JSON object")
        return {}
    return data


def _read_csv(path: Path, problems: list[str], *, required: bool = True):
    import pandas as pd

    if not path.is_file():
        if required:
            problems.append(f"{path.name} is missing")
        return None
    try:
        return pd.read_csv(path, dtype={"subject_id": str}, keep_default_na=False, na_values=[""])
    except Exception as error:  # noqa: BLE001 - any unreadable table becomes a note
        problems.append(f"{path.name} could not be read ({type(error).__name__})")
        return None


# --------------------------------------------------------------------------------------------
# Building the template context
# --------------------------------------------------------------------------------------------


def _document_time(evaluation: dict, created: _dt.datetime | None, evaluation_path: Path) -> _dt.datetime:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        try:
            return _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
        except (ValueError, OverflowError, OSError):
            log.warning("ignoring SOURCE_DATE_EPOCH=%r (not an integer)", epoch)
    if created is not None:
        return created if created.tzinfo else created.replace(tzinfo=_dt.timezone.utc)
    for key in ("evaluated_at", "created", "finished_at"):
        value = evaluation.get(key)
        if isinstance(value, str):
            try:
                stamp = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
                return stamp if stamp.tzinfo else stamp.replace(tzinfo=_dt.timezone.utc)
            except ValueError:
                pass
    try:
        return _dt.datetime.fromtimestamp(int(evaluation_path.stat().st_mtime), _dt.timezone.utc)
    except OSError:
        return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def _metric_rows(estimates: dict, not_computable: list) -> list[dict]:
    rows = []
    order = [*METRIC_LABELS, *sorted(k for k in estimates if k not in METRIC_LABELS)]
    for name in order:
        if name not in estimates:
            continue
        est = _d(estimates[name])
        label, meaning = METRIC_LABELS.get(name, (name.replace("_", " ").capitalize(), ""))
        computable = _num(est.get("value")) is not None
        rows.append({
            "name": name, "label": label, "meaning": meaning, "computable": computable,
            "value": _fmt_value(est.get("value"), name,
                                digits=3 if name in ("brier_score", "expected_calibration_error") else 2),
            "ci": _fmt_ci(est, name), "method": _text(est.get("method")) if est.get("method") else "-",
            "reason": _text(est.get("reason")) if not computable else "",
        })
    listed = {row["name"] for row in rows}
    for item in not_computable:
        item = _d(item)
        name = _text(item.get("name"))
        if name not in listed:
            rows.append({"name": name, "label": METRIC_LABELS.get(name, (name, ""))[0], "meaning": "",
                         "computable": False, "value": "n/a", "ci": "-", "method": "-",
                         "reason": _text(item.get("reason"))})
    return rows


def _covariate_counts(predictions, covariates: list, class_names: tuple[str, str]) -> list[dict]:
    """Subjects per class in each subgroup (the same groups as the subgroup results)."""
    if predictions is None or "label" not in predictions:
        return []
    present = [c for c in covariates if isinstance(c, str) and c in predictions.columns]
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


def _subgroup_rows(subgroups: list) -> list[dict]:
    rows = []
    for item in subgroups:
        item = _d(item)
        est = _d(item.get("estimates"))
        rows.append({
            "covariate": _text(item.get("covariate")), "group": _text(item.get("group")),
            "n": _text(item.get("n_subjects")), "n_positive": _text(item.get("n_positive")),
            "n_negative": _text(item.get("n_negative")),
            "auc": _fmt_est(est.get("roc_auc"), "roc_auc"),
            "sensitivity": _fmt_est(est.get("sensitivity"), "sensitivity"),
            "specificity": _fmt_est(est.get("specificity"), "specificity"),
        })
    return rows


def _exclusion_rows(exclusions, evaluation_cohort: dict) -> list[dict]:
    rows = []
    if exclusions is not None and len(exclusions):
        for record in exclusions.astype(object).where(exclusions.notna(), None).to_dict("records"):
            rows.append({"subject_id": _text(record.get("subject_id")), "path": _text(record.get("path")),
                         "reason": _text(record.get("reason"))})
    else:
        for record in _l(evaluation_cohort.get("excluded")):
            record = _d(record)
            rows.append({"subject_id": _text(record.get("subject_id")), "path": _text(record.get("path")),
                         "reason": _text(record.get("reason"))})
    return rows


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


def _comparison_context(evaluation: dict, champion, metrics, predictions, positive, class_names, version) -> dict:
    """The recorded comparison (evaluations since it was recorded, also when there was none); for
    older records, one found at render time (``champion``)."""
    if "comparison" not in evaluation:
        return _champion_context(champion, metrics, predictions, positive, class_names)
    recorded = evaluation.get("comparison")
    if not isinstance(recorded, dict):
        return {"available": False,
                "why": "No champion to compare with: when this evaluation ran, no other version of this model "
                       "carried the alias 'champion' with an evaluation on the same data set."}
    return _recorded_comparison(recorded, metrics, version)


def _recorded_comparison(recorded: dict, this_metrics: dict, version) -> dict:
    """The comparison the evaluation made and recorded (evaluation.json ``comparison``; see
    heimer_mlflow.champion): what was compared then, whoever holds the alias now."""
    this_est = _d(_d(this_metrics.get("overall")).get("estimates"))
    other_est = _d(recorded.get("champion_estimates"))
    rows = [{"label": METRIC_LABELS[name][0], "this": _fmt_est(this_est.get(name), name),
             "champion": _fmt_est(other_est.get(name), name)}
            for name in TABLE_METRICS if name in this_est or name in other_est]  # fmt: skip
    delta = {"value": recorded.get("roc_auc_diff"), "lower": recorded.get("roc_auc_diff_ci_lower"),
             "upper": recorded.get("roc_auc_diff_ci_upper")}  # fmt: skip
    p_value = _num(recorded.get("delong_p"))
    champion_outside = _num(recorded.get("champion_cam_outside_brain_fraction"))
    return {
        "available": True, "recorded": True, "version": _text(recorded.get("champion_version")),
        "run_id": _text(recorded.get("champion_run_id")), "rows": rows, "n_matched": int(recorded.get("n_shared") or 0),
        "note": _text(recorded.get("note") or ""), "method": "DeLong's test for paired AUCs",
        "delta": _fmt_est(delta, "roc_auc_delta") if delta["value"] is not None else None,
        "delta_value": _num(delta["value"]), "delta_lower": _num(delta["lower"]), "delta_upper": _num(delta["upper"]),
        "p": None if p_value is None else (f"{p_value:.2g}" if p_value >= 0.001 else "< 0.001"),
        "p_value": p_value,
        "champion_verdict": _text(recorded.get("champion_verdict") or "not recorded"),
        "champion_reason": _text(recorded.get("champion_verdict_reason") or ""),
        "champion_map": CAM_NAMES.get(_text(recorded.get("champion_cam_method")), "Grad-CAM"),
        "champion_outside": None if champion_outside is None else _fmt_pct(champion_outside, 1),
    }  # fmt: skip


def _champion_context(champion, this_metrics: dict, predictions, positive: str, class_names) -> dict:
    """The comparison found at render time, for records from before evaluations recorded theirs."""
    if not champion:
        return {"available": False,
                "why": "No champion to compare with: no other version of this model carries the alias "
                       "'champion' with an evaluation on the same data set."}
    champion = _d(champion) if isinstance(champion, dict) else {}
    version = _text(champion.get("version"))
    other = _d(champion.get("metrics"))
    this_est = _d(_d(this_metrics.get("overall")).get("estimates"))
    other_est = _d(_d(other.get("overall")).get("estimates"))
    rows = []
    for name in TABLE_METRICS:
        if name in this_est or name in other_est:
            rows.append({"label": METRIC_LABELS[name][0], "this": _fmt_est(this_est.get(name), name),
                         "champion": _fmt_est(other_est.get(name), name)})
    delta, n_matched, note = None, 0, ""
    mine, theirs = _scores(predictions, positive), _scores(champion.get("predictions"), positive)
    if mine is None or theirs is None:
        note = "The paired comparison needs both models' per-subject predictions; one is missing."
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

                n_boot = int(this_metrics.get("n_bootstrap") or 2000)
                seed = int(this_metrics.get("seed") or 0)
                est = paired_delta_auc(y_a[ia], s_a[ia], s_b[ib], n_bootstrap=n_boot, seed=seed,
                                       class_names=tuple(class_names))
                delta = est.to_dict()
            except Exception as error:  # noqa: BLE001 - a comparison problem must not stop the report
                note = f"The paired comparison could not be computed ({type(error).__name__}: {error})."
        else:
            note = "No subject appears in both evaluations with the same label."
    return {"available": True, "recorded": False, "method": "paired bootstrap", "p": None, "version": version, "rows": rows,
            "n_matched": n_matched,
            "n_this": 0 if mine is None else len(mine[0]), "note": note,
            "delta": _fmt_est(delta, "roc_auc_delta") if delta else None,
            "delta_value": _num(_d(delta).get("value")), "delta_lower": _num(_d(delta).get("lower")),
            "delta_upper": _num(_d(delta).get("upper"))}


# The two maps disagree (one of them is unreliable for this architecture) when their rank agreement
# inside the brain is below MIN_CAM_AGREEMENT or their mean outside-brain shares differ by more than
# MAX_OUTSIDE_SHARE_GAP.
MIN_CAM_AGREEMENT = 0.5
MAX_OUTSIDE_SHARE_GAP = 0.20


def _cam_method(engine: dict, configuration: dict) -> str:
    """The primary map (``gradcam`` / ``hirescam``): the engine's, else the configuration's; an
    evaluation from before HiResCAM existed used Grad-CAM."""
    for value in (engine.get("cam_method"), configuration.get("cam")):
        if isinstance(value, str) and value.strip().lower() in CAM_NAMES:
            return value.strip().lower()
    return "gradcam"


def _cohort_mean(plaus: dict, predictions, name: str) -> tuple[float | None, int]:
    """(mean, subjects with a value) of a per-subject number: the logged summary, else the
    predictions table's column."""
    values = None
    if predictions is not None and name in predictions.columns:
        import pandas as pd

        values = pd.to_numeric(predictions[name], errors="coerce").dropna()
        values = values[values.apply(math.isfinite)]
    summary = _num(plaus.get(name))
    if summary is not None:
        return summary, len(values) if values is not None else 0
    if values is not None and len(values):
        return float(values.mean()), len(values)
    return None, 0


def _cam_context(engine: dict, configuration: dict, plaus: dict, predictions) -> dict:
    """The primary map's name and the two maps side by side: mean outside-brain shares, their
    agreement, and whether (and why) they disagree."""
    method = _cam_method(engine, configuration)
    other = "hirescam" if method == "gradcam" else "gradcam"
    shares = {m: _cohort_mean(plaus, predictions, f"{m}_outside_brain_fraction")[0] for m in CAM_NAMES}
    agreement, n_agreement = _cohort_mean(plaus, predictions, "cam_method_agreement")
    both = all(v is not None for v in shares.values())
    reasons = []
    if agreement is not None and agreement < MIN_CAM_AGREEMENT:
        reasons.append(f"their rank agreement inside the brain is {agreement:.2f}, below {MIN_CAM_AGREEMENT:.1f}")
    gap = abs(shares["gradcam"] - shares["hirescam"]) if both else None
    if gap is not None and gap > MAX_OUTSIDE_SHARE_GAP:
        reasons.append(f"Grad-CAM puts {shares['gradcam'] * 100:.0f}% of its map outside the brain and HiResCAM "
                       f"{shares['hirescam'] * 100:.0f}%, a gap of {gap * 100:.0f} percentage points "
                       f"(more than {MAX_OUTSIDE_SHARE_GAP * 100:.0f})")
    if agreement is None and both:
        agreement_text = ("not computable: for every subject one of the maps is constant inside the brain "
                          "(for example all zero)")
    elif agreement is None:
        agreement_text = "not recorded"
    else:
        agreement_text = _fmt_num(agreement, 2) + (f" (mean over {n_agreement} subjects)" if n_agreement else "")
    return {
        "method": method, "name": CAM_NAMES[method], "other": other, "other_name": CAM_NAMES[other],
        "explained": [CAM_EXPLAINED["gradcam"], CAM_EXPLAINED["hirescam"]],
        "compared": both or agreement is not None,
        "rows": [{"name": CAM_NAMES[m], "primary": m == method, "outside": _fmt_pct(shares[m], 1)} for m in CAM_NAMES],
        "primary_outside": _fmt_pct(shares[method], 1),
        "agreement": agreement_text, "min_agreement": f"{MIN_CAM_AGREEMENT:.1f}",
        "max_gap": f"{MAX_OUTSIDE_SHARE_GAP * 100:.0f}",
        "disagree": bool(reasons), "reasons": reasons, "agreement_known": agreement is not None,
        "verdict_on_gradcam": bool(reasons) and method == "gradcam",
    }


def build_context(artifact_dir: Path, *, champion=None, created: _dt.datetime | None = None,
                  figure_dir: str = "figures", available_figures: set[str] | None = None,
                  run_id: str | None = None) -> dict:
    """Everything the template shows, as plain data (strings and numbers)."""
    artifact_dir = Path(artifact_dir)
    problems: list[str] = []
    evaluation = _read_json(artifact_dir / "evaluation.json", problems)
    metrics = _read_json(artifact_dir / "metrics.json", problems)
    predictions = _read_csv(artifact_dir / "predictions.csv", problems)
    exclusions = _read_csv(artifact_dir / "exclusions.csv", problems, required=False)

    model, cohort, engine = _d(evaluation.get("model")), _d(evaluation.get("cohort")), _d(evaluation.get("engine"))
    meta = _d(model.get("metadata"))
    class_names = metrics.get("class_names") or meta.get("class_names") or ["CN", "AD"]
    if not (isinstance(class_names, list) and len(class_names) == 2):
        class_names = ["CN", "AD"]
    class_names = [str(c) for c in class_names]
    positive = str(meta.get("positive_class") or class_names[1])
    negative = next((c for c in class_names if c != positive), class_names[0])
    name, version = model.get("name"), model.get("version")
    stamp = _document_time(evaluation, created, artifact_dir / "evaluation.json")

    overall = _d(metrics.get("overall"))
    estimates = _d(overall.get("estimates"))
    headline = []
    for key in ("roc_auc", "sensitivity", "specificity", "balanced_accuracy"):
        est = _d(estimates.get(key))
        headline.append({"label": METRIC_LABELS[key][0].split(" (")[0], "meaning": METRIC_LABELS[key][1],
                         "value": _fmt_value(est.get("value"), key) if _num(est.get("value")) is not None else "n/a",
                         "ci": _fmt_ci(est, key),
                         "reason": "" if _num(est.get("value")) is not None else _text(est.get("reason"))})
    confusion = {k: _num(v) for k, v in _d(overall.get("confusion")).items()}
    plaus = _d(evaluation.get("plausibility")) or _d(metrics.get("plausibility"))
    verdict = str(plaus.get("verdict") or "not assessed")
    outside = _num(plaus.get("cam_outside_brain_fraction"))
    outside_floor = _num(plaus.get("cam_outside_brain_floor")) or 0.0  # absent in runs before it existed
    outside_limit = outside_floor + MAX_OUTSIDE_BRAIN_EXCESS
    gains = [{"region": k[len("cam_roi_gain_"):].replace("_", " "), "gain": _fmt_num(v, 2),
              "above": (_num(v) or 0) > 1}
             for k, v in sorted(plaus.items()) if k.startswith("cam_roi_gain_")]
    sanity = _d(engine.get("sanity"))
    sanity_rows = [{"subject_id": _text(s), "rho": _fmt_num(r, 2)}
                   for s, r in zip(_l(sanity.get("subject_ids")), _l(sanity.get("spearman")))]
    sanity_mean = _num(sanity.get("mean")) if sanity else _num(plaus.get("sanity_spearman_mean"))
    gallery = []
    for outcome, cases in _d(engine.get("gallery")).items():
        for case in _l(cases):
            case = _d(case)
            gallery.append({"outcome": _text(outcome), "subject_id": _text(case.get("subject_id")),
                            "prob": _fmt_num(case.get("prob"), 2),
                            "label": class_names[case["label"]] if case.get("label") in (0, 1)
                            else _text(case.get("label"))})
    gradcam = _d(engine.get("gradcam"))
    ranking = []
    for layer, table in _d(engine.get("feature_ranking")).items():
        table = _d(table)
        for i, channel in enumerate(_l(table.get("channel"))[:8]):
            def at(key, i=i):
                values = _l(table.get(key))
                return values[i] if i < len(values) else None
            ranking.append({"layer": _text(layer), "channel": _fmt_num(channel, 0),
                            "mean_abs_t": _fmt_num(at("mean_abs_t"), 2), "mean_t": _fmt_num(at("channel_mean_t"), 2),
                            "diff": _fmt_num(at("channel_mean_diff"), 4)})
    versions = {str(k): _text(v) for k, v in _d(evaluation.get("versions")).items()}
    configuration = {str(k): _text(v) for k, v in _d(evaluation.get("configuration")).items()}
    timings = {str(k): _fmt_num(v, 2) for k, v in _d(evaluation.get("timings")).items()}
    rationale = _d(metrics.get("threshold_rationale"))
    youden = _d(rationale.get("youden_threshold"))
    tags = _d(model.get("tags"))
    figures_present = set(available_figures or ())
    cam = _cam_context(engine, _d(evaluation.get("configuration")), plaus, predictions)
    fmt = {"pos": positive, "neg": negative, "cam": cam["name"]}
    figure_info = {key: {"name": key, "title": t.format(**fmt), "caption": c.format(**fmt), "size": s,
                         "src": f"{figure_dir}/{key}.png", "present": key in figures_present}
                   for key, (t, c, s) in FIGURES.items()}
    extra_figures = [{"name": f, "title": f.replace("_", " ").capitalize(),
                      "caption": "An additional figure the evaluation produced.", "size": EXTRA_FIGURE_SIZE,
                      "src": f"{figure_dir}/{f}.png", "present": True}
                     for f in sorted(figures_present - set(FIGURES))]
    display_name = _text(name) if name else "unregistered model"
    title = f"Evaluation report: {display_name}" + (f" v{version}" if version else "")
    history = _d(evaluation.get("history"))
    n_epochs = max((len(_l(v)) for v in history.values()), default=0)

    return {
        "title": title, "display_name": display_name, "name": _text(name) if name else "",
        "version": _text(version) if version else "", "date": stamp.strftime("%d %B %Y"),
        "date_iso": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"), "datetime": stamp,
        "generator": f"heimer-mlflow {_text(_d(evaluation.get('versions')).get('heimer-mlflow', ''))}".strip(),
        "keywords": ", ".join(k for k in ["Alzheimer's disease", "MRI", "3D CNN", cam["name"], "model evaluation",
                                           display_name.replace(",", " ")] if k),
        "description": f"Evaluation of the AD vs CN classifier {display_name}"
                       + (f" version {version}" if version else "")
                       + " with performance, calibration and explainability checks.",
        "problems": problems,
        "run_id": _text(run_id or evaluation.get("run_id") or "") if (run_id or evaluation.get("run_id")) else "",
        "positive": positive, "negative": negative, "class_names": class_names,
        "model": {
            "uri": _text(model.get("uri")), "aliases": [str(a) for a in _l(model.get("aliases"))],
            "description": _clip(model.get("description")) if isinstance(model.get("description"), str) else "",
            "tags": [(_clip(str(k), 250), _clip(_text(v)))
                     for k, v in sorted(tags.items(), key=lambda kv: str(kv[0]))[:MAX_TAGS]],
            "tags_cut": max(0, len(tags) - MAX_TAGS),
            "source_run_id": _text(model.get("source_run_id")), "model_id": _text(model.get("model_id")),
            "metadata": [(str(k), _text(v)) for k, v in meta.items()],
            "inferred": [str(v) for v in _l(model.get("inferred"))],
            "intensity": _text(meta.get("intensity") or "none"),
            "input_shape": ("[" + _text(meta.get("input_shape")) + "]") if isinstance(meta.get("input_shape"), list)
                           else _text(meta.get("input_shape")),
        },
        "cohort": {
            "source": _text(cohort.get("source")), "n_subjects": _text(cohort.get("n_subjects")),
            "n_excluded": _text(cohort.get("n_excluded")),
            "counts": [(str(k), _text(v)) for k, v in _d(cohort.get("counts")).items()],
            "covariates": [str(c) for c in _l(cohort.get("covariates"))],
            "covariate_counts": _covariate_counts(predictions, _l(cohort.get("covariates")), tuple(class_names)),
            "excluded": _exclusion_rows(exclusions, cohort),
        },
        "headline": headline,
        "n": {k: _text(overall.get(k)) for k in ("n_subjects", "n_positive", "n_negative")},
        "confusion": {k: ("n/a" if v is None else f"{v:.0f}") for k, v in confusion.items()},
        "threshold": _fmt_num(metrics.get("threshold", engine.get("threshold")), 2),
        "threshold_note": _text(rationale.get("note")) if rationale.get("note") else "",
        "youden": _fmt_num(youden.get("value"), 2) if youden else "n/a",
        "youden_sens": _fmt_value(_d(rationale.get("youden_sensitivity")).get("value"), "sensitivity"),
        "youden_spec": _fmt_value(_d(rationale.get("youden_specificity")).get("value"), "specificity"),
        "n_bootstrap": _text(metrics.get("n_bootstrap")), "confidence": _fmt_pct(metrics.get("confidence", 0.95)),
        "metric_rows": _metric_rows(estimates, _l(metrics.get("not_computable"))),
        "subgroups": _subgroup_rows(_l(metrics.get("subgroups"))),
        "verdict": verdict, "verdict_pass": verdict == "pass",
        "verdict_reason": _text(plaus.get("reason")) if plaus.get("reason") else "",
        "outside": _fmt_pct(outside, 1), "outside_limit": _fmt_pct(outside_limit),
        "outside_floor": _fmt_pct(outside_floor, 1), "outside_excess": _fmt_pct(MAX_OUTSIDE_BRAIN_EXCESS),
        "outside_ok": None if outside is None else outside <= outside_limit,
        "gains": gains, "sanity_rows": sanity_rows, "sanity_mean": _fmt_num(sanity_mean, 2), "cam": cam,
        "sanity_ok": None if sanity_mean is None else sanity_mean <= MAX_SANITY_SPEARMAN,
        "sanity_limit": f"{MAX_SANITY_SPEARMAN:.1f}",
        "gradcam": {"layer": _text(engine.get("target_layer")),
                    "target_class": _text(gradcam.get("target_class") or positive),
                    "upsampling": _text(gradcam.get("upsampling")),
                    "normalisation": _text(gradcam.get("display_normalisation")),
                    "statistics": _text(gradcam.get("statistics"))},
        "feature_layers": [str(v) for v in _l(engine.get("feature_layers"))],
        "ranking": ranking, "gallery": gallery,
        "regions": [str(r) for r in _l(engine.get("region_names"))],
        "device": _text(engine.get("device")), "n_epochs": n_epochs,
        "versions": sorted(versions.items()), "configuration": sorted(configuration.items()),
        "timings": sorted(timings.items()),
        "figures": figure_info, "extra_figures": extra_figures, "figure_sections": FIGURE_SECTIONS,
        "champion": _comparison_context(evaluation, champion, metrics, predictions, positive, class_names, version),
        "glossary": GLOSSARY,
        "artifact_files": [f for f in REPORT_ARTIFACTS if (artifact_dir / f).is_file()],
    }
