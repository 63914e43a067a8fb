"""One evaluation sharded over two gloo processes (torchrun) equals a one-process run; a failure
on one rank ends both with the failing rank's message, without hanging.

The workers are this module run with ``python -m`` (``--worker``), under ``torchrun --standalone``
for the sharded run and as a plain process for the reference, both with one thread each.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from heimer_mlflow import distributed
from heimer_mlflow.cohort import CohortDataset, make_loader, read_cohort
from heimer_mlflow.engine import run_engine
from heimer_mlflow.engine.gallery import CaseGallery
from heimer_mlflow.engine.result import SUBJECT_COLUMNS
from heimer_mlflow.errors import HeimerError
from heimer_mlflow.meta import ModelMeta

from .helpers import REPO
from .helpers.models import small_cnn

SPATIAL = (16, 18, 16)
N_SUBJECTS = 12
UNREADABLE = 3  # cohort row with a NaN voxel: excluded, and one of the sanity subjects
TWIN = (7, 10)  # the same volume twice, on different ranks: the most confident FN, tied; the lower index wins
META = ModelMeta(class_names=["CN", "AD"], positive_class="AD", input_shape=[1, *SPATIAL], intensity="zscore")
ATLAS_LABELS = np.zeros(SPATIAL, dtype=np.int64)
ATLAS_LABELS[5:9, 6:10, 5:9] = 1
ATLAS_LABELS[9:12, 4:8, 4:12] = 2
ATLAS = (ATLAS_LABELS, {1: "ventricles", 2: "hippocampus"})
# seed: the randomised weights of the sanity check must differ from small_cnn's (seed 0)
OPTIONS = dict(feature_layers=("0",), atlas=ATLAS, gallery_k=2, sanity_subjects=5, progress=False, seed=1)
FAILING_RANK, SLOW_FORWARD_S = 1, 0.4
LAUNCH_TIMEOUT_S = 90


def write_cohort(folder: Path) -> None:
    """Ellipsoid "brains" with a darker core that is larger in AD, as .nii.gz, and two manifests:
    the whole cohort and one subject (so that rank 1 sees nobody)."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in SPATIAL), indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(N_SUBJECTS):
        label = "AD" if i % 3 != 0 else "CN"
        core = 0.35 if label == "AD" else 0.2
        volume = np.where(radius < 0.85, 100 + rng.normal(0, 10, SPATIAL), 0.0)
        volume[radius < core + rng.normal(0, 0.05)] = 40.0
        if i == TWIN[1]:
            volume = nib.load(folder / "images" / f"sub-{TWIN[0]:02d}.nii.gz").get_fdata()
        if i == UNREADABLE:
            volume[8, 9, 8] = np.nan
        image = nib.Nifti1Image(volume.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]))
        nib.save(image, folder / "images" / f"sub-{i:02d}.nii.gz")
        rows.append({"subject_id": f"sub-{i:02d}", "path": f"images/sub-{i:02d}.nii.gz", "label": label})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    pd.DataFrame(rows[:1]).to_csv(folder / "manifest_one.csv", index=False)


# --------------------------------------------------------------------------- the worker


class Injected(nn.Module):
    """On the failing rank the first forward after the engine's probe raises; elsewhere every
    forward is slow and counted, so the test can see the other rank stop early instead of
    finishing its shard."""

    def __init__(self, model, failing: bool):
        super().__init__()
        self.model, self.failing, self.forwards, self.probed = model, failing, 0, False

    def forward(self, x):
        if self.failing:
            if self.probed:
                raise RuntimeError("injected failure\nsecond line that must not reach the message")
            self.probed = True
            return self.model(x)
        self.forwards += 1
        time.sleep(SLOW_FORWARD_S)
        return self.model(x)


def worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cohort", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--fail", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ctx = distributed.from_env("cpu", timeout=timedelta(seconds=60))
    rank = 0 if ctx is None else ctx.rank
    out = args.out / f"rank{rank}.pkl"
    try:
        if args.fail:
            model = Injected(small_cnn(), failing=rank == FAILING_RANK)
            try:
                evaluate(args.cohort / "manifest.csv", model, ctx, batch_size=1, feature_layers=("model.0",))
                outcome = {"error": None}
            except HeimerError as e:
                outcome = {"error": str(e)}
            outcome["forwards"] = model.forwards
        else:
            outcome = {name: evaluate(args.cohort / name, small_cnn(), ctx)
                       for name in ("manifest.csv", "manifest_one.csv")}  # fmt: skip
        out.write_bytes(pickle.dumps(outcome))
    finally:
        distributed.shutdown()


def evaluate(manifest: Path, model, ctx, batch_size: int = 3, **options):
    """The phase-1 recipe of heimer_mlflow.distributed's docstring."""
    dataset = CohortDataset(read_cohort(manifest, META.class_names), META)
    if ctx is not None:
        dataset = torch.utils.data.Subset(dataset, distributed.shard(len(dataset), ctx))
    loader = make_loader(dataset, batch_size=batch_size, workers=0)
    with distributed.guard(ctx):
        result = run_engine(model, loader, META, device="cpu" if ctx is None else ctx.device,
                            should_stop=None if ctx is None else ctx.peer_failed, **{**OPTIONS, **options})  # fmt: skip
    return distributed.merge(result, ctx)


# --------------------------------------------------------------------------- the tests


def launch(cohort: Path, out: Path, *extra: str, processes: int = 2) -> subprocess.Popen:
    out.mkdir()
    paths = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]  # REPO: the package `tests`
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(paths))
    command = [sys.executable, "-m", __spec__.name, "--worker", str(cohort), str(out), *extra]
    if processes > 1:
        for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(name, None)
        command[1:1] = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    else:
        env.pop("WORLD_SIZE", None)
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"workers did not finish within {LAUNCH_TIMEOUT_S} s (a hang?):\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]
    return output


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    write_cohort(folder)
    return folder


@pytest.fixture(scope="module")
def runs(cohort, tmp_path_factory):
    """(one process, rank 0 of two, rank 1 of two), each {manifest name: result}."""
    root = tmp_path_factory.mktemp("runs")
    single, sharded = launch(cohort, root / "single", processes=1), launch(cohort, root / "sharded")
    finish(single), finish(sharded)
    load = lambda path: pickle.loads(path.read_bytes())  # noqa: E731
    return tuple(load(root / folder / f"rank{r}.pkl") for folder, r in (("single", 0), ("sharded", 0), ("sharded", 1)))


@pytest.mark.parametrize("manifest", ["manifest.csv", "manifest_one.csv"])
@pytest.mark.slow
def test_two_ranks_equal_one_process(runs, manifest):
    one, merged, other = (run[manifest] for run in runs)
    assert other is None and merged.world_size == 2 and one.world_size == 1

    assert merged.subjects.keys() == one.subjects.keys() and set(SUBJECT_COLUMNS) <= one.subjects.keys()
    for column, values in one.subjects.items():
        assert merged.subjects[column].dtype == values.dtype, column
        if values.dtype.kind in "OiU":
            np.testing.assert_array_equal(merged.subjects[column], values, err_msg=column)
        else:
            np.testing.assert_allclose(merged.subjects[column], values, rtol=1e-6, atol=1e-9, err_msg=column)

    assert merged.stats.state.keys() == one.stats.state.keys()
    for key, value in one.stats.state.items():
        torch.testing.assert_close(merged.stats.state[key], value, rtol=1e-12, atol=1e-9)
    assert merged.maps.keys() == one.maps.keys()
    for name, maps in one.maps.items():
        got = merged.maps[name]
        assert got.count == maps.count and got.mean.keys() == maps.mean.keys(), name
        for group in maps.mean:
            np.testing.assert_allclose(got.mean[group], maps.mean[group], rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(got.diff, maps.diff, rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(got.t, maps.t, rtol=1e-5, atol=1e-5, err_msg=name)
    for layer, ranking in one.feature_ranking.items():
        np.testing.assert_array_equal(merged.feature_ranking[layer]["channel"], ranking["channel"])
        np.testing.assert_allclose(merged.feature_ranking[layer]["mean_abs_t"], ranking["mean_abs_t"], rtol=1e-5)

    assert merged.excluded == one.excluded
    assert {o: [c.subject_id for c in cases] for o, cases in merged.gallery.items()} == \
        {o: [c.subject_id for c in cases] for o, cases in one.gallery.items()}  # fmt: skip
    for outcome, cases in one.gallery.items():
        for got, case in zip(merged.gallery[outcome], cases):
            assert (got.index, got.label, got.outcome) == (case.index, case.label, case.outcome)
            np.testing.assert_array_equal(got.image, case.image)
            np.testing.assert_array_equal(got.affine, case.affine)
            np.testing.assert_allclose(got.primary_cam, case.primary_cam, rtol=1e-6, atol=1e-9)
            assert got.cams.keys() == case.cams.keys() == {"gradcam", "hirescam"}
            for method, cam in case.cams.items():
                np.testing.assert_allclose(got.cams[method], cam, rtol=1e-6, atol=1e-9, err_msg=method)
            assert got.confidence == pytest.approx(case.confidence, rel=1e-6)

    if one.sanity is None:
        assert merged.sanity is None
    else:
        assert merged.sanity.subject_ids == one.sanity.subject_ids
        assert merged.sanity.indices == one.sanity.indices
        np.testing.assert_allclose(merged.sanity.spearman, one.sanity.spearman, rtol=1e-6)
        assert merged.sanity.mean == pytest.approx(one.sanity.mean, rel=1e-6)
    assert merged.timings["subjects_per_s"] > 0


@pytest.mark.slow
def test_the_whole_cohort_is_there_once(runs):
    one, merged, _ = (run["manifest.csv"] for run in runs)
    assert list(merged.subjects["index"]) == [i for i in range(N_SUBJECTS) if i != UNREADABLE]
    assert [e["index"] for e in merged.excluded] == [UNREADABLE] and "NaN" in merged.excluded[0]["reason"]
    # the sanity check runs on cohort rows 0..4 whichever rank holds them; row 3 is unreadable
    assert merged.sanity.indices == [0, 1, 2, 4]
    assert sum(merged.maps["cam"].count[c] for c in META.class_names) == N_SUBJECTS - 1
    assert np.all(np.abs(merged.sanity.spearman) < 0.99), "the randomised copy has other weights"
    # the twins (one per rank) tie exactly and both make the gallery: the lower cohort index first
    twins = [(outcome, [c.index for c in cases]) for outcome, cases in merged.gallery.items() if TWIN[0] in
             [c.index for c in cases]]  # fmt: skip
    assert twins and twins[0][1][:2] == list(TWIN), merged.gallery
    first, second = merged.gallery[twins[0][0]][:2]
    assert first.confidence == second.confidence


@pytest.mark.slow
def test_a_failing_rank_fails_every_rank_without_hanging(cohort, tmp_path):
    """A hang is finish()'s timeout (LAUNCH_TIMEOUT_S); no wall-clock figure is asserted."""
    output = finish(launch(cohort, tmp_path / "failing", "--fail"))
    outcomes = [pickle.loads((tmp_path / "failing" / f"rank{r}.pkl").read_bytes()) for r in range(2)]
    expected = f"rank {FAILING_RANK} of 2 failed: RuntimeError: injected failure"
    for rank, outcome in enumerate(outcomes):
        assert outcome["error"] == expected, (rank, output[-3000:])
    # rank 0 stopped at its next batch instead of finishing its shard (6 subjects, 1 per batch,
    # plus the probe: 7 slow forwards)
    assert outcomes[0]["forwards"] < 7, outcomes[0]


# --------------------------------------------------------------------------- in one process


def test_shards_cover_every_subject_once():
    for world_size in (1, 2, 3, 5):
        for n in (0, 1, 4, 12, 13):
            shards = [distributed.shard(n, distributed.Context(r, world_size, r, "cpu", "gloo"))
                      for r in range(world_size)]  # fmt: skip
            assert sorted(i for s in shards for i in s) == list(range(n))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert distributed.shard(3, None) == [0, 1, 2]


def test_without_torchrun_everything_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.from_env("cpu") is None
    distributed.check_all(None, None)
    with pytest.raises(HeimerError, match="boom"):
        distributed.check_all("boom", None)
    with distributed.guard(None):
        pass
    result = object()
    assert distributed.merge(result, None) is result


@pytest.mark.parametrize("device, match", [("cuda:1", "cuda:LOCAL_RANK|not available"), ("mps", "'mps'"),
                                           ("tpu", "unknown device")])  # fmt: skip
def test_devices_refused_under_torchrun(monkeypatch, device, match):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(HeimerError, match=match):
        distributed.from_env(device)


def test_gallery_ties_go_to_the_lower_cohort_index_in_any_order():
    def kept(order):
        gallery = CaseGallery(2)
        for index, confidence in order:
            gallery.offer("TP", confidence, index, lambda index=index: index)
        return gallery.cases()["TP"]

    offers = [(7, 0.9), (2, 0.9), (5, 0.9), (1, 0.6)]
    assert kept(offers) == kept(offers[::-1]) == [2, 5]


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    worker(sys.argv[2:])
