"""Shared fixtures: a real MLflow tracking store (sqlite, in a temp folder) and tiny models."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from torch import nn


@pytest.fixture(scope="session")
def tracking_dir(tmp_path_factory):
    """One sqlite tracking store for the session (creating its tables costs seconds); tests
    use their own model names. The working folder is the store's folder, so MLflow's default
    artifact location (./mlruns) lands there too."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old_cwd, old_env = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    yield root
    os.chdir(old_cwd)
    if old_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old_env


@pytest.fixture
def tracking(tracking_dir, monkeypatch):
    monkeypatch.chdir(tracking_dir)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    yield tracking_dir
    while mlflow.active_run():
        mlflow.end_run()


def subprocess_env(tracking_dir: Path) -> dict:
    """Environment for a CLI / `mlflow run` subprocess on the session's store. MLproject
    commands call `python`: make it this environment's, as an activated venv would."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tracking_dir / 'mlflow.db'}",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(leaked, None)
    return env


class TinyCNN(nn.Module):
    def __init__(self, n_outputs: int = 2):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, n_outputs))

    def forward(self, x):
        return self.head(self.body(x))


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    return TinyCNN()


def register_tiny_model(name: str, *, seed: int = 1, experiment: str = "tiny-training") -> str:
    """A tiny, untrained DemoCNN for the 4 mm synthetic grid, logged with the full contract from
    a training run with loss/accuracy curves and registered as ``name`` in the current tracking
    store (scores spread enough). Returns the new version."""
    from heimer_mlflow import registry
    from heimer_mlflow.demo.nets import DemoCNN

    torch.manual_seed(seed)
    net = DemoCNN(width=4).eval()
    mlflow.set_experiment(experiment)
    with mlflow.start_run():
        for step, (loss, acc) in enumerate([(0.7, 0.5), (0.6, 0.7)]):
            mlflow.log_metrics({"loss": loss, "val_loss": loss + 0.05, "acc": acc, "val_acc": acc - 0.1}, step=step)
        info = registry.log_model(net, "model", input_shape=[1, 46, 55, 46], intensity="zscore",
                                  registered_model_name=name, pip_requirements=["torch"])
    return str(info.registered_model_version)


class FailsOnRankOne(TinyCNN):
    """A model that breaks on the second torchrun process only (a fault on one rank)."""

    def forward(self, x):
        if os.environ.get("RANK") == "1":
            raise RuntimeError("injected fault on rank 1")
        return super().forward(x)
