"""`torchrun --nproc-per-node 2 -m heimer_mlflow evaluate` (gloo, CPU) against a real sqlite
tracking store: one run, equal to a one-process evaluation of the same cohort; a fault on one
rank ends the job with the rank's message, the run FAILED and the version untagged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from .helpers import REPO
from .helpers.cohorts import SYNTHETIC_INPUT_SHAPE, atlas_args
from .helpers.models import FailsOnRankOne
from .helpers.tracking import heimer_tags, log_version, only_run, register_tiny_model, subprocess_env

pytestmark = pytest.mark.slow
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def cohort(synthetic_cohort):
    return synthetic_cohort


def command(model_uri: str, cohort: Path, experiment: str, processes: int) -> list[str]:
    args = ["-m", "heimer_mlflow", "-q", "evaluate", model_uri, "--data", str(cohort), *atlas_args(cohort),
            "--experiment", experiment, "--bootstrap", "200", "--workers", "0", "--device", "cpu"]
    if processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *args]
    return [sys.executable, *args]


def launch(tracking: Path, model_uri: str, cohort: Path, experiment: str, processes: int) -> subprocess.CompletedProcess:
    env = subprocess_env(tracking)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))  # the fault-injecting model class lives in tests/
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.run(command(model_uri, cohort, experiment, processes), env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S, cwd=tracking)


def test_two_processes_log_one_run_equal_to_one_process(tracking, cohort):
    version = register_tiny_model("dist-eval")
    uri = f"models:/dist-eval/{version}"
    single = launch(tracking, uri, cohort, "dist-single", 1)
    assert single.returncode == 0, single.stderr[-3000:]
    sharded = launch(tracking, uri, cohort, "dist-sharded", 2)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    one, two = only_run("dist-single"), only_run("dist-sharded")  # rank 1 logged nothing
    assert one.info.status == two.info.status == "FINISHED"
    assert two.data.params["heimer.processes"] == "2" and one.data.params["heimer.processes"] == "1"
    local = {run.info.run_id: Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id)) for run in (one, two)}
    a, b = (pd.read_csv(local[r.info.run_id] / "predictions.csv") for r in (one, two))
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-7)
    assert sorted(a["subject_id"]) == sorted(pd.read_csv(cohort / "manifest.csv")["subject_id"])
    assert set(one.data.metrics) == set(two.data.metrics)
    for key, value in one.data.metrics.items():
        assert two.data.metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    for name in ("cam_mean_AD.nii.gz", "cam_t_AD-CN.nii.gz", "input_diff_AD-CN.nii.gz"):
        x, y = (np.asarray(nib.load(local[r.info.run_id] / "volumes" / name).dataobj) for r in (one, two))
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6 * float(np.abs(x).max()))
    records = [json.loads((local[r.info.run_id] / "evaluation.json").read_text()) for r in (one, two)]
    assert [r["engine"]["world_size"] for r in records] == [1, 2]
    assert records[0]["engine"]["gallery"] == records[1]["engine"]["gallery"]
    assert records[0]["engine"]["sanity"] == records[1]["engine"]["sanity"]
    tags = mlflow.MlflowClient().get_model_version("dist-eval", version).tags
    assert tags["heimer.evaluation_run_id"] == two.info.run_id  # the later evaluation
    assert list((local[two.info.run_id] / "report").glob("*.pdf"))


def test_a_fault_on_one_rank_fails_the_run_and_tags_nothing(tracking, cohort):
    torch.manual_seed(0)
    # pickled: the fault is Python code that asks which rank runs it (an exported program has no Python)
    version = log_version("dist-fault", FailsOnRankOne(), input_shape=SYNTHETIC_INPUT_SHAPE, intensity="zscore",
                          experiment="tiny-training", serialization_format="pickle")  # fmt: skip
    done = launch(tracking, f"models:/dist-fault/{version}", cohort, "dist-fault", 2)
    assert done.returncode != 0
    assert "rank 1 of 2 failed: the model fails on an input" in done.stderr, done.stderr[-3000:]
    assert "injected fault on rank 1" in done.stderr
    assert "Traceback" not in "\n".join(line for line in done.stderr.splitlines() if "[rank0]" in line)
    run = only_run("dist-fault")
    assert run.info.status == "FAILED"
    assert "rank 1 of 2 failed" in run.data.tags["heimer.error"]
    assert not heimer_tags("dist-fault", version)
