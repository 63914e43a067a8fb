"""Everything the demo needs and an evaluation does not: synthetic cohorts with planted ground
truth (``synthetic``, also behind ``heimer-mlflow cohort``), the demo's 3D CNN (``nets``), its
training (``training``) and the ``heimer-mlflow demo`` command (``command``: ``run_demo``,
``story``).

``run_demo`` and ``story`` are imported on first use: ``heimer-mlflow cohort`` needs only
``synthetic``, not torch and MLflow.
"""

import importlib

_EXPORTS = {"run_demo": "command", "story": "command"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'heimer_mlflow.demo' has no attribute {name!r}")
