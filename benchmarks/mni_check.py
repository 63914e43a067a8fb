"""How the MNI-space check (heimer_mlflow.mni) scores scans in MNI space and the same scans moved
out of it: the measurement behind its two limits (README, "How the MNI-space check decides").

Inputs: Colin27 with and without skull and at 0.5 mm (Debian package mricron-data), a
Clinica-like 169x208x179 crop of it, synthetic cohorts at 2 and 4 mm (built from nilearn's
MNI152 template), a macaque template (inia19, also in mricron-data); each as it lies, shifted 5,
10 and 20 mm along each axis (both signs), mirrored by its voxels and by its affine along each
axis, rotated 10 degrees, rotated 15 degrees and shifted 30 mm, and with the affines a
native-space scan often has (voxel sizes only; centred on the volume).

    python benchmarks/mni_check.py [--subjects N]      (about a minute on two cores)
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from heimer_mlflow.mni import MAX_BETTER_ELSEWHERE, MIN_CORRELATION, mni_check

MRICRON = Path("/usr/share/mricron/templates")


def _rotated(affine: np.ndarray, degrees: float, shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = np.deg2rad(degrees)
    move = np.eye(4)
    move[1:3, 1:3] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    move[:3, 3] = shift
    return move @ affine


def variants(data: np.ndarray, affine: np.ndarray):
    """(condition, voxels, affine): the scan as it lies and moved out of MNI space."""
    yield "as it lies", data, affine
    for size in (5, 10, 20):
        for axis in range(3):
            for sign in (1, -1):
                moved = affine.copy()
                moved[axis, 3] += sign * size
                yield f"shifted {size} mm", data, moved
    for axis, name in ((1, "A-P"), (2, "S-I"), (0, "L-R")):
        yield f"mirrored {name} (voxels)", np.flip(data, axis), affine
        mirror = np.eye(4)
        mirror[axis, axis] = -1
        yield f"mirrored {name} (affine)", data, mirror @ affine
    yield "rotated 10 deg", data, _rotated(affine, 10)
    yield "rotated 15 deg, shifted 30 mm", data, _rotated(affine, 15, (0, 30, 10))
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    yield "native: voxel sizes only", data, np.diag([*sizes, 1.0])
    centred = np.diag([*sizes, 1.0])
    centred[:3, 3] = -sizes * (np.array(data.shape) - 1) / 2
    yield "native: centred", data, centred


def scans(work: Path, n_subjects: int):
    """(name, voxels, affine) of every MNI-space input."""
    from heimer_mlflow.demo.synthetic import write_cohort

    for name in ("ch2", "ch2bet", "ch2better"):
        img = nib.load(MRICRON / f"{name}.nii.gz")
        yield f"Colin27 {name}", np.asarray(img.dataobj, np.float32), img.affine
        if name == "ch2":  # a t1-linear-like crop: 169x208x179 around the brain
            crop = np.asarray(img.dataobj, np.float32)[6:175, 4:212, 0:179]
            affine = img.affine.copy()
            affine[:3, 3] = nib.affines.apply_affine(img.affine, (6, 4, 0))
            yield "Colin27 ch2, 169x208x179 crop", crop, affine
    for voxel_size in (2.0, 4.0):
        out = work / f"synthetic-{voxel_size:g}mm"
        write_cohort(out, n_subjects=n_subjects, seed=7, voxel_size=voxel_size, progress=False, workers=1)
        for path in sorted((out / "images").glob("*.nii.gz")):
            img = nib.load(path)
            yield f"synthetic {voxel_size:g} mm", np.asarray(img.dataobj, np.float32), img.affine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=6, help="synthetic subjects per voxel size (default 6)")
    args = parser.parse_args()
    check = mni_check()
    rows = collections.defaultdict(list)  # condition -> (correlation, moved - as it lies, refused)
    started, n = time.perf_counter(), 0
    with tempfile.TemporaryDirectory() as work:
        for _name, data, affine in scans(Path(work), args.subjects):
            for condition, voxels, moved_affine in variants(data, affine):
                match = check.match(voxels, moved_affine)
                rows[condition].append((match.correlation, match.moved_correlation - match.correlation,
                                        match.problem is not None))
                n += 1
    macaque = nib.load(MRICRON / "inia19-t1-brain.nii.gz")
    match = check.match(np.asarray(macaque.dataobj, np.float32), macaque.affine)
    rows["macaque (inia19)"].append((match.correlation, np.nan, match.problem is not None))
    print(f"limits: correlation >= {MIN_CORRELATION}, no moved version better by > {MAX_BETTER_ELSEWHERE}; "
          f"{1000 * (time.perf_counter() - started) / n:.0f} ms per scan including reading")
    print(f"{'condition':32s} {'n':>4s} {'correlation':>13s} {'moved - as is':>15s} {'refused':>8s}")
    for condition, found in rows.items():
        r = np.array([f[0] for f in found])
        gap = np.array([f[1] for f in found])
        refused = sum(f[2] for f in found)

        def span(x):
            x = x[np.isfinite(x)]
            return f"{x.min():+.2f}..{x.max():+.2f}" if len(x) else "n/a"

        print(f"{condition:32s} {len(found):4d} {span(r):>13s} {span(gap):>15s} {refused:4d}/{len(found):<3d}")


if __name__ == "__main__":
    main()
