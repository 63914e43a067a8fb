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

from ..i18n import N_, _
from ..meta import CONFIDENCE_PERCENT

FILLED, PARTLY, TO_COMPLETE = "filled", "partly filled", "to be completed by the study team"
# report sections an item can point at: anchor -> name (the template's section ids)
SECTIONS = {"facts": N_("Model Facts"), "summary": N_("Summary"), "identity": N_("Model identity"),
            "intended-use": N_("Intended use and limitations"), "data": N_("Data"), "performance": N_("Performance"),
            "explainability": N_("Explainability"), "features": N_("Feature maps and raw data baseline"),
            "comparison": N_("Comparison with the champion"), "provenance": N_("Appendix A: Provenance")}  # fmt: skip
STATUS_WORDS = {FILLED: N_("filled"), PARTLY: N_("partly filled"), TO_COMPLETE: N_("to be completed by the study team")}
SCHEMA = 1


def _item(standard: str, item: str, topic: str, status: str, text: str, section: str | None = None) -> dict:
    return {
        "standard": standard,
        "item": item,
        "topic": topic,
        "topic_text": topic,
        "status": status,
        "status_text": _(STATUS_WORDS[status]),
        "text": text,
        "section": section,
        "section_name": _(SECTIONS[section]) if section in SECTIONS else None,
    }


def build_checklist(ctx: dict) -> list[dict]:
    """The checklist's rows, from the report's template context (plain data)."""
    facts, cohort, n, model, cam = ctx["facts"], ctx["cohort"], ctx["n"], ctx["model"], ctx["cam"]
    pop = facts["population_detail"]
    perf = "; ".join(f"{p['label']} {p['value']}" + (f" ({p['ci']})" if p["ci"] else "") for p in facts["performance"])
    excluded = cohort["n_excluded"] if cohort["n_excluded"] not in ("-", "") else "0"
    sites = (
        _("{n} sites recorded in column '{column}' ({sites})").format(
            n=pop["n_sites"], column=pop["site_column"], sites=pop["sites"]
        )
        if pop["n_sites"]
        else _("the manifest records no site")
    )
    covariates = ", ".join(cohort["covariates"]) or _("none")
    subgroups = len(ctx["subgroups"])
    versions = ", ".join(f"{k} {v}" for k, v in ctx["versions"]) or _("not recorded")
    design = (
        _("Evaluation of the registered model {model} version {version} ({uri}).")
        if ctx["version"]
        else _("Evaluation of the registered model {model} ({uri}).")
    ).format(model=ctx["display_name"], version=ctx["version"], uri=model["uri"])
    t, c = "TRIPOD+AI", "CLAIM 2024"
    rows = [
        _item(
            t,
            "1",
            _("Title"),
            FILLED,
            _(
                "{title}: evaluation of a deep-learning (3D CNN) classifier of "
                "{positive} versus {negative} on brain MRI."
            ).format(title=ctx["title"], positive=ctx["positive"], negative=ctx["negative"]),
            "facts",
        ),
        _item(
            t,
            "3b",
            _("Target population and intended users"),
            PARTLY,
            _(
                "Evaluation data: {population}. Intended "
                "users and the place in the care pathway "
                "are the study team's to state."
            ).format(population=facts["population"]),
            "facts",
        ),
        _item(
            t,
            "4",
            _("Objectives"),
            PARTLY,
            design + " " + _("Whether this is an internal or external validation " "is the study team's to state."),
            "identity",
        ),
        _item(
            t,
            "5a",
            _("Data sources"),
            FILLED,
            _("Manifest {source}; {data_line}").format(source=cohort["source"], data_line=facts["data_line"]),
            "data",
        ),
        _item(
            t,
            "5b",
            _("Dates of the data"),
            FILLED if pop["dates"] else TO_COMPLETE,
            (pop["dates"] or _("the manifest records no scan dates")) + ".",
            "data" if pop["dates"] else None,
        ),
        _item(
            t,
            "6a",
            _("Setting, number and location of centres"),
            PARTLY,
            _("{sites}; their locations are the study team's to state.").format(sites=sites),
            "data",
        ),
        _item(
            t,
            "6b",
            _("Eligibility criteria"),
            PARTLY,
            _(
                "Technical: readable NIfTI, shape {input_shape}, finite "
                "voxels; {excluded} scans excluded with their reasons. "
                "Clinical criteria are the study team's."
            ).format(input_shape=model["input_shape"], excluded=excluded),
            "data",
        ),
        _item(
            t,
            "7",
            _("Data preparation"),
            FILLED,
            _(
                "Per-volume intensity normalisation '{intensity}', input "
                "shape {input_shape}; no other preprocessing by the "
                "evaluation."
            ).format(intensity=model["intensity"], input_shape=model["input_shape"]),
            "data",
        ),
        _item(
            t,
            "8a",
            _("Outcome"),
            PARTLY,
            _(
                "{positive} versus {negative} as labelled in the manifest; how and by "
                "whom the diagnosis was made is the study team's to state."
            ).format(positive=ctx["positive"], negative=ctx["negative"]),
            "data",
        ),
        _item(
            t,
            "9a",
            _("Predictors"),
            FILLED,
            _("The 3D MRI volume only (input {input_shape}).").format(input_shape=model["input_shape"]),
            "identity",
        ),
        _item(
            t,
            "10",
            _("Sample size"),
            PARTLY,
            _("{n_subjects} scans ({n_positive} {positive}, {n_negative} " "{negative})").format(
                n_subjects=n["n_subjects"],
                n_positive=n["n_positive"],
                positive=ctx["positive"],
                n_negative=n["n_negative"],
                negative=ctx["negative"],
            )
            + (
                " " + _("of {n_participants} participants").format(n_participants=n["n_participants"])
                if n["clustered"]
                else ""
            )
            + "; "
            + _("how the size was arrived at is the study team's to state."),
            "data",
        ),
        _item(
            t,
            "11",
            _("Missing data"),
            FILLED,
            _("{excluded} scans could not be evaluated and are listed with the " "reason; no imputation.").format(
                excluded=excluded
            ),
            "data",
        ),
        _item(
            t,
            "12",
            _("Analytical methods: performance measures"),
            FILLED,
            _(
                "AUC with stratified bootstrap "
                "({n_bootstrap} resamples) and DeLong "
                "intervals; Wilson intervals for "
                "proportions; calibration, decision "
                "curve."
            ).format(n_bootstrap=ctx["n_bootstrap"]),
            "performance",
        ),
        _item(
            t,
            "14",
            _("Fairness"),
            PARTLY if subgroups else TO_COMPLETE,
            (
                _("Results in {subgroups} subgroups of the covariates ({covariates}).").format(
                    subgroups=subgroups, covariates=covariates
                )
                if subgroups
                else _("The manifest has no covariates, so no subgroup results.")
            ),
            "performance" if subgroups else None,
        ),
        _item(t, "15", _("Model output"), FILLED, facts["output"], "facts"),
        _item(
            t,
            "16",
            _("Training versus evaluation data"),
            PARTLY,
            _(
                "Training run {source_run_id}; the "
                "differences between its data and this cohort "
                "are the study team's to state."
            ).format(source_run_id=model["source_run_id"]),
            "identity",
        ),
        _item(t, "17", _("Ethical approval"), TO_COMPLETE, _("Not known to the evaluation.")),
        _item(t, "18a", _("Funding"), TO_COMPLETE, _("Not known to the evaluation.")),
        _item(t, "18b", _("Conflicts of interest"), TO_COMPLETE, _("Not known to the evaluation.")),
        _item(t, "18c", _("Protocol"), TO_COMPLETE, _("Not known to the evaluation.")),
        _item(t, "18d", _("Registration"), TO_COMPLETE, _("Not known to the evaluation.")),
        _item(t, "18e", _("Data sharing"), TO_COMPLETE, _("Not known to the evaluation.")),
        _item(
            t,
            "18f",
            _("Code sharing"),
            PARTLY,
            _(
                "Evaluation software and versions: {versions}; the model's own " "code is the study team's to share."
            ).format(versions=versions),
            "provenance",
        ),
        _item(t, "19", _("Patient and public involvement"), TO_COMPLETE, _("Not known to the evaluation.")),
        _item(
            t,
            "20a",
            _("Flow of participants"),
            FILLED,
            _("{n_subjects} scans evaluated, {excluded} excluded.").format(
                n_subjects=n["n_subjects"], excluded=excluded
            ),
            "data",
        ),
        _item(
            t,
            "20b",
            _("Characteristics of participants"),
            FILLED if cohort["covariate_counts"] else TO_COMPLETE,
            (
                _("Scans per class and covariate ({covariates}).").format(covariates=covariates)
                if cohort["covariate_counts"]
                else _("The manifest has no covariates.")
            ),
            "data" if cohort["covariate_counts"] else None,
        ),
        _item(t, "23a", _("Model performance"), FILLED, perf + _("."), "performance"),
        _item(
            t,
            "23b",
            _("Heterogeneity across clusters (sites)"),
            FILLED if pop["n_sites"] and pop["n_sites"] > 1 else TO_COMPLETE,
            (
                _("Results per site in the subgroup table.")
                if pop["n_sites"] and pop["n_sites"] > 1
                else _("The data record one site or none.")
            ),
            "performance" if pop["n_sites"] else None,
        ),
        _item(
            t,
            "26",
            _("Limitations"),
            PARTLY,
            _(
                "Warnings on the Model Facts page and the limitations section; the "
                "study's own limitations are the study team's."
            ),
            "intended-use",
        ),
        _item(c, "", _("Data sources"), FILLED, _("Manifest {source}.").format(source=cohort["source"]), "data"),
        _item(
            c,
            "",
            _("Eligibility criteria"),
            PARTLY,
            _("Technical criteria and exclusions listed; clinical " "criteria to be " "stated."),
            "data",
        ),
        _item(
            c,
            "",
            _("Data pre-processing"),
            FILLED,
            _("Intensity '{intensity}', shape {input_shape}.").format(
                intensity=model["intensity"], input_shape=model["input_shape"]
            ),
            "data",
        ),
        _item(c, "", _("De-identification"), TO_COMPLETE, _("Not known to the evaluation.")),
        _item(
            c,
            "",
            _("Missing data"),
            FILLED,
            _("{excluded} scans excluded, each with its reason.").format(excluded=excluded),
            "data",
        ),
        _item(
            c,
            "",
            _("Reference standard (ground truth) and its source"),
            TO_COMPLETE,
            _(
                "The labels come from the "
                "manifest; their definition, source and annotators are the study team's to state."
            ),
        ),
        _item(
            c,
            "",
            _("Data partitions"),
            TO_COMPLETE,
            _(
                "The evaluation sees this cohort only; how it was kept apart "
                "from the training data (at participant level) is the study team's to state."
            ),
        ),
        _item(
            c,
            "",
            _("Detailed model description"),
            PARTLY,
            _("Model {uri}, format {serialization}, explained at " "layer {layer}.").format(
                uri=model["uri"], serialization=model["serialization"], layer=ctx["gradcam"]["layer"]
            ),
            "identity",
        ),
        _item(c, "", _("Software libraries and versions"), FILLED, versions + _("."), "provenance"),
        _item(c, "", _("Metrics of model performance"), FILLED, perf + _("."), "performance"),
        _item(
            c,
            "",
            _("Statistical measures of significance and uncertainty"),
            FILLED,
            _("{level}% intervals on every figure; DeLong's paired test against the champion when there is one.").format(
                level=CONFIDENCE_PERCENT
            ),
            "performance",
        ),
        _item(
            c,
            "",
            _("Robustness or sensitivity analysis"),
            PARTLY if subgroups else TO_COMPLETE,
            (
                _("{subgroups} subgroup results.").format(subgroups=subgroups)
                if subgroups
                else _("No covariates: no subgroup results.")
            ),
            "performance" if subgroups else None,
        ),
        _item(
            c,
            "",
            _("Methods for explainability or interpretability"),
            FILLED,
            _(
                "{name} (primary) and {other_name} from "
                "one gradient; outside-brain share, "
                "atlas region gains and a weight "
                "randomisation check, with the verdict "
                "they give."
            ).format(name=cam["name"], other_name=cam["other_name"]),
            "explainability",
        ),
        _item(
            c,
            "",
            _("Validation or testing on external data"),
            TO_COMPLETE,
            _("Whether this cohort is external to the " "training data is the study team's to state."),
        ),
        _item(
            c,
            "",
            _("Flow of participants"),
            FILLED,
            _("{n_subjects} evaluated, {excluded} excluded.").format(n_subjects=n["n_subjects"], excluded=excluded),
            "data",
        ),
        _item(
            c,
            "",
            _("Demographic and clinical characteristics"),
            FILLED if cohort["covariate_counts"] else TO_COMPLETE,
            (
                _("Per class and covariate ({covariates}).").format(covariates=covariates)
                if cohort["covariate_counts"]
                else _("No covariates recorded.")
            ),
            "data" if cohort["covariate_counts"] else None,
        ),
        _item(c, "", _("Estimates of diagnostic accuracy and their precision"), FILLED, perf + _("."), "performance"),
        _item(
            c,
            "",
            _("Failure analysis"),
            FILLED,
            _(
                "The most confident false positives and negatives with their "
                "maps "
                "(case gallery), and every excluded scan with its reason."
            ),
            "explainability",
        ),
        _item(
            c,
            "",
            _("Study limitations"),
            PARTLY,
            _("Warnings and limitations of this evaluation; the study's own " "are " "the study team's."),
            "intended-use",
        ),
        _item(
            c,
            "",
            _("Ethics approval, registration, protocol and funding"),
            TO_COMPLETE,
            _("Not known to the evaluation."),
        ),
    ]
    return rows


def checklist_json(rows: list[dict], ctx: dict) -> dict:
    """``checklist.json``: the rows with what they describe."""
    return {"schema_version": SCHEMA, "model": {"name": ctx["name"], "version": ctx["version"]},
            "run_id": ctx["run_id"], "standards": ["TRIPOD+AI (BMJ 2024)", "CLAIM 2024"],
            "counts": {s: sum(r["status"] == s for r in rows) for s in (FILLED, PARTLY, TO_COMPLETE)},
            "items": rows}  # fmt: skip
