"""Fixtures: a real MLflow tracking store (sqlite, in a temp folder), a tiny CNN, the tiny
synthetic cohort. What tests import by name is in tests/helpers/."""

from __future__ import annotations

import os

import mlflow
import pytest
import torch

pytest.register_assert_rewrite("tests.helpers")  # their asserts explain failures as a test's do

from .helpers.cohorts import SYNTHETIC_COHORT  # noqa: E402
from .helpers.models import TinyCNN  # noqa: E402


@pytest.fixture(scope="session")
def tracking_dir(tmp_path_factory):
    """One sqlite tracking store for the session (creating its tables costs seconds); tests
    use their own model names. The working folder is the store's folder, so MLflow's default
    artifact location (./mlruns) lands there too."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    old_cwd, old_env = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    yield root
    os.chdir(old_cwd)
    if old_env is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old_env


@pytest.fixture
def tracking(tracking_dir, monkeypatch):
    monkeypatch.chdir(tracking_dir)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    yield tracking_dir
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    return TinyCNN()


@pytest.fixture(scope="session")
def synthetic_cohort(tmp_path_factory):
    """The tiny synthetic cohort (helpers.cohorts.SYNTHETIC_COHORT: 12 subjects, 4 mm, with its
    atlas and brain mask), written once for the session: tests read it, never write into it."""
    from heimer_mlflow.demo.synthetic import write_cohort

    out = tmp_path_factory.mktemp("synthetic-cohort") / "cohort"
    write_cohort(out, **SYNTHETIC_COHORT, progress=False)
    return out
