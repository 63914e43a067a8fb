"""Logging one evaluation to MLflow: artifacts written to a staging folder, then one run with
metrics (linked to the logged model and the data set), the manifest as a data set input, the
artifacts, and, last, the tags on the model version, so a version is never tagged with an
evaluation that did not finish."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from importlib import metadata as package_metadata
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd

from . import __version__, champion, interrupts
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


def cam_writer(folder: Path):
    """A ``save_cams`` callback writing each subject's raw maps as NIfTI with its affine, one file per
    method: ``<subject>_gradcam.nii.gz``, ``<subject>_hirescam.nii.gz``."""
    folder.mkdir(parents=True, exist_ok=True)

    def write(subject_id: str, cams: dict[str, np.ndarray], affine: np.ndarray) -> None:
        for method, cam in cams.items():
            save_volume(cam, affine, folder / f"{safe_name(subject_id)}_{method}.nii.gz")

    return write


def safe_name(text: str) -> str:
    """A file-name-safe version of a subject id or label (ids come from user manifests)."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text)).strip("._")
    return cleaned or "subject"


def save_volume(volume: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.nan_to_num(np.asarray(volume, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))


def _versions() -> dict[str, str]:
    out = {"heimer-mlflow": __version__, "python": platform.python_version()}
    for name in ("torch", "mlflow", "numpy", "scipy", "nibabel", "scikit-learn", "matplotlib", "weasyprint", "jinja2"):
        try:
            out[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            pass
    return out


def predictions_table(evaluation) -> pd.DataFrame:
    """One row per evaluated subject: id, label, probability, prediction, loss, CAM shares,
    covariates."""
    meta, engine, cohort = evaluation.model.meta, evaluation.engine, evaluation.cohort
    s = engine.subjects
    names = np.asarray(meta.class_names, dtype=object)
    table = pd.DataFrame({
        "subject_id": s["subject_id"],
        "label": names[s["label"].astype(int)],
        f"prob_{meta.positive_class}": s["prob"].astype(float),
        "prediction": names[s["pred"].astype(int)],  # the engine's predicted class index
        "loss": s["loss"].astype(float),
        "cam_outside_brain_fraction": s["cam_outside_brain_fraction"].astype(float),
        "cam_outside_brain_floor": s["cam_outside_brain_floor"].astype(float),
        "gradcam_outside_brain_fraction": s["gradcam_outside_brain_fraction"].astype(float),
        "hirescam_outside_brain_fraction": s["hirescam_outside_brain_fraction"].astype(float),
        "cam_method_agreement": s["cam_method_agreement"].astype(float),
    })
    for region in engine.region_names:
        table[f"cam_roi_gain_{region}"] = s[f"cam_roi_gain_{region}"].astype(float)
    if cohort.covariates:
        rows = s["index"].astype(int)
        covariates = cohort.table.iloc[rows][cohort.covariates].reset_index(drop=True)
        table = pd.concat([table, covariates], axis=1)
    return table


def write_artifacts(evaluation, staging: Path, *, champion_run=None) -> dict[str, str]:
    """Everything the run keeps, written to ``staging`` (the run's artifact root). With
    ``champion_run`` (:class:`heimer_mlflow.champion.ChampionRun`), also the figure that sets
    both models' group maps side by side."""
    from .figures import render_all

    engine, affine = evaluation.engine, evaluation.grid_affine
    files = {}
    predictions_table(evaluation).to_csv(staging / "predictions.csv", index=False)
    evaluation.cohort.excluded.to_csv(staging / "exclusions.csv", index=False)
    metrics = evaluation.metrics.to_json_dict()
    metrics["plausibility"] = evaluation.summary
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=1, allow_nan=False))
    (staging / "evaluation.json").write_text(json.dumps(evaluation_record(evaluation), indent=1, allow_nan=False))
    volumes = staging / "volumes"
    positive = evaluation.model.meta.positive_class
    negative = next(c for c in evaluation.model.meta.class_names if c != positive)
    for quantity in ("cam", "input"):
        maps = engine.maps.get(quantity)
        if maps is None:
            continue
        for group in evaluation.model.meta.class_names:
            if group in maps.mean:
                save_volume(maps.mean[group][0] if maps.mean[group].ndim == 4 else maps.mean[group], affine,
                            volumes / f"{quantity}_mean_{safe_name(group)}.nii.gz")
        for name, volume in (("diff", maps.diff), ("t", maps.t)):
            save_volume(volume[0] if volume.ndim == 4 else volume, affine,
                        volumes / f"{quantity}_{name}_{safe_name(positive)}-{safe_name(negative)}.nii.gz")
    for outcome, cases in engine.gallery.items():
        for case in cases:
            name = f"{outcome}_{safe_name(case.subject_id)}"
            for method, cam in (case.cams or {engine.cam_method: case.cam}).items():
                save_volume(cam, case.affine, volumes / "gallery" / f"{name}_{method}.nii.gz")
    files.update(render_all(evaluation.metrics, engine, evaluation.history, staging / "figures", affine=affine))
    if champion_run is not None:
        files.update(_champion_figure(evaluation, champion_run, staging / "figures"))
    return files


def _champion_figure(evaluation, champion_run, folder: Path) -> dict[str, Path]:
    """figures/champion_comparison.png: the AD group's mean map of this version and of the
    champion over the cohort's mean anatomy; nothing when the champion's run lacks the volume."""
    from .meta import CAM_NAMES
    from .figures import plot_champion_comparison, save_figure

    positive = evaluation.model.meta.positive_class
    path = champion_run.volume(f"cam_mean_{safe_name(positive)}.nii.gz")
    cam = evaluation.engine.maps.get("cam")
    if path is None or cam is None or positive not in cam.mean:
        return {}
    anatomy = evaluation.engine.maps["input"].mean
    background = np.mean([v[0] if v.ndim == 4 else v for v in anatomy.values()], axis=0)
    comparison = evaluation.comparison
    figure = plot_champion_comparison(
        _volume3d(cam.mean[positive]), np.asarray(nib.load(path).dataobj, dtype=np.float32),
        affine=evaluation.grid_affine, background=background,
        labels=(f"this version (v{evaluation.model.version}), {CAM_NAMES[evaluation.engine.cam_method]}",
                f"champion (v{comparison.champion_version}), {CAM_NAMES.get(comparison.champion_cam_method, 'Grad-CAM')}"),
        group=positive,
    )  # fmt: skip
    return {"champion_comparison": save_figure(figure, folder / "champion_comparison.png")}


def _volume3d(volume) -> np.ndarray:
    volume = np.asarray(volume)
    return volume[0] if volume.ndim == 4 else volume


def evaluation_record(evaluation) -> dict:
    """evaluation.json: configuration, provenance and the engine's non-volume results, enough
    to re-render the report without the model or the data."""
    m, engine, cohort, opts = evaluation.model, evaluation.engine, evaluation.cohort, evaluation.options
    sanity = None
    if engine.sanity is not None:
        sanity = {"subject_ids": list(engine.sanity.subject_ids),
                  "spearman": [_finite(v) for v in engine.sanity.spearman], "mean": _finite(engine.sanity.mean)}
    ranking = {layer: {k: [_finite(v) for v in np.asarray(vals)[:16].tolist()] for k, vals in r.items()}
               for layer, r in engine.feature_ranking.items()}
    return {
        "model": {"uri": m.uri, "name": m.name, "version": m.version, "aliases": m.aliases,
                  "source_run_id": m.source_run_id, "model_id": m.model_id, "description": m.description,
                  "tags": m.tags, "metadata": m.meta.to_metadata(), "inferred": m.meta.inferred},
        "cohort": {"source": cohort.source, "n_subjects": int(len(engine.subjects.get("prob", []))),
                   "n_excluded": int(len(cohort.excluded)), "covariates": cohort.covariates,
                   "excluded": cohort.excluded.astype(str).to_dict("records"),
                   "counts": {str(k): int(v) for k, v in cohort.table["label_name"].value_counts().items()}},
        "configuration": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(opts).items()},
        "engine": {"device": engine.device, "amp": engine.amp, "target_layer": engine.target_layer,
                   "cam_method": engine.cam_method,
                   "feature_layers": engine.feature_layers, "region_names": engine.region_names,
                   "chunk_size": engine.chunk_size, "threshold": engine.threshold,
                   "world_size": engine.world_size,
                   "gradcam": {"target_class": m.meta.positive_class, "upsampling": "trilinear",
                               "display_normalisation": "per subject (min-max)", "statistics": "raw (unnormalised)"},
                   "sanity": sanity, "feature_ranking": ranking,
                   "gallery": {o: [{"subject_id": c.subject_id, "prob": _finite(c.prob), "label": int(c.label)}
                                   for c in cases] for o, cases in engine.gallery.items()}},
        "plausibility": {"verdict": evaluation.verdict, "reason": evaluation.verdict_reason, **evaluation.summary},
        "comparison": evaluation.comparison.to_dict() if evaluation.comparison is not None else None,
        "history": {k: [[int(s), _finite(v)] for s, v in pts] for k, pts in evaluation.history.items()},
        "grid_affine": np.asarray(evaluation.grid_affine).tolist(),
        "evaluated_at": evaluation.evaluated_at,
        "timings": {k: _finite(v) for k, v in evaluation.timings.items()},
        "versions": _versions(),
    }


def _finite(value):
    value = float(value)
    return value if np.isfinite(value) else None


def _dataset(evaluation):
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


def log_results(evaluation, staging: Path, handle: EvaluationRun, *, say=print) -> None:
    """Write the artifacts and log them, the data set, the metrics and the report to the open
    run; the model-version tags are prepared here and written when the run has FINISHED."""
    from mlflow.entities import LoggedModelInput

    from .report import report_for_run

    evaluation.run_id = handle.run_id
    model = evaluation.model
    dataset = _dataset(evaluation)
    with tempfile.TemporaryDirectory(prefix="heimer-champion-") as work:  # the champion's files, not logged
        evaluation.comparison, champion_run = champion.with_champion(evaluation, predictions_table(evaluation),
                                                                     dataset.digest, Path(work))  # fmt: skip
        if evaluation.comparison is not None:
            c = evaluation.comparison
            say(f"compared with the champion, version {c.champion_version}: AUC difference "
                f"{c.roc_auc_diff if c.roc_auc_diff is not None else float('nan'):+.3f} (DeLong p "
                f"{c.delong_p if c.delong_p is not None else float('nan'):.3g}); its verdict {c.champion_verdict}")
        figures = write_artifacts(evaluation, staging, champion_run=champion_run)
    evaluation.artifacts = artifact_uris(handle.artifact_uri, staging, figures)
    flat = evaluation.run_metrics
    client = mlflow.MlflowClient()
    client.set_tag(handle.run_id, "heimer.verdict", evaluation.verdict)
    linked_model = LoggedModelInput(model.model_id) if model.model_id else None
    _log_input(dataset, linked_model)
    mlflow.log_metrics(flat, model_id=model.model_id, dataset=dataset)
    mlflow.log_artifacts(str(staging))
    # The report is rendered from the logged artifacts, exactly as `heimer-mlflow report`
    # re-renders it later: one path, and proof that the artifacts alone suffice.
    # The version is not tagged here: the run is still RUNNING (all version tags come after FINISHED).
    with tempfile.TemporaryDirectory(prefix="heimer-report-") as rendered:  # logged to the run, then gone
        report = report_for_run(handle.run_id, out_dir=rendered, log=True, tag_version=False)
    evaluation.artifacts["report"] = f"{handle.artifact_uri}/report/{report.pdf.name}"
    handle.version_tags = version_tags(evaluation, flat)
    handle.judged = (flat, evaluation.verdict, evaluation.verdict_reason, dict(evaluation.metrics.not_computable()))
    say(f"logged the evaluation and its report to run {handle.run_id} ({mlflow.get_tracking_uri()})")


# The run's files that MLflow's artifact types describe, by name (EvaluationResult.artifacts);
# figures join them under their own names (roc, calibration, gallery_TP, ...).
NAMED_ARTIFACTS = {"metrics": "metrics.json", "evaluation": "evaluation.json", "predictions": "predictions.csv",
                   "exclusions": "exclusions.csv"}  # fmt: skip


def artifact_uris(artifact_uri: str, staging: Path, figures: dict[str, Path]) -> dict[str, str]:
    """{name: artifact URI} of what the run keeps: the named files, then every figure by its name."""
    root = artifact_uri.rstrip("/")
    uris = {name: f"{root}/{path}" for name, path in NAMED_ARTIFACTS.items() if (staging / path).exists()}
    for name, path in figures.items():
        uris.setdefault(name, f"{root}/{Path(path).relative_to(staging).as_posix()}")
    return uris


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
