"""The MLflow evaluator plug-in: ``mlflow.models.evaluate(model, data, evaluators="heimer")``.

A thin shell: MLflow hands over a pyfunc model and a data set; this recovers the torch module
(``get_raw_model()``), the model contract and the registry version, rebuilds the manifest
(``path`` and ``label`` columns) and calls the same ``evaluate_loaded`` as the CLI.
``evaluator_config`` takes the options of ``heimer_mlflow.evaluate`` (threshold, atlas, cam, lang,
require, ...; with ``caps`` the data is a ClinicaDL table: participant_id, session_id and the
targets column as its diagnosis). It runs only when asked for by name
(``evaluators="heimer"``): MLflow's own evaluations of other models are left exactly as they are
without this package.
"""

from __future__ import annotations

import sys
from pathlib import PurePosixPath

import pandas as pd
import torch
from mlflow.models.evaluation.artifacts import CsvEvaluationArtifact, ImageEvaluationArtifact, JsonEvaluationArtifact
from mlflow.models.evaluation.base import EvaluationResult, ModelEvaluator

from .errors import HeimerError
from .evaluation import evaluate_loaded
from .options import EvaluationOptions, check_keys
from .engine.exported import is_exported
from .registry import LoadedModel, as_evaluable, read_meta, resolve_version


NAME = "heimer"  # the entry-point name in pyproject.toml


class HeimerEvaluator(ModelEvaluator):
    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs) -> bool:
        """Yes only when the caller asked for this evaluator by name.

        With ``evaluators=None`` MLflow runs every installed evaluator that answers yes here, and
        this one only fits a 3D CNN on NIfTI paths: answering yes to every classifier would take
        over (and break) everyone else's evaluations. MLflow passes neither the model nor the
        evaluator list to this method, so the list is read from ``mlflow.models.evaluate``'s own
        frame; where it cannot be found, the answer is no (installing a plug-in must never change
        another evaluation).
        """
        return model_type in (None, "classifier") and _asked_for_by_name()

    def evaluate(self, *, model_type, dataset, run_id, evaluator_config, model=None, **kwargs):
        if model is None:
            raise HeimerError("the heimer evaluator needs the model itself (it computes Grad-CAM), not only predictions")
        options = dict(evaluator_config or {})
        check_keys(options, "evaluator_config")  # one line naming the unknown key, not a TypeError
        options.setdefault("progress", False)
        frame = manifest_of(dataset, options)
        opts = EvaluationOptions(**options).check()
        loaded = _loaded_from_pyfunc(model, opts.given_meta())
        evaluation = evaluate_loaded(loaded, frame, opts, run_id=run_id)
        return EvaluationResult(metrics=evaluation.run_metrics, artifacts=evaluation_artifacts(evaluation.artifacts),
                                run_id=evaluation.run_id)


def _asked_for_by_name() -> bool:
    """Whether the running ``mlflow.models.evaluate`` call names this evaluator in ``evaluators``
    (a name, a list of names, or, once MLflow resolved them, its bundles)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "evaluate" and frame.f_globals.get("__name__") == "mlflow.models.evaluation.base":
            asked = frame.f_locals.get("evaluators")
            if isinstance(asked, str):
                return asked == NAME
            names = [getattr(item, "name", item) for item in asked or ()]
            return NAME in names
        frame = frame.f_back
    return False


# MLflow's artifact types by file suffix: EvaluationResult.artifacts["roc"].content is an image,
# ["predictions"].content a DataFrame, ["metrics"].content a dict (loaded from the run on first use)
_ARTIFACT_TYPES = {".png": ImageEvaluationArtifact, ".json": JsonEvaluationArtifact, ".csv": CsvEvaluationArtifact}


def evaluation_artifacts(uris: dict[str, str]) -> dict:
    """What the evaluation logged, as MLflow's evaluation artifacts (the PDF report has no such
    type: its URI is the version's ``heimer.report`` tag and the run's ``report/`` folder)."""
    typed = {}
    for name, uri in uris.items():
        kind = _ARTIFACT_TYPES.get(PurePosixPath(uri).suffix)
        if kind is not None:
            typed[name] = kind(uri=uri)
    return typed


def _loaded_from_pyfunc(model, given: dict | None = None) -> LoadedModel:
    info = model.metadata
    try:
        module = model.get_raw_model()
    except Exception:
        module = None
    if not isinstance(module, torch.nn.Module):
        raise HeimerError("the heimer evaluator needs a PyTorch model logged with the pytorch flavour")
    # MLflow has loaded it already (the caller chose the model): pickled or pt2 as it is.
    serialization = "pt2" if is_exported(module) else "pickle"
    module, notes = as_evaluable(module, f"models:/{info.model_id}", serialization)
    version, model_id, source_run = (None, info.model_id, info.run_id)
    if info.model_id:
        version, model_id, source_run = resolve_version(f"models:/{info.model_id}")
    return LoadedModel(
        uri=f"models:/{version.name}/{version.version}" if version else f"models:/{model_id}",
        module=module,
        meta=read_meta(info.metadata, module, info.signature, given),
        name=version.name if version else None,
        version=str(version.version) if version else None,
        aliases=list(version.aliases) if version else [],
        source_run_id=source_run or info.run_id,
        model_id=model_id,
        description=version.description if version else None,
        tags=dict(version.tags) if version else {},
        serialization=serialization,
        notes=notes,
    )


def manifest_of(dataset, options: dict) -> pd.DataFrame:
    """The data set MLflow passes, back as a manifest (path, label and the rest) or, with
    ``caps`` in the options, a ClinicaDL table (participant_id, session_id, the label column)."""
    frame = dataset.features_data
    if not isinstance(frame, pd.DataFrame):
        raise HeimerError("the heimer evaluator needs data as a DataFrame with path and label columns")
    frame = frame.copy()
    if dataset.labels_data is not None:
        # MLflow takes the targets out of the features: put them back where the reader looks
        manifest = "path" in frame.columns
        column = options.get("label_column") or ("label" if manifest else dataset.targets_name or "diagnosis")
        if column not in frame.columns:
            frame[column] = list(dataset.labels_data)
        if not manifest:
            options["label_column"] = column
    return frame
