"""How two maps agree: Spearman's rank correlation (the sanity check's trained vs randomised
model, Grad-CAM vs HiResCAM inside the brain) and the randomised copy the sanity check uses."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def randomised_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every parameter and buffer re-initialised (cascading to all layers)."""
    randomised = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in randomised.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return randomised


def method_agreement(layer_maps: dict[str, torch.Tensor], cell_weights: torch.Tensor,
                     outside_weights: torch.Tensor) -> np.ndarray:
    """Per subject (float64): the Spearman rank correlation of Grad-CAM and HiResCAM inside the
    brain, on the target layer's grid, over the cells that are mostly brain: their pulled-back
    brain weight (``cell_weights - outside_weights``, see engine.upsampling) is more than half of
    the cell's weight, i.e. more than half of what the cell gives the upsampled map lands on brain
    voxels; where the layer keeps the input grid these are exactly the brain voxels. The layer grid
    holds all of both maps' information (upsampling is a fixed interpolation), and ranking its
    cells is cheap, unlike upsampling both maps of every subject. NaN where it is undefined: fewer
    than two such cells, or either map constant over them (e.g. all zero after the ReLU)."""
    mostly_brain = (cell_weights - outside_weights) > cell_weights / 2
    gradcam, hirescam = layer_maps["gradcam"].cpu(), layer_maps["hirescam"].cpu()
    mostly_brain = mostly_brain.expand_as(layer_maps["gradcam"]).cpu()
    return np.array([_agreement(g[inside], h[inside]) for g, h, inside in zip(gradcam, hirescam, mostly_brain)])


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman of two maps; 0 when exactly one is constant (e.g. Grad-CAM all zero inside the brain
    while HiResCAM is not: one shows nothing where the other shows structure, no agreement); NaN
    when both are constant or fewer than two cells."""
    value = spearman(a, b)
    if np.isnan(value) and a.numel() >= 2 and bool(a.max() > a.min()) != bool(b.max() > b.min()):
        return 0.0
    return value


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps (average ranks for ties, e.g. the zeros after ReLU)."""
    ra, rb = _average_ranks(a.flatten().double()), _average_ranks(b.flatten().double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = torch.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    unique, inverse, counts = torch.unique(values, return_inverse=True, return_counts=True)
    last_rank = torch.cumsum(counts, 0).double()
    return (last_rank - (counts.double() - 1) / 2)[inverse]
