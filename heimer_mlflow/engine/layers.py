"""A model's layers by module path, for both kinds of model the engine runs: an eager
``nn.Module`` (:class:`ModuleLayers`) and an exported program
(:class:`~heimer_mlflow.engine.exported.ExportedModel`, whose layers are taps in its graph).
Grad-CAM asks these questions and never which kind of model it has."""

from __future__ import annotations

from typing import Protocol

from torch import nn

from heimer_mlflow.engine.exported import ExportedModel
from heimer_mlflow.errors import HeimerError


class LayerAccess(Protocol):
    """What the engine asks of a model's layers."""

    batch_size: int | None  # the batch size the model must be given (a static exported program), None: any

    def conv_layers(self) -> list[str]:
        """Module paths of every ``Conv3d``, in registration order."""

    def layer_names(self) -> list[str]:
        """Every module path a layer can be taken from."""

    def layer(self, path: str) -> nn.Module:
        """The module to hook for the output of layer ``path``; a HeimerError naming the choices
        when there is none."""


class ModuleLayers:
    """The layers of an eager ``nn.Module``: its submodules."""

    batch_size = None

    def __init__(self, module: nn.Module):
        self.module = module

    def conv_layers(self) -> list[str]:
        return [name for name, module in self.module.named_modules() if isinstance(module, nn.Conv3d)]

    def layer_names(self) -> list[str]:
        return [name for name, _ in self.module.named_modules() if name]

    def layer(self, path: str) -> nn.Module:
        try:
            return self.module.get_submodule(path)
        except AttributeError:
            raise HeimerError(
                f"target layer {path!r} is not a module of {type(self.module).__name__}: "
                f"Conv3d layers to choose from: {', '.join(self.conv_layers()) or 'none'}"
            ) from None


def layers_of(model: nn.Module) -> LayerAccess:
    """``model``'s layers: an exported program answers for itself, an eager module through
    :class:`ModuleLayers`."""
    return model if isinstance(model, ExportedModel) else ModuleLayers(model)
