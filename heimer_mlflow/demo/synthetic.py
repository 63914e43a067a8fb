"""Synthetic AD/CN cohort with planted, known ground truth (the recipe: docs/cohort.md).

No real patient MRI may ship with the project, so the demo, the tests and the benchmarks use
subjects built at run time from the MNI ICBM152 2009a templates that nilearn ships inside its
wheel. Because the regions where AD differs from CN are *planted*, every Grad-CAM or difference
map can be scored against a known answer.

Recipe, per voxel size (built once per process and cached):

- resample the 1 mm T1, grey/white-matter maps and brain mask onto the MNI 2 mm-style grid
  (anti-aliased with sigma = 0.425 x voxel size);
- regions of interest: lateral ventricles from CSF = mask - GM - WM (thresholds, box and
  largest component per side as docs/cohort.md says) and hippocampi as ellipsoids;
- for each ROI type (hippocampus, ventricles), a unit field along the gradient of the blurred
  ROI mask and a lookup table from gain (mm) to realised volume factor. The displacement is
  the flow of gain x field (scaling and squaring), so even a tripled ventricle never folds.

Per subject (one numpy Generator per (seed, subject index), so the output does not depend on
the number of workers):

1. anatomy: gains reach a sampled volume factor (hippocampus N(0.77, 0.10) for AD,
   N(1.0, 0.10) for CN; ventricles lognormal, median 1.5 for AD, 1.0 for CN, sigma 0.25);
2. pose (rotation +-5 degrees, translation +-3 mm, scale +-4 %) and a smooth elastic field
   (6x7x6 control points, SD 1 mm);
3. all displacements composed into ONE sampling map (output voxel -> template voxel), so the
   image, the brain mask and the ROI masks are each sampled from the template once, with
   ``scipy.ndimage.map_coordinates`` (linear; masks thresholded at half occupancy);
4. bias field exp(polynomial of degree <= 3), Rician noise (sigma 2-4 % of white matter),
   background zeroed with the warped brain mask, z-score inside the brain.

With ``shortcut=True`` (a negative control) nobody gets planted atrophy; instead AD subjects
carry a bright cube in the background, well away from the brain, which a model can learn as a
shortcut and the report's "attention outside the brain" check must flag. With ``marker=0.9`` (a
mixed cohort, for registry reviews) atrophy is planted as usual and the same patch marks 90% of
AD and 10% of CN subjects, as a site or scanner that goes with the diagnosis would.
"""

from __future__ import annotations

import csv
import multiprocessing
import numbers
import os
import pathlib
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed

import nibabel as nib
import numpy as np
from tqdm import tqdm

from heimer_mlflow.demo.anatomy import (  # noqa: F401 - grid_for: the cohort's grid, also read from here
    ATLAS_LABELS, MAX_VOXEL_SIZE, MIN_VOXEL_SIZE, Setup, grid_for, setup_for, simulate, subject_rng,
)
from heimer_mlflow.errors import HeimerError, writable_folder

MANIFEST_COLUMNS = ("subject_id", "path", "label", "site", "sex", "age")

# First line of NOTICE.txt: how write_cohort recognises a folder it may overwrite.
NOTICE_MARKER = "heimer-mlflow synthetic cohort"
MNI_NOTICE = (
    "The images are derived from the MNI ICBM152 2009a nonlinear template (T1, grey and white\n"
    "matter probability maps and brain mask, as shipped with nilearn).\n"
    "\n"
    "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal\n"
    "Neurological Institute, McGill University. Permission to use, copy, modify, and distribute\n"
    "this software and its documentation for any purpose and without fee is hereby granted,\n"
    "provided that the above copyright notice appear in all copies. The authors and McGill\n"
    "University make no representations about the suitability of this software for any\n"
    "purpose. It is provided \"as is\" without express or implied warranty. The authors are not\n"
    "responsible for any data loss, equipment damage, property loss, or injury to subjects or\n"
    "patients resulting from the use or misuse of this software package.\n"
)

AGE_MEAN = {"AD": 74.0, "CN": 71.0}  # AD slightly older, as in ADNI-like cohorts
AGE_SD, AGE_RANGE = 7.0, (55, 90)


# ----------------------------------------------------------------------------------------------
# The cohort on disk
# ----------------------------------------------------------------------------------------------


def _save(data: np.ndarray, affine: np.ndarray, path: pathlib.Path, space: str) -> None:
    """NIfTI with the grid's affine as both qform and sform (``space``: 'mni' or 'scanner')."""
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=space)
    image.set_sform(affine, code=space)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def _subject_id(index: int, n_subjects: int) -> str:
    return f"sub-{index + 1:0{max(4, len(str(n_subjects)))}d}"


def _write_subject(setup: Setup, seed: int, index: int, subject_id: str, label: str,
                   shortcut: bool, with_patch: bool, out: pathlib.Path) -> dict:
    """Simulate one subject, write its image and masks; return its truth.csv row."""
    # In the negative control nobody is planted: the label lives in the background patch only.
    subject = simulate(setup, seed, index, planted=label == "AD" and not shortcut, with_patch=with_patch)
    _save(subject.image, setup.affine, out / "images" / f"{subject_id}.nii.gz", "scanner")
    _save(subject.roi, setup.affine, out / "masks" / f"{subject_id}_roi.nii.gz", "scanner")
    _save(subject.changed, setup.affine, out / "masks" / f"{subject_id}_changed.nii.gz", "scanner")
    return {"subject_id": subject_id, "label": label, "shortcut": shortcut, **subject.truth}


_WORKER_SETUP: Setup | None = None  # a worker process's copy, set once by _init_worker


def _init_worker(setup: Setup) -> None:
    global _WORKER_SETUP
    _WORKER_SETUP = setup


def _write_subject_in_worker(*args) -> dict:
    return _write_subject(_WORKER_SETUP, *args)


def _process_context():
    """fork on Linux, as torch's DataLoader does: workers inherit the set-up without pickling,
    and spawn would re-run the caller's main script (which hangs the pool from ``python -``
    or an unguarded script). Elsewhere fork is unsafe (macOS frameworks), so spawn."""
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method)


def _covariates(n_subjects: int, seed: int, ad_fraction: float, n_sites: int) -> list[dict]:
    """Manifest rows minus paths: labels shuffled, sites balanced, sex and age at random."""
    rng = subject_rng(seed, 0)
    n_ad = min(max(round(n_subjects * ad_fraction), 1), n_subjects - 1)
    labels = rng.permutation(["AD"] * n_ad + ["CN"] * (n_subjects - n_ad))
    sites = rng.permutation(np.resize(np.arange(n_sites), n_subjects))
    sexes = rng.choice(["F", "M"], n_subjects)
    noise = rng.standard_normal(n_subjects)
    rows = []
    for i in range(n_subjects):
        age = np.clip(round(AGE_MEAN[labels[i]] + AGE_SD * noise[i]), *AGE_RANGE)
        rows.append({
            "subject_id": _subject_id(i, n_subjects),
            "label": str(labels[i]),
            "site": f"site-{chr(ord('A') + int(sites[i]))}",
            "sex": str(sexes[i]),
            "age": int(age),
        })
    return rows


def _with_marker(labels: list[str], seed: int, shortcut: bool, marker: float | None) -> list[bool]:
    """Which subjects carry the background patch: every AD subject in the negative control; with
    ``marker``, that share of AD subjects and the complement of CN subjects (drawn once per cohort)."""
    if shortcut:
        return [label == "AD" for label in labels]
    if marker is None:
        return [False] * len(labels)
    draws = subject_rng(seed, 2).random(len(labels))
    return [bool(u < (marker if label == "AD" else 1.0 - marker)) for u, label in zip(draws, labels)]


def _validate(out: pathlib.Path, n_subjects, seed, voxel_size, ad_fraction, n_sites, workers):
    def check(ok: bool, message: str) -> None:
        if not ok:
            raise HeimerError(message)

    def integer(x) -> bool:  # numpy integers welcome, booleans not
        return isinstance(x, numbers.Integral) and not isinstance(x, bool)

    def real(x) -> bool:
        return isinstance(x, numbers.Real) and not isinstance(x, bool)

    check(integer(n_subjects) and n_subjects >= 2,
          f"n_subjects={n_subjects!r}: a cohort needs at least 2 subjects (one AD, one CN)")
    check(integer(seed) and seed >= 0, f"seed={seed!r}: use a non-negative integer")
    check(real(voxel_size) and MIN_VOXEL_SIZE < voxel_size <= MAX_VOXEL_SIZE,
          f"voxel_size={voxel_size!r}: choose a size in mm above {MIN_VOXEL_SIZE} and at most "
          f"{MAX_VOXEL_SIZE}, e.g. 2.0")
    check(real(ad_fraction) and 0.0 < ad_fraction < 1.0,
          f"ad_fraction={ad_fraction!r}: use a fraction strictly between 0 and 1, e.g. 0.5")
    check(integer(n_sites) and 1 <= n_sites <= 26,
          f"n_sites={n_sites!r}: use 1 to 26 sites (named site-A to site-Z)")
    check(workers is None or (integer(workers) and workers >= 1),
          f"workers={workers!r}: use a positive number of processes, or None for the default")
    check(not out.exists() or out.is_dir(), f"{out} is a file: give a folder for the cohort")
    if out.is_dir() and any(out.iterdir()):
        notice = out / "NOTICE.txt"
        ours = notice.is_file() and notice.read_text(errors="replace").startswith(NOTICE_MARKER)
        check(ours, f"{out} is not empty and holds no cohort written by heimer-mlflow: "
                    "give a new or empty folder, so the cohort's files are not mixed with others")


def _clear_previous_cohort(out: pathlib.Path) -> None:
    """Remove the files an earlier write_cohort left here, so no stale subject survives."""
    patterns = ("manifest.csv", "truth.csv", "images/sub-*.nii.gz", "masks/sub-*_roi.nii.gz",
                "masks/sub-*_changed.nii.gz")
    for pattern in patterns:
        for path in out.glob(pattern):
            path.unlink()


def _write_csv(path: pathlib.Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_cohort(out_dir, *, n_subjects: int = 80, seed: int = 0, voxel_size: float = 2.0,
                 shortcut: bool = False, ad_fraction: float = 0.5, n_sites: int = 3,
                 marker: float | None = None, workers: int | None = None, progress: bool = True) -> pathlib.Path:
    """Write a synthetic cohort; return the path of OUT_DIR/manifest.csv.

    Layout: ``manifest.csv`` (subject_id, path, label, site, sex, age), ``images/sub-*.nii.gz``,
    ``masks/sub-*_roi.nii.gz`` (ATLAS_LABELS) and ``masks/sub-*_changed.nii.gz``,
    ``truth.csv`` (planted volume factors and ROI volumes, not covariates), ``atlas/``
    (``atlas.nii.gz``, ``labels.csv``, ``brain_mask.nii.gz``) and ``NOTICE.txt``. Every file is
    on the grid of :func:`grid_for`. The output depends on ``seed`` only, not on ``workers``.
    ``marker`` (a mixed cohort, as multi-site data is): planted atrophy as usual, and the
    background patch of the negative control on that share of AD subjects and on ``1 - marker``
    of CN subjects, like a scanner that goes with the diagnosis (``truth.csv``: ``has_patch``).
    A folder that an earlier call wrote is overwritten; any other non-empty folder is refused.
    """
    out = pathlib.Path(out_dir)
    _validate(out, n_subjects, seed, voxel_size, ad_fraction, n_sites, workers)
    if marker is not None and (shortcut or isinstance(marker, bool) or not 0.0 <= float(marker) <= 1.0):
        raise HeimerError(f"marker={marker!r}: give the share of AD subjects with the marker, between 0 and 1 "
                          "(e.g. 0.9), and not together with shortcut")
    n_subjects, seed, n_sites = int(n_subjects), int(seed), int(n_sites)
    voxel_size, ad_fraction = float(voxel_size), float(ad_fraction)
    writable_folder(out, "the cohort folder")
    _clear_previous_cohort(out)
    for sub in ("images", "masks", "atlas"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "NOTICE.txt").write_text(
        f"{NOTICE_MARKER}, written by heimer_mlflow.demo.synthetic.write_cohort\n"
        f"parameters: seed={seed} n_subjects={n_subjects} voxel_size={voxel_size} "
        f"shortcut={shortcut} marker={marker} ad_fraction={ad_fraction} n_sites={n_sites}\n\n{MNI_NOTICE}"
    )

    setup = setup_for(voxel_size)
    atlas = out / "atlas"
    _save(setup.labels, setup.affine, atlas / "atlas.nii.gz", "mni")
    _save((setup.brain >= 0.5).astype(np.uint8), setup.affine, atlas / "brain_mask.nii.gz", "mni")
    _write_csv(atlas / "labels.csv", [{"index": k, "name": n} for k, n in ATLAS_LABELS.items()])

    rows = _covariates(n_subjects, seed, ad_fraction, n_sites)
    patched = _with_marker([row["label"] for row in rows], seed, shortcut, marker)
    jobs = [(seed, i, row["subject_id"], row["label"], shortcut, patched[i], out) for i, row in enumerate(rows)]
    workers = min(workers or min(2, os.cpu_count() or 1), n_subjects)
    bar = tqdm(total=n_subjects, desc="synthetic cohort", unit="subject", file=sys.stderr,
               disable=not progress)
    truth = [None] * n_subjects
    with bar:
        if workers == 1:
            for i, job in enumerate(jobs):
                truth[i] = _write_subject(setup, *job)
                bar.update()
        else:
            with ProcessPoolExecutor(workers, mp_context=_process_context(),
                                     initializer=_init_worker, initargs=(setup,)) as pool:
                futures = {
                    pool.submit(_write_subject_in_worker, *job): i for i, job in enumerate(jobs)
                }
                for future in as_completed(futures):
                    truth[futures[future]] = future.result()
                    bar.update()

    _write_csv(out / "truth.csv", truth)
    # The manifest comes last: its presence means the cohort is complete.
    manifest = [{"path": f"images/{r['subject_id']}.nii.gz", **r} for r in rows]
    _write_csv(out / "manifest.csv", [{c: r[c] for c in MANIFEST_COLUMNS} for r in manifest])
    return out / "manifest.csv"
