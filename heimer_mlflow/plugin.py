"""The MLflow evaluator plug-in: ``mlflow.models.evaluate(model, data, evaluators="heimer")``.

A thin shell: MLflow hands over a pyfunc model and a data set; this recovers the torch module
(``get_raw_model()``), the model contract and the registry version, rebuilds the manifest
(``path`` and ``label`` columns) and calls the same ``evaluate_loaded`` as the CLI.
``evaluator_config`` takes the options of ``heimer_mlflow.evaluate`` (threshold, atlas, ...).
"""

from __future__ import annotations

import pandas as pd
import torch
from mlflow.models.evaluation.base import EvaluationResult, ModelEvaluator

from .errors import HeimerError
from .evaluation import EvaluationOptions, evaluate_loaded
from .registry import LoadedModel, pt2_refusal, read_meta, resolve_version


class HeimerEvaluator(ModelEvaluator):
    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs) -> bool:
        # Only used when asked for by name; any model type of a binary AD/CN classifier.
        return model_type in (None, "classifier")

    def evaluate(self, *, model_type, dataset, run_id, evaluator_config, model=None, **kwargs):
        if model is None:
            raise HeimerError("the heimer evaluator needs the model itself (it computes Grad-CAM), not only predictions")
        loaded = _loaded_from_pyfunc(model)
        options = dict(evaluator_config or {})
        options.setdefault("progress", False)
        evaluation = evaluate_loaded(loaded, _manifest(dataset), EvaluationOptions(**options).check(), run_id=run_id)
        metrics = {**evaluation.metrics.to_flat_metrics(), **evaluation.summary}
        return EvaluationResult(metrics=metrics, artifacts={}, run_id=evaluation.run_id)


def _loaded_from_pyfunc(model) -> LoadedModel:
    info = model.metadata
    try:
        module = model.get_raw_model()
    except Exception:
        module = None
    if isinstance(module, torch.fx.GraphModule):
        raise pt2_refusal(f"models:/{info.model_id}")
    if not isinstance(module, torch.nn.Module):
        raise HeimerError("the heimer evaluator needs a PyTorch model logged with the pytorch flavour")
    module.eval()
    version, model_id, source_run = (None, info.model_id, info.run_id)
    if info.model_id:
        version, model_id, source_run = resolve_version(f"models:/{info.model_id}")
    return LoadedModel(
        uri=f"models:/{version.name}/{version.version}" if version else f"models:/{model_id}",
        module=module,
        meta=read_meta(info.metadata, module, info.signature),
        name=version.name if version else None,
        version=str(version.version) if version else None,
        aliases=list(version.aliases) if version else [],
        source_run_id=source_run or info.run_id,
        model_id=model_id,
        description=version.description if version else None,
        tags=dict(version.tags) if version else {},
    )


def _manifest(dataset) -> pd.DataFrame:
    """The data set MLflow passes, back as a manifest (path, label and the rest)."""
    frame = dataset.features_data
    if not isinstance(frame, pd.DataFrame):
        raise HeimerError("the heimer evaluator needs data as a DataFrame with path and label columns")
    frame = frame.copy()
    if dataset.labels_data is not None and "label" not in frame.columns:
        frame["label"] = list(dataset.labels_data)
    return frame
