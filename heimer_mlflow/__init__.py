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
