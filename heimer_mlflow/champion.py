"""The registry review: an evaluation compared with the champion's, on the same subjects.

When another version of the same registered model holds the alias ``champion`` and its
evaluation run (the version's ``heimer.evaluation_run_id``) used the same data (same cohort
source, same subjects, same data set digest when both runs logged one), the evaluation compares
itself with it: the AUC difference on the shared subjects with DeLong's paired interval and
test, both verdicts, and both models' group maps. The result is recorded in the run
(``vs_champion_*`` metrics, ``evaluation.json``), so a later re-render shows what was compared
then, whoever holds the alias by that time. Torch-free.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .metrics import paired_delong

log = logging.getLogger(__name__)

ALIAS = "champion"
ARTIFACTS = ("evaluation.json", "metrics.json", "predictions.csv")
# The champion's figures the report sets beside this version's (metrics.json "overall" estimates)
TABLE_METRICS = ("roc_auc", "sensitivity", "specificity", "balanced_accuracy", "ppv", "npv", "brier_score",
                 "expected_calibration_error")


@dataclass(frozen=True)
class ChampionRun:
    """The champion version's evaluation, downloaded (``folder`` holds :data:`ARTIFACTS`)."""

    name: str
    version: str
    run_id: str
    folder: Path

    def record(self) -> dict:
        return json.loads((self.folder / "evaluation.json").read_text(encoding="utf-8"))

    def estimates(self) -> dict:
        metrics = json.loads((self.folder / "metrics.json").read_text(encoding="utf-8"))
        estimates = (metrics.get("overall") or {}).get("estimates") or {}
        return {name: estimates[name] for name in TABLE_METRICS if name in estimates}

    def predictions(self) -> pd.DataFrame:
        return pd.read_csv(self.folder / "predictions.csv", dtype={"subject_id": str})

    def volume(self, name: str) -> Path | None:
        """A volume of the champion's run (``volumes/<name>``), downloaded on request; None if absent."""
        import mlflow

        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=self.run_id, artifact_path=f"volumes/{name}",
                                                            dst_path=str(self.folder)))  # fmt: skip
        except Exception as error:  # noqa: BLE001 - an older run may not have it
            log.info("champion run %s: no volumes/%s (%s)", self.run_id, name, type(error).__name__)
            return None


def find(client, name: str | None, version: str | None, run_id: str, *, source: str, subject_ids: set[str],
         digest: str | None, folder: Path) -> ChampionRun | None:  # fmt: skip
    """The champion to compare with, its evaluation downloaded to ``folder``; None (and why, in
    the log) when there is none: no alias, the alias is on this very version, its version has no
    finished evaluation, or that evaluation used other data."""
    import mlflow

    if not name:
        return None
    try:
        champion = client.get_model_version_by_alias(name, ALIAS)
    except Exception as error:  # noqa: BLE001 - deleted model, no alias, unreachable store
        log.info("no champion for %s (%s)", name, type(error).__name__)
        return None
    other_run = (champion.tags or {}).get("heimer.evaluation_run_id")
    if str(champion.version) == str(version) or not other_run or other_run == run_id:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for artifact in ARTIFACTS:
            mlflow.artifacts.download_artifacts(run_id=other_run, artifact_path=artifact, dst_path=str(folder))
    except Exception as error:  # noqa: BLE001
        log.info("champion v%s: evaluation artifacts unavailable (%s)", champion.version, type(error).__name__)
        return None
    found = ChampionRun(name, str(champion.version), other_run, folder)
    other_source = (found.record().get("cohort") or {}).get("source")
    other_ids = set(found.predictions()["subject_id"].astype(str))
    other_digests = dataset_digests(client, other_run)
    same_digest = not (digest and other_digests) or digest in other_digests  # compared when both have one
    if other_source != source or other_ids != set(subject_ids) or not same_digest:
        log.info("champion v%s was evaluated on other data; no comparison", champion.version)
        return None
    return found


def dataset_digests(client, run_id: str) -> set[str]:
    """Digests of the data sets logged as the run's inputs (empty when none or unreadable)."""
    try:
        inputs = client.get_run(run_id).inputs
        return {d.dataset.digest for d in (inputs.dataset_inputs or []) if d.dataset and d.dataset.digest}
    except Exception:  # noqa: BLE001
        return set()


@dataclass(frozen=True)
class Comparison:
    """This version against the champion on the subjects both evaluations share."""

    champion_version: str
    champion_run_id: str
    n_shared: int
    roc_auc: float | None  # this version's, on the shared subjects
    champion_roc_auc: float | None
    roc_auc_diff: float | None  # this - champion
    roc_auc_diff_ci_lower: float | None
    roc_auc_diff_ci_upper: float | None
    delong_p: float | None  # two-sided, paired DeLong test of equal AUCs
    champion_verdict: str
    champion_verdict_reason: str
    champion_cam_outside_brain_fraction: float | None
    champion_cam_method: str
    champion_estimates: dict  # the champion's TABLE_METRICS as in its metrics.json (value, lower, upper, ...)
    note: str = ""  # why a number is missing

    def run_metrics(self) -> dict[str, float]:
        """``vs_champion_*`` run metrics (DESIGN names), the computable ones."""
        named = {"vs_champion_roc_auc_diff": self.roc_auc_diff,
                 "vs_champion_roc_auc_diff_ci_lower": self.roc_auc_diff_ci_lower,
                 "vs_champion_roc_auc_diff_ci_upper": self.roc_auc_diff_ci_upper,
                 "vs_champion_delong_p": self.delong_p}  # fmt: skip
        return {k: float(v) for k, v in named.items() if v is not None and math.isfinite(v)}

    def to_dict(self) -> dict:
        return asdict(self)


def compare(this: pd.DataFrame, champion: ChampionRun, *, positive: str, class_names) -> Comparison:
    """``this``: subject_id, label (class name) and the probability of ``positive`` (column
    ``prob_<positive>``), as in predictions.csv; the champion's from its run."""
    record = champion.record()
    plausibility = record.get("plausibility") or {}
    column = f"prob_{positive}"
    theirs = champion.predictions()
    clustered = "participant_id" in this.columns  # scans of one participant resampled together
    mine = ["subject_id", "label", column] + (["participant_id"] if clustered else [])
    merged = this[mine].merge(theirs[["subject_id", "label", column]], on="subject_id", suffixes=("", "_champion"))
    merged = merged[merged["label"].astype(str) == merged["label_champion"].astype(str)].dropna()
    y = (merged["label"].astype(str) == positive).to_numpy(int)
    names = (next(c for c in class_names if c != positive), positive)
    difference, p_value = paired_delong(y, merged[column].to_numpy(float), merged[f"{column}_champion"].to_numpy(float),
                                        class_names=names,
                                        clusters=merged["participant_id"].to_numpy() if clustered else None)  # fmt: skip
    auc_this = auc_champion = None
    if difference.computable:
        from sklearn.metrics import roc_auc_score

        auc_this = float(roc_auc_score(y, merged[column]))
        auc_champion = float(roc_auc_score(y, merged[f"{column}_champion"]))
    outside = plausibility.get("cam_outside_brain_fraction")
    return Comparison(
        champion_version=champion.version, champion_run_id=champion.run_id, n_shared=int(len(merged)),
        roc_auc=auc_this, champion_roc_auc=auc_champion, roc_auc_diff=difference.value,
        roc_auc_diff_ci_lower=difference.lower, roc_auc_diff_ci_upper=difference.upper, delong_p=p_value,
        champion_verdict=str(plausibility.get("verdict", "")), champion_verdict_reason=str(plausibility.get("reason", "")),
        champion_cam_outside_brain_fraction=None if outside is None else float(outside),
        champion_cam_method=str((record.get("engine") or {}).get("cam_method", "gradcam")),
        champion_estimates=champion.estimates(),
        note="" if difference.computable else str(difference.reason or ""),
    )  # fmt: skip


def with_champion(evaluation, predictions: pd.DataFrame, digest: str | None, work: Path | None = None):
    """(Comparison, ChampionRun) for an evaluation, or (None, None). A comparison that cannot be
    made (no champion, other data, a store problem) never fails the evaluation: it says so in
    the log and the report says there is no champion to compare with."""
    from mlflow import MlflowClient

    model, meta = evaluation.model, evaluation.model.meta
    work = Path(work or tempfile.mkdtemp(prefix="heimer-champion-"))
    try:
        found = find(MlflowClient(), model.name, model.version, evaluation.run_id or "",
                     source=evaluation.cohort.source, subject_ids=set(predictions["subject_id"].astype(str)),
                     digest=digest, folder=work / "champion")  # fmt: skip
        if found is None:
            return None, None
        return compare(predictions, found, positive=meta.positive_class, class_names=meta.class_names), found
    except Exception as error:  # noqa: BLE001 - see the docstring
        log.warning("the comparison with the champion could not be made (%s: %s)", type(error).__name__, error)
        return None, None

