"""Voxels as the model sees them: the per-volume intensity normalisation and the brain mask (no
torch: the figures use the mask too)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import HeimerError

BORDER_NOISE_MADS = 6.0  # brain_mask: background noise reaches this many robust SDs above its median at most


def normalise_intensity(volume: np.ndarray, mode: str, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-volume intensity normalisation named by the model metadata.

    ``zscore``: mean and SD over the brain mask (all voxels when no mask), applied to every
    voxel, so what lies outside the brain keeps its contrast (a shortcut stays visible).
    ``minmax``: (x - min) / (max - min) over the whole volume. ``none``: unchanged.
    """
    x = volume.astype(np.float32, copy=False)
    if mode == "none":
        return x
    if mode == "zscore":
        inside = x[mask] if mask is not None and mask.any() else x
        sd = float(inside.std())
        return ((x - float(inside.mean())) / (sd if sd > 0 else 1.0)).astype(np.float32)
    if mode == "minmax":
        lo, hi = float(x.min()), float(x.max())
        return ((x - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)
    raise HeimerError(f"intensity {mode!r} is not supported; use zscore, minmax or none")


def brain_mask(volume: np.ndarray) -> np.ndarray:
    """Non-background voxels: those differing from the border's most common value by more than
    the border's own noise (the median deviation from that value plus ``BORDER_NOISE_MADS``
    robust SDs: robust to a border that cuts through the head, as a cropped scan's does; zero for
    a clean, zeroed background), largest connected component, holes filled. An artefact detached
    from the head stays outside. Without the noise floor a real scan's noisy background would all
    count as brain, and a map on the background would never look outside the brain."""
    border = np.concatenate([volume[[0, -1]].ravel(), volume[:, [0, -1]].ravel(), volume[..., [0, -1]].ravel()])
    values, counts = np.unique(border, return_counts=True)
    background = values[np.argmax(counts)]
    scale = max(float(np.abs(volume).max()), 1e-12)
    deviation = np.abs(border - background)
    typical = float(np.median(deviation))
    noise = typical + BORDER_NOISE_MADS * 1.4826 * float(np.median(np.abs(deviation - typical)))
    foreground = np.abs(volume - background) > max(1e-6 * scale, noise)
    labels, n = ndimage.label(foreground)
    if n == 0:
        return foreground
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))
