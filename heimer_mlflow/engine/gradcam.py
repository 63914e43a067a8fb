"""3D Grad-CAM and HiResCAM from one forward and one gradient to the target activation.

``GradCam3d(model, layer).attribute(x, target)`` returns the positive-part Grad-CAM
(Selvaraju et al. 2017) and HiResCAM (Draelos & Carin 2020) at input resolution, together with
the logits and the captured activations, so that a caller needs no second pass for predictions
or feature maps. Both maps come from the same gradient g and activation A of the target layer:
Grad-CAM weighs each channel by its gradient averaged over space, relu(sum_c mean(g_c) A_c);
HiResCAM keeps the gradient where it is, relu(sum_c g_c A_c), so it shows where the score
comes from also when the head makes Grad-CAM paint every place a channel fires (e.g. global max
pooling). With global average pooling and a linear head the two are equal up to a positive factor.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from heimer_mlflow.engine.exported import pad_batch
from heimer_mlflow.engine.layers import layers_of
from heimer_mlflow.errors import HeimerError


def conv_layers(model: nn.Module) -> list[str]:
    """Module paths of every ``Conv3d`` in ``model``, in registration order."""
    return layers_of(model).conv_layers()


def layer_names(model: nn.Module) -> list[str]:
    """Every module path a layer can be taken from (an exported program's: those its graph ran in)."""
    return layers_of(model).layer_names()


def resolve_layer(model: nn.Module, path: str | None) -> tuple[str, nn.Module]:
    """The module at ``path`` (dotted module path), or the last ``Conv3d`` when ``path`` is None.
    For an exported program (pt2) the module returned is the layer's tap (engine.exported)."""
    layers = layers_of(model)
    if path is None:
        candidates = layers.conv_layers()
        if not candidates:
            raise HeimerError(
                f"model {type(model).__name__} has no Conv3d layer to take Grad-CAM from: "
                "pass the module path of a 3D convolutional layer as target_layer"
            )
        path = candidates[-1]
    return path, layers.layer(path)


@dataclass
class Attribution:
    """What one forward and one gradient give for a batch (all detached)."""

    logits: torch.Tensor  # [B, K] float32, K = 1 (sigmoid) or one per class
    # method (CAM_METHODS) -> [B, d, h, w] float32, the raw (un-normalised) map on the target layer's grid
    layer_maps: dict[str, torch.Tensor]
    activations: dict[str, torch.Tensor]  # layer path -> [B, C, d, h, w] float32
    input_size: tuple[int, int, int]  # (D, H, W)

    def upsampled(self, method: str) -> torch.Tensor:
        """[B, D, H, W] float32: the raw map of ``method`` upsampled (trilinear) to the input grid."""
        layer_map = self.layer_maps[method]
        with autocast_off(layer_map.device):
            return F.interpolate(layer_map[:, None], self.input_size, mode="trilinear", align_corners=False)[:, 0]

    def first(self, n: int) -> Attribution:
        """The first ``n`` subjects' attribution (padding subjects dropped)."""
        return Attribution(self.logits[:n], {m: v[:n] for m, v in self.layer_maps.items()},
                           {p: v[:n] for p, v in self.activations.items()}, self.input_size)

    @staticmethod
    def concatenate(parts: list[Attribution]) -> Attribution:
        """One attribution of consecutive batches' attributions."""
        return Attribution(torch.cat([p.logits for p in parts]),
                           {m: torch.cat([p.layer_maps[m] for p in parts]) for m in parts[0].layer_maps},
                           {k: torch.cat([p.activations[k] for p in parts]) for k in parts[0].activations},
                           parts[0].input_size)

    @functools.cached_property
    def gradcam(self) -> torch.Tensor:
        """[B, D, H, W] float32: the raw Grad-CAM on the input grid, upsampled on first use."""
        return self.upsampled("gradcam")

    @functools.cached_property
    def hirescam(self) -> torch.Tensor:
        """[B, D, H, W] float32: the raw HiResCAM on the input grid, upsampled on first use."""
        return self.upsampled("hirescam")


class GradCam3d:
    """Grad-CAM and HiResCAM of a 3D CNN at one layer; optional extra layers' activations come for free.

    Only the gradient of the target score to the target activation is computed
    (``torch.autograd.grad``), never a backward into the parameters, so frozen weights,
    callers inside ``torch.no_grad()`` and models with in-place ops after the layer all work.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, feature_layers: tuple[str, ...] = ()):
        self.model = model
        self.layers = layers_of(model)
        self.layer_path, self.layer = resolve_layer(model, layer)
        # The target layer's activation is always returned; hooking it twice would copy it twice.
        self.feature_layers = {
            path: resolve_layer(model, path)[1] for path in feature_layers if path != self.layer_path
        }

    def attribute(self, x: torch.Tensor, target: int | torch.Tensor = 0) -> Attribution:
        """Grad-CAM and HiResCAM of output column ``target`` (an int, or one index per sample) for
        ``x`` [B, C, D, H, W].

        Run it inside ``torch.autocast`` for mixed precision: the maps are computed in float32.
        An exported program with a static batch size gets batches of that size (see engine.exported).
        """
        size = self.layers.batch_size
        if size is None or x.shape[0] == size:
            return self._attribute(x, target)
        target = torch.as_tensor(target, device=x.device).expand(x.shape[0])
        parts = [self._attribute(pad_batch(x[i : i + size], size), pad_batch(target[i : i + size], size))
                 .first(min(size, x.shape[0] - i)) for i in range(0, x.shape[0], size)]
        return Attribution.concatenate(parts)

    def _attribute(self, x: torch.Tensor, target: int | torch.Tensor) -> Attribution:
        captured: dict[str, torch.Tensor] = {}

        def keep_target(_module, _inputs, output):
            if not isinstance(output, torch.Tensor) or output.dim() != 5:
                raise HeimerError(
                    f"target layer {self.layer_path!r} outputs {_describe_output(output)}, not a [B, C, D, H, W] "
                    f"tensor: choose a 3D convolutional layer, one of {self.layers.conv_layers()}"
                )
            # A fresh leaf: the gradient stops here (nothing upstream is differentiated) and
            # exists even with frozen weights. Downstream gets a copy, so in-place ops after
            # the layer cannot alter the activation we differentiate against.
            activation = output.detach().requires_grad_(True)
            captured[self.layer_path] = activation
            return activation.clone()

        def keep_feature(path):
            def hook(_module, _inputs, output):
                # A copy, because later in-place ops may overwrite the module's output.
                captured[path] = output.detach().to(torch.float32, copy=True)

            return hook

        handles = [self.layer.register_forward_hook(keep_target)]
        handles += [m.register_forward_hook(keep_feature(p)) for p, m in self.feature_layers.items()]
        # Weights held constant for the pass: the gradient goes to the activation alone, so the
        # layers before it need not record their graph (at 1 mm with a resnet18, most of the
        # peak memory); the layers after it still record what the gradient to the activation needs.
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        for parameter in trainable:
            parameter.requires_grad_(False)
        try:
            with torch.enable_grad():
                output = self.model(x)
                if self.layer_path not in captured:
                    raise HeimerError(f"target layer {self.layer_path!r} did not run in the forward pass: choose a "
                                      f"layer the model uses, one of {self.layers.conv_layers()}")
                logits = as_logits(output, x.shape[0])
                columns = torch.as_tensor(target, device=logits.device).expand(logits.shape[0])
                score = logits.float().gather(1, columns.view(-1, 1)).sum()
                activation = captured[self.layer_path]
                # With the weights constant, a score the activation does not reach has no graph at all.
                gradient = None
                if score.requires_grad:
                    (gradient,) = torch.autograd.grad(score, activation, allow_unused=True)
                if gradient is None:
                    raise HeimerError(
                        f"target layer {self.layer_path!r} does not influence the model output: "
                        f"choose a layer on the path to the logits, one of {self.layers.conv_layers()}"
                    )
        finally:
            for handle in handles:
                handle.remove()
            for parameter in trainable:
                parameter.requires_grad_(True)

        with autocast_off(x.device):
            activation = activation.detach().float()
            gradient = gradient.float()
            weights = gradient.mean(dim=(2, 3, 4), keepdim=True)
            layer_maps = {
                "gradcam": F.relu((weights * activation).sum(dim=1)),
                "hirescam": F.relu((gradient * activation).sum(dim=1)),
            }
        activations = {path: captured[path] for path in self.feature_layers}
        activations[self.layer_path] = activation
        return Attribution(logits=logits.detach().float(), layer_maps=layer_maps, activations=activations,
                           input_size=tuple(x.shape[2:]))


def as_logits(output, batch_size: int) -> torch.Tensor:
    """The model output as [B, K] logits, or a HeimerError saying what it is instead."""
    if not isinstance(output, torch.Tensor):
        raise HeimerError(
            f"model returned {_describe_output(output)}; it must return one tensor of logits [B, 1] or [B, n_classes]"
        )
    if output.dim() == 1 and output.shape[0] == batch_size:
        return output[:, None]
    if output.dim() != 2 or output.shape[0] != batch_size:
        raise HeimerError(
            f"model output has shape {list(output.shape)} for a batch of {batch_size}; "
            "it must be logits [B, 1] (sigmoid) or [B, n_classes] (softmax)"
        )
    return output


def _describe_output(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return f"a {type(value).__name__}"


def autocast_off(device: torch.device):
    if device.type in ("cuda", "cpu", "mps"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
