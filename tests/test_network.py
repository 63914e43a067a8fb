"""A flaky network between heimer-mlflow and a real `mlflow server`: a fault-injecting TCP proxy
on loopback (tests/helpers/faults.py) answers 503 or resets every connection for a stretch.

- an outage of 15 s from the first artifact upload is ridden out by MLflow's retries: the run
  FINISHED with every artifact, the version tagged;
- with retries that run out (MLFLOW_HTTP_REQUEST_MAX_RETRIES=1) a 60 s outage from the same
  request ends the run FAILED with the reason once the server answers again: no FINISHED run, no
  tag on the version;
- a watcher polling through the proxy outlives a 15 s outage and evaluates the version registered
  meanwhile.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from .helpers.faults import FaultyProxy
from .helpers.servers import tail, tracking_server, using
from .helpers.tracking import register_tiny_model, subprocess_env

pytestmark = [pytest.mark.server, pytest.mark.slow]
EXPERIMENT = "network-evaluations"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tracking_server("sqlite", tmp_path_factory.mktemp("network-server")) as running:
        yield running


def start_evaluation(proxy, folder: Path, cohort, name: str, version: str, **env) -> subprocess.Popen:
    environment = {**subprocess_env(folder), "MLFLOW_TRACKING_URI": proxy.url, **env}
    err = open(folder / "evaluate.err", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "heimer_mlflow", "-q", "evaluate", f"models:/{name}/{version}",
                             "--data", str(cohort), "--experiment", EXPERIMENT, "--bootstrap", "50", "--workers", "0"],
                            env=environment, cwd=folder, stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip


def run_of(client, name: str, version: str):
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], f"tags.`heimer.model_name` = '{name}'")
    return runs[0] if runs else None


# The first artifact upload: the run has its metrics and data set, and every artifact is still to
# come. Set off by the request itself, the outage meets the same moment on any machine (a first
# version of these tests watched the run's metrics from outside and, on a quiet machine, began its
# outage after the evaluation had finished).
FIRST_UPLOAD = b"PUT /api/2.0/mlflow-artifacts/artifacts/"


def test_an_outage_while_logging_is_ridden_out(server, synthetic_cohort, tmp_path):
    name = "network-outage"
    with using(server) as client, FaultyProxy(server.port) as proxy:
        version = register_tiny_model(name)
        proxy.fail_on(FIRST_UPLOAD, [("503", 8), ("reset", 7)])
        process = start_evaluation(proxy, tmp_path, synthetic_cohort, name, version)
        try:
            process.wait(timeout=600)
        finally:
            process.kill()
        log = tail(tmp_path / "evaluate.err")
        assert process.returncode == 0, log
        assert proxy.triggered.is_set() and proxy.faults > 0  # the outage was met, not slept through
        run = run_of(client, name, version)
        assert run.info.status == "FINISHED"
        files = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "got")))
        names = {p.relative_to(files).as_posix() for p in files.rglob("*") if p.is_file()}
        assert {"evaluation.json", "metrics.json", "predictions.csv", "figures/roc.png"} <= names, names
        assert any(n.startswith("report/") and n.endswith(".pdf") for n in names), names
        assert client.get_model_version(name, version).tags["heimer.evaluation_run_id"] == run.info.run_id


def test_retries_run_out_the_run_fails_with_the_reason(server, synthetic_cohort, tmp_path):
    name = "network-gives-up"
    with using(server) as client, FaultyProxy(server.port) as proxy:
        version = register_tiny_model(name)
        # 60 s: longer than one retry with backoff factor 1, shorter than the 90 s a failed
        # evaluation keeps trying to close its run
        proxy.fail_on(FIRST_UPLOAD, [("reset", 60)])
        process = start_evaluation(proxy, tmp_path, synthetic_cohort, name, version,
                                   MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
        try:
            process.wait(timeout=600)
        finally:
            process.kill()
        log = tail(tmp_path / "evaluate.err")
        assert proxy.triggered.is_set() and proxy.faults > 0
        assert process.returncode == 1 and "Traceback" not in log, log
        assert len(log.strip().splitlines()) == 1 and "tracking server" in log, log
        run = run_of(client, name, version)
        assert run.info.status == "FAILED" and run.data.tags.get("heimer.error"), run.data.tags
        assert not {k for k in client.get_model_version(name, version).tags if k.startswith("heimer.")}


def test_a_watcher_outlives_an_outage(server, synthetic_cohort, tmp_path):
    name = "network-watch"
    with using(server) as client, FaultyProxy(server.port) as proxy:
        client.create_registered_model(name, tags={"heimer.data": str(synthetic_cohort), "heimer.options":
                                                   '{"n_bootstrap": 50, "workers": 0, "save_cams": "none"}'})
        environment = {**subprocess_env(tmp_path), "MLFLOW_TRACKING_URI": proxy.url}
        with open(tmp_path / "watch.err", "w") as err:
            watcher = subprocess.Popen([sys.executable, "-m", "heimer_mlflow", "watch", "--poll-interval", "1"],
                                       env=environment, cwd=tmp_path, stdout=err, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while "opted-in models" not in tail(tmp_path / "watch.err") and time.monotonic() < deadline:
                time.sleep(0.2)
            proxy.fail("reset", 15)
            version = register_tiny_model(name)  # on the server itself, during the outage
            time.sleep(15)
            assert watcher.poll() is None, tail(tmp_path / "watch.err")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                status = client.get_model_version(name, version).tags.get("heimer.status")
                if status in ("done", "failed"):
                    break
                time.sleep(1)
            assert status == "done", tail(tmp_path / "watch.err")
            assert proxy.faults > 0
        finally:
            watcher.terminate()
            try:
                watcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                watcher.kill()
