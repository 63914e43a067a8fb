"""The session's MLflow tracking store (conftest's ``tracking_dir``) from a test: registering
model versions, reading runs and tags, running the command line in process, in a subprocess
and through ``mlflow run``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import torch
from torch import nn

from . import REPO
from .cohorts import GRID, SYNTHETIC_INPUT_SHAPE

# the keys of a logged model's `heimer` metadata (docs/design.md, "The model contract")
CONTRACT_KEYS = {"class_names", "positive_class", "input_shape", "intensity", "target_layer"}
# a training run's curves under the names a team's script might use (`loss` is the training loss)
TINY_HISTORY = [{"loss": loss, "val_loss": loss + 0.05, "acc": acc, "val_acc": acc - 0.1}
                for loss, acc in [(0.7, 0.5), (0.6, 0.7)]]  # fmt: skip


def subprocess_env(tracking_dir: Path) -> dict:
    """Environment for a CLI / `mlflow run` subprocess on the session's store. MLproject
    commands call `python`: make it this environment's, as an activated venv would."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tracking_dir / 'mlflow.db'}",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(leaked, None)
    return env


def log_version(name: str, module: nn.Module, *, input_shape, experiment: str, history=(), **contract) -> str:
    """Log ``module`` with heimer-mlflow's contract from a new run of ``experiment`` (with
    ``history``: one dict of metrics per step) and register it as a new version of ``name`` in
    the current tracking store. Returns the version."""
    from heimer_mlflow import registry

    mlflow.set_experiment(experiment)
    with mlflow.start_run():
        for step, metrics in enumerate(history):
            mlflow.log_metrics(metrics, step=step)
        info = registry.log_model(module, "model", input_shape=input_shape, registered_model_name=name,
                                  pip_requirements=["torch"], **contract)  # fmt: skip
    return str(info.registered_model_version)


def register_tiny_model(name: str, *, seed: int = 1, experiment: str = "tiny-training") -> str:
    """A tiny, untrained DemoCNN for the 4 mm synthetic grid, logged with the full contract from
    a training run with loss/accuracy curves and registered as ``name`` in the current tracking
    store (scores spread enough). Returns the new version."""
    from heimer_mlflow.demo.nets import DemoCNN

    torch.manual_seed(seed)
    return log_version(name, DemoCNN(width=4).eval(), input_shape=SYNTHETIC_INPUT_SHAPE, intensity="zscore",
                       experiment=experiment, history=TINY_HISTORY)  # fmt: skip


def new_version(name: str, module: nn.Module, **contract) -> str:
    """A fresh registered version (no heimer.* tags yet) of ``module``, for the 8x10x8 heads of
    ``cohorts``."""
    return log_version(name, module, input_shape=[1, *GRID], experiment="bad-input-training", **contract)


def heimer_tags(name: str, version: str) -> dict:
    """The heimer.* tags of a model version."""
    tags = mlflow.MlflowClient().get_model_version(name, version).tags
    return {k: v for k, v in tags.items() if k.startswith("heimer.")}


def experiment_runs(experiment: str) -> list:
    """The runs of ``experiment``, newest first; none when it does not exist (yet)."""
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        return []
    return mlflow.MlflowClient().search_runs([found.experiment_id], order_by=["start_time DESC"])


def only_run(experiment: str):
    """The one run of ``experiment``."""
    runs = experiment_runs(experiment)
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def cli_evaluate(capsys, *args, experiment: str) -> tuple[int, list[str], str]:
    """`heimer-mlflow -q evaluate ARGS` in this process, quick (50 bootstrap resamples, no
    DataLoader workers), into ``experiment``: (exit code, stderr lines, stdout)."""
    from heimer_mlflow import cli

    code = cli.main(["-q", "evaluate", *args, "--experiment", experiment, "--bootstrap", "50", "--workers", "0"])
    captured = capsys.readouterr()
    # MLflow's own INFO lines appear in process only (the CLI quiets MLflow before importing it)
    lines = [line for line in captured.err.strip().splitlines() if " INFO mlflow" not in line]
    return code, lines, captured.out


def run_heimer(tracking_dir: Path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m heimer_mlflow ARGS` in a subprocess on the session's store."""
    return subprocess.run([sys.executable, "-m", "heimer_mlflow", *args], env=subprocess_env(tracking_dir),
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def mlflow_run(tracking_dir: Path, entry_point: str, experiment: str, params: dict, *, cwd: Path,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """`mlflow run REPO -e ENTRY_POINT` (local environment) in a subprocess on the session's store."""
    command = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry_point, "--env-manager", "local",
               "--experiment-name", experiment]
    command += [option for key, value in params.items() for option in ("-P", f"{key}={value}")]
    return subprocess.run(command, env=subprocess_env(tracking_dir), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)  # fmt: skip
