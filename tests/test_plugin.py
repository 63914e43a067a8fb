"""The evaluator plug-in plays by MLflow's rules: installed, it never changes anyone else's
evaluation (MLflow's real default evaluator on scikit-learn and plain Python models, with and
without `heimer` in MLflow's evaluator registry), and it runs only when asked for by name, then
on a registered 3D CNN as `heimer-mlflow evaluate` does."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models.evaluation.evaluator_registry import _model_evaluation_registry
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import roc_auc_score

from heimer_mlflow.errors import HeimerError
from heimer_mlflow.plugin import HeimerEvaluator

from .helpers.cohorts import good_rows, write_manifest
from .helpers.models import TinyCNN
from .helpers.tracking import new_version


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return 2.0 * model_input["x0"].to_numpy()


def _classifier():
    X, y = make_classification(n_samples=80, n_features=4, random_state=0)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(4)]).assign(label=y)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(LogisticRegression().fit(X, y), name="model")
    return info.model_uri, frame, "classifier"


def _regressor():
    X, y = make_regression(n_samples=80, n_features=3, noise=0.5, random_state=0)
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(3)]).assign(label=y)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(LinearRegression().fit(X, y), name="model")
    return info.model_uri, frame, "regressor"


def _python_function():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x0": rng.normal(size=50)})
    frame["label"] = 2.0 * frame["x0"] + rng.normal(scale=0.1, size=50)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=Doubler())
    return info.model_uri, frame, "regressor"


def _evaluate(model_uri, frame, model_type, **kwargs):
    with mlflow.start_run() as run:
        result = mlflow.models.evaluate(model_uri, frame, targets="label", model_type=model_type, **kwargs)
    return result, mlflow.MlflowClient().get_run(run.info.run_id)


def _artifact_paths(run_id: str, path: str | None = None) -> set[str]:
    client, found = mlflow.MlflowClient(), set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifact_paths(run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.parametrize("make", [_classifier, _regressor, _python_function])
@pytest.mark.slow
def test_other_evaluations_are_exactly_as_without_the_plugin(tracking, monkeypatch, make):
    assert isinstance(_model_evaluation_registry.get_evaluator("heimer"), HeimerEvaluator)  # installed (entry point)
    mlflow.set_experiment("not-ours")
    model_uri, frame, model_type = make()
    with_plugin, run = _evaluate(model_uri, frame, model_type)
    assert not [k for k in (*run.data.tags, *run.data.params) if k.startswith("heimer")]
    ours = {"evaluation.json", "predictions.csv", "metrics.json", "exclusions.csv"}
    assert not ours & _artifact_paths(run.info.run_id) and not any(p.startswith(("report/", "volumes/"))
                                                                       for p in _artifact_paths(run.info.run_id))
    monkeypatch.delitem(_model_evaluation_registry._registry, "heimer")  # as if this package were not installed
    without_plugin, _ = _evaluate(model_uri, frame, model_type)
    assert with_plugin.metrics.keys() == without_plugin.metrics.keys() and with_plugin.metrics
    for name, value in without_plugin.metrics.items():
        assert with_plugin.metrics[name] == pytest.approx(value, nan_ok=True), name
    assert with_plugin.artifacts.keys() == without_plugin.artifacts.keys()


@pytest.mark.slow
def test_asked_for_by_name_it_refuses_a_model_it_cannot_evaluate(tracking):
    mlflow.set_experiment("not-ours")
    model_uri, frame, _ = _classifier()
    with pytest.raises(HeimerError, match="needs a PyTorch model logged with the pytorch flavour"):
        _evaluate(model_uri, frame, "classifier", evaluators="heimer")
    with pytest.raises(HeimerError, match="needs a PyTorch model"):
        _evaluate(model_uri, frame, "classifier", evaluators=["heimer"])


def test_can_evaluate_says_no_outside_an_evaluate_call_that_names_it():
    assert not HeimerEvaluator.can_evaluate(model_type="classifier", evaluator_config={})


def test_asked_for_by_name_it_evaluates_a_registered_3d_cnn_into_the_callers_run(tracking, tmp_path):
    """The plug-in's evaluate on a tiny registered CNN and 8 small heads (the fast subset's check of
    the path `mlflow.models.evaluate(..., evaluators="heimer")` takes): the caller's run gets the
    metrics MLflow returns, the AUC is scikit-learn's on the logged predictions, every head is
    scored in manifest order, and the version points at the run."""
    name = "plugin-fast"
    version = new_version(name, TinyCNN(), intensity="zscore")
    manifest = pd.read_csv(write_manifest(tmp_path, good_rows(tmp_path)))
    manifest["path"] = [str(tmp_path / p) for p in manifest["path"]]
    mlflow.set_experiment("plugin-fast")
    with mlflow.start_run() as run:
        result = mlflow.models.evaluate(f"models:/{name}/{version}", data=manifest, targets="label",
                                        model_type="classifier", evaluators="heimer",
                                        evaluator_config={"n_bootstrap": 50, "workers": 0})  # fmt: skip
    logged = mlflow.get_run(run.info.run_id)
    assert result.metrics and result.metrics == {k: pytest.approx(logged.data.metrics[k]) for k in result.metrics}
    assert result.metrics["n_subjects"] == 8 and result.metrics["n_excluded"] == 0
    predictions = result.artifacts["predictions"].content
    assert list(predictions["subject_id"]) == list(manifest["subject_id"])
    assert result.metrics["roc_auc"] == pytest.approx(roc_auc_score(predictions["label"] == "AD", predictions["prob_AD"]))
    assert result.artifacts["roc"].uri.startswith(logged.info.artifact_uri)
    tags = mlflow.MlflowClient().get_model_version(name, version).tags
    assert tags["heimer.evaluation_run_id"] == run.info.run_id and tags["heimer.verdict"] in ("pass", "review")
