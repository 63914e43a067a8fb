"""Cohort reading per the contract, on real NIfTI files written with nibabel."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from heimer_mlflow.cohort import (
    CohortDataset, CohortProblems, brain_mask, make_loader, normalise_intensity, read_cohort, validate,
)
from heimer_mlflow.errors import HeimerError
from heimer_mlflow.meta import ModelMeta

from .helpers.cohorts import AFFINE, GRID, head, write_implausible_header, write_nifti

CLASSES = ["CN", "AD"]


@pytest.fixture
def manifest_dir(tmp_path):
    for i in range(4):
        write_nifti(tmp_path / "img" / f"s{i}.nii.gz", head(i))
    pd.DataFrame({
        "path": [f"img/s{i}.nii.gz" for i in range(4)],
        "label": ["CN", "AD", 0, "ad"],
        "site": ["A", "B", "A", "B"],
        "age": [70, 71, 72, 73],
    }).to_csv(tmp_path / "cohort.csv", index=False)
    return tmp_path


def meta(**kw):
    return ModelMeta(input_shape=[1, *GRID], **kw)


def test_manifest_paths_relative_labels_by_name_or_index_and_covariates(manifest_dir):
    cohort = validate(read_cohort(manifest_dir / "cohort.csv", CLASSES), meta())
    t = cohort.table
    assert t["subject_id"].tolist() == ["s0", "s1", "s2", "s3"]  # file stems
    assert t["label"].tolist() == [0, 1, 0, 1] and t["label_name"].tolist() == ["CN", "AD", "CN", "AD"]
    assert all(p.startswith(str(manifest_dir)) for p in t["path"])
    assert cohort.covariates == ["site", "age"]
    # a folder holding manifest.csv reads through it
    (manifest_dir / "cohort.csv").rename(manifest_dir / "manifest.csv")
    assert read_cohort(manifest_dir, CLASSES).table["subject_id"].tolist() == ["s0", "s1", "s2", "s3"]


def test_class_folders(tmp_path):
    write_nifti(tmp_path / "AD" / "a1.nii.gz", head(1))
    write_nifti(tmp_path / "CN" / "c1.nii", head(2))
    write_nifti(tmp_path / "CN" / "c2.nii.gz", head(3))
    (tmp_path / "CN" / "notes.txt").write_text("ignored")
    cohort = read_cohort(tmp_path, CLASSES)
    assert sorted(zip(cohort.table["subject_id"], cohort.table["label_name"])) == [
        ("a1", "AD"), ("c1", "CN"), ("c2", "CN")]
    with pytest.raises(HeimerError, match="class folders"):
        read_cohort(tmp_path / "AD", CLASSES)


def test_every_problem_in_one_message_or_skipped_with_reasons(tmp_path):
    write_nifti(tmp_path / "ok.nii.gz", head(0))
    write_nifti(tmp_path / "four_d.nii.gz", np.zeros((*GRID, 3), np.float32))
    write_nifti(tmp_path / "small.nii.gz", head(0, (6, 6, 6)))
    (tmp_path / "text.nii.gz").write_bytes(gzip.compress(b"not a nifti at all" * 30))
    rows = ["ok", "four_d", "small", "text", "missing"]
    pd.DataFrame({"path": [f"{r}.nii.gz" for r in rows], "label": ["CN", "AD", "CN", "AD", "CN"]}).to_csv(
        tmp_path / "m.csv", index=False)
    cohort = read_cohort(tmp_path / "m.csv", CLASSES)
    with pytest.raises(CohortProblems) as err:
        validate(cohort, meta())
    msg = str(err.value)
    assert "4 subject(s)" in msg and "\n" not in msg and "--skip-bad" in msg
    reasons = dict((sid, reason) for sid, _, reason in err.value.problems)
    assert "4D" in reasons["four_d"]
    assert "differs from the model input" in reasons["small"]
    assert "not a readable NIfTI" in reasons["text"]
    assert "file not found" in reasons["missing"]
    kept = validate(read_cohort(tmp_path / "m.csv", CLASSES), meta(), skip_bad=True)
    assert kept.table["subject_id"].tolist() == ["ok"]
    assert sorted(kept.excluded["subject_id"]) == ["four_d", "missing", "small", "text"]


def test_absurd_header_is_refused_without_reading(tmp_path):
    path = write_implausible_header(tmp_path / "huge.nii")
    assert nib.load(str(path)).shape == (4096, 4096, 4096)
    cohort = read_cohort(pd.DataFrame({"path": [str(tmp_path / "huge.nii")], "label": ["AD"]}), CLASSES)
    with pytest.raises(CohortProblems, match="implausible size"):
        validate(cohort, ModelMeta())


@pytest.mark.parametrize(
    "frame, match",
    [
        (pd.DataFrame({"file": ["a.nii"], "label": ["AD"]}), "lacks the column"),
        (pd.DataFrame({"path": [], "label": []}), "no subjects"),
        (pd.DataFrame({"path": ["a.nii"], "label": ["MCI"]}), "unknown label 'MCI'"),
        (pd.DataFrame({"path": ["a.nii", "b/a.nii"], "label": ["AD", "CN"]}), "'a' appears 2 times"),
    ],
)
def test_manifest_errors_name_the_value(frame, match):
    with pytest.raises(HeimerError, match=match):
        read_cohort(frame, CLASSES)


def test_missing_data_path():
    with pytest.raises(HeimerError, match="does not exist"):
        read_cohort("/nonexistent/cohort.csv", CLASSES)


def test_intensity_modes():
    x = head(0)
    mask = x > 0
    z = normalise_intensity(x, "zscore", mask)
    assert abs(z[mask].mean()) < 1e-4 and abs(z[mask].std() - 1) < 1e-4
    m = normalise_intensity(x, "minmax")
    assert m.min() == 0 and m.max() == 1
    assert np.array_equal(normalise_intensity(x, "none"), x)
    with pytest.raises(HeimerError, match="'robust'"):
        normalise_intensity(x, "robust")


def test_brain_mask_leaves_out_a_detached_patch():
    x = head(0, (20, 20, 20))
    x[0:3, 0:3, 0:3] = 500.0  # an artefact in the background corner
    mask = brain_mask(x)
    assert not mask[0:3, 0:3, 0:3].any()
    assert mask[10, 10, 10] and mask.sum() == (head(0, (20, 20, 20)) > 0).sum()


def test_dataset_and_loader_yield_volumes_labels_ids_affines(manifest_dir):
    write_nifti(manifest_dir / "img" / "s1.nii.gz", np.where(head(1) > 0, np.nan, 0).astype(np.float32))
    cohort = validate(read_cohort(manifest_dir / "cohort.csv", CLASSES), meta(intensity="zscore"))
    loader = make_loader(CohortDataset(cohort, meta(intensity="zscore")), batch_size=3, workers=1)
    batches = list(loader)
    assert [len(b["subject_id"]) for b in batches] == [3, 1]
    b = batches[0]
    assert b["image"].shape == (3, 1, *GRID) and b["image"].dtype == torch.float32
    assert b["label"].tolist() == [0, 1, 0]
    assert b["subject_id"] == ["s0", "s1", "s2"]
    assert torch.equal(b["affine"][0], torch.from_numpy(AFFINE))
    assert b["brain_mask"].shape == (3, *GRID) and b["brain_mask"].dtype == torch.bool
    assert b["problem"][0] == "" and "NaN" in b["problem"][1]  # reported, not raised
    assert b["index"].tolist() == [0, 1, 2]


def _head(shape=(40, 48, 40)):
    """An ellipsoid 'head' (intensity 500-1000) on a zero background, and its mask."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = ((grid / np.array([0.7, 0.75, 0.7])[:, None, None, None]) ** 2).sum(axis=0) <= 1
    values = np.where(inside, 750 + 250 * np.cos(6 * grid[0]), 0.0).astype(np.float32)
    return values, inside


def test_brain_mask_sees_the_head_through_background_noise_and_a_crop_through_it():
    """Real scans have a noisy background (Rician): without a noise floor every voxel would be
    'brain' and a map on the background would never count as outside it."""
    from heimer_mlflow.cohort import brain_mask

    head, inside = _head()
    assert (brain_mask(head) == inside).all()  # a clean background: exactly the head, as before
    rng = np.random.default_rng(0)
    noisy = np.hypot(head + rng.normal(0, 30, head.shape), rng.normal(0, 30, head.shape)).astype(np.float32)
    mask = brain_mask(noisy)
    dice = 2 * (mask & inside).sum() / (mask.sum() + inside.sum())
    assert dice > 0.97 and mask.sum() < 1.05 * inside.sum()
    cropped, cropped_inside = noisy[:, :, 12:], inside[:, :, 12:]  # one face cuts through the head
    mask = brain_mask(cropped)
    assert 2 * (mask & cropped_inside).sum() / (mask.sum() + cropped_inside.sum()) > 0.97
