"""Cohorts on disk: small NIfTI "heads" (8x10x8 voxels of 3 mm) written with nibabel, the
manifests that list them, and the settings of the tiny synthetic cohort (conftest's
``synthetic_cohort``)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

GRID = (8, 10, 8)
AFFINE = np.array([[-3.0, 0, 0, 12], [0, 3, 0, -18], [0, 0, 3, -9], [0, 0, 0, 1]])
MANIFEST_COLUMNS = ("path", "label", "subject_id")

# heimer_mlflow.demo.synthetic.write_cohort's arguments for the tiny cohort the evaluation tests share:
# 12 subjects on the 4 mm grid (46x55x46), with its atlas and brain mask
SYNTHETIC_COHORT = dict(n_subjects=12, seed=3, voxel_size=4.0)
SYNTHETIC_INPUT_SHAPE = [1, 46, 55, 46]  # a model's input on that grid


def head(seed: int, shape=GRID) -> np.ndarray:
    """A bright ellipsoid 'head' on a zero background; odd seeds (the AD heads of ``good_rows``)
    are 5 brighter, so that even an untrained model's scores have something to follow."""
    rng = np.random.default_rng(seed)
    zz = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = (zz ** 2).sum(0) < 0.7
    return np.where(inside, 100 + 10 * rng.standard_normal(shape) + 5 * (seed % 2), 0).astype(np.float32)


def write_nifti(path: Path, data, affine=AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def write_implausible_header(path: Path) -> Path:
    """A NIfTI-1 file that holds 2x2x2 voxels under a header claiming 4096x4096x4096."""
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), AFFINE), str(path))
    raw = bytearray(path.read_bytes())
    raw[42:48] = np.array([4096, 4096, 4096], "<i2").tobytes()  # dim[1..3] of the NIfTI-1 header
    path.write_bytes(bytes(raw))
    return path


def good_rows(folder: Path, n: int = 8) -> list[dict]:
    """``n`` readable heads written into ``folder``, alternately CN and AD, as manifest rows."""
    rows = []
    for i in range(n):
        write_nifti(folder / f"good{i}.nii.gz", head(i))
        rows.append({"path": f"good{i}.nii.gz", "label": "AD" if i % 2 else "CN", "subject_id": f"good{i}"})
    return rows


def write_manifest(folder: Path, rows: list[dict] | None, columns=MANIFEST_COLUMNS) -> Path:
    """``folder``/manifest.csv listing ``rows`` (paths relative to the folder)."""
    path = folder / "manifest.csv"
    pd.DataFrame(rows or [], columns=list(columns)).to_csv(path, index=False)
    return path


def atlas_args(cohort: Path) -> list[str]:
    """The command-line options that give a synthetic cohort's own atlas."""
    return ["--atlas", str(cohort / "atlas" / "atlas.nii.gz"), "--atlas-labels", str(cohort / "atlas" / "labels.csv")]
