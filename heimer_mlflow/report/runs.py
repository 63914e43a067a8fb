"""A logged evaluation run's report: download its artifacts, render, log the report to the run
and point the model version at it (``heimer-mlflow report RUN_ID``, and every evaluation's last
step)."""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .. import champion
from ..errors import HeimerError, writable_folder
from ..i18n import check_language, require_fonts
from ..record import EvaluationRecord, migrate_champion_comparison
from .context import REPORT_ARTIFACTS, read_csv, read_record
from .pdf import ReportFiles, render_report

log = logging.getLogger(__name__)


def _download(run_id: str, dst: Path, names=(*REPORT_ARTIFACTS, "figures", "viewers/viewers.json"),
              required=("evaluation.json",)):
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            folder = dst / Path(name).parent  # a file's download lands in dst_path itself: keep its folder
            folder.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(folder))
        except Exception as error:  # noqa: BLE001 - optional pieces may be absent
            if name in required:
                if _absent(run_id, name):
                    raise HeimerError(f"run {run_id} has no {name}, so it is no finished heimer-mlflow evaluation: "
                                      f"give the id of an evaluation run ({RUN_ID_HINT})") from None
                raise  # there but not readable now (the server or the network failed): not the user's doing
            log.info("run %s: no %s (%s)", run_id, name, type(error).__name__)
    return dst


def _absent(run_id: str, name: str) -> bool:
    """Whether the run's artifacts lack ``name`` (False when they cannot be listed either)."""
    try:
        return name not in {item.path for item in mlflow.MlflowClient().list_artifacts(run_id)}
    except Exception:  # noqa: BLE001 - the store is what failed: the caller's error says so
        return False


def _find_champion(client, record: EvaluationRecord, run_id: str, table, work: Path):
    """For a record from before evaluations recorded their comparison: the champion's evaluation
    (a ``champion.ChampionRun``, downloaded into ``work``) found now, or None (see
    heimer_mlflow.champion.find; such a record has no content digest, so its data set digest and
    the subjects of ``table``, its predictions.csv, decide)."""
    if table is None or not {"subject_id", "label"} <= set(table.columns):
        return None
    digests = champion.dataset_digests(client, run_id)
    key = champion.DataKey(record.cohort.data_digest, next(iter(digests)) if len(digests) == 1 else None,
                           dict(zip(table["subject_id"].astype(str), table["label"].astype(str))), record.cohort.source)
    return champion.find(client, record.model.name, record.model.version, run_id, key, work / "champion").found


def read_migrated_record(client, artifacts: Path, run_id: str, work: Path) -> EvaluationRecord:
    """The run's evaluation record as the report reads it: a record from before evaluations
    recorded their comparison with the champion gets it now, once (heimer_mlflow.record.
    migrate_champion_comparison, with the champion found in the registry now). Raises
    ``HeimerError`` (one line naming the run) for a record newer than this code."""
    record = read_record(artifacts, [], where=f"run {run_id}")
    if record.comparison_recorded:
        return record
    predictions = read_csv(artifacts / "predictions.csv", [], required=False)
    found = _find_champion(client, record, run_id, predictions, work)
    return migrate_champion_comparison(record, predictions, found)


def judge_gate(record: EvaluationRecord, run) -> dict | None:
    """The promotion gate of the evaluation (its recorded ``require`` / ``require_verdict``)
    judged on the run's logged metrics, as the evaluation judges it once the run FINISHED:
    ``{"rules": "", ...}`` without rules, None when the rules cannot be read."""
    from ..gate import Gate

    try:
        gate = Gate.parse(record.configuration.get("require") or (), record.configuration.get("require_verdict"))
    except Exception:  # noqa: BLE001 - a record with unreadable rules: say "not judged"
        return None
    if not gate:
        return {"rules": "", "status": None, "failures": []}
    result = gate.judge(dict(run.data.metrics), record.verdict.result, record.verdict.reason)
    return {"rules": result.rules, "status": result.status, "failures": list(result.failures)}


def find_champion(artifact_dir, run_id: str | None = None, work=None):
    """The champion to compare the evaluation in ``artifact_dir`` with (a ``champion.ChampionRun``
    for :func:`heimer_mlflow.record.migrate_champion_comparison`, its artifacts downloaded into
    ``work``, default a new temporary folder, kept), or None: another version of the same
    registered model with alias ``champion`` with a finished evaluation on the same data
    (heimer_mlflow.champion.find)."""
    artifact_dir = Path(artifact_dir)
    record = read_record(artifact_dir, [], where=f"run {run_id}" if run_id else str(artifact_dir))
    work = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="heimer-champion-"))
    predictions = read_csv(artifact_dir / "predictions.csv", [], required=False)
    return _find_champion(MlflowClient(), record, run_id or "", predictions, work)


RUN_ID_HINT = "the id `heimer-mlflow evaluate` printed, or the model version's tag heimer.evaluation_run_id"


def _evaluation_run(client, run_id: str):
    """The run ``run_id``; a HeimerError naming it when the store has no such run."""
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise

        from ..permissions import redacted

        raise HeimerError(f"run {run_id!r} does not exist in the tracking store {redacted(mlflow.get_tracking_uri())}: give "
                          f"the id of an evaluation run ({RUN_ID_HINT}), or set MLFLOW_TRACKING_URI to its store") from None


def report_for_run(run_id: str, *, out_dir=None, log: bool = True, tag_version: bool = True,
                   lang: str | None = None) -> ReportFiles:
    """Re-render the report of evaluation run ``run_id`` from its logged artifacts alone and
    (``log=True``) log it to the run as ``report/<name>-v<version>.pdf`` and ``report/html/``.
    With ``tag_version``, the model version's ``heimer.report`` follows, but only when the run
    FINISHED and is the version's evaluation (its ``heimer.evaluation_run_id``): a version never
    points at a run that was killed or that a newer evaluation replaced. The evaluation itself
    renders with ``tag_version=False`` while its run is still RUNNING, and writes every version
    tag once the run FINISHED. ``out_dir``: where the files go (default: a new temporary folder, kept).
    ``lang``: the report's language (en or ko; default: the evaluation's, its ``lang`` option). A
    report in another language than the evaluation's is logged beside it (``report/<name>-v<version>-ko.pdf``,
    ``report/checklist-ko.json``, ``report/html-ko/``) and the version keeps pointing at the evaluation's."""
    logger = logging.getLogger(__name__)  # (``log`` is the argument)
    if lang is not None:
        require_fonts(check_language(lang))
    client = MlflowClient()
    run = _evaluation_run(client, run_id)
    if out_dir is not None:
        writable_folder(out_dir, "--out")
    work = Path(tempfile.mkdtemp(prefix="heimer-report-"))
    try:
        artifacts = _download(run_id, work / "artifacts")
        # A record newer than this code stops here, in one line naming the run; an older one is migrated.
        record = read_migrated_record(client, artifacts, run_id, work)
        created = None
        if run.info.start_time:
            created = _dt.datetime.fromtimestamp(run.info.start_time // 1000, _dt.timezone.utc)
        target = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="heimer-report-out-"))
        evaluated_in = check_language(record.configuration.get("lang") or "en")
        lang = evaluated_in if lang is None else check_language(lang)
        files = render_report(artifacts, target, record=record, created=created, run_id=run_id,
                              gate=judge_gate(record, run), lang=lang)
        if log:
            client.log_artifact(run_id, str(files.pdf), artifact_path="report")
            client.log_artifact(run_id, str(files.checklist), artifact_path="report")
            client.log_artifacts(run_id, str(files.html_dir),
                                 artifact_path="report/html" if lang == "en" else f"report/html-{lang}")
            files.artifact_uri = f"{run.info.artifact_uri.rstrip('/')}/report/{files.pdf.name}"
            name, version = record.model.name, record.model.version
            if tag_version and lang == evaluated_in and name and version and run.info.status == "FINISHED":
                try:
                    registered = client.get_model_version(name, str(version))
                except Exception:  # noqa: BLE001 - the version (or model) was deleted: no tag
                    logger.info("model %s v%s not in the registry; not tagging", name, version)
                else:
                    if registered.tags.get("heimer.evaluation_run_id") == run_id:
                        client.set_model_version_tag(name, str(version), "heimer.report", files.artifact_uri)
        return files
    finally:
        shutil.rmtree(work, ignore_errors=True)
