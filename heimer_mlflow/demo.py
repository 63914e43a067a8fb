"""``heimer-mlflow demo``: synthetic cohorts -> train the demo CNN -> register it as
``heimer-demo`` with alias ``champion`` -> evaluate it on the held-out cohort, all in the
current tracking store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import mlflow
import torch

from .evaluation import evaluate
from .registry import log_model
from .synthetic import write_cohort
from .training import train_demo

DEMO_MODEL_NAME = "heimer-demo"
DEMO_ALIAS = "champion"
EVALUATION_EXPERIMENT = "heimer-evaluations"


def run_demo(
    *,
    subjects: int = 120,
    eval_subjects: int = 60,
    epochs: int = 20,
    voxel_size: float = 2.0,
    seed: int = 0,
    workdir: str | os.PathLike = "heimer-demo",
    model_name: str = DEMO_MODEL_NAME,
    experiment: str = "heimer-demo",
    evaluate_model: bool = True,
    progress: bool = True,
) -> dict:
    """Run the demo; returns what it made (cohort paths, run id, model version)."""
    workdir = Path(workdir)
    say = (lambda msg: print(f"[demo] {msg}", file=sys.stderr)) if progress else (lambda msg: None)
    say(f"writing the synthetic training cohort ({subjects} subjects, {voxel_size} mm) to {workdir / 'cohort-train'}")
    train_manifest = write_cohort(workdir / "cohort-train", n_subjects=subjects, seed=seed,
                                  voxel_size=voxel_size, progress=progress)
    # A held-out cohort from another seed: the evaluation must not see training subjects.
    say(f"writing the held-out evaluation cohort ({eval_subjects} subjects) to {workdir / 'cohort-eval'}")
    eval_manifest = write_cohort(workdir / "cohort-eval", n_subjects=eval_subjects, seed=seed + 10_000,
                                 voxel_size=voxel_size, progress=progress)

    if "MLFLOW_RUN_ID" not in os.environ:  # under `mlflow run` the run (and experiment) exist
        mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="train-demo-cnn") as run:
        mlflow.set_tags({"heimer.demo": "true", "heimer.cohort": str(train_manifest)})
        trained = train_demo(train_manifest, epochs=epochs, seed=seed, progress=progress)
        info = log_model(
            trained.model,
            "model",
            class_names=trained.meta.class_names,
            positive_class=trained.meta.positive_class,
            input_shape=trained.meta.input_shape,
            intensity=trained.meta.intensity,
            target_layer=trained.meta.target_layer,
            registered_model_name=model_name,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "nibabel", "heimer-mlflow"],
        )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(model_name, DEMO_ALIAS, version)
    say(f"registered {model_name} version {version} with alias '{DEMO_ALIAS}' "
        f"(tracking store: {mlflow.get_tracking_uri()}); final val_accuracy "
        f"{trained.history['val_accuracy'][-1]:.2f}")
    result = dict(train_manifest=train_manifest, eval_manifest=eval_manifest, run_id=run.info.run_id,
                  model_name=model_name, version=version, model_uri=f"models:/{model_name}@{DEMO_ALIAS}",
                  history=trained.history, evaluation=None)
    if not evaluate_model:
        say(f"next: heimer-mlflow evaluate {result['model_uri']} --data {eval_manifest}")
        return result
    atlas = Path(eval_manifest).parent / "atlas"
    # A new run in the evaluation experiment, also under `mlflow run`: that run was the training's
    # (and MLflow consumed MLFLOW_RUN_ID when the training resumed it).
    say(f"evaluating {result['model_uri']} on the held-out cohort")
    result["evaluation"] = evaluate(
        result["model_uri"], eval_manifest, experiment=EVALUATION_EXPERIMENT,
        atlas=str(atlas / "atlas.nii.gz"), atlas_labels=str(atlas / "labels.csv"), progress=progress,
    )
    return result
