"""End to end on planted ground truth: a tiny model trained on the synthetic cohort looks at the
planted regions, and one trained on the shortcut cohort looks outside the brain (4 mm, ~30 s)."""

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from heimer_mlflow import synthetic
from heimer_mlflow.cohort import CohortDataset, read_cohort
from heimer_mlflow.engine import run_engine
from heimer_mlflow.meta import ModelMeta
from heimer_mlflow.nets import DemoCNN

pytestmark = pytest.mark.skipif(not hasattr(synthetic, "write_cohort"), reason="needs synthetic.write_cohort")

SUBJECTS, VOXEL_MM, EPOCHS = 24, 4.0, 30
# DemoCNN's evidence head, whose Grad-CAM (at the last block's output) is the map the decision
# pools (nets.py). Over training seeds 0-3 the shortcut - clean difference in outside share was
# 0.39-0.66 here; with the max head it was -0.13-0.36, so that head cannot be checked this way.
HEAD = "evidence"


def train_and_evaluate(folder, atlas):
    meta = ModelMeta(class_names=["CN", "AD"], positive_class="AD", intensity="zscore")
    dataset = CohortDataset(read_cohort(folder, meta.class_names), meta)
    items = [dataset[i] for i in range(len(dataset))]
    images = torch.stack([item["image"] for item in items])
    is_ad = torch.tensor([float(item["label"] == meta.positive_index) for item in items])

    torch.manual_seed(0)
    model = DemoCNN(n_outputs=1, width=4, dropout=0.0, head=HEAD)
    meta.target_layer = model.gradcam_layer
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(EPOCHS):
        for batch in torch.randperm(len(items)).split(8):
            loss = F.binary_cross_entropy_with_logits(model(images[batch])[:, 0], is_ad[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    # So few steps leave the running BatchNorm statistics behind the weights: recompute them.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model(images)
    model.eval()

    loader = torch.utils.data.DataLoader(items, batch_size=8)
    return run_engine(model, loader, meta, device="cpu", atlas=atlas, progress=False, sanity_subjects=4)


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohorts")
    results = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # multi-threaded conv gradients sum in varying order: training would not repeat
    try:
        for name, shortcut in (("clean", False), ("shortcut", True)):
            synthetic.write_cohort(root / name, n_subjects=SUBJECTS, voxel_size=VOXEL_MM, shortcut=shortcut,
                                   progress=False)  # fmt: skip
            labels = np.asarray(nib.load(root / name / "atlas" / "atlas.nii.gz").dataobj).astype(int)
            results[name] = train_and_evaluate(root / name, (labels, synthetic.ATLAS_LABELS))
    finally:
        torch.set_num_threads(threads)
    return results


def ad_mean(result, column):
    rows = result.subjects
    return float(np.nanmean(rows[column][rows["label"] == 1]))


def test_the_models_learned_their_cohorts(evaluations):
    for result in evaluations.values():
        assert (result.subjects["pred"] == result.subjects["label"]).mean() >= 0.9


def test_cam_concentrates_in_the_planted_regions(evaluations):
    result = evaluations["clean"]
    gains = {name: ad_mean(result, f"cam_roi_gain_{name}") for name in result.region_names}
    assert np.mean(list(gains.values())) > 1.3, gains


def test_shortcut_model_looks_outside_the_brain(evaluations):
    clean = ad_mean(evaluations["clean"], "cam_outside_brain_fraction")
    shortcut = ad_mean(evaluations["shortcut"], "cam_outside_brain_fraction")
    assert shortcut > clean + 0.1, (clean, shortcut)


def test_sanity_check_separates_trained_from_random_weights(evaluations):
    sanity = evaluations["clean"].sanity
    assert len(sanity.spearman) == 4 and sanity.mean < 0.9
