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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from .champion import Comparison
from .interventions import CounterfactualSummary
from .cohort import Cohort, CohortDataset, make_loader, parse_label_map, read_cohort, validate
from .engine import run_engine
from .engine.gradcam import check_cam_method
from .engine.run import EngineResult, pick_device
from .errors import HeimerError
from .gate import Gate, GateFailed, GateResult
from .meta import CAM_NAMES, INTENSITIES, assumptions
from .metrics import ClassificationReport, compute_metrics
from .permissions import Access, redacted
from .record import AtlasRecord
from .atlas import atlas_for_cohort, load_brain_mask
from .registry import HISTORY_NAMES, LoadedModel, load, split_names, training_history
from .verdict import Verdict, judge, outside_brain_limit, plausibility_verdict  # noqa: F401 - names scripts import from here

SAVE_CAMS = ("gallery", "all", "none")


@dataclass
class EvaluationOptions:
    target_layer: str | None = None
    batch_size: int = 4
    device: str = "auto"
    threshold: float = 0.5
    atlas: str | None = None  # neuromorphometrics, desikan-killiany (MNI-space inputs) or a label NIfTI on the grid
    atlas_labels: str | None = None
    regions: tuple[str, ...] | str | None = None  # of the atlas: groups, sides or label names ("a,b" or a list)
    brain_mask: str | None = None  # NIfTI on the input grid; None: a named atlas brings the MNI152 brain, else each input's non-background voxels
    save_cams: str = "gallery"
    skip_bad: bool = False
    # a new run's experiment (None: heimer-evaluations); named for a run that is already open elsewhere
    # (`mlflow run`, mlflow.models.evaluate, the caller's active run), it is a user error (tracking._open_run)
    experiment: str | None = None
    feature_layers: tuple[str, ...] = ()
    gallery_k: int = 4
    sanity_subjects: int = 8
    n_bootstrap: int = 2000
    workers: int | None = None
    amp: str | None = None
    history_metrics: dict[str, str] = field(default_factory=dict)  # train_loss=... -> source-run key
    seed: int = 0
    progress: bool = True
    require: tuple[str, ...] = ()  # promotion rules, e.g. "roc_auc_ci_lower>=0.75" (see heimer_mlflow.gate)
    require_verdict: str | None = None  # "pass": the verdict is a rule too
    cam: str = "hirescam"  # the primary map: hirescam or gradcam (README: why HiResCAM by default)
    # cohorts as teams have them (heimer_mlflow.layouts): a ClinicaDL TSV's CAPS folder, the label's
    # column (default: label in a manifest, diagnosis in BIDS / ClinicaDL), source label -> class name
    caps: str | None = None
    label_column: str | None = None
    label_map: str | dict | None = None  # "Dementia=AD,Control=CN"; a dict once checked
    # a model logged without our metadata (or with it wrong): these fill or override it, and the
    # run records them as given (registry.read_meta)
    class_names: tuple[str, ...] | str | None = None  # output order, "CN,AD"
    positive_class: str | None = None
    intensity: str | None = None  # zscore, minmax or none
    # loading a pickled model runs code from its file: a person evaluating by hand chose the model;
    # `watch` sets False unless started with --allow-pickle
    allow_pickle: bool = True
    # the counterfactual region tests (engine.counterfactual): subjects called AD to re-score; 0: off
    counterfactual_subjects: int = 16
    # the report's language, its figures' and the version's description block: en or ko (heimer_mlflow.i18n)
    lang: str = "en"

    def check(self) -> EvaluationOptions:
        from .i18n import check_language, require_fonts

        self.lang = check_language(self.lang)
        require_fonts(self.lang)  # Korean without its font stops here, before any compute
        check_cam_method(self.cam)
        if self.class_names is not None:
            self.class_names = tuple(split_names(self.class_names)) or None
        if self.intensity is not None and self.intensity not in INTENSITIES:
            raise HeimerError(f"intensity={self.intensity!r}: use one of {', '.join(INTENSITIES)}")
        number = self.counterfactual_subjects
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number != int(number) or number < 0:
            raise HeimerError(f"counterfactual_subjects={number!r}: give 0 (no counterfactual tests) or a positive "
                              "number of subjects to re-score, e.g. --counterfactual-subjects 16")
        self.counterfactual_subjects = int(number)
        if self.save_cams not in SAVE_CAMS:
            raise HeimerError(f"save_cams={self.save_cams!r}: use one of {', '.join(SAVE_CAMS)}")
        if not 0.0 < self.threshold < 1.0:
            raise HeimerError(f"threshold={self.threshold}: give a probability strictly between 0 and 1")
        if self.batch_size < 1:
            raise HeimerError(f"batch_size={self.batch_size}: give a positive integer")
        self._check_atlas()
        self.require = tuple(self.require) if not isinstance(self.require, str) else (self.require,)
        self.label_map = parse_label_map(self.label_map)  # bad syntax is a user error before anything runs
        self.gate()  # a rule that cannot be read is a user error before anything runs
        unknown = set(self.history_metrics) - set(HISTORY_NAMES)
        if unknown:
            raise HeimerError(
                f"history metric {sorted(unknown)[0]!r} is not one of {', '.join(HISTORY_NAMES)}"
            )
        return self

    def gate(self) -> Gate:
        return Gate.parse(self.require, self.require_verdict)

    def given_meta(self) -> dict:
        """The model-contract values given with the options (None = not given)."""
        return {"class_names": list(self.class_names) if self.class_names else None,
                "positive_class": self.positive_class, "intensity": self.intensity}

    def _check_atlas(self) -> None:
        from .atlas import NAMED_ATLASES, named_atlas

        if isinstance(self.regions, str):
            self.regions = tuple(r.strip() for r in self.regions.split(",") if r.strip()) or None
        elif self.regions is not None:
            self.regions = tuple(str(r).strip() for r in self.regions) or None
        if self.regions and self.atlas is None:
            raise HeimerError(f"--regions {','.join(self.regions)} needs an atlas: --atlas "
                              f"{'|'.join(NAMED_ATLASES)} (MNI-space inputs) or --atlas NIFTI --atlas-labels CSV")
        if named_atlas(self.atlas) is not None:
            if self.atlas_labels is not None:
                raise HeimerError(f"--atlas {self.atlas} brings its own labels: leave out --atlas-labels "
                                  f"{self.atlas_labels} (or give --atlas NIFTI for your own atlas)")
        elif (self.atlas is None) != (self.atlas_labels is None):
            raise HeimerError(f"an atlas needs --atlas {'|'.join(NAMED_ATLASES)} (MNI-space inputs), or both "
                              "--atlas NIFTI and --atlas-labels CSV (columns index,name)")


@dataclass
class Evaluation:
    """What one evaluation produced; ``run_id`` is the MLflow run it was logged to."""

    model: LoadedModel
    cohort: Cohort
    engine: EngineResult
    metrics: ClassificationReport
    history: dict[str, list[tuple[int, float]]]
    verdict: str
    verdict_reason: str
    options: EvaluationOptions
    grid_affine: np.ndarray
    run_id: str | None = None
    evaluated_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> artifact URI (figures by name, report, ...)
    timings: dict[str, float] = field(default_factory=dict)
    gate: GateResult | None = None  # the promotion rules' outcome, when rules were given
    comparison: Comparison | None = None  # with the champion's evaluation on the same data, if any
    comparison_note: str = ""  # why there is no comparison although a champion exists (champion.Search.why)
    data_digest: str | None = None  # the evaluated data's content digest (champion.content_digest)
    verdict_applied: Verdict | None = None  # the verdict with its limits and each check's result
    atlas: AtlasRecord | None = None  # a named atlas: its source, licence and regions
    link_model: bool = True  # metrics and data set attached to the logged model (permissions.check)
    counterfactual: CounterfactualSummary | None = None  # the counterfactual region tests (interventions)
    counterfactual_result: object | None = None  # engine.counterfactual.CounterfactualResult: per-subject drops
    counterfactual_table: pd.DataFrame | None = None  # counterfactuals.csv

    @property
    def run_metrics(self) -> dict[str, float]:
        """Every number logged to the run as a metric (and returned by the evaluator plug-in)."""
        comparison = self.comparison.run_metrics() if self.comparison is not None else {}
        counterfactual = self.counterfactual.run_metrics() if self.counterfactual is not None else {}
        return {**self.metrics.to_flat_metrics(), **self.summary, **counterfactual, **comparison,
                "n_subjects": int(len(self.engine.subjects["prob"])), "n_excluded": int(len(self.cohort.excluded))}

    def not_computable(self) -> list[tuple[str, str]]:
        """(name, reason) of every figure without a value: the metrics' and the counterfactual tests'."""
        extra = self.counterfactual.not_computable() if self.counterfactual is not None else []
        return [*self.metrics.not_computable(), *extra]

    @property
    def summary(self) -> dict[str, float]:
        """Cohort-level plausibility numbers, logged as run metrics.

        The map explains the positive class's score, so its checks look where the model looks
        when it calls a subject positive: the outside-brain shares, their floor, the region gains
        and the two maps' agreement are means over the subjects called positive (all subjects when
        it calls none; ``cam_n_subjects`` says over how many). For a subject called negative the
        positive score's map shows the little evidence there was, mostly noise at the edges, and
        would blur a model that looks at the brain into one that seems not to.
        """
        subjects = self.engine.subjects
        if not len(subjects.get("cam_outside_brain_fraction", [])):
            return {}
        called = subjects["pred"].astype(int) == self.model.meta.positive_index
        rows = called if called.any() else np.ones_like(called)
        out = {"cam_n_subjects": int(rows.sum())}
        columns = ["cam_outside_brain_fraction", "cam_outside_brain_floor", "cam_method_agreement",
                   *(f"{method}_outside_brain_fraction" for method in CAM_NAMES),
                   *(f"cam_roi_gain_{region}" for region in self.engine.region_names)]  # fmt: skip
        for column in (c for c in columns if c in subjects):
            values = np.asarray(subjects[column], dtype=float)[rows]
            if np.isfinite(values).any():
                out[column] = float(np.nanmean(values))
        if self.engine.sanity is not None and np.isfinite(self.engine.sanity.mean):
            out["sanity_spearman_mean"] = float(self.engine.sanity.mean)
        return out


# --------------------------------------------------------------------------- training history

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
    from . import distributed, permissions, tracking

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
            prepared = _prepare_cohort(loaded, data, opts, ctx)
            prepared.access = access
            return loaded, prepared

        # Rank 0 alone reads the registry and validates the cohort; every rank gets the same.
        loaded, prepared = distributed.from_main(prepare, ctx)
        return _evaluate(loaded, prepared, opts, run_id=run_id, started=started, ctx=ctx)
    finally:
        distributed.shutdown()


def evaluate_loaded(loaded: LoadedModel, data, opts: EvaluationOptions, *, run_id: str | None = None,
                    started: float | None = None) -> Evaluation:
    """``evaluate`` for a model already in memory (the MLflow evaluator plug-in's entry)."""
    started = time.perf_counter() if started is None else started
    return _evaluate(loaded, _prepare_cohort(loaded, data, opts, None), opts, run_id=run_id, started=started, ctx=None)


@dataclass
class _Prepared:
    """The validated cohort and the images on its grid that every subject shares."""

    cohort: Cohort
    atlas: tuple[np.ndarray, dict[int, str]] | None
    brain_mask: np.ndarray | None
    grid_affine: np.ndarray
    atlas_record: AtlasRecord | None = None  # a named atlas, for the record
    space_check: object | None = None  # mni.SpaceCheck: every scan must be in MNI space (named atlas)
    access: Access = field(default_factory=Access)  # what the tracking server lets this principal write


def _prepare_cohort(loaded: LoadedModel, data, opts: EvaluationOptions, ctx) -> _Prepared:
    """Everything a user can get wrong that the headers can show, checked before the MLflow run
    is opened: the cohort, both classes, the atlas and brain mask, the device, the options."""
    meta = loaded.meta
    for note in loaded.notes if opts.progress else ():  # how the model was run (also in the report)
        print(f"[heimer] {note}", file=sys.stderr)
    for note in assumptions(meta):  # said even with -q: an assumption changes how the numbers are to be read
        print(f"[heimer] {note}", file=sys.stderr)
    cohort = read_cohort(data, meta.class_names, skip_bad=opts.skip_bad, settle=False, caps=opts.caps,
                         label_column=opts.label_column, label_map=opts.label_map)
    if len(cohort.excluded):  # labels that are no model class: never left out silently, -q or not
        from .layouts import exclusion_summary

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
    return _Prepared(cohort, atlas, brain_mask, grid_affine, chosen.record, chosen.space_check)


def _evaluate(loaded, prepared: _Prepared, opts, *, run_id, started, ctx) -> Evaluation | None:
    """Open the run (rank 0), run the engine (every rank, its shard), conclude (rank 0).

    From the moment the run is open it tells the truth: FINISHED, FAILED with the reason (also
    when another rank failed), KILLED on Ctrl-C/SIGTERM. Everything a reader sees (the verdict's
    reason, the figures, the report, the version's description) speaks ``opts.lang``.
    """
    from .i18n import use_language

    with use_language(opts.lang):
        return _evaluate_in_language(loaded, prepared, opts, run_id=run_id, started=started, ctx=ctx)


def _evaluate_in_language(loaded, prepared: _Prepared, opts, *, run_id, started, ctx) -> Evaluation | None:
    from . import distributed, tracking

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
    from . import distributed
    from .artifacts import cam_writer

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
                     prefer: pd.DataFrame | None = None) -> None:  # fmt: skip
    """The counterfactual region tests (``engine.counterfactual``) after the one pass, on rank 0:
    up to ``counterfactual_subjects`` subjects called positive, read again, re-scored with each
    region replaced by the negative class's mean input; summarised with intervals. ``prefer``: the
    champion's counterfactuals.csv, whose subjects come first when this model calls them positive
    (so the two versions' drops pair on the same subjects)."""
    from . import interventions
    from .engine.counterfactual import choose_subjects, forward_passes, run_counterfactuals

    meta, engine, cohort = result.model.meta, result.engine, result.cohort
    negative, positive = _negative_positive(meta)
    regions = {} if prepared.atlas is None else {name: np.asarray(prepared.atlas[0]) == label
                                                 for label, name in sorted(prepared.atlas[1].items())}  # fmt: skip
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
            f"{negative} subjects' mean input", **common)  # fmt: skip
        return
    if not len(rows):
        result.counterfactual = interventions.not_computed(
            interventions.NOT_COMPUTABLE, f"the model called nobody {positive} at threshold {opts.threshold:g}: the "
            f"tests re-score subjects called {positive}", **common)  # fmt: skip
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
    )  # fmt: skip
    ids = [c for c in ("participant_id", "session_id") if c in cohort.table.columns]
    table_ids = cohort.table.iloc[cohort_rows][ids].reset_index(drop=True) if ids else None
    result.counterfactual_result = counterfactual
    result.counterfactual_table = interventions.counterfactual_table(counterfactual, table_ids)
    result.counterfactual = interventions.summarise(
        counterfactual, clusters=cohort.participants(cohort_rows), n_bootstrap=opts.n_bootstrap, seed=opts.seed,
        region_reason=None if regions else "no atlas: give --atlas to test regions", n_requested=n,
        negative=negative, positive=positive)  # fmt: skip
    result.timings["counterfactual_s"] = counterfactual.seconds


def _judge(result: Evaluation) -> None:
    """The verdict from the plausibility numbers and the counterfactual tests."""
    result.verdict_applied = judge(result.summary, result.engine.region_names, result.engine.cam_method,
                                   counterfactual=result.counterfactual)  # fmt: skip
    result.verdict, result.verdict_reason = result.verdict_applied.result, result.verdict_applied.reason


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
                             class_names=_negative_positive(meta), clusters=cohort.participants(rows))
    metrics_s = time.perf_counter() - t0
    history = training_history(loaded.source_run_id, opts.history_metrics)
    result = Evaluation(
        model=loaded, cohort=cohort, engine=engine, metrics=report, history=history,
        verdict="", verdict_reason="", options=opts, grid_affine=grid_affine,
    )
    result.timings = {"engine_s": engine_s, "metrics_s": metrics_s, **engine.timings}
    return result


def _champion(result: Evaluation, handle, stack, say):
    """(the champion's evaluation on the same data or None, the logged data set, the champion's
    counterfactuals.csv or None): compared with before the counterfactual pass, which then re-scores
    the champion's subjects first. Its files live in a temporary folder of ``stack``."""
    from . import champion, tracking
    from .artifacts import predictions_table

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
    import mlflow

    if champion_run is None:
        return None
    try:
        path = mlflow.artifacts.download_artifacts(run_id=champion_run.run_id, artifact_path="counterfactuals.csv",
                                                   dst_path=str(champion_run.folder))  # fmt: skip
    except Exception:  # noqa: BLE001 - see the docstring
        return None
    return pd.read_csv(path, dtype={"subject_id": str})


def _log(result: Evaluation, staging: Path, handle, say, champion_run=None, dataset=None, champion_cf=None) -> None:
    """Write the artifacts, figures and map viewers (with the comparison with the champion), log
    them to the open run, render the report from what was logged, and prepare the version's tags
    (written once the run FINISHED)."""
    from . import tracking
    from .artifacts import artifact_uris, write_artifacts
    from .figures import render_evaluation
    from .i18n import figure_fonts
    from .report import report_for_run

    if champion_run is not None:
        _pair_with_champion(result, champion_run, champion_cf, say)
    write_artifacts(result, staging)
    with figure_fonts():  # Hangul in the figures when the evaluation speaks Korean
        figures = render_evaluation(result, staging / "figures", champion_run=champion_run)
    result.viewers = _viewers(result, staging, champion_run)
    result.artifacts = artifact_uris(handle.artifact_uri, staging, figures)
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
    from .artifacts import safe_name
    from .figures.viewers import write_viewers

    champion_volume = None
    if champion_run is not None:
        champion_volume = champion_run.volume(f"cam_mean_{safe_name(result.model.meta.positive_class)}.nii.gz")
    return [(v["title"], v["path"]) for v in write_viewers(result, staging / "viewers", champion_volume=champion_volume)]


def _pair_with_champion(result: Evaluation, champion_run, theirs: pd.DataFrame | None, say) -> None:
    """The counterfactual drops against the champion's on the subjects both re-scored (``theirs``:
    its counterfactuals.csv): per-subject paired differences, Wilcoxon, Holm over the regions."""
    from .interventions import paired_drops, paired_sentence

    cf = result.counterfactual
    if cf is None or not cf.computed or result.counterfactual_table is None:
        return
    cf.champion_version = champion_run.version
    if theirs is None:
        cf.champion_note = ("the champion's evaluation has no counterfactual tests (made before they existed, or "
                            "with --counterfactual-subjects 0)")  # fmt: skip
        return
    mine = result.counterfactual_table.astype({"subject_id": str})
    cf.vs_champion = paired_drops(mine, theirs.drop(columns=[c for c in ("participant_id", "session_id")
                                                             if c in theirs.columns]), cf.region_names)  # fmt: skip
    if not cf.vs_champion or not cf.vs_champion[0].diff.computable:
        shared = cf.vs_champion[0].n_pairs if cf.vs_champion else 0
        cf.champion_note = (f"{shared} subject(s) were re-scored by both evaluations: a paired comparison needs at "
                            "least 2")  # fmt: skip
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
            f"{meta.positive_class} and {_negative_positive(meta)[0]} subjects; add subjects of the other class"
        )


def _evaluated(cohort: Cohort, engine: EngineResult) -> Cohort:
    """The cohort restricted to the subjects the engine evaluated."""
    rows = engine.subjects["index"].astype(int)
    return Cohort(cohort.table.iloc[rows].reset_index(drop=True), cohort.class_names, cohort.source,
                  cohort.covariates, cohort.excluded)


def _negative_positive(meta) -> tuple[str, str]:
    negative = next(c for c in meta.class_names if c != meta.positive_class)
    return negative, meta.positive_class


def _exclude_unreadable(cohort: Cohort, engine: EngineResult, skip_bad: bool) -> Cohort:
    """Subjects whose voxels turned out unusable: stop with all of them, or record them."""
    if not engine.excluded:
        return cohort
    problems = [(e["subject_id"], cohort.table["path"].iloc[int(e["index"])], e["reason"]) for e in engine.excluded]
    if not skip_bad:
        from .cohort import CohortProblems

        raise CohortProblems(problems, cohort.source)
    extra = pd.DataFrame(problems, columns=["subject_id", "path", "reason"])
    cohort.excluded = pd.concat([cohort.excluded, extra], ignore_index=True)
    return cohort
