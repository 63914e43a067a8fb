"""run_engine on MONAI architectures and odd grids, every CAM number against captum's LayerGradCam
upsampled on the input grid (the engine itself keeps the CAM on the layer grid)."""

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from scipy import stats as scipy_stats

from heimer_mlflow.engine import run_engine
from heimer_mlflow.meta import ModelMeta

from .helpers.odd_grid import ATLAS, ATLAS_LABELS, GRID, Subjects, densenet, resnet


@pytest.mark.parametrize("factory", [resnet, densenet])
def test_engine_cam_numbers_equal_captum_on_the_input_grid(factory):
    torch.manual_seed(0)
    model, layer = factory()
    model.eval()
    data = Subjects()
    n_outputs = 1 if factory is resnet else 2
    meta = ModelMeta(class_names=["CN", "AD"], positive_class="AD", input_shape=[1, *GRID], target_layer=layer)
    result = run_engine(model, torch.utils.data.DataLoader(data, batch_size=5), meta, device="cpu", progress=False,
                        atlas=ATLAS, gallery_k=2, sanity_subjects=2, cam="gradcam")  # fmt: skip

    assert "cam|neighbours" in result.stats.state  # the layer-grid path, not voxel-wise sums
    attribution = LayerGradCam(model, model.get_submodule(layer)).attribute(
        data.images, target=n_outputs - 1, relu_attributions=True
    )
    cam = LayerAttribution.interpolate(attribution, GRID, interpolate_mode="trilinear")[:, 0].detach().double().numpy()
    total = cam.sum((1, 2, 3))
    outside = (cam * ~data.masks.numpy()).sum((1, 2, 3)) / total
    np.testing.assert_allclose(result.subjects["cam_outside_brain_fraction"], outside, rtol=1e-4, atol=1e-6)
    lesion = ATLAS_LABELS == 1
    brain = data.masks.numpy()  # gain: share of the CAM inside the brain / share of the brain's volume
    gain = (cam * lesion).sum((1, 2, 3)) / (cam * brain).sum((1, 2, 3)) / (lesion.sum() / brain.sum((1, 2, 3)))
    np.testing.assert_allclose(result.subjects["cam_roi_gain_lesion"], gain, rtol=1e-4, atol=1e-6)

    ad, cn = data.labels.numpy() == 1, data.labels.numpy() == 0
    maps = result.maps["cam"]
    scale = np.abs(cam).max()
    np.testing.assert_allclose(maps.mean["AD"], cam[ad].mean(0), rtol=1e-4, atol=1e-6 * scale)
    np.testing.assert_allclose(maps.diff, cam[ad].mean(0) - cam[cn].mean(0), rtol=1e-4, atol=1e-6 * scale)
    welch_t = np.nan_to_num(scipy_stats.ttest_ind(cam[ad], cam[cn], equal_var=False).statistic, nan=0.0)
    np.testing.assert_allclose(maps.t, welch_t, rtol=1e-3, atol=1e-4)
    for case in (case for cases in result.gallery.values() for case in cases):
        np.testing.assert_allclose(case.primary_cam, cam[case.index], rtol=1e-4, atol=1e-6 * scale)
