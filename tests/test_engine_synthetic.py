"""End to end on planted ground truth, for each DemoCNN head on its primary map (HiResCAM): a tiny
model trained on the shortcut cohort learns the patch outside the brain and its map looks there,
far more than a model trained on the clean cohort (4 mm, ~10 s per head).

What holds depends on the head; ``benchmarks/cam_evidence.py`` measured it over training seeds
0-3 (cohort seed 0). Trained like this (24 subjects, 30 epochs), every clean model fits its
cohort but stays at chance on a fresh one: it memorises, so its region gains say where it
memorised, not that it learned the planted atrophy. The checks below are those that hold with
margin at the training seed used here, as noted per head in EXPECT.
"""

import nibabel as nib
import numpy as np
import pytest
import torch

from heimer_mlflow.demo import synthetic
from heimer_mlflow.cohort import CohortDataset, read_cohort
from heimer_mlflow.engine import run_engine
from heimer_mlflow.meta import ModelMeta

from .helpers.training import fit_in_memory

pytestmark = pytest.mark.slow

SUBJECTS, VOXEL_MM, EPOCHS, SEED = 24, 4.0, 30, 0
CAM = "hirescam"  # the primary map for every head (benchmarks/cam_evidence.py)
# Per head, at training seed 0 (over seeds 0-3 in brackets, HiResCAM, AD subjects' means):
# - patch: the shortcut model scores a fresh shortcut cohort from the patch (max, evidence: 1.00
#   at seeds 0-2; seed 3 memorises instead, 0.48). The avg head learns it only in part (0.58-0.77).
# - outside: shortcut outside share > clean + 0.1. max: +0.22 (+0.22..+0.62 where the patch was
#   learned; Grad-CAM only +0.09 here), evidence: +0.98 (+0.47..+0.98). avg: +0.13, but
#   -0.01..+0.13 over seeds, so not checked.
# - regions: clean model's mean region gain > 1.3. Only the evidence head at this seed (2.84;
#   0.61-2.84 over seeds, so a regression check of this seed, not a property of the head);
#   max: 0.77, avg: 1.33 (1.16-1.41).
EXPECT = {
    "max": {"patch": True, "outside": True, "regions": False},
    "evidence": {"patch": True, "outside": True, "regions": True},
    "avg": {"patch": False, "outside": False, "regions": None},
}
# True: the check holds with margin (a plain case); False: it does not hold (a strict expected
# failure, DOES_NOT_HOLD says why); None: neither, so no case at all: the avg head's clean model
# passes the region check at this seed without margin (1.33 against 1.3) and fails it at others.
# Why a check does not hold for a head (its case is a strict expected failure: should the head start
# to pass it, the test says so and EXPECT is to be revised).
DOES_NOT_HOLD = {
    ("avg", "patch"): "the avg head learns the patch only in part at this scale (fresh-cohort accuracy 0.58-0.77)",
    ("avg", "outside"): "the avg head learns the patch only in part, so its shortcut model's map does not lie "
                        "outside the brain (share > 0.9); shortcut - clean is -0.01..+0.13 over training seeds",
    ("max", "regions"): "the max head's clean model memorises: its mean region gain is 0.77 at this seed",
}  # fmt: skip


def cases(check: str) -> list:
    """The cases of ``check``, one per head that EXPECT decides: where it does not hold, a strict
    expected failure."""
    return [head if EXPECT[head][check] else
            pytest.param(head, marks=pytest.mark.xfail(strict=True, reason=DOES_NOT_HOLD[head, check]))
            for head in EXPECT if EXPECT[head][check] is not None]  # fmt: skip

def load(folder):
    meta = ModelMeta(class_names=["CN", "AD"], positive_class="AD", intensity="zscore")
    dataset = CohortDataset(read_cohort(folder, meta.class_names), meta)
    items = [dataset[i] for i in range(len(dataset))]
    labels = np.asarray(nib.load(folder / "atlas" / "atlas.nii.gz").dataobj).astype(int)
    return meta, items, (labels, synthetic.ATLAS_LABELS)


def stacked(items, meta):
    images = torch.stack([item["image"] for item in items])
    is_ad = torch.tensor([float(item["label"] == meta.positive_index) for item in items])
    return images, is_ad


def train(items, meta, head):
    return fit_in_memory(*stacked(items, meta), head=head, width=4, epochs=EPOCHS, learning_rate=3e-3, seed=SEED)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """clean and shortcut (cohort seed 0) to train on, and a fresh shortcut cohort (seed 1000)."""
    root = tmp_path_factory.mktemp("cohorts")
    loaded = {}
    for name, shortcut, seed in (("clean", False, 0), ("shortcut", True, 0), ("fresh_shortcut", True, 1000)):
        synthetic.write_cohort(root / name, n_subjects=SUBJECTS, seed=seed, voxel_size=VOXEL_MM, shortcut=shortcut,
                               progress=False)  # fmt: skip
        loaded[name] = load(root / name)
    return loaded


@pytest.fixture(scope="module", params=list(EXPECT))
def head(request):
    return request.param


@pytest.fixture(scope="module")
def evaluations(cohorts, head):
    results = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # multi-threaded conv gradients sum in varying order: training would not repeat
    try:
        for name in ("clean", "shortcut"):
            meta, items, atlas = cohorts[name]
            model = train(items, meta, head)
            meta.target_layer = model.gradcam_layer
            loader = torch.utils.data.DataLoader(items, batch_size=8)
            results[name] = run_engine(model, loader, meta, device="cpu", atlas=atlas, progress=False,
                                       sanity_subjects=4, cam=CAM)  # fmt: skip
            if name == "shortcut":
                images, is_ad = stacked(cohorts["fresh_shortcut"][1], meta)
                with torch.no_grad():
                    correct = (model(images)[:, 0] > 0) == is_ad.bool()
                results["fresh_shortcut_accuracy"] = float(correct.float().mean())
    finally:
        torch.set_num_threads(threads)
    return results


def ad_mean(result, column):
    rows = result.subjects
    return float(np.nanmean(rows[column][rows["label"] == 1]))


def test_the_models_learned_their_cohorts(evaluations):
    for name in ("clean", "shortcut"):
        result = evaluations[name]
        assert result.cam_method == CAM
        assert (result.subjects["pred"] == result.subjects["label"]).mean() >= 0.9, name


@pytest.mark.parametrize("head", cases("patch"), indirect=True)
def test_shortcut_model_scores_a_fresh_cohort_from_the_patch(evaluations, head):
    assert evaluations["fresh_shortcut_accuracy"] >= 0.9


@pytest.mark.parametrize("head", cases("outside"), indirect=True)
def test_shortcut_model_looks_outside_the_brain(evaluations, head):
    clean = ad_mean(evaluations["clean"], "cam_outside_brain_fraction")
    shortcut = ad_mean(evaluations["shortcut"], "cam_outside_brain_fraction")
    assert shortcut > clean + 0.1, (clean, shortcut)
    assert shortcut > 0.9, shortcut  # the model scores from the patch: all of its map belongs there


@pytest.mark.parametrize("head", cases("regions"), indirect=True)
def test_cam_concentrates_in_the_planted_regions(evaluations, head):
    result = evaluations["clean"]
    gains = {name: ad_mean(result, f"cam_roi_gain_{name}") for name in result.region_names}
    assert np.mean(list(gains.values())) > 1.3, gains


@pytest.mark.parametrize("head", ["avg"], indirect=True)  # a property of this head alone: no case for the others
def test_avg_head_maps_are_one(evaluations, head):
    """Global average pooling: every voxel's gradient is w_c / N, so Grad-CAM is HiResCAM (nets.py)."""
    for result in (evaluations["clean"], evaluations["shortcut"]):
        rows = result.subjects
        np.testing.assert_allclose(rows["gradcam_outside_brain_fraction"], rows["hirescam_outside_brain_fraction"],
                                   rtol=1e-4)  # fmt: skip
        assert np.nanmin(rows["cam_method_agreement"]) > 0.999


def test_sanity_check_separates_trained_from_random_weights(evaluations):
    sanity = evaluations["clean"].sanity
    assert len(sanity.spearman) == 4 and sanity.mean < 0.9
