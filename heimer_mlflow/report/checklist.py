"""The reporting-checklist appendix: the items of TRIPOD+AI (Collins et al., BMJ 2024) and CLAIM
2024 (the Checklist for Artificial Intelligence in Medical Imaging, 2024 update) that an
evaluation can fill itself, each filled from the evaluation record with the report section that
shows it, and the items it cannot know (ethics approval, funding, registration, ...) listed as
"to be completed by the study team". Also written as ``checklist.json`` beside the report.

TRIPOD+AI items carry their numbers; CLAIM items are named by topic (the 2024 update renumbered
the 2020 list). ``status``: ``filled`` (the evaluation answers it), ``partly filled`` (it answers
a part, the rest is the study team's), ``to be completed by the study team``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..i18n import N_, _
from ..meta import CONFIDENCE_PERCENT
from .sections import ChecklistItem

if TYPE_CHECKING:
    from .sections import ReportContext

FILLED, PARTLY, TO_COMPLETE = "filled", "partly filled", "to be completed by the study team"
# report sections an item can point at: anchor -> name (the template's section ids)
SECTIONS = {"facts": N_("Model Facts"), "summary": N_("Summary"), "identity": N_("Model identity"),
            "intended-use": N_("Intended use and limitations"), "data": N_("Data"), "performance": N_("Performance"),
            "explainability": N_("Explainability"), "features": N_("Feature maps and raw data baseline"),
            "comparison": N_("Comparison with the champion"), "provenance": N_("Appendix A: Provenance")}  # fmt: skip
STATUS_WORDS = {FILLED: N_("filled"), PARTLY: N_("partly filled"), TO_COMPLETE: N_("to be completed by the study team")}
SCHEMA = 1


TRIPOD, CLAIM = "TRIPOD+AI", "CLAIM 2024"
NOT_KNOWN = N_("Not known to the evaluation.")


def build_checklist(context: ReportContext) -> tuple[ChecklistItem, ...]:
    """The checklist's rows, from the report's context: TRIPOD+AI's items, then CLAIM 2024's."""
    words = _Words(context)
    return tuple(_item(TRIPOD, *row) for row in _tripod_rows(context, words)) + tuple(
        _item(CLAIM, "", *row) for row in _claim_rows(context, words))


def _item(standard: str, item: str, topic: str, status: str, text: str, section: str | None = None) -> ChecklistItem:
    """One row: the item, its status and what the evaluation says to it, with the section that shows it."""
    return ChecklistItem(standard=standard, item=item, topic=topic, topic_text=topic, status=status,
                         status_text=_(STATUS_WORDS[status]), text=text, section=section,
                         section_name=_(SECTIONS[section]) if section in SECTIONS else None)


class _Words:
    """The phrases several items share, worded once from the context."""

    def __init__(self, context: ReportContext):
        facts, cohort = context.facts, context.cohort
        self.population = facts.population_detail
        self.performance = "; ".join(f"{p.label} {p.value}" + (f" ({p.ci})" if p.ci else "") for p in facts.performance)
        self.excluded = cohort.n_excluded if cohort.n_excluded not in ("-", "") else "0"
        self.covariates = ", ".join(cohort.covariates) or _("none")
        self.subgroups = len(context.performance.subgroups)
        self.versions = ", ".join(f"{k} {v}" for k, v in context.provenance.versions) or _("not recorded")
        self.characterised = bool(cohort.covariate_counts)  # scans per class and covariate are shown
        pop = self.population
        self.sites = (_("{n} sites recorded in column '{column}' ({sites})").format(
            n=pop.n_sites, column=pop.site_column, sites=pop.sites) if pop.n_sites else _("the manifest records no site"))
        self.several_sites = bool(pop.n_sites and pop.n_sites > 1)


def _tripod_rows(c: ReportContext, w: _Words) -> list[tuple]:
    """TRIPOD+AI's items: (number, topic, status, text, section)."""
    doc, model, n, pop = c.document, c.model, c.n, w.population
    design = (_("Evaluation of the registered model {model} version {version} ({uri}).") if doc.version else
              _("Evaluation of the registered model {model} ({uri}).")).format(
        model=doc.display_name, version=doc.version, uri=model.uri)
    sample = _("{n_subjects} scans ({n_positive} {positive}, {n_negative} {negative})").format(
        n_subjects=n.n_subjects, n_positive=n.n_positive, positive=c.positive, n_negative=n.n_negative,
        negative=c.negative)
    if n.clustered:
        sample += " " + _("of {n_participants} participants").format(n_participants=n.n_participants)
    return [
        ("1", _("Title"), FILLED, _("{title}: evaluation of a deep-learning (3D CNN) classifier of {positive} versus "
                                    "{negative} on brain MRI.").format(title=doc.title, positive=c.positive,
                                                                      negative=c.negative), "facts"),
        ("3b", _("Target population and intended users"), PARTLY, _(
            "Evaluation data: {population}. Intended users and the place in the care pathway are the study team's to "
            "state.").format(population=c.facts.population), "facts"),
        ("4", _("Objectives"), PARTLY,
         design + " " + _("Whether this is an internal or external validation is the study team's to state."),
         "identity"),
        ("5a", _("Data sources"), FILLED, _("Manifest {source}; {data_line}").format(
            source=c.cohort.source, data_line=c.facts.data_line), "data"),
        ("5b", _("Dates of the data"), FILLED if pop.dates else TO_COMPLETE,
         (pop.dates or _("the manifest records no scan dates")) + ".", "data" if pop.dates else None),
        ("6a", _("Setting, number and location of centres"), PARTLY,
         _("{sites}; their locations are the study team's to state.").format(sites=w.sites), "data"),
        ("6b", _("Eligibility criteria"), PARTLY, _(
            "Technical: readable NIfTI, shape {input_shape}, finite voxels; {excluded} scans excluded with their "
            "reasons. Clinical criteria are the study team's.").format(input_shape=model.input_shape,
                                                                       excluded=w.excluded), "data"),
        ("7", _("Data preparation"), FILLED, _(
            "Per-volume intensity normalisation '{intensity}', input shape {input_shape}; no other preprocessing by "
            "the evaluation.").format(intensity=model.intensity, input_shape=model.input_shape), "data"),
        ("8a", _("Outcome"), PARTLY, _(
            "{positive} versus {negative} as labelled in the manifest; how and by whom the diagnosis was made is the "
            "study team's to state.").format(positive=c.positive, negative=c.negative), "data"),
        ("9a", _("Predictors"), FILLED,
         _("The 3D MRI volume only (input {input_shape}).").format(input_shape=model.input_shape), "identity"),
        ("10", _("Sample size"), PARTLY,
         sample + "; " + _("how the size was arrived at is the study team's to state."), "data"),
        ("11", _("Missing data"), FILLED, _("{excluded} scans could not be evaluated and are listed with the reason; "
                                            "no imputation.").format(excluded=w.excluded), "data"),
        ("12", _("Analytical methods: performance measures"), FILLED, _(
            "AUC with stratified bootstrap ({n_bootstrap} resamples) and DeLong intervals; Wilson intervals for "
            "proportions; calibration, decision curve.").format(n_bootstrap=c.performance.n_bootstrap),
         "performance"),
        ("14", _("Fairness"), PARTLY if w.subgroups else TO_COMPLETE,
         _("Results in {subgroups} subgroups of the covariates ({covariates}).").format(
             subgroups=w.subgroups, covariates=w.covariates) if w.subgroups else
         _("The manifest has no covariates, so no subgroup results."), "performance" if w.subgroups else None),
        ("15", _("Model output"), FILLED, c.facts.output, "facts"),
        ("16", _("Training versus evaluation data"), PARTLY, _(
            "Training run {source_run_id}; the differences between its data and this cohort are the study team's to "
            "state.").format(source_run_id=model.source_run_id), "identity"),
        ("17", _("Ethical approval"), TO_COMPLETE, _(NOT_KNOWN)),
        ("18a", _("Funding"), TO_COMPLETE, _(NOT_KNOWN)),
        ("18b", _("Conflicts of interest"), TO_COMPLETE, _(NOT_KNOWN)),
        ("18c", _("Protocol"), TO_COMPLETE, _(NOT_KNOWN)),
        ("18d", _("Registration"), TO_COMPLETE, _(NOT_KNOWN)),
        ("18e", _("Data sharing"), TO_COMPLETE, _(NOT_KNOWN)),
        ("18f", _("Code sharing"), PARTLY, _("Evaluation software and versions: {versions}; the model's own code is "
                                             "the study team's to share.").format(versions=w.versions), "provenance"),
        ("19", _("Patient and public involvement"), TO_COMPLETE, _(NOT_KNOWN)),
        ("20a", _("Flow of participants"), FILLED, _("{n_subjects} scans evaluated, {excluded} excluded.").format(
            n_subjects=n.n_subjects, excluded=w.excluded), "data"),
        ("20b", _("Characteristics of participants"), FILLED if w.characterised else TO_COMPLETE,
         _("Scans per class and covariate ({covariates}).").format(covariates=w.covariates) if w.characterised else
         _("The manifest has no covariates."), "data" if w.characterised else None),
        ("23a", _("Model performance"), FILLED, w.performance + _("."), "performance"),
        ("23b", _("Heterogeneity across clusters (sites)"), FILLED if w.several_sites else TO_COMPLETE,
         _("Results per site in the subgroup table.") if w.several_sites else _("The data record one site or none."),
         "performance" if pop.n_sites else None),
        ("26", _("Limitations"), PARTLY, _("Warnings on the Model Facts page and the limitations section; the study's "
                                           "own limitations are the study team's."), "intended-use"),
    ]  # fmt: skip


def _claim_rows(c: ReportContext, w: _Words) -> list[tuple]:
    """CLAIM 2024's items, named by topic: (topic, status, text, section)."""
    model = c.model
    return [
        (_("Data sources"), FILLED, _("Manifest {source}.").format(source=c.cohort.source), "data"),
        (_("Eligibility criteria"), PARTLY,
         _("Technical criteria and exclusions listed; clinical criteria to be stated."), "data"),
        (_("Data pre-processing"), FILLED, _("Intensity '{intensity}', shape {input_shape}.").format(
            intensity=model.intensity, input_shape=model.input_shape), "data"),
        (_("De-identification"), TO_COMPLETE, _(NOT_KNOWN)),
        (_("Missing data"), FILLED, _("{excluded} scans excluded, each with its reason.").format(excluded=w.excluded),
         "data"),
        (_("Reference standard (ground truth) and its source"), TO_COMPLETE, _(
            "The labels come from the manifest; their definition, source and annotators are the study team's to "
            "state.")),
        (_("Data partitions"), TO_COMPLETE, _(
            "The evaluation sees this cohort only; how it was kept apart from the training data (at participant "
            "level) is the study team's to state.")),
        (_("Detailed model description"), PARTLY, _("Model {uri}, format {serialization}, explained at layer "
                                                     "{layer}.").format(uri=model.uri, serialization=model.serialization,
                                                                        layer=c.gradcam.layer), "identity"),
        (_("Software libraries and versions"), FILLED, w.versions + _("."), "provenance"),
        (_("Metrics of model performance"), FILLED, w.performance + _("."), "performance"),
        (_("Statistical measures of significance and uncertainty"), FILLED, _(
            "{level}% intervals on every figure; DeLong's paired test against the champion when there is "
            "one.").format(level=CONFIDENCE_PERCENT), "performance"),
        (_("Robustness or sensitivity analysis"), PARTLY if w.subgroups else TO_COMPLETE,
         _("{subgroups} subgroup results.").format(subgroups=w.subgroups) if w.subgroups else
         _("No covariates: no subgroup results."), "performance" if w.subgroups else None),
        (_("Methods for explainability or interpretability"), FILLED, _(
            "{name} (primary) and {other_name} from one gradient; outside-brain share, atlas region gains and a "
            "weight randomisation check, with the verdict they give.").format(name=c.cam.name,
                                                                             other_name=c.cam.other_name),
         "explainability"),
        (_("Validation or testing on external data"), TO_COMPLETE,
         _("Whether this cohort is external to the training data is the study team's to state.")),
        (_("Flow of participants"), FILLED, _("{n_subjects} evaluated, {excluded} excluded.").format(
            n_subjects=c.n.n_subjects, excluded=w.excluded), "data"),
        (_("Demographic and clinical characteristics"), FILLED if w.characterised else TO_COMPLETE,
         _("Per class and covariate ({covariates}).").format(covariates=w.covariates) if w.characterised else
         _("No covariates recorded."), "data" if w.characterised else None),
        (_("Estimates of diagnostic accuracy and their precision"), FILLED, w.performance + _("."), "performance"),
        (_("Failure analysis"), FILLED, _(
            "The most confident false positives and negatives with their maps (case gallery), and every excluded "
            "scan with its reason."), "explainability"),
        (_("Study limitations"), PARTLY,
         _("Warnings and limitations of this evaluation; the study's own are the study team's."), "intended-use"),
        (_("Ethics approval, registration, protocol and funding"), TO_COMPLETE, _(NOT_KNOWN)),
    ]  # fmt: skip


def checklist_json(context: ReportContext) -> dict:
    """``checklist.json``: the rows with what they describe."""
    rows = context.checklist
    return {"schema_version": SCHEMA, "model": {"name": context.document.name, "version": context.document.version},
            "run_id": context.document.run_id, "standards": [TRIPOD + " (BMJ 2024)", CLAIM],
            "counts": {s: sum(r.status == s for r in rows) for s in (FILLED, PARTLY, TO_COMPLETE)},
            "items": [r.to_dict() for r in rows]}
