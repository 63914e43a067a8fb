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
import functools
import math
import multiprocessing
import numbers
import os
import pathlib
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import NamedTuple

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline
from tqdm import tqdm

from heimer_mlflow.errors import HeimerError, writable_folder

ATLAS_LABELS = {
    1: "hippocampus_left",
    2: "hippocampus_right",
    3: "lateral_ventricle_left",
    4: "lateral_ventricle_right",
}
ROI_TYPES = {"hippocampus": (1, 2), "ventricle": (3, 4)}

# Field of view: the usual MNI bounding box (RAS, mm); 2 mm gives the familiar 91x109x91.
FOV_MIN = np.array([-90.0, -126.0, -72.0])
FOV_MAX = np.array([90.0, 90.0, 108.0])

MANIFEST_COLUMNS = ("subject_id", "path", "label", "site", "sex", "age")
MIN_VOXEL_SIZE, MAX_VOXEL_SIZE = 0.75, 4.0  # exclusive, inclusive (mm)

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

# Template ROIs (docs/cohort.md; validated against Harvard-Oxford and Neuromorphometrics at 2 mm).
VENTRICLE_CSF_MIN, VENTRICLE_T1_MAX = 0.5, 0.45
VENTRICLE_BOX = ((-36.0, 36.0), (-82.0, 34.0), (-8.0, 32.0))  # mm per axis, inclusive
HIPPOCAMPUS_CENTRES = {1: (-24.7, -23.0, -13.7), 2: (26.3, -21.4, -13.9)}  # mm, by label
HIPPOCAMPUS_SEMI_AXES = (27.5, 12.2, 5.3)  # mm: long axis, left-right, across both
HIPPOCAMPUS_LONG_AXIS = (0.0, 0.78, -0.62)  # head anterior-inferior, tail posterior-superior

# Subject variation (docs/cohort.md, "One subject").
ROI_BLUR_MM = 3.0
HIPPOCAMPUS_FACTOR = {"AD": 0.77, "CN": 1.0}  # mean of a normal, SD below
HIPPOCAMPUS_FACTOR_SD = 0.10
VENTRICLE_FACTOR = {"AD": 1.5, "CN": 1.0}  # median of a lognormal, sigma below
VENTRICLE_FACTOR_SIGMA = 0.25
MAX_ROTATION_DEG, MAX_TRANSLATION_MM, MAX_SCALE = 5.0, 3.0, 0.04
ELASTIC_CONTROL_POINTS, ELASTIC_SD_MM = (6, 7, 6), 1.0
BIAS_DEGREE, BIAS_COEFF = 3, 0.15
NOISE_FRACTION_OF_WM = (0.02, 0.04)
AGE_MEAN = {"AD": 74.0, "CN": 71.0}  # AD slightly older, as in ADNI-like cohorts
AGE_SD, AGE_RANGE = 7.0, (55, 90)


# AD displacement: the velocity field gain x direction is integrated as a flow (scaling and
# squaring), so even a tripled ventricle never folds; its first step is at most this long.
FLOW_STEP_MM = 1.0
# Lookup-table gains (mm): small ones in one step, larger ones by doubling base gains in
# (0.5, 1] mm, which are exactly the steps a subject's flow of that gain takes.
LUT_SMALL_GAINS_MM = (0.125, 0.25, 0.375, 0.5)
LUT_BASE_GAINS_MM = tuple(0.5 * 2 ** (j / 4) for j in range(1, 5))
LUT_DOUBLINGS = 3  # base gains up to 1 mm, doubled up to 8 mm

# Shortcut patch: z-scored intensity (white matter sits near +1), margin from the FOV edge.
PATCH_VALUE, PATCH_NOISE_SD, PATCH_MARGIN_VOXELS = 4.0, 0.1, 2

# Bias polynomial terms x^a y^b z^c with 1 <= a + b + c <= degree (a constant term would only
# scale the image, which the z-score undoes).
_BIAS_TERMS = [
    (a, b, c)
    for a in range(BIAS_DEGREE + 1)
    for b in range(BIAS_DEGREE + 1)
    for c in range(BIAS_DEGREE + 1)
    if 1 <= a + b + c <= BIAS_DEGREE
]


class CohortGrid(NamedTuple):
    """The output grid for one voxel size; unpacks as ``shape, affine = grid_for(v)``."""

    shape: tuple[int, int, int]
    affine: np.ndarray  # 4x4 RAS voxel-to-mm


def grid_for(voxel_size: float) -> CohortGrid:
    """Grid covering the MNI bounding box: ``floor(extent / v) + 1`` voxels per axis."""
    v = float(voxel_size)
    # The epsilon keeps e.g. 180 / 1.5 = 120 from flooring to 119 through rounding.
    shape = tuple(int(math.floor((hi - lo) / v + 1e-6)) + 1 for lo, hi in zip(FOV_MIN, FOV_MAX))
    affine = np.diag([v, v, v, 1.0])
    affine[:3, 3] = FOV_MIN
    return CohortGrid(shape, affine)


# ----------------------------------------------------------------------------------------------
# One-off set-up per voxel size
# ----------------------------------------------------------------------------------------------


@dataclass
class _Setup:
    """Everything a worker needs for one voxel size; plain arrays, so it pickles cheaply."""

    voxel_size: float
    shape: tuple[int, int, int]
    affine: np.ndarray
    t1: np.ndarray  # float32, template T1 on the grid (0-1)
    brain: np.ndarray  # float32, brain-mask fraction on the grid
    labels: np.ndarray  # uint8, ATLAS_LABELS on the grid (the atlas we ship)
    wm_intensity: float  # template T1 in white matter, the noise reference
    centre: np.ndarray  # voxel coordinates of the brain centre, the pose pivot
    crop_lo: np.ndarray  # voxel box holding every ROI and its displacement field
    directions: dict[str, np.ndarray]  # ROI type -> (3, *crop) field, |.| <= 1, voxel axes
    occupancy: dict[str, np.ndarray]  # ROI type -> float32 fraction of each crop voxel
    template_voxels: dict[str, int]  # ROI type -> voxels with occupancy >= 0.5
    lut_gain: dict[str, np.ndarray]  # ROI type -> gains (mm), increasing
    lut_factor: dict[str, np.ndarray]  # ROI type -> realised volume factor per gain
    elastic_bases: tuple[np.ndarray, ...]  # per axis (n, control points)
    bias_bases: tuple[np.ndarray, ...]  # per axis (n, degree + 1): powers of [-1, 1]
    patch: tuple[slice, slice, slice]

    def gain_for(self, roi_type: str, factor: float) -> float:
        """Gain (mm) giving ``factor`` x the template volume (clipped to the table's range)."""
        return float(np.interp(factor, self.lut_factor[roi_type], self.lut_gain[roi_type]))


@functools.lru_cache(maxsize=1)
def _load_templates() -> dict[str, np.ndarray]:
    """The nilearn 1 mm MNI templates (offline, inside the wheel) and their geometry."""
    from nilearn import datasets  # slow import, needed only in the process that sets up

    t1 = datasets.load_mni152_template(resolution=1)
    return {
        "t1": t1.get_fdata(dtype=np.float32),
        "gm": datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32),
        "wm": datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32),
        "brain": datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32),
        "origin": t1.affine[:3, 3].copy(),
        "spacing": np.diag(t1.affine)[:3].copy(),
    }


def _box(tpl: dict, lo_mm, hi_mm):
    """Slices of the 1 mm template covering [lo_mm, hi_mm], and their sparse mm coordinates."""
    lo = np.floor((np.asarray(lo_mm) - tpl["origin"]) / tpl["spacing"]).astype(int)
    hi = np.ceil((np.asarray(hi_mm) - tpl["origin"]) / tpl["spacing"]).astype(int) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    mm = np.meshgrid(
        *(tpl["origin"][a] + tpl["spacing"][a] * np.arange(b.start, b.stop)
          for a, b in enumerate(box)),
        indexing="ij",
        sparse=True,
    )
    return box, mm


def _template_rois(tpl: dict[str, np.ndarray]) -> np.ndarray:
    """ATLAS_LABELS on the 1 mm template grid, built as docs/cohort.md describes."""
    labels = np.zeros(tpl["t1"].shape, np.uint8)

    # Only the ventricle box and the ellipsoids' bounding boxes are computed: 1 mm is big.
    box, (x, _, _) = _box(tpl, *zip(*VENTRICLE_BOX))
    csf = tpl["brain"][box] - tpl["gm"][box] - tpl["wm"][box]
    candidates = (csf > VENTRICLE_CSF_MIN) & (tpl["t1"][box] < VENTRICLE_T1_MAX)
    left, right = ROI_TYPES["ventricle"]
    for label, side in ((left, x < 0), (right, x > 0)):
        components, count = ndimage.label(candidates & side)
        if count == 0:
            raise RuntimeError("no ventricle candidates in nilearn's MNI template")
        largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
        labels[box][components == largest] = label

    long_axis = np.asarray(HIPPOCAMPUS_LONG_AXIS) / np.linalg.norm(HIPPOCAMPUS_LONG_AXIS)
    left_right = np.array([1.0, 0.0, 0.0])
    across = np.cross(long_axis, left_right)
    reach = max(HIPPOCAMPUS_SEMI_AXES)
    for label, centre in HIPPOCAMPUS_CENTRES.items():
        box, mm = _box(tpl, np.subtract(centre, reach), np.add(centre, reach))
        d = [m - c for m, c in zip(mm, centre)]
        q = sum(
            ((axis[0] * d[0] + axis[1] * d[1] + axis[2] * d[2]) / semi) ** 2
            for axis, semi in zip((long_axis, left_right, across), HIPPOCAMPUS_SEMI_AXES)
        )
        labels[box][q <= 1.0] = label
    return labels


def _resample_to_grid(volume: np.ndarray, tpl: dict, voxel_size: float, shape) -> np.ndarray:
    """Anti-alias (sigma 0.425 x voxel size) and sample a 1 mm template volume on the grid."""
    sigma = 0.425 * voxel_size / tpl["spacing"]
    smoothed = ndimage.gaussian_filter(volume.astype(np.float32), sigma)
    return ndimage.affine_transform(
        smoothed,
        voxel_size / tpl["spacing"],
        (FOV_MIN - tpl["origin"]) / tpl["spacing"],
        output_shape=shape,
        order=1,
        output=np.float32,
    )


def _sample(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``volume`` at voxel coordinates (3, n); zero outside."""
    return ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0,
                                   output=np.float32)


def _square(u: np.ndarray) -> np.ndarray:
    """Displacement of phi o phi for phi(x) = x + u(x): one scaling-and-squaring step."""
    coords = (np.indices(u.shape[1:], dtype=np.float32) + u).reshape(3, -1)
    return u + np.stack([_sample(c, coords).reshape(u.shape[1:]) for c in u])


def _flow_steps(max_gain_mm: float) -> int:
    """Squarings needed so that the first step of the flow is at most FLOW_STEP_MM."""
    return max(0, math.ceil(math.log2(max_gain_mm / FLOW_STEP_MM))) if max_gain_mm > 0 else 0


def _integrate(velocity: np.ndarray, steps: int) -> np.ndarray:
    """Displacement (voxels) of the flow of a stationary velocity field (voxels)."""
    u = velocity / 2.0**steps
    for _ in range(steps):
        u = _square(u)
    return u


def _roi_voxels(occupancy: np.ndarray, displacement: np.ndarray) -> int:
    """Voxels of the crop whose displaced position is at least half inside the ROI."""
    coords = (np.indices(occupancy.shape, dtype=np.float32) + displacement).reshape(3, -1)
    return int((_sample(occupancy, coords) >= 0.5).sum())


def _gain_table(direction: np.ndarray, occupancy: np.ndarray, voxel_size: float):
    """Gains (mm) and the volume factor each gives an ROI displaced on its own."""
    base = (occupancy >= 0.5).sum()
    gains, factors = [0.0], [1.0]
    for sign in (-1.0, 1.0):
        for gain in LUT_SMALL_GAINS_MM:
            gains.append(sign * gain)
            factors.append(_roi_voxels(occupancy, sign * gain / voxel_size * direction) / base)
        for gain in LUT_BASE_GAINS_MM:
            u = sign * gain / voxel_size * direction
            for doubling in range(LUT_DOUBLINGS + 1):
                if doubling:
                    u = _square(u)
                gains.append(sign * gain * 2**doubling)
                factors.append(_roi_voxels(occupancy, u) / base)
    order = np.argsort(gains)
    # Counting voxels wobbles by one or two; np.interp needs a monotonic table.
    return np.asarray(gains)[order], np.maximum.accumulate(np.asarray(factors)[order])


def _spline_basis(n_out: int, n_control: int) -> np.ndarray:
    """(n_out, n_control): cubic-spline interpolation of control values along one axis."""
    knots = np.linspace(0.0, n_out - 1.0, n_control)
    return CubicSpline(knots, np.eye(n_control))(np.arange(n_out)).astype(np.float32)


@functools.lru_cache(maxsize=2)
def _setup_for(voxel_size: float) -> _Setup:
    """Templates on the grid, ROIs, displacement fields and gain tables for a voxel size."""
    tpl = _load_templates()
    v = voxel_size
    shape, affine = grid_for(v)
    t1 = _resample_to_grid(tpl["t1"], tpl, v, shape)
    brain = _resample_to_grid(tpl["brain"], tpl, v, shape)
    wm = _resample_to_grid(tpl["wm"], tpl, v, shape)

    # A voxel takes the label that fills at least half of it (anti-aliased 1 mm occupancy),
    # which keeps volumes close to the 1 mm ones at every voxel size.
    labels_1mm = _template_rois(tpl)
    occupancy = {k: _resample_to_grid(labels_1mm == k, tpl, v, shape) for k in ATLAS_LABELS}
    stacked = np.stack(list(occupancy.values()))
    labels = np.where(stacked.max(0) >= 0.5, stacked.argmax(0) + 1, 0).astype(np.uint8)

    # Unit fields along the gradient of each blurred ROI type, kept in a crop around the ROIs
    # (3 sigma covers them); |direction| <= 1 makes a gain the largest step in mm, and a
    # positive gain pulls samples towards the ROI, so the ROI grows.
    blur = ROI_BLUR_MM / v
    type_occupancy = {t: sum(occupancy[k] for k in ks) for t, ks in ROI_TYPES.items()}
    support = ndimage.binary_dilation(labels > 0, iterations=math.ceil(3 * blur) + 1)
    idx = np.argwhere(support)
    crop_lo, crop_hi = idx.min(0), idx.max(0) + 1
    crop = tuple(slice(a, b) for a, b in zip(crop_lo, crop_hi))
    directions = {}
    for t, occ in type_occupancy.items():
        blurred = ndimage.gaussian_filter((occ >= 0.5).astype(np.float32), blur)
        grad = np.stack(np.gradient(blurred))
        grad /= np.sqrt((grad**2).sum(0)).max()
        directions[t] = np.ascontiguousarray(grad[(slice(None),) + crop])
    crop_occupancy = {t: np.ascontiguousarray(occ[crop]) for t, occ in type_occupancy.items()}
    tables = {t: _gain_table(directions[t], crop_occupancy[t], v) for t in ROI_TYPES}

    # Shortcut patch: the anterior-superior corner of the field of view, above the forehead
    # and far (> 3 cm) from the brain whatever the pose.
    width = int(np.clip(round(8.0 / v), 3, 5))
    x0 = shape[0] // 2 - width // 2
    y1, z1 = shape[1] - PATCH_MARGIN_VOXELS, shape[2] - PATCH_MARGIN_VOXELS
    patch = (slice(x0, x0 + width), slice(y1 - width, y1), slice(z1 - width, z1))

    brain_idx = np.argwhere(brain >= 0.5)
    return _Setup(
        voxel_size=v,
        shape=shape,
        affine=affine,
        t1=t1,
        brain=brain,
        labels=labels,
        wm_intensity=float(np.median(t1[wm > 0.9])),
        centre=(brain_idx.min(0) + brain_idx.max(0)) / 2.0,
        crop_lo=crop_lo,
        directions=directions,
        occupancy=crop_occupancy,
        template_voxels={t: int((occ >= 0.5).sum()) for t, occ in crop_occupancy.items()},
        lut_gain={t: table[0] for t, table in tables.items()},
        lut_factor={t: table[1] for t, table in tables.items()},
        elastic_bases=tuple(_spline_basis(n, c) for n, c in zip(shape, ELASTIC_CONTROL_POINTS)),
        bias_bases=tuple(
            np.linspace(-1.0, 1.0, n)[:, None] ** np.arange(BIAS_DEGREE + 1) for n in shape
        ),
        patch=patch,
    )


# ----------------------------------------------------------------------------------------------
# One subject
# ----------------------------------------------------------------------------------------------


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Independent streams: key (0,) for the cohort's covariates, (1, i) for subject i."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix for angles (radians) about x, then y, then z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _separable(bases: tuple[np.ndarray, ...], coeffs: np.ndarray) -> np.ndarray:
    """sum_abc coeffs[..., a, b, c] bx[i, a] by[j, b] bz[k, c]: no full-grid array per term."""
    return np.einsum("ia,jb,kc,...abc->...ijk", *bases, coeffs, optimize=True)


@dataclass
class _Subject:
    image: np.ndarray  # float32, z-scored inside the brain, zero outside
    roi: np.ndarray  # uint8 ATLAS_LABELS
    changed: np.ndarray  # uint8, AD displacement above half a voxel
    truth: dict


def _simulate(setup: _Setup, seed: int, index: int, planted: bool, with_patch: bool) -> _Subject:
    """One subject: anatomy, pose, elastic field, bias, noise; see the module docstring."""
    rng = _rng(seed, 1, index)
    v, shape = setup.voxel_size, setup.shape
    group = "AD" if planted else "CN"
    targets = {
        "hippocampus": rng.normal(HIPPOCAMPUS_FACTOR[group], HIPPOCAMPUS_FACTOR_SD),
        "ventricle": VENTRICLE_FACTOR[group] * math.exp(rng.normal(0.0, VENTRICLE_FACTOR_SIGMA)),
    }
    angles = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, 3))
    translation = rng.uniform(-MAX_TRANSLATION_MM, MAX_TRANSLATION_MM, 3)
    scale = 1.0 + rng.uniform(-MAX_SCALE, MAX_SCALE)
    control = rng.normal(0.0, ELASTIC_SD_MM, (3, *ELASTIC_CONTROL_POINTS))
    bias = np.zeros((BIAS_DEGREE + 1,) * 3)
    bias[tuple(zip(*_BIAS_TERMS))] = rng.uniform(-BIAS_COEFF, BIAS_COEFF, len(_BIAS_TERMS))
    noise_fraction = rng.uniform(*NOISE_FRACTION_OF_WM)

    # AD anatomy in template space: one flow for both ROI types, on the crop.
    gains = {t: setup.gain_for(t, f) for t, f in targets.items()}
    velocity = sum(g * setup.directions[t] for t, g in gains.items()) / v
    flow = _integrate(velocity, _flow_steps(max(abs(g) for g in gains.values())))
    realised = {t: _roi_voxels(setup.occupancy[t], flow) / setup.template_voxels[t] for t in gains}

    # Sampling map, output voxel -> template voxel: elastic field (scanner space), then pose
    # about the brain centre, then the AD flow where it lives (the crop).
    coords = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords += _separable(setup.elastic_bases, control.astype(np.float32)).reshape(3, -1) / v
    coords -= setup.centre[:, None]
    coords = (_rotation(angles) * scale) @ coords + (setup.centre + translation / v)[:, None]
    crop_hi = setup.crop_lo + np.array(flow.shape[1:]) - 1
    in_crop = np.all((coords >= setup.crop_lo[:, None]) & (coords <= crop_hi[:, None]), axis=0)
    in_template_crop = coords[:, in_crop] - setup.crop_lo[:, None]
    displacement = np.stack([_sample(c, in_template_crop) for c in flow])
    in_template_crop += displacement
    coords[:, in_crop] += displacement

    changed = np.zeros(coords.shape[1], np.uint8)
    changed[in_crop] = np.sqrt((displacement**2).sum(0)) > 0.5  # in voxels: half a voxel
    # ROIs by occupancy >= 0.5 per type; the side follows the template's x (left is x < 0).
    right = (in_template_crop[0] + setup.crop_lo[0]) * v + FOV_MIN[0] > 0
    hippocampus = _sample(setup.occupancy["hippocampus"], in_template_crop) >= 0.5
    ventricle = _sample(setup.occupancy["ventricle"], in_template_crop) >= 0.5
    roi = np.zeros(coords.shape[1], np.uint8)
    roi[in_crop] = np.select(
        [hippocampus, ventricle],
        [np.take(ROI_TYPES["hippocampus"], right), np.take(ROI_TYPES["ventricle"], right)],
        0,
    )

    # Intensities only where the warped brain mask is: the background is zeroed anyway.
    brain = _sample(setup.brain, coords) >= 0.5
    bias_field = np.exp(_separable(setup.bias_bases, bias)).ravel()
    signal = _sample(setup.t1, coords[:, brain]) * bias_field[brain]
    sigma = noise_fraction * setup.wm_intensity
    real, imaginary = rng.standard_normal((2, signal.size), dtype=np.float32) * sigma
    signal = np.hypot(signal + real, imaginary)  # Rician: magnitude of complex Gaussian noise
    image = np.zeros(coords.shape[1], np.float32)
    image[brain] = (signal - signal.mean()) / signal.std()
    image = image.reshape(shape)
    if with_patch:
        patch_shape = image[setup.patch].shape
        noise = rng.standard_normal(patch_shape, dtype=np.float32)
        image[setup.patch] = PATCH_VALUE + PATCH_NOISE_SD * noise

    volumes = np.bincount(roi, minlength=len(ATLAS_LABELS) + 1)[1:] * v**3 / 1000.0
    truth = {
        "hippocampus_factor_sampled": targets["hippocampus"],
        "hippocampus_factor_realised": realised["hippocampus"],
        "ventricle_factor_sampled": targets["ventricle"],
        "ventricle_factor_realised": realised["ventricle"],
        "hippocampus_gain_mm": gains["hippocampus"],
        "ventricle_gain_mm": gains["ventricle"],
        "pose_scale": scale,
        "noise_fraction_of_wm": noise_fraction,
        "has_patch": with_patch,
        **{f"{name}_ml": float(vol) for name, vol in zip(ATLAS_LABELS.values(), volumes)},
    }
    return _Subject(image, roi.reshape(shape), changed.reshape(shape), truth)


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


def _write_subject(setup: _Setup, seed: int, index: int, subject_id: str, label: str,
                   shortcut: bool, with_patch: bool, out: pathlib.Path) -> dict:
    """Simulate one subject, write its image and masks; return its truth.csv row."""
    # In the negative control nobody is planted: the label lives in the background patch only.
    subject = _simulate(setup, seed, index, planted=label == "AD" and not shortcut, with_patch=with_patch)
    _save(subject.image, setup.affine, out / "images" / f"{subject_id}.nii.gz", "scanner")
    _save(subject.roi, setup.affine, out / "masks" / f"{subject_id}_roi.nii.gz", "scanner")
    _save(subject.changed, setup.affine, out / "masks" / f"{subject_id}_changed.nii.gz", "scanner")
    return {"subject_id": subject_id, "label": label, "shortcut": shortcut, **subject.truth}


_WORKER_SETUP: _Setup | None = None  # a worker process's copy, set once by _init_worker


def _init_worker(setup: _Setup) -> None:
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
    rng = _rng(seed, 0)
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
    draws = _rng(seed, 2).random(len(labels))
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
                          "(e.g. 0.9), and not together with shortcut")  # fmt: skip
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

    setup = _setup_for(voxel_size)
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
