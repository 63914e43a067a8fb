"""MONAI networks and twelve subjects on an odd grid (19x23x17): uneven upsampling factors,
layer cells cut by the border. Each network is returned with its target layer."""

from __future__ import annotations

import numpy as np
import torch

from .models import densenet as _densenet
from .subjects import InMemorySubjects

GRID = (19, 23, 17)
N = 12
ATLAS_LABELS = np.zeros(GRID, dtype=np.int32)
ATLAS_LABELS[4:10, 5:12, 3:9] = 1  # where the AD subjects' images are brighter
ATLAS_LABELS[12:19, 0:6, :] = 2
ATLAS = (ATLAS_LABELS, {1: "lesion", 2: "corner"})  # run_engine's atlas=


def resnet():
    """One logit, MONAI's default stem (stride and max pooling)."""
    from monai.networks.nets import ResNet

    net = ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[4, 4, 8, 8], spatial_dims=3,
                 n_input_channels=1, num_classes=1)  # fmt: skip
    return net, "layer3.0.conv2"


def densenet():
    """One logit per class."""
    return _densenet(2)


class Subjects(InMemorySubjects):
    """Noise, brighter in the lesion of the AD subjects (odd indices); a different "brain" per subject."""

    def __init__(self):
        g = torch.Generator().manual_seed(3)
        self.images = torch.randn((N, 1, *GRID), generator=g)
        self.labels = torch.arange(N) % 2
        self.images[self.labels == 1, :, 4:10, 5:12, 3:9] += 1.0
        self.masks = torch.zeros((N, *GRID), dtype=torch.bool)
        for i in range(N):
            self.masks[i, 2 + i % 3 : 16, 3:20, 2 : 15 - i % 2] = True

    def subject_id(self, i):
        return f"s{i:02d}"

    def brain_mask(self, i):
        return self.masks[i]
