"""Promotion gates and the order of tags: rules on run metrics and the verdict, judged after the
run FINISHED, exit code 3, `heimer.gate` on the run and the version; a version is tagged only
after its run FINISHED, even when a signal arrives right after the report was rendered. Real
sqlite store, the real CLI (in process, and in a subprocess for the signal)."""

from __future__ import annotations

import functools
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from pypdf import PdfReader

from heimer_mlflow.errors import HeimerError
from heimer_mlflow.evaluation import evaluate
from heimer_mlflow.gate import Gate, GateFailed, Rule, run_metric_names

from .helpers.cohorts import good_rows, write_manifest
from .helpers.models import TinyCNN
from .helpers.tracking import cli_evaluate, experiment_runs, heimer_tags, new_version, only_run, subprocess_env

EXPERIMENT = "gates"


# --------------------------------------------------------------------------- rules


def test_rules_read_and_judge():
    gate = Gate.parse(["roc_auc_ci_lower>=0.75", "sensitivity > 0.8;brier_score<0.2", ""], "pass")
    assert [str(r) for r in gate.rules] == ["roc_auc_ci_lower>=0.75", "sensitivity>0.8", "brier_score<0.2"]
    metrics = {"roc_auc_ci_lower": 0.80, "sensitivity": 0.8, "brier_score": 0.1}
    result = gate.judge(metrics, "review", "90% of the Grad-CAM lies outside the brain")
    assert result.status == "failed"
    assert result.failures == ["sensitivity>0.8: sensitivity is 0.8",
                               "verdict=pass: the verdict is review (90% of the Grad-CAM lies outside the brain)"]
    assert result.tags()["heimer.gate"] == "failed" and "sensitivity>0.8" in result.tags()["heimer.gate_failed"]
    # the progress line names the broken rules only, not one that held beside them
    assert result.summary() == "failed: 2 of 4 rule(s) broke: sensitivity>0.8; verdict=pass"
    assert gate.judge({**metrics, "sensitivity": 0.9}, "pass", "").summary() == (
        "passed: roc_auc_ci_lower>=0.75; sensitivity>0.8; brier_score<0.2; verdict=pass")
    assert gate.judge({**metrics, "sensitivity": 0.9}, "pass", "").passed
    # a number the run could not compute breaks the rule, with the reason
    missing = Gate.parse("ppv_ci_lower>=0.5").judge({}, "pass", "", {"ppv": "no subject called AD"})
    assert missing.failures == ["ppv_ci_lower>=0.5: ppv_ci_lower could not be computed (no subject called AD)"]
    assert not Gate.parse((), None) and not Gate.parse("", "")


@pytest.mark.parametrize("text", ["roc_auc=>0.7", "roc_auc", ">=0.7", "roc_auc>=high", "roc_auc>=nan"])
def test_a_rule_that_cannot_be_read_is_a_user_error(text):
    with pytest.raises(HeimerError, match="is not a rule: write METRIC>=NUMBER"):
        Rule.parse(text)


def test_metric_names_come_from_the_metrics_module():
    names = run_metric_names(("Hippocampus_L",))
    assert {"roc_auc", "roc_auc_ci_lower", "sensitivity_ci_lower", "brier_score", "n_subjects", "n_excluded",
            "cam_outside_brain_fraction", "cam_method_agreement", "cam_roi_gain_Hippocampus_L"} <= names
    with pytest.raises(HeimerError, match="'roc_aux' is not a metric this evaluation logs"):
        Gate.parse("roc_aux>=0.7").check_names()
    with pytest.raises(HeimerError, match="needs --atlas"):
        Gate.parse("cam_roi_gain_Hippocampus_L>=2").check_names()


# --------------------------------------------------------------------------- evaluations


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """A fresh version of a tiny model, and a manifest of 8 small heads."""
    folder = tmp_path_factory.mktemp("gates")
    return write_manifest(folder, good_rows(folder))


def _runs() -> list:
    return experiment_runs(EXPERIMENT)


_cli = functools.partial(cli_evaluate, experiment=EXPERIMENT)


def test_a_rule_on_an_unknown_metric_stops_before_any_run(tracking, gated, capsys):
    version = new_version("gate-unknown", TinyCNN(), intensity="zscore")
    before, _ = len(_runs()), capsys.readouterr()
    code, lines, _ = _cli(capsys, f"models:/gate-unknown/{version}", "--data", str(gated),
                          "--require", "roc_auc>=0.5", "--require", "sensitivty>=0.8")
    assert code == 2 and len(lines) == 1, lines
    assert "'sensitivty' is not a metric this evaluation logs" in lines[0] and "sensitivity" in lines[0]
    code, lines, _ = _cli(capsys, f"models:/gate-unknown/{version}", "--data", str(gated), "--require-verdict", "review")
    assert code == 2 and len(lines) == 1 and "--require-verdict 'review'" in lines[0], lines
    assert len(_runs()) == before and heimer_tags("gate-unknown", version) == {}


def test_a_broken_rule_exits_3_after_the_run_finished(tracking, gated, capsys):
    version = new_version("gate-fails", TinyCNN(), intensity="zscore")
    capsys.readouterr()
    code, lines, out = _cli(capsys, f"models:/gate-fails/{version}", "--data", str(gated),
                            "--require", "roc_auc>=0", "--require", "n_subjects>=100;sensitivity>1",
                            "--require-verdict", "pass")
    assert code == 3, lines
    run_id = out.split()[1].rstrip(":")
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    verdict = run.data.tags["heimer.verdict"]
    expected = ["heimer-mlflow: gate failed: n_subjects>=100: n_subjects is 8",
                "heimer-mlflow: gate failed: sensitivity>1: sensitivity is "]
    if verdict != "pass":
        expected.append("heimer-mlflow: gate failed: verdict=pass: the verdict is review (")
    assert len(lines) == len(expected) and all(line.startswith(e) for line, e in zip(lines, expected)), lines
    assert run.data.tags["heimer.gate"] == "failed"
    assert run.data.tags["heimer.gate_rules"] == "roc_auc>=0; n_subjects>=100; sensitivity>1; verdict=pass"
    assert "n_subjects>=100" in run.data.tags["heimer.gate_failed"] and "roc_auc>=0" not in run.data.tags["heimer.gate_failed"]
    tags = heimer_tags("gate-fails", version)
    assert tags["heimer.gate"] == "failed" and tags["heimer.evaluation_run_id"] == run_id
    assert tags["heimer.report"].startswith(run.info.artifact_uri)
    # an evaluation by hand writes the version's description summary too, once the run FINISHED
    description = mlflow.MlflowClient().get_model_version("gate-fails", version).description
    assert "<!-- heimer-mlflow summary: start -->" in description and run_id in description
    assert "(promotion gate: failed)" in description and "| AUC |" in description
    # its first line (what the versions list previews) and the report's Model Facts page say what to do
    assert description.splitlines()[0].startswith(f"{verdict} · AUC ") and "gate failed · do not promote" in description
    client = mlflow.MlflowClient()
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="report"))
    pages = [" ".join((page.extract_text() or "").split()) for page in PdfReader(next(local.glob("*.pdf"))).pages]
    facts = pages[0]
    assert "Maps to scroll" in " ".join(pages) and "viewers/hirescam_AD_mean.html" in " ".join(pages)
    assert "Recommendation for the registry: Do not promote" in facts and "The promotion gate failed" in facts
    assert "Failed: n_subjects>=100: n_subjects is 8" in facts
    checklist = json.loads((local / "checklist.json").read_text())
    assert {i["status"] for i in checklist["items"]} == {"filled", "partly filled", "to be completed by the study team"}
    # the maps to scroll: self-contained viewers, a few hundred KB each, listed for the report
    viewers = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="viewers/viewers.json"))
                         .read_text())  # fmt: skip
    assert sorted(v["path"] for v in viewers) == sorted(a.path for a in client.list_artifacts(run_id, "viewers")
                                                       if a.path.endswith(".html"))  # fmt: skip
    assert len(viewers) == 3 and all(0 < a.file_size < 3_000_000 for a in client.list_artifacts(run_id, "viewers"))


@pytest.mark.slow
def test_python_require_passes_or_raises_with_the_evaluation(tracking, gated, capsys):
    version = new_version("gate-python", TinyCNN(), intensity="zscore")
    options = dict(experiment=EXPERIMENT, n_bootstrap=50, workers=0, progress=True)
    result = evaluate(f"models:/gate-python/{version}", gated, require=["n_subjects>=8", "roc_auc>=0"], **options)
    assert result.gate.passed and result.gate.rules == "n_subjects>=8; roc_auc>=0"
    client = mlflow.MlflowClient()
    assert client.get_run(result.run_id).data.tags["heimer.gate"] == "passed"
    assert "heimer.gate_failed" not in client.get_run(result.run_id).data.tags
    assert heimer_tags("gate-python", version)["heimer.gate"] == "passed"

    with pytest.raises(GateFailed) as failed:
        evaluate(f"models:/gate-python/{version}", gated, require=["roc_auc>1"], **options)
    evaluation = failed.value.evaluation
    assert failed.value.failures == [f"roc_auc>1: roc_auc is {evaluation.run_metrics['roc_auc']:.4g}"]
    progress = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[heimer] gate ")]
    assert progress == ["[heimer] gate passed: n_subjects>=8; roc_auc>=0", "[heimer] gate failed: 1 of 1 rule(s) broke: roc_auc>1"]
    assert client.get_run(evaluation.run_id).info.status == "FINISHED"
    tags = heimer_tags("gate-python", version)
    assert tags["heimer.gate"] == "failed" and tags["heimer.evaluation_run_id"] == evaluation.run_id
    assert math.isfinite(float(tags["heimer.roc_auc"]))


# A subprocess whose report_for_run is followed by SIGTERM: the moment the old code had already
# tagged the version with heimer.report while the run was still RUNNING.
TERMINATE_AFTER_RENDER = """
import os, signal, sys
import heimer_mlflow.report as report
render = report.report_for_run
def render_then_terminate(*args, **kwargs):
    files = render(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    return files
report.report_for_run = render_then_terminate
from heimer_mlflow.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_after_the_render_leaves_the_version_untagged(tracking, gated):
    from heimer_mlflow.report import report_for_run

    name = "gate-sigterm"
    version = new_version(name, TinyCNN(), intensity="zscore")
    done = subprocess.run(
        [sys.executable, "-c", TERMINATE_AFTER_RENDER, "-q", "evaluate", f"models:/{name}/{version}", "--data",
         str(gated), "--experiment", "gate-sigterm", "--bootstrap", "50", "--workers", "0", "--require", "roc_auc>=0"],
        env=subprocess_env(tracking), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-3000:]
    client = mlflow.MlflowClient()
    run = only_run("gate-sigterm")
    assert run.info.status == "KILLED"
    assert any(a.path.endswith(".pdf") for a in client.list_artifacts(run.info.run_id, "report"))  # it had rendered
    assert "heimer.gate" not in run.data.tags
    assert heimer_tags(name, version) == {}
    assert not client.get_model_version(name, version).description  # no summary of a run that did not finish
    # re-rendering a killed run logs the report to that run but never points the version at it
    report_for_run(run.info.run_id)
    assert heimer_tags(name, version) == {}
