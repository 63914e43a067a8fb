"""Tiny 3D CNNs: ``TinyCNN`` for the registry and command-line tests, ``small_cnn`` for the
engine, and the networks GradCam3d is checked on, each built per number of outputs (one logit or
one per class) and returned with its target layer.

The torchrun tests unpickle ``FailsOnRankOne`` in their workers: this module imports torch alone
(MONAI when a MONAI network is built)."""

from __future__ import annotations

import os

import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, n_outputs: int = 2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, n_outputs))

    def forward(self, x):
        return self.head(self.body(x))


class FailsOnRankOne(TinyCNN):
    """A model that breaks on the second torchrun process only (a fault on one rank)."""

    def forward(self, x):
        if os.environ.get("RANK") == "1":
            raise RuntimeError("injected fault on rank 1")
        return super().forward(x)


def small_cnn(n_outputs: int = 2, seed: int = 0, *, inplace: bool = False) -> nn.Sequential:
    """Two convolutions around a max pooling (target layer "3", half the input grid), in eval
    mode, with the weights of ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool3d(2),
        nn.Conv3d(4, 6, 3, padding=1), nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(6, n_outputs),
    ).eval()  # fmt: skip


# --------------------------------------------------------------------------- GradCam3d's networks


class ConvStack(nn.Module):
    def __init__(self, n_outputs: int, inplace: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(),
            nn.MaxPool3d(2),
            nn.Conv3d(4, 8, 3, padding=1), nn.ReLU(),
            nn.MaxPool3d(2),
            nn.Conv3d(8, 8, 3, padding=1), nn.ReLU(inplace=inplace),
        )  # fmt: skip
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, n_outputs))

    def forward(self, x):
        return self.head(self.features(x))


def conv_stack(n_outputs):
    return ConvStack(n_outputs), "features.6"


def densenet(n_outputs):
    from monai.networks.nets import DenseNet

    net = DenseNet(spatial_dims=3, in_channels=1, out_channels=n_outputs, init_features=4, growth_rate=4,
                   block_config=(2, 2), bn_size=2)  # fmt: skip
    return net, "features.denseblock2.denselayer2.layers.conv2"


def resnet(n_outputs):
    """MONAI's ResNet without the stem's stride and max pooling."""
    from monai.networks.nets import ResNet

    net = ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=[4, 4, 8, 8], spatial_dims=3,
                 n_input_channels=1, num_classes=n_outputs, conv1_t_stride=1, no_max_pool=True)  # fmt: skip
    return net, "layer4.0.conv2"


def make(factory, n_outputs, seed=0):
    """(network in eval mode with the weights of ``seed``, its target layer)."""
    torch.manual_seed(seed)
    model, layer = factory(n_outputs)
    return model.eval(), layer


class PlantedReader(nn.Module):
    """A model that reads one planted set of voxels and nothing else: logit = scale x (the mean of
    its 1x1x1 convolution's output over ``weights`` - offset). The convolution (``conv``, weight 1,
    bias 0) is the target layer; the model is linear in its input, so what replacing a region does
    to the score is known in closed form."""

    def __init__(self, weights, scale: float = 1.0, offset: float = 0.0):
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.zero_()
        weights = torch.as_tensor(weights, dtype=torch.float32)
        self.register_buffer("weights", weights / weights.sum())
        self.scale, self.offset = float(scale), float(offset)

    def forward(self, x):
        return (self.scale * ((self.conv(x)[:, 0] * self.weights).sum(dim=(1, 2, 3)) - self.offset))[:, None]
