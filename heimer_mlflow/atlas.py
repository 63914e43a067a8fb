"""Region maps on the cohort's grid: an atlas (integer labels + their names) and a brain mask,
read from NIfTI files that must already lie on the model's input grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd

from .errors import HeimerError


def _on_grid(path: str, what: str, grid_shape, grid_affine) -> np.ndarray:
    """The voxels of ``path``, a NIfTI that must lie on the cohort's grid (shape and affine)."""
    try:
        img = nib.load(path)
        voxels = np.asarray(img.dataobj)
    except Exception as e:
        raise HeimerError(f"{what} {path} cannot be read as NIfTI ({type(e).__name__}); give a NIfTI image on the input grid") from None
    if voxels.shape != tuple(grid_shape):
        raise HeimerError(
            f"{what} {path} has shape {voxels.shape}, the cohort grid is {tuple(grid_shape)}; "
            f"resample the {what} to the input grid (nearest neighbour)"
        )
    if not np.allclose(img.affine, grid_affine, atol=1e-3):
        raise HeimerError(f"{what} {path} has another affine than the cohort images; resample it to their grid")
    return voxels


def load_brain_mask(path: str, grid_shape, grid_affine) -> np.ndarray:
    """A brain mask on the model's input grid (nonzero = brain), as bool."""
    voxels = _on_grid(path, "brain mask", grid_shape, grid_affine)
    mask = np.nan_to_num(voxels) != 0
    if not mask.any() or mask.all():
        raise HeimerError(f"brain mask {path} is {'empty' if not mask.any() else 'all brain'}: "
                          "give a mask that is nonzero inside the brain and zero outside")  # fmt: skip
    return mask


def load_atlas(atlas: str, labels_csv: str, grid_shape, grid_affine) -> tuple[np.ndarray, dict[int, str]]:
    """An integer label image on the model's input grid and its label table (index,name)."""
    labels = _on_grid(atlas, "atlas", grid_shape, grid_affine)
    try:
        table = pd.read_csv(labels_csv)
    except Exception as e:
        raise HeimerError(f"atlas label table {labels_csv} is not a readable CSV ({type(e).__name__})") from None
    if not {"index", "name"} <= set(table.columns):
        raise HeimerError(f"atlas label table {labels_csv} needs the columns index,name (has {', '.join(table.columns)})")
    names = {int(i): str(n) for i, n in zip(table["index"], table["name"]) if int(i) != 0}
    present = set(np.unique(labels).astype(int)) - {0}
    if not present & set(names):
        raise HeimerError(f"none of the labels in {labels_csv} occur in {atlas}")
    return np.rint(labels).astype(np.int64), names
