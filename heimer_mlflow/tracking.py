"""One evaluation's MLflow run: opened before any compute and closed truthfully
(``evaluation_run``), the results logged to it (metrics linked to the logged model and the data
set, the manifest as a data set input, the staged artifacts: ``log_results``) and, last, the tags
on the model version, so a version is never tagged with an evaluation that did not finish."""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path

import mlflow
import requests
from mlflow.entities import LoggedModelInput
from mlflow.exceptions import MlflowException

from . import interrupts
from .errors import HeimerError, one_line

VERSION_TAGS = ("roc_auc", "sensitivity", "specificity", "cam_outside_brain_fraction")


def check_reachable(timeout_s: float = 5.0) -> None:
    """Fail before any compute when the tracking store cannot be reached.

    An HTTP server is asked for ``/health`` once, with a short timeout: MLflow's own client
    retries for minutes (right for a server restarting mid-run, wrong for a typo in the URI).
    """
    from .permissions import redacted

    uri = redacted(mlflow.get_tracking_uri())
    fix = "start the server or set MLFLOW_TRACKING_URI"
    if uri.startswith(("http://", "https://")):
        try:
            requests.get(mlflow.get_tracking_uri().rstrip("/") + "/health", timeout=timeout_s)
        except requests.RequestException as e:
            reason = "connection refused" if isinstance(e, requests.ConnectionError) else type(e).__name__
            raise HeimerError(f"the MLflow tracking server {uri} cannot be reached ({reason}); {fix}") from None
    try:
        mlflow.MlflowClient().search_experiments(max_results=1)
    except Exception as e:
        first = one_line(e, 200, with_type=False)
        raise HeimerError(f"the MLflow tracking store {uri} cannot be reached ({first}); {fix}") from None


def lost_server(error: BaseException) -> str | None:
    """The line to print when ``error`` is the tracking server no longer answering mid-run (its
    connections refused or reset, or 5xx answers, after MLflow's own retries); None otherwise.

    MLflow raises these as ``MlflowException("API request to ... failed with exception ...")``
    with the ``requests`` error only as its implicit context, so the chain is walked."""
    from .permissions import redacted

    seen: BaseException | None = error
    while seen is not None and not isinstance(seen, (requests.ConnectionError, requests.exceptions.RetryError)):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    kind = "it answered with server errors" if isinstance(seen, requests.exceptions.RetryError) else "connections failed"
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7 (MLflow's default)")
    return (f"the MLflow tracking server {redacted(mlflow.get_tracking_uri())} stopped answering mid-run "
            f"({kind}) and MLflow's retries ran out (MLFLOW_HTTP_REQUEST_MAX_RETRIES={retries}); the evaluation "
            f"run is marked FAILED once the server answers again (tried for {CLOSE_RETRY_S:.0f} s) and the model "
            "version is not tagged: evaluate again when the server is back")


@contextlib.contextmanager
def quiet_mlflow_hints():
    """MLflow's UserWarnings about a data set that nobody running an evaluation can act on (the
    source "can be interpreted in multiple ways", integer columns in the inferred schema), off
    while the cohort is made an MLflow data set and logged."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")
        yield


def dataset(evaluation):
    """The evaluated cohort as an MLflow data set. Its digest (MLflow's, of the subject ids, the
    resolved paths, the labels and the covariates) is the one every evaluation has logged; the
    evaluated data's content digest is the run tag ``heimer.data_digest`` (champion.content_digest)."""
    table = evaluation.cohort.table
    frame = table[["subject_id", "path", "label_name", *evaluation.cohort.covariates]].rename(columns={"label_name": "label"})
    name = Path(evaluation.cohort.source).parent.name or "cohort"
    with quiet_mlflow_hints():
        return mlflow.data.from_pandas(frame, source=evaluation.cohort.source, name=name, targets="label")


class EvaluationRun:
    """The MLflow run of one evaluation while it computes (see :func:`evaluation_run`)."""

    def __init__(self, run, owned: bool, model, options):
        self.run_id, self.artifact_uri, self.owned = run.info.run_id, run.info.artifact_uri, owned
        self.experiment_id = run.info.experiment_id
        self.model_name, self.model_version = model.name, model.version
        self.version_tags: dict[str, str] = {}  # set by prepare_version_tags; written only once the run FINISHED
        self.gate = options.gate()  # promotion rules, judged once the run FINISHED
        self.judged: tuple[dict, str, str, dict] | None = None  # (metrics, verdict, reason, not computable)
        self.gate_result = None
        self.evaluation = None  # set there too: the version's description summary is built from it
        # under `mlflow run`: the project's run, which ends with the command's exit code (FAILED when a gate
        # broke) and points at this evaluation run (tags heimer.evaluation_run_id, heimer.gate)
        self.project_run_id: str | None = None


@contextlib.contextmanager
def evaluation_run(model, options, device: str, *, run_id: str | None = None):
    """Open the evaluation's run before any compute and close it truthfully.

    The run is RUNNING (tag ``heimer.status=running``) while the engine works; it ends FINISHED
    when everything was logged, FAILED with the one-line error in ``heimer.error``, or KILLED on
    Ctrl-C / SIGTERM. Only after FINISHED does the model version get its tags (and a signal
    cannot cut that in half), so a version never claims an evaluation that did not finish. A
    run that the caller started is logged into; its owner ends it. Under `mlflow run` the
    evaluation is a run of its own under the project's run (see ``_open_run``).
    """
    handle = None
    try:
        # Opened and described in one piece: a signal now would leave a RUNNING run that
        # MLflow's exit hook then marks FINISHED.
        with interrupts.deferred():
            run, owned, project = _open_run(model, options, run_id)
            handle = EvaluationRun(run, owned, model, options)
            handle.project_run_id = project
            _tag_run(handle, model, options, device)
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
        if handle.project_run_id:  # the project's run says where the evaluation is, and the gate's outcome
            client.set_tag(handle.project_run_id, "heimer.evaluation_run_id", handle.run_id)
            for key, value in (handle.gate_result.tags() if handle.gate_result is not None else {}).items():
                client.set_tag(handle.project_run_id, key, value)


def _write_summary(client, handle: EvaluationRun) -> None:
    """The Markdown summary in the version's description (heimer_mlflow.summary), after the tags."""
    from . import summary

    if handle.evaluation is None:
        return
    try:
        block = summary.from_evaluation(handle.evaluation, gate=handle.gate_result)
    except Exception as error:  # noqa: BLE001 - the run and the tags are written; say what is missing
        summary.log.warning("the evaluation summary for %s version %s could not be built (%s)",
                            handle.model_name, handle.model_version, one_line(error, 300))
        return
    summary.write(client, handle.model_name, handle.model_version, block)


def _tag_run(handle: EvaluationRun, model, options, device: str) -> None:
    client = mlflow.MlflowClient()
    for key, value in {"heimer.model_uri": model.uri, "heimer.model_name": model.name or "",
                       "heimer.model_version": model.version or "", "heimer.status": "running"}.items():
        client.set_tag(handle.run_id, key, value)
    # Resolved values, prefixed: `mlflow run` has already logged the raw entry-point parameters.
    for key, value in {"threshold": options.threshold, "target_layer": model.meta.target_layer,
                       "batch_size": options.batch_size, "device": device, "save_cams": options.save_cams,
                       "skip_bad": options.skip_bad, "n_bootstrap": options.n_bootstrap,
                       "brain_mask": options.brain_mask or "non-background voxels",
                       "processes": int(os.environ.get("WORLD_SIZE") or 1), "lang": options.lang,
                       "serialization": model.serialization, **_contract_params(model.meta)}.items():
        client.log_param(handle.run_id, f"heimer.{key}", value)
    from .atlas import named_atlas

    if (atlas := named_atlas(options.atlas)) is not None:  # its terms travel with the run
        client.log_param(handle.run_id, "heimer.atlas", atlas.name)
        client.log_param(handle.run_id, "heimer.atlas_licence", atlas.licence)


def _contract_params(meta) -> dict:
    """The model-contract values the evaluation used, each with where it came from: ``model``
    (its metadata), ``given`` (--class-names, --positive-class, --intensity) or ``default``."""
    values = {"class_names": ",".join(meta.class_names), "positive_class": meta.positive_class,
              "intensity": meta.intensity}
    params = {}
    for key, value in values.items():
        params[key] = value
        params[f"{key}_source"] = "given" if key in meta.given else "default" if key in meta.inferred else "model"
    return params


DEFAULT_EXPERIMENT = "heimer-evaluations"


def _open_run(model, options, run_id: str | None):
    """(run, owned, project run id or None): the active run, a given run, or a new one in
    ``options.experiment`` (default heimer-evaluations). A new run is started in its experiment
    by id: the caller's active experiment stays what it was (a training run started after an
    evaluation lands where the caller put it). An experiment named explicitly for a run that
    already exists elsewhere is a user error: a run cannot move, and silence would mislead.

    Under `mlflow run` the evaluation gets a run of its own, a child of the project's run (tag
    ``mlflow.parentRunId``), in ``options.experiment`` or else the project run's experiment: the
    project run ends with the command's exit code, FAILED when a promotion gate broke (exit 3),
    while the evaluation run, which the version's tags point to, FINISHED when all was logged.
    One run for both would end FAILED after the version was tagged with it."""
    name = f"evaluate {model.name} v{model.version}" if model.version else f"evaluate {model.uri}"
    project = os.environ.get("MLFLOW_RUN_ID")
    active = mlflow.active_run()
    if active is not None and run_id in (None, active.info.run_id) and active.info.run_id != project:
        _require_experiment(active, options.experiment)
        return active, False, None  # mlflow.models.evaluate or the caller started it
    if run_id is not None:
        run = mlflow.get_run(run_id)
        _require_experiment(run, options.experiment)
        # start_run(run_id) refuses a run outside the active experiment: make its experiment active
        mlflow.set_experiment(experiment_id=run.info.experiment_id)
        return mlflow.start_run(run_id=run_id), True, None
    client = mlflow.MlflowClient()
    if project:
        experiment = (experiment_id(client, options.experiment) if options.experiment
                      else client.get_run(project).info.experiment_id)
        run = client.create_run(experiment, run_name=name, tags={"mlflow.parentRunId": project})
        return mlflow.start_run(run_id=run.info.run_id, nested=active is not None), True, project
    experiment = experiment_id(client, options.experiment or DEFAULT_EXPERIMENT)
    return mlflow.start_run(experiment_id=experiment, run_name=name), True, None


def _require_experiment(run, wanted: str | None) -> None:
    """``wanted`` (an experiment named explicitly) is the experiment of ``run``, the run the
    results must go to; else a HeimerError saying where they go and how to choose."""
    if not wanted:
        return
    actual = mlflow.MlflowClient().get_experiment(run.info.experiment_id).name
    if actual != wanted:
        raise HeimerError(
            f"--experiment {wanted!r}: this evaluation logs into run {run.info.run_id}, which is already open in "
            f"experiment {actual!r} (started by `mlflow run`, mlflow.models.evaluate or your code); choose the "
            f"experiment where that run starts instead (`mlflow run --experiment-name {wanted}`, or "
            f"mlflow.set_experiment({wanted!r}) before it), or leave the experiment out")


def experiment_id(client, name: str) -> str:
    """The id of experiment ``name``, created when absent; safe when another evaluation creates
    it at the same moment (the loser of that race reads it back). A deleted experiment of that
    name is a user error. (Unlike ``mlflow.set_experiment`` this leaves the active experiment
    alone; MLflow 3.17's fluent API could also hand back an experiment it did not make active.)"""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(e).lower():
                raise
            found = client.get_experiment_by_name(name)
    if found.lifecycle_stage == "deleted":
        raise HeimerError(f"experiment {name!r} is deleted: restore it (mlflow experiments restore --experiment-id "
                          f"{found.experiment_id}) or give another --experiment")
    return found.experiment_id


# How the stores word a unique-key violation (sqlite, PostgreSQL, MySQL)
_DUPLICATE_KEY = ("unique constraint", "duplicate key", "uniqueviolation", "duplicate entry")


def log_input(dataset, linked_model, attempts: int = 3) -> None:
    """``mlflow.log_input``, again when another evaluation logged the same manifest at the same
    moment: the store looks the dataset up and inserts it in two steps, so the slower of two runs
    can hit the dataset's unique key; the insert was rolled back, and on the next try the
    dataset is found and only linked."""
    for attempt in range(1, attempts + 1):
        try:
            mlflow.log_input(dataset, context="evaluation", model=linked_model)
            return
        except MlflowException as e:
            if attempt == attempts or not any(words in str(e).lower() for words in _DUPLICATE_KEY):
                raise
            time.sleep(0.2 * attempt)


def run_exists(run_id: str | None) -> bool:
    """Whether the evaluation goes into a run that exists already (given, active, or `mlflow run`'s)."""
    return bool(run_id or mlflow.active_run() or os.environ.get("MLFLOW_RUN_ID"))


def _one_line(error: BaseException) -> str:
    from .permissions import denied

    if (refused := denied(error)) is not None:
        return str(refused)
    if isinstance(error, interrupts.TimedOut):
        return str(error)
    if isinstance(error, interrupts.Terminated):
        return f"terminated by {error}"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    return one_line(error)


# How long a failed evaluation keeps trying to tell the server its run FAILED when the server is
# what failed (MLflow's own retries were spent on the request that broke): a run left RUNNING on
# the server would claim a live evaluation.
CLOSE_RETRY_S = 90.0


def _close(handle: EvaluationRun, status: str, error: str | None = None) -> None:
    """End the run with ``status``; on the way out of a failure, never mask the original error
    (the tracking server may be what failed: then try again for up to CLOSE_RETRY_S)."""
    client = mlflow.MlflowClient()
    deadline = time.monotonic() + CLOSE_RETRY_S
    while True:
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
            return
        except Exception:
            if status == "FINISHED":
                raise
            if time.monotonic() < deadline and handle.owned:
                time.sleep(3.0)
                continue
            # The store could not be told: forget the run locally at least.
            active = mlflow.active_run()
            if handle.owned and active is not None and active.info.run_id == handle.run_id:
                with contextlib.suppress(Exception):
                    mlflow.end_run(status)
            return


def log_results(evaluation, staging: Path, handle: EvaluationRun, logged_dataset) -> None:
    """Log the staged artifacts, the data set and the metrics to the open run, with the verdict
    as a run tag."""
    model = evaluation.model
    client = mlflow.MlflowClient()
    from .champion import DIGEST_TAG, SOURCE_TAG

    client.set_tag(handle.run_id, "heimer.verdict", evaluation.verdict)
    client.set_tag(handle.run_id, SOURCE_TAG, str(evaluation.cohort.source)[:5000])
    if evaluation.data_digest:
        client.set_tag(handle.run_id, DIGEST_TAG, evaluation.data_digest)
    model_id = model.model_id if evaluation.link_model else None  # see permissions.check
    linked_model = LoggedModelInput(model_id) if model_id else None
    with quiet_mlflow_hints():
        log_input(logged_dataset, linked_model)
        mlflow.log_metrics(evaluation.run_metrics, model_id=model_id, dataset=logged_dataset)
    mlflow.log_artifacts(str(staging))


def prepare_version_tags(evaluation, handle: EvaluationRun) -> None:
    """The model version's tags and the gate's inputs, written and judged once the run FINISHED."""
    flat = evaluation.run_metrics
    handle.version_tags = version_tags(evaluation, flat)
    if "heimer.report" in handle.version_tags:  # where a person opens it: the run's artifact viewer in the UI
        from .summary import artifact_path, artifact_route

        path = artifact_path(handle.version_tags["heimer.report"], evaluation.run_id)
        if path:
            handle.version_tags["heimer.report_page"] = artifact_route(handle.experiment_id, evaluation.run_id, path)
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
