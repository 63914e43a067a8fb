"""run_engine on a tiny in-memory cohort: every output against a direct computation."""

import dataclasses
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as scipy_stats
from torch import nn

from heimer_mlflow.engine import GradCam3d, pick_device, run_engine, spearman
from heimer_mlflow.errors import HeimerError
from heimer_mlflow.meta import ModelMeta

from .helpers.models import small_cnn
from .helpers.subjects import InMemorySubjects, pulled

SPATIAL = (12, 14, 12)
N = 10
META = ModelMeta(class_names=["CN", "AD"], positive_class="AD", input_shape=[1, *SPATIAL])


class Subjects(InMemorySubjects):
    """Noise with a planted "lesion" in AD (odd indices); one brain mask for all, 2 mm voxels."""

    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0], dtype=torch.float64))

    def __init__(self, n=N, seed=0, problems=()):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn((n, 1, *SPATIAL), generator=g)
        self.labels = torch.arange(n) % 2
        self.images[self.labels == 1, :, 3:8, 4:9, 3:8] += 1.5  # a planted "lesion" in AD
        self.mask = torch.zeros(SPATIAL, dtype=torch.bool)
        self.mask[2:10, 2:12, 2:10] = True
        self.problems = set(problems)

    def brain_mask(self, i):
        return self.mask


model_with = functools.partial(small_cnn, inplace=True)  # in-place ReLUs, as in many real models


def loader(dataset=None, batch_size=4):
    return torch.utils.data.DataLoader(dataset or Subjects(), batch_size=batch_size)


ATLAS_LABELS = np.zeros(SPATIAL, dtype=np.int32)
ATLAS_LABELS[3:8, 4:9, 3:8] = 7
ATLAS_LABELS[8:11, 0:4, :] = 3
ATLAS = (ATLAS_LABELS, {7: "lesion", 3: "corner"})


def evaluate(model, **options):
    # Grad-CAM as the primary map: these tests check it against a direct computation (HiResCAM's
    # parity is in test_engine_hirescam.py)
    options = {"device": "cpu", "progress": False, "gallery_k": 2, "sanity_subjects": 3, "cam": "gradcam", **options}
    return run_engine(model, loader(options.pop("dataset", None), options.pop("batch_size", 4)), META, **options)


@pytest.mark.parametrize("n_outputs", [1, 2])
def test_outputs_match_a_direct_computation(n_outputs):
    model = model_with(n_outputs)
    data = Subjects()
    saved = {}
    result = evaluate(model, atlas=ATLAS, save_cams=lambda sid, cam, affine: saved.setdefault(sid, (cam, affine)),
                      feature_layers=("0",), threshold=0.5)  # fmt: skip

    x, labels = data.images, data.labels
    logits = model(x).detach()
    column = 0 if n_outputs == 1 else 1
    cam = GradCam3d(model, "3").attribute(x, column).gradcam.numpy()
    if n_outputs == 1:
        prob = torch.sigmoid(logits[:, 0])
        loss = F.binary_cross_entropy_with_logits(logits[:, 0], labels.float(), reduction="none")
    else:
        prob = torch.softmax(logits, 1)[:, 1]
        loss = F.cross_entropy(logits, labels, reduction="none")
    rows = result.subjects
    assert list(rows["subject_id"]) == [f"sub-{i:02d}" for i in range(N)]
    np.testing.assert_allclose(rows["prob"], prob.numpy(), rtol=1e-5)
    np.testing.assert_allclose(rows["loss"], loss.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rows["pred"], (prob.numpy() >= 0.5).astype(int))
    np.testing.assert_array_equal(rows["label"], labels.numpy())

    mask = data.mask.numpy()
    outside = (cam * ~mask).sum((1, 2, 3)) / cam.sum((1, 2, 3))
    np.testing.assert_allclose(rows["cam_outside_brain_fraction"], outside, rtol=1e-5)
    lesion = ATLAS_LABELS == 7
    brain = data.mask.numpy()  # gain: share of the CAM inside the brain / share of the brain's volume
    gain = (cam * lesion).sum((1, 2, 3)) / (cam * brain).sum((1, 2, 3)) / (lesion.sum() / brain.sum())
    np.testing.assert_allclose(rows["cam_roi_gain_lesion"], gain, rtol=1e-5)
    assert result.region_names == ["corner", "lesion"]
    np.testing.assert_allclose(rows["cam_outside_brain_floor"], even_brain_floor(data.mask, (6, 7, 6)), rtol=1e-5)

    ad, cn = labels.numpy() == 1, labels.numpy() == 0
    maps = result.maps["cam"]
    np.testing.assert_allclose(maps.mean["AD"], cam[ad].mean(0), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(maps.diff, cam[ad].mean(0) - cam[cn].mean(0), rtol=1e-4, atol=1e-9)
    welch_t = scipy_stats.ttest_ind(cam[ad].astype(np.float64), cam[cn].astype(np.float64), equal_var=False).statistic
    # the CAMs stay on the layer grid (6x7x6); t is 0 (scipy: NaN) where both groups are constant
    np.testing.assert_allclose(maps.t, np.nan_to_num(welch_t, nan=0.0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.maps["input"].mean["CN"], x[cn].numpy().mean(0), rtol=1e-5, atol=1e-6)
    first_conv = model[0](x).detach().numpy()
    np.testing.assert_allclose(result.maps["features/0"].mean["AD"], first_conv[ad].mean(0), rtol=1e-5, atol=1e-6)
    assert result.feature_layers == ["3", "0"] and sorted(result.feature_ranking["3"]["channel"]) == list(range(6))

    assert set(saved) == set(rows["subject_id"])
    assert set(saved["sub-03"][0]) == {"gradcam", "hirescam"}
    np.testing.assert_allclose(saved["sub-03"][0]["gradcam"], cam[3], rtol=1e-6)
    hirescam = GradCam3d(model, "3").attribute(x, column).hirescam.numpy()
    np.testing.assert_allclose(saved["sub-03"][0]["hirescam"], hirescam[3], rtol=1e-6)

    predicted = prob.numpy() >= 0.5
    for outcome, members in {"TP": ad & predicted, "TN": cn & ~predicted, "FP": cn & predicted,
                             "FN": ad & ~predicted}.items():  # fmt: skip
        cases = result.gallery[outcome]
        assert len(cases) == min(2, members.sum())
        confidence = prob.numpy()[members] if outcome in ("TP", "FP") else 1 - prob.numpy()[members]
        np.testing.assert_allclose([c.confidence for c in cases], np.sort(confidence)[::-1][: len(cases)], rtol=1e-6)
        for case in cases:
            i = int(case.subject_id[-2:])
            np.testing.assert_array_equal(case.image, x[i].numpy())
            np.testing.assert_allclose(case.primary_cam, cam[i], rtol=1e-6)

    assert result.sanity.subject_ids == ["sub-00", "sub-01", "sub-02"]
    assert np.all(np.abs(result.sanity.spearman) <= 1)
    assert result.device == "cpu" and result.chunk_size is None and result.timings["subjects_per_s"] > 0


def test_a_target_layer_on_the_input_grid_gives_the_same_kind_of_results():
    """Layer "0" keeps the input grid: its CAMs are summed voxel by voxel (no neighbour products)."""
    model = model_with(2)
    meta = dataclasses.replace(META, target_layer="0")
    data = Subjects()
    result = run_engine(model, loader(data), meta, device="cpu", progress=False, atlas=ATLAS, cam="gradcam")
    cam = GradCam3d(model, "0").attribute(data.images, 1).gradcam.numpy()
    assert "cam|neighbours" not in result.stats.state and result.stats.state["cam|sumsq"].shape[1:] == SPATIAL
    outside = (cam * ~data.mask.numpy()).sum((1, 2, 3)) / cam.sum((1, 2, 3))
    np.testing.assert_allclose(result.subjects["cam_outside_brain_fraction"], outside, rtol=1e-5)
    lesion = ATLAS_LABELS == 7
    brain = data.mask.numpy()  # gain: share of the CAM inside the brain / share of the brain's volume
    gain = (cam * lesion).sum((1, 2, 3)) / (cam * brain).sum((1, 2, 3)) / (lesion.sum() / brain.sum())
    np.testing.assert_allclose(result.subjects["cam_roi_gain_lesion"], gain, rtol=1e-5)
    ad, cn = data.labels.numpy() == 1, data.labels.numpy() == 0
    welch_t = scipy_stats.ttest_ind(cam[ad].astype(np.float64), cam[cn].astype(np.float64), equal_var=False).statistic
    np.testing.assert_allclose(result.maps["cam"].t, np.nan_to_num(welch_t, nan=0.0), rtol=1e-4, atol=1e-5)


def test_a_given_brain_mask_replaces_each_subjects_own():
    model = model_with(2)
    data = Subjects()
    given = np.zeros(SPATIAL, dtype=np.uint8)
    given[1:11, 3:13, 1:9] = 1  # not the loader's mask
    result = evaluate(model, brain_mask=given, atlas=ATLAS)
    cam = GradCam3d(model, "3").attribute(data.images, 1).gradcam.numpy()
    outside = (cam * (given == 0)).sum((1, 2, 3)) / cam.sum((1, 2, 3))
    np.testing.assert_allclose(result.subjects["cam_outside_brain_fraction"], outside, rtol=1e-5)
    corner = ATLAS_LABELS == 3
    gain = (cam * corner).sum((1, 2, 3)) / (cam * given).sum((1, 2, 3)) / (corner.sum() / given.sum())
    np.testing.assert_allclose(result.subjects["cam_roi_gain_corner"], gain, rtol=1e-5)
    blind = model_with(2)
    torch.nn.init.zeros_(blind[-1].weight)  # the logits ignore the features: every Grad-CAM is 0
    rows = evaluate(blind, brain_mask=given, atlas=ATLAS).subjects  # undefined, not infinite
    assert np.isnan(rows["cam_roi_gain_corner"]).all() and np.isnan(rows["cam_outside_brain_fraction"]).all()
    with pytest.raises(HeimerError, match="brain mask grid"):
        evaluate(model, brain_mask=given[:-1])


def even_brain_floor(mask: torch.Tensor, layer_grid) -> float:
    """The outside share of a map spread evenly over the brain as a layer grid can draw it: each
    cell at its share of brain (U^T m / U^T 1, by autograd through F.interpolate), upsampled."""

    even = pulled(mask, layer_grid) / pulled(torch.ones(mask.shape), layer_grid)
    up = F.interpolate(even[None, None], tuple(mask.shape), mode="trilinear", align_corners=False)[0, 0]
    return float((up * ~mask).sum() / up.sum())


class RunsOutOfMemoryOnce(nn.Module):
    """Raises torch.OutOfMemoryError, as CUDA would, the first time it sees more than 4 subjects."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.failures = []

    def forward(self, x):
        if len(x) > 4 and not self.failures:
            self.failures.append(len(x))
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return self.model(x)


def test_out_of_memory_halves_the_batch_and_gives_the_same_result():
    expected = evaluate(model_with(2), batch_size=8)
    model = RunsOutOfMemoryOnce(model_with(2))
    with pytest.warns(RuntimeWarning, match="chunks of 4"):
        got = evaluate(model, batch_size=8)
    assert model.failures == [8] and got.chunk_size == 4
    for column in ("prob", "loss", "cam_outside_brain_fraction"):
        np.testing.assert_allclose(got.subjects[column], expected.subjects[column], rtol=1e-6)
    for key, value in expected.stats.state_dict().items():
        torch.testing.assert_close(got.stats.state[key.replace("/3|", "/model.3|")], value)


def test_unreadable_subjects_are_listed_not_evaluated():
    result = evaluate(model_with(2), dataset=Subjects(problems={1, 4}))
    assert [e["subject_id"] for e in result.excluded] == ["sub-01", "sub-04"]
    assert len(result.subjects["prob"]) == N - 2 and "sub-04" not in result.subjects["subject_id"]
    assert result.maps["cam"].count["AD"] + result.maps["cam"].count["CN"] == N - 2


def test_inside_no_grad_with_frozen_weights_and_train_mode_restored():
    model = model_with(2).train()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        result = evaluate(model)
    assert model.training
    assert np.isfinite(result.maps["cam"].t).all() and result.maps["cam"].mean["AD"].max() > 0


def test_bf16_autocast_keeps_float_results():
    result = evaluate(model_with(1), amp="bf16")
    assert result.maps["cam"].mean["AD"].dtype == np.float32
    assert result.stats.state["cam|sum"].dtype == torch.float64
    expected = evaluate(model_with(1))
    np.testing.assert_allclose(result.subjects["prob"], expected.subjects["prob"], atol=0.02)


def test_user_errors():
    with pytest.raises(HeimerError, match="3 logits"):
        evaluate(model_with(3))
    with pytest.raises(HeimerError, match="amp"):
        evaluate(model_with(2), amp="fp8")
    with pytest.raises(HeimerError, match="atlas grid"):
        evaluate(model_with(2), atlas=(ATLAS_LABELS[:-1], ATLAS[1]))
    with pytest.raises(HeimerError, match="no voxels"):
        evaluate(model_with(2), atlas=(ATLAS_LABELS, {**ATLAS[1], 9: "missing"}))
    with pytest.raises(HeimerError, match="cuda:7"):
        pick_device("cuda:7")
    assert pick_device("cpu") == torch.device("cpu")


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a = torch.relu(torch.randn(500, generator=g))  # many tied zeros, as after Grad-CAM's ReLU
    b = torch.relu(a + torch.randn(500, generator=g))
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-9)


def test_more_than_two_classes_pool_the_non_positive_ones():
    meta = ModelMeta(class_names=["CN", "MCI", "AD"], positive_class="AD")
    data = Subjects()
    data.labels = torch.arange(N) % 3
    model = model_with(3)
    result = run_engine(model, loader(data), meta, device="cpu", progress=False, sanity_subjects=0)
    logits = model(data.images).detach()
    prob = torch.softmax(logits, 1)[:, 2].numpy()
    best_other = logits[:, :2].argmax(1).numpy()
    np.testing.assert_array_equal(result.subjects["pred"], np.where(prob >= 0.5, 2, best_other))
    counts = result.maps["cam"].count
    assert counts["CN"] + counts["MCI"] == counts["TN"] + counts["FP"] and counts["AD"] == counts["TP"] + counts["FN"]
