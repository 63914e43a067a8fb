"""Issue #15's check, end to end: an MNI-space cohort kept as teams keep it (a BIDS dataset with
sessions, and a ClinicaDL TSV over a CAPS folder), evaluated with --atlas neuromorphometrics:
the hippocampus and ventricle gains are logged, participants are counted once (and resampled as
clusters), MCI is left out with its reason, and the same cohort moved out of MNI space is
refused in one line before a run opens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from tests.helpers.cohorts import write_nifti
from tests.helpers.tracking import cli_evaluate, experiment_runs, register_tiny_model


@pytest.fixture(scope="module")
def model(tracking_dir):
    register_tiny_model("tiny-real-cohorts")
    return "models:/tiny-real-cohorts/1"


def _pairs(synthetic_cohort: Path) -> list[tuple[str, list[Path]]]:
    """The synthetic subjects two by two, within a class: each pair is one participant's two
    sessions (label, [scan at M00, scan at M12])."""
    manifest = pd.read_csv(synthetic_cohort / "manifest.csv")
    pairs = []
    for label, rows in manifest.groupby("label", sort=True):
        paths = [synthetic_cohort / p for p in rows["path"]]
        pairs += [(str(label), paths[i:i + 2]) for i in range(0, len(paths) - 1, 2)]
    return pairs


def _bids(root: Path, synthetic_cohort: Path) -> int:
    """A BIDS dataset: one participant per pair (two sessions) and an MCI participant; returns
    how many participants have a model class."""
    rows = []
    for n, (label, scans) in enumerate(_pairs(synthetic_cohort), start=1):
        pid = f"sub-{n:02d}"
        for session, scan in zip(("ses-M00", "ses-M12"), scans):
            target = root / pid / session / "anat" / f"{pid}_{session}_T1w.nii.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(scan, target)
        rows.append({"participant_id": pid, "diagnosis": {"AD": "Dementia", "CN": "Control"}[label], "age": 70 + n})
    mci = root / "sub-99" / "ses-M00" / "anat" / "sub-99_ses-M00_T1w.nii.gz"
    mci.parent.mkdir(parents=True)
    shutil.copy(_pairs(synthetic_cohort)[0][1][0], mci)
    rows.append({"participant_id": "sub-99", "diagnosis": "MCI", "age": 99})
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    (root / "derivatives" / "junk" / "sub-01" / "anat").mkdir(parents=True)  # never read
    return len(rows) - 1


@pytest.mark.slow
def test_a_bids_cohort_with_sessions_and_a_named_atlas(tracking, model, synthetic_cohort, tmp_path, capsys):
    root = tmp_path / "bids"
    participants = _bids(root, synthetic_cohort)
    code, lines, out = cli_evaluate(capsys, model, "--data", str(root), "--label-map", "Dementia=AD,Control=CN",
                                    "--atlas", "neuromorphometrics", experiment="real-bids")  # fmt: skip
    assert code == 0, lines
    run = experiment_runs("real-bids")[0]
    metrics = run.data.metrics
    assert metrics["n_subjects"] == 2 * participants and metrics["n_participants"] == participants
    assert metrics["n_excluded"] == 1
    for region in ("hippocampus_left", "hippocampus_right", "lateral_ventricle_left", "lateral_ventricle_right"):
        assert np.isfinite(metrics[f"cam_roi_gain_{region}"]), region
    assert run.data.params["heimer.atlas"] == "neuromorphometrics"
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id))
    record = json.loads((local / "metrics.json").read_text())
    assert record["overall"]["estimates"]["roc_auc"]["method"] == "cluster bootstrap"
    exclusions = pd.read_csv(local / "exclusions.csv")
    assert exclusions["subject_id"].tolist() == ["sub-99_ses-M00"]
    assert "'MCI' is not a model class" in exclusions["reason"][0]
    predictions = pd.read_csv(local / "predictions.csv")
    assert predictions.groupby("participant_id")["label"].nunique().max() == 1  # one class per participant
    covariates = {row["covariate"] for row in record["subgroups"]}
    assert "age" in covariates and not covariates & {"participant_id", "session_id"}


@pytest.mark.slow
def test_a_caps_cohort_out_of_mni_space_is_refused_before_a_run_opens(tracking, model, synthetic_cohort, tmp_path,
                                                                       capsys):
    """ClinicaDL's TSV over a CAPS folder whose t1-linear images were not registered: every
    affine shifted 20 mm (a scan in another space, same file names)."""
    caps, rows = tmp_path / "caps", []
    for n, (label, scans) in enumerate(_pairs(synthetic_cohort), start=1):
        pid = f"sub-ADNI{n:03d}"
        for session, scan in zip(("ses-M000", "ses-M012"), scans):
            img = nib.load(scan)
            affine = img.affine.copy()
            affine[1, 3] += 20.0
            name = f"{pid}_{session}_T1w_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz"
            write_nifti(caps / "subjects" / pid / session / "t1_linear" / name, np.asarray(img.dataobj), affine)
            rows.append({"participant_id": pid, "session_id": session, "diagnosis": label})
    pd.DataFrame(rows).to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    code, lines, _ = cli_evaluate(capsys, model, "--data", str(tmp_path / "split.tsv"), "--caps", str(caps),
                                  "--atlas", "neuromorphometrics", experiment="real-caps-moved")  # fmt: skip
    assert code == 2 and len(lines) == 1, lines
    assert "not in MNI space" in lines[0] and "sub-ADNI001_ses-M000" in lines[0] and "20 mm" in lines[0]
    assert experiment_runs("real-caps-moved") == []
