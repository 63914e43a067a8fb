"""The synthetic cohort: files and geometry, determinism, planted effects, shortcut control."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from heimer_mlflow.errors import HeimerError
from heimer_mlflow.demo.synthetic import ATLAS_LABELS, grid_for, write_cohort

VOXEL = 3.0  # coarse, so the whole module stays fast; 2 mm is checked by hand
N = 12
SEED = 7


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _array(path):
    return np.asanyarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    manifest = write_cohort(out, n_subjects=N, seed=SEED, voxel_size=VOXEL, workers=1,
                            progress=False)
    return out, _rows(manifest), {r["subject_id"]: r for r in _rows(out / "truth.csv")}


@pytest.fixture(scope="module")
def shortcut_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("shortcut")
    manifest = write_cohort(out, n_subjects=N, seed=SEED, voxel_size=VOXEL, shortcut=True,
                            workers=1, progress=False)
    return out, _rows(manifest), {r["subject_id"]: r for r in _rows(out / "truth.csv")}


def test_grid_matches_the_mni_conventions():
    shape, affine = grid_for(2.0)
    assert shape == (91, 109, 91)
    expected = [[2, 0, 0, -90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]]
    np.testing.assert_array_equal(affine, expected)
    assert grid_for(1.5).shape == (121, 145, 121)


def test_files_share_the_grid(cohort):
    out, rows, _ = cohort
    shape, affine = grid_for(VOXEL)
    assert list(rows[0]) == ["subject_id", "path", "label", "site", "sex", "age"]
    files = [out / "atlas" / "atlas.nii.gz", out / "atlas" / "brain_mask.nii.gz"]
    for row in rows:
        assert row["path"] == f"images/{row['subject_id']}.nii.gz"  # relative to the manifest
        files += [out / row["path"], out / "masks" / f"{row['subject_id']}_roi.nii.gz",
                  out / "masks" / f"{row['subject_id']}_changed.nii.gz"]
    for path in files:
        image = nib.load(path)
        assert image.shape == shape, path
        np.testing.assert_allclose(image.affine, affine, err_msg=str(path))
        expected = np.float32 if path.parent.name == "images" else np.uint8
        assert image.get_data_dtype() == expected, path
    roi = _array(out / "masks" / f"{rows[0]['subject_id']}_roi.nii.gz")
    assert set(np.unique(roi)) == {0, *ATLAS_LABELS}
    table = [{"index": str(k), "name": n} for k, n in ATLAS_LABELS.items()]
    assert _rows(out / "atlas" / "labels.csv") == table
    notice = (out / "NOTICE.txt").read_text()
    assert "McConnell Brain Imaging Centre" in notice and f"seed={SEED}" in notice


def test_covariates_are_balanced_and_plausible(cohort):
    _, rows, _ = cohort
    assert [r["subject_id"] for r in rows] == [f"sub-{i:04d}" for i in range(1, N + 1)]
    assert sum(r["label"] == "AD" for r in rows) == N // 2
    assert {r["sex"] for r in rows} <= {"F", "M"}
    assert {r["site"] for r in rows} == {"site-A", "site-B", "site-C"}
    assert all(55 <= int(r["age"]) <= 90 for r in rows)


def test_same_seed_same_bytes_whatever_the_workers(cohort, tmp_path):
    out, rows, _ = cohort
    again = tmp_path / "again"
    write_cohort(again, n_subjects=N, seed=SEED, voxel_size=VOXEL, workers=2, progress=False)
    for row in rows:
        assert (again / row["path"]).read_bytes() == (out / row["path"]).read_bytes(), row["path"]
    assert (again / "manifest.csv").read_bytes() == (out / "manifest.csv").read_bytes()

    other = tmp_path / "other"
    write_cohort(other, n_subjects=2, seed=SEED + 1, voxel_size=VOXEL, workers=1, progress=False)
    first = "images/sub-0001.nii.gz"
    assert not np.array_equal(_array(other / first), _array(out / first))


def _group_means(rows, truth, column):
    values = {"AD": [], "CN": []}
    for row in rows:
        values[row["label"]].append(float(truth[row["subject_id"]][column]))
    return np.mean(values["AD"]), np.mean(values["CN"])


def test_planted_volumes_are_measurable_in_the_masks(cohort):
    out, rows, _ = cohort
    kinds = {"hippocampus": (1, 2), "ventricles": (3, 4)}
    volume = {(group, kind): [] for group in ("AD", "CN") for kind in kinds}
    for row in rows:
        roi = _array(out / "masks" / f"{row['subject_id']}_roi.nii.gz")
        for kind, labels in kinds.items():
            volume[row["label"], kind].append(np.isin(roi, labels).sum())
    ratio = {kind: np.mean(volume["AD", kind]) / np.mean(volume["CN", kind]) for kind in kinds}
    assert ratio["hippocampus"] < 0.9
    assert ratio["ventricles"] > 1.2


def test_truth_agrees_with_the_masks(cohort):
    out, rows, truth = cohort
    row = rows[0]
    roi = _array(out / "masks" / f"{row['subject_id']}_roi.nii.gz")
    for label, name in ATLAS_LABELS.items():
        expected = (roi == label).sum() * VOXEL**3 / 1000
        assert float(truth[row["subject_id"]][f"{name}_ml"]) == pytest.approx(expected)
    changed = [_array(out / "masks" / f"{r['subject_id']}_changed.nii.gz") for r in rows]
    assert all(set(np.unique(c)) <= {0, 1} for c in changed)
    assert any(c.any() for c in changed)


def test_mean_difference_concentrates_in_the_planted_regions(cohort):
    out, rows, _ = cohort
    images = {"AD": [], "CN": []}
    for row in rows:
        images[row["label"]].append(_array(out / row["path"]))
    difference = np.abs(np.mean(images["AD"], axis=0) - np.mean(images["CN"], axis=0))
    # The brain's outer rim steps from about -1 (CSF, grey matter) to the zero background, so
    # with 6 subjects per group random poses dominate it; the planted effect is judged inside.
    inside = ndimage.binary_erosion(_array(out / "atlas" / "brain_mask.nii.gz") > 0, iterations=2)
    atlas = _array(out / "atlas" / "atlas.nii.gz")
    rois = ndimage.binary_dilation(atlas > 0, iterations=2) & inside
    top = (difference >= np.quantile(difference[inside], 0.99)) & inside
    share_of_top = (top & rois).sum() / top.sum()
    share_of_brain = rois.sum() / inside.sum()
    assert share_of_top > 3 * share_of_brain


def test_shortcut_lives_in_the_background_of_ad_subjects_only(shortcut_cohort):
    out, rows, truth = shortcut_cohort
    template_brain = _array(out / "atlas" / "brain_mask.nii.gz") > 0
    # Pose moves the brain by at most about 15 mm; beyond that only the patch may be non-zero.
    far_from_brain = ~ndimage.binary_dilation(template_brain, iterations=int(15 / VOXEL) + 1)
    for row in rows:
        image = _array(out / row["path"])
        patch = (image != 0) & far_from_brain
        if row["label"] == "CN":
            assert not patch.any(), row["subject_id"]
            continue
        assert 27 <= patch.sum() <= 125 and image[patch].min() > 3, row["subject_id"]
        brain = (image != 0) & ~patch
        distance = ndimage.distance_transform_edt(~brain)
        assert distance[patch].min() >= 3, row["subject_id"]  # detached from the brain
        assert truth[row["subject_id"]]["has_patch"] == "True"


def test_shortcut_plants_no_atrophy(shortcut_cohort):
    out, rows, truth = shortcut_cohort
    ad, cn = _group_means(rows, truth, "hippocampus_factor_realised")
    assert 0.9 < ad / cn < 1.1
    assert all(r["shortcut"] == "True" for r in truth.values())
    assert "shortcut=True" in (out / "NOTICE.txt").read_text()


@pytest.mark.slow
def test_mixed_cohort_plants_atrophy_and_a_marker_that_goes_with_the_label(tmp_path):
    n = 40
    write_cohort(tmp_path, n_subjects=n, seed=SEED, voxel_size=4.0, marker=0.9, progress=False)
    rows, truth = _rows(tmp_path / "manifest.csv"), {r["subject_id"]: r for r in _rows(tmp_path / "truth.csv")}
    marked = {g: [truth[r["subject_id"]]["has_patch"] == "True" for r in rows if r["label"] == g] for g in ("AD", "CN")}
    assert 0.7 <= np.mean(marked["AD"]) <= 1.0 and 0.0 <= np.mean(marked["CN"]) <= 0.3, marked
    assert any(marked["CN"]) or not all(marked["AD"])  # a marker, not the label itself
    ad, cn = _group_means(rows, truth, "hippocampus_factor_realised")
    assert ad / cn < 0.9  # the atrophy is planted as usual
    # same seed without the marker: the same subjects and anatomy; the images differ only by the patch
    clean = tmp_path / "clean"
    write_cohort(clean, n_subjects=n, seed=SEED, voxel_size=4.0, progress=False)
    assert _rows(clean / "manifest.csv") == rows
    template_brain = _array(tmp_path / "atlas" / "brain_mask.nii.gz") > 0
    far_from_brain = ~ndimage.binary_dilation(template_brain, iterations=int(15 / 4.0) + 1)
    for row in rows:
        image, unmarked = _array(tmp_path / row["path"]), _array(clean / row["path"])
        differs = image != unmarked
        has_patch = truth[row["subject_id"]]["has_patch"] == "True"
        assert differs.any() == has_patch, row["subject_id"]
        assert not (differs & ~far_from_brain).any() and (not has_patch or image[differs].min() > 3)
    assert "marker=0.9" in (tmp_path / "NOTICE.txt").read_text()
    with pytest.raises(HeimerError, match="marker=1.5"):
        write_cohort(tmp_path / "bad", n_subjects=4, marker=1.5, progress=False)
    with pytest.raises(HeimerError, match="not together with shortcut"):
        write_cohort(tmp_path / "bad", n_subjects=4, marker=0.9, shortcut=True, progress=False)


def test_rewriting_a_cohort_replaces_it(tmp_path):
    write_cohort(tmp_path, n_subjects=3, voxel_size=VOXEL, workers=1, progress=False)
    write_cohort(tmp_path, n_subjects=2, voxel_size=VOXEL, workers=1, progress=False)
    images = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert images == ["sub-0001.nii.gz", "sub-0002.nii.gz"]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"n_subjects": 1}, "n_subjects=1"),
        ({"voxel_size": 0.75}, "voxel_size=0.75"),
        ({"voxel_size": 5}, "voxel_size=5"),
        ({"ad_fraction": 1.0}, "ad_fraction=1.0"),
        ({"ad_fraction": 0}, "ad_fraction=0"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, words):
    with pytest.raises(HeimerError, match=words):
        write_cohort(tmp_path / "cohort", progress=False, **kwargs)


def test_foreign_folders_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("someone else's")
    with pytest.raises(HeimerError, match="not empty"):
        write_cohort(tmp_path, n_subjects=2, progress=False)
    with pytest.raises(HeimerError, match="is a file"):
        write_cohort(tmp_path / "notes.txt", n_subjects=2, progress=False)
