"""Is a scan in MNI space? Judged from its voxels, because headers cannot tell.

A named atlas (``--atlas neuromorphometrics``) lies in MNI152 space and is resampled onto the
cohort's grid by world coordinates; on scans that are not in MNI space its hippocampus would
land anywhere, silently. Headers do not say which space a scan is in: Clinica's ``t1-linear``
(ANTs) writes MNI-space outputs with sform/qform codes 1 or 0, and a native-space scan can carry
any affine. So the scan itself is compared with the MNI152 2009a template that nilearn ships:

- reference: the template's brain-mask voxels on a 6 mm lattice (~9,000 points, world mm) and
  the template's values there, block-averaged to ~4 mm; computed once per process
  (:func:`mni_check`);
- a scan is block-averaged the same way and sampled (linearly) at those world points through its
  own affine; the score is the Pearson correlation with the template over the points the scan
  covers;
- the same is done with the points shifted 10 and 20 mm along each axis and mirrored
  anterior-posterior and superior-inferior (about the origin and about the scan's centre).

A scan is refused when it covers less than half of the template's brain, when its correlation
is below ``MIN_CORRELATION``, or when one of the moved versions matches the template better by
more than ``MAX_BETTER_ELSEWHERE`` (the message says which: the scan is shifted or mirrored).
Measured with ``benchmarks/mni_check.py`` (README, "How the MNI-space check decides"): Colin27
with and without skull, a Clinica-like 169x208x179 crop of it and synthetic 2 and 4 mm cohorts
score 0.57-0.82 and no moved version beats them; shifted 20 mm or mirrored A-P or S-I they are
always refused, shifted 10 mm nearly always, 5 mm in about a quarter of the cases. A left-right mirror cannot be told: the brain is too
symmetric at this scale, and so is the template.
"""

from __future__ import annotations

import functools
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from .errors import HeimerError, one_line

TEMPLATE_NAME = "MNI152 2009a template (nilearn)"
BLOCK_MM = 4.0  # scans and the template are block-averaged to about this size
POINT_SPACING_VOXELS = 6  # of the 1 mm template: ~9,000 points inside its brain mask
MIN_COVERAGE = 0.5  # share of the template's brain the scan's field of view must cover
MIN_CORRELATION = 0.45  # measured: MNI-space scans >= 0.57; native-space affines <= 0.38, shifted 20 mm <= 0.38
MAX_BETTER_ELSEWHERE = 0.10  # measured: MNI-space scans -0.04 or less; shifted 20 mm or mirrored +0.23 or more
SHIFTS_MM = (10.0, 20.0)
UP_FRONT_SCANS = 8  # how many scans, spread over the cohort, are checked before the run opens

DESCRIPTION = (f"content compared with the {TEMPLATE_NAME} inside its brain mask at about {BLOCK_MM:g} mm: "
               f"correlation at least {MIN_CORRELATION:.2f}, and no version shifted 10 or 20 mm or mirrored "
               f"A-P or S-I better by more than {MAX_BETTER_ELSEWHERE:.2f}; checked on up to {UP_FRONT_SCANS} scans "
               "before the run and on every scan as it loaded (a left-right mirror cannot be told)")

_DIRECTIONS = {(0, 1): "right", (0, -1): "left", (1, 1): "anterior", (1, -1): "posterior",
               (2, 1): "superior", (2, -1): "inferior"}
_MIRRORS = {1: "anterior-posterior", 2: "superior-inferior"}


@dataclass(frozen=True)
class Match:
    """How one scan compares with the template, as it lies and at its best moved version."""

    correlation: float  # as the scan lies; nan when it covers too little of the brain
    coverage: float  # share of the template's brain points inside the scan's field of view
    moved: str | None = None  # the moved version that matches best, in words
    moved_correlation: float = float("nan")

    @property
    def problem(self) -> str | None:
        """Why the scan is not taken to be in MNI space; None when it is."""
        if self.coverage < MIN_COVERAGE:
            return (f"not in MNI space: its field of view covers {self.coverage:.0%} of the MNI152 brain "
                    f"(an MNI-space scan covers it)")
        if self.moved is not None and self.moved_correlation > self.correlation + MAX_BETTER_ELSEWHERE:
            return (f"not in MNI space: {self.moved} (correlation with the MNI152 template "
                    f"{self.moved_correlation:.2f} moved back, {self.correlation:.2f} as it lies)")
        if not self.correlation >= MIN_CORRELATION:
            return (f"not in MNI space: its correlation with the MNI152 template is {self.correlation:.2f} "
                    f"(MNI-space scans give {MIN_CORRELATION:.2f} or more)")
        return None


@dataclass(frozen=True)
class SpaceCheck:
    """The template's reference points (world mm) and values; picklable, so DataLoader workers
    and torchrun ranks get it with the dataset."""

    points: np.ndarray  # [n, 3] world mm (RAS)
    template: np.ndarray  # [n] the template's values there, block-averaged as a scan is

    def match(self, data: np.ndarray, affine: np.ndarray) -> Match:
        coarse, coarse_affine = _block_average(np.asarray(data, dtype=np.float32), np.asarray(affine, float))
        to_voxels = np.linalg.inv(coarse_affine)
        correlation, coverage = self._correlation(coarse, to_voxels, self.points)
        if coverage < MIN_COVERAGE:
            return Match(correlation, coverage)
        centre = nib.affines.apply_affine(coarse_affine, (np.array(coarse.shape) - 1) / 2)
        best, best_r = None, -np.inf
        for moved, words in _moved_points(self.points, centre):
            r, _ = self._correlation(coarse, to_voxels, moved)
            if r > best_r:
                best, best_r = words, r
        return Match(correlation, coverage, best, best_r)

    def problem(self, data: np.ndarray, affine: np.ndarray) -> str | None:
        """Why this volume is not in MNI space (one line), or None."""
        return self.match(data, affine).problem

    def _correlation(self, data, to_voxels, points) -> tuple[float, float]:
        voxels = nib.affines.apply_affine(to_voxels, points)
        inside = np.all((voxels >= -0.5) & (voxels <= np.array(data.shape) - 0.5), axis=1)
        coverage = float(inside.mean())
        if coverage < MIN_COVERAGE:
            return float("nan"), coverage
        values = ndimage.map_coordinates(data, voxels[inside].T, order=1, mode="nearest")
        template = self.template[inside]
        if values.std() == 0:
            return 0.0, coverage
        return float(np.corrcoef(values, template)[0, 1]), coverage


def _moved_points(points: np.ndarray, centre: np.ndarray):
    """(points, words): the template's points shifted along each axis and mirrored A-P and S-I.
    Sampling the scan at ``p + s`` finds there what MNI space has at ``p``: its brain lies ``s``
    away from where it should."""
    for axis in range(3):
        for size in SHIFTS_MM:
            for sign in (1, -1):
                moved = points.copy()
                moved[:, axis] += sign * size
                yield moved, f"its brain lies about {size:g} mm {_DIRECTIONS[axis, sign]} of where MNI space has it"
    for axis, words in _MIRRORS.items():
        for about, where in ((0.0, "about the origin"), (centre[axis], "about its centre")):
            moved = points.copy()
            moved[:, axis] = 2 * about - moved[:, axis]
            yield moved, f"it is mirrored {words} ({where})"


def _block_average(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The volume averaged over blocks of about ``BLOCK_MM`` (whole voxels per axis), and the
    affine of the block centres: cheap, and it makes 1 mm and 4 mm scans comparable."""
    if data.ndim == 4:
        data = data[..., 0]
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    factors = np.maximum(1, np.floor(BLOCK_MM / np.maximum(sizes, 1e-6) + 0.01)).astype(int)
    factors = np.minimum(factors, np.maximum(1, np.array(data.shape) // 2))
    if (factors == 1).all():
        return data, affine
    kept = [n // f * f for n, f in zip(data.shape, factors)]
    blocks = data[: kept[0], : kept[1], : kept[2]].reshape(
        kept[0] // factors[0], factors[0], kept[1] // factors[1], factors[1], kept[2] // factors[2], factors[2])
    coarse_affine = affine @ np.diag([*factors.astype(float), 1.0])
    coarse_affine[:3, 3] = nib.affines.apply_affine(affine, (factors - 1) / 2)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32), coarse_affine


@functools.lru_cache(maxsize=1)
def mni_check() -> SpaceCheck:
    """The reference, built once per process from nilearn's MNI152 template and brain mask: the
    template block-averaged exactly as a scan is, at the brain mask's lattice points."""
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=1)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    lattice = np.zeros_like(mask)
    lattice[::POINT_SPACING_VOXELS, ::POINT_SPACING_VOXELS, ::POINT_SPACING_VOXELS] = True
    points = nib.affines.apply_affine(template.affine, np.argwhere(mask & lattice))
    coarse, coarse_affine = _block_average(template.get_fdata(dtype=np.float32), template.affine.astype(float))
    voxels = nib.affines.apply_affine(np.linalg.inv(coarse_affine), points)
    values = ndimage.map_coordinates(coarse, voxels.T, order=1, mode="nearest")
    return SpaceCheck(points, values.astype(np.float32))


def spread(n_items: int, k: int = UP_FRONT_SCANS) -> list[int]:
    """Up to ``k`` indices spread evenly over ``n_items`` (first and last included)."""
    return sorted({int(round(i)) for i in np.linspace(0, n_items - 1, min(k, n_items))}) if n_items else []


def check_cohort_space(table, *, atlas_name: str, skip_bad: bool, progress: bool = False) -> None:
    """Before the run opens: up to ``UP_FRONT_SCANS`` scans spread over the cohort (columns
    ``subject_id``, ``path``) must be in MNI space. Raises ``HeimerError`` naming every scan
    refused, unless ``skip_bad`` and some passed (then each scan is judged as it loads, and the
    ones out of MNI space are left out with the reason). Unreadable scans are left to the
    cohort's own checks."""
    from .cohort import load_volume

    rows = [table.iloc[i] for i in spread(len(table))]
    check = mni_check()

    def judge(row) -> tuple[str, str | None] | None:
        try:
            data, affine = load_volume(row["path"])
        except (ValueError, OSError, EOFError):
            return None
        return str(row["subject_id"]), check.problem(data, affine)

    if progress:
        print(f"[heimer] checking that {len(rows)} scans are in MNI space (for the {atlas_name} atlas)",
              file=sys.stderr)
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        judged = [j for j in pool.map(judge, rows) if j is not None]
    refused = [(sid, why) for sid, why in judged if why]
    if not refused or (skip_bad and len(refused) < len(judged)):
        return
    listed = "; ".join(f"{sid}: {why.removeprefix('not in MNI space: ')}" for sid, why in refused)
    raise HeimerError(one_line(
        f"{len(refused)} of {len(judged)} scans checked are not in MNI space, which --atlas {atlas_name} needs "
        f"({listed}); register the scans to MNI152 (e.g. Clinica t1-linear) or give an atlas on their grid "
        "with --atlas NIFTI --atlas-labels CSV"))
