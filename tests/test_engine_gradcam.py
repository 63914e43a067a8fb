"""GradCam3d against MONAI's GradCAM and captum's LayerGradCam, and its edge cases."""

import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from monai.visualize import GradCAM
from torch import nn

from heimer_mlflow.engine import GradCam3d, conv_layers, resolve_layer
from heimer_mlflow.errors import HeimerError

from .helpers.models import ConvStack, conv_stack, densenet, make, resnet
from .helpers.subjects import SHAPE, mixed_batch


def normalize_per_subject(cam: torch.Tensor) -> torch.Tensor:
    """Scale each subject's map to [0, 1] by (cam - min) / (max - min), as the parity tests compare maps (captum's and MONAI's differ in scale).

    ``cam`` is [B, ...]; a constant map becomes all zeros. Group statistics use raw maps.
    """
    flat = cam.reshape(cam.shape[0], -1)
    low = flat.min(dim=1).values
    span = flat.max(dim=1).values - low
    scale = torch.where(span > 0, 1.0 / torch.where(span > 0, span, 1.0), 0.0)
    shape = (-1,) + (1,) * (cam.dim() - 1)
    return (cam - low.view(shape)) * scale.view(shape)



@pytest.mark.parametrize("factory", [conv_stack, densenet, resnet])
@pytest.mark.parametrize("n_outputs", [1, 2])
def test_parity_with_monai_and_captum(factory, n_outputs):
    model, layer = make(factory, n_outputs)
    x = mixed_batch()
    # one logit: explain the logit; two logits: a different class per sample
    target = torch.zeros(4, dtype=torch.long) if n_outputs == 1 else torch.tensor([0, 1, 1, 0])

    ours = normalize_per_subject(GradCam3d(model, layer).attribute(x, target).gradcam)

    monai_cam = GradCAM(nn_module=model, target_layers=layer, postprocessing=lambda m: m)
    reference = torch.cat([monai_cam(x[i : i + 1], class_idx=int(target[i])) for i in range(4)])
    torch.testing.assert_close(ours, normalize_per_subject(reference[:, 0].detach()), atol=1e-5, rtol=0)

    captum_cam = LayerGradCam(model, model.get_submodule(layer))
    attribution = captum_cam.attribute(x, target=target, relu_attributions=True)
    upsampled = LayerAttribution.interpolate(attribution, SHAPE[1:], interpolate_mode="trilinear")
    torch.testing.assert_close(ours, normalize_per_subject(upsampled[:, 0].detach()), atol=1e-5, rtol=0)


def test_logits_and_activations_come_from_the_same_pass():
    model, layer = make(conv_stack, 2)
    x = mixed_batch()
    result = GradCam3d(model, layer, feature_layers=("features.3",)).attribute(x, 1)
    with torch.no_grad():
        torch.testing.assert_close(result.logits, model(x))
        torch.testing.assert_close(result.activations["features.3"], model.features[:4](x))
        torch.testing.assert_close(result.activations[layer], model.features[:7](x))
    assert result.gradcam.shape == (4, *SHAPE[1:]) and result.gradcam.dtype == torch.float32
    assert (result.gradcam >= 0).all()


def test_inplace_ops_frozen_weights_and_no_grad_callers_give_the_same_maps():
    torch.manual_seed(0)
    reference_model = ConvStack(2).eval()
    inplace_model = ConvStack(2, inplace=True).eval()
    inplace_model.load_state_dict(reference_model.state_dict())
    for p in inplace_model.parameters():
        p.requires_grad_(False)
    x = mixed_batch()
    expected = GradCam3d(reference_model, "features.6").attribute(x, 1).gradcam
    with torch.no_grad():
        got = GradCam3d(inplace_model, "features.6").attribute(x, 1).gradcam
    torch.testing.assert_close(got, expected)
    assert all(p.grad is None for p in reference_model.parameters()), "no backward into parameters"


def test_hooks_are_removed_even_on_error():
    model, layer = make(conv_stack, 3)
    cam = GradCam3d(model, layer)
    with pytest.raises(RuntimeError):
        cam.attribute(torch.randn(2, 1, 24, 28, 24), target=5)  # column out of range
    assert not any(m._forward_hooks for m in model.modules())


def test_bf16_autocast_gives_float32_maps_close_to_float32():
    model, layer = make(conv_stack, 1)
    x = mixed_batch()
    expected = normalize_per_subject(GradCam3d(model, layer).attribute(x).gradcam)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = GradCam3d(model, layer).attribute(x)
    assert result.gradcam.dtype == torch.float32 and result.logits.dtype == torch.float32
    assert (normalize_per_subject(result.gradcam) - expected).abs().mean() < 0.05


def test_layer_errors_name_the_candidates():
    model, _ = make(conv_stack, 1)
    assert conv_layers(model) == ["features.0", "features.3", "features.6"]
    assert resolve_layer(model, None)[0] == "features.6"
    with pytest.raises(HeimerError, match="features.0"):
        resolve_layer(model, "features.99")
    with pytest.raises(HeimerError, match="no Conv3d"):
        resolve_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 1)), None)
    with pytest.raises(HeimerError, match=r"\[B, C, D, H, W\]"):
        GradCam3d(model, "head.1").attribute(mixed_batch())


def test_normalize_per_subject():
    cam = torch.stack([torch.full((2, 2, 2), 3.0), torch.arange(8.0).view(2, 2, 2) + 1])
    out = normalize_per_subject(cam)
    assert out[0].eq(0).all()
    torch.testing.assert_close(out[1], torch.arange(8.0).view(2, 2, 2) / 7)


def test_a_layer_off_the_output_path_is_refused():
    class WithUnusedBranch(ConvStack):
        def __init__(self):
            super().__init__(1)
            self.unused = nn.Conv3d(1, 2, 3)

        def forward(self, x):
            self.unused(x)
            return super().forward(x)

    with pytest.raises(HeimerError, match="does not influence"):
        GradCam3d(WithUnusedBranch().eval(), "unused").attribute(mixed_batch())


def test_layers_before_the_target_keep_no_graph_and_the_weights_stay_trainable():
    """The gradient goes to the target activation only: the layers before it must not save
    tensors for a backward that never comes (at 1 mm with a resnet18 that was most of the peak
    memory), and the caller's weights keep requires_grad, also when attribute fails."""
    model, layer = conv_stack(2)
    model = model.eval()
    x = mixed_batch()
    saved = []

    def pack(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        GradCam3d(model, layer).attribute(x)
    assert saved and tuple(x.shape) not in saved  # the first convolution saved nothing
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(RuntimeError, match="out of bounds"):  # no such output column: the pass fails midway
        GradCam3d(model, "features.0").attribute(x, target=torch.tensor([5] * len(x)))
    assert all(p.requires_grad for p in model.parameters())
