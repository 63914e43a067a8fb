"""What a brain figure shows, read from its Axes' images rather than its pixels: the planes drawn
in each of the three views (axial, coronal, sagittal, as ``figures.slices.draw_views`` lays them
out) against the same slices cut here by nibabel, independently of the package's own slicing."""

from __future__ import annotations

import nibabel as nib
import numpy as np

VIEWS = ("axial", "coronal", "sagittal")


def drawn_planes(ax, cmap: str) -> list[np.ndarray]:
    """The planes drawn with colour map ``cmap`` in ``ax``, in drawing order, hidden values as NaN."""
    return [np.ma.filled(np.ma.asarray(image.get_array(), dtype=float), np.nan)
            for image in ax.images if image.get_cmap().name.startswith(cmap)]  # fmt: skip


def slices_through_peak(volume, affine, *, absolute: bool = False) -> tuple[tuple[int, int, int], dict[str, np.ndarray]]:
    """The volume in RAS voxel order (nibabel's closest canonical), its peak voxel there (of
    ``|volume|`` when ``absolute``), and its axial, coronal and sagittal slices through that peak,
    rows running up the view's vertical axis."""
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(volume, np.float32), np.asarray(affine, float)))
    data = np.asarray(image.dataobj, dtype=float)
    i, j, k = np.unravel_index(int(np.nanargmax(np.abs(data) if absolute else data)), data.shape)
    return (i, j, k), {"axial": data[:, :, k].T, "coronal": data[:, j, :].T, "sagittal": data[i, :, :].T}


def slices_at(volume, affine, ijk) -> dict[str, np.ndarray]:
    """``volume``'s three slices through the RAS voxel ``ijk`` (as ``slices_through_peak`` gives it)."""
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(volume, np.float32), np.asarray(affine, float)))
    data, (i, j, k) = np.asarray(image.dataobj, dtype=float), ijk
    return {"axial": data[:, :, k].T, "coronal": data[:, j, :].T, "sagittal": data[i, :, :].T}


def assert_views_cross_at_the_peak(ax, volume, affine, cmap: str, *, signed: bool = False) -> None:
    """The map drawn with ``cmap`` in ``ax`` is ``volume`` cut through its peak, small values
    hidden: as a share of its maximum (a heat map), or with ``signed`` as it is, through the
    largest |value| (a difference on a diverging scale). Each view's strongest drawn voxel is the
    peak's place in that plane, and every value drawn is the volume's there."""
    planes = drawn_planes(ax, cmap)
    assert len(planes) == 3, f"{len(planes)} planes drawn with {cmap}"
    (i, j, k), expected = slices_through_peak(volume, affine, absolute=signed)
    peak_in_plane = {"axial": (j, i), "coronal": (k, i), "sagittal": (k, j)}
    for name, plane in zip(VIEWS, planes):
        want = expected[name] if signed else expected[name] / np.nanmax(volume)
        assert plane.shape == want.shape, (name, plane.shape, want.shape)
        strongest = np.nanargmax(np.abs(plane) if signed else plane)
        assert np.unravel_index(int(strongest), plane.shape) == peak_in_plane[name], name
        shown = np.isfinite(plane)
        np.testing.assert_allclose(plane[shown], want[shown], rtol=1e-5, atol=1e-6, err_msg=name)
