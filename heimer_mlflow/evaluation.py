"""``evaluate()``: the one function every interface calls (CLI, MLproject, MLflow evaluator).

model URI -> registry.load -> cohort (read, validate) -> engine (one pass) -> metrics -> the
champion's evaluation on the same data, if any -> counterfactual region tests
(engine.counterfactual: a few subjects re-scored with regions replaced by the CN mean input) ->
the verdict -> champion comparison -> artifacts -> figures -> logged to the run (tracking) ->
report -> model-version tags once the run FINISHED. This module orchestrates; each step lives
in its own module. Compute and drawing stay apart: the engine and metrics return numbers,
figures draw them, tracking logs what both produced.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import torch

from . import champion, distributed, interrupts, interventions, permissions, tracking
from .artifacts import artifact_uris, cam_writer, predictions_table, safe_name, write_artifacts
from .atlas import atlas_for_cohort, load_brain_mask
from .cohort import Cohort, CohortProblems, read_cohort, validate
from .cohort.loader import CohortDataset, make_loader
from .engine import run_engine
from .engine.counterfactual import choose_subjects, forward_passes, run_counterfactuals
from .engine.result import EngineResult
from .engine.run import pick_device
from .errors import HeimerError
from .gate import GateFailed
from .i18n import figure_fonts, use_language
from .interventions import paired_drops, paired_sentence
from .layouts import exclusion_summary
from .meta import assumptions
from .metrics import compute_metrics
from .options import EvaluationOptions
from .permissions import Access, redacted
from .record import AtlasRecord
from .registry import LoadedModel, load, training_history
from .result import Evaluation
from .verdict import Verdict, judge, outside_brain_limit, plausibility_verdict  # noqa: F401 - names scripts import from here

# --------------------------------------------------------------------------- evaluate


def evaluate(model_uri: str, data, *, run_id: str | None = None, **options) -> Evaluation | None:
    """Evaluate a registered model version on a cohort and log everything to MLflow.

    ``data``: a CSV manifest, a folder (``ROOT/<class>/*.nii.gz`` or one holding
    ``manifest.csv``), a BIDS root, a ClinicaDL TSV (with ``caps=``) or a DataFrame with ``path``
    and ``label`` columns (see :mod:`heimer_mlflow.layouts`). ``options`` are the
    fields of :class:`EvaluationOptions`. The results go to ``run_id`` when given, else to the
    active run (the one ``mlflow run`` started), else to a new run in ``experiment``. Returns
    the :class:`Evaluation` (numbers, arrays, the run id). With promotion rules (``require``,
    ``require_verdict``; see :mod:`heimer_mlflow.gate`) they are judged once the run FINISHED:
    ``result.gate`` holds the outcome, and a broken rule raises :class:`GateFailed` (with the
    evaluation) after everything was logged.

    Under torchrun every rank evaluates its shard of the cohort and rank 0 gets the whole
    evaluation, logs it and returns it; the other ranks return None (see
    :mod:`heimer_mlflow.distributed`).
    """
    opts = EvaluationOptions(**options).check()
    started = time.perf_counter()
    ctx = distributed.from_env(opts.device)
    try:
        def prepare():
            tracking.check_reachable()
            loaded = load(model_uri, target_layer=opts.target_layer, allow_pickle=opts.allow_pickle,
                          given=opts.given_meta())
            # what the server lets this principal write, before any compute (authenticated servers)
            new_run = opts.experiment or tracking.DEFAULT_EXPERIMENT
            access = permissions.check(loaded, None if tracking.run_exists(run_id) else new_run)
            return loaded, _prepare_cohort(loaded, data, opts, ctx, access)

        # Rank 0 alone reads the registry and validates the cohort; every rank gets the same.
        loaded, prepared = distributed.from_main(prepare, ctx)
        return _evaluate(loaded, prepared, opts, run_id=run_id, started=started, ctx=ctx)
    finally:
        distributed.shutdown()


def evaluate_loaded(loaded: LoadedModel, data, opts: EvaluationOptions, *, run_id: str | None = None,
                    started: float | None = None) -> Evaluation:
    """``evaluate`` for a model already in memory (the MLflow evaluator plug-in's entry)."""
    started = time.perf_counter() if started is None else started
    return _evaluate(loaded, _prepare_cohort(loaded, data, opts, None, Access()), opts, run_id=run_id, started=started,
                     ctx=None)


@dataclass(frozen=True)
class _Prepared:
    """The validated cohort and the images on its grid that every subject shares."""

    cohort: Cohort
    atlas: tuple[np.ndarray, dict[int, str]] | None
    brain_mask: np.ndarray | None
    grid_affine: np.ndarray
    atlas_record: AtlasRecord | None  # a named atlas, for the record
    space_check: object | None  # mni.SpaceCheck: every scan must be in MNI space (named atlas)
    access: Access  # what the tracking server lets this principal write


def _prepare_cohort(loaded: LoadedModel, data, opts: EvaluationOptions, ctx, access: Access) -> _Prepared:
    """Everything a user can get wrong that the headers can show, checked before the MLflow run
    is opened: the cohort, both classes, the atlas and brain mask, the device, the options.
    ``access``: what the server lets this principal write (``permissions.check``), asked before."""
    meta = loaded.meta
    for note in loaded.notes if opts.progress else ():  # how the model was run (also in the report)
        print(f"[heimer] {note}", file=sys.stderr)
    for note in assumptions(meta):  # said even with -q: an assumption changes how the numbers are to be read
        print(f"[heimer] {note}", file=sys.stderr)
    cohort = read_cohort(data, meta.class_names, skip_bad=opts.skip_bad, settle=False, caps=opts.caps,
                         label_column=opts.label_column, label_map=opts.label_map)
    if len(cohort.excluded):  # labels that are no model class: never left out silently, -q or not
        print(f"[heimer] {exclusion_summary(cohort.excluded, cohort.source)} (listed in the run's exclusions.csv "
              "and the report)", file=sys.stderr)
    cohort = validate(cohort, meta, skip_bad=opts.skip_bad, progress=opts.progress)
    require_both_classes(cohort, meta)
    first = nib.load(cohort.table["path"].iloc[0])
    grid_shape, grid_affine = first.shape[:3], first.affine.astype(np.float64)
    if meta.input_shape is None:  # no metadata and no signature: the cohort's grid is the input
        meta.input_shape = [1, *map(int, grid_shape)]
    chosen = atlas_for_cohort(opts.atlas, opts.atlas_labels, opts.regions, grid_shape, grid_affine,
                              table=cohort.table, skip_bad=opts.skip_bad, progress=opts.progress)
    atlas = chosen.regions
    # The brain the outside-brain share uses: --brain-mask; else, for MNI-space inputs (a named
    # atlas), the template's brain; else each scan's non-background voxels (in the engine).
    brain_mask = load_brain_mask(opts.brain_mask, grid_shape, grid_affine) if opts.brain_mask else chosen.brain_mask
    if opts.brain_mask and chosen.record is not None:
        chosen.record.brain_mask = f"--brain-mask {opts.brain_mask}"
    opts.gate().check_names(sorted(atlas[1].values()) if atlas else ())  # a rule on an unknown metric
    if ctx is None:
        pick_device(opts.device)  # an unavailable device is a user error, before the run opens
    elif opts.save_cams == "all":
        raise HeimerError("--save-cams all is not available under torchrun (each rank would write its own "
                          "share of the volumes): use --save-cams gallery, or run one process")
    return _Prepared(cohort, atlas, brain_mask, grid_affine, chosen.record, chosen.space_check, access)


def _evaluate(loaded, prepared: _Prepared, opts, *, run_id, started, ctx) -> Evaluation | None:
    """Open the run (rank 0), run the engine (every rank, its shard), conclude (rank 0).

    From the moment the run is open it tells the truth: FINISHED, FAILED with the reason (also
    when another rank failed), KILLED on Ctrl-C/SIGTERM. Everything a reader sees (the verdict's
    reason, the figures, the report, the version's description) speaks ``opts.lang``.
    """
    with use_language(opts.lang):
        return _evaluate_in_language(loaded, prepared, opts, run_id=run_id, started=started, ctx=ctx)


def _evaluate_in_language(loaded, prepared: _Prepared, opts, *, run_id, started, ctx) -> Evaluation | None:
    cohort = prepared.cohort
    main = ctx is None or ctx.is_main
    say = (lambda msg: print(f"[heimer] {msg}", file=sys.stderr)) if opts.progress and main else (lambda msg: None)
    device = ctx.device if ctx is not None else str(pick_device(opts.device))
    excluded = f" ({len(cohort.excluded)} left out)" if len(cohort.excluded) else ""
    ranks = f" across {ctx.world_size} processes ({ctx.backend})" if ctx is not None else ""
    people = cohort.table["participant_id"].nunique() if "participant_id" in cohort.table.columns else len(cohort)
    scans = f"{len(cohort)} scans of {people} participants" if people < len(cohort) else f"{len(cohort)} subjects"
    say(f"evaluating {loaded.name or loaded.uri} v{loaded.version or '-'} on {scans} "
        f"from {cohort.source}{excluded}{ranks}")
    with contextlib.ExitStack() as stack:
        staging = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="heimer-eval-")))
        with distributed.guard(ctx):  # if rank 0 cannot open the run, no rank starts computing
            handle = stack.enter_context(tracking.evaluation_run(loaded, opts, device, run_id=run_id)) if main else None
        if handle is not None:
            say(f"run {handle.run_id} is open ({redacted(tracking.mlflow.get_tracking_uri())})")
        if prepared.access.note and main:  # never silently: said even with -q
            print(f"[heimer] {prepared.access.note}", file=sys.stderr)
        t0 = time.perf_counter()
        with distributed.guard(ctx):
            engine = _run_engine(loaded, prepared, opts, staging, device, ctx)
        engine = distributed.merge(engine, ctx)
        if not main:
            return None
        result = _conclude(loaded, cohort, engine, prepared.grid_affine, opts, time.perf_counter() - t0)
        result.atlas = prepared.atlas_record
        result.link_model = prepared.access.link_model
        champion_run, dataset, champion_cf = _champion(result, handle, stack, say)
        _counterfactuals(result, prepared, opts, device, say, prefer=champion_cf)
        _judge(result)
        interrupts.raise_if_swallowed()  # before the figures and the report, the longest steps after the engine
        _log(result, staging, handle, say, champion_run, dataset, champion_cf)
    result.timings["total_s"] = time.perf_counter() - started
    result.gate = handle.gate_result
    say(f"verdict: {result.verdict} ({result.verdict_reason}); run {result.run_id}")
    if result.gate is not None:
        say(f"gate {result.gate.summary()}")
        if not result.gate.passed:
            raise GateFailed(result, result.gate)
    return result


def _run_engine(loaded, prepared: _Prepared, opts, staging: Path, device: str, ctx) -> EngineResult:
    """This process's engine pass: the whole cohort, or under torchrun its rank's shard."""
    meta = loaded.meta
    cam_dir = staging / "volumes" / "subjects" if opts.save_cams == "all" else None
    dataset = CohortDataset(prepared.cohort, meta, space_check=prepared.space_check)
    if ctx is not None:
        dataset = torch.utils.data.Subset(dataset, distributed.shard(len(dataset), ctx))
    return run_engine(
        loaded.module,
        make_loader(dataset, batch_size=opts.batch_size, workers=opts.workers, device=device,
                    processes_per_node=distributed.local_world_size(ctx)),
        meta,
        device=device,
        feature_layers=tuple(opts.feature_layers),
        atlas=prepared.atlas,
        brain_mask=prepared.brain_mask,
        gallery_k=opts.gallery_k if opts.save_cams != "none" else 0,
        sanity_subjects=opts.sanity_subjects,
        save_cams=cam_writer(cam_dir) if cam_dir else None,
        amp=opts.amp,
        threshold=opts.threshold,
        progress=opts.progress and (ctx is None or ctx.is_main),
        seed=opts.seed,
        stop_on_problem=not opts.skip_bad,
        should_stop=ctx.peer_failed if ctx is not None else None,
        cam=opts.cam,
        keep_positive_maps=opts.counterfactual_subjects > 0,
    )


def _counterfactuals(result: Evaluation, prepared: _Prepared, opts: EvaluationOptions, device: str, say,
                     prefer: pd.DataFrame | None = None) -> None:
    """The counterfactual region tests (``engine.counterfactual``) after the one pass, on rank 0:
    up to ``counterfactual_subjects`` subjects called positive, read again, re-scored with each
    region replaced by the negative class's mean input; summarised with intervals. ``prefer``: the
    champion's counterfactuals.csv, whose subjects come first when this model calls them positive
    (so the two versions' drops pair on the same subjects)."""
    meta, engine, cohort = result.model.meta, result.engine, result.cohort
    negative, positive = meta.negative_class, meta.positive_class
    regions = {} if prepared.atlas is None else {name: np.asarray(prepared.atlas[0]) == label
                                                 for label, name in sorted(prepared.atlas[1].items())}
    n = opts.counterfactual_subjects
    common = {"n_requested": n, "region_names": list(regions), "negative": negative, "positive": positive}
    inputs = engine.maps.get("input")
    subjects = engine.subjects
    called = subjects["pred"].astype(int) == meta.positive_index
    preferred = []
    if prefer is not None:
        wanted = set(prefer["subject_id"].astype(str))
        preferred = [i for i, sid in enumerate(subjects["subject_id"].astype(str)) if sid in wanted]
    rows = choose_subjects(subjects["prob"].astype(float), called, n, preferred=preferred)
    if n == 0:
        result.counterfactual = interventions.not_computed(
            interventions.OFF, "the counterfactual tests were turned off (--counterfactual-subjects 0)", **common)
        return
    if inputs is None or negative not in inputs.mean:
        result.counterfactual = interventions.not_computed(
            interventions.NOT_COMPUTABLE, f"no {negative} subject was evaluated: the replaced regions take the "
            f"{negative} subjects' mean input", **common)
        return
    if not len(rows):
        result.counterfactual = interventions.not_computed(
            interventions.NOT_COMPUTABLE, f"the model called nobody {positive} at threshold {opts.threshold:g}: the "
            f"tests re-score subjects called {positive}", **common)
        return
    cohort_rows = subjects["index"][rows].astype(int)
    say(f"counterfactual tests: {len(rows)} subjects called {positive} x {len(regions) + 10} interventions = "
        f"{forward_passes(len(rows), len(regions))} forward passes")
    dataset = torch.utils.data.Subset(CohortDataset(cohort, meta), [int(r) for r in cohort_rows])
    counterfactual = run_counterfactuals(
        result.model.module.to(device),
        make_loader(dataset, batch_size=opts.batch_size, workers=opts.workers, device=device),
        layer_maps=engine.positive_maps, prob_before=dict(zip(cohort_rows.tolist(), subjects["prob"][rows].astype(float))),
        replacement=inputs.mean[negative], positive=meta.positive_index, regions=regions,
        brain_mask=prepared.brain_mask, device=device, amp=opts.amp, batch_size=opts.batch_size, seed=opts.seed,
    )
    ids = [c for c in ("participant_id", "session_id") if c in cohort.table.columns]
    table_ids = cohort.table.iloc[cohort_rows][ids].reset_index(drop=True) if ids else None
    result.counterfactual_result = counterfactual
    result.counterfactual_table = interventions.counterfactual_table(counterfactual, table_ids)
    result.counterfactual = interventions.summarise(
        counterfactual, clusters=cohort.participants(cohort_rows), n_bootstrap=opts.n_bootstrap, seed=opts.seed,
        region_reason=None if regions else "no atlas: give --atlas to test regions", n_requested=n,
        negative=negative, positive=positive)
    result.timings["counterfactual_s"] = counterfactual.seconds


def _judge(result: Evaluation) -> None:
    """The verdict from the plausibility numbers and the counterfactual tests."""
    result.verdict_applied = judge(result.plausibility, result.engine.region_names, result.engine.cam_method,
                                   counterfactual=result.counterfactual)


def _conclude(loaded, cohort, engine: EngineResult, grid_affine, opts, engine_s: float) -> Evaluation:
    """Exclusions, metrics, training history and the verdict from the (merged) engine result."""
    meta = loaded.meta
    cohort = _exclude_unreadable(cohort, engine, opts.skip_bad)
    if len(engine.subjects.get("prob", [])) == 0:
        raise HeimerError(f"no subject of {cohort.source} could be evaluated")
    require_both_classes(_evaluated(cohort, engine), meta)
    broken = ~np.isfinite(engine.subjects["prob"].astype(float))
    if broken.any():
        ids = ", ".join(map(str, engine.subjects["subject_id"][broken][:20]))
        raise HeimerError(f"the model's output is NaN or infinite for {int(broken.sum())} subject(s) ({ids}); "
                          "check the model (weights, normalisation layers) and these volumes")
    rows = engine.subjects["index"].astype(int)
    y_true = (engine.subjects["label"].astype(int) == meta.positive_index).astype(int)
    covariates = cohort.table.iloc[rows][cohort.covariates].reset_index(drop=True) if cohort.covariates else None
    t0 = time.perf_counter()
    report = compute_metrics(y_true, engine.subjects["prob"].astype(float), threshold=opts.threshold,
                             covariates=covariates, n_bootstrap=opts.n_bootstrap, seed=opts.seed,
                             class_names=(meta.negative_class, meta.positive_class), clusters=cohort.participants(rows))
    metrics_s = time.perf_counter() - t0
    history = training_history(loaded.source_run_id, opts.history_metrics)
    result = Evaluation(
        model=loaded, cohort=cohort, engine=engine, metrics=report, history=history,
        options=opts, grid_affine=grid_affine,
    )
    result.timings = {"engine_s": engine_s, "metrics_s": metrics_s, **engine.timings}
    return result


def _champion(result: Evaluation, handle, stack, say):
    """(the champion's evaluation on the same data or None, the logged data set, the champion's
    counterfactuals.csv or None): compared with before the counterfactual pass, which then re-scores
    the champion's subjects first. Its files live in a temporary folder of ``stack``."""
    result.run_id = handle.run_id
    dataset = tracking.dataset(result)
    predictions = predictions_table(result)
    key = champion.data_key(result, predictions, dataset.digest)
    result.data_digest = key.digest
    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="heimer-champion-")))  # not logged
    result.comparison, champion_run, search = champion.with_champion(result, predictions, key, work)
    if search.why and search.champion_version:  # a champion exists, and nothing to compare with: say so, -q or not
        result.comparison_note = search.why
        print(f"[heimer] no comparison with the champion: {search.why}", file=sys.stderr)
    if result.comparison is not None:
        c = result.comparison
        say(f"compared with the champion, version {c.champion_version}: AUC difference "
            f"{c.roc_auc_diff if c.roc_auc_diff is not None else float('nan'):+.3f} (DeLong p "
            f"{c.delong_p if c.delong_p is not None else float('nan'):.3g}); its verdict {c.champion_verdict}")
    return champion_run, dataset, _champion_counterfactuals(champion_run)


def _champion_counterfactuals(champion_run) -> pd.DataFrame | None:
    """The champion evaluation's counterfactuals.csv; None when it has none (made before the tests,
    or with them turned off)."""
    if champion_run is None:
        return None
    try:
        path = mlflow.artifacts.download_artifacts(run_id=champion_run.run_id, artifact_path="counterfactuals.csv",
                                                   dst_path=str(champion_run.folder))
    except Exception:  # noqa: BLE001 - see the docstring
        return None
    return pd.read_csv(path, dtype={"subject_id": str})


def _log(result: Evaluation, staging: Path, handle, say, champion_run=None, dataset=None, champion_cf=None) -> None:
    """Write the artifacts, figures and map viewers (with the comparison with the champion), log
    them to the open run, render the report from what was logged, and prepare the version's tags
    (written once the run FINISHED)."""
    from .figures import render_evaluation  # matplotlib and WeasyPrint: only once something is drawn
    from .report import report_for_run

    if champion_run is not None:
        _pair_with_champion(result, champion_run, champion_cf, say)
    write_artifacts(result, staging)
    with figure_fonts():  # Hangul in the figures when the evaluation speaks Korean
        figures = render_evaluation(result, staging / "figures", champion_run=champion_run)
    result.viewers = _viewers(result, staging, champion_run)
    result.artifacts = artifact_uris(handle.artifact_uri, staging, figures)
    interrupts.raise_if_swallowed()
    tracking.log_results(result, staging, handle, dataset)
    # The report is rendered from the logged artifacts, exactly as `heimer-mlflow report`
    # re-renders it later: one path, and proof that the artifacts alone suffice.
    # The version is not tagged here: the run is still RUNNING (all version tags come after FINISHED).
    with tempfile.TemporaryDirectory(prefix="heimer-report-") as rendered:  # logged to the run, then gone
        report = report_for_run(handle.run_id, out_dir=rendered, log=True, tag_version=False)
    result.artifacts["report"] = f"{handle.artifact_uri}/report/{report.pdf.name}"
    tracking.prepare_version_tags(result, handle)
    say(f"logged the evaluation and its report to run {handle.run_id} ({redacted(tracking.mlflow.get_tracking_uri())})")


def _viewers(result: Evaluation, staging: Path, champion_run) -> list[tuple[str, str]]:
    """The interactive map viewers (``viewers/*.html``), as (title, artifact path)."""
    from .figures.viewers import write_viewers  # nilearn's viewers: only once something is drawn

    champion_volume = None
    if champion_run is not None:
        champion_volume = champion_run.volume(f"cam_mean_{safe_name(result.model.meta.positive_class)}.nii.gz")
    return [(v["title"], v["path"]) for v in write_viewers(result, staging / "viewers", champion_volume=champion_volume)]


def _pair_with_champion(result: Evaluation, champion_run, theirs: pd.DataFrame | None, say) -> None:
    """The counterfactual drops against the champion's on the subjects both re-scored (``theirs``:
    its counterfactuals.csv): per-subject paired differences, Wilcoxon, Holm over the regions."""
    cf = result.counterfactual
    if cf is None or not cf.computed or result.counterfactual_table is None:
        return
    cf.champion_version = champion_run.version
    if theirs is None:
        cf.champion_note = ("the champion's evaluation has no counterfactual tests (made before they existed, or "
                            "with --counterfactual-subjects 0)")
        return
    mine = result.counterfactual_table.astype({"subject_id": str})
    cf.vs_champion = paired_drops(mine, theirs.drop(columns=[c for c in ("participant_id", "session_id")
                                                             if c in theirs.columns]), cf.region_names)
    if not cf.vs_champion or not cf.vs_champion[0].diff.computable:
        shared = cf.vs_champion[0].n_pairs if cf.vs_champion else 0
        cf.champion_note = (f"{shared} subject(s) were re-scored by both evaluations: a paired comparison needs at "
                            "least 2")
        cf.vs_champion = [p for p in cf.vs_champion if p.diff.computable]
    else:
        say(f"counterfactual tests against the champion: {paired_sentence(cf.vs_champion[0])}")


def require_both_classes(cohort: Cohort, meta) -> None:
    """AUC, sensitivity and specificity need subjects of the positive class and of another."""
    counts = cohort.table["label"].astype(int).value_counts()
    positives = int(counts.get(meta.positive_index, 0))
    if positives == 0 or positives == len(cohort):
        present = ", ".join(f"{meta.class_names[int(k)]}={int(v)}" for k, v in sorted(counts.items()))
        left = " after leaving out the unusable ones" if len(cohort.excluded) else ""
        raise HeimerError(
            f"the cohort {cohort.source} has one class only{left} ({present}): the metrics need both "
            f"{meta.positive_class} and {meta.negative_class} subjects; add subjects of the other class"
        )


def _evaluated(cohort: Cohort, engine: EngineResult) -> Cohort:
    """The cohort restricted to the subjects the engine evaluated."""
    rows = engine.subjects["index"].astype(int)
    return Cohort(cohort.table.iloc[rows].reset_index(drop=True), cohort.class_names, cohort.source,
                  cohort.covariates, cohort.excluded)


def _exclude_unreadable(cohort: Cohort, engine: EngineResult, skip_bad: bool) -> Cohort:
    """Subjects whose voxels turned out unusable: stop with all of them, or record them."""
    if not engine.excluded:
        return cohort
    problems = [(e["subject_id"], cohort.table["path"].iloc[int(e["index"])], e["reason"]) for e in engine.excluded]
    if not skip_bad:
        raise CohortProblems(problems, cohort.source)
    extra = pd.DataFrame(problems, columns=["subject_id", "path", "reason"])
    cohort.excluded = pd.concat([cohort.excluded, extra], ignore_index=True)
    return cohort
