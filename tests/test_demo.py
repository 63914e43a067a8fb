"""The demo end to end on a tiny cohort, through Python, the CLI and `mlflow run`: a model
version under alias champion, per-epoch histories in its source run, every metadata key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from heimer_mlflow import registry
from heimer_mlflow.demo import run_demo, story

from .helpers.tracking import CONTRACT_KEYS, mlflow_run, run_heimer

TINY = dict(subjects=12, eval_subjects=6, epochs=2, voxel_size=4.0)
HISTORIES = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


def assert_demo_registered(name: str, epochs: int, version: str = "1"):
    client = mlflow.MlflowClient()
    mv = client.get_model_version_by_alias(name, "champion")
    assert str(mv.version) == version
    for key in HISTORIES:
        history = client.get_metric_history(mv.run_id, key)
        assert [m.step for m in history] == list(range(epochs)), key
        assert all(0 <= m.value < 10 for m in history)
    info = mlflow.models.get_model_info(f"models:/{name}@champion")
    assert set(info.metadata["heimer"]) == CONTRACT_KEYS
    loaded = registry.load(f"models:/{name}@champion")
    assert loaded.meta.input_shape == [1, 46, 55, 46]  # the 4 mm grid
    assert loaded.meta.intensity == "zscore" and loaded.meta.inferred == []
    return loaded


@pytest.mark.slow
def test_demo_in_python(tracking, tmp_path):
    """The registry review's mechanics on a tiny cohort (whether the maps tell the two models
    apart needs the full-size demo, measured in README): champion v1 and challenger v2, both
    evaluated on the same held-out cohort, the challenger's run compared with the champion's."""
    result = run_demo(workdir=tmp_path / "demo", model_name="demo-py", progress=False, **TINY)
    assert result["version"] == "1"
    assert_demo_registered("demo-py", TINY["epochs"])
    assert Path(result["eval_manifest"]).is_file() and Path(result["train_manifest"]).is_file()
    # the held-out cohort shares no subject files with the training cohorts, and carries the site marker
    challenger = result["challenger"]
    folders = {Path(m).parent for m in (result["eval_manifest"], result["train_manifest"], challenger["train_manifest"])}
    assert len(folders) == 3
    truth = pd.read_csv(Path(result["eval_manifest"]).parent / "truth.csv")  # the marker on every AD scan, no CN scan
    assert (truth["has_patch"] == (truth["label"] == "AD")).all() and truth["has_patch"].any()
    assert not pd.read_csv(Path(result["train_manifest"]).parent / "truth.csv")["has_patch"].any()
    sites = pd.read_csv(Path(challenger["train_manifest"]).parent / "truth.csv")
    assert len(sites) == round(TINY["subjects"] * 2 / 3) and (sites["has_patch"] == (sites["label"] == "AD")).all()
    assert_demo_evaluated("demo-py", result["run_id"])

    client = mlflow.MlflowClient()
    # both training runs in the demo's experiment, both evaluations in heimer-evaluations
    for training_run in (result["run_id"], challenger["run_id"]):
        assert client.get_experiment(client.get_run(training_run).info.experiment_id).name == "heimer-demo"
    assert challenger["version"] == "2" and str(client.get_model_version_by_alias("demo-py", "challenger").version) == "2"
    assert str(client.get_model_version_by_alias("demo-py", "champion").version) == "1"
    champion_run = client.get_model_version("demo-py", "1").tags["heimer.evaluation_run_id"]
    evaluation = challenger["evaluation"]
    assert evaluation.comparison.champion_run_id == champion_run
    logged = client.get_run(evaluation.run_id).data.metrics
    assert {"vs_champion_roc_auc_diff", "vs_champion_delong_p"} <= set(logged)
    assert client.get_model_version("demo-py", "2").tags["heimer.evaluation_run_id"] == evaluation.run_id
    lines = story(result)
    assert [line.split(":")[0] for line in lines] == ["scores", "verdicts", "what changes the score", "reports"]
    assert "challenger v2" in lines[0] and "DeLong p" in lines[0] and evaluation.verdict in lines[1]


def assert_demo_evaluated(name: str, training_run_id: str):
    """The demo's evaluation went to its own run in heimer-evaluations, and tagged the version."""
    mv = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    eval_run = mlflow.get_run(mv.tags["heimer.evaluation_run_id"])
    assert eval_run.info.run_id != training_run_id and eval_run.info.status == "FINISHED"
    assert mlflow.get_experiment(eval_run.info.experiment_id).name == "heimer-evaluations"
    assert {"roc_auc", "cam_outside_brain_fraction", "cam_roi_gain_hippocampus_left"} <= set(eval_run.data.metrics)
    assert mv.tags["heimer.verdict"] in ("pass", "review")


@pytest.mark.slow
def test_demo_through_the_cli(tracking, tmp_path):
    done = run_heimer(tracking, "-q", "demo", "--subjects", "12", "--eval-subjects", "6", "--epochs", "2",
                      "--voxel-size", "4", "--workdir", str(tmp_path / "d"), "--model-name", "demo-cli",
                      "--skip-evaluation")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "demo-cli version 1" in done.stdout
    assert_demo_registered("demo-cli", 2)
    assert "heimer.evaluation_run_id" not in mlflow.MlflowClient().get_model_version("demo-cli", "1").tags


@pytest.mark.slow
def test_demo_through_mlflow_run(tracking, tmp_path):
    params = {"subjects": 12, "eval_subjects": 6, "epochs": 2, "voxel_size": 4, "workdir": tmp_path / "m",
              "model_name": "demo-mlproject", "skip_challenger": "true"}  # fmt: skip
    done = mlflow_run(tracking, "demo", "heimer-demo-mlproject", params, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = assert_demo_registered("demo-mlproject", 2)
    # the training metrics went into the run that `mlflow run` started
    run = mlflow.get_run(loaded.source_run_id)
    assert run.data.tags.get("mlflow.project.entryPoint") == "demo"
    assert_demo_evaluated("demo-mlproject", loaded.source_run_id)
    assert [str(v.version) for v in mlflow.MlflowClient().search_model_versions("name='demo-mlproject'")] == ["1"]


def test_cli_user_error_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "heimer_mlflow", "cohort", str(tmp_path / "c"), "--voxel-size", "9"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("heimer-mlflow: error:") and "9" in lines[0]


def test_a_cohort_folder_that_cannot_be_written_is_a_user_error(tmp_path, capsys):
    """`heimer-mlflow cohort` into a folder it cannot create or write: one line naming the
    folder, exit 2 (a path through a file everywhere; a read-only folder where the user is not root)."""
    import os

    from heimer_mlflow import cli

    (tmp_path / "a-file").write_text("not a folder")
    targets = [tmp_path / "a-file" / "cohort"]
    if os.geteuid() != 0:  # root writes into read-only folders
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        targets.append(locked / "cohort")
    for target in targets:
        code = cli.main(["-q", "cohort", str(target), "--subjects", "2", "--voxel-size", "4"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith(f"heimer-mlflow: error: the cohort folder '{target}' cannot be written ("), lines
        assert lines[0].endswith("): give a folder you can write") and "FAILED" not in lines[0]


def test_training_logs_every_epoch_and_says_what_the_model_takes(tracking, synthetic_cohort):
    """The demo's training step alone (in the fast subset): one epoch on the shared tiny cohort
    logs the four curves at step 0 to the active run and returns the model's contract."""
    from heimer_mlflow.demo.training import train_demo

    with mlflow.start_run() as run:
        trained = train_demo(synthetic_cohort / "manifest.csv", epochs=1, width=2, progress=False)
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data
    assert set(HISTORIES) <= set(logged.metrics) and all(len(trained.history[k]) == 1 for k in HISTORIES)
    assert logged.params["epochs"] == "1" and logged.params["input_shape"] == "[1, 46, 55, 46]"
    assert trained.meta.input_shape == [1, 46, 55, 46] and trained.meta.target_layer == trained.model.gradcam_layer
    assert not trained.model.training
    with pytest.raises(Exception, match="at least one epoch"):
        train_demo(synthetic_cohort / "manifest.csv", epochs=0, progress=False)


def test_the_story_of_a_demo_without_evaluation_names_the_version():
    assert story({"model_name": "m", "version": "1", "run_id": "abc", "evaluation": None}) == [
        "m version 1 (alias champion), training run abc"]
