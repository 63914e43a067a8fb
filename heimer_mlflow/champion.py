"""The registry review: an evaluation compared with the champion's, on the same subjects.

When another version of the same registered model holds the alias ``champion`` and one of its
finished evaluation runs (the version's ``heimer.evaluation_run_id`` first) used the same data,
recognised by content (:func:`content_digest`: subject ids, labels and image bytes, whatever the
spelling of the path), the evaluation compares itself with it: the AUC difference on the shared subjects with DeLong's paired interval and
test, both verdicts, and both models' group maps. The result is recorded in the run
(``vs_champion_*`` metrics, ``evaluation.json``), so a later re-render shows what was compared
then, whoever holds the alias by that time; when there is none, the record says why. Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from sklearn.metrics import roc_auc_score

from .meta import negative_class
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
        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=self.run_id, artifact_path=f"volumes/{name}",
                                                            dst_path=str(self.folder)))
        except Exception as error:  # noqa: BLE001 - an older run may not have it
            log.info("champion run %s: no volumes/%s (%s)", self.run_id, name, type(error).__name__)
            return None


# The evaluated data, recognised by content: a digest of every evaluated scan's subject id, label
# and image bytes (run tag DIGEST_TAG, evaluation.json cohort.data_digest). Runs logged before it
# existed are matched by the MLflow data set digest they logged (subject ids, resolved paths,
# labels, covariates) and, where they logged none, by their cohort source and subject ids.
DIGEST_TAG = "heimer.data_digest"
SOURCE_TAG = "heimer.data_source"  # the cohort as it was given (--data), for the messages
DIGEST_CHARS = 32  # hex characters kept of the sha256 (128 bits)
MAX_CANDIDATES = 20  # the champion version's evaluations looked at, newest first
MAX_EXPLAINED = 5  # of those, how many are downloaded to say why they do not match


def content_digest(rows: pd.DataFrame) -> str:
    """The digest of the evaluated data: every scan's ``subject_id``, ``label`` (class name) and
    the bytes of its file (``path``), in subject order. How the path is spelled (relative,
    absolute, through a symlink), the manifest's row order and its covariates do not enter; a
    changed label, a missing or extra subject or a changed image does."""
    total = hashlib.sha256()
    for subject, label, path in sorted(zip(rows["subject_id"].astype(str), rows["label"].astype(str),
                                           rows["path"].astype(str))):
        image = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                image.update(block)
        total.update(f"{subject}\t{label}\t{image.hexdigest()}\n".encode())
    return total.hexdigest()[:DIGEST_CHARS]


@dataclass(frozen=True)
class DataKey:
    """What identifies an evaluation's data: ``digest`` (:func:`content_digest`; None for a run
    from before it), ``dataset_digest`` (the MLflow data set digest the run logged), the subject
    ids with their labels, and the cohort ``source`` as it was given."""

    digest: str | None
    dataset_digest: str | None
    labels: dict  # subject_id -> label (class name)
    source: str | None

    @classmethod
    def of(cls, rows: pd.DataFrame, source: str | None, dataset_digest: str | None = None) -> DataKey:
        """The key of evaluated scans: ``rows`` with ``subject_id``, ``label`` (class name), ``path``."""
        return cls(content_digest(rows), dataset_digest, dict(zip(rows["subject_id"].astype(str),
                                                                   rows["label"].astype(str))), source)

    @property
    def subject_ids(self) -> set[str]:
        return set(self.labels)

    def describe(self) -> str:
        return (f"{len(self.labels)} subjects from {self.source or 'an unnamed source'}"
                + (f", content digest {self.digest[:8]}" if self.digest else ""))


@dataclass(frozen=True)
class Search:
    """The outcome of looking for the champion's evaluation on the same data: ``found`` (None
    when there is none) and ``why`` (one line, when there is none)."""

    found: ChampionRun | None
    why: str = ""
    champion_version: str | None = None  # set when another version holds the alias


def find(client, name: str | None, version: str | None, run_id: str, key: DataKey, folder: Path) -> Search:
    """The champion to compare with, its evaluation downloaded to ``folder``.

    The champion is the version with alias ``champion`` (another version than this one); its
    evaluation on the same data is the first of its FINISHED evaluation runs whose data matches
    ``key``: the run its ``heimer.evaluation_run_id`` names first, then the others, newest first
    (:func:`matches`). When none matches, ``why`` says which evaluations exist and why each was
    not taken."""
    if not name:
        return Search(None, "the evaluated model is not a registered model version")
    try:
        champion = client.get_model_version_by_alias(name, ALIAS)
    except Exception as error:  # noqa: BLE001 - deleted model, no alias, unreachable store
        log.info("no champion for %s (%s)", name, type(error).__name__)
        return Search(None, f"no version of {name} carries the alias '{ALIAS}'")
    if str(champion.version) == str(version):
        return Search(None, f"this version holds the alias '{ALIAS}' itself")
    other = str(champion.version)
    runs = _evaluations(client, name, other, (champion.tags or {}).get("heimer.evaluation_run_id"), run_id)
    if not runs:
        return Search(None, f"the champion, {name} version {other}, has no finished evaluation: evaluate it on "
                            "this data to compare", other)
    reasons = []
    for number, run in enumerate(runs):
        candidate = folder / "candidates" / run.info.run_id
        verdict = matches(client, run, key, candidate, explain=number < MAX_EXPLAINED)
        if verdict is True:
            folder.mkdir(parents=True, exist_ok=True)
            try:
                for artifact in ARTIFACTS:
                    mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=artifact,
                                                        dst_path=str(folder))
            except Exception as error:  # noqa: BLE001
                reasons.append(f"run {run.info.run_id[:8]}: its artifacts cannot be read ({type(error).__name__})")
                continue
            return Search(ChampionRun(name, other, run.info.run_id, folder), "", other)
        reasons.append(f"run {run.info.run_id[:8]} on {_source(run, candidate)}: {verdict}")
    shown = "; ".join(reasons[:MAX_EXPLAINED]) + (f"; and {len(reasons) - MAX_EXPLAINED} more" if len(reasons) >
                                                   MAX_EXPLAINED else "")
    which = ("its only finished evaluation used other data" if len(runs) == 1 else
             f"none of its {len(runs)} finished evaluations used this data")
    return Search(None, f"the champion is {name} version {other}, and {which} (this evaluation: {key.describe()}): "
                        f"{shown}", other)


def _evaluations(client, name: str, version: str, tagged: str | None, run_id: str) -> list:
    """The FINISHED evaluation runs of ``name`` ``version``: the tagged one first, then the others,
    newest first (at most MAX_CANDIDATES), never this evaluation's own run."""
    runs, seen = [], {run_id}
    if tagged and tagged not in seen:
        try:
            run = client.get_run(tagged)
            if run.info.status == "FINISHED":
                runs.append(run)
            seen.add(tagged)
        except Exception:  # noqa: BLE001 - deleted run
            pass
    if "'" not in name:  # a name the filter cannot quote: the tagged run only
        try:
            found = mlflow.search_runs(
                search_all_experiments=True, output_format="list", max_results=MAX_CANDIDATES,
                filter_string=f"tags.`heimer.model_name` = '{name}' and tags.`heimer.model_version` = '{version}' "
                              "and tags.`heimer.status` = 'finished'",
                order_by=["attributes.start_time DESC"])
        except Exception as error:  # noqa: BLE001 - a store that cannot search: the tagged run only
            log.info("searching the champion's evaluations failed (%s)", type(error).__name__)
            found = []
        runs += [r for r in found if r.info.run_id not in seen and r.info.status == "FINISHED"]
    return runs[:MAX_CANDIDATES]


def _source(run, folder: Path) -> str:
    """The cohort a run evaluated, as it was given: its tag, else its evaluation.json's (when
    downloaded to ``folder``), else its ``data`` parameter (``mlflow run``)."""
    return str(run.data.tags.get(SOURCE_TAG) or _record_source(folder) or run.data.params.get("data")
               or "a cohort it did not record")


def matches(client, run, key: DataKey, folder: Path, *, explain: bool = True) -> bool | str:
    """True when ``run`` evaluated the data ``key`` describes; else why not, in words.

    Both with a content digest: the digests decide. A run from before content digests: its
    logged MLflow data set digest equals this evaluation's (that digest covers the subject ids,
    the resolved paths, the labels and the covariates, so the path's spelling does not matter);
    where either logged none, the cohort source and the subject ids as before."""
    theirs = (run.data.tags or {}).get(DIGEST_TAG)
    if key.digest and theirs:
        if theirs == key.digest:
            return True
        return _difference(run, key, folder) if explain else "other data (another content digest)"
    digests = dataset_digests(client, run.info.run_id)
    if key.dataset_digest and digests:
        if key.dataset_digest in digests:
            return True
        why = _difference(run, key, folder) if explain else "other data"
        return f"{why} (an older evaluation, compared by its MLflow data set digest)"
    other = _labels(run, folder)
    source = _record_source(folder)
    if other is not None and source == key.source and set(other) == key.subject_ids:
        return True
    return "another cohort source or other subjects (an older evaluation without a data set digest)"


def _difference(run, key: DataKey, folder: Path) -> str:
    """Why ``run``'s data differs from ``key``'s, from its predictions.csv."""
    other = _labels(run, folder)
    if other is None:
        return "other data (its predictions cannot be read)"
    missing = sorted(key.subject_ids - set(other))
    extra = sorted(set(other) - key.subject_ids)
    relabelled = sorted(s for s in key.subject_ids & set(other) if str(other[s]) != str(key.labels[s]))
    parts = []
    for count, what, ids in ((len(missing), "not in it", missing), (len(extra), "not in this cohort", extra),
                             (len(relabelled), "with another label", relabelled)):
        if count:
            parts.append(f"{count} subject(s) {what} ({', '.join(ids[:3])}{', ...' if count > 3 else ''})")
    return "; ".join(parts) if parts else "the same subjects and labels, but other image files"


def _labels(run, folder: Path) -> dict | None:
    """``run``'s evaluated subjects and their labels (its predictions.csv), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for artifact in ("predictions.csv", "evaluation.json"):
            mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=artifact, dst_path=str(folder))
        table = pd.read_csv(folder / "predictions.csv", dtype={"subject_id": str})
        return dict(zip(table["subject_id"].astype(str), table["label"].astype(str)))
    except Exception as error:  # noqa: BLE001 - an evaluation without its files
        log.info("run %s: predictions unavailable (%s)", run.info.run_id, type(error).__name__)
        return None


def dataset_digests(client, run_id: str) -> set[str]:
    """Digests of the data sets logged as the run's inputs (empty when none or unreadable)."""
    try:
        inputs = client.get_run(run_id).inputs
        return {d.dataset.digest for d in (inputs.dataset_inputs or []) if d.dataset and d.dataset.digest}
    except Exception:  # noqa: BLE001
        return set()


def _record_source(folder: Path) -> str | None:
    try:
        return (json.loads((folder / "evaluation.json").read_text(encoding="utf-8")).get("cohort") or {}).get("source")
    except Exception:  # noqa: BLE001
        return None


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
        """``vs_champion_*`` run metrics (named in docs/design.md), the computable ones."""
        named = {"vs_champion_roc_auc_diff": self.roc_auc_diff,
                 "vs_champion_roc_auc_diff_ci_lower": self.roc_auc_diff_ci_lower,
                 "vs_champion_roc_auc_diff_ci_upper": self.roc_auc_diff_ci_upper,
                 "vs_champion_delong_p": self.delong_p}
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
    names = (negative_class(class_names, positive), positive)
    difference, p_value = paired_delong(y, merged[column].to_numpy(float), merged[f"{column}_champion"].to_numpy(float),
                                        class_names=names,
                                        clusters=merged["participant_id"].to_numpy() if clustered else None)
    auc_this = auc_champion = None
    if difference.computable:
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
    )


def data_key(evaluation, predictions: pd.DataFrame, dataset_digest: str | None) -> DataKey:
    """The key of a finished evaluation's data: its evaluated scans (``predictions``: subject_id,
    label) and their files, the MLflow data set digest it logs, the cohort source."""
    rows = evaluation.engine.subjects["index"].astype(int)
    files = pd.DataFrame({"subject_id": predictions["subject_id"].astype(str).to_numpy(),
                          "label": predictions["label"].astype(str).to_numpy(),
                          "path": evaluation.cohort.table["path"].iloc[rows].astype(str).to_numpy()})
    return DataKey.of(files, evaluation.cohort.source, dataset_digest)


def with_champion(evaluation, predictions: pd.DataFrame, key: DataKey, work: Path | None = None):
    """(Comparison, ChampionRun, Search) for an evaluation; the first two None when there is no
    comparison, and then ``Search.why`` says why. A comparison that cannot be made (no champion,
    other data, a store problem) never fails the evaluation."""
    model, meta = evaluation.model, evaluation.model.meta
    work = Path(work or tempfile.mkdtemp(prefix="heimer-champion-"))
    try:
        search = find(MlflowClient(), model.name, model.version, evaluation.run_id or "", key, work / "champion")
        if search.found is None:
            return None, None, search
        comparison = compare(predictions, search.found, positive=meta.positive_class, class_names=meta.class_names)
        return comparison, search.found, search
    except Exception as error:  # noqa: BLE001 - see the docstring
        log.warning("the comparison with the champion could not be made (%s: %s)", type(error).__name__, error)
        return None, None, Search(None, f"the comparison could not be made ({type(error).__name__}: {error})")
