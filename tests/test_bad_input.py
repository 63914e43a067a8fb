"""Bad input through the command line (issue: reliability): every problem a user can cause ends
in one line naming the subject or value and the fix, or, with --skip-bad, in a listed exclusion;
the MLflow run's status and the model version's tags tell the truth. Real NIfTI files (nibabel),
a real sqlite tracking store, the real CLI (in process, and in a subprocess for signals)."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from .helpers.artifacts import pdf_text
from .helpers.cohorts import AFFINE, GRID, good_rows, head, write_implausible_header, write_manifest, write_nifti
from .helpers.models import TinyCNN
from .helpers.tracking import cli_evaluate, experiment_runs, heimer_tags, new_version, subprocess_env

EXPERIMENT = "bad-input"


def broken_files(folder: Path) -> dict[str, tuple[str, str]]:
    """subject_id -> (file name, what the message must say) for every file-level problem."""
    cases = {}
    cases["missing"] = ("missing.nii.gz", "file not found")
    raw = gzip.compress(nib.Nifti1Image(head(20), AFFINE).to_bytes(), mtime=0)
    middle = len(raw) // 2
    (folder / "corrupt.nii.gz").write_bytes(raw[:middle] + bytes(b ^ 0xFF for b in raw[middle:middle + 64]) + raw[middle + 64:])
    cases["corrupt"] = ("corrupt.nii.gz", "corrupt")
    (folder / "truncated.nii.gz").write_bytes(raw[: int(len(raw) * 0.6)])
    cases["truncated"] = ("truncated.nii.gz", "truncated")
    plain = nib.Nifti1Image(head(21), AFFINE).to_bytes()
    (folder / "truncated_plain.nii").write_bytes(plain[: len(plain) - 100])
    cases["truncated_plain"] = ("truncated_plain.nii", "truncated")
    (folder / "text.nii.gz").write_bytes(gzip.compress(b"subject_id,label\n" * 40))
    cases["text"] = ("text.nii.gz", "not a readable NIfTI")
    write_nifti(folder / "four_d.nii.gz", np.stack([head(22)] * 3, axis=-1))
    cases["four_d"] = ("four_d.nii.gz", "4D")
    write_nifti(folder / "small.nii.gz", head(23, (6, 6, 6)))
    cases["small"] = ("small.nii.gz", "differs from the model input")
    nan = head(24)
    nan[4, 5, 4] = np.nan
    write_nifti(folder / "nan.nii.gz", nan)
    cases["nan"] = ("nan.nii.gz", "NaN or infinite")
    inf = head(25)
    inf[3, 3, 3] = np.inf
    write_nifti(folder / "inf.nii.gz", inf)
    cases["inf"] = ("inf.nii.gz", "NaN or infinite")
    write_nifti(folder / "zeros.nii.gz", np.zeros(GRID, np.float32))
    cases["zeros"] = ("zeros.nii.gz", "all zeros")
    write_implausible_header(folder / "huge.nii")
    cases["huge"] = ("huge.nii", "implausible size")
    return cases


@pytest.fixture(scope="module")
def registered(tracking_dir):
    """Version 1 of a tiny model with the full contract, for the cohort cases."""
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    torch.manual_seed(0)
    new_version("bad-input", TinyCNN(), intensity="zscore")
    return "bad-input"


def evaluate(capsys, *args) -> tuple[int, list[str]]:
    code, lines, _ = cli_evaluate(capsys, *args, experiment=EXPERIMENT)
    return code, lines


def runs() -> list:
    return experiment_runs(EXPERIMENT)


# --------------------------------------------------------------------------- cohorts


@pytest.fixture(scope="module")
def broken_cohort(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken")
    rows = good_rows(folder)
    cases = broken_files(folder)
    rows += [{"path": file, "label": "AD", "subject_id": sid} for sid, (file, _) in cases.items()]
    rows += [{"path": "good0.nii.gz", "label": "MCI", "subject_id": "unknown_label"},
             {"path": "good1.nii.gz", "label": "AD", "subject_id": "twin"},
             {"path": "good2.nii.gz", "label": "CN", "subject_id": "twin"}]
    reasons = {sid: why for sid, (_, why) in cases.items()}
    reasons.update(unknown_label="unknown label 'MCI'", twin="appears 2 times")
    return write_manifest(folder, rows), reasons


def test_every_problem_in_one_line_before_a_run_is_opened(tracking, registered, broken_cohort, capsys):
    manifest, reasons = broken_cohort
    before = len(runs())
    code, lines = evaluate(capsys, f"models:/{registered}/1", "--data", str(manifest))
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("heimer-mlflow: error:"), lines
    line = lines[0]
    assert f"{len(reasons)} subject(s)" in line and "--skip-bad" in line
    for sid, why in reasons.items():
        # each subject named with its reason, voxel-level problems (NaN, zeros, corrupt) included
        assert f"{sid}: " in line, sid
        assert why in line.split(f"{sid}: ", 1)[1].split("; ")[0], (sid, why, line)
    assert len(runs()) == before, "a cohort refused from its headers must not leave a run behind"


@pytest.mark.slow
def test_skip_bad_lists_every_exclusion_in_the_run_and_the_report(tracking, registered, broken_cohort, capsys):
    manifest, reasons = broken_cohort
    code, lines = evaluate(capsys, f"models:/{registered}/1", "--data", str(manifest), "--skip-bad")
    assert code == 0, lines
    run = runs()[0]
    assert run.info.status == "FINISHED" and run.data.tags["heimer.status"] == "finished"
    assert run.data.metrics["n_excluded"] == len(reasons)
    assert run.data.metrics["n_subjects"] == 8  # good0..good7
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id))
    predictions = pd.read_csv(local / "predictions.csv")
    exclusions = pd.read_csv(local / "exclusions.csv")
    exclusions = pd.read_csv(local / "exclusions.csv", dtype=str, keep_default_na=False)  # an id may be "nan"
    assert set(exclusions["subject_id"]) == set(reasons)
    assert not set(predictions["subject_id"]) & set(reasons)
    for sid, why in reasons.items():
        assert why in exclusions.loc[exclusions["subject_id"] == sid, "reason"].iloc[0], sid
    flat = pdf_text(next((local / "report").glob("*.pdf")))
    assert f"{len(reasons)} subjects were excluded" in flat
    table = "".join(flat[flat.find("Excluded subjects"):].split())  # narrow cells wrap ids
    for sid in reasons:
        assert sid in table, sid
    assert heimer_tags(registered, "1")["heimer.evaluation_run_id"] == run.info.run_id


@pytest.fixture(scope="module")
def voxel_broken_cohort(tmp_path_factory):
    """Headers all fine; only the voxels show the problems (found during the engine pass)."""
    folder = tmp_path_factory.mktemp("voxels")
    rows = good_rows(folder)
    cases = {sid: v for sid, v in broken_files(folder).items() if sid in ("corrupt", "nan", "zeros")}
    rows += [{"path": file, "label": "CN", "subject_id": sid} for sid, (file, _) in cases.items()]
    return write_manifest(folder, rows), {sid: why for sid, (_, why) in cases.items()}


def test_voxel_problems_stop_the_run_as_failed_and_leave_the_version_untagged(tracking, voxel_broken_cohort, capsys):
    manifest, reasons = voxel_broken_cohort
    version = new_version("bad-input-voxels", TinyCNN(), intensity="zscore")
    capsys.readouterr()
    code, lines = evaluate(capsys, f"models:/bad-input-voxels/{version}", "--data", str(manifest))
    assert code == 2 and len(lines) == 1, lines
    for sid, why in reasons.items():
        assert f"{sid}: " in lines[0] and why in lines[0], sid
    run = runs()[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["heimer.status"] == "failed"
    assert all(f"{sid}: " in run.data.tags["heimer.error"] for sid in reasons)
    assert run.data.tags["heimer.model_version"] == version
    assert heimer_tags("bad-input-voxels", version) == {}
    assert "report" not in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}


@pytest.mark.parametrize("case, match", [
    ("empty", "lists no subjects; add rows with path,label"),
    ("no_label_column", "lacks the column(s) label"),
    ("one_class", "has one class only (CN=4): the metrics need both AD and CN subjects"),
    ("one_class_after_skip", "has one class only after leaving out the unusable ones (CN=4)"),
    ("missing_data", "does not exist; pass a CSV manifest or a folder"),
])
def test_cohort_level_errors(tracking, registered, tmp_path, capsys, case, match):
    rows = good_rows(tmp_path)
    extra = []
    if case == "empty":
        data = write_manifest(tmp_path, None)
    elif case == "no_label_column":
        data = write_manifest(tmp_path, [{"path": r["path"]} for r in rows], columns=("path",))
    elif case == "one_class":
        data = write_manifest(tmp_path, [r for r in rows if r["label"] == "CN"])
    elif case == "one_class_after_skip":
        data = write_manifest(tmp_path, [{**r, "path": "gone.nii.gz"} if r["label"] == "AD" else r for r in rows])
        extra = ["--skip-bad"]
    else:
        data = tmp_path / "nowhere.csv"
    before = len(runs())
    code, lines = evaluate(capsys, f"models:/{registered}/1", "--data", str(data), *extra)
    assert code == 2 and len(lines) == 1 and match in lines[0], lines
    assert len(runs()) == before


class NoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(GRID)), 2))

    def forward(self, x):
        return self.head(x)


class TwoChannels(TinyCNN):
    """Expects two input channels: the cohort's one-channel volumes do not fit."""

    def __init__(self):
        super().__init__()
        self.body[0] = nn.Conv3d(2, 4, 3, padding=1)


class NanOutput(TinyCNN):
    def forward(self, x):
        return super().forward(x) * float("nan")


def log_raw(name: str, module: nn.Module) -> str:
    """Register a module without our contract (no metadata), as a team's own script might."""
    import mlflow.pytorch

    mlflow.set_experiment("bad-input-training")
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(module, name="model", registered_model_name=name,
                                        serialization_format="pickle", pip_requirements=["torch"])
    return str(info.registered_model_version)


def test_model_level_errors(tracking, registered, broken_cohort, tmp_path, capsys):
    data = write_manifest(tmp_path, good_rows(tmp_path))
    cases = [
        ("models:/no-such-model/1", [], "no-such-model"),
        (f"models:/{registered}/7", [], "version"),
        (f"models:/{registered}@nobody", [], "nobody"),
        (f"models:/{registered}/1", ["--target-layer", "body.9"], "body.0"),  # lists the conv layers
        (f"models:/bad-input-noconv/{log_raw('bad-input-noconv', NoConv())}", [], "Conv3d"),
    ]
    capsys.readouterr()
    torch.manual_seed(0)
    three = log_raw("bad-input-three", TinyCNN(n_outputs=3))  # log_model itself refuses such a head
    capsys.readouterr()
    for uri, extra, match in cases:
        code, lines = evaluate(capsys, uri, "--data", str(data), *extra)
        assert code == 2 and len(lines) == 1 and match in lines[0], (uri, lines)
    # --intensity none: the model declares none, and a given value is not announced on stderr
    code, lines = evaluate(capsys, f"models:/bad-input-three/{three}", "--data", str(data), "--intensity", "none")
    assert code == 2 and len(lines) == 1, lines
    assert "model outputs 3 logits for classes ['CN', 'AD']" in lines[0] and "fix the model head" in lines[0]
    run = runs()[0]
    assert run.info.status == "FAILED" and "3 logits" in run.data.tags["heimer.error"]
    assert heimer_tags("bad-input-three", three) == {}


@pytest.mark.parametrize("sig, exit_code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
@pytest.mark.slow
def test_a_signal_ends_the_run_as_killed_and_tags_nothing(tracking, tmp_path, sig, exit_code):
    name = f"bad-input-{sig.name.lower()}"
    version = new_version(name, TinyCNN(), intensity="zscore")
    data = write_manifest(tmp_path, good_rows(tmp_path, 12))
    experiment = f"signals-{sig.name}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "heimer_mlflow", "-q", "evaluate", f"models:/{name}/{version}", "--data", str(data),
         "--experiment", experiment, "--bootstrap", "200"],
        # faulthandler: if it ever does not stop, SIGABRT below prints where every thread was
        env={**subprocess_env(tracking), "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        client, deadline, run_id = mlflow.MlflowClient(), time.monotonic() + 120, None
        while run_id is None and proc.poll() is None and time.monotonic() < deadline:
            found = mlflow.get_experiment_by_name(experiment)
            running = client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'") if found else []
            run_id = running[0].info.run_id if running else None
            time.sleep(0.05)
        assert run_id, "the evaluation never opened its run"
        proc.send_signal(sig)  # while it computes, draws or logs
        try:
            _, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, stderr = proc.communicate(timeout=60)
            pytest.fail(f"{sig.name} did not stop the evaluation within 120 s; where it was:\n{stderr[-12000:]}")
    finally:
        proc.kill()
    # -sig: the process ended by its own signal after saying KILLED (CPython does that for a
    # KeyboardInterrupt it saw escape; seen once in ~100 runs); a shell reports it as 128 + sig too
    assert proc.returncode in (exit_code, -sig), stderr[-3000:]
    assert "Traceback" not in stderr and "KILLED" in stderr.strip().splitlines()[-1], stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["heimer.status"] == "killed"
    assert heimer_tags(name, version) == {}


class _SwallowedSignal:
    """Sends this process ``signum`` from a ``__del__``, where Python drops the exception the
    signal raises: as when Ctrl-C lands in logging's at-fork hook while a DataLoader starts its
    workers, or in a C library's callback."""

    def __init__(self, signum: int):
        self.signum = signum

    def __del__(self):
        signal.raise_signal(self.signum)
        sum(range(100))  # the handler runs at the next check of the interpreter loop, still in here


def test_a_signal_python_drops_still_stops_the_engine_at_the_next_batch(tracking, tmp_path, capsys, monkeypatch):
    from heimer_mlflow.cohort.loader import CohortDataset

    name = "bad-input-swallowed"
    version = new_version(name, TinyCNN(), intensity="zscore")
    data = write_manifest(tmp_path, good_rows(tmp_path, 12))
    read, original = [], CohortDataset.__getitem__

    def reading(self, i):
        read.append(i)
        if len(read) == 3:  # in the second batch of two
            _SwallowedSignal(signal.SIGINT)  # dropped at once: its __del__ runs here
        return original(self, i)

    monkeypatch.setattr(CohortDataset, "__getitem__", reading)
    experiment = "signals-swallowed"
    code, lines, _ = cli_evaluate(capsys, f"models:/{name}/{version}", "--data", str(data), "--batch-size", "2",
                                  experiment=experiment)
    assert code == 130 and "interrupted" in lines[-1], lines
    # stopped at the next batch: not after the whole cohort, the counterfactual tests, the figures and the report
    assert len(read) == 4, read
    (run,) = experiment_runs(experiment)
    assert run.info.status == "KILLED" and run.data.tags["heimer.status"] == "killed"
    assert not [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)]
    assert heimer_tags(name, version) == {}


def test_models_that_cannot_run_on_the_cohort(tracking, tmp_path, capsys, monkeypatch):
    data = write_manifest(tmp_path, good_rows(tmp_path))
    # a class only importable while the model is logged, as with a team's own training package
    (tmp_path / "team_nets.py").write_text(
        "from torch import nn\n"
        "class TeamNet(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv3d(1, 2, 3)\n"
        "        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 2))\n"
        "    def forward(self, x):\n"
        "        return self.head(self.conv(x))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import team_nets

    team = log_raw("bad-input-team", team_nets.TeamNet())
    monkeypatch.delitem(sys.modules, "team_nets")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    cases = [
        (f"models:/bad-input-team/{team}", "its class cannot be imported here", None),
        (f"models:/bad-input-channels/{log_raw('bad-input-channels', TwoChannels())}",
         "the model fails on an input of shape [1, 1, 8, 10, 8]", "FAILED"),
        (f"models:/bad-input-nan/{log_raw('bad-input-nan', NanOutput())}",
         "output is NaN or infinite for 8 subject(s)", "FAILED"),
    ]
    capsys.readouterr()
    for uri, match, status in cases:
        before = len(runs())
        code, lines = evaluate(capsys, uri, "--data", str(data), "--intensity", "none")  # raw models declare none
        assert code == 2 and len(lines) == 1 and match in lines[0], (uri, lines)
        if status is None:
            assert len(runs()) == before
        else:
            run = runs()[0]
            assert run.info.status == status and match in run.data.tags["heimer.error"]
            name, version = uri.split("/")[-2:]
            assert heimer_tags(name, version) == {}


class _SignalledOnDelete:
    """Receives SIGINT in ``__del__``, where Python cannot raise: "Exception ignored in ..." (as
    when the signal lands in logging's at-fork callback while a DataLoader forks its workers)."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs here, inside __del__


def test_a_signal_python_cannot_raise_is_raised_later_and_not_printed(capfd):
    from heimer_mlflow import interrupts

    with pytest.raises(KeyboardInterrupt):
        with interrupts.handled():
            _SignalledOnDelete()  # gone at once: the KeyboardInterrupt is unraisable
            interrupts.raise_if_swallowed()
            pytest.fail("the swallowed signal was not raised again")
    assert "Exception ignored" not in capfd.readouterr().err


def test_timeout_ends_a_hung_evaluation_as_failed(tracking, tmp_path, capsys, monkeypatch):
    """`evaluate --timeout 2` on an evaluation that hangs after its engine pass: exit 124, one line,
    the run FAILED with the reason, the version untagged."""
    import heimer_mlflow.evaluation as evaluation

    name = "bad-input-timeout"
    version = new_version(name, TinyCNN(), intensity="zscore")
    data = write_manifest(tmp_path, good_rows(tmp_path))
    monkeypatch.setattr(evaluation, "compute_metrics", lambda *a, **k: time.sleep(120))  # a hang, after the run opened
    capsys.readouterr()
    code, lines = evaluate(capsys, f"models:/{name}/{version}", "--data", str(data), "--timeout", "2")
    # 124 only from the timer: a hang waited out would return None from compute_metrics and crash (exit 1)
    assert code == 124 and len(lines) == 1 and "longer than --timeout 2 s" in lines[0], lines
    run = runs()[0]
    assert run.info.status == "FAILED" and "--timeout 2 s" in run.data.tags["heimer.error"]
    assert heimer_tags(name, version) == {}
