"""`evaluate` and `report` against a real `mlflow server --app-name basic-auth` (MLflow's own
authentication, users and permissions), with MLflow's credential settings
(MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD):

- a principal that may read the model but not tag its versions, or not write the experiment,
  gets one line naming the resource and the permission, exit 2, before any compute: no run
  FINISHED, no tag on the version;
- a reviewer with EDIT on the evaluation experiment and the registered model (READ on the
  training experiment) evaluates: the run FINISHED with every artifact, the version tagged, the
  metrics not attached to the logged model, which one stderr line says;
- no password appears in stderr, run params and tags, any artifact or the version's description;
- `report` by a principal who may only read: logging refused in one line; `--no-log --out` works.

Without mlflow[auth] (Flask-WTF) the module skips with the reason; under HEIMER_REQUIRE_SERVERS=1 it fails.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from .helpers.servers import ADMIN, as_user, tracking_server, using
from .helpers.tracking import register_tiny_model, subprocess_env

pytestmark = [pytest.mark.server, pytest.mark.slow]

PASSWORDS = {"reviewer": "reviewer-password-7Q", "reader": "reader-password-7Q", "viewer": "viewer-password-7Q"}
MODEL, EVALS = "auth-cnn", "auth-evaluations"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with tracking_server("sqlite", tmp_path_factory.mktemp("auth-server"), auth=True) as running:
        yield running


@pytest.fixture(scope="module")
def registry_with_users(server):
    """As the admin: the users, a registered model with one version (trained in auth-training),
    the evaluation experiment; reviewer EDIT on both, reader EDIT on the experiment only."""
    from mlflow.server import get_app_client

    with as_user(*ADMIN), using(server) as client:
        auth = get_app_client("basic-auth", tracking_uri=server.url)
        for user, password in PASSWORDS.items():
            auth.create_user(user, password)
        client.create_registered_model(MODEL)
        version = register_tiny_model(MODEL, experiment="auth-training")
        experiment = client.create_experiment(EVALS)
        auth.grant_user_permission("reviewer", "experiment", experiment, "EDIT")
        auth.grant_user_permission("reviewer", "registered_model", MODEL, "EDIT")
        auth.grant_user_permission("reader", "experiment", experiment, "EDIT")
    return version, experiment


def heimer(server, folder: Path, user: str, *args) -> subprocess.CompletedProcess:
    password = ADMIN[1] if user == ADMIN[0] else PASSWORDS[user]
    env = {**subprocess_env(folder), "MLFLOW_TRACKING_URI": server.url, "MLFLOW_TRACKING_USERNAME": user,
           "MLFLOW_TRACKING_PASSWORD": password}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "heimer_mlflow", *args], env=env, cwd=folder, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def evaluate(server, folder, user, cohort, *extra):
    return heimer(server, folder, user, "-q", "evaluate", f"models:/{MODEL}/1", "--data", str(cohort),
                  "--experiment", EVALS, "--bootstrap", "50", "--workers", "0", "--save-cams", "none", *extra)


def test_missing_permissions_stop_before_any_compute(server, registry_with_users, synthetic_cohort, tmp_path):
    version, experiment = registry_with_users
    done = evaluate(server, tmp_path, "reader", synthetic_cohort)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert "user 'reader' has READ on registered model 'auth-cnn'" in lines[0] and "needs EDIT" in lines[0], lines
    assert "grant_user_permission('reader', 'registered_model', 'auth-cnn', 'EDIT')" in lines[0]
    done = heimer(server, tmp_path, "reader", "-q", "evaluate", f"models:/{MODEL}/1", "--data", str(synthetic_cohort),
                  "--experiment", "auth-training")
    assert done.returncode == 2 and "READ on experiment 'auth-training'" in done.stderr, done.stderr[-3000:]
    with as_user(*ADMIN), using(server) as client:
        runs = client.search_runs([experiment, client.get_experiment_by_name("auth-training").experiment_id])
        assert not [r for r in runs if r.data.tags.get("mlflow.user") == "reader"], runs
        assert not {k for k in client.get_model_version(MODEL, version).tags if k.startswith("heimer.")}


@pytest.fixture(scope="module")
def reviewed(server, registry_with_users, synthetic_cohort, tmp_path_factory):
    """The reviewer's evaluation: (the finished CLI process, its folder)."""
    folder = tmp_path_factory.mktemp("reviewer")
    return evaluate(server, folder, "reviewer", synthetic_cohort), folder


def test_a_reviewer_evaluates_and_no_password_is_written(server, registry_with_users, reviewed, tmp_path):
    version, experiment = registry_with_users
    done, _ = reviewed
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not attached to the logged model" in done.stderr and "has READ on its experiment" in done.stderr
    with as_user(*ADMIN), using(server) as client:
        tags = client.get_model_version(MODEL, version).tags
        run = client.get_run(tags["heimer.evaluation_run_id"])
        assert run.info.status == "FINISHED" and run.info.experiment_id == experiment
        assert tags["heimer.verdict"] in ("pass", "review")
        files = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "artifacts")))
        names = {p.relative_to(files).as_posix() for p in files.rglob("*") if p.is_file()}
        assert {"evaluation.json", "metrics.json", "predictions.csv"} <= names and any(n.endswith(".pdf") for n in names)
        written = [done.stderr, done.stdout, str(run.data.params), str(run.data.tags),
                   client.get_model_version(MODEL, version).description or "", str(tags)]
        contents = [(files / name).read_bytes() for name in names]
    # the report re-rendered by a user who may only read: it works without logging
    rendered = heimer(server, tmp_path, "viewer", "-q", "report", run.info.run_id, "--no-log", "--out",
                      str(tmp_path / "rendered"))  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert list((tmp_path / "rendered").rglob("*.pdf"))
    contents += [p.read_bytes() for p in (tmp_path / "rendered").rglob("*") if p.is_file()]
    written.append(rendered.stderr)
    for password in [*PASSWORDS.values(), ADMIN[1]]:
        assert not any(password in text for text in written), password
        assert not any(password.encode() in blob for blob in contents), password


def test_report_logged_by_a_reader_is_refused_in_one_line(server, registry_with_users, reviewed, tmp_path):
    done, _ = reviewed
    assert done.returncode == 0, done.stderr[-3000:]
    with as_user(*ADMIN), using(server) as client:
        run_id = client.get_model_version(MODEL, registry_with_users[0]).tags["heimer.evaluation_run_id"]
    refused = heimer(server, tmp_path, "viewer", "-q", "report", run_id)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
    assert "refused" in lines[0] and "user 'viewer'" in lines[0] and "HTTP 403" in lines[0], lines



def test_watch_evaluates_as_its_service_account(server, registry_with_users, reviewed, synthetic_cohort, tmp_path):
    """`heimer-mlflow watch --once` with the reviewer's credentials (EDIT on the model and on the
    evaluation experiment, named in heimer.options): the version ends done, its run FINISHED."""
    import json

    version, experiment = registry_with_users
    options = {"experiment": EVALS, "n_bootstrap": 50, "workers": 0, "save_cams": "none", "sanity_subjects": 2,
               "counterfactual_subjects": 2}  # fmt: skip
    with as_user(*ADMIN), using(server) as client:
        client.set_registered_model_tag(MODEL, "heimer.data", str(synthetic_cohort))
        client.set_registered_model_tag(MODEL, "heimer.options", json.dumps(options))
    done = heimer(server, tmp_path, "reviewer", "watch", "--once")
    assert done.returncode == 0, done.stderr[-3000:]
    with as_user(*ADMIN), using(server) as client:
        tags = client.get_model_version(MODEL, version).tags
        assert tags["heimer.status"] == "done", (tags, done.stderr[-3000:])
        run = client.get_run(tags["heimer.evaluation_run_id"])
        assert run.info.status == "FINISHED" and run.info.experiment_id == experiment
        assert run.data.tags["heimer.data"] == str(synthetic_cohort)
    assert PASSWORDS["reviewer"] not in done.stderr
