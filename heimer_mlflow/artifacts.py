"""The files an evaluation run keeps, written to a staging folder (the run's artifact root):
``predictions.csv``, ``exclusions.csv``, ``counterfactuals.csv`` (the counterfactual tests' drops per
re-scored subject), ``metrics.json``, ``evaluation.json`` and the NIfTI
volumes (group means, differences and t-maps, the gallery's maps, and with ``--save-cams all``
every subject's, written by ``cam_writer`` while the engine runs). Figures and the report come
after, from ``heimer_mlflow.figures`` and ``heimer_mlflow.report``; ``tracking`` logs the folder."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from .record import EvaluationRecord

# The run's files that MLflow's artifact types describe, by name (EvaluationResult.artifacts);
# figures join them under their own names (roc, calibration, gallery_TP, group_cam, ...).
NAMED_ARTIFACTS = {"metrics": "metrics.json", "evaluation": "evaluation.json", "predictions": "predictions.csv",
                   "exclusions": "exclusions.csv", "counterfactuals": "counterfactuals.csv"}


def cam_writer(folder: Path):
    """A ``save_cams`` callback writing each subject's raw maps as NIfTI with its affine, one file per
    method: ``<subject>_gradcam.nii.gz``, ``<subject>_hirescam.nii.gz``."""
    folder.mkdir(parents=True, exist_ok=True)

    def write(subject_id: str, cams: dict[str, np.ndarray], affine: np.ndarray) -> None:
        for method, cam in cams.items():
            save_volume(cam, affine, folder / f"{safe_name(subject_id)}_{method}.nii.gz")

    return write


def safe_name(text: str) -> str:
    """A file-name-safe version of a subject id or label (ids come from user manifests)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)).strip("._")
    return cleaned or "subject"


def save_volume(volume: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.nan_to_num(np.asarray(volume, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))


def predictions_table(evaluation) -> pd.DataFrame:
    """One row per evaluated scan: id, participant (and session), label, probability, prediction,
    loss, CAM shares, covariates."""
    meta, engine, cohort = evaluation.model.meta, evaluation.engine, evaluation.cohort
    s = engine.subjects
    names = np.asarray(meta.class_names, dtype=object)
    table = pd.DataFrame({
        "subject_id": s["subject_id"],
        "label": names[s["label"].astype(int)],
        f"prob_{meta.positive_class}": s["prob"].astype(float),
        "prediction": names[s["pred"].astype(int)],  # the engine's predicted class index
        "loss": s["loss"].astype(float),
        "cam_outside_brain_fraction": s["cam_outside_brain_fraction"].astype(float),
        "cam_outside_brain_floor": s["cam_outside_brain_floor"].astype(float),
        "gradcam_outside_brain_fraction": s["gradcam_outside_brain_fraction"].astype(float),
        "hirescam_outside_brain_fraction": s["hirescam_outside_brain_fraction"].astype(float),
        "cam_method_agreement": s["cam_method_agreement"].astype(float),
    })
    for region in engine.region_names:
        table[f"cam_roi_gain_{region}"] = s[f"cam_roi_gain_{region}"].astype(float)
    # who each scan belongs to (several sessions of one participant are one cluster), beside its id
    ids = [c for c in ("participant_id", "session_id") if c in cohort.table.columns]
    for position, column in enumerate(ids, start=1):
        table.insert(position, column, cohort.table[column].iloc[s["index"].astype(int)].to_numpy())
    if cohort.covariates:
        rows = s["index"].astype(int)
        covariates = cohort.table.iloc[rows][cohort.covariates].reset_index(drop=True)
        table = pd.concat([table, covariates], axis=1)
    return table


def write_artifacts(evaluation, staging: Path) -> None:
    """Every file the run keeps apart from figures and report, written to ``staging``."""
    engine, affine = evaluation.engine, evaluation.grid_affine
    predictions_table(evaluation).to_csv(staging / "predictions.csv", index=False)
    evaluation.cohort.excluded.to_csv(staging / "exclusions.csv", index=False)
    metrics = evaluation.metrics.to_json_dict()
    metrics["plausibility"] = evaluation.plausibility
    if evaluation.counterfactual is not None:  # the cf_* figures and the deletion curves
        cf = evaluation.counterfactual
        metrics["counterfactual"] = {"estimates": {k: e.to_dict() for k, e in cf.estimates.items()},
                                     "curves": cf.curves, "n_subjects": cf.n_subjects,
                                     "forward_passes": cf.forward_passes}
        metrics["not_computable"] += [{"name": n, "reason": r} for n, r in cf.not_computable()]
    if evaluation.counterfactual_table is not None:
        evaluation.counterfactual_table.to_csv(staging / "counterfactuals.csv", index=False)
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=False))
    EvaluationRecord.of(evaluation).write(staging / "evaluation.json")
    volumes = staging / "volumes"
    positive = evaluation.model.meta.positive_class
    negative = evaluation.model.meta.negative_class
    for quantity in ("cam", "input"):
        maps = engine.maps.get(quantity)
        if maps is None:
            continue
        for group in evaluation.model.meta.class_names:
            if group in maps.mean:
                save_volume(maps.mean[group][0] if maps.mean[group].ndim == 4 else maps.mean[group], affine,
                            volumes / f"{quantity}_mean_{safe_name(group)}.nii.gz")
        for name, volume in (("diff", maps.diff), ("t", maps.t)):
            save_volume(volume[0] if volume.ndim == 4 else volume, affine,
                        volumes / f"{quantity}_{name}_{safe_name(positive)}-{safe_name(negative)}.nii.gz")
    for outcome, cases in engine.gallery.items():
        for case in cases:
            name = f"{outcome}_{safe_name(case.subject_id)}"
            for method, cam in (case.cams or {engine.cam_method: case.primary_cam}).items():
                save_volume(cam, case.affine, volumes / "gallery" / f"{name}_{method}.nii.gz")


def artifact_uris(artifact_uri: str, staging: Path, figures: dict[str, Path]) -> dict[str, str]:
    """{name: artifact URI} of what the run keeps: the named files, then every figure by its name."""
    root = artifact_uri.rstrip("/")
    uris = {name: f"{root}/{path}" for name, path in NAMED_ARTIFACTS.items() if (staging / path).exists()}
    from .report.text import FORMER_FIGURE_NAMES

    for name, path in figures.items():
        uris.setdefault(name, f"{root}/{Path(path).relative_to(staging).as_posix()}")
    for former, name in FORMER_FIGURE_NAMES.items():  # the keys scripts used before the rename still work
        if name in uris:
            uris.setdefault(former, uris[name])
    return uris
