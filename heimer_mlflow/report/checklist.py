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

FILLED, PARTLY, TO_COMPLETE = "filled", "partly filled", "to be completed by the study team"
# report sections an item can point at: anchor -> name (the template's section ids)
SECTIONS = {"facts": "Model Facts", "summary": "Summary", "identity": "Model identity",
            "intended-use": "Intended use and limitations", "data": "Data", "performance": "Performance",
            "explainability": "Explainability", "features": "Feature maps and raw data baseline",
            "comparison": "Comparison with the champion", "provenance": "Appendix A: Provenance"}  # fmt: skip
SCHEMA = 1


def _item(standard: str, item: str, topic: str, status: str, text: str, section: str | None = None) -> dict:
    return {"standard": standard, "item": item, "topic": topic, "status": status, "text": text,
            "section": section, "section_name": SECTIONS.get(section) if section else None}


def build_checklist(ctx: dict) -> list[dict]:
    """The checklist's rows, from the report's template context (plain data)."""
    facts, cohort, n, model, cam = ctx["facts"], ctx["cohort"], ctx["n"], ctx["model"], ctx["cam"]
    pop = facts["population_detail"]
    perf = "; ".join(f"{p['label']} {p['value']}" + (f" ({p['ci']})" if p["ci"] else "") for p in facts["performance"])
    excluded = cohort["n_excluded"] if cohort["n_excluded"] not in ("-", "") else "0"
    sites = (f"{pop['n_sites']} sites recorded in column '{pop['site_column']}' ({pop['sites']})" if pop["n_sites"]
             else "the manifest records no site")
    covariates = ", ".join(cohort["covariates"]) or "none"
    subgroups = len(ctx["subgroups"])
    versions = ", ".join(f"{k} {v}" for k, v in ctx["versions"]) or "not recorded"
    design = (f"Evaluation of the registered model {ctx['display_name']}"
              + (f" version {ctx['version']}" if ctx["version"] else "") + f" ({model['uri']}).")
    t, c = "TRIPOD+AI", "CLAIM 2024"
    rows = [
        _item(t, "1", "Title", FILLED, f"{ctx['title']}: evaluation of a deep-learning (3D CNN) classifier of "
              f"{ctx['positive']} versus {ctx['negative']} on brain MRI.", "facts"),
        _item(t, "3b", "Target population and intended users", PARTLY, f"Evaluation data: {facts['population']}. "
              "Intended users and the place in the care pathway are the study team's to state.", "facts"),
        _item(t, "4", "Objectives", PARTLY, design + " Whether this is an internal or external validation is the "
              "study team's to state.", "identity"),
        _item(t, "5a", "Data sources", FILLED, f"Manifest {cohort['source']}; {facts['data_line']}", "data"),
        _item(t, "5b", "Dates of the data", FILLED if pop["dates"] else TO_COMPLETE,
              (pop["dates"] or "the manifest records no scan dates") + ".", "data" if pop["dates"] else None),
        _item(t, "6a", "Setting, number and location of centres", PARTLY, f"{sites}; their locations are the study "
              "team's to state.", "data"),
        _item(t, "6b", "Eligibility criteria", PARTLY, f"Technical: readable NIfTI, shape {model['input_shape']}, "
              f"finite voxels; {excluded} scans excluded with their reasons. Clinical criteria are the study team's.",
              "data"),
        _item(t, "7", "Data preparation", FILLED, f"Per-volume intensity normalisation '{model['intensity']}', input "
              f"shape {model['input_shape']}; no other preprocessing by the evaluation.", "data"),
        _item(t, "8a", "Outcome", PARTLY, f"{ctx['positive']} versus {ctx['negative']} as labelled in the manifest; how "
              "and by whom the diagnosis was made is the study team's to state.", "data"),
        _item(t, "9a", "Predictors", FILLED, f"The 3D MRI volume only (input {model['input_shape']}).", "identity"),
        _item(t, "10", "Sample size", PARTLY, f"{n['n_subjects']} scans ({n['n_positive']} {ctx['positive']}, "
              f"{n['n_negative']} {ctx['negative']})" + (f" of {n['n_participants']} participants" if n["clustered"]
              else "") + "; how the size was arrived at is the study team's to state.", "data"),
        _item(t, "11", "Missing data", FILLED, f"{excluded} scans could not be evaluated and are listed with the "
              "reason; no imputation.", "data"),
        _item(t, "12", "Analytical methods: performance measures", FILLED, f"AUC with stratified bootstrap "
              f"({ctx['n_bootstrap']} resamples) and DeLong intervals; Wilson intervals for proportions; calibration, "
              "decision curve.", "performance"),
        _item(t, "14", "Fairness", PARTLY if subgroups else TO_COMPLETE,
              f"Results in {subgroups} subgroups of the covariates ({covariates})." if subgroups
              else "The manifest has no covariates, so no subgroup results.", "performance" if subgroups else None),
        _item(t, "15", "Model output", FILLED, facts["output"], "facts"),
        _item(t, "16", "Training versus evaluation data", PARTLY, f"Training run {model['source_run_id']}; the "
              "differences between its data and this cohort are the study team's to state.", "identity"),
        _item(t, "17", "Ethical approval", TO_COMPLETE, "Not known to the evaluation."),
        _item(t, "18a", "Funding", TO_COMPLETE, "Not known to the evaluation."),
        _item(t, "18b", "Conflicts of interest", TO_COMPLETE, "Not known to the evaluation."),
        _item(t, "18c", "Protocol", TO_COMPLETE, "Not known to the evaluation."),
        _item(t, "18d", "Registration", TO_COMPLETE, "Not known to the evaluation."),
        _item(t, "18e", "Data sharing", TO_COMPLETE, "Not known to the evaluation."),
        _item(t, "18f", "Code sharing", PARTLY, f"Evaluation software and versions: {versions}; the model's own code "
              "is the study team's to share.", "provenance"),
        _item(t, "19", "Patient and public involvement", TO_COMPLETE, "Not known to the evaluation."),
        _item(t, "20a", "Flow of participants", FILLED, f"{n['n_subjects']} scans evaluated, {excluded} excluded.",
              "data"),
        _item(t, "20b", "Characteristics of participants", FILLED if cohort["covariate_counts"] else TO_COMPLETE,
              f"Scans per class and covariate ({covariates})." if cohort["covariate_counts"]
              else "The manifest has no covariates.", "data" if cohort["covariate_counts"] else None),
        _item(t, "23a", "Model performance", FILLED, perf + ".", "performance"),
        _item(t, "23b", "Heterogeneity across clusters (sites)", FILLED if pop["n_sites"] and pop["n_sites"] > 1
              else TO_COMPLETE, "Results per site in the subgroup table." if pop["n_sites"] and pop["n_sites"] > 1
              else "The data record one site or none.", "performance" if pop["n_sites"] else None),
        _item(t, "26", "Limitations", PARTLY, "Warnings on the Model Facts page and the limitations section; the "
              "study's own limitations are the study team's.", "intended-use"),
        _item(c, "", "Data sources", FILLED, f"Manifest {cohort['source']}.", "data"),
        _item(c, "", "Eligibility criteria", PARTLY, "Technical criteria and exclusions listed; clinical criteria to be "
              "stated.", "data"),
        _item(c, "", "Data pre-processing", FILLED, f"Intensity '{model['intensity']}', shape {model['input_shape']}.",
              "data"),
        _item(c, "", "De-identification", TO_COMPLETE, "Not known to the evaluation."),
        _item(c, "", "Missing data", FILLED, f"{excluded} scans excluded, each with its reason.", "data"),
        _item(c, "", "Reference standard (ground truth) and its source", TO_COMPLETE, "The labels come from the "
              "manifest; their definition, source and annotators are the study team's to state."),
        _item(c, "", "Data partitions", TO_COMPLETE, "The evaluation sees this cohort only; how it was kept apart "
              "from the training data (at participant level) is the study team's to state."),
        _item(c, "", "Detailed model description", PARTLY, f"Model {model['uri']}, format {model['serialization']}, "
              f"explained at layer {ctx['gradcam']['layer']}.", "identity"),
        _item(c, "", "Software libraries and versions", FILLED, versions + ".", "provenance"),
        _item(c, "", "Metrics of model performance", FILLED, perf + ".", "performance"),
        _item(c, "", "Statistical measures of significance and uncertainty", FILLED, "95% intervals on every figure; "
              "DeLong's paired test against the champion when there is one.", "performance"),
        _item(c, "", "Robustness or sensitivity analysis", PARTLY if subgroups else TO_COMPLETE,
              f"{subgroups} subgroup results." if subgroups else "No covariates: no subgroup results.",
              "performance" if subgroups else None),
        _item(c, "", "Methods for explainability or interpretability", FILLED, f"{cam['name']} (primary) and "
              f"{cam['other_name']} from one gradient; outside-brain share, atlas region gains and a weight "
              "randomisation check, with the verdict they give.", "explainability"),
        _item(c, "", "Validation or testing on external data", TO_COMPLETE, "Whether this cohort is external to the "
              "training data is the study team's to state."),
        _item(c, "", "Flow of participants", FILLED, f"{n['n_subjects']} evaluated, {excluded} excluded.", "data"),
        _item(c, "", "Demographic and clinical characteristics", FILLED if cohort["covariate_counts"] else TO_COMPLETE,
              f"Per class and covariate ({covariates})." if cohort["covariate_counts"] else "No covariates recorded.",
              "data" if cohort["covariate_counts"] else None),
        _item(c, "", "Estimates of diagnostic accuracy and their precision", FILLED, perf + ".", "performance"),
        _item(c, "", "Failure analysis", FILLED, "The most confident false positives and negatives with their maps "
              "(case gallery), and every excluded scan with its reason.", "explainability"),
        _item(c, "", "Study limitations", PARTLY, "Warnings and limitations of this evaluation; the study's own are "
              "the study team's.", "intended-use"),
        _item(c, "", "Ethics approval, registration, protocol and funding", TO_COMPLETE, "Not known to the evaluation."),
    ]
    return rows


def checklist_json(rows: list[dict], ctx: dict) -> dict:
    """``checklist.json``: the rows with what they describe."""
    return {"schema_version": SCHEMA, "model": {"name": ctx["name"], "version": ctx["version"]},
            "run_id": ctx["run_id"], "standards": ["TRIPOD+AI (BMJ 2024)", "CLAIM 2024"],
            "counts": {s: sum(r["status"] == s for r in rows) for s in (FILLED, PARTLY, TO_COMPLETE)},
            "items": rows}  # fmt: skip
