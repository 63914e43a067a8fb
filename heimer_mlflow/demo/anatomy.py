"""The synthetic cohort's anatomy: the MNI template set up once per voxel size (regions of
interest, deformation look-up tables) and one subject simulated from it (the recipe in
:mod:`heimer_mlflow.demo.synthetic`)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.interpolate import CubicSpline

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

MIN_VOXEL_SIZE, MAX_VOXEL_SIZE = 0.75, 4.0  # exclusive, inclusive (mm)

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
class Setup:
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
def setup_for(voxel_size: float) -> Setup:
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
    return Setup(
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


def subject_rng(seed: int, *key: int) -> np.random.Generator:
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
class Subject:
    image: np.ndarray  # float32, z-scored inside the brain, zero outside
    roi: np.ndarray  # uint8 ATLAS_LABELS
    changed: np.ndarray  # uint8, AD displacement above half a voxel
    truth: dict


def simulate(setup: Setup, seed: int, index: int, planted: bool, with_patch: bool) -> Subject:
    """One subject: anatomy, pose, elastic field, bias, noise; see the module docstring."""
    rng = subject_rng(seed, 1, index)
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
    return Subject(image, roi.reshape(shape), changed.reshape(shape), truth)


