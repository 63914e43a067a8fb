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
