"""One evaluation's MLflow run: opened before any compute and closed truthfully
(``evaluation_run``), the results logged to it (metrics linked to the logged model and the data
set, the manifest as a data set input, the staged artifacts: ``log_results``) and, last, the tags
on the model version, so a version is never tagged with an evaluation that did not finish."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import mlflow

from . import interrupts
from .errors import HeimerError, one_line

VERSION_TAGS = ("roc_auc", "sensitivity", "specificity", "cam_outside_brain_fraction")


def check_reachable(timeout_s: float = 5.0) -> None:
    """Fail before any compute when the tracking store cannot be reached.

    An HTTP server is asked for ``/health`` once, with a short timeout: MLflow's own client
    retries for minutes (right for a server restarting mid-run, wrong for a typo in the URI).
    """
    import requests

    uri = mlflow.get_tracking_uri()
    fix = "start the server or set MLFLOW_TRACKING_URI"
    if uri.startswith(("http://", "https://")):
        try:
            requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
        except requests.RequestException as e:
            reason = "connection refused" if isinstance(e, requests.ConnectionError) else type(e).__name__
            raise HeimerError(f"the MLflow tracking server {uri} cannot be reached ({reason}); {fix}") from None
    try:
        mlflow.MlflowClient().search_experiments(max_results=1)
    except Exception as e:
        first = one_line(e, 200, with_type=False)
        raise HeimerError(f"the MLflow tracking store {uri} cannot be reached ({first}); {fix}") from None


def dataset(evaluation):
    """The evaluated cohort as an MLflow data set (its digest identifies the data)."""
    table = evaluation.cohort.table
    frame = table[["subject_id", "path", "label_name", *evaluation.cohort.covariates]].rename(columns={"label_name": "label"})
    name = Path(evaluation.cohort.source).parent.name or "cohort"
    return mlflow.data.from_pandas(frame, source=evaluation.cohort.source, name=name, targets="label")


class EvaluationRun:
    """The MLflow run of one evaluation while it computes (see :func:`evaluation_run`)."""

    def __init__(self, run, owned: bool, model, options):
        self.run_id, self.artifact_uri, self.owned = run.info.run_id, run.info.artifact_uri, owned
        self.model_name, self.model_version = model.name, model.version
        self.version_tags: dict[str, str] = {}  # set by log_results; written only once the run FINISHED
        self.gate = options.gate()  # promotion rules, judged once the run FINISHED
        self.judged: tuple[dict, str, str, dict] | None = None  # (metrics, verdict, reason, not computable)
        self.gate_result = None
        self.evaluation = None  # set by prepare_version_tags: the version's description summary is built from it


@contextlib.contextmanager
def evaluation_run(model, options, device: str, *, run_id: str | None = None):
    """Open the evaluation's run before any compute and close it truthfully.

    The run is RUNNING (tag ``heimer.status=running``) while the engine works; it ends FINISHED
    when everything was logged, FAILED with the one-line error in ``heimer.error``, or KILLED on
    Ctrl-C / SIGTERM. Only after FINISHED does the model version get its tags (and a signal
    cannot cut that in half), so a version never claims an evaluation that did not finish. A
    run that `mlflow run` or the caller started is logged into; its owner ends it.
    """
    handle = None
    try:
        # Opened and described in one piece: a signal now would leave a RUNNING run that
        # MLflow's exit hook then marks FINISHED.
        with interrupts.deferred():
            run, owned = _open_run(model, options, run_id)
            handle = EvaluationRun(run, owned, model, options)
            _describe(handle, model, options, device)
        yield handle
        interrupts.raise_if_swallowed()
    except BaseException as e:
        if handle is not None:
            killed = isinstance(e, KeyboardInterrupt) or interrupts.received() is not None
            _close(handle, "KILLED" if killed else "FAILED", _one_line(e))
        raise
    client = mlflow.MlflowClient()
    with interrupts.deferred():
        _close(handle, "FINISHED")
        version_tags = dict(handle.version_tags)
        if handle.gate and handle.judged is not None:
            handle.gate_result = handle.gate.judge(*handle.judged)
            for key, value in handle.gate_result.tags().items():
                client.set_tag(handle.run_id, key, value)
            version_tags["heimer.gate"] = handle.gate_result.status
        if handle.model_name and handle.model_version and version_tags:
            for key, value in version_tags.items():
                client.set_model_version_tag(handle.model_name, handle.model_version, key, value)
            _write_summary(client, handle)


def _write_summary(client, handle: EvaluationRun) -> None:
    """The Markdown summary in the version's description (heimer_mlflow.summary), after the tags."""
    from . import summary

    if handle.evaluation is None:
        return
    gate = handle.gate_result.status if handle.gate_result is not None else None
    try:
        block = summary.from_evaluation(handle.evaluation, gate=gate)
    except Exception as error:  # noqa: BLE001 - the run and the tags are written; say what is missing
        summary.log.warning("the evaluation summary for %s version %s could not be built (%s)",
                            handle.model_name, handle.model_version, one_line(error, 300))
        return
    summary.write(client, handle.model_name, handle.model_version, block)


def _describe(handle: EvaluationRun, model, options, device: str) -> None:
    client = mlflow.MlflowClient()
    for key, value in {"heimer.model_uri": model.uri, "heimer.model_name": model.name or "",
                       "heimer.model_version": model.version or "", "heimer.status": "running"}.items():
        client.set_tag(handle.run_id, key, value)
    # Resolved values, prefixed: `mlflow run` has already logged the raw entry-point parameters.
    for key, value in {"threshold": options.threshold, "target_layer": model.meta.target_layer,
                       "batch_size": options.batch_size, "device": device, "save_cams": options.save_cams,
                       "skip_bad": options.skip_bad, "n_bootstrap": options.n_bootstrap,
                       "brain_mask": options.brain_mask or "non-background voxels",
                       "processes": int(os.environ.get("WORLD_SIZE") or 1)}.items():
        client.log_param(handle.run_id, f"heimer.{key}", value)
    from .atlas import named_atlas

    if (atlas := named_atlas(options.atlas)) is not None:  # its terms travel with the run
        client.log_param(handle.run_id, "heimer.atlas", atlas.name)
        client.log_param(handle.run_id, "heimer.atlas_licence", atlas.licence)


def _open_run(model, options, run_id: str | None):
    """(run, owned): the active run, a given run, the run `mlflow run` created, or a new one."""
    active = mlflow.active_run()
    if active is not None and run_id in (None, active.info.run_id):
        return active, False  # `mlflow run`, mlflow.models.evaluate or the caller started it
    if run_id is not None:
        # start_run(run_id) refuses a run outside the active experiment: make its experiment active
        mlflow.set_experiment(experiment_id=mlflow.get_run(run_id).info.experiment_id)
        return mlflow.start_run(run_id=run_id), True
    if os.environ.get("MLFLOW_RUN_ID"):
        return mlflow.start_run(), True  # resumes the run `mlflow run` created for this entry point
    _set_experiment(options.experiment)
    name = f"evaluate {model.name} v{model.version}" if model.version else f"evaluate {model.uri}"
    return mlflow.start_run(run_name=name), True


def _set_experiment(name: str) -> None:
    """``mlflow.set_experiment``, safe when another evaluation creates the same experiment at
    the same moment. The loser of that race either sees RESOURCE_ALREADY_EXISTS, or (MLflow
    3.17's fluent API) gets the experiment back *without* it being made active, so its run
    would land in the Default experiment (seen in tests/test_server.py): hence the second call,
    by id, which activates it."""
    from mlflow.exceptions import MlflowException

    try:
        experiment = mlflow.set_experiment(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(e).lower():
            raise
        experiment = mlflow.set_experiment(name)
    mlflow.set_experiment(experiment_id=experiment.experiment_id)


# How the stores word a unique-key violation (sqlite, PostgreSQL, MySQL)
_DUPLICATE_KEY = ("unique constraint", "duplicate key", "uniqueviolation", "duplicate entry")


def _log_input(dataset, linked_model, attempts: int = 3) -> None:
    """``mlflow.log_input``, again when another evaluation logged the same manifest at the same
    moment: the store looks the dataset up and inserts it in two steps, so the slower of two runs
    can hit the dataset's unique key; the insert was rolled back, and on the next try the
    dataset is found and only linked."""
    from mlflow.exceptions import MlflowException

    for attempt in range(1, attempts + 1):
        try:
            mlflow.log_input(dataset, context="evaluation", model=linked_model)
            return
        except MlflowException as e:
            if attempt == attempts or not any(words in str(e).lower() for words in _DUPLICATE_KEY):
                raise
            time.sleep(0.2 * attempt)


def _one_line(error: BaseException) -> str:
    if isinstance(error, interrupts.Terminated):
        return f"terminated by {error}"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    return one_line(error)


def _close(handle: EvaluationRun, status: str, error: str | None = None) -> None:
    """End the run with ``status``; on the way out of a failure, never mask the original error
    (the tracking server may be what failed)."""
    client = mlflow.MlflowClient()
    try:
        client.set_tag(handle.run_id, "heimer.status", status.lower())
        if error:
            client.set_tag(handle.run_id, "heimer.error", error)
        if handle.owned:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == handle.run_id:
                mlflow.end_run(status)
            else:
                client.set_terminated(handle.run_id, status)
    except Exception:
        if status == "FINISHED":
            raise
        # The store could not be told (it may be what failed): forget the run locally at least.
        active = mlflow.active_run()
        if handle.owned and active is not None and active.info.run_id == handle.run_id:
            with contextlib.suppress(Exception):
                mlflow.end_run(status)


def log_results(evaluation, staging: Path, handle: EvaluationRun, logged_dataset) -> None:
    """Log the staged artifacts, the data set and the metrics to the open run, with the verdict
    as a run tag."""
    from mlflow.entities import LoggedModelInput

    model = evaluation.model
    client = mlflow.MlflowClient()
    client.set_tag(handle.run_id, "heimer.verdict", evaluation.verdict)
    linked_model = LoggedModelInput(model.model_id) if model.model_id else None
    _log_input(logged_dataset, linked_model)
    mlflow.log_metrics(evaluation.run_metrics, model_id=model.model_id, dataset=logged_dataset)
    mlflow.log_artifacts(str(staging))


def prepare_version_tags(evaluation, handle: EvaluationRun) -> None:
    """The model version's tags and the gate's inputs, written and judged once the run FINISHED."""
    flat = evaluation.run_metrics
    handle.version_tags = version_tags(evaluation, flat)
    handle.evaluation = evaluation
    handle.judged = (flat, evaluation.verdict, evaluation.verdict_reason, dict(evaluation.not_computable()))


def version_tags(evaluation, flat: dict) -> dict[str, str]:
    """The model version's ``heimer.*`` tags: the verdict, key figures and where to read more."""
    tags = {"heimer.evaluation_run_id": evaluation.run_id, "heimer.verdict": evaluation.verdict,
            "heimer.verdict_reason": evaluation.verdict_reason[:5000]}
    for key in VERSION_TAGS:
        if key in flat:
            tags[f"heimer.{key}"] = f"{flat[key]:.4f}"
    if "report" in evaluation.artifacts:
        tags["heimer.report"] = evaluation.artifacts["report"]
    return tags
