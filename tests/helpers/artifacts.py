"""What an evaluation logged, read back: a run's metrics, artifacts, data set input, linked
metrics, report and version tags checked against its cohort (scikit-learn's numbers on its
predictions); a PDF's text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image
import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from pypdf import PdfReader
from sklearn import metrics as skm


def pdf_text(path: Path) -> str:
    """The text of every page, whitespace runs as one space (extracted text wraps anywhere)."""
    return re.sub(r"\s+", " ", " ".join(page.extract_text() or "" for page in PdfReader(path).pages))


def check_evaluation_run(run_id: str, cohort: Path, model_name: str, *, tagged: bool = True, atlas: bool = True):
    """Everything a FINISHED evaluation of version 1 of ``model_name`` on the synthetic
    ``cohort`` logged, in the current tracking store; (run, local copy of its artifacts)."""
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id))
    # predictions: one row per subject; metrics equal scikit-learn on them
    predictions = pd.read_csv(local / "predictions.csv")
    manifest = pd.read_csv(cohort / "manifest.csv")
    assert sorted(predictions["subject_id"]) == sorted(manifest["subject_id"])
    assert {"site", "sex", "age", "loss", "cam_outside_brain_fraction", "gradcam_outside_brain_fraction",
            "hirescam_outside_brain_fraction", "cam_method_agreement"} <= set(predictions.columns)  # fmt: skip
    y = (predictions["label"] == "AD").astype(int).to_numpy()
    p = predictions["prob_AD"].to_numpy()
    called = (p >= 0.5).astype(int)
    assert (predictions["prediction"] == np.where(called == 1, "AD", "CN")).all()
    m = run.data.metrics
    assert m["n_subjects"] == len(manifest) and m["n_excluded"] == 0
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-9)
    assert m["roc_auc_ci_lower"] <= m["roc_auc"] <= m["roc_auc_ci_upper"]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, called), abs=1e-9)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, called), abs=1e-9)
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, called), abs=1e-9)
    assert m["brier_score"] == pytest.approx(skm.brier_score_loss(y, p), abs=1e-9)
    # the map checks are over the subjects called AD (all of them when nobody is)
    called = predictions[predictions["prediction"] == "AD"] if (predictions["prediction"] == "AD").any() else predictions
    assert m["cam_n_subjects"] == len(called)
    for column in ("gradcam_outside_brain_fraction", "hirescam_outside_brain_fraction", "cam_outside_brain_floor",
                   "cam_method_agreement"):
        assert m[column] == pytest.approx(called[column].mean(), abs=1e-6), column
    assert m["cam_outside_brain_fraction"] == m["hirescam_outside_brain_fraction"]  # the default primary map
    if atlas:
        assert {f"cam_roi_gain_{r}" for r in ("hippocampus_left", "lateral_ventricle_right")} <= set(m)
    # artifacts
    for name in ("metrics.json", "evaluation.json"):
        json.loads((local / name).read_text())
    record = json.loads((local / "evaluation.json").read_text())
    assert record["model"]["name"] == model_name and record["versions"]["torch"]
    figures = sorted((local / "figures").glob("*.png"))
    assert len(figures) >= 8
    for figure in figures:
        assert matplotlib.image.imread(figure).std() > 0, figure.name
    input_affine = nib.load(cohort / manifest["path"][0]).affine
    volumes = sorted((local / "volumes").rglob("*.nii.gz"))
    names = {v.name for v in volumes}
    assert {"cam_mean_AD.nii.gz", "cam_mean_CN.nii.gz", "cam_diff_AD-CN.nii.gz", "input_t_AD-CN.nii.gz"} <= names
    gallery = sorted(v.name for v in volumes if v.parent.name == "gallery")
    cases = {name.rsplit("_", 1)[0] for name in gallery}  # <outcome>_<subject>_<method>.nii.gz
    assert gallery and gallery == sorted(f"{case}_{m}.nii.gz" for case in cases for m in ("gradcam", "hirescam"))
    for v in volumes:
        img = nib.load(v)
        np.testing.assert_allclose(img.affine, input_affine, atol=1e-5)
        assert img.shape == (46, 55, 46)
    # the data set input, linked to the model
    inputs = run.inputs.dataset_inputs
    evaluation_inputs = [d for d in inputs if any(t.key == "mlflow.data.context" and t.value == "evaluation" for t in d.tags)]
    assert len(evaluation_inputs) >= 1
    assert len({d.dataset.digest for d in evaluation_inputs}) == 1
    # metrics linked to the logged model
    mv = client.get_model_version(model_name, "1")
    model_id = mv.source.split("/")[-1]
    linked = {lm.key for lm in mlflow.get_logged_model(model_id).metrics or [] if lm.run_id == run_id}
    assert {"roc_auc", "sensitivity"} <= linked
    keys = [(lm.key, lm.run_id) for lm in mlflow.get_logged_model(model_id).metrics if lm.run_id == run_id]
    assert len(keys) == len(set(keys)), "duplicate linked metrics"
    # the report, rendered from the logged artifacts, next to them
    pdfs = sorted((local / "report").glob("*.pdf"))
    assert [p.name for p in pdfs] == [f"{model_name}-v1.pdf"]
    assert (local / "report" / "html" / "index.html").is_file()
    assert len(PdfReader(pdfs[0]).pages) > 5
    if tagged:
        tags = mv.tags
        assert tags["heimer.report"].endswith(f"/report/{model_name}-v1.pdf")
        assert tags["heimer.report"].startswith(run.info.artifact_uri)
        assert tags["heimer.evaluation_run_id"] == run_id
        assert tags["heimer.verdict"] in ("pass", "review") and tags["heimer.verdict_reason"]
        assert float(tags["heimer.roc_auc"]) == pytest.approx(m["roc_auc"], abs=1e-4)
        for key in ("heimer.sensitivity", "heimer.specificity", "heimer.cam_outside_brain_fraction"):
            assert key in tags
    return run, local
