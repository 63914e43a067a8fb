"""The champion found by content (issue 27, item 1): the same cohort given by a relative path, an
absolute path or through a symlinked folder finds the same champion evaluation; a changed label
or a missing subject does not, and then one stderr line and the report say which evaluations
exist and why none matched. Older evaluation runs (no content digest) still match through the
MLflow data set digest they logged. Real sqlite store, real NIfTI heads, real evaluations."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from heimer_mlflow import champion
from heimer_mlflow.cohort import read_cohort
from heimer_mlflow.evaluation import evaluate

from .helpers.artifacts import pdf_text
from .helpers.cohorts import GRID, good_rows, write_manifest
from .helpers.models import PlantedReader, TinyCNN
from .helpers.tracking import cli_evaluate, new_version

EXPERIMENT = "champion-by-content"
NAME = "champion-by-content"
CLASSES = ["CN", "AD"]


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, tracking_dir):
    """8 heads in a folder with a manifest; v1 (alias champion) evaluated on it by its absolute
    path, v2 registered, not evaluated. Returns (cohort folder, the champion's run id)."""
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    folder = tmp_path_factory.mktemp("reviewed") / "cohort"
    folder.mkdir()
    manifest = write_manifest(folder, good_rows(folder))
    first = new_version(NAME, TinyCNN(), intensity="zscore")
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", first)
    new_version(NAME, TinyCNN(n_outputs=1), intensity="zscore")
    result = evaluate(f"models:/{NAME}@champion", str(manifest.resolve()), experiment=EXPERIMENT, n_bootstrap=50,
                      workers=0, progress=False)  # fmt: skip
    return folder, result.run_id


def key(data, source=None) -> champion.DataKey:
    """The data key of a cohort as the evaluation computes it (digest over every scan read)."""
    cohort = read_cohort(data, CLASSES)
    rows = cohort.table[["subject_id", "label_name", "path"]].rename(columns={"label_name": "label"})
    return champion.DataKey.of(rows, source or cohort.source)


def search(data_key, tmp_path) -> champion.Search:
    return champion.find(mlflow.MlflowClient(), NAME, "2", "", data_key, tmp_path / "found")


def test_the_same_data_is_the_same_whatever_the_path_says(tracking, reviewed, tmp_path, monkeypatch):
    folder, champion_run = reviewed
    link = tmp_path / "linked"
    link.symlink_to(folder, target_is_directory=True)
    monkeypatch.chdir(folder.parent)
    spellings = ["cohort/manifest.csv", str(folder / "manifest.csv"), str(link / "manifest.csv"), "cohort",
                 "./cohort/../cohort/manifest.csv"]  # fmt: skip
    digests = {key(spelling).digest for spelling in spellings}
    assert len(digests) == 1
    tagged = mlflow.get_run(champion_run).data.tags[champion.DIGEST_TAG]
    assert digests == {tagged}
    for spelling in spellings:
        found = search(key(spelling), tmp_path / spelling.replace("/", "_")).found
        assert found is not None and found.run_id == champion_run and found.version == "1", spelling
    # row order and covariates do not enter; a copy of the files elsewhere is the same data
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    table = pd.read_csv(copy / "manifest.csv").iloc[::-1]
    table["site"] = "elsewhere"
    table.to_csv(copy / "manifest.csv", index=False)
    assert key(copy / "manifest.csv").digest == tagged


def test_other_labels_subjects_or_images_do_not_match_and_say_why(tracking, reviewed, tmp_path):
    folder, _ = reviewed
    table = pd.read_csv(folder / "manifest.csv")
    table["path"] = [str(folder / p) for p in table["path"]]
    relabelled = table.copy()
    relabelled.loc[0, "label"] = "AD"  # good0 was CN
    relabelled.to_csv(tmp_path / "relabelled.csv", index=False)
    table.iloc[1:].to_csv(tmp_path / "missing.csv", index=False)
    changed = tmp_path / "changed"
    shutil.copytree(folder, changed)
    (changed / "good3.nii.gz").write_bytes((folder / "good5.nii.gz").read_bytes())

    why = {}
    for name, data in (("relabelled", tmp_path / "relabelled.csv"), ("missing", tmp_path / "missing.csv"),
                       ("changed", changed / "manifest.csv")):  # fmt: skip
        result = search(key(data), tmp_path / name)
        assert result.found is None and result.champion_version == "1", name
        why[name] = result.why
        assert why[name].startswith(f"the champion is {NAME} version 1, and its only finished evaluation used "
                                    "other data"), why[name]  # fmt: skip
    assert "1 subject(s) with another label (good0)" in why["relabelled"]
    assert "1 subject(s) not in this cohort (good0)" in why["missing"]
    assert "the same subjects and labels, but other image files" in why["changed"]
    assert str(folder / "manifest.csv") in why["relabelled"]  # which evaluation exists, on which data


def test_an_older_champion_run_matches_by_its_data_set_digest(tracking, reviewed, tmp_path, monkeypatch):
    """A champion evaluated before content digests existed (no heimer.data_digest tag): the MLflow
    data set digest it logged (subject ids, resolved paths, labels) decides, whatever the spelling."""
    folder, champion_run = reviewed
    client = mlflow.MlflowClient()
    digest = client.get_run(champion_run).data.tags[champion.DIGEST_TAG]
    logged = champion.dataset_digests(client, champion_run)
    assert len(logged) == 1
    client.delete_tag(champion_run, champion.DIGEST_TAG)
    try:
        monkeypatch.chdir(folder.parent)
        this = key("cohort/manifest.csv")
        older = champion.DataKey(None, next(iter(logged)), this.labels, "cohort/manifest.csv")
        found = search(older, tmp_path / "older").found
        assert found is not None and found.run_id == champion_run
        relabelled = champion.DataKey(None, "0" * 8, {**this.labels, "good0": "AD"}, "cohort/manifest.csv")
        result = search(relabelled, tmp_path / "relabelled")
        assert result.found is None and "1 subject(s) with another label (good0)" in result.why
        assert "an older evaluation, compared by its MLflow data set digest" in result.why
    finally:
        client.set_tag(champion_run, champion.DIGEST_TAG, digest)


@pytest.mark.slow
def test_a_relative_path_finds_the_champion_through_the_command_line(tracking, reviewed, capsys, monkeypatch):
    """The newcomer's case: the champion evaluated by the absolute path (as `mlflow run` passes
    it), the challenger by a relative one: the comparison is made and recorded. The same
    challenger on a relabelled copy: one stderr line and the report say why there is none."""
    folder, champion_run = reviewed
    monkeypatch.chdir(folder.parent)
    code, lines, out = cli_evaluate(capsys, f"models:/{NAME}/2", "--data", "cohort/manifest.csv",
                                    experiment=EXPERIMENT)  # fmt: skip
    assert code == 0 and lines == [], lines
    run = mlflow.get_run(out.split()[1].rstrip(":"))
    assert "vs_champion_roc_auc_diff" in run.data.metrics
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="evaluation.json"))
    assert f'"champion_run_id": "{champion_run}"' in local.read_text()

    table = pd.read_csv(folder / "manifest.csv")
    table.loc[0, "label"] = "AD"
    table.to_csv(folder / "relabelled.csv", index=False)
    try:
        code, lines, out = cli_evaluate(capsys, f"models:/{NAME}/2", "--data", "cohort/relabelled.csv",
                                        experiment=EXPERIMENT)  # fmt: skip
    finally:
        (folder / "relabelled.csv").unlink()
    assert code == 0 and len(lines) == 1, lines
    assert lines[0].startswith("[heimer] no comparison with the champion: the champion is "
                               f"{NAME} version 1, and its only finished evaluation used other data")
    assert "another label (good0)" in lines[0]
    run_id = out.split()[1].rstrip(":")
    assert "vs_champion_roc_auc_diff" not in mlflow.get_run(run_id).data.metrics
    report = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="report"))
    text = " ".join(pdf_text(next(report.glob("*.pdf"))).split())
    assert "No champion to compare with: the champion is" in text and "another label (good0)" in text
    description = mlflow.MlflowClient().get_model_version(NAME, "2").description
    assert "**No comparison with the champion**: the champion is" in description


def independent_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """AUC(a) - AUC(b) and DeLong's two-sided p, written out here from DeLong et al. (1988) with
    the Mann-Whitney kernel, independently of heimer_mlflow.metrics."""
    positive, negative = y == 1, y == 0

    def components(score):
        kernel = (score[positive][:, None] > score[negative][None, :]) + 0.5 * (
            score[positive][:, None] == score[negative][None, :])
        return kernel.mean(axis=1), kernel.mean(axis=0), kernel.mean()

    v_a, w_a, auc_a = components(a)
    v_b, w_b, auc_b = components(b)
    contrast = np.array([1.0, -1.0])
    variance = (contrast @ np.cov(np.vstack([v_a, v_b])) @ contrast / positive.sum()
                + contrast @ np.cov(np.vstack([w_a, w_b])) @ contrast / negative.sum())  # fmt: skip
    difference = auc_a - auc_b
    return difference, float(2 * stats.norm.sf(abs(difference) / np.sqrt(variance)))


def test_a_challenger_is_compared_with_the_champion_on_the_same_heads(tracking, reviewed):
    """A challenger evaluated on the champion's data: the comparison finds the champion's run and
    pairs the two on all 8 heads; the AUCs are scikit-learn's on the two predictions.csv, the
    difference and DeLong's p an independent computation's, logged as vs_champion_* metrics. The
    challenger reads a small block of voxels: its scores neither separate the classes perfectly
    nor tie (the champion's do separate them), so the test's variance is not zero."""
    folder, champion_run = reviewed
    weights = np.zeros(GRID, np.float32)
    weights[3:5, 4:6, 3:5] = 1.0
    challenger = new_version(NAME, PlantedReader(weights), intensity="zscore")
    result = evaluate(f"models:/{NAME}/{challenger}", str(folder / "manifest.csv"), experiment=EXPERIMENT,
                      n_bootstrap=50, workers=0, progress=False)  # fmt: skip
    comparison = result.comparison
    assert comparison is not None and comparison.champion_run_id == champion_run
    assert comparison.champion_version == "1" and comparison.n_shared == 8
    mine, theirs = (pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run, artifact_path="predictions.csv"))
                    for run in (result.run_id, champion_run))  # fmt: skip
    paired = mine.merge(theirs, on="subject_id", suffixes=("", "_champion"))
    y = (paired["label"] == "AD").to_numpy(int)
    assert 0 < roc_auc_score(y, paired["prob_AD"]) < 1
    assert comparison.roc_auc == pytest.approx(roc_auc_score(y, paired["prob_AD"]))
    assert comparison.champion_roc_auc == pytest.approx(roc_auc_score(y, paired["prob_AD_champion"]))
    difference, p_value = independent_delong(y, paired["prob_AD"].to_numpy(), paired["prob_AD_champion"].to_numpy())
    assert comparison.roc_auc_diff == pytest.approx(difference, abs=1e-12)
    assert 0 < p_value < 1 and comparison.delong_p == pytest.approx(p_value, rel=1e-9)
    assert comparison.roc_auc_diff_ci_lower <= comparison.roc_auc_diff <= comparison.roc_auc_diff_ci_upper
    logged = mlflow.get_run(result.run_id).data.metrics
    assert logged["vs_champion_roc_auc_diff"] == pytest.approx(difference)
    assert logged["vs_champion_delong_p"] == pytest.approx(p_value)
    assert comparison.champion_verdict == mlflow.get_run(champion_run).data.tags["heimer.verdict"]
