"""The demo's 3D CNN: small enough to train on two CPU cores in minutes, with a head whose
Grad-CAM shows what the decision uses (see DemoCNN)."""

from __future__ import annotations

import math

import torch
from torch import nn


def conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
    )


class LogSumExpPool3d(nn.Module):
    """``(1/r) log mean exp(r x)`` over space: a smooth maximum (max as r -> inf, mean as r -> 0)."""

    def __init__(self, r: float = 1.0):
        super().__init__()
        self.r = r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        return (torch.logsumexp(self.r * flat, dim=2) - math.log(flat.shape[2])) / self.r


class DemoCNN(nn.Module):
    """conv(stride 2) -> pool -> conv -> pool -> conv -> a head that finds a few voxels.

    The planted changes fill a few percent of the brain: averaging over the volume drowns them
    (the net with global average pooling stays at chance), so the max and evidence heads take a maximum:

    - ``head="max"`` (the demo's): global max pooling per channel, then a linear layer. It
      learns the demo cohort (held-out AUC 0.79-0.93 over seeds at 2 mm in 20 epochs, learning
      rate 3e-3), but its Grad-CAM is not faithful: the channel weights are w_c / N, so the map
      paints each channel wherever it fires (e.g. dark-CSF detectors along the dark rim of every
      brain), while the decision uses one voxel per channel; HiResCAM keeps the gradient where it
      is and shows that voxel. Default target layer ``features.4.0``.
    - ``head="evidence"``: a 1x1x1 convolution gives every voxel of the last block's output a
      logit (the evidence map), pooled by log-sum-exp (a smooth maximum). Grad-CAM at the
      block's output (``features.4``) *is* that map, minus its bias, rectified: it shows what
      the decision uses; HiResCAM is the same map weighted by each voxel's share of the pooling,
      so sharper. On the 4 mm synthetic cohorts (training seeds 0-2, whose shortcut models learn
      the patch; ``benchmarks/cam_evidence.py``) the shortcut model's share outside the brain
      exceeds the clean model's by 0.42-0.77 with Grad-CAM and 0.47-0.98 with HiResCAM for this
      head; for the max head by 0.09-0.33 and 0.22-0.62. On the 2 mm demo cohort it needs about
      three times the epochs (20 epochs: validation accuracy 0.5-0.7; 60 epochs at learning rate
      3e-3 without dropout: 0.73-0.8, held-out AUC 0.76 against the max head's 0.85), hence
      not yet the demo's default; its held-out Grad-CAM then has region gains 1.4-2.2 in the
      hippocampi and ventricles and 52% outside the brain, against 100% for the max head.
    - ``head="avg"``: global average pooling per channel, then a linear layer: the classic head,
      a reference for the CAM methods rather than for the demo cohort (see above). At the block's
      output (``features.4``) every voxel's gradient is w_c / N, so Grad-CAM and HiResCAM are the
      same map.

    At 2 mm (91x109x91) the last block works on 12x14x12 voxels.
    """

    def __init__(self, in_channels: int = 1, n_outputs: int = 2, width: int = 8, dropout: float = 0.2,
                 head: str = "max"):
        super().__init__()
        self.features = nn.Sequential(
            conv_block(in_channels, width, stride=2),
            nn.MaxPool3d(2, ceil_mode=True),
            conv_block(width, 2 * width),
            nn.MaxPool3d(2, ceil_mode=True),
            conv_block(2 * width, 4 * width),
        )
        if head in ("max", "avg"):
            pool = nn.AdaptiveMaxPool3d(1) if head == "max" else nn.AdaptiveAvgPool3d(1)
            self.head = nn.Sequential(pool, nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * width, n_outputs))
            self.gradcam_layer = "features.4.0" if head == "max" else "features.4"
        elif head == "evidence":
            self.head = nn.Sequential(
                nn.Dropout(dropout),
                nn.Conv3d(4 * width, n_outputs, kernel_size=1),  # the evidence map; its bias is the logit's
                LogSumExpPool3d(r=1.0),  # [B, n_outputs]
            )
            self.gradcam_layer = "features.4"
        else:
            raise ValueError(f"head {head!r}: use 'max', 'evidence' or 'avg'")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
