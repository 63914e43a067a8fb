"""The evaluation report: an evaluation run's artifact folder in, a PDF and its HTML out.

``render_report(artifact_dir, out_dir)`` reads only what an evaluation logged
(``evaluation.json``, ``metrics.json``, ``predictions.csv``, ``exclusions.csv``,
``figures/*.png``), so a report can be re-rendered later without the model or the data.
``report_for_run(run_id)`` downloads those artifacts from MLflow, finds the champion to compare
with, renders, logs ``report/...`` to the run and tags the model version with the PDF's URI.

The HTML (``out_dir/html/index.html`` with its figures and stylesheet, relative links) is
rendered from the Jinja2 templates in ``templates/`` and is what the PDF is printed from, with
WeasyPrint. Hardening:

- every value from the registry or the manifest (names, descriptions, tags, covariates, subject
  ids) is escaped as text (``autoescape=True``), the templates fail on undefined names
  (``StrictUndefined``);
- WeasyPrint fetches through ``AssetFetcher``, which serves only regular files inside the
  report's own asset folder and ``data:`` URIs; anything else (other files, http(s), ftp, ...)
  is refused and counted;
- attachments (``metrics.json``, ``predictions.csv``) are added through the API only, so no
  text in the document can attach a file;
- with ``SOURCE_DATE_EPOCH`` set, two renders of the same folder are byte-identical (every
  date in the document and the PDF comes from it; else from the evaluation's time).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import math
import mimetypes
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .champion import TABLE_METRICS
from .meta import CAM_NAMES
from .resources import templates_dir

log = logging.getLogger(__name__)

REPORT_CSS = "report.css"
TEMPLATE = "report.html.j2"
PDF_VARIANT = "pdf/a-3b"
MAX_SANITY_SPEARMAN = 0.5  # mirrors heimer_mlflow.evaluation (not imported: it pulls in torch)
MAX_OUTSIDE_BRAIN_EXCESS = 0.10  # idem: above the floor the target layer's resolution imposes
MAX_FIGURE_PIXELS = 40_000_000  # a larger "figure" is refused (decompression bombs)
MAX_TEXT = 4000  # registry text (description, tag values) longer than this is cut, with a note
MAX_TAGS = 200
REPORT_ARTIFACTS = ("evaluation.json", "metrics.json", "predictions.csv", "exclusions.csv")
# The base URL the PDF is rendered under: a fixed, virtual folder that AssetFetcher maps to the
# report's asset folder, so image ids (hashes of their URLs) do not depend on out_dir.
ASSET_BASE_URL = "file:///heimer-report-assets/"
_FIGURE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}\.png$")


@dataclass
class ReportFiles:
    """What ``render_report`` wrote: the PDF and the folder with ``index.html``."""

    pdf: Path
    html_dir: Path
    pages: int = 0
    refused_urls: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def html(self) -> Path:
        return self.html_dir / "index.html"


# --------------------------------------------------------------------------------------------
# URL fetching: the report's own assets and data: URIs, nothing else
# --------------------------------------------------------------------------------------------


def _url_fetcher_base():
    from weasyprint.urls import URLFetcher

    return URLFetcher


class RefusedURL(ValueError):
    """A URL the report's fetcher does not serve."""


def make_fetcher(root: Path):
    """An ``AssetFetcher`` (a ``weasyprint.urls.URLFetcher``) for the asset folder ``root``."""
    base = _url_fetcher_base()

    class AssetFetcher(base):
        """Serves regular files inside ``root`` and ``data:`` URIs; refuses (raises on)
        everything else and records it in ``refused``."""

        def __init__(self, root: Path):
            super().__init__(timeout=1, allowed_protocols=("file", "data"), allow_redirects=False)
            self.root = Path(root).resolve()
            self.refused: list[str] = []
            self.served: list[str] = []

        def fetch(self, url, headers=None):
            from weasyprint.urls import URLFetcherResponse

            text = str(url)
            scheme = text.split(":", 1)[0].lower() if ":" in text else ""
            if scheme == "data":
                self.served.append(text[:40])
                return super().fetch(text, headers)
            if scheme == "file":
                parts = urlsplit(text)
                if parts.netloc not in ("", "localhost"):
                    return self._refuse(text)
                try:
                    if text.startswith(ASSET_BASE_URL):
                        # the document's own base: relative links resolve here, whatever the out_dir
                        path = (self.root / unquote(urlsplit(text[len(ASSET_BASE_URL):]).path)).resolve()
                    else:
                        path = Path(unquote(parts.path)).resolve()
                except (OSError, RuntimeError, ValueError):
                    return self._refuse(text)
                if path.is_relative_to(self.root) and path.is_file():
                    body = path.read_bytes()
                    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                    self.served.append(str(path))
                    return URLFetcherResponse(text, body, {"Content-Type": kind})
            return self._refuse(text)

        def _refuse(self, url: str):
            self.refused.append(url)
            raise RefusedURL(f"the report only loads its own assets; refused {url[:200]!r}")

    return AssetFetcher(root)


# --------------------------------------------------------------------------------------------
# Reading the artifact folder (every piece optional: a missing piece becomes a note)
# --------------------------------------------------------------------------------------------


def _read_json(path: Path, problems: list[str]) -> dict:
    if not path.is_file():
        problems.append(f"{path.name} is missing")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        problems.append(f"{path.name} could not be read ({type(error).__name__})")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path.name} is not a JSON object")
        return {}
    return data


def _read_csv(path: Path, problems: list[str], *, required: bool = True):
    import pandas as pd

    if not path.is_file():
        if required:
            problems.append(f"{path.name} is missing")
        return None
    try:
        return pd.read_csv(path, dtype={"subject_id": str}, keep_default_na=False, na_values=[""])
    except Exception as error:  # noqa: BLE001 - any unreadable table becomes a note
        problems.append(f"{path.name} could not be read ({type(error).__name__})")
        return None


def _d(value) -> dict:
    return value if isinstance(value, dict) else {}


def _l(value) -> list:
    return value if isinstance(value, list) else []


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _png_ok(path: Path) -> bool:
    """A regular, decodable PNG (a broken file becomes a note, never a broken image)."""
    if path.is_symlink() or not path.is_file() or path.stat().st_size > 50_000_000:
        return False
    try:
        from PIL import Image

        with Image.open(path) as image:
            if image.format != "PNG" or image.width * image.height > MAX_FIGURE_PIXELS:
                return False
            image.verify()
        return True
    except Exception:  # noqa: BLE001
        return False


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------

PERCENT = {"accuracy", "balanced_accuracy", "sensitivity", "specificity", "ppv", "npv"}
METRIC_LABELS = {
    "roc_auc": ("AUC (area under the ROC curve)", "how well scores separate AD from CN; 0.5 is chance, 1 is perfect"),
    "roc_auc_delong": ("AUC, DeLong interval", "the same AUC with an analytic interval"),
    "accuracy": ("Accuracy", "share of all subjects classified correctly"),
    "balanced_accuracy": ("Balanced accuracy", "mean of sensitivity and specificity"),
    "sensitivity": ("Sensitivity", "share of AD subjects called AD"),
    "specificity": ("Specificity", "share of CN subjects called CN"),
    "ppv": ("Positive predictive value (PPV)", "share of AD calls that are AD"),
    "npv": ("Negative predictive value (NPV)", "share of CN calls that are CN"),
    "f1": ("F1 score", "harmonic mean of PPV and sensitivity"),
    "brier_score": ("Brier score", "mean squared error of the probabilities; lower is better"),
    "log_loss": ("Log loss", "penalty for confident wrong probabilities; lower is better"),
    "expected_calibration_error": ("Expected calibration error (ECE)",
                                   "mean gap between predicted and observed; lower is better"),
    "calibration_slope": ("Calibration slope", "1 is ideal; below 1: over-confident, above 1: under-confident"),
    "calibration_intercept": ("Calibration intercept", "0 is ideal"),
}


def _fmt_value(value, name: str = "", digits: int = 2) -> str:
    number = _num(value)
    if number is None:
        return "n/a"
    if name in PERCENT:
        return f"{number * 100:.0f}%"
    return f"{number:.{digits}f}"


def _fmt_ci(est, name: str = "") -> str:
    est = _d(est)
    lower, upper = _num(est.get("lower")), _num(est.get("upper"))
    if lower is None or upper is None:
        return "-"
    if name in PERCENT:
        return f"{lower * 100:.0f}% to {upper * 100:.0f}%"
    return f"{lower:.2f} to {upper:.2f}"


def _fmt_est(est, name: str = "") -> str:
    """'0.85 (95% CI 0.73 to 0.93)', or 'not computable: reason'."""
    est = _d(est)
    if _num(est.get("value")) is None:
        return f"not computable: {est.get('reason') or 'no value'}"
    ci = _fmt_ci(est, name)
    value = _fmt_value(est.get("value"), name)
    return value if ci == "-" else f"{value} (95% CI {ci})"


def _fmt_num(value, digits: int = 2) -> str:
    number = _num(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


def _fmt_pct(value, digits: int = 0) -> str:
    number = _num(value)
    return "n/a" if number is None else f"{number * 100:.{digits}f}%"


def _text(value) -> str:
    """Any JSON value as display text (escaping is the template's job)."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else f"{text[:limit]} ... [cut: {len(text) - limit} more characters]"


def _safe_file_part(text, fallback: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text or "")).strip("._-")[:100]
    return cleaned or fallback


def report_file_name(name, version) -> str:
    """``<model-name>-v<version>.pdf``, file-name safe (``model-v-.pdf`` when unregistered)."""
    return f"{_safe_file_part(name, 'model')}-v{_safe_file_part(version, '-')}.pdf"


# --------------------------------------------------------------------------------------------
# Figures: what each shows and what to look for
# --------------------------------------------------------------------------------------------

# name: (title, caption, size); size (a CSS class, see report.css): small | medium | wide | brain (brain
# views, at the full text width). {pos}/{neg}: the classes; {cam}: the primary map's name (Grad-CAM or HiResCAM).
FIGURES: dict[str, tuple[str, str, str]] = {
    "training_curves": ("Training curves",
        "Accuracy and loss per epoch on the training and validation data, from the model's training run. "
        "Look for validation curves that follow the training curves: a widening gap means over-fitting.", "wide"),
    "roc": ("ROC curve",
        "Sensitivity against 1 - specificity for every threshold; the AUC with its 95% interval is in the legend "
        "and the dot is the operating threshold. The further the curve bows to the top left, the better; the "
        "diagonal is chance.", "small"),
    "score_histogram": ("Prediction scores per true class",
        "The model's probability of {pos} for subjects who are {pos} and who are {neg} (colours in the legend), with "
        "the threshold. "
        "Look for two well separated humps; overlap around the threshold is where the errors are.", "small"),
    "confusion_matrix": ("Confusion matrix",
        "Counts of true and predicted classes at the threshold. The diagonal holds the correct calls; "
        "the off-diagonal cells are the false positives and false negatives.", "small"),
    "calibration": ("Calibration (reliability) curve",
        "Observed share of {pos} against the predicted probability, in bins. Points on the diagonal mean the "
        "probabilities can be read at face value; below it the model is over-confident about {pos}.", "small"),
    "decision_curve": ("Decision curve",
        "Net benefit of acting on the model's calls compared with treating everyone or no one, across "
        "threshold probabilities. The model is useful where its curve lies above both reference lines.", "small"),
    "subgroups": ("Results per subgroup",
        "Sensitivity, specificity and AUC with 95% intervals per subgroup. Look for subgroups whose "
        "intervals lie clearly below the others: the model may not work as well for them.", "wide"),
    "group_cam": ("Group-mean {cam} and the {pos} - {neg} difference",
        "Where the model looks, averaged over each true class, and the difference between the classes "
        "(red: more attention in {pos}, blue: more in {neg}). Plausible maps highlight the hippocampus and the "
        "ventricles; attention on the skull, the edges or the background suggests a shortcut.", "brain"),
    "gradcam_TP": ("Case gallery: most confident true positives",
        "{cam} over the MRI of the {pos} subjects the model was most sure about and right. "
        "Look for attention inside the brain, in the same regions as the group map.", "brain"),
    "gradcam_TN": ("Case gallery: most confident true negatives",
        "{cam} of the {neg} subjects the model was most sure about and right.", "brain"),
    "gradcam_FP": ("Case gallery: false positives",
        "{neg} subjects the model called {pos}, most confident first. Look for what drew the model's attention: "
        "an artefact, an unusual anatomy, or the regions it uses for true {pos} cases.", "brain"),
    "gradcam_FN": ("Case gallery: false negatives",
        "{pos} subjects the model called {neg}, most confident first. Look for whether the typical regions "
        "received little attention.", "brain"),
    "cam_outside_brain": ("{cam} outside the brain per subject",
        "The share of each subject's {cam} that lies outside the brain (the brain mask given to the evaluation, "
        "else the scan's non-background voxels), per true class. Most of the "
        "attention should be inside the brain; high shares point to a shortcut.", "small"),
    "region_gain": ("{cam} per atlas region relative to its volume",
        "How much of the {cam} inside the brain falls in each atlas region, divided by the region's share of "
        "the brain volume. "
        "A gain above 1 means the region draws more attention than its size alone would give it.", "wide"),
    "sanity": ("Randomisation sanity check",
        "Spearman correlation between each subject's {cam} from the trained model and from the same "
        "network with randomised weights. Low values are good: the maps depend on what the model learned.", "medium"),
    "feature_maps": ("Feature maps per group",
        "Mean activation of the most discriminative channels of the layer, for {pos} and {neg}, and their "
        "difference drawn over the cohort's mean MRI. Look for differences inside the brain, in anatomically "
        "meaningful places.", "brain"),
    "feature_channel_differences": ("Feature map differences per channel",
        "{pos} - {neg} difference of the mean activation for the channels that separate the groups best "
        "over the cohort's mean MRI (red positive, blue negative, symmetric scale; small differences are not "
        "drawn, so the anatomy shows). The layer's grid is coarse: each square is one feature-map cell.", "brain"),
    "input_difference": ("Raw data baseline: mean difference and t-map",
        "Voxel-wise mean difference of the preprocessed images ({pos} - {neg}) and the voxel-wise t statistic, "
        "over the cohort's mean MRI (small values not drawn), slices through the largest |t| inside the head. "
        "This is what differs in the data itself; compare it with the model's maps above. When the largest "
        "difference lies outside the head (a scanner or site marker), the figure says where.", "brain"),
    "champion_comparison": ("Where each model looks: this version and the champion",
        "Each model's mean map of the {pos} group over the cohort's mean MRI, one row per model, slices through "
        "each map's own peak. Each row has its own colour scale: the places compare, the raw values do not. "
        "A model that scores from anatomy looks inside the brain; one that scores from a marker looks at it.",
        "brain"),
}
EXTRA_FIGURE_SIZE = "wide"  # a figure the report does not know, at the full text width
FIGURE_SECTIONS = {
    "performance": ["training_curves", "roc", "score_histogram", "confusion_matrix", "calibration",
                    "decision_curve", "subgroups"],
    "explain_group": ["group_cam"],
    "explain_gallery": ["gradcam_TP", "gradcam_TN", "gradcam_FP", "gradcam_FN"],
    "explain_checks": ["cam_outside_brain", "region_gain", "sanity"],
    "features": ["feature_maps", "feature_channel_differences", "input_difference"],
}


# --------------------------------------------------------------------------------------------
# Building the template context
# --------------------------------------------------------------------------------------------


def _document_time(evaluation: dict, created: _dt.datetime | None, evaluation_path: Path) -> _dt.datetime:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        try:
            return _dt.datetime.fromtimestamp(int(epoch), _dt.timezone.utc)
        except (ValueError, OverflowError, OSError):
            log.warning("ignoring SOURCE_DATE_EPOCH=%r (not an integer)", epoch)
    if created is not None:
        return created if created.tzinfo else created.replace(tzinfo=_dt.timezone.utc)
    for key in ("evaluated_at", "created", "finished_at"):
        value = evaluation.get(key)
        if isinstance(value, str):
            try:
                stamp = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
                return stamp if stamp.tzinfo else stamp.replace(tzinfo=_dt.timezone.utc)
            except ValueError:
                pass
    try:
        return _dt.datetime.fromtimestamp(int(evaluation_path.stat().st_mtime), _dt.timezone.utc)
    except OSError:
        return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def _metric_rows(estimates: dict, not_computable: list) -> list[dict]:
    rows = []
    order = [*METRIC_LABELS, *sorted(k for k in estimates if k not in METRIC_LABELS)]
    for name in order:
        if name not in estimates:
            continue
        est = _d(estimates[name])
        label, meaning = METRIC_LABELS.get(name, (name.replace("_", " ").capitalize(), ""))
        computable = _num(est.get("value")) is not None
        rows.append({
            "name": name, "label": label, "meaning": meaning, "computable": computable,
            "value": _fmt_value(est.get("value"), name,
                                digits=3 if name in ("brier_score", "expected_calibration_error") else 2),
            "ci": _fmt_ci(est, name), "method": _text(est.get("method")) if est.get("method") else "-",
            "reason": _text(est.get("reason")) if not computable else "",
        })
    listed = {row["name"] for row in rows}
    for item in not_computable:
        item = _d(item)
        name = _text(item.get("name"))
        if name not in listed:
            rows.append({"name": name, "label": METRIC_LABELS.get(name, (name, ""))[0], "meaning": "",
                         "computable": False, "value": "n/a", "ci": "-", "method": "-",
                         "reason": _text(item.get("reason"))})
    return rows


def _covariate_counts(predictions, covariates: list, class_names: tuple[str, str]) -> list[dict]:
    """Subjects per class in each subgroup (the same groups as the subgroup results)."""
    if predictions is None or "label" not in predictions:
        return []
    present = [c for c in covariates if isinstance(c, str) and c in predictions.columns]
    if not present:
        return []
    try:
        from .metrics import subgroup_masks

        groups = subgroup_masks(predictions[present].reset_index(drop=True))
    except Exception:  # noqa: BLE001 - fall back to plain values
        groups = [(c, str(v), (predictions[c] == v).to_numpy()) for c in present
                  for v in sorted(predictions[c].dropna().unique(), key=str)]
    labels = predictions["label"].astype(str).to_numpy()
    rows = []
    for covariate, group, mask in groups:
        counts = {name: int(((labels == name) & mask).sum()) for name in class_names}
        rows.append({"covariate": str(covariate), "group": str(group), "counts": counts, "n": int(mask.sum())})
    return rows


def _subgroup_rows(subgroups: list) -> list[dict]:
    rows = []
    for item in subgroups:
        item = _d(item)
        est = _d(item.get("estimates"))
        rows.append({
            "covariate": _text(item.get("covariate")), "group": _text(item.get("group")),
            "n": _text(item.get("n_subjects")), "n_positive": _text(item.get("n_positive")),
            "n_negative": _text(item.get("n_negative")),
            "auc": _fmt_est(est.get("roc_auc"), "roc_auc"),
            "sensitivity": _fmt_est(est.get("sensitivity"), "sensitivity"),
            "specificity": _fmt_est(est.get("specificity"), "specificity"),
        })
    return rows


def _exclusion_rows(exclusions, evaluation_cohort: dict) -> list[dict]:
    rows = []
    if exclusions is not None and len(exclusions):
        for record in exclusions.astype(object).where(exclusions.notna(), None).to_dict("records"):
            rows.append({"subject_id": _text(record.get("subject_id")), "path": _text(record.get("path")),
                         "reason": _text(record.get("reason"))})
    else:
        for record in _l(evaluation_cohort.get("excluded")):
            record = _d(record)
            rows.append({"subject_id": _text(record.get("subject_id")), "path": _text(record.get("path")),
                         "reason": _text(record.get("reason"))})
    return rows


def _scores(predictions, positive: str):
    """(subject_id, y in {0, 1}, score) arrays from a predictions table, or None."""
    import numpy as np

    if predictions is None or not {"subject_id", "label"} <= set(predictions.columns):
        return None
    column = f"prob_{positive}" if f"prob_{positive}" in predictions.columns else next(
        (c for c in predictions.columns if c.startswith("prob_")), None)
    if column is None:
        return None
    frame = predictions[["subject_id", "label", column]].dropna()
    y = (frame["label"].astype(str) == positive).astype(int).to_numpy()
    return frame["subject_id"].astype(str).to_numpy(), y, frame[column].astype(float).to_numpy(np.float64)


def _comparison_context(evaluation: dict, champion, metrics, predictions, positive, class_names, version) -> dict:
    """The recorded comparison (evaluations since it was recorded, also when there was none); for
    older records, one found at render time (``champion``)."""
    if "comparison" not in evaluation:
        return _champion_context(champion, metrics, predictions, positive, class_names)
    recorded = evaluation.get("comparison")
    if not isinstance(recorded, dict):
        return {"available": False,
                "why": "No champion to compare with: when this evaluation ran, no other version of this model "
                       "carried the alias 'champion' with an evaluation on the same data set."}
    return _recorded_comparison(recorded, metrics, version)


def _recorded_comparison(recorded: dict, this_metrics: dict, version) -> dict:
    """The comparison the evaluation made and recorded (evaluation.json ``comparison``; see
    heimer_mlflow.champion): what was compared then, whoever holds the alias now."""
    this_est = _d(_d(this_metrics.get("overall")).get("estimates"))
    other_est = _d(recorded.get("champion_estimates"))
    rows = [{"label": METRIC_LABELS[name][0], "this": _fmt_est(this_est.get(name), name),
             "champion": _fmt_est(other_est.get(name), name)}
            for name in TABLE_METRICS if name in this_est or name in other_est]  # fmt: skip
    delta = {"value": recorded.get("roc_auc_diff"), "lower": recorded.get("roc_auc_diff_ci_lower"),
             "upper": recorded.get("roc_auc_diff_ci_upper")}  # fmt: skip
    p_value = _num(recorded.get("delong_p"))
    champion_outside = _num(recorded.get("champion_cam_outside_brain_fraction"))
    return {
        "available": True, "recorded": True, "version": _text(recorded.get("champion_version")),
        "run_id": _text(recorded.get("champion_run_id")), "rows": rows, "n_matched": int(recorded.get("n_shared") or 0),
        "note": _text(recorded.get("note") or ""), "method": "DeLong's test for paired AUCs",
        "delta": _fmt_est(delta, "roc_auc_delta") if delta["value"] is not None else None,
        "delta_value": _num(delta["value"]), "delta_lower": _num(delta["lower"]), "delta_upper": _num(delta["upper"]),
        "p": None if p_value is None else (f"{p_value:.2g}" if p_value >= 0.001 else "< 0.001"),
        "p_value": p_value,
        "champion_verdict": _text(recorded.get("champion_verdict") or "not recorded"),
        "champion_reason": _text(recorded.get("champion_verdict_reason") or ""),
        "champion_map": CAM_NAMES.get(_text(recorded.get("champion_cam_method")), "Grad-CAM"),
        "champion_outside": None if champion_outside is None else _fmt_pct(champion_outside, 1),
    }  # fmt: skip




def _champion_context(champion, this_metrics: dict, predictions, positive: str, class_names) -> dict:
    """The comparison found at render time, for records from before evaluations recorded theirs."""
    if not champion:
        return {"available": False,
                "why": "No champion to compare with: no other version of this model carries the alias "
                       "'champion' with an evaluation on the same data set."}
    champion = _d(champion) if isinstance(champion, dict) else {}
    version = _text(champion.get("version"))
    other = _d(champion.get("metrics"))
    this_est = _d(_d(this_metrics.get("overall")).get("estimates"))
    other_est = _d(_d(other.get("overall")).get("estimates"))
    rows = []
    for name in TABLE_METRICS:
        if name in this_est or name in other_est:
            rows.append({"label": METRIC_LABELS[name][0], "this": _fmt_est(this_est.get(name), name),
                         "champion": _fmt_est(other_est.get(name), name)})
    delta, n_matched, note = None, 0, ""
    mine, theirs = _scores(predictions, positive), _scores(champion.get("predictions"), positive)
    if mine is None or theirs is None:
        note = "The paired comparison needs both models' per-subject predictions; one is missing."
    else:
        import numpy as np

        ids_a, y_a, s_a = mine
        ids_b, y_b, s_b = theirs
        index_b = {sid: i for i, sid in enumerate(ids_b)}
        pairs = [(i, index_b[sid]) for i, sid in enumerate(ids_a) if sid in index_b and y_b[index_b[sid]] == y_a[i]]
        n_matched = len(pairs)
        if n_matched:
            ia, ib = (np.array(p) for p in zip(*pairs))
            try:
                from .metrics import paired_delta_auc

                n_boot = int(this_metrics.get("n_bootstrap") or 2000)
                seed = int(this_metrics.get("seed") or 0)
                est = paired_delta_auc(y_a[ia], s_a[ia], s_b[ib], n_bootstrap=n_boot, seed=seed,
                                       class_names=tuple(class_names))
                delta = est.to_dict()
            except Exception as error:  # noqa: BLE001 - a comparison problem must not stop the report
                note = f"The paired comparison could not be computed ({type(error).__name__}: {error})."
        else:
            note = "No subject appears in both evaluations with the same label."
    return {"available": True, "recorded": False, "method": "paired bootstrap", "p": None, "version": version, "rows": rows,
            "n_matched": n_matched,
            "n_this": 0 if mine is None else len(mine[0]), "note": note,
            "delta": _fmt_est(delta, "roc_auc_delta") if delta else None,
            "delta_value": _num(_d(delta).get("value")), "delta_lower": _num(_d(delta).get("lower")),
            "delta_upper": _num(_d(delta).get("upper"))}


# The two maps disagree (one of them is unreliable for this architecture) when their rank agreement
# inside the brain is below MIN_CAM_AGREEMENT or their mean outside-brain shares differ by more than
# MAX_OUTSIDE_SHARE_GAP.
MIN_CAM_AGREEMENT = 0.5
MAX_OUTSIDE_SHARE_GAP = 0.20
CAM_EXPLAINED = {
    "gradcam": "Grad-CAM weights each channel of the layer by its gradient averaged over the whole image, so it "
               "marks every place where a channel the model relies on is active, whether or not the score used "
               "that place.",
    "hirescam": "HiResCAM multiplies gradient and activation at each place before adding up the channels, so it "
                "marks only the places the model's score actually used.",
}


def _cam_method(engine: dict, configuration: dict) -> str:
    """The primary map (``gradcam`` / ``hirescam``): the engine's, else the configuration's; an
    evaluation from before HiResCAM existed used Grad-CAM."""
    for value in (engine.get("cam_method"), configuration.get("cam")):
        if isinstance(value, str) and value.strip().lower() in CAM_NAMES:
            return value.strip().lower()
    return "gradcam"


def _cohort_mean(plaus: dict, predictions, name: str) -> tuple[float | None, int]:
    """(mean, subjects with a value) of a per-subject number: the logged summary, else the
    predictions table's column."""
    values = None
    if predictions is not None and name in predictions.columns:
        import pandas as pd

        values = pd.to_numeric(predictions[name], errors="coerce").dropna()
        values = values[values.apply(math.isfinite)]
    summary = _num(plaus.get(name))
    if summary is not None:
        return summary, len(values) if values is not None else 0
    if values is not None and len(values):
        return float(values.mean()), len(values)
    return None, 0


def _cam_context(engine: dict, configuration: dict, plaus: dict, predictions) -> dict:
    """The primary map's name and the two maps side by side: mean outside-brain shares, their
    agreement, and whether (and why) they disagree."""
    method = _cam_method(engine, configuration)
    other = "hirescam" if method == "gradcam" else "gradcam"
    shares = {m: _cohort_mean(plaus, predictions, f"{m}_outside_brain_fraction")[0] for m in CAM_NAMES}
    agreement, n_agreement = _cohort_mean(plaus, predictions, "cam_method_agreement")
    both = all(v is not None for v in shares.values())
    reasons = []
    if agreement is not None and agreement < MIN_CAM_AGREEMENT:
        reasons.append(f"their rank agreement inside the brain is {agreement:.2f}, below {MIN_CAM_AGREEMENT:.1f}")
    gap = abs(shares["gradcam"] - shares["hirescam"]) if both else None
    if gap is not None and gap > MAX_OUTSIDE_SHARE_GAP:
        reasons.append(f"Grad-CAM puts {shares['gradcam'] * 100:.0f}% of its map outside the brain and HiResCAM "
                       f"{shares['hirescam'] * 100:.0f}%, a gap of {gap * 100:.0f} percentage points "
                       f"(more than {MAX_OUTSIDE_SHARE_GAP * 100:.0f})")
    if agreement is None and both:
        agreement_text = ("not computable: for every subject one of the maps is constant inside the brain "
                          "(for example all zero)")
    elif agreement is None:
        agreement_text = "not recorded"
    else:
        agreement_text = _fmt_num(agreement, 2) + (f" (mean over {n_agreement} subjects)" if n_agreement else "")
    return {
        "method": method, "name": CAM_NAMES[method], "other": other, "other_name": CAM_NAMES[other],
        "explained": [CAM_EXPLAINED["gradcam"], CAM_EXPLAINED["hirescam"]],
        "compared": both or agreement is not None,
        "rows": [{"name": CAM_NAMES[m], "primary": m == method, "outside": _fmt_pct(shares[m], 1)} for m in CAM_NAMES],
        "primary_outside": _fmt_pct(shares[method], 1),
        "agreement": agreement_text, "min_agreement": f"{MIN_CAM_AGREEMENT:.1f}",
        "max_gap": f"{MAX_OUTSIDE_SHARE_GAP * 100:.0f}",
        "disagree": bool(reasons), "reasons": reasons, "agreement_known": agreement is not None,
        "verdict_on_gradcam": bool(reasons) and method == "gradcam",
    }


GLOSSARY = [
    ("AUC", "Area under the ROC curve: the chance that a randomly chosen AD subject gets a higher score than a "
            "randomly chosen CN subject. 0.5 is chance, 1.0 perfect separation."),
    ("ROC curve", "Receiver operating characteristic: sensitivity against 1 - specificity over all thresholds."),
    ("Sensitivity", "Share of AD subjects the model calls AD (true positive rate, recall)."),
    ("Specificity", "Share of CN subjects the model calls CN (true negative rate)."),
    ("Balanced accuracy", "Mean of sensitivity and specificity; not swayed by unequal class sizes."),
    ("PPV", "Positive predictive value: of the subjects called AD, the share that are AD. Depends on how common AD "
            "is in the cohort."),
    ("NPV", "Negative predictive value: of the subjects called CN, the share that are CN."),
    ("F1 score", "Harmonic mean of PPV and sensitivity."),
    ("Threshold", "The score at or above which a subject is called AD."),
    ("95% confidence interval (CI)", "The range that, in repeated studies of this size, would contain the true "
            "value 95% of the time. Wide intervals mean few subjects."),
    ("Bootstrap", "Re-computing a figure on many resamples of the subjects to see how much it varies."),
    ("Wilson interval", "A confidence interval for a proportion that behaves well with small counts."),
    ("DeLong interval", "An analytic confidence interval for the AUC."),
    ("Brier score", "Mean squared difference between predicted probability and outcome (0 or 1); lower is better."),
    ("Log loss", "Mean negative log-probability given to the true class; punishes confident mistakes."),
    ("ECE", "Expected calibration error: the average gap between predicted probability and observed frequency, "
            "over probability bins."),
    ("Calibration", "Whether predicted probabilities match observed frequencies (a 70% score is AD 70% of the time)."),
    ("Decision curve / net benefit", "True positives minus false positives weighted by the odds of the threshold "
            "probability, per subject: the value of acting on the model's calls."),
    ("Grad-CAM", "Gradient-weighted class activation mapping: a heat map of where in the image the model's evidence "
            "for a class comes from, from the gradients of the class score at a convolutional layer, averaged "
            "over the image per channel. With max-pooling or flatten heads it can mark places the score did not use."),
    ("HiResCAM", "High-resolution class activation mapping: like Grad-CAM, but gradient and activation are "
            "multiplied at each place, so the map shows the places the class score actually used."),
    ("Agreement (of the two maps)", "Spearman rank correlation of a subject's Grad-CAM and HiResCAM inside the brain; "
            "1 means the two methods rank the places alike, near 0 that they point at different places."),
    ("Feature map", "The output of one channel of a convolutional layer: what that filter responds to, per voxel."),
    ("t-map", "Voxel-wise t statistic of the AD - CN difference: the mean difference divided by its standard "
            "error. Large absolute values are consistent differences."),
    ("Gain (region)", "Share of the attention map (Grad-CAM or HiResCAM) inside the brain that falls in an atlas "
            "region, divided by the "
            "region's share of the brain volume; above 1 means more attention than the size of the region alone "
            "would give, 1 is what a map spread evenly over the brain gives."),
    ("Spearman correlation", "Rank correlation between two maps; near 0 means unrelated."),
    ("Randomisation sanity check", "Comparing the maps of the trained model with those of the same network with "
            "random weights: faithful explanations must change when the weights do."),
    ("Shortcut", "A feature unrelated to the disease (skull, background, scanner) that the model uses to "
            "separate the classes in this data; it will not generalise."),
]


def build_context(artifact_dir: Path, *, champion=None, created: _dt.datetime | None = None,
                  figure_dir: str = "figures", available_figures: set[str] | None = None,
                  run_id: str | None = None) -> dict:
    """Everything the template shows, as plain data (strings and numbers)."""
    artifact_dir = Path(artifact_dir)
    problems: list[str] = []
    evaluation = _read_json(artifact_dir / "evaluation.json", problems)
    metrics = _read_json(artifact_dir / "metrics.json", problems)
    predictions = _read_csv(artifact_dir / "predictions.csv", problems)
    exclusions = _read_csv(artifact_dir / "exclusions.csv", problems, required=False)

    model, cohort, engine = _d(evaluation.get("model")), _d(evaluation.get("cohort")), _d(evaluation.get("engine"))
    meta = _d(model.get("metadata"))
    class_names = metrics.get("class_names") or meta.get("class_names") or ["CN", "AD"]
    if not (isinstance(class_names, list) and len(class_names) == 2):
        class_names = ["CN", "AD"]
    class_names = [str(c) for c in class_names]
    positive = str(meta.get("positive_class") or class_names[1])
    negative = next((c for c in class_names if c != positive), class_names[0])
    name, version = model.get("name"), model.get("version")
    stamp = _document_time(evaluation, created, artifact_dir / "evaluation.json")

    overall = _d(metrics.get("overall"))
    estimates = _d(overall.get("estimates"))
    headline = []
    for key in ("roc_auc", "sensitivity", "specificity", "balanced_accuracy"):
        est = _d(estimates.get(key))
        headline.append({"label": METRIC_LABELS[key][0].split(" (")[0], "meaning": METRIC_LABELS[key][1],
                         "value": _fmt_value(est.get("value"), key) if _num(est.get("value")) is not None else "n/a",
                         "ci": _fmt_ci(est, key),
                         "reason": "" if _num(est.get("value")) is not None else _text(est.get("reason"))})
    confusion = {k: _num(v) for k, v in _d(overall.get("confusion")).items()}
    plaus = _d(evaluation.get("plausibility")) or _d(metrics.get("plausibility"))
    verdict = str(plaus.get("verdict") or "not assessed")
    outside = _num(plaus.get("cam_outside_brain_fraction"))
    outside_floor = _num(plaus.get("cam_outside_brain_floor")) or 0.0  # absent in runs before it existed
    outside_limit = outside_floor + MAX_OUTSIDE_BRAIN_EXCESS
    gains = [{"region": k[len("cam_roi_gain_"):].replace("_", " "), "gain": _fmt_num(v, 2),
              "above": (_num(v) or 0) > 1}
             for k, v in sorted(plaus.items()) if k.startswith("cam_roi_gain_")]
    sanity = _d(engine.get("sanity"))
    sanity_rows = [{"subject_id": _text(s), "rho": _fmt_num(r, 2)}
                   for s, r in zip(_l(sanity.get("subject_ids")), _l(sanity.get("spearman")))]
    sanity_mean = _num(sanity.get("mean")) if sanity else _num(plaus.get("sanity_spearman_mean"))
    gallery = []
    for outcome, cases in _d(engine.get("gallery")).items():
        for case in _l(cases):
            case = _d(case)
            gallery.append({"outcome": _text(outcome), "subject_id": _text(case.get("subject_id")),
                            "prob": _fmt_num(case.get("prob"), 2),
                            "label": class_names[case["label"]] if case.get("label") in (0, 1)
                            else _text(case.get("label"))})
    gradcam = _d(engine.get("gradcam"))
    ranking = []
    for layer, table in _d(engine.get("feature_ranking")).items():
        table = _d(table)
        for i, channel in enumerate(_l(table.get("channel"))[:8]):
            def at(key, i=i):
                values = _l(table.get(key))
                return values[i] if i < len(values) else None
            ranking.append({"layer": _text(layer), "channel": _fmt_num(channel, 0),
                            "mean_abs_t": _fmt_num(at("mean_abs_t"), 2), "mean_t": _fmt_num(at("channel_mean_t"), 2),
                            "diff": _fmt_num(at("channel_mean_diff"), 4)})
    versions = {str(k): _text(v) for k, v in _d(evaluation.get("versions")).items()}
    configuration = {str(k): _text(v) for k, v in _d(evaluation.get("configuration")).items()}
    timings = {str(k): _fmt_num(v, 2) for k, v in _d(evaluation.get("timings")).items()}
    rationale = _d(metrics.get("threshold_rationale"))
    youden = _d(rationale.get("youden_threshold"))
    tags = _d(model.get("tags"))
    figures_present = set(available_figures or ())
    cam = _cam_context(engine, _d(evaluation.get("configuration")), plaus, predictions)
    fmt = {"pos": positive, "neg": negative, "cam": cam["name"]}
    figure_info = {key: {"name": key, "title": t.format(**fmt), "caption": c.format(**fmt), "size": s,
                         "src": f"{figure_dir}/{key}.png", "present": key in figures_present}
                   for key, (t, c, s) in FIGURES.items()}
    extra_figures = [{"name": f, "title": f.replace("_", " ").capitalize(),
                      "caption": "An additional figure the evaluation produced.", "size": EXTRA_FIGURE_SIZE,
                      "src": f"{figure_dir}/{f}.png", "present": True}
                     for f in sorted(figures_present - set(FIGURES))]
    display_name = _text(name) if name else "unregistered model"
    title = f"Evaluation report: {display_name}" + (f" v{version}" if version else "")
    history = _d(evaluation.get("history"))
    n_epochs = max((len(_l(v)) for v in history.values()), default=0)

    return {
        "title": title, "display_name": display_name, "name": _text(name) if name else "",
        "version": _text(version) if version else "", "date": stamp.strftime("%d %B %Y"),
        "date_iso": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"), "datetime": stamp,
        "generator": f"heimer-mlflow {_text(_d(evaluation.get('versions')).get('heimer-mlflow', ''))}".strip(),
        "keywords": ", ".join(k for k in ["Alzheimer's disease", "MRI", "3D CNN", cam["name"], "model evaluation",
                                           display_name.replace(",", " ")] if k),
        "description": f"Evaluation of the AD vs CN classifier {display_name}"
                       + (f" version {version}" if version else "")
                       + " with performance, calibration and explainability checks.",
        "problems": problems,
        "run_id": _text(run_id or evaluation.get("run_id") or "") if (run_id or evaluation.get("run_id")) else "",
        "positive": positive, "negative": negative, "class_names": class_names,
        "model": {
            "uri": _text(model.get("uri")), "aliases": [str(a) for a in _l(model.get("aliases"))],
            "description": _clip(model.get("description")) if isinstance(model.get("description"), str) else "",
            "tags": [(_clip(str(k), 250), _clip(_text(v)))
                     for k, v in sorted(tags.items(), key=lambda kv: str(kv[0]))[:MAX_TAGS]],
            "tags_cut": max(0, len(tags) - MAX_TAGS),
            "source_run_id": _text(model.get("source_run_id")), "model_id": _text(model.get("model_id")),
            "metadata": [(str(k), _text(v)) for k, v in meta.items()],
            "inferred": [str(v) for v in _l(model.get("inferred"))],
            "intensity": _text(meta.get("intensity") or "none"),
            "input_shape": ("[" + _text(meta.get("input_shape")) + "]") if isinstance(meta.get("input_shape"), list)
                           else _text(meta.get("input_shape")),
        },
        "cohort": {
            "source": _text(cohort.get("source")), "n_subjects": _text(cohort.get("n_subjects")),
            "n_excluded": _text(cohort.get("n_excluded")),
            "counts": [(str(k), _text(v)) for k, v in _d(cohort.get("counts")).items()],
            "covariates": [str(c) for c in _l(cohort.get("covariates"))],
            "covariate_counts": _covariate_counts(predictions, _l(cohort.get("covariates")), tuple(class_names)),
            "excluded": _exclusion_rows(exclusions, cohort),
        },
        "headline": headline,
        "n": {k: _text(overall.get(k)) for k in ("n_subjects", "n_positive", "n_negative")},
        "confusion": {k: ("n/a" if v is None else f"{v:.0f}") for k, v in confusion.items()},
        "threshold": _fmt_num(metrics.get("threshold", engine.get("threshold")), 2),
        "threshold_note": _text(rationale.get("note")) if rationale.get("note") else "",
        "youden": _fmt_num(youden.get("value"), 2) if youden else "n/a",
        "youden_sens": _fmt_value(_d(rationale.get("youden_sensitivity")).get("value"), "sensitivity"),
        "youden_spec": _fmt_value(_d(rationale.get("youden_specificity")).get("value"), "specificity"),
        "n_bootstrap": _text(metrics.get("n_bootstrap")), "confidence": _fmt_pct(metrics.get("confidence", 0.95)),
        "metric_rows": _metric_rows(estimates, _l(metrics.get("not_computable"))),
        "subgroups": _subgroup_rows(_l(metrics.get("subgroups"))),
        "verdict": verdict, "verdict_pass": verdict == "pass",
        "verdict_reason": _text(plaus.get("reason")) if plaus.get("reason") else "",
        "outside": _fmt_pct(outside, 1), "outside_limit": _fmt_pct(outside_limit),
        "outside_floor": _fmt_pct(outside_floor, 1), "outside_excess": _fmt_pct(MAX_OUTSIDE_BRAIN_EXCESS),
        "outside_ok": None if outside is None else outside <= outside_limit,
        "gains": gains, "sanity_rows": sanity_rows, "sanity_mean": _fmt_num(sanity_mean, 2), "cam": cam,
        "sanity_ok": None if sanity_mean is None else sanity_mean <= MAX_SANITY_SPEARMAN,
        "sanity_limit": f"{MAX_SANITY_SPEARMAN:.1f}",
        "gradcam": {"layer": _text(engine.get("target_layer")),
                    "target_class": _text(gradcam.get("target_class") or positive),
                    "upsampling": _text(gradcam.get("upsampling")),
                    "normalisation": _text(gradcam.get("display_normalisation")),
                    "statistics": _text(gradcam.get("statistics"))},
        "feature_layers": [str(v) for v in _l(engine.get("feature_layers"))],
        "ranking": ranking, "gallery": gallery,
        "regions": [str(r) for r in _l(engine.get("region_names"))],
        "device": _text(engine.get("device")), "n_epochs": n_epochs,
        "versions": sorted(versions.items()), "configuration": sorted(configuration.items()),
        "timings": sorted(timings.items()),
        "figures": figure_info, "extra_figures": extra_figures, "figure_sections": FIGURE_SECTIONS,
        "champion": _comparison_context(evaluation, champion, metrics, predictions, positive, class_names, version),
        "glossary": GLOSSARY,
        "artifact_files": [f for f in REPORT_ARTIFACTS if (artifact_dir / f).is_file()],
    }


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=True,  # every file, whatever its extension (select_autoescape() skips *.j2)
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )
    return env


def render_html(context: dict) -> str:
    return _environment().get_template(TEMPLATE).render(**context)


def render_report(artifact_dir, out_dir, *, champion=None, created: _dt.datetime | None = None,
                  run_id: str | None = None) -> ReportFiles:
    """Render the report of the evaluation whose artifacts are in ``artifact_dir``.

    Writes ``out_dir/<model-name>-v<version>.pdf`` and ``out_dir/html/index.html`` with its
    assets (figures, stylesheet; relative links). ``champion``: ``{"version": str, "metrics":
    <its metrics.json dict>, "predictions": <its predictions.csv DataFrame>}`` to compare with,
    or None. ``created``: the evaluation's time, used for the document's dates unless
    ``SOURCE_DATE_EPOCH`` is set (default: ``evaluation.json``'s time). ``run_id``: the
    evaluation run, shown in the provenance appendix.
    """
    started = time.perf_counter()
    artifact_dir, out_dir = Path(artifact_dir), Path(out_dir)
    if not artifact_dir.is_dir():
        raise FileNotFoundError(f"artifact folder not found: {artifact_dir}")
    html_dir = out_dir / "html"
    out_dir.mkdir(parents=True, exist_ok=True)
    html_dir.mkdir(exist_ok=True)
    fig_out = html_dir / "figures"
    if fig_out.is_dir() and not fig_out.is_symlink():
        shutil.rmtree(fig_out)
    elif fig_out.exists() or fig_out.is_symlink():
        fig_out.unlink()
    fig_out.mkdir()
    present = set()
    fig_in = artifact_dir / "figures"
    if fig_in.is_dir():
        for path in sorted(fig_in.iterdir()):
            if _FIGURE_NAME.match(path.name) and _png_ok(path):
                shutil.copyfile(path, fig_out / path.name)
                present.add(path.name[:-4])
    css_target = html_dir / REPORT_CSS
    if css_target.is_symlink():
        css_target.unlink()
    shutil.copyfile(templates_dir() / REPORT_CSS, css_target)

    context = build_context(artifact_dir, champion=champion, created=created, available_figures=present,
                            run_id=run_id)
    html_text = render_html(context)
    index = html_dir / "index.html"
    if index.is_symlink():
        index.unlink()
    index.write_text(_self_contained(html_text, html_dir, present), encoding="utf-8")

    pdf_path = out_dir / report_file_name(context["name"], context["version"])
    pages, refused = _write_pdf(html_text, html_dir, pdf_path, artifact_dir, context["datetime"])
    seconds = time.perf_counter() - started
    log.info("report: %s (%d pages, %.1f s)", pdf_path, pages, seconds)
    return ReportFiles(pdf=pdf_path, html_dir=html_dir, pages=pages, refused_urls=refused, seconds=seconds)


class _EnvironmentNoteFilter(logging.Filter):
    """Drops WeasyPrint's advice to install the system HarfBuzz-Subset library (it subsets the
    fonts with fontTools instead, same document): a note about the machine, not the report."""

    def filter(self, record):
        return not str(record.msg).startswith("Using fontTools instead of HarfBuzz-Subset")


def _self_contained(html_text: str, html_dir: Path, figures: set[str]) -> str:
    """The HTML with the stylesheet inlined and the figures as ``data:`` URIs.

    MLflow's artifact viewer shows an HTML artifact in a sandboxed iframe loaded from a
    ``blob:`` URL, where relative links cannot resolve; inlined, the preview is complete. Only
    our own generated attributes are replaced (``href="report.css"``, ``src="figures/<name>.png"``
    for the figure names copied): escaped registry text cannot contain them (quotes are escaped).
    """
    css = (html_dir / REPORT_CSS).read_text(encoding="utf-8")
    if "</" in css:
        raise ValueError(f"{REPORT_CSS} must not contain '</'")
    html_text = html_text.replace(f'<link rel="stylesheet" href="{REPORT_CSS}">', f"<style>\n{css}</style>", 1)
    for name in sorted(figures):
        data = base64.b64encode((html_dir / "figures" / f"{name}.png").read_bytes()).decode("ascii")
        html_text = html_text.replace(f'src="figures/{name}.png"', f'src="data:image/png;base64,{data}"')
    return html_text


def _write_pdf(html_text: str, html_dir: Path, pdf_path: Path, artifact_dir: Path, stamp: _dt.datetime):
    wp_logger = logging.getLogger("weasyprint")
    note_filter = _EnvironmentNoteFilter()
    wp_logger.addFilter(note_filter)
    try:
        return _write_pdf_unfiltered(html_text, html_dir, pdf_path, artifact_dir, stamp)
    finally:
        wp_logger.removeFilter(note_filter)


def _write_pdf_unfiltered(html_text: str, html_dir: Path, pdf_path: Path, artifact_dir: Path, stamp: _dt.datetime):
    import weasyprint

    fetcher = make_fetcher(html_dir)
    naive = stamp.astimezone(_dt.timezone.utc).replace(tzinfo=None)
    attachments = []
    for name, description in (("metrics.json", "All metrics with confidence intervals (JSON)"),
                              ("predictions.csv", "Per-subject predictions (CSV)")):
        source = artifact_dir / name
        if source.is_file() and not source.is_symlink():
            attachments.append(weasyprint.Attachment(
                string=source.read_bytes(), name=name, description=description, created=naive, modified=naive,
                relationship="Supplement", url_fetcher=fetcher))
    document = weasyprint.HTML(string=html_text, base_url=ASSET_BASE_URL,
                               url_fetcher=fetcher)
    rendered = document.render(pdf_variant=PDF_VARIANT, pdf_tags=True)
    pdf_path.write_bytes(rendered.write_pdf(pdf_variant=PDF_VARIANT, pdf_tags=True, attachments=attachments,
                                            uncompressed_pdf=False))
    return len(rendered.pages), list(fetcher.refused)


# --------------------------------------------------------------------------------------------
# From an MLflow run
# --------------------------------------------------------------------------------------------


def _download(run_id: str, dst: Path, names=(*REPORT_ARTIFACTS, "figures"), required=("evaluation.json",)):
    import mlflow

    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        try:
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(dst))
        except Exception as error:  # noqa: BLE001 - optional pieces may be absent
            if name in required:
                raise FileNotFoundError(f"run {run_id} has no {name} artifact: is it an evaluation run?") from error
            log.info("run %s: no %s (%s)", run_id, name, type(error).__name__)
    return dst


def _subject_ids(folder: Path) -> set[str] | None:
    table = _read_csv(folder / "predictions.csv", [], required=False)
    if table is None or "subject_id" not in table:
        return None
    return set(table["subject_id"].astype(str))


def _find_champion(client, evaluation: dict, run_id: str, this_dir: Path, work: Path):
    """For a record from before evaluations recorded their comparison: the champion's
    ``{"version", "metrics", "predictions"}`` found now, or None (see heimer_mlflow.champion.find)."""
    from . import champion

    model = _d(evaluation.get("model"))
    ids = _subject_ids(this_dir)
    if ids is None:
        return None
    digests = champion.dataset_digests(client, run_id)
    found = champion.find(client, model.get("name"), model.get("version"), run_id,
                          source=_d(evaluation.get("cohort")).get("source"), subject_ids=ids,
                          digest=next(iter(digests)) if len(digests) == 1 else None, folder=work / "champion")  # fmt: skip
    if found is None:
        return None
    return {"version": found.version, "metrics": _read_json(found.folder / "metrics.json", []),
            "predictions": found.predictions()}


def find_champion(artifact_dir, run_id: str | None = None):
    """The champion to compare the evaluation in ``artifact_dir`` with (``render_report``'s
    ``champion`` argument), or None: another version of the same registered model with alias
    ``champion`` whose evaluation run (its ``heimer.evaluation_run_id`` tag) used the same data
    (same cohort source, same subject ids, same data set digest when both runs logged one)."""
    from mlflow import MlflowClient

    artifact_dir = Path(artifact_dir)
    evaluation = _read_json(artifact_dir / "evaluation.json", [])
    with tempfile.TemporaryDirectory(prefix="heimer-champion-") as work:
        return _find_champion(MlflowClient(), evaluation, run_id or "", artifact_dir, Path(work))


def report_for_run(run_id: str, *, out_dir=None, log: bool = True, tag_version: bool = True) -> ReportFiles:
    """Re-render the report of evaluation run ``run_id`` from its logged artifacts alone and
    (``log=True``) log it to the run as ``report/<name>-v<version>.pdf`` and ``report/html/``.
    With ``tag_version``, the model version's ``heimer.report`` follows, but only when the run
    FINISHED and is the version's evaluation (its ``heimer.evaluation_run_id``): a version never
    points at a run that was killed or that a newer evaluation replaced. The evaluation itself
    renders with ``tag_version=False`` while its run is still RUNNING, and writes every version
    tag once the run FINISHED. ``out_dir``: where the files go (default: a new temporary folder, kept)."""
    from mlflow import MlflowClient

    logger = logging.getLogger(__name__)  # (``log`` is the argument)
    client = MlflowClient()
    run = client.get_run(run_id)
    work = Path(tempfile.mkdtemp(prefix="heimer-report-"))
    try:
        artifacts = _download(run_id, work / "artifacts")
        evaluation = _read_json(artifacts / "evaluation.json", [])
        # Evaluations record their comparison (heimer_mlflow.champion); older records get one now.
        champion = None if "comparison" in evaluation else _find_champion(client, evaluation, run_id, artifacts, work)
        created = None
        if run.info.start_time:
            created = _dt.datetime.fromtimestamp(run.info.start_time // 1000, _dt.timezone.utc)
        target = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="heimer-report-out-"))
        files = render_report(artifacts, target, champion=champion, created=created, run_id=run_id)
        if log:
            client.log_artifact(run_id, str(files.pdf), artifact_path="report")
            client.log_artifacts(run_id, str(files.html_dir), artifact_path="report/html")
            model = _d(evaluation.get("model"))
            name, version = model.get("name"), model.get("version")
            if tag_version and name and version and run.info.status == "FINISHED":
                try:
                    registered = client.get_model_version(name, str(version))
                except Exception:  # noqa: BLE001 - the version (or model) was deleted: no tag
                    logger.info("model %s v%s not in the registry; not tagging", name, version)
                else:
                    if registered.tags.get("heimer.evaluation_run_id") == run_id:
                        uri = f"{run.info.artifact_uri.rstrip('/')}/report/{files.pdf.name}"
                        client.set_model_version_tag(name, str(version), "heimer.report", uri)
        return files
    finally:
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["ReportFiles", "build_context", "find_champion", "make_fetcher", "render_report", "report_file_name",
           "report_for_run"]

