"""The model version's description: a Markdown summary of its latest evaluation, which MLflow
renders on the version page (verdict and reason, AUC, sensitivity and specificity with their
95% intervals, the comparison with the champion, links to the run and the PDF).

The summary sits between two markers and replaces only its own earlier block: what people
wrote in the description stays as it was. The whole description stays within
:data:`DESCRIPTION_LIMIT` characters (the column's size on PostgreSQL and MySQL): our block
shrinks (shorter reason, then fewer lines), people's text is never cut; when their text alone
leaves no room even for the smallest block, the description keeps their text only (an older
block of ours is taken out, since it would describe an older evaluation) and a warning says
so. Written by tracking.py once the run FINISHED, like the version's tags. Torch-free.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from urllib.parse import quote

log = logging.getLogger(__name__)

START = "<!-- heimer-mlflow summary: start -->"
END = "<!-- heimer-mlflow summary: end -->"
DESCRIPTION_LIMIT = 5000
FIGURES = (("roc_auc", "AUC"), ("sensitivity", "Sensitivity"), ("specificity", "Specificity"))


@dataclass(frozen=True)
class Summary:
    """What the block says, as plain data (built from an Evaluation by :func:`from_evaluation`)."""

    verdict: str
    reason: str
    metrics: dict  # run metrics: roc_auc, roc_auc_ci_lower, roc_auc_ci_upper, sensitivity, ...
    run_id: str
    run_url: str | None = None  # the run's page when the tracking URI is http(s)
    report_uri: str | None = None  # the PDF's artifact URI
    report_url: str | None = None  # the PDF through the tracking server, when http(s)
    n_subjects: int | None = None  # scans
    n_participants: int | None = None  # the people they come from (several sessions each, or one)
    evaluated_at: str = ""
    gate: str | None = None  # passed / failed, when promotion rules were given
    champion: dict | None = None  # Comparison.to_dict() when there was a champion to compare with
    counterfactual: str | None = None  # what changes the score (the largest effect), in one sentence
    counterfactual_champion: str | None = None  # e.g. "this version depends more on what lies outside ... p < 0.001"


def from_evaluation(evaluation, gate: str | None = None, tracking_uri: str | None = None) -> Summary:
    """The summary of a finished evaluation (its run logged, its report rendered)."""
    import mlflow

    uri = tracking_uri or mlflow.get_tracking_uri()
    report = evaluation.artifacts.get("report")
    run_url = report_url = None
    if uri.startswith(("http://", "https://")):
        base = uri.rstrip("/")
        experiment_id = mlflow.MlflowClient().get_run(evaluation.run_id).info.experiment_id
        run_url = f"{base}/#/experiments/{experiment_id}/runs/{evaluation.run_id}"
        if report and "/report/" in report:
            path = "report/" + report.rsplit("/report/", 1)[1]
            report_url = f"{base}/get-artifact?path={quote(path)}&run_uuid={evaluation.run_id}"
    metrics = evaluation.run_metrics
    return Summary(verdict=evaluation.verdict, reason=evaluation.verdict_reason, metrics=metrics,
                   run_id=evaluation.run_id, run_url=run_url, report_uri=report, report_url=report_url,
                   n_subjects=int(metrics.get("n_subjects", 0)) or None,
                   n_participants=int(metrics.get("n_participants", 0)) or None, evaluated_at=evaluation.evaluated_at,
                   gate=gate, champion=evaluation.comparison.to_dict() if evaluation.comparison else None,
                   **_counterfactual_lines(evaluation.counterfactual))  # fmt: skip


def _counterfactual_lines(cf) -> dict:
    """The largest counterfactual effect, and the paired comparison with the champion, as sentences."""
    from .interventions import OUTSIDE, paired_sentence

    if cf is None or not cf.computed:
        return {}
    out = {}
    largest = cf.largest_effect()
    if largest is not None:
        name, drop = largest
        what = "what lies outside the brain" if name == OUTSIDE else name.replace("_", " ")
        out["counterfactual"] = (f"**What changes the score:** replacing {what} with the {cf.negative_class} average "
                                 f"drops P({cf.positive_class}) by {drop.value:.2f} (95% CI {_number(drop.lower, 2)} to "
                                 f"{_number(drop.upper, 2)}; {cf.n_subjects} subjects).")  # fmt: skip
    if cf.vs_champion:
        out["counterfactual_champion"] = f"{paired_sentence(cf.vs_champion[0])[0].upper()}{paired_sentence(cf.vs_champion[0])[1:]}."
    return out


def _number(value, digits: int = 3) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _figure_rows(metrics: dict) -> list[str]:
    rows = ["| | estimate | 95% CI |", "|---|---|---|"]
    for key, label in FIGURES:
        lower, upper = metrics.get(f"{key}_ci_lower"), metrics.get(f"{key}_ci_upper")
        interval = f"{_number(lower)} to {_number(upper)}" if lower is not None and upper is not None else "n/a"
        rows.append(f"| {label} | {_number(metrics.get(key))} | {interval} |")
    return rows


def _champion_line(champion: dict) -> str:
    diff = champion.get("roc_auc_diff")
    if diff is None:
        figures = f"no AUC difference ({champion.get('note') or 'not computable'})"
    else:
        figures = (f"AUC difference {diff:+.3f} (95% CI {_number(champion.get('roc_auc_diff_ci_lower'))} to "
                   f"{_number(champion.get('roc_auc_diff_ci_upper'))}; DeLong p {_number(champion.get('delong_p'))})")
    return (f"**Against the champion** (version {champion.get('champion_version')}, on "
            f"{champion.get('n_shared')} shared subjects): {figures}; the champion's verdict: "
            f"{champion.get('champion_verdict') or 'n/a'}.")


def _links(s: Summary) -> str:
    run = f"[{s.run_id}]({s.run_url})" if s.run_url else f"`{s.run_id}`"
    parts = [f"Evaluation run {run}"]
    if s.report_url:
        parts.append(f"report [PDF]({s.report_url}) (`{s.report_uri}`)")
    elif s.report_uri:
        parts.append(f"report PDF `{s.report_uri}`")
    return "; ".join(parts) + "."


def _clip(text: str, limit: int | None) -> str:
    text = " ".join(str(text).split())
    return text if limit is None or len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def _scans(s: Summary) -> str:
    if s.n_participants and s.n_participants < (s.n_subjects or 0):
        return f"{s.n_subjects} scans of {s.n_participants} participants (intervals resample participants)"
    return f"{s.n_subjects} subjects"


def render(s: Summary, *, level: int = 0) -> str:
    """The block, markers included. ``level`` 0 is the full block; 1 shortens the reason; 2 keeps
    the verdict, the figures and the links; 3 the verdict, the AUC and the run id."""
    verdict = f"**Verdict: {s.verdict}**"
    if level <= 1:
        verdict += f": {_clip(s.reason, None if level == 0 else 200)}"
    if s.gate:
        verdict += f" (promotion gate: {s.gate})"
    lines = [START, "#### heimer-mlflow evaluation", "", verdict, ""]
    if level <= 2:
        lines += _figure_rows(s.metrics) + [""]
        if s.counterfactual and level <= 1:
            lines += [s.counterfactual, ""]
        if s.champion and level <= 1:
            lines += [_champion_line(s.champion), ""]
            if s.counterfactual_champion:
                lines += [s.counterfactual_champion, ""]
        lines.append(_links(s))
        if level == 0 and s.evaluated_at:
            lines.append(f"Evaluated {s.evaluated_at}" + (f" on {_scans(s)}." if s.n_subjects else "."))
    else:
        lines.append(f"AUC {_number(s.metrics.get('roc_auc'))}; evaluation run `{s.run_id}`.")
    lines.append(END)
    return "\n".join(lines)


def people_text(description: str | None) -> str:
    """The description without our block (everything people wrote, as they wrote it)."""
    text = description or ""
    start = text.find(START)
    if start < 0:
        return text
    end = text.find(END, start)
    end = len(text) if end < 0 else end + len(END)
    before, after = text[:start].rstrip("\n"), text[end:].lstrip("\n")
    return before + ("\n\n" if before and after else "") + after


def merge(description: str | None, summary: Summary, limit: int = DESCRIPTION_LIMIT) -> tuple[str, int | None]:
    """(the new description, the level of the block that fitted, or None when none did).

    The block goes where our earlier block was, else after people's text."""
    text = description or ""
    start = text.find(START)
    if start >= 0:
        end = text.find(END, start)
        end = len(text) if end < 0 else end + len(END)
        before, after = text[:start], text[end:]
    else:
        before, after = (text.rstrip("\n") + "\n\n") if text.strip() else "", ""
    for level in range(4):
        merged = before + render(summary, level=level) + after
        if len(merged) <= limit:
            return merged, level
    return people_text(description), None


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
