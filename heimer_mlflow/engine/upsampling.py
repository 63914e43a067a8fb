"""Trilinear upsampling from a layer's grid to the input grid, and the identities that keep
per-voxel work off the per-subject path.

Grad-CAM is computed on the target layer's grid (e.g. 12x14x12 cells) and reported on the input
grid (91x109x91 voxels): u = U c, with U the trilinear interpolation of ``F.interpolate``
(``align_corners=False``). U is linear and separable (one 1D interpolation per axis, each output
voxel between two adjacent cells per axis), so for a subject's map c:

- the CAM inside a voxel set m (outside the brain, an atlas region) is u . m = c . (U^T m):
  ``pull`` brings m to the layer grid with three small matrix products, instead of upsampling
  every subject's map;
- a group's mean map is U (mean of c): one upsampling at the end;
- a group's voxel-wise sum of squares, sum over subjects of (U c)^2, needs only the products of
  each cell with itself and its 26 neighbours, summed over subjects (``neighbour_products``):
  27 numbers per cell, a plain sum that merges like every other statistic, lifted to the voxels
  at the end one axis at a time (``square_sums``).

These equal upsampling every map and summing on the input grid, up to float rounding
(tests/test_engine_stats.py).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from heimer_mlflow.engine.gradcam import autocast_off

OFFSETS = tuple(itertools.product((-1, 0, 1), repeat=3))  # neighbour offsets, first axis slowest


def interpolation_matrix(source: int, target: int, dtype=torch.float64) -> torch.Tensor:
    """[target, source]: 1D linear interpolation as ``F.interpolate(..., align_corners=False)`` does it."""
    identity = torch.eye(source, dtype=dtype)[None]  # batch 1, one channel per source point
    return F.interpolate(identity, size=target, mode="linear", align_corners=False)[0].T.contiguous()


def neighbour_products(maps: torch.Tensor) -> torch.Tensor:
    """[B, 27, d, h, w] float64: each cell's value times its neighbour's at every offset in
    ``OFFSETS`` (zero past the border), for maps [B, d, h, w]."""
    values = maps.double()
    d, h, w = values.shape[1:]
    padded = F.pad(values, (1, 1, 1, 1, 1, 1))
    return torch.stack(
        [values * padded[:, 1 + a : 1 + a + d, 1 + b : 1 + b + h, 1 + c : 1 + c + w] for a, b, c in OFFSETS], dim=1
    )


class Trilinear:
    """Trilinear upsampling from grid ``source`` (d, h, w) to grid ``target`` (D, H, W)."""

    def __init__(self, source, target, device: torch.device | str = "cpu"):
        self.source, self.target = tuple(int(s) for s in source), tuple(int(t) for t in target)
        self.device = torch.device(device)
        matrices = [interpolation_matrix(s, t) for s, t in zip(self.source, self.target)]
        # float32 for pull (the volumes are float32); None where the axis is not resampled
        self._pull = [None if s == t else m.float().to(self.device) for m, s, t in zip(matrices, self.source, self.target)]
        self._taps = [_two_taps(m) for m in matrices]  # float64: moved to the sums' device when used
        # U^T 1: how much of the input grid each cell carries (a product of the axes' column sums)
        sums = [m.sum(0).float() for m in matrices]
        self.cell_weights = (sums[0][:, None, None] * sums[1][None, :, None] * sums[2][None, None, :]).to(self.device)

    @property
    def coarse(self) -> bool:
        """Whether the source grid has at most 1/8 of the target's cells: then the neighbour
        products (27 per cell) are cheaper to keep than sums of squares on the target grid."""
        return 8 * math.prod(self.source) <= math.prod(self.target)

    def up(self, maps: torch.Tensor) -> torch.Tensor:
        """[B, d, h, w] -> [B, D, H, W], same dtype (``F.interpolate``, trilinear)."""
        if self.source == self.target:
            return maps
        with autocast_off(maps.device):
            return F.interpolate(maps[:, None], self.target, mode="trilinear", align_corners=False)[:, 0]

    def pull(self, volumes: torch.Tensor) -> torch.Tensor:
        """U^T applied to volumes [B, D, H, W] (float32) -> [B, d, h, w]: ``(pull(m) * c).sum()``
        is ``(m * up(c)).sum()`` for any map c on the source grid."""
        x = volumes
        with autocast_off(x.device):
            for axis in (3, 2, 1):  # the contiguous axis first, while the tensor is largest
                matrix = self._pull[axis - 1]
                if matrix is not None:
                    x = (x.movedim(axis, -1) @ matrix).movedim(-1, axis)
        return x

    def square_sums(self, products: torch.Tensor) -> torch.Tensor:
        """[D, H, W] float64: the sum over subjects of up(c)^2, from the sum over the same subjects
        of ``neighbour_products(c)`` ([27, d, h, w])."""
        x = products.double().reshape(3, 3, 3, *self.source)
        for axis, taps in enumerate(self._taps):
            first, second, w0, w1 = (tap.to(x.device) for tap in taps)
            # x is [offset of this axis, offsets of the later axes..., grid]; after x[k] this axis's
            # grid dimension is dim 2. Each output point t mixes cells first(t), second(t) = first + 1:
            # (w0 c_first + w1 c_second)^2 summed = w0^2 P[first, 0] + w1^2 P[second, 0]
            #                                        + w0 w1 (P[first, +1] + P[second, -1])
            shape = (-1,) + (1,) * (2 - axis)
            w0, w1 = w0.view(shape), w1.view(shape)
            same, ahead, behind = x[1], x[2], x[0]
            x = (
                w0 * w0 * same.index_select(2, first)
                + w1 * w1 * same.index_select(2, second)
                + w0 * w1 * (ahead.index_select(2, first) + behind.index_select(2, second))
            )
        return x


def _two_taps(matrix: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For each row of a 1D linear interpolation matrix: its first nonzero column, the next one
    (clamped to the last column) and their weights (the second 0 past the end)."""
    target, source = matrix.shape
    first = (matrix > 0).to(torch.int8).argmax(1)
    second = (first + 1).clamp_max(source - 1)
    w0 = matrix.gather(1, first[:, None])[:, 0]
    w1 = torch.where(first + 1 < source, matrix.gather(1, second[:, None])[:, 0], 0.0)
    rebuilt = torch.zeros_like(matrix)
    rows = torch.arange(target)
    rebuilt[rows, first] += w0
    rebuilt[rows, second] += w1
    if not torch.equal(rebuilt, matrix):  # linear interpolation mixes two adjacent points; anything else is a bug
        raise AssertionError("interpolation rows are not two adjacent taps")
    return first, second, w0, w1
