"""Streaming, mergeable group statistics of volumes (inputs, Grad-CAMs, feature maps).

The state is a flat ``dict[str, Tensor]`` of float64 sums: per *cell* (true class k, predicted
positive or not) a count, a sum and a sum of squares of every quantity. Sums merge exactly
(``merge``, or ``torch.distributed.all_reduce(..., SUM)`` on each tensor, in sorted key order),
and every reported group is a union of cells: a true class is its two cells, TP/FN are the
positive class's cells, FP/TN pool the predicted-positive/negative cells of the other classes.
Memory is independent of the number of subjects.

A quantity computed on a coarser grid and reported on a finer one (the Grad-CAM: target layer
grid -> input grid, trilinear) can be kept on its own grid: its sum and its neighbour products
(``upsampled=`` in ``update``; see ``heimer_mlflow.engine.upsampling``), from which ``compute``
gives the same voxel-wise maps as sums over every upsampled map, without touching the fine grid
per subject.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from heimer_mlflow.engine.upsampling import OFFSETS, Trilinear, neighbour_products

OUTCOMES = ("TP", "TN", "FP", "FN")
COUNT_KEY = "count"


@dataclass
class GroupMaps:
    """Voxel-wise statistics of one quantity; groups with no subjects are absent from ``mean``."""

    count: dict[str, int]  # group -> subjects
    mean: dict[str, np.ndarray]  # group -> mean map (float32)
    diff: np.ndarray  # mean(positive class) - mean(other classes)
    t: np.ndarray  # Welch t of that difference; 0 where both groups are constant, NaN if a group has < 2


class GroupStats:
    """Count, sum and sum of squares of named quantities per (true class, predicted positive) cell."""

    def __init__(self, class_names: list[str], positive_index: int, device: torch.device | str = "cpu"):
        self.class_names = list(class_names)
        self.positive_index = positive_index
        self.device = torch.device(device)
        self.state: dict[str, torch.Tensor] = {
            COUNT_KEY: torch.zeros(2 * len(self.class_names), dtype=torch.float64, device=self.device)
        }
        # One float64 volume per quantity, reused by every update: a fresh multi-MB temporary per
        # subject costs more (allocation, page faults) than the sums themselves. Not part of the state.
        self._scratch: dict[str, torch.Tensor] = {}

    @property
    def quantities(self) -> list[str]:
        return sorted({key.rsplit("|", 1)[0] for key in self.state if key != COUNT_KEY})

    def cell(self, label: int, predicted_positive: bool) -> int:
        return 2 * int(label) + int(bool(predicted_positive))

    def update(self, cells: list[int], upsampled: dict[str, torch.Tensor] | None = None, **values: torch.Tensor) -> None:
        """Add one batch: ``cells[i]`` is subject i's cell, each value is [B, *shape] on the state's device.

        Sums run per subject in float64 (exact squares of float32 values) through one reused
        float64 buffer per quantity, so the only temporary is one subject's volume, allocated once.
        ``upsampled`` maps [B, d, h, w] keep ``sum`` and ``neighbours`` (27 products per cell)
        on their own grid instead of a sum of squares; ``compute(name, grid=...)`` reports them
        on the finer grid.
        """
        for name, batch in values.items():
            total, total_sq = self._sums(f"{name}|sum", batch.shape[1:]), self._sums(f"{name}|sumsq", batch.shape[1:])
            scratch = self._scratch_for(name, batch.shape[1:])
            for cell, value in zip(cells, batch):
                scratch.copy_(value)
                total[cell].add_(scratch)
                total_sq[cell].addcmul_(scratch, scratch)
        for name, batch in (upsampled or {}).items():
            total = self._sums(f"{name}|sum", batch.shape[1:])
            neighbours = self._sums(f"{name}|neighbours", (len(OFFSETS), *batch.shape[1:]))
            for cell, value in zip(cells, batch.to(self.device)):
                total[cell].add_(value)
                neighbours[cell].add_(neighbour_products(value[None])[0])
        for cell in cells:
            self.state[COUNT_KEY][cell] += 1

    def _sums(self, key: str, shape) -> torch.Tensor:
        """The state tensor ``key`` ([cells, *shape] float64), created as zeros on first use."""
        if key not in self.state:
            cells = len(self.state[COUNT_KEY])
            self.state[key] = torch.zeros((cells, *shape), dtype=torch.float64, device=self.device)
        return self.state[key]

    def _scratch_for(self, name: str, shape) -> torch.Tensor:
        scratch = self._scratch.get(name)
        if scratch is None or scratch.shape != tuple(shape):
            scratch = self._scratch[name] = torch.empty(tuple(shape), dtype=torch.float64, device=self.device)
        return scratch

    def merge(self, other: GroupStats) -> GroupStats:
        """Add another shard's state into this one (same classes, same shapes); returns self.
        A quantity only one of them has counts as zeros in the other."""
        if other.class_names != self.class_names or other.positive_index != self.positive_index:
            raise ValueError("cannot merge statistics of different class layouts")
        for key, value in other.state.items():  # all checked first: a refused merge changes nothing
            if key in self.state and self.state[key].shape != value.shape:
                raise ValueError(
                    f"cannot merge statistics {key!r} of shape {list(value.shape)} into {list(self.state[key].shape)}"
                )
        for key, value in other.state.items():
            if key in self.state:
                self.state[key] += value.to(self.device)
            else:
                self.state[key] = value.to(self.device, copy=True)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(sorted(self.state.items()))

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], class_names: list[str], positive_index: int) -> GroupStats:
        """Statistics over ``state`` (e.g. after an all-reduce); the tensors are taken, not copied."""
        stats = cls(class_names, positive_index, device=state[COUNT_KEY].device)
        stats.state = dict(state)
        return stats

    def groups(self) -> dict[str, list[int]]:
        """Every reported group as its list of cells."""
        negatives = [k for k in range(len(self.class_names)) if k != self.positive_index]
        groups = {name: [self.cell(k, False), self.cell(k, True)] for k, name in enumerate(self.class_names)}
        groups["TP"] = [self.cell(self.positive_index, True)]
        groups["FN"] = [self.cell(self.positive_index, False)]
        groups["FP"] = [self.cell(k, True) for k in negatives]
        groups["TN"] = [self.cell(k, False) for k in negatives]
        return groups

    def _cell_total(self, key: str, cells: list[int]) -> torch.Tensor:
        """Sum of a state tensor over cells: a view for one cell, else slices added in place."""
        tensor = self.state[key]
        if len(cells) == 1:
            return tensor[cells[0]]
        total = tensor[cells[0]].clone()
        for cell in cells[1:]:
            total += tensor[cell]
        return total

    def _moments(self, name: str, cells: list[int], upsampling: Trilinear | None):
        n = int(self.state[COUNT_KEY][cells].sum())
        total = self._cell_total(f"{name}|sum", cells)
        if upsampling is None:
            return n, total, self._cell_total(f"{name}|sumsq", cells)
        return n, upsampling.up(total[None])[0], upsampling.square_sums(self._cell_total(f"{name}|neighbours", cells))

    def compute(self, name: str, grid: tuple[int, ...] | None = None) -> GroupMaps:
        """Group maps of quantity ``name``; one kept with ``upsampled=`` is reported on ``grid``."""
        upsampling = None
        if f"{name}|neighbours" in self.state:
            if grid is None:
                raise ValueError(f"{name!r} is kept on a coarser grid: say which grid to report it on")
            upsampling = Trilinear(self.state[f"{name}|sum"].shape[1:], grid, self.device)
        groups = self.groups()
        count, mean = {}, {}
        for group, cells in groups.items():
            count[group] = int(self.state[COUNT_KEY][cells].sum())
            if count[group]:
                total = self._cell_total(f"{name}|sum", cells) / count[group]
                total = total if upsampling is None else upsampling.up(total[None])[0]
                mean[group] = total.float().cpu().numpy()
        positive = self.class_names[self.positive_index]
        negatives = [cell for group in self.class_names if group != positive for cell in groups[group]]
        diff, t = welch(self._moments(name, groups[positive], upsampling), self._moments(name, negatives, upsampling))
        return GroupMaps(count=count, mean=mean, diff=diff.float().cpu().numpy(), t=t.float().cpu().numpy())


def welch(a: tuple[int, torch.Tensor, torch.Tensor], b: tuple[int, torch.Tensor, torch.Tensor]):
    """Mean difference and Welch t of group a minus group b, each given as (n, sum, sum of squares)."""
    (n_a, sum_a, sq_a), (n_b, sum_b, sq_b) = a, b
    if min(n_a, n_b) == 0:
        nan = torch.full_like(sum_a, float("nan"))
        return nan, nan
    mean_a, mean_b = sum_a / n_a, sum_b / n_b
    diff = mean_a - mean_b
    if min(n_a, n_b) < 2:
        return diff, torch.full_like(diff, float("nan"))
    # squared standard error: var_a / n_a + var_b / n_b, unbiased variances; in place, the maps are large
    se2 = (sq_a - sum_a * mean_a).div_((n_a - 1) * n_a).clamp_min_(0)
    se2 += (sq_b - sum_b * mean_b).div_((n_b - 1) * n_b).clamp_min_(0)
    defined = se2 > 0
    return diff, (diff / se2.masked_fill_(~defined, 1.0).sqrt_()).masked_fill_(~defined, 0.0)


def rank_channels(stats: GroupStats, layer: str) -> dict[str, np.ndarray]:
    """Channels of a feature layer, most AD/CN-separating first.

    Ranked by the mean |voxel-wise Welch t| over the channel's map (spatial differences count),
    with the Welch t of the per-subject channel mean (global up/down-regulation) alongside.
    """
    maps = stats.compute(f"features/{layer}")
    channel_means = stats.compute(f"channel_means/{layer}")
    mean_abs_t = np.abs(maps.t.reshape(maps.t.shape[0], -1)).mean(axis=1)
    order = np.argsort(-np.nan_to_num(mean_abs_t, nan=-1.0), kind="stable")
    return {
        "channel": order,
        "mean_abs_t": mean_abs_t[order],
        "channel_mean_t": channel_means.t[order],
        "channel_mean_diff": channel_means.diff[order],
    }
