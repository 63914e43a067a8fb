"""HiResCAM beside Grad-CAM: against captum's LayerGradientXActivation (summed over channels,
rectified, upsampled), on MONAI networks and every DemoCNN head, and through run_engine (saved
volumes, the primary map behind shares, group maps, gallery and sanity check, the per-method
columns and their agreement)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam, LayerGradientXActivation
from scipy import stats as scipy_stats

from heimer_mlflow.engine import GradCam3d, run_engine, spearman
from heimer_mlflow.engine.agreement import randomised_copy
from heimer_mlflow.engine.result import SUBJECT_COLUMNS
from heimer_mlflow.errors import HeimerError
from heimer_mlflow.evaluation import EvaluationOptions
from heimer_mlflow.meta import ModelMeta
from heimer_mlflow.demo.nets import DemoCNN

from .helpers import odd_grid
from .helpers.models import ConvStack, densenet, make, resnet
from .helpers.subjects import SHAPE, mixed_batch, pulled

GRID = odd_grid.GRID
REGIONS = odd_grid.ATLAS


def demo_cnn(head):
    def factory(n_outputs):
        net = DemoCNN(n_outputs=n_outputs, width=4, dropout=0.0, head=head)
        return net, net.gradcam_layer

    factory.__name__ = f"demo_cnn_{head}"
    return factory


def captum_hirescam(model, layer, x, target, grid=None) -> torch.Tensor:
    """[B, *grid]: captum's gradient x activation at ``layer``, summed over channels, ReLU, trilinear."""
    attribution = LayerGradientXActivation(model, model.get_submodule(layer)).attribute(x, target=target)
    layer_map = F.relu(attribution.sum(dim=1, keepdim=True)).detach()
    if grid is None:
        return layer_map[:, 0]
    return F.interpolate(layer_map, grid, mode="trilinear", align_corners=False)[:, 0]


def captum_gradcam(model, layer, x, target, grid) -> torch.Tensor:
    attribution = LayerGradCam(model, model.get_submodule(layer)).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(attribution, grid, interpolate_mode="trilinear")[:, 0].detach()


@pytest.mark.parametrize("factory", [resnet, densenet, *(demo_cnn(head) for head in ("max", "evidence", "avg"))],
                         ids=lambda f: f.__name__)  # fmt: skip
@pytest.mark.parametrize("n_outputs", [1, 2])
def test_hirescam_equals_captum_gradient_times_activation(factory, n_outputs):
    model, layer = make(factory, n_outputs)
    x = mixed_batch()
    target = torch.zeros(4, dtype=torch.long) if n_outputs == 1 else torch.tensor([0, 1, 1, 0])
    result = GradCam3d(model, layer).attribute(x, target)
    reference = captum_hirescam(model, layer, x, target, SHAPE[1:])
    assert result.hirescam.dtype == torch.float32 and result.hirescam.shape == (4, *SHAPE[1:])
    assert reference.max() > 0, "a map of zeros would test nothing"
    torch.testing.assert_close(result.hirescam, reference, rtol=1e-5, atol=1e-5 * float(reference.abs().max()))
    torch.testing.assert_close(result.layer_maps["hirescam"], captum_hirescam(model, layer, x, target), rtol=1e-5,
                               atol=1e-5 * float(reference.abs().max()))  # fmt: skip
    # the Grad-CAM of the same pass is still Grad-CAM (captum's, on the input grid)
    gradcam = captum_gradcam(model, layer, x, target, tuple(SHAPE[1:]))
    torch.testing.assert_close(result.gradcam, gradcam, rtol=1e-5, atol=1e-5 * max(float(gradcam.abs().max()), 1e-12))
    gradcam = captum_gradcam(model, layer, x, target, SHAPE[1:])
    torch.testing.assert_close(result.gradcam, gradcam, rtol=1e-5, atol=1e-5 * float(gradcam.abs().max()))


def test_after_global_average_pooling_hirescam_is_gradcam():
    """Each voxel's gradient at the pooled layer is w_c / N: both weighings are the same."""
    model, layer = make(demo_cnn("avg"), 2)
    result = GradCam3d(model, layer).attribute(mixed_batch(), torch.tensor([0, 1, 1, 0]))
    assert result.gradcam.max() > 0
    torch.testing.assert_close(result.hirescam, result.gradcam, rtol=1e-5, atol=1e-6 * float(result.gradcam.max()))


def test_a_max_head_makes_the_methods_differ():
    """Global max pooling: the score's gradient lives on one voxel per channel, which HiResCAM keeps."""
    model, layer = make(demo_cnn("max"), 1)
    result = GradCam3d(model, layer).attribute(mixed_batch())
    hires_cells = (result.layer_maps["hirescam"] > 0).flatten(1).sum(1)
    grad_cells = (result.layer_maps["gradcam"] > 0).flatten(1).sum(1)
    assert (hires_cells < grad_cells).all(), (hires_cells, grad_cells)


def engine(model, layer, data, **options):
    meta = ModelMeta(class_names=["CN", "AD"], positive_class="AD", input_shape=[1, *GRID], target_layer=layer)
    options = {"device": "cpu", "progress": False, "atlas": REGIONS, "gallery_k": 2, "sanity_subjects": 3, **options}
    return run_engine(model, torch.utils.data.DataLoader(data, batch_size=5), meta, **options)


def outside_share(cam: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return (cam * ~masks).sum((1, 2, 3)) / cam.sum((1, 2, 3))


@pytest.mark.parametrize("factory", [odd_grid.resnet, odd_grid.densenet])
@pytest.mark.slow
def test_engine_with_hirescam_primary_follows_captum(factory):
    torch.manual_seed(0)
    model, layer = factory()
    model.eval()
    data = odd_grid.Subjects()
    target = 0 if factory is odd_grid.resnet else 1
    saved = {}
    result = engine(model, layer, data, cam="hirescam",
                    save_cams=lambda sid, cams, affine: saved.setdefault(sid, (cams, affine)))  # fmt: skip
    assert result.cam_method == "hirescam"
    hirescam = captum_hirescam(model, layer, data.images, target, GRID).double().numpy()
    gradcam = captum_gradcam(model, layer, data.images, target, GRID).double().numpy()
    scale = {"hirescam": np.abs(hirescam).max(), "gradcam": np.abs(gradcam).max()}
    masks = data.masks.numpy()

    # both maps saved per subject, both per-method shares, the primary's shares are HiResCAM's
    assert list(saved) == list(result.subjects["subject_id"])
    for i, sid in enumerate(result.subjects["subject_id"]):
        cams, affine = saved[sid]
        np.testing.assert_allclose(cams["hirescam"], hirescam[i], rtol=1e-4, atol=1e-6 * scale["hirescam"])
        np.testing.assert_allclose(cams["gradcam"], gradcam[i], rtol=1e-4, atol=1e-6 * scale["gradcam"])
        np.testing.assert_array_equal(affine, np.eye(4))
    rows = result.subjects
    assert set(SUBJECT_COLUMNS) | {"cam_roi_gain_lesion", "cam_roi_gain_corner"} == set(rows)
    np.testing.assert_allclose(rows["hirescam_outside_brain_fraction"], outside_share(hirescam, masks), rtol=1e-4)
    np.testing.assert_allclose(rows["gradcam_outside_brain_fraction"], outside_share(gradcam, masks), rtol=1e-4)
    np.testing.assert_array_equal(rows["cam_outside_brain_fraction"], rows["hirescam_outside_brain_fraction"])
    lesion = odd_grid.ATLAS_LABELS == 1
    lesion_share = (hirescam * lesion).sum((1, 2, 3)) / (hirescam * masks).sum((1, 2, 3))
    gain = lesion_share / (lesion.sum() / masks.sum((1, 2, 3)))
    np.testing.assert_allclose(rows["cam_roi_gain_lesion"], gain, rtol=1e-4, atol=1e-6)

    # group maps and gallery: the primary map; the gallery keeps both
    ad = data.labels.numpy() == 1
    np.testing.assert_allclose(result.maps["cam"].mean["AD"], hirescam[ad].mean(0), rtol=1e-4,
                               atol=1e-6 * scale["hirescam"])  # fmt: skip
    cases = [case for kept in result.gallery.values() for case in kept]
    assert cases
    for case in cases:
        assert case.cams["hirescam"] is case.primary_cam
        np.testing.assert_allclose(case.primary_cam, hirescam[case.index], rtol=1e-4, atol=1e-6 * scale["hirescam"])
        np.testing.assert_allclose(case.cams["gradcam"], gradcam[case.index], rtol=1e-4, atol=1e-6 * scale["gradcam"])

    # the sanity check compares trained and randomised HiResCAM
    random_model = randomised_copy(model, 0)
    x = data.images[:3]
    trained = GradCam3d(model, layer).attribute(x, target).layer_maps["hirescam"]
    randomised = GradCam3d(random_model, layer).attribute(x, target).layer_maps["hirescam"]
    expected = [spearman(a, b) for a, b in zip(trained, randomised)]
    np.testing.assert_allclose(result.sanity.spearman, expected, rtol=1e-6)

    # the default primary is HiResCAM; with Grad-CAM primary the per-method columns stay the same
    assert engine(model, layer, data, atlas=None, sanity_subjects=0).cam_method == "hirescam"
    other = engine(model, layer, data, cam="gradcam")
    assert other.cam_method == "gradcam"
    np.testing.assert_array_equal(other.subjects["cam_outside_brain_fraction"],
                                  other.subjects["gradcam_outside_brain_fraction"])  # fmt: skip
    for column in ("gradcam_outside_brain_fraction", "hirescam_outside_brain_fraction", "cam_method_agreement"):
        np.testing.assert_allclose(other.subjects[column], rows[column], rtol=1e-6, err_msg=column)


def test_method_agreement_is_spearman_over_the_mostly_brain_cells():
    torch.manual_seed(0)
    model, layer = ConvStack(1).eval(), "features.3"  # a 9x11x8 layer grid: enough cells to rank
    data = odd_grid.Subjects()
    result = engine(model, layer, data)
    attribution = GradCam3d(model, layer).attribute(data.images, 0)
    layer_grid = tuple(attribution.layer_maps["gradcam"].shape[1:])
    everything = pulled(torch.ones(GRID), layer_grid)
    expected = []
    for i in range(len(data)):
        mostly_brain = (pulled(data.masks[i].float(), layer_grid) > everything / 2).numpy()
        assert 2 < mostly_brain.sum() < mostly_brain.size, "the selection must matter"
        gradcam, hirescam = (attribution.layer_maps[m][i].numpy()[mostly_brain] for m in ("gradcam", "hirescam"))
        expected.append(scipy_stats.spearmanr(gradcam, hirescam).statistic)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(result.subjects["cam_method_agreement"], expected, rtol=1e-9, atol=1e-12)

    torch.nn.init.zeros_(model.head[2].weight)  # the logit ignores the features: both maps are 0
    rows = engine(model, layer, data, atlas=None, sanity_subjects=0).subjects
    assert np.isnan(rows["cam_method_agreement"]).all()


def test_with_global_average_pooling_the_methods_agree():
    torch.manual_seed(0)
    model = DemoCNN(n_outputs=1, width=4, dropout=0.0, head="avg").eval()
    data = odd_grid.Subjects()
    result = engine(model, model.gradcam_layer, data)
    rows = result.subjects
    agreement = rows["cam_method_agreement"]
    assert np.isfinite(agreement).sum() >= len(data) // 2 and np.nanmin(agreement) > 0.999
    np.testing.assert_allclose(rows["hirescam_outside_brain_fraction"], rows["gradcam_outside_brain_fraction"],
                               rtol=1e-5)  # fmt: skip


def test_an_unknown_cam_method_is_a_user_error():
    model, layer = odd_grid.resnet()
    with pytest.raises(HeimerError, match="^unknown cam 'scorecam': use gradcam or hirescam$"):
        engine(model, layer, odd_grid.Subjects(), cam="scorecam")
    with pytest.raises(HeimerError, match="^unknown cam 'x': use gradcam or hirescam$"):
        EvaluationOptions(cam="x").check()
    assert EvaluationOptions(cam="hirescam").check().cam == "hirescam"
