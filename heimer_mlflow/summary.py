"""The model version's description: a Markdown summary of its latest evaluation, which MLflow
renders on the version page (the recommendation for the registry, verdict and reason, AUC,
sensitivity and specificity with their 95% intervals, the comparison with the champion, links
to the run, the reports, the interactive maps and the champion's version page).

The block opens the description. Its first line is plain text, the verdict in words
(``review · AUC 1.00 [1.00, 1.00] · +0.07 vs champion v1 (p 0.045) · review before promoting ·
heimer-mlflow``): the registered model's versions list previews only the first line of a
description (its first 32 characters, fewer where the column is narrow), so the verdict comes
first and our name last. The markers that delimit our block (HTML comments, invisible on the
version page) come after that line, so they are never what the list shows. The block replaces
only its own earlier block (the line before :data:`START` when it ends with our name, and
START..END): what people wrote stays as it was, after the block. The whole description stays within :data:`DESCRIPTION_LIMIT` characters
(the column's size on PostgreSQL and MySQL): our block shrinks (shorter reason, then fewer
lines), people's text is never cut; when their text alone leaves no room even for the smallest
block, the description keeps their text only (an older block of ours is taken out, since it
would describe an older evaluation) and a warning says so.

Links are relative to the MLflow UI (``#/experiments/<id>/runs/<run id>``, the run's artifact
viewer at ``.../artifacts/<path>``, ``#/models/<name>/versions/<v>``), so they work on whatever
host and path the UI is served from. Written by tracking.py once the run FINISHED, like the
version's tags. Torch-free.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from urllib.parse import quote

from .decision import Recommendation, p_text, recommend
from .i18n import N_, _, current_language
from .meta import CONFIDENCE_PERCENT

log = logging.getLogger(__name__)

HEADLINE_END = " · heimer-mlflow"  # how our first line (the versions list shows its start) ends
START = "<!-- heimer-mlflow summary: start -->"
END = "<!-- heimer-mlflow summary: end -->"
DESCRIPTION_LIMIT = 5000
FIGURES = (("roc_auc", "AUC"), ("sensitivity", N_("Sensitivity")), ("specificity", N_("Specificity")))
VERDICT_WORDS = {"pass": N_("pass"), "review": N_("review")}
GATE_WORDS = {"passed": N_("passed"), "failed": N_("failed")}


@dataclass(frozen=True)
class Summary:
    """What the block says, as plain data (built from an Evaluation by :func:`from_evaluation`)."""

    verdict: str
    reason: str
    metrics: dict  # run metrics: roc_auc, roc_auc_ci_lower, roc_auc_ci_upper, sensitivity, ...
    run_id: str
    experiment_id: str | None = None  # the evaluation run's experiment (for the UI's run page)
    report_uri: str | None = None  # the PDF's artifact URI
    report_path: str | None = None  # the PDF's path inside the run's artifacts (report/<name>-v<version>.pdf)
    html_path: str | None = None  # the HTML report's (report/html/index.html)
    viewers: tuple = ()  # (title, artifact path) of the interactive map viewers
    model_name: str | None = None
    n_subjects: int | None = None  # scans
    n_participants: int | None = None  # the people they come from (several sessions each, or one)
    evaluated_at: str = ""
    gate: str | None = None  # passed / failed, when promotion rules were given
    gate_failures: tuple = ()
    champion: dict | None = None  # Comparison.to_dict() when there was a champion to compare with
    champion_note: str = ""  # why there is no comparison although a champion exists
    recommendation: Recommendation | None = field(default=None)
    counterfactual: str | None = None  # what changes the score (the largest effect), in one sentence
    counterfactual_champion: str | None = None  # e.g. "this version depends more on what lies outside ... p < 0.001"

    @property
    def advice(self) -> Recommendation:
        if self.recommendation is not None:
            return self.recommendation
        m = self.metrics
        return recommend(verdict=self.verdict, verdict_reason=self.reason, auc=m.get("roc_auc"),
                         auc_lower=m.get("roc_auc_ci_lower"), auc_upper=m.get("roc_auc_ci_upper"),
                         champion=self.champion, gate=self.gate, gate_failures=self.gate_failures)


def run_route(experiment_id, run_id: str) -> str:
    """The run's page in the MLflow UI, relative to wherever the UI is served."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def artifact_route(experiment_id, run_id: str, path: str) -> str:
    """An artifact in the run's artifact viewer (the Artifacts tab, the file selected)."""
    return f"{run_route(experiment_id, run_id)}/artifacts/{quote(path)}"


def version_route(name: str, version) -> str:
    return f"#/models/{quote(str(name), safe='')}/versions/{version}"


def artifact_path(uri: str | None, run_id: str) -> str | None:
    """``report/x.pdf`` from an artifact URI of run ``run_id`` (``.../<run id>/artifacts/report/x.pdf``)."""
    if not uri:
        return None
    marker = f"{run_id}/artifacts/"
    if marker in uri:
        return uri.split(marker, 1)[1]
    return "report/" + uri.rsplit("/report/", 1)[1] if "/report/" in uri else None


def from_evaluation(evaluation, gate=None) -> Summary:
    """The summary of a finished evaluation (its run logged, its report rendered). ``gate``: the
    promotion gate's result (``gate.GateResult``), or its status text, or None."""
    import mlflow

    # links are relative to the MLflow UI: no tracking URI (nor its credentials) goes into them
    experiment_id = mlflow.MlflowClient().get_run(evaluation.run_id).info.experiment_id
    report = evaluation.artifacts.get("report")
    status = getattr(gate, "status", gate)
    failures = tuple(getattr(gate, "failures", ()) or ())
    metrics = evaluation.run_metrics
    viewers = tuple((title, path) for title, path in (getattr(evaluation, "viewers", None) or ()))
    return Summary(verdict=evaluation.verdict, reason=evaluation.verdict_reason, metrics=metrics,
                   run_id=evaluation.run_id, experiment_id=experiment_id, report_uri=report,
                   report_path=artifact_path(report, evaluation.run_id),
                   html_path=_html_path() if report else None, viewers=viewers,
                   model_name=evaluation.model.name,
                   n_subjects=int(metrics.get("n_subjects", 0)) or None,
                   n_participants=int(metrics.get("n_participants", 0)) or None, evaluated_at=evaluation.evaluated_at,
                   gate=status, gate_failures=failures,
                   champion=evaluation.comparison.to_dict() if evaluation.comparison else None,
                   champion_note=getattr(evaluation, "comparison_note", "") or "",
                   **_counterfactual_lines(evaluation.counterfactual))


def _html_path() -> str:
    """The HTML report of the evaluation's language (report_for_run logs a Korean one to report/html-ko)."""
    lang = current_language()
    return "report/html/index.html" if lang == "en" else f"report/html-{lang}/index.html"


def _counterfactual_lines(cf) -> dict:
    """The largest counterfactual effect, and the paired comparison with the champion, as sentences."""
    from .interventions import OUTSIDE, paired_sentence

    if cf is None or not cf.computed:
        return {}
    out = {}
    largest = cf.largest_effect()
    if largest is not None:
        name, drop = largest
        what = _("what lies outside the brain") if name == OUTSIDE else name.replace("_", " ")
        out["counterfactual"] = "**{}** ".format(_("What changes the score:")) + _(
            "replacing {what} with the {negative} average drops P({positive}) by {drop} ({level}% CI {lower} to {upper}; "
            "{n} subjects).").format(level=CONFIDENCE_PERCENT, what=what, negative=cf.negative_class, positive=cf.positive_class,
                                     drop=f"{drop.value:.2f}", lower=_format_number(drop.lower, 2),
                                     upper=_format_number(drop.upper, 2), n=cf.n_subjects)
    if cf.vs_champion:
        out["counterfactual_champion"] = f"{paired_sentence(cf.vs_champion[0])[0].upper()}{paired_sentence(cf.vs_champion[0])[1:]}."
    return out


def _format_number(value, digits: int = 3) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return _("n/a")
    return f"{value:.{digits}f}"


def _figure_rows(metrics: dict) -> list[str]:
    estimate, ci = _("estimate"), _("{level}% CI").format(level=CONFIDENCE_PERCENT)
    rows = [f"| | {estimate} | {ci} |", "|---|---|---|"]
    for key, label in FIGURES:
        lower, upper = metrics.get(f"{key}_ci_lower"), metrics.get(f"{key}_ci_upper")
        interval = (_("{lower} to {upper}").format(lower=_format_number(lower), upper=_format_number(upper))
                    if lower is not None and upper is not None else _("n/a"))
        rows.append(f"| {_(label)} | {_format_number(metrics.get(key))} | {interval} |")
    return rows


def _champion_line(s: Summary) -> str:
    champion = s.champion
    diff = champion.get("roc_auc_diff")
    if diff is None:
        figures = _("no AUC difference ({note})").format(note=champion.get("note") or _("not computable"))
    else:
        figures = _("AUC difference {diff} ({level}% CI {lower} to {upper}; DeLong p {p})").format(
            level=CONFIDENCE_PERCENT, diff=f"{diff:+.3f}", lower=_format_number(champion.get("roc_auc_diff_ci_lower")),
            upper=_format_number(champion.get("roc_auc_diff_ci_upper")), p=_format_number(champion.get("delong_p")))
    version = champion.get("champion_version")
    named = _("version {version}").format(version=version)
    if s.model_name and version:
        named = f"[{named}]({version_route(s.model_name, version)})"
    return "**{}** ".format(_("Against the champion")) + _(
        "({version}, on {n} shared subjects): {figures}; the champion's verdict: {verdict}.").format(
        version=named, n=champion.get("n_shared"), figures=figures,
        verdict=_verdict_word(champion.get("champion_verdict")) if champion.get("champion_verdict") else _("n/a"))


def _verdict_word(verdict: str | None) -> str:
    return _(VERDICT_WORDS[verdict]) if verdict in VERDICT_WORDS else str(verdict)


def _two(value) -> str:
    return _format_number(value, 2)


def headline(s: Summary) -> str:
    """The first line: what the versions list previews. Plain text (the list shows it raw)."""
    m = s.metrics
    parts = [_verdict_word(s.verdict), f"AUC {_two(m.get('roc_auc'))}"
             + (f" [{_two(m.get('roc_auc_ci_lower'))}, {_two(m.get('roc_auc_ci_upper'))}]"
                if m.get("roc_auc_ci_lower") is not None and m.get("roc_auc_ci_upper") is not None else "")]
    if s.champion:
        diff = s.champion.get("roc_auc_diff")
        version = s.champion.get("champion_version")
        if isinstance(diff, (int, float)) and math.isfinite(diff):
            parts.append(_("{diff} vs champion v{version} (p {p})").format(
                diff=f"{diff:+.2f}", version=version, p=p_text(s.champion.get("delong_p"))))
        else:
            parts.append(_("champion v{version}: no AUC difference").format(version=version))
    if s.gate:
        parts.append(_("gate {status}").format(status=_(GATE_WORDS.get(s.gate, s.gate))))
    parts.append(s.advice.short)
    return " · ".join(parts) + HEADLINE_END


def _links(s: Summary) -> str:
    """Links relative to the MLflow UI: the run's page, the reports and the map viewers in its
    artifact viewer. Without the experiment id (never, from an evaluation) the run id as text."""
    if s.experiment_id is None:
        parts = [_("Evaluation run {id}").format(id=f"`{s.run_id}`")] + (
            [_("report PDF {uri}").format(uri=f"`{s.report_uri}`")] if s.report_uri else [])
        return "; ".join(parts) + "."
    run = _("Evaluation run")
    links = [f"[{run}]({run_route(s.experiment_id, s.run_id)})"]
    for title, path in ((_("PDF report"), s.report_path), (_("HTML report"), s.html_path)):
        if path:
            links.append(f"[{title}]({artifact_route(s.experiment_id, s.run_id, path)})")
    if s.viewers:
        maps = ", ".join(f"[{title}]({artifact_route(s.experiment_id, s.run_id, path)})" for title, path in s.viewers)
        links.append(_("maps to scroll: {maps}").format(maps=maps))
    if s.champion and s.model_name and s.champion.get("champion_version"):
        version = s.champion["champion_version"]
        named = _("champion v{version}").format(version=version)
        links.append(f"[{named}]({version_route(s.model_name, version)})")
    return " · ".join(links)


def _clip(text: str, limit: int | None) -> str:
    text = " ".join(str(text).split())
    return text if limit is None or len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def _scans(s: Summary) -> str:
    if s.n_participants and s.n_participants < (s.n_subjects or 0):
        return _("{n} scans of {participants} participants (intervals resample participants)").format(
            n=s.n_subjects, participants=s.n_participants)
    return _("{n} subjects").format(n=s.n_subjects)


def render(s: Summary, *, level: int = 0) -> str:
    """The block: the headline, then the markers around the rest. ``level`` 0 is the full block;
    1 shortens the reason and the recommendation; 2 keeps the verdict, the figures and the links;
    3 the headline and the run's link."""
    verdict = "**{}**".format(_("Verdict: {verdict}").format(verdict=_verdict_word(s.verdict)))
    if level <= 1:
        verdict += f": {_clip(s.reason, None if level == 0 else 200)}"
    if s.gate:
        verdict += " " + _("(promotion gate: {status})").format(status=_(GATE_WORDS.get(s.gate, s.gate)))
    lines = [headline(s), "", START, "#### " + _("heimer-mlflow evaluation"), ""]
    if level <= 1:
        lines += ["**{}** {}".format(_("Recommendation: {action}.").format(action=s.advice.short),
                                     _clip(s.advice.why, None if level == 0 else 300)), ""]
    if level <= 2:
        lines += [verdict, ""]
        lines += _figure_rows(s.metrics) + [""]
        if s.counterfactual and level <= 1:
            lines += [s.counterfactual, ""]
        if s.champion and level <= 1:
            lines += [_champion_line(s), ""]
            if s.counterfactual_champion:
                lines += [s.counterfactual_champion, ""]
        elif s.champion_note and level <= 1:
            lines += ["**{}**: {}".format(_("No comparison with the champion"),
                                          _clip(s.champion_note, None if level == 0 else 300)), ""]
        lines += [_links(s), ""]
        if level == 0 and s.evaluated_at:
            lines += [(_("Evaluated {when} on {scans}.").format(when=s.evaluated_at, scans=_scans(s)) if s.n_subjects
                       else _("Evaluated {when}.").format(when=s.evaluated_at)), ""]
    else:
        lines += [_links(s) if s.experiment_id is not None else _("Evaluation run {id}").format(
            id=f"`{s.run_id}`") + ".",
                  ""]
    lines.append(END)
    return "\n".join(lines)


def _block_span(text: str) -> tuple[int, int] | None:
    """Where our block lies in ``text`` (start, end), with its headline: the last non-empty line
    before START when it is ours."""
    start = text.find(START)
    if start < 0:
        return None
    end = text.find(END, start)
    end = len(text) if end < 0 else end + len(END)
    before = text[:start].rstrip("\n")
    line_start = before.rfind("\n") + 1
    if before[line_start:].endswith(HEADLINE_END):
        start = line_start
    return start, end


def people_text(description: str | None) -> str:
    """The description without our block (everything people wrote, as they wrote it)."""
    text = description or ""
    span = _block_span(text)
    if span is None:
        return text
    before, after = text[: span[0]].rstrip("\n"), text[span[1]:].lstrip("\n")
    return before + ("\n\n" if before and after else "") + after


def merge(description: str | None, summary: Summary, limit: int = DESCRIPTION_LIMIT) -> tuple[str, int | None]:
    """(the new description, the level of the block that fitted, or None when none did).

    The block opens the description (its headline is what the versions list shows); people's
    text follows, unchanged (also when an older layout had put our block after it)."""
    people = people_text(description)
    after = ("\n\n" + people) if people.strip() else ""
    for level in range(4):
        merged = render(summary, level=level) + after
        if len(merged) <= limit:
            return merged, level
    return people, None


def write(client, name: str, version: str, summary: Summary) -> None:
    """Merge the block into the version's description (never fails the evaluation: a store
    problem is a warning, the run and the tags are already there)."""
    try:
        current = client.get_model_version(name, version).description
        merged, level = merge(current, summary)
        if level is None:
            log.warning("%s version %s: its description leaves no room for the evaluation summary within "
                        "%d characters; the summary is left out (the tags and the run have it)",
                        name, version, DESCRIPTION_LIMIT)
        if merged != (current or ""):
            client.update_model_version(name, version, description=merged)
    except Exception as error:  # noqa: BLE001 - see the docstring
        log.warning("%s version %s: the evaluation summary could not be written to its description (%s: %s)",
                    name, version, type(error).__name__, error)
