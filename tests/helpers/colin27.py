"""A real brain for tests: Colin27 (one person, MNI space, 1 mm, 181x217x181) with and without
skull, and the AAL atlas on the same grid, from Debian's package ``mricron-data``
(/usr/share/mricron/templates). Nothing of it is copied into the repository.

A missing package skips the tests that need it, with the reason; with
``HEIMER_REQUIRE_MRICRON=1`` (CI, which installs the package) it fails them instead, as
``servers`` does for the tracking servers.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

TEMPLATES = Path("/usr/share/mricron/templates")
REQUIRED = os.environ.get("HEIMER_REQUIRE_MRICRON") == "1"
AAL_HIPPOCAMPUS = {"left": 37, "right": 38}  # aal.nii.txt: "37 Hippocampus_L 4101", "38 Hippocampus_R 4102"


def template(name: str) -> Path:
    """``TEMPLATES/name`` (ch2.nii.gz, ch2bet.nii.gz, aal.nii.gz, ...); skips or fails without it."""
    path = TEMPLATES / name
    if not path.is_file():
        reason = f"{path} is missing: install the Debian package mricron-data (apt-get install mricron-data)"
        if REQUIRED:
            pytest.fail(f"{reason} (HEIMER_REQUIRE_MRICRON=1: the real-brain tests must run)", pytrace=False)
        pytest.skip(reason)
    return path


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(voxels as float32, affine) of a template."""
    img = nib.load(template(name))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine.astype(np.float64)


def downsampled(data: np.ndarray, affine: np.ndarray, factor: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Block means of ``factor`` voxels per axis and the affine of the block centres: the same
    brain on a coarser grid, still in MNI space (tests stay fast)."""
    shape = [n // factor * factor for n in data.shape]
    blocks = data[: shape[0], : shape[1], : shape[2]].reshape(
        shape[0] // factor, factor, shape[1] // factor, factor, shape[2] // factor, factor)
    coarse = affine @ np.diag([factor, factor, factor, 1.0])
    coarse[:3, 3] = nib.affines.apply_affine(affine, [(factor - 1) / 2] * 3)
    return blocks.mean(axis=(1, 3, 5)).astype(np.float32), coarse


def shifted(affine: np.ndarray, axis: int, mm: float) -> np.ndarray:
    """The affine of the same voxels moved ``mm`` along world ``axis`` (0 x, 1 y, 2 z)."""
    moved = affine.copy()
    moved[axis, 3] += mm
    return moved
