"""What the report shows, as typed, frozen data: :class:`ReportContext` and its sections, built
by :func:`heimer_mlflow.report.context.build_context` from the evaluation record and the run's
artifacts, read by the template (``templates/report.html.j2``: Jinja reads ``section.field`` as
it reads a key) and by the checklist.

Every value the template prints is text already worded in the report's language (numbers with
their intervals, registry text as given: the template escapes); the few numbers kept as numbers
(``delta_lower``, ``outside_ok``, ...) decide which sentence the template picks. Nothing here
computes: the statistics are the record's.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from markupsafe import Markup


@dataclass(frozen=True)
class Document:
    """The PDF's own facts: title, metadata, dates, language, and what could not be read."""

    title: str
    display_name: str  # the registered name, or "unregistered model"
    name: str  # the registered name ("" when unregistered)
    version: str
    description: str
    keywords: str
    generator: str
    date: str  # in words, in the report's language
    date_iso: str
    datetime: _dt.datetime
    lang: str
    language_name: str
    figures_language: str  # the figures were drawn at evaluation time, in the evaluation's language
    figures_in_other_language: bool
    page_css: Markup
    run_id: str
    problems: tuple[str, ...]  # pieces of the record that are missing or unreadable
    artifact_files: tuple[str, ...]
    ci_level: str  # the intervals' confidence level, "95"


@dataclass(frozen=True)
class ModelSection:
    uri: str
    aliases: tuple[str, ...]
    description: str
    tags: tuple[tuple[str, str], ...]
    tags_cut: int  # tags not shown
    source_run_id: str
    model_id: str
    metadata: tuple[tuple[str, str], ...]
    inferred: tuple[str, ...]
    given: tuple[str, ...]
    notes: tuple[str, ...]
    serialization: str
    intensity: str
    input_shape: str


@dataclass(frozen=True)
class CovariateCount:
    covariate: str
    group: str
    counts: Mapping[str, int]  # class name -> subjects
    n: int


@dataclass(frozen=True)
class Exclusion:
    subject_id: str
    path: str
    reason: str


@dataclass(frozen=True)
class CohortSection:
    source: str
    n_subjects: str
    n_excluded: str
    counts: tuple[tuple[str, str], ...]
    covariates: tuple[str, ...]
    covariate_counts: tuple[CovariateCount, ...]
    excluded: tuple[Exclusion, ...]


@dataclass(frozen=True)
class Counts:
    n_subjects: str
    n_positive: str
    n_negative: str
    n_participants: str
    clustered: bool  # some participants have several scans: the intervals resample participants


@dataclass(frozen=True)
class HeadlineFigure:
    label: str
    meaning: str
    value: str
    ci: str
    reason: str  # why it is not computable ("" when it is)


@dataclass(frozen=True)
class MetricRow:
    name: str
    label: str
    meaning: str
    computable: bool
    value: str
    ci: str
    method: str
    reason: str


@dataclass(frozen=True)
class SubgroupRow:
    covariate: str
    group: str
    n: str
    n_positive: str
    n_negative: str
    auc: str
    sensitivity: str
    specificity: str


@dataclass(frozen=True)
class Performance:
    headline: tuple[HeadlineFigure, ...]
    confusion: Mapping[str, str]  # tp, fp, tn, fn
    threshold: str
    threshold_note: str
    youden: str
    youden_sens: str
    youden_spec: str
    n_bootstrap: str
    confidence: str  # the record's level, "95%"
    metric_rows: tuple[MetricRow, ...]
    subgroups: tuple[SubgroupRow, ...]
    n_epochs: int  # of the training history


@dataclass(frozen=True)
class RegionGain:
    region: str
    gain: str
    above: bool


@dataclass(frozen=True)
class SanityRow:
    subject_id: str
    rho: str


@dataclass(frozen=True)
class Checks:
    """The verdict and the plausibility checks as applied, with the limits of their time."""

    verdict: str
    verdict_pass: bool
    verdict_word: str
    verdict_reason: str  # in the report's language
    verdict_recorded: bool
    outside: str
    outside_limit: str
    outside_floor: str
    outside_excess: str
    outside_ok: bool | None
    gains: tuple[RegionGain, ...]
    sanity_ok: bool | None
    sanity_limit: str
    sanity_mean: str
    sanity_rows: tuple[SanityRow, ...]


@dataclass(frozen=True)
class CamRow:
    name: str
    primary: bool
    outside: str


@dataclass(frozen=True)
class CamComparison:
    """The primary map and the two maps side by side."""

    method: str
    name: str
    other: str
    other_name: str
    explained: tuple[str, ...]
    compared: bool
    rows: tuple[CamRow, ...]
    primary_outside: str
    agreement: str
    min_agreement: str
    max_gap: str
    disagree: bool
    reasons: tuple[str, ...]
    agreement_known: bool
    verdict_on_gradcam: bool


@dataclass(frozen=True)
class CamSettings:
    layer: str
    target_class: str
    upsampling: str
    normalisation: str
    statistics: str


@dataclass(frozen=True)
class GalleryCase:
    outcome: str
    subject_id: str
    prob: str
    label: str


@dataclass(frozen=True)
class ChannelRow:
    layer: str
    channel: str
    mean_abs_t: str
    mean_t: str
    diff: str


@dataclass(frozen=True)
class Features:
    layers: tuple[str, ...]
    ranking: tuple[ChannelRow, ...]


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    caption: str
    size: str
    src: str
    present: bool


@dataclass(frozen=True)
class ComparisonRow:
    label: str
    this: str
    champion: str


@dataclass(frozen=True)
class ChampionSection:
    """The comparison with the champion as the record holds it; ``available`` False with ``why``
    when there is none."""

    available: bool
    why: str = ""
    version: str = ""
    run_id: str = ""
    rows: tuple[ComparisonRow, ...] = ()
    n_matched: int = 0
    note: str = ""
    method: str = ""
    delta: str | None = None  # the AUC difference with its interval, in words
    delta_value: float | None = None
    delta_lower: float | None = None
    delta_upper: float | None = None
    p: str | None = None
    champion_verdict_word: str = ""
    champion_reason: str = ""
    champion_map: str = ""
    champion_outside: str | None = None


@dataclass(frozen=True)
class DropRow:
    name: str
    value: str
    ci: str
    reason: str


@dataclass(frozen=True)
class CounterfactualCheck:
    label: str
    value: str
    limit: str
    result: str


@dataclass(frozen=True)
class PairedDropRow:
    name: str
    n: int
    this: str
    champion: str
    diff: str
    p: str


@dataclass(frozen=True)
class CounterfactualSection:
    """The counterfactual tests as recorded; ``available`` False with ``why`` when there are none."""

    available: bool
    why: str = ""
    n_subjects: int = 0
    n_requested: int = 0
    forward_passes: int = 0
    replacement: str = ""
    sentences: tuple[str, ...] = ()
    headline: str = ""
    rows: tuple[DropRow, ...] = ()
    checks: tuple[CounterfactualCheck, ...] = ()
    vs_champion: tuple[PairedDropRow, ...] = ()
    vs_sentence: str = ""
    champion_note: str = ""
    champion_version: str = ""
    seconds: str = ""
    steps: str = ""


@dataclass(frozen=True)
class Atlas:
    name: str
    title: str
    licence: str
    source: str
    space_check: str
    brain_mask: str
    regions: tuple[tuple[str, str], ...]  # region -> its atlas labels, joined


@dataclass(frozen=True)
class Viewer:
    title: str
    path: str
    what: str


@dataclass(frozen=True)
class Provenance:
    device: str
    versions: tuple[tuple[str, str], ...]
    configuration: tuple[tuple[str, str], ...]
    timings: tuple[tuple[str, str], ...]
    atlas: Atlas | None
    viewers: tuple[Viewer, ...]


@dataclass(frozen=True)
class PerformanceLine:
    label: str
    value: str
    ci: str


@dataclass(frozen=True)
class Population:
    """Who the evaluation data show (what the predictions table records)."""

    counts: str
    age: str | None = None
    sex: str | None = None
    sites: str | None = None
    n_sites: int | None = None
    site_column: str | None = None
    dates: str | None = None
    age_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class Recommendation:
    action: str
    words: str
    why: str
    sentence: str
    css: str


@dataclass(frozen=True)
class ModelFacts:
    """Page 1 (see :mod:`heimer_mlflow.report.facts`)."""

    output: str
    intended_use: str
    population: str
    population_detail: Population
    data_line: str
    performance: tuple[PerformanceLine, ...]
    evidence: tuple[str, ...]
    comparison: str
    gate: str
    recommendation: Recommendation
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class ChecklistItem:
    """One item of a reporting standard (see :mod:`heimer_mlflow.report.checklist`)."""

    standard: str
    item: str
    topic: str
    topic_text: str
    status: str
    status_text: str
    text: str
    section: str | None
    section_name: str | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ReportContext:
    """Everything the report shows. The template receives the fields as its names."""

    document: Document
    positive: str
    negative: str
    class_names: tuple[str, str]
    model: ModelSection
    cohort: CohortSection
    n: Counts
    performance: Performance
    checks: Checks
    cam: CamComparison
    gradcam: CamSettings
    gallery: tuple[GalleryCase, ...]
    features: Features
    figures: Mapping[str, Figure]
    extra_figures: tuple[Figure, ...]
    figure_sections: Mapping[str, list[str]]
    champion: ChampionSection
    cf: CounterfactualSection
    provenance: Provenance
    glossary: tuple[tuple[str, str], ...]
    facts: ModelFacts
    checklist: tuple[ChecklistItem, ...]

    def template_names(self) -> dict:
        """The fields by name, for the template (one level: the sections stay objects)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}
