"""The evaluator plug-in plays by MLflow's rules: installed, it never changes anyone else's
evaluation (MLflow's real default evaluator on scikit-learn and plain Python models, with and
without `heimer` in MLflow's evaluator registry), and it runs only when asked for by name."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models.evaluation.evaluator_registry import _model_evaluation_registry
from sklearn.datasets import make_classification, make_regression
from sklearn.linear_model import LinearRegression, LogisticRegression

from heimer_mlflow.errors import HeimerError
from heimer_mlflow.plugin import HeimerEvaluator


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
