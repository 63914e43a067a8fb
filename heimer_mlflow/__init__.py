"""heimer-mlflow: evaluate and explain AD-vs-CN 3D CNNs from the MLflow Model Registry.

Python entry points (imported lazily, so ``heimer-mlflow --help`` stays fast):

- ``log_model(model, name, *, class_names, positive_class, input_shape, intensity,
  target_layer, registered_model_name=None, **mlflow_kwargs)`` for training code;
- ``load_model(model_uri)`` -> ``LoadedModel`` (module in eval mode, metadata, version, run);
- ``evaluate(model_uri, data, **options)`` -> ``Evaluation`` (numbers, arrays, the MLflow run);
  with ``require=[...]`` rules it raises ``GateFailed`` when one breaks;
- ``write_cohort(out_dir, ...)`` for a synthetic AD/CN cohort with planted atrophy;
- ``GradCamDisplay``, ``FeatureMapDisplay``, ``GroupDifferenceDisplay`` for notebooks: the
  evaluation's maps of a plain module and NumPy/NIfTI volumes, no MLflow run
  (``from_model(...)`` / ``from_arrays(...)``, then ``.plot(ax=...)``).

The modules, in the order data flows through them, are listed in README.md ("Repository layout").
"""

import importlib
import importlib.machinery
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "log_model": ("registry", "log_model"),
    "load_model": ("registry", "load"),
    "evaluate": ("evaluation", "evaluate"),
    "write_cohort": ("demo.synthetic", "write_cohort"),
    "HeimerError": ("errors", "HeimerError"),
    "GateFailed": ("gate", "GateFailed"),
    "GradCamDisplay": ("display", "GradCamDisplay"),
    "FeatureMapDisplay": ("display", "FeatureMapDisplay"),
    "GroupDifferenceDisplay": ("display", "GroupDifferenceDisplay"),
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'heimer_mlflow' has no attribute {name!r}")


# Modules that moved into the demo package. Their old paths keep working, because models logged
# with pickle name their class by module path (``heimer_mlflow.nets.DemoCNN`` in every demo model
# registered before the move) and scripts import them by it.
_MOVED = {f"{__name__}.{old}": f"{__name__}.demo.{old}" for old in ("synthetic", "nets", "training")}


class _MovedModule(types.ModuleType):
    """An old module path: every attribute is read from the module's new home."""

    def __getattr__(self, name):
        return getattr(sys.modules[self.__moved_to__], name)

    def __dir__(self):
        return dir(sys.modules[self.__moved_to__])


class _MovedModules:
    """Finder and loader of the old paths (sys.meta_path protocol)."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.machinery.ModuleSpec(fullname, self) if fullname in _MOVED else None

    def create_module(self, spec):
        return None  # the default module, turned into a _MovedModule below

    def exec_module(self, module):
        target = _MOVED[module.__name__]
        importlib.import_module(target)
        module.__class__ = _MovedModule
        module.__moved_to__ = target


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
