"""Cohorts as teams have them (issue 15): BIDS roots and ClinicaDL TSVs over CAPS folders, label
maps, sessions as scans of one participant. Real NIfTI files written with nibabel in real BIDS and
CAPS trees; the end-to-end case runs the real CLI on a real sqlite MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.models.evaluation.base import EvaluationDataset

from heimer_mlflow.cohort import CohortProblems, read_cohort
from heimer_mlflow.errors import HeimerError
from heimer_mlflow.evaluation import EvaluationOptions
from heimer_mlflow.layouts import T1_LINEAR_CROPPED, T1_LINEAR_UNCROPPED
from heimer_mlflow.plugin import manifest_of

from .helpers.cohorts import head, write_nifti
from .helpers.models import TinyCNN
from .helpers.tracking import cli_evaluate, experiment_runs, new_version

CLASSES = ["CN", "AD"]


def write_tsv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


def excluded(cohort) -> dict[str, str]:
    return dict(zip(cohort.excluded["subject_id"], cohort.excluded["reason"]))


# --------------------------------------------------------------------------- BIDS


@pytest.fixture
def bids(tmp_path):
    """Four participants without sessions (one MCI, one not listed in participants.tsv, one
    listed without a scan), a derivatives/ and a sourcedata/ tree that must not be read."""
    root = tmp_path / "bids"
    write_tsv(root / "participants.tsv", [
        {"participant_id": "sub-01", "diagnosis": "CN", "age": 70, "sex": "F"},
        {"participant_id": "sub-02", "diagnosis": "AD", "age": 74, "sex": "M"},
        {"participant_id": "sub-03", "diagnosis": "MCI", "age": 71, "sex": "F"},
        {"participant_id": "sub-04", "diagnosis": "ad", "age": 80, "sex": "M"},
        {"participant_id": "sub-06", "diagnosis": "CN", "age": 66, "sex": "F"},
    ])  # fmt: skip
    for i in range(1, 6):
        write_nifti(root / f"sub-0{i}" / "anat" / f"sub-0{i}_T1w.nii.gz", head(i))
    (root / "sub-01" / "anat" / "sub-01_T1w.json").write_text("{}")
    write_nifti(root / "sub-02" / "anat" / "sub-02_T2w.nii.gz", head(9))  # not a T1w
    write_nifti(root / "derivatives" / "prep" / "sub-01" / "anat" / "sub-01_desc-preproc_T1w.nii.gz", head(7))
    write_nifti(root / "sourcedata" / "sub-01" / "anat" / "sub-01_T1w.nii", head(8))
    return root


def test_bids_without_sessions(bids):
    cohort = read_cohort(bids, CLASSES)
    t = cohort.table
    assert t["subject_id"].tolist() == ["sub-01", "sub-02", "sub-04"]
    assert t["participant_id"].tolist() == ["sub-01", "sub-02", "sub-04"]
    assert t["label_name"].tolist() == ["CN", "AD", "AD"]  # class names in any case
    assert all(Path(p).parent.parent.parent == bids for p in t["path"])  # derivatives/, sourcedata/ unread
    assert cohort.covariates == ["age", "sex"]
    assert t["age"].tolist() == [70, 74, 80]
    reasons = excluded(cohort)
    assert set(reasons) == {"sub-03", "sub-05", "sub-06"}
    assert reasons["sub-03"] == "diagnosis 'MCI' is not a model class (CN, AD; see --label-map)"
    assert "not listed in participants.tsv" in reasons["sub-05"]
    assert "has no T1w image" in reasons["sub-06"]
    assert cohort.excluded.loc[cohort.excluded["subject_id"] == "sub-03", "path"].iloc[0].endswith("sub-03_T1w.nii.gz")


def test_bids_sessions_labels_per_session_and_label_column(tmp_path):
    root = tmp_path / "bids"
    write_tsv(root / "participants.tsv", [{"participant_id": "sub-01", "dx": "CN"},
                                          {"participant_id": "sub-02", "dx": "AD"}])  # fmt: skip
    for pid, sessions in (("sub-01", ("ses-M00", "ses-M12")), ("sub-02", ("ses-M00", "ses-M06"))):
        for ses in sessions:
            write_nifti(root / pid / ses / "anat" / f"{pid}_{ses}_run-1_T1w.nii.gz", head(len(ses)))
    # sub-01's sessions carry their own labels: M12 is MCI there, whatever participants.tsv says
    write_tsv(root / "sub-01" / "sub-01_sessions.tsv", [{"session_id": "ses-M00", "dx": "CN"},
                                                        {"session_id": "ses-M12", "dx": "MCI"}])  # fmt: skip
    write_tsv(root / "sub-02" / "sub-02_sessions.tsv", [{"session_id": "ses-M00", "acq_time": "2020-01-01"}])
    with pytest.raises(HeimerError, match=r"no column 'diagnosis'.*--label-column"):
        read_cohort(root, CLASSES)
    cohort = read_cohort(root, CLASSES, label_column="dx")
    t = cohort.table
    assert t["subject_id"].tolist() == ["sub-01_ses-M00_run-1", "sub-02_ses-M00_run-1", "sub-02_ses-M06_run-1"]
    assert t["participant_id"].tolist() == ["sub-01", "sub-02", "sub-02"]
    assert t["session_id"].tolist() == ["ses-M00", "ses-M00", "ses-M06"]
    assert t["label_name"].tolist() == ["CN", "AD", "AD"]
    assert excluded(cohort) == {"sub-01_ses-M12_run-1": "dx 'MCI' is not a model class (CN, AD; see --label-map)"}
    assert cohort.covariates == []  # participant_id and session_id identify scans; they split nothing


def test_label_map_on_bids(bids):
    participants = pd.read_csv(bids / "participants.tsv", sep="\t")
    participants["diagnosis"] = ["Control", "Dementia", "MCI", "Dementia", "Control"]
    participants.to_csv(bids / "participants.tsv", sep="\t", index=False)
    with pytest.raises(HeimerError, match=r"no scan of .* has a label that is a model class.*--label-map"):
        read_cohort(bids, CLASSES)
    cohort = read_cohort(bids, CLASSES, label_map="Dementia=AD, control=CN")  # source labels in any case
    assert cohort.table["label_name"].tolist() == ["CN", "AD", "AD"]
    assert "'MCI' is not a model class" in excluded(cohort)["sub-03"]


@pytest.mark.parametrize("text, match, syntax", [
    ("AD", "write SOURCE=CLASS pairs", True),
    ("Dementia=AD,=CN", "write SOURCE=CLASS pairs", True),
    ("Dementia=AD,Dementia=CN", "maps 'Dementia' twice", True),
    ("Dementia=Alzheimer", "'Alzheimer', which is not a model class", False),
])  # fmt: skip
def test_bad_label_maps_are_one_line(bids, text, match, syntax):
    with pytest.raises(HeimerError, match=match) as err:
        read_cohort(bids, CLASSES, label_map=text)
    assert "\n" not in str(err.value)
    if syntax:  # found before the model (and its classes) is even loaded
        with pytest.raises(HeimerError, match=match):
            EvaluationOptions(label_map=text).check()


# --------------------------------------------------------------------------- ClinicaDL TSV + CAPS


def t1_linear(caps: Path, pid: str, ses: str, seed: int, *, suffix=T1_LINEAR_CROPPED, middle="_T1w") -> Path:
    return write_nifti(caps / "subjects" / pid / ses / "t1_linear" / f"{pid}_{ses}{middle}_{suffix}.nii.gz", head(seed))


@pytest.fixture
def clinicadl(tmp_path):
    """Six participants with two sessions each (ses-M00 and ses-M12), alternately CN and AD, one
    MCI session and one row whose diagnosis is missing; a TSV with ClinicaDL's columns and two
    covariates. Returns (TSV, CAPS)."""
    caps, rows = tmp_path / "caps", []
    for i in range(6):
        pid = f"sub-ADNI{i:03d}"
        for j, ses in enumerate(("ses-M00", "ses-M12")):
            # Clinica keeps the source's entities (``_T1w``) before ``space-``; some tools drop them
            t1_linear(caps, pid, ses, 2 * i + j + i % 2, middle="_T1w" if j == 0 else "")
            rows.append({"participant_id": pid, "session_id": ses, "diagnosis": "AD" if i % 2 else "CN",
                         "age": 70 + i, "sex": "MF"[i % 2]})
    rows[11]["diagnosis"] = "MCI"
    rows.append({"participant_id": "sub-ADNI009", "session_id": "ses-M00", "diagnosis": None, "age": 60, "sex": "F"})
    t1_linear(caps, "sub-ADNI009", "ses-M00", 30)
    (caps / "subjects" / "sub-ADNI000" / "ses-M00" / "t1_linear" / "sub-ADNI000_ses-M00_T1w_space-MNI152NLin2009cSym_res-1x1x1_affine.mat").write_text("")
    return write_tsv(tmp_path / "split" / "test.tsv", rows), caps


def test_clinicadl_tsv_over_caps(clinicadl):
    tsv, caps = clinicadl
    cohort = read_cohort(tsv, CLASSES, caps=caps)
    t = cohort.table
    assert len(t) == 11 and t["participant_id"].nunique() == 6
    assert t["subject_id"].iloc[:2].tolist() == ["sub-ADNI000_ses-M00", "sub-ADNI000_ses-M12"]
    assert t["session_id"].iloc[:2].tolist() == ["ses-M00", "ses-M12"]
    assert Path(t["path"].iloc[0]).name == f"sub-ADNI000_ses-M00_T1w_{T1_LINEAR_CROPPED}.nii.gz"
    assert Path(t["path"].iloc[1]).name == f"sub-ADNI000_ses-M12_{T1_LINEAR_CROPPED}.nii.gz"
    assert cohort.covariates == ["age", "sex"]
    assert excluded(cohort) == {
        "sub-ADNI005_ses-M12": "diagnosis 'MCI' is not a model class (CN, AD; see --label-map)",
        "sub-ADNI009_ses-M00": "diagnosis is missing",
    }
    assert cohort.source == str(tsv)
    # ids without their prefixes, as hand-written TSVs have them, find the same images
    frame = pd.read_csv(tsv, sep="\t")
    frame["participant_id"] = frame["participant_id"].str.removeprefix("sub-")
    frame["session_id"] = frame["session_id"].str.removeprefix("ses-")
    assert read_cohort(frame, CLASSES, caps=caps).table["path"].tolist() == t["path"].tolist()


def test_caps_scan_problems_name_the_scan(clinicadl):
    tsv, caps = clinicadl
    cropped = caps / "subjects" / "sub-ADNI001" / "ses-M00" / "t1_linear" / f"sub-ADNI001_ses-M00_T1w_{T1_LINEAR_CROPPED}.nii.gz"
    cropped.unlink()
    t1_linear(caps, "sub-ADNI001", "ses-M00", 1, suffix=T1_LINEAR_UNCROPPED)
    (caps / "subjects" / "sub-ADNI002" / "ses-M12" / "t1_linear" / f"sub-ADNI002_ses-M12_{T1_LINEAR_CROPPED}.nii.gz").unlink()
    with pytest.raises(CohortProblems) as err:
        read_cohort(tsv, CLASSES, caps=caps)
    reasons = {sid: reason for sid, _, reason in err.value.problems}
    assert set(reasons) == {"sub-ADNI001_ses-M00", "sub-ADNI002_ses-M12"}
    assert "only the uncropped t1-linear image" in reasons["sub-ADNI001_ses-M00"]
    assert "--uncropped_image" in reasons["sub-ADNI001_ses-M00"]
    assert "no t1-linear image" in reasons["sub-ADNI002_ses-M12"] and "sub-ADNI002_ses-M12_T1w_space" in reasons["sub-ADNI002_ses-M12"]
    # with --skip-bad both are listed with the label exclusions, the rest is evaluated
    cohort = read_cohort(tsv, CLASSES, caps=caps, skip_bad=True)
    assert len(cohort) == 9 and len(cohort.excluded) == 4


def test_tsv_and_caps_go_together(clinicadl, bids, tmp_path):
    tsv, caps = clinicadl
    with pytest.raises(HeimerError, match=r"ClinicaDL-style TSV: pass --caps DIR"):
        read_cohort(tsv, CLASSES)
    with pytest.raises(HeimerError, match=r"--caps .* goes with a ClinicaDL TSV in --data .* is a folder"):
        read_cohort(bids, CLASSES, caps=caps)
    with pytest.raises(HeimerError, match=r"no subjects/ folder"):
        read_cohort(tsv, CLASSES, caps=tmp_path)
    with pytest.raises(HeimerError, match=r"pass the BIDS root .* as --data"):
        read_cohort(bids / "participants.tsv", CLASSES)
    with pytest.raises(HeimerError, match=r"lacks the column\(s\) diagnosis .*--label-column"):
        read_cohort(pd.read_csv(tsv, sep="\t").drop(columns=["diagnosis"]), CLASSES, caps=caps)
    with pytest.raises(HeimerError, match=r"looks like a ClinicaDL TSV .*: pass --caps DIR"):
        read_cohort(pd.read_csv(tsv, sep="\t"), CLASSES)


def test_a_participant_in_two_classes_is_a_user_error(clinicadl, tmp_path):
    tsv, caps = clinicadl
    frame = pd.read_csv(tsv, sep="\t")
    frame.loc[1, "diagnosis"] = "AD"  # sub-ADNI000: CN at M00, AD at M12
    with pytest.raises(HeimerError) as err:
        read_cohort(frame, CLASSES, caps=caps)
    message = str(err.value)
    assert "participant sub-ADNI000 has scans in two classes (ses-M00: CN, ses-M12: AD)" in message
    assert "baseline" in message and "\n" not in message
    # the same in a CSV manifest with a participant_id column; without one, each file is its own participant
    for i in range(3):
        write_nifti(tmp_path / f"s{i}.nii.gz", head(i))
    manifest = pd.DataFrame({"path": [f"s{i}.nii.gz" for i in range(3)], "label": ["CN", "Dementia", "AD"],
                             "subject_id": ["a1", "a2", "b1"], "participant_id": ["a", "a", None]})
    manifest.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(HeimerError, match=r"participant a has scans in two classes \(a1: CN, a2: AD\)"):
        read_cohort(tmp_path / "m.csv", CLASSES, label_map="Dementia=AD")
    manifest.drop(columns=["participant_id"]).to_csv(tmp_path / "m.csv", index=False)
    cohort = read_cohort(tmp_path / "m.csv", CLASSES, label_map="Dementia=AD")
    assert cohort.table["participant_id"].tolist() == ["a1", "a2", "b1"] and cohort.covariates == []


def test_manifest_labels_through_the_map_and_unknown_ones_still_stop(tmp_path):
    for i in range(3):
        write_nifti(tmp_path / f"s{i}.nii.gz", head(i))
    pd.DataFrame({"path": [f"s{i}.nii.gz" for i in range(3)], "dx": ["Control", "Dementia", "MCI"],
                  "participant_id": ["p0", "p1", "p2"]}).to_csv(tmp_path / "m.csv", index=False)  # fmt: skip
    with pytest.raises(CohortProblems) as err:
        read_cohort(tmp_path / "m.csv", CLASSES, label_column="dx", label_map="Control=CN,Dementia=AD")
    assert [(sid, reason.split(" (")[0]) for sid, _, reason in err.value.problems] == [("s2", "unknown label 'MCI'")]
    assert "--label-map" in err.value.problems[0][2]
    cohort = read_cohort(tmp_path / "m.csv", CLASSES, label_column="dx", label_map="Control=CN,Dementia=AD",
                         skip_bad=True)  # fmt: skip
    assert cohort.table["label_name"].tolist() == ["CN", "AD"]
    assert cohort.table["participant_id"].tolist() == ["p0", "p1"] and cohort.covariates == []


def test_the_evaluator_plugin_hands_a_clinicadl_table_over(clinicadl):
    """MLflow takes the targets column out of the features: the plug-in puts it back under its name."""
    tsv, caps = clinicadl
    frame = pd.read_csv(tsv, sep="\t").rename(columns={"diagnosis": "dx"})
    options = {"caps": str(caps)}
    rebuilt = manifest_of(EvaluationDataset(frame, targets="dx"), options)
    assert options["label_column"] == "dx"
    cohort = read_cohort(rebuilt, CLASSES, caps=options["caps"], label_column=options["label_column"])
    assert len(cohort) == 11 and len(cohort.excluded) == 2


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_evaluate_on_a_caps_layout_logs_scans_participants_and_exclusions(tracking, clinicadl, capsys):
    tsv, caps = clinicadl
    torch.manual_seed(0)
    version = new_version("layouts-caps", TinyCNN(), intensity="zscore")
    code, lines, out = cli_evaluate(capsys, f"models:/layouts-caps/{version}", "--data", str(tsv), "--caps", str(caps),
                                    "--label-map", "Dementia=AD", experiment="layouts")  # fmt: skip
    assert code == 0, lines
    assert any("2 scan(s) of" in line and "'MCI' is not a model class" in line for line in lines), lines
    run = experiment_runs("layouts")[0]
    assert run.data.metrics["n_subjects"] == 11 and run.data.metrics["n_excluded"] == 2
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id))
    exclusions = pd.read_csv(local / "exclusions.csv")
    assert sorted(exclusions["subject_id"]) == ["sub-ADNI005_ses-M12", "sub-ADNI009_ses-M00"]
    assert "diagnosis is missing" in exclusions["reason"].tolist()
    predictions = pd.read_csv(local / "predictions.csv")
    assert predictions["participant_id"].nunique() == 6 and len(predictions) == 11
    assert set(predictions["session_id"]) == {"ses-M00", "ses-M12"}
    assert (predictions["subject_id"] == predictions["participant_id"] + "_" + predictions["session_id"]).all()
    assert {"age", "sex"} <= set(predictions.columns)
    # sessions counted right: 11 scans of 6 participants, and the intervals resample participants
    assert run.data.metrics["n_participants"] == 6
    metrics = json.loads((local / "metrics.json").read_text())
    assert metrics["overall"]["n_participants"] == 6
    assert metrics["overall"]["estimates"]["sensitivity"]["method"] == "cluster bootstrap"
    assert metrics["overall"]["estimates"]["roc_auc_delong"]["method"] == "obuchowski"
    import pypdf

    pdf = next((local / "report").glob("*.pdf"))
    text = " ".join(page.extract_text() for page in pypdf.PdfReader(pdf).pages)
    assert "11 scans of 6 participants" in " ".join(text.split())
