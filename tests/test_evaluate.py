"""`evaluate` end to end on a tiny registered model and a tiny synthetic cohort, through the
three interfaces (CLI, `mlflow run -e main`, `mlflow.models.evaluate(..., evaluators="heimer")`),
against a real sqlite tracking store: metric values equal scikit-learn's, every artifact is
there and loads, NIfTI affines equal the inputs', the data set input, linked metrics, tags."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.image
import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from heimer_mlflow.evaluation import evaluate

from .helpers.artifacts import check_evaluation_run, pdf_text
from .helpers.cohorts import atlas_args
from .helpers.tracking import mlflow_run, register_tiny_model, run_heimer


@pytest.fixture(scope="module")
def cohort(synthetic_cohort):
    return synthetic_cohort


@pytest.fixture(scope="module")
def model_name(tracking_dir, cohort):
    """A tiny, untrained DemoCNN registered with the full contract (scores spread enough)."""
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    name = "tiny-eval"
    version = register_tiny_model(name)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    return name


@pytest.mark.slow
def test_evaluate_through_the_cli(tracking, cohort, model_name, tmp_path):
    done = run_heimer(tracking, "-q", "evaluate", f"models:/{model_name}@champion", "--data", str(cohort),
                      *atlas_args(cohort), "--workers", "0", "--bootstrap", "500", "--experiment", "cli-evals",
                      timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = done.stdout.split()[1].rstrip(":")
    run, local = check_evaluation_run(run_id, cohort, model_name)
    assert run.data.tags["heimer.model_version"] == "1" and run.data.tags["heimer.model_name"] == model_name
    assert mlflow.get_experiment(run.info.experiment_id).name == "cli-evals"
    # re-render from the logged artifacts alone, through the CLI and the MLproject entry point
    out = tmp_path / "rerendered"
    done = run_heimer(tracking, "report", run_id, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / f"{model_name}-v1.pdf").is_file() and (out / "html" / "index.html").is_file()
    done = mlflow_run(tracking, "report", "reports", {"run_id": run_id}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_evaluate_through_mlflow_run(tracking, cohort, model_name, tmp_path):
    """`mlflow run -e main`: the project's run (its parameters, the gate's outcome, a pointer to the
    evaluation) and, under it, the evaluation's own run, which holds everything an evaluation logs."""
    params = {"model_uri": f"models:/{model_name}/1", "data": cohort / "manifest.csv",
              "atlas": cohort / "atlas" / "atlas.nii.gz", "atlas_labels": cohort / "atlas" / "labels.csv",
              "batch_size": 3, "require": "roc_auc>=0;n_subjects>=12"}  # fmt: skip
    done = mlflow_run(tracking, "main", "mlproject-evals", params, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    experiment = mlflow.get_experiment_by_name("mlproject-evals")
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    project = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "main"]
    evaluation = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(runs) == 2 and len(project) == 1 and len(evaluation) == 1, runs
    project, evaluation = project[0], evaluation[0]
    assert evaluation.data.tags["mlflow.parentRunId"] == project.info.run_id
    assert project.info.status == evaluation.info.status == "FINISHED"
    assert project.data.tags["heimer.evaluation_run_id"] == evaluation.info.run_id
    for run in (project, evaluation):
        assert run.data.tags["heimer.gate"] == "passed"
        assert run.data.tags["heimer.gate_rules"] == "roc_auc>=0; n_subjects>=12"
    check_evaluation_run(evaluation.info.run_id, cohort, model_name)


@pytest.mark.slow
def test_a_broken_gate_under_mlflow_run_leaves_a_truthful_record(tracking, cohort, tmp_path):
    """A rule that breaks: the command exits 3, so `mlflow run` fails and marks the project's run
    FAILED (with the gate's outcome); the evaluation's run FINISHED, in the experiment -P
    experiment names, and the version's tags point at it, gate failed."""
    name = "mlproject-gate-model"
    version = register_tiny_model(name)
    params = {"model_uri": f"models:/{name}/{version}", "data": cohort / "manifest.csv",
              "require": "roc_auc_ci_lower>=0.999", "experiment": "mlproject-gate-evaluations"}  # fmt: skip
    done = mlflow_run(tracking, "main", "mlproject-gate", params, cwd=tmp_path, timeout=600)
    assert done.returncode != 0
    assert "heimer-mlflow: gate failed: roc_auc_ci_lower" in done.stderr, done.stderr[-3000:]
    project = mlflow.search_runs([mlflow.get_experiment_by_name("mlproject-gate").experiment_id], output_format="list")
    assert len(project) == 1 and project[0].info.status == "FAILED"
    assert project[0].data.tags["heimer.gate"] == "failed"
    tags = mlflow.MlflowClient().get_model_version(name, version).tags
    evaluation = mlflow.get_run(tags["heimer.evaluation_run_id"])
    assert evaluation.info.status == "FINISHED" and tags["heimer.gate"] == "failed"
    assert mlflow.get_experiment(evaluation.info.experiment_id).name == "mlproject-gate-evaluations"
    assert evaluation.data.tags["mlflow.parentRunId"] == project[0].info.run_id
    assert project[0].data.tags["heimer.evaluation_run_id"] == evaluation.info.run_id


@pytest.mark.slow
def test_evaluate_through_the_mlflow_evaluator_plugin(tracking, cohort, model_name):
    manifest = pd.read_csv(cohort / "manifest.csv")
    manifest["path"] = [str(cohort / p) for p in manifest["path"]]
    mlflow.set_experiment("plugin-evals")
    with mlflow.start_run() as run:
        result = mlflow.models.evaluate(
            f"models:/{model_name}/1", data=manifest, targets="label", model_type="classifier", evaluators="heimer",
            evaluator_config={"atlas": str(cohort / "atlas" / "atlas.nii.gz"),
                              "atlas_labels": str(cohort / "atlas" / "labels.csv"), "n_bootstrap": 500, "workers": 0},
        )
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert result.metrics == {name: pytest.approx(logged[name]) for name in result.metrics}
    assert {"roc_auc", "roc_auc_ci_lower", "n_subjects", "cam_outside_brain_fraction"} <= result.metrics.keys()
    check_evaluation_run(run.info.run_id, cohort, model_name)
    # what it logged, as MLflow's own evaluator lists its artifacts: typed, loaded from the run on use
    artifacts = result.artifacts
    assert {"roc", "calibration", "score_histogram", "metrics", "evaluation", "predictions"} <= artifacts.keys()
    assert artifacts["roc"].uri.endswith("/figures/roc.png") and artifacts["roc"].uri.startswith(run.info.artifact_uri)
    assert artifacts["roc"].content.size[0] > 100  # a PIL image
    assert list(artifacts["predictions"].content["subject_id"]) == list(pd.read_csv(cohort / "manifest.csv")["subject_id"])
    assert artifacts["metrics"].content["plausibility"]["cam_outside_brain_fraction"] == pytest.approx(
        result.metrics["cam_outside_brain_fraction"])
    # MLflow's own validation works on these metrics: against thresholds and against a baseline
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    auc = result.metrics["roc_auc"]
    mlflow.validate_evaluation_results({"roc_auc": MetricThreshold(threshold=auc - 0.01, greater_is_better=True),
                                        "brier_score": MetricThreshold(threshold=1.0, greater_is_better=False)},
                                       candidate_result=result)  # fmt: skip
    with pytest.raises(ModelValidationFailedException, match="roc_auc"):
        mlflow.validate_evaluation_results(
            {"roc_auc": MetricThreshold(threshold=auc + 0.01, greater_is_better=True)}, candidate_result=result)
    with pytest.raises(ModelValidationFailedException, match="roc_auc"):
        mlflow.validate_evaluation_results(
            {"roc_auc": MetricThreshold(min_absolute_change=0.05, greater_is_better=True)},
            candidate_result=result, baseline_result=result)


@pytest.mark.slow
def test_evaluate_in_python_returns_numbers(tracking, cohort, model_name):
    result = evaluate(f"models:/{model_name}@champion", cohort, n_bootstrap=200, workers=0, progress=False,
                      save_cams="all", experiment="py-evals")
    assert result.engine.subjects["prob"].shape == (12,)
    assert result.history["train_loss"] == [(0, 0.7), (1, 0.6)]  # `loss` recognised as the training loss
    assert result.history["val_accuracy"] == [(0, pytest.approx(0.4)), (1, pytest.approx(0.6))]
    run, local = check_evaluation_run(result.run_id, cohort, model_name, atlas=False)
    for method in ("gradcam", "hirescam"):
        assert len(list((local / "volumes" / "subjects").glob(f"*_{method}.nii.gz"))) == 12


@pytest.mark.slow
def test_a_challenger_is_compared_with_the_champion_on_the_same_subjects(tracking, cohort, model_name):
    """v1 holds alias champion and was evaluated on this cohort; v2 evaluated on the same cohort
    records the comparison (metrics, evaluation.json, figure, report); on other data it does not."""
    from heimer_mlflow.metrics import paired_delong

    options = dict(n_bootstrap=200, workers=0, progress=False, experiment="champion-evals")
    champion = evaluate(f"models:/{model_name}@champion", cohort, **options)
    challenger_version = register_tiny_model(model_name, seed=5)
    challenger = evaluate(f"models:/{model_name}/{challenger_version}", cohort, **options)
    comparison = challenger.comparison
    assert comparison.champion_version == "1" and comparison.champion_run_id == champion.run_id
    assert comparison.n_shared == 12 and comparison.champion_verdict == champion.verdict
    # the numbers, recomputed from both runs' predictions.csv
    local = {e.run_id: pd.read_csv(mlflow.artifacts.download_artifacts(run_id=e.run_id, artifact_path="predictions.csv"))
             for e in (champion, challenger)}
    mine, theirs = (local[e.run_id].set_index("subject_id").sort_index() for e in (challenger, champion))
    y = (mine["label"] == "AD").to_numpy(int)
    expected, p_value = paired_delong(y, mine["prob_AD"].to_numpy(), theirs["prob_AD"].to_numpy())
    logged = mlflow.get_run(challenger.run_id).data.metrics
    assert logged["vs_champion_roc_auc_diff"] == pytest.approx(expected.value)
    assert expected.value == pytest.approx(skm.roc_auc_score(y, mine["prob_AD"]) - skm.roc_auc_score(y, theirs["prob_AD"]))
    assert logged["vs_champion_roc_auc_diff_ci_lower"] == pytest.approx(expected.lower)
    assert logged["vs_champion_roc_auc_diff_ci_upper"] == pytest.approx(expected.upper)
    assert logged["vs_champion_delong_p"] == pytest.approx(p_value)
    local_run = Path(mlflow.artifacts.download_artifacts(run_id=challenger.run_id))
    record = json.loads((local_run / "evaluation.json").read_text())
    assert record["comparison"]["champion_version"] == "1" and record["comparison"]["delong_p"] == pytest.approx(p_value)
    assert matplotlib.image.imread(local_run / "figures" / "champion_comparison.png").shape[1] > 400
    text = pdf_text(next((local_run / "report").glob("*.pdf")))
    assert "champion is version 1" in text and "DeLong" in text
    # the champion itself, and an evaluation on other subjects, compare with nothing
    assert champion.comparison is None
    manifest = pd.read_csv(cohort / "manifest.csv").iloc[:8]
    manifest["path"] = [str(cohort / p) for p in manifest["path"]]
    other = evaluate(f"models:/{model_name}/{challenger_version}", manifest, **options)
    assert other.comparison is None and "vs_champion_roc_auc_diff" not in mlflow.get_run(other.run_id).data.metrics


@pytest.mark.parametrize(
    "args, match",
    [
        (["models:/no-such-model/1"], "no-such-model"),
        (["models:/tiny-eval/1", "--target-layer", "features.9"], "features.9"),
        (["models:/tiny-eval/1", "--threshold", "1.5"], "threshold=1.5"),
        (["models:/tiny-eval/1", "--brain-mask", "no-such-mask.nii.gz"], "brain mask no-such-mask.nii.gz"),
    ],
)
@pytest.mark.slow
def test_evaluate_user_errors_are_one_line(tracking, cohort, model_name, args, match):
    done = run_heimer(tracking, "-q", "evaluate", *args, "--data", str(cohort))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], done.stderr[-2000:]


@pytest.mark.slow
def test_a_unique_key_refusal_of_the_dataset_insert_is_retried_and_linked(tracking, cohort, model_name, monkeypatch):
    """Two evaluations of the same manifest at once may race on the dataset's unique key: the store
    refuses the slower one's insert. That refusal is simulated here (a sqlite store; the error text is
    a PostgreSQL server's wording, one of those tracking._DUPLICATE_KEY recognises), not produced on a
    real server: the race is one of timing and cannot be provoked on demand. What is tested is the
    answer: the input is logged again, found, linked once. Any other store error still fails."""
    from mlflow.exceptions import MlflowException

    from heimer_mlflow import tracking as heimer_tracking

    real, calls = mlflow.log_input, []
    duplicate = ('BAD_REQUEST: (psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint '
                 '"dataset_pk"')  # fmt: skip

    def collides_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise MlflowException(duplicate)
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow, "log_input", collides_once)
    result = evaluate(f"models:/{model_name}/1", cohort, n_bootstrap=50, workers=0, progress=False, experiment="py-evals")
    assert len(calls) == 2
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED" and len(run.inputs.dataset_inputs) == 1

    def refuses(*args, **kwargs):
        raise MlflowException("INVALID_PARAMETER_VALUE: dataset too large")

    monkeypatch.setattr(mlflow, "log_input", refuses)
    with pytest.raises(MlflowException, match="too large"):
        heimer_tracking.log_input(object(), None)


@pytest.mark.slow
def test_a_given_brain_mask_is_the_brain_for_every_subject(tracking, cohort, model_name, tmp_path):
    """--brain-mask: each subject's outside-brain share is its saved CAM outside that mask; a
    mask on another grid stops before the run, in one line."""
    mask_path = cohort / "atlas" / "brain_mask.nii.gz"
    result = evaluate(f"models:/{model_name}/1", cohort, n_bootstrap=50, workers=0, progress=False, save_cams="all",
                      brain_mask=str(mask_path), experiment="py-evals")  # fmt: skip
    run, local = check_evaluation_run(result.run_id, cohort, model_name, atlas=False)
    assert run.data.params["heimer.brain_mask"] == str(mask_path)
    outside = ~(nib.load(mask_path).get_fdata() > 0)
    predictions = pd.read_csv(local / "predictions.csv", dtype={"subject_id": str}).set_index("subject_id")
    for method in ("gradcam", "hirescam"):
        shares = {}
        for path in (local / "volumes" / "subjects").glob(f"*_{method}.nii.gz"):
            cam = nib.load(path).get_fdata()
            shares[path.name[: -len(f"_{method}.nii.gz")]] = (cam * outside).sum() / cam.sum()
        assert len(shares) == 12
        for subject_id, share in shares.items():
            got = predictions.loc[subject_id, f"{method}_outside_brain_fraction"]
            assert got == pytest.approx(share, rel=1e-4, abs=1e-6), method
    # HiResCAM is the primary map by default
    primary = predictions["cam_outside_brain_fraction"]
    np.testing.assert_array_equal(primary, predictions["hirescam_outside_brain_fraction"])
    # not what each scan's own non-background mask gives
    default = evaluate(f"models:/{model_name}/1", cohort, n_bootstrap=50, workers=0, progress=False,
                       experiment="py-evals")  # fmt: skip
    assert not np.allclose(default.engine.subjects["cam_outside_brain_fraction"],
                           result.engine.subjects["cam_outside_brain_fraction"])  # fmt: skip

    image = nib.load(mask_path)
    small = tmp_path / "small_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), image.affine), small)
    done = run_heimer(tracking, "-q", "evaluate", f"models:/{model_name}/1", "--data", str(cohort),
                      "--brain-mask", str(small))  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "resample the brain mask" in lines[0], done.stderr[-2000:]


@pytest.mark.parametrize(
    "outside, floor, verdict",
    [(0.20, 0.15, "pass"), (0.26, 0.15, "review"), (0.08, None, "pass"), (0.12, None, "review"),
     (0.12, float("nan"), "review")],
)
def test_outside_brain_limit_is_the_resolution_floor_plus_ten_points(outside, floor, verdict):
    from heimer_mlflow.evaluation import plausibility_verdict

    numbers = {"cam_outside_brain_fraction": outside, "cam_roi_gain_hippocampus": 1.5}
    if floor is not None:
        numbers["cam_outside_brain_floor"] = floor
    got, reason = plausibility_verdict(numbers, ["hippocampus"])
    assert got == verdict, reason
    assert ("outside the brain (limit" in reason) == (verdict == "review") and "nan" not in reason


@pytest.mark.slow
def test_an_experiment_created_by_a_concurrent_evaluation_gets_the_run(tracking, cohort, model_name, monkeypatch):
    """The loser of the experiment-creation race: MLflow's set_experiment then returns the
    experiment without making it active; the run must still land in it, not in Default."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    real = TrackingServiceClient.create_experiment

    def created_by_the_other_one(self, name, *args, **kwargs):
        real(self, name, *args, **kwargs)  # the other evaluation wins ...
        raise MlflowException(f"Experiment(name={name}) already exists.", error_code=RESOURCE_ALREADY_EXISTS)

    monkeypatch.setattr(TrackingServiceClient, "create_experiment", created_by_the_other_one)
    result = evaluate(f"models:/{model_name}/1", cohort, n_bootstrap=50, workers=0, progress=False,
                      experiment="raced-experiment")  # fmt: skip
    client = mlflow.MlflowClient()
    assert client.get_run(result.run_id).info.experiment_id == client.get_experiment_by_name("raced-experiment").experiment_id


def test_records_go_where_they_are_asked_to_and_nowhere_else(tracking, tmp_path, recwarn):
    """An evaluation's new run goes to its experiment without changing the caller's active one
    (a training run started after an evaluation lands where the caller put it, as the demo's
    challenger must); an experiment named for a run that is already open elsewhere (`mlflow run`,
    mlflow.models.evaluate, the caller's run) stops in one line before anything is logged. And no
    MLflow UserWarning a user cannot act on (the data set's source, integer columns) is shown."""
    from heimer_mlflow.errors import HeimerError

    from .helpers.cohorts import good_rows, write_manifest
    from .helpers.models import TinyCNN
    from .helpers.tracking import experiment_runs, new_version

    rows = [{**row, "age": 70 + i} for i, row in enumerate(good_rows(tmp_path))]  # an integer covariate
    manifest = write_manifest(tmp_path, rows, columns=("path", "label", "subject_id", "age"))
    version = new_version("records-here", TinyCNN(), intensity="zscore")
    options = dict(n_bootstrap=50, workers=0, progress=False)
    training = mlflow.set_experiment("records-training")
    result = evaluate(f"models:/records-here/{version}", manifest, experiment="records-evaluations", **options)
    client = mlflow.MlflowClient()
    assert client.get_experiment(client.get_run(result.run_id).info.experiment_id).name == "records-evaluations"
    with mlflow.start_run(run_name="train-next") as run:
        pass
    assert run.info.experiment_id == training.experiment_id
    hints = [str(w.message)[:80] for w in recwarn if issubclass(w.category, UserWarning) and "mlflow" in w.filename]
    assert hints == []

    with mlflow.start_run(run_name="mine") as mine:
        with pytest.raises(HeimerError, match=r"--experiment 'elsewhere': this evaluation logs into run .*"
                                              r"already open in experiment 'records-training'"):  # fmt: skip
            evaluate(f"models:/records-here/{version}", manifest, experiment="elsewhere", **options)
    assert experiment_runs("elsewhere") == []
    assert not {k for k in client.get_run(mine.info.run_id).data.tags if k.startswith("heimer.")}
