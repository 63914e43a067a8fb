"""evaluation.json as the typed, versioned record: the verdict as applied travels with it, so a
re-render shows what was decided then, whatever today's limits are; a record from before
schema_version still renders; one from a newer heimer-mlflow stops in one line."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from pypdf import PdfReader

from heimer_mlflow import verdict
from heimer_mlflow.errors import HeimerError
from heimer_mlflow.metrics import compute_metrics
from heimer_mlflow.record import SCHEMA_VERSION, EvaluationRecord
from heimer_mlflow.report import build_context, render_html, report_for_run

from .helpers.tracking import subprocess_env

# evaluation.json as heimer-mlflow wrote it before the record had a schema_version (commit
# 7c6bf60): every key it wrote, none it did not. Users and tests read these keys; they stay.
OLD_RECORD = {
    "model": {"uri": "models:/tiny-eval/1", "name": "tiny-eval", "version": "1", "aliases": ["champion"],
              "source_run_id": "5f0c2a1e9b7d4c3a8e6f1d2b0a9c8e7f", "model_id": "m-7d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a",
              "description": None, "tags": {},
              "metadata": {"class_names": ["CN", "AD"], "positive_class": "AD", "input_shape": [1, 46, 55, 46],
                           "intensity": "zscore", "target_layer": "features.4.0"},
              "inferred": []},
    "cohort": {"source": "/data/eval-cohort/cohort/manifest.csv", "n_subjects": 12, "n_excluded": 0,
               "covariates": ["site", "sex", "age"], "excluded": [], "counts": {"AD": 6, "CN": 6}},
    "configuration": {"target_layer": None, "batch_size": 4, "device": "auto", "threshold": 0.5,
                      "atlas": "/data/eval-cohort/cohort/atlas/atlas.nii.gz",
                      "atlas_labels": "/data/eval-cohort/cohort/atlas/labels.csv", "brain_mask": None,
                      "save_cams": "gallery", "skip_bad": False, "experiment": "heimer-evaluations",
                      "feature_layers": [], "gallery_k": 4, "sanity_subjects": 8, "n_bootstrap": 50, "workers": 0,
                      "amp": None, "history_metrics": {}, "seed": 0, "progress": False, "require": [],
                      "require_verdict": None, "cam": "hirescam"},
    "engine": {"device": "cpu", "amp": None, "target_layer": "features.4.0", "cam_method": "hirescam",
               "feature_layers": ["features.4.0"], "region_names": ["hippocampus_left", "lateral_ventricle_left"],
               "chunk_size": None, "threshold": 0.5, "world_size": 1,
               "gradcam": {"target_class": "AD", "upsampling": "trilinear",
                           "display_normalisation": "per subject (min-max)", "statistics": "raw (unnormalised)"},
               "sanity": {"subject_ids": ["sub-000", "sub-001", "sub-002"], "spearman": [0.12, -0.04, None],
                          "mean": 0.04},
               "feature_ranking": {"features.4.0": {"channel": [2.0, 0.0, 1.0], "mean_abs_t": [1.9, 1.1, 0.4],
                                                    "channel_mean_t": [1.5, -0.9, 0.2],
                                                    "channel_mean_diff": [0.03, -0.01, 0.002]}},
               "gallery": {"TP": [{"subject_id": "sub-001", "prob": 0.91, "label": 1}],
                           "TN": [{"subject_id": "sub-000", "prob": 0.12, "label": 0}], "FP": [], "FN": []}},
    "plausibility": {"verdict": "review",
                     "reason": "38% of the HiResCAM lies outside the brain (limit 25%: 15% the layer's resolution "
                               "allows + 10%): the model may use a shortcut",
                     "cam_n_subjects": 6, "cam_outside_brain_fraction": 0.38, "cam_outside_brain_floor": 0.15,
                     "cam_method_agreement": 0.41, "gradcam_outside_brain_fraction": 0.97,
                     "hirescam_outside_brain_fraction": 0.38, "cam_roi_gain_hippocampus_left": 1.3,
                     "cam_roi_gain_lateral_ventricle_left": 0.8, "sanity_spearman_mean": 0.04},
    "comparison": None,
    "history": {"train_loss": [[0, 0.7], [1, 0.6]], "val_loss": [[0, 0.75], [1, 0.65]],
                "train_accuracy": [[0, 0.5], [1, 0.7]], "val_accuracy": [[0, 0.4], [1, 0.6]]},
    "grid_affine": [[4.0, 0.0, 0.0, -90.0], [0.0, 4.0, 0.0, -126.0], [0.0, 0.0, 4.0, -72.0], [0.0, 0.0, 0.0, 1.0]],
    "evaluated_at": "2026-11-30T09:12:44+00:00",
    "timings": {"engine_s": 3.2, "metrics_s": 0.4, "subjects_per_s": 3.75},
    "versions": {"heimer-mlflow": "0.1.0", "python": "3.12.3", "torch": "2.13.0", "mlflow": "3.17.0"},
}  # fmt: skip


def _artifacts(folder: Path, record: dict) -> Path:
    """An evaluation run's artifact folder around ``record``: metrics.json from the real
    compute_metrics, predictions.csv, no figures (the report says they are missing)."""
    y = np.array([0, 1] * 6)
    score = np.clip(0.5 + (y - 0.5) * 0.5 + np.random.default_rng(0).normal(0, 0.15, 12), 0.01, 0.99)
    metrics = compute_metrics(y, score, n_bootstrap=50).to_json_dict()
    metrics["plausibility"] = {k: v for k, v in record.get("plausibility", {}).items() if k not in ("verdict", "reason")}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "evaluation.json").write_text(json.dumps(record))
    pd.DataFrame({"subject_id": [f"sub-{i:03d}" for i in range(12)], "label": np.where(y == 1, "AD", "CN"),
                  "prob_AD": score}).to_csv(folder / "predictions.csv", index=False)  # fmt: skip
    return folder


def _recorded_with_limits(limits: verdict.Limits, **numbers) -> dict:
    """A record as the evaluation writes it today, judged under ``limits``."""
    record = copy.deepcopy(OLD_RECORD)
    record["plausibility"].update(numbers)
    numbers = {k: v for k, v in record["plausibility"].items() if k not in ("verdict", "reason")}
    applied = verdict.judge(numbers, record["engine"]["region_names"], "hirescam", limits)
    record["plausibility"].update(verdict=applied.result, reason=applied.reason)
    record.update(schema_version=SCHEMA_VERSION, run_id=None, verdict=applied.to_dict())
    return record


def _text(pdf: Path) -> str:
    return re.sub(r"\s+", " ", " ".join(page.extract_text() or "" for page in PdfReader(pdf).pages))


def _logged_run(folder: Path) -> str:
    client = mlflow.MlflowClient()
    run = client.create_run(mlflow.set_experiment("record-tests").experiment_id)
    client.log_artifacts(run.info.run_id, str(folder))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _keys(value, prefix="") -> set[str]:
    """Every key path of nested JSON objects."""
    if not isinstance(value, dict):
        return set()
    return {f"{prefix}{k}" for k in value} | {p for k, v in value.items() for p in _keys(v, f"{prefix}{k}.")}


def test_the_record_keeps_every_key_and_adds_the_verdict_as_applied():
    record = EvaluationRecord.from_dict(copy.deepcopy(OLD_RECORD))
    assert record.schema_version == 0 and not record.verdict_recorded
    written = record.to_dict()
    assert _keys(OLD_RECORD) <= _keys(written)  # only added: schema_version, run_id, verdict
    assert _keys(written) - _keys(OLD_RECORD) >= {"schema_version", "run_id", "verdict", "verdict.limits",
                                                    "verdict.checks"}  # fmt: skip
    assert written["plausibility"] == OLD_RECORD["plausibility"]
    # an old record's checks are judged by the limits of its time; its verdict is the one it recorded
    assert written["verdict"]["result"] == "review" and written["verdict"]["limits"] == verdict.LIMITS_BEFORE_RECORDING.to_dict()
    checks = {c["name"]: c for c in written["verdict"]["checks"]}
    assert checks["outside_brain"] == {"name": "outside_brain", "value": 0.38, "limit": pytest.approx(0.25),
                                       "passed": False}
    assert checks["region_gain"]["passed"] is True and checks["sanity"] == {"name": "sanity", "value": 0.04,
                                                                              "limit": 0.5, "passed": True}
    # written with its version, it reads back the same
    again = EvaluationRecord.from_dict(json.loads(json.dumps({**written, "schema_version": SCHEMA_VERSION})))
    assert again.verdict_recorded and again.verdict == record.verdict and again.to_dict()["verdict"] == written["verdict"]


def test_a_rerender_judges_by_the_limits_the_record_says_were_applied(tracking, tmp_path, monkeypatch):
    """The record says the outside-brain excess allowed was 30 points: 40% outside with a 15% floor
    passed. Today's limit (10 points here, 5 after the monkeypatch) would say review; the re-render
    shows the verdict as decided, with its limit."""
    recorded = _recorded_with_limits(verdict.Limits(max_outside_brain_excess=0.30),
                                     cam_outside_brain_fraction=0.40, hirescam_outside_brain_fraction=0.40)
    assert recorded["verdict"]["result"] == "pass"
    monkeypatch.setattr(verdict, "DEFAULT_LIMITS", verdict.Limits(max_outside_brain_excess=0.05))
    numbers = {k: v for k, v in recorded["plausibility"].items() if k not in ("verdict", "reason")}
    assert verdict.judge(numbers, recorded["engine"]["region_names"]).result == "review"  # today's limit differs
    run_id = _logged_run(_artifacts(tmp_path / "artifacts", recorded))
    files = report_for_run(run_id, out_dir=tmp_path / "out", log=False)
    text = _text(files.pdf)
    assert "Plausibility verdict: PASS" in text
    assert ("HiResCAM outside the brain 40.0% (limit 45%: 15.0% that a map spread evenly over the brain shows at "
            "the target layer's resolution, + 30%): pass") in text  # fmt: skip
    assert "limit 20%" not in text and "+ 5%" not in text


def test_a_record_from_before_schema_version_renders_by_the_limits_of_its_time(tmp_path, monkeypatch):
    monkeypatch.setattr(verdict, "DEFAULT_LIMITS", verdict.Limits(max_outside_brain_excess=0.50, max_sanity_spearman=0.01))
    folder = _artifacts(tmp_path / "old", copy.deepcopy(OLD_RECORD))
    context = build_context(folder)
    checks = context.checks
    assert checks.verdict == "review" and checks.verdict_reason == OLD_RECORD["plausibility"]["reason"]
    assert (checks.outside_limit, checks.outside_excess, checks.outside_ok) == ("25%", "10%", False)
    assert checks.sanity_limit == "0.5" and checks.sanity_ok is True
    html = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", render_html(context)))
    assert "38.0% (limit 25%: 15.0% that a map spread evenly over the brain" in html
    assert "Method (primary map) HiResCAM" in html and "No champion to compare with" in html


def test_a_record_newer_than_the_code_fails_in_one_line(tracking, tmp_path):
    newer = {**copy.deepcopy(OLD_RECORD), "schema_version": SCHEMA_VERSION + 1, "something_new": {"x": 1}}
    run_id = _logged_run(_artifacts(tmp_path / "newer", newer))
    with pytest.raises(HeimerError) as raised:
        report_for_run(run_id, out_dir=tmp_path / "out", log=False)
    message = str(raised.value)
    assert "\n" not in message and run_id in message and "pip install -U heimer-mlflow" in message
    done = subprocess.run([sys.executable, "-m", "heimer_mlflow", "report", run_id, "--out", str(tmp_path / "cli"),
                           "--no-log"], env=subprocess_env(tracking), capture_output=True, text=True, timeout=300)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, done.stderr[-2000:]
    assert err[0].startswith("heimer-mlflow: error: run ") and run_id in err[0] and f"schema_version {SCHEMA_VERSION + 1}" in err[0]
    with pytest.raises(HeimerError, match="schema_version 'one'"):
        EvaluationRecord.from_dict({"schema_version": "one"})


def test_a_version_1_record_renders_as_it_was_judged_without_counterfactual_tests(tmp_path):
    """A record from before the counterfactual tests (schema_version 1: a verdict with three checks
    and three limits, no counterfactual section) renders with that verdict and those checks; the
    report says the tests were not run then."""
    numbers = {k: v for k, v in OLD_RECORD["plausibility"].items() if k not in ("verdict", "reason")}
    applied = verdict.judge(numbers, OLD_RECORD["engine"]["region_names"], "hirescam")
    assert [c.name for c in applied.checks] == ["outside_brain", "region_gain", "sanity"]  # no counterfactual
    written = {**copy.deepcopy(OLD_RECORD), "schema_version": 1, "run_id": None,
               "verdict": {**applied.to_dict(), "limits": {"max_outside_brain_excess": 0.1, "min_region_gain": 1.0,
                                                           "max_sanity_spearman": 0.5}}}  # fmt: skip
    record = EvaluationRecord.from_dict(json.loads(json.dumps(written)))
    assert record.counterfactual is None and record.verdict.check("shortcut_confirmed") is None
    assert record.verdict.limits.max_cf_drop_outside_brain is None  # not applied then
    assert record.to_dict()["verdict"]["limits"] == written["verdict"]["limits"]
    context = build_context(_artifacts(tmp_path / "v1", written))
    assert context.checks.verdict == "review" and context.checks.verdict_reason == applied.reason
    assert not context.cf.available and "before heimer-mlflow ran counterfactual tests" in context.cf.why
    html = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", render_html(context)))
    assert "What changes the score" in html and "before heimer-mlflow ran counterfactual tests" in html
