"""The demo end to end on a tiny cohort, through Python, the CLI and `mlflow run`: a model
version under alias champion, per-epoch histories in its source run, every metadata key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow

from heimer_mlflow import registry
from heimer_mlflow.demo import run_demo

from .conftest import subprocess_env

REPO = Path(__file__).resolve().parents[1]
TINY = dict(subjects=12, eval_subjects=6, epochs=2, voxel_size=4.0)
HISTORIES = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
DESIGN_KEYS = {"class_names", "positive_class", "input_shape", "intensity", "target_layer"}


def assert_demo_registered(name: str, epochs: int, version: str = "1"):
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias(name, "champion")
    assert str(mv.version) == version
    for key in HISTORIES:
        history = client.get_metric_history(mv.run_id, key)
        assert [m.step for m in history] == list(range(epochs)), key
        assert all(0 <= m.value < 10 for m in history)
    info = mlflow.models.get_model_info(f"models:/{name}@champion")
    assert set(info.metadata["heimer"]) == DESIGN_KEYS
    loaded = registry.load(f"models:/{name}@champion")
    assert loaded.meta.input_shape == [1, 46, 55, 46]  # the 4 mm grid
    assert loaded.meta.intensity == "zscore" and loaded.meta.inferred == []
    return loaded


def test_demo_in_python(tracking, tmp_path):
    result = run_demo(workdir=tmp_path / "demo", model_name="demo-py", progress=False, **TINY)
    assert result["version"] == "1"
    assert_demo_registered("demo-py", TINY["epochs"])
    assert Path(result["eval_manifest"]).is_file() and Path(result["train_manifest"]).is_file()
    # the held-out cohort shares no subject files with the training cohort
    assert Path(result["eval_manifest"]).parent != Path(result["train_manifest"]).parent
    assert_demo_evaluated("demo-py", result["run_id"])


def assert_demo_evaluated(name: str, training_run_id: str):
    """The demo's evaluation went to its own run in heimer-evaluations, and tagged the version."""
    mv = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    eval_run = mlflow.get_run(mv.tags["heimer.evaluation_run_id"])
    assert eval_run.info.run_id != training_run_id and eval_run.info.status == "FINISHED"
    assert mlflow.get_experiment(eval_run.info.experiment_id).name == "heimer-evaluations"
    assert {"roc_auc", "cam_outside_brain_fraction", "cam_roi_gain_hippocampus_left"} <= set(eval_run.data.metrics)
    assert mv.tags["heimer.verdict"] in ("pass", "review")


def test_demo_through_the_cli(tracking, tmp_path):
    cmd = [sys.executable, "-m", "heimer_mlflow", "-q", "demo", "--subjects", "12", "--eval-subjects", "6",
           "--epochs", "2", "--voxel-size", "4", "--workdir", str(tmp_path / "d"), "--model-name", "demo-cli",
           "--skip-evaluation"]
    done = subprocess.run(cmd, env=subprocess_env(tracking), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "demo-cli version 1" in done.stdout
    assert_demo_registered("demo-cli", 2)
    assert "heimer.evaluation_run_id" not in mlflow.MlflowClient().get_model_version("demo-cli", "1").tags


def test_demo_through_mlflow_run(tracking, tmp_path):
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "demo", "--env-manager", "local",
           "--experiment-name", "heimer-demo-mlproject",
           "-P", "subjects=12", "-P", "eval_subjects=6", "-P", "epochs=2", "-P", "voxel_size=4",
           "-P", f"workdir={tmp_path / 'm'}", "-P", "model_name=demo-mlproject"]
    done = subprocess.run(cmd, env=subprocess_env(tracking), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = assert_demo_registered("demo-mlproject", 2)
    # the training metrics went into the run that `mlflow run` started
    run = mlflow.get_run(loaded.source_run_id)
    assert run.data.tags.get("mlflow.project.entryPoint") == "demo"
    assert_demo_evaluated("demo-mlproject", loaded.source_run_id)


def test_cli_user_error_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "heimer_mlflow", "cohort", str(tmp_path / "c"), "--voxel-size", "9"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("heimer-mlflow: error:") and "9" in lines[0]
