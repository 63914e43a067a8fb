"""The notebook displays: the maps equal the evaluation's, three views drawn, NIfTI input, one-line errors, no MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import matplotlib.text
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from matplotlib.figure import Figure
from scipy import stats
from torch import nn

from heimer_mlflow import FeatureMapDisplay, GradCamDisplay, GroupDifferenceDisplay, HeimerError
from heimer_mlflow.cohort import CohortDataset, make_loader, read_cohort
from heimer_mlflow.engine import run_engine
from heimer_mlflow.figures.style import HEAT_CMAP
from heimer_mlflow.meta import ModelMeta

from .helpers.figures import assert_views_cross_at_the_peak
from .helpers.models import TinyCNN

GRID = (24, 28, 24)  # 4 mm voxels: a 96 x 112 x 96 mm field of view
# Stored left-to-right flipped (LAS), as many scanners write it: the views must still come out RAS.
AFFINE = np.array([[-4.0, 0, 0, 46], [0, 4.0, 0, -62], [0, 0, 4.0, -42], [0, 0, 0, 1]])


class StridedCNN(TinyCNN):
    """The first convolution strided: the target layer's grid is coarser than the input's (upsampling matters)."""

    def __init__(self, n_outputs: int = 2):
        super().__init__(n_outputs)
        self.body[0] = nn.Conv3d(1, 4, 3, stride=2, padding=1)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return StridedCNN().eval()


def head(seed: int = 0, bump: float = 0.0) -> np.ndarray:
    """An ellipsoidal 'head' of noisy tissue on a zero background; ``bump`` raises one lobe."""
    rng = np.random.default_rng(seed)
    i, j, k = np.indices(GRID, dtype=np.float32)
    inside = ((i - 11.5) / 10) ** 2 + ((j - 13.5) / 12) ** 2 + ((k - 11.5) / 10) ** 2 <= 1
    lobe = ((i - 7) ** 2 + (j - 18) ** 2 + (k - 12) ** 2) <= 9
    tissue = 100 + 10 * rng.standard_normal(GRID) + 60 * np.sin(i / 3) * np.cos(j / 4) + bump * lobe
    return np.where(inside, tissue, 0).astype(np.float32)


def save(volume, path, affine=AFFINE) -> Path:
    nib.save(nib.Nifti1Image(volume, affine), path)
    return Path(path)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message and len(message.splitlines()) == 1, message
    return message


def test_the_maps_and_probabilities_are_the_evaluations(tmp_path, model):
    """Subject by subject, the display's maps are those the evaluation's engine saves, from NIfTI files."""
    paths = [save(head(seed), tmp_path / f"sub-{seed}.nii.gz") for seed in range(3)]
    manifest = pd.DataFrame({"path": [p.name for p in paths], "label": ["AD", "CN", "AD"]})
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    meta = ModelMeta(intensity="zscore", target_layer="body.2")
    loader = make_loader(CohortDataset(read_cohort(tmp_path / "manifest.csv", meta.class_names), meta),
                         batch_size=2, workers=0)  # fmt: skip
    saved = {}
    result = run_engine(model, loader, meta, device="cpu", progress=False, sanity_subjects=0,
                        save_cams=lambda sid, cams, affine: saved.setdefault(sid, (cams, affine)))  # fmt: skip
    probs = dict(zip(result.subjects["subject_id"], result.subjects["prob"]))
    for path in paths:
        cams, affine = saved[path.name.removesuffix(".nii.gz")]
        for method in ("gradcam", "hirescam"):
            display = GradCamDisplay.from_model(model, path, layer="body.2", method=method, intensity="zscore")
            assert display.cam.shape == GRID
            np.testing.assert_allclose(display.cam, cams[method], rtol=1e-4, atol=1e-6 * cams[method].max())
            np.testing.assert_array_equal(display.affine, affine)
            assert display.probability == pytest.approx(probs[path.name.removesuffix(".nii.gz")], abs=1e-6)
            assert (display.method, display.layer, display.target, display.class_name) == (method, "body.2", 1, "class 1")


def test_gradcam_equals_captums_layer_gradcam(model):
    volume = head()
    display = GradCamDisplay.from_model(model, volume, layer="body.2", method="gradcam", target=0)
    x = torch.from_numpy(volume)[None, None]
    attribution = LayerGradCam(model, model.body[2]).attribute(x, target=0, relu_attributions=True)
    reference = LayerAttribution.interpolate(attribution, GRID, interpolate_mode="trilinear")[0, 0].detach().numpy()
    assert reference.max() > 0
    np.testing.assert_allclose(display.cam, reference, rtol=1e-4, atol=1e-6 * reference.max())
    logits = model(x).detach()[0]
    assert display.probability == pytest.approx(float(torch.softmax(logits, 0)[0]), abs=1e-6)


def test_model_metadata_gives_the_defaults_and_the_module_is_left_as_it_was(model):
    """What load_model returns: layer, intensity and the positive class come from its metadata."""
    loaded = types.SimpleNamespace(module=model.train(), meta=ModelMeta(class_names=["AD", "CN"], positive_class="AD",
                                                                         intensity="zscore", target_layer="body.0"))
    display = GradCamDisplay.from_model(loaded, head())
    assert (display.layer, display.target, display.class_name) == ("body.0", 0, "AD")
    assert display.plot().ax_.get_title(loc="left").endswith(f"P(AD) = {display.probability:.2f}")
    assert abs(float(display.volume[display.volume != display.volume[0, 0, 0]].mean())) < 1.0  # z-scored
    assert model.training  # its mode restored
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed
    one_logit = GradCamDisplay.from_model(StridedCNN(n_outputs=1), head())
    assert (one_logit.layer, one_logit.target, one_logit.class_name) == ("body.2", 0, "positive")  # the last Conv3d


def test_plot_draws_three_views_through_the_peak_into_an_axes_or_a_new_figure(model):
    display = GradCamDisplay.from_model(model, head(), affine=AFFINE)
    fig = Figure()
    ax = fig.add_subplot()
    assert display.plot(ax=ax) is display
    assert display.ax_ is ax and display.figure_ is fig
    assert len(ax.images) == 6  # anatomy and map in each of the three views
    assert_views_cross_at_the_peak(ax, display.cam, AFFINE, HEAT_CMAP)  # the map itself, through its peak
    texts = [t.get_text() for t in ax.texts]
    assert [t.split()[0] for t in texts if " = " in t] == ["axial", "coronal", "sagittal"]
    assert {"L", "R", "A", "S"} <= set(texts)
    peak = AFFINE @ np.r_[np.unravel_index(np.argmax(display.cam), GRID), 1.0]
    assert f"axial z = {peak[2]:.0f} mm" in texts and f"sagittal x = {peak[0]:.0f} mm" in texts
    assert display._repr_png_() is None  # the caller's figure shows itself

    display.plot()
    assert isinstance(display.figure_, Figure) and display.figure_ is not fig
    assert display.ax_ in display.figure_.axes and len(display.figure_.axes) == 2  # the views and a colour bar
    assert len(display.ax_.images) == 6
    assert display._repr_png_().startswith(b"\x89PNG")


def test_nifti_path_and_image_give_the_files_affine(tmp_path, model):
    volume = head()
    path = save(volume, tmp_path / "sub.nii.gz")
    from_path = GradCamDisplay.from_model(model, str(path))
    from_image = GradCamDisplay.from_model(model, nib.load(path))
    from_array = GradCamDisplay.from_model(model, torch.from_numpy(volume)[None], affine=AFFINE)
    for display in (from_path, from_image, from_array):
        np.testing.assert_array_equal(display.affine, AFFINE)
        np.testing.assert_allclose(display.cam, from_path.cam, rtol=1e-6)
    assert GradCamDisplay.from_model(model, volume).affine is None

    saved_cam = save(from_path.cam, tmp_path / "sub_hirescam.nii.gz")
    again = GradCamDisplay.from_maps(path, saved_cam, probability=from_path.probability)
    np.testing.assert_allclose(again.cam, from_path.cam, rtol=1e-6)
    np.testing.assert_array_equal(again.affine, AFFINE)
    assert len(again.plot().ax_.images) == 6


def test_feature_map_is_the_layers_activation(model):
    volume = head()
    captured = {}
    handle = model.body[1].register_forward_hook(lambda module, inputs, output: captured.setdefault("a", output))
    with torch.no_grad():
        model(torch.from_numpy(volume)[None, None])
    handle.remove()
    expected = captured["a"][0].numpy()

    display = FeatureMapDisplay.from_model(model, volume, layer="body.1", n_channels=2, affine=AFFINE)
    np.testing.assert_allclose(display.activation, expected, rtol=1e-6)
    assert display.channels == list(np.argsort(-expected.reshape(4, -1).mean(axis=1), kind="stable")[:2])
    np.testing.assert_allclose(display.feature_map, expected[display.channels].mean(axis=0), rtol=1e-6)
    # the coarse grid covers the volume's field of view: their outer corners are the same point
    np.testing.assert_allclose(display.feature_affine @ [-0.5, -0.5, -0.5, 1], AFFINE @ [-0.5, -0.5, -0.5, 1])

    chosen = FeatureMapDisplay.from_model(model, volume, layer="body.1", channels=[3, 1])
    assert chosen.channels == [3, 1]
    np.testing.assert_allclose(chosen.feature_map, expected[[3, 1]].mean(axis=0), rtol=1e-6)
    ax = Figure().add_subplot()
    assert chosen.plot(ax=ax).ax_ is ax and len(ax.images) == 6
    with pytest.raises(HeimerError) as excinfo:
        FeatureMapDisplay.from_model(model, volume, layer="body.1", channels=[4])
    assert "0 to 3" in one_line(excinfo)


def test_feature_map_views_cross_where_the_evaluations_figure_slices():
    """A coarse feature map often peaks at the border, where its cells cover the edge of the head:
    the display slices through the grid's centre, as the evaluation's feature-map figure does,
    not through that peak (README's example once showed z = -65 mm, almost no anatomy)."""
    import re

    from heimer_mlflow.figures import plot_feature_maps

    volume = head()
    activation = np.full((2, 6, 7, 6), 0.5, np.float32)
    activation[:, 0, 0, 0] = 9.0  # the peak, in a corner cell
    display = FeatureMapDisplay(volume, activation, affine=AFFINE).plot()
    texts = " ".join(t.get_text() for t in display.figure_.findobj(matplotlib.text.Text))
    shown = dict(re.findall(r"(axial z|coronal y|sagittal x) = (-?\d+) mm", texts))
    figure = plot_feature_maps(activation, activation, activation, [0, 1], affine=AFFINE, input_shape=volume.shape)
    axial = re.search(r"axial slice z = (-?\d+) mm", " ".join(t.get_text() for t in figure.texts)).group(1)
    assert shown["axial z"] == axial
    corner = display.feature_affine @ [0, 0, 0, 1]
    assert int(shown["axial z"]) != round(corner[2]) and int(shown["sagittal x"]) != round(corner[0])
    centre = display.feature_affine @ [*((np.array(activation.shape[1:]) - 1) / 2), 1]  # the grid's centre, in mm
    cell = np.abs(np.diag(display.feature_affine)[:3])
    crossing = np.array([int(shown[k]) for k in ("sagittal x", "coronal y", "axial z")])
    assert (np.abs(crossing - centre[:3]) <= cell / 2 + 0.5).all(), (crossing, centre, cell)
    # a point of one's own choosing
    chosen = FeatureMapDisplay(volume, activation, affine=AFFINE).plot(center_mm=corner[:3])
    texts = " ".join(t.get_text() for t in chosen.figure_.findobj(matplotlib.text.Text))
    assert f"axial z = {round(corner[2])} mm" in texts


def test_group_difference_is_the_mean_difference_and_welch_t(tmp_path):
    group_a = np.stack([head(seed, bump=40.0) for seed in range(4)])
    group_b = [save(head(seed), tmp_path / f"cn-{seed}.nii.gz") for seed in range(10, 13)]
    b_voxels = np.stack([head(seed) for seed in range(10, 13)])
    display = GroupDifferenceDisplay.from_arrays(group_a, group_b, labels=("AD", "CN"))

    np.testing.assert_allclose(display.diff, group_a.mean(0) - b_voxels.mean(0), atol=1e-3)
    reference = stats.ttest_ind(group_a, b_voxels, axis=0, equal_var=False).statistic
    defined = np.isfinite(reference)  # scipy: NaN where both groups are constant; the engine says 0
    np.testing.assert_allclose(display.t[defined], reference[defined], rtol=1e-4, atol=1e-4)
    assert display.counts == {"AD": 4, "CN": 3}
    np.testing.assert_allclose(display.means["CN"], b_voxels.mean(0), atol=1e-3)
    np.testing.assert_array_equal(display.affine, AFFINE)  # from the first file
    np.testing.assert_allclose(display.background, (group_a.mean(0) + b_voxels.mean(0)) / 2, atol=1e-3)

    ax = Figure().add_subplot()
    assert display.plot(ax=ax, statistic="t") is display and len(ax.images) == 6
    assert_views_cross_at_the_peak(ax, display.t, AFFINE, "RdBu_r", signed=True)  # t itself, through max |t|
    assert len(display.plot().ax_.images) == 6

    single = GroupDifferenceDisplay.from_arrays(group_a[:1], b_voxels, affine=AFFINE)
    assert np.isnan(single.t).all()
    with pytest.raises(HeimerError) as excinfo:
        single.plot(statistic="t")
    assert "at least 2 volumes in each group" in one_line(excinfo)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda m, tmp: GradCamDisplay.from_model(m, head(), layer="bodi.2"), ["'bodi.2'", "did you mean 'body.2'"]),
        (lambda m, tmp: GradCamDisplay.from_model(m, np.zeros((2, *GRID))), ["[2, 24, 28, 24]", "[1, D, H, W]"]),
        (lambda m, tmp: GradCamDisplay.from_model(m, np.zeros(GRID[:2])), ["[24, 28]"]),
        (lambda m, tmp: GradCamDisplay.from_model(m, tmp / "missing.nii.gz"), ["missing.nii.gz", "does not exist"]),
        (lambda m, tmp: GradCamDisplay.from_model(m, head(), target=2), ["target 2", "0 to 1"]),
        (lambda m, tmp: GradCamDisplay.from_model(m, head(), method="cam"), ["'cam'", "hirescam"]),
        (lambda m, tmp: GradCamDisplay.from_model(m, head(), intensity="robust"), ["'robust'", "zscore"]),
        (lambda m, tmp: GradCamDisplay.from_model(nn.Sequential(nn.Conv3d(1, 1, 3), nn.Flatten(), nn.Linear(8, 1)),
                                                  head()), ["fails on a volume of shape [24, 28, 24]"]),
        (lambda m, tmp: GradCamDisplay.from_maps(head(), np.zeros((12, 14, 12))), ["[12, 14, 12]", "upsample"]),
        (lambda m, tmp: GroupDifferenceDisplay.from_arrays("ad.nii.gz", [head()]), ["several volumes"]),
        (lambda m, tmp: GroupDifferenceDisplay.from_arrays([head()], []), ["'CN' has no volumes"]),
        (lambda m, tmp: GroupDifferenceDisplay.from_arrays([head()], [head()[:20]]), ["[20, 28, 24]", "one grid"]),
    ],
)
def test_user_mistakes_are_one_line_errors(tmp_path, model, call, words):
    with pytest.raises(HeimerError) as excinfo:
        call(model, tmp_path)
    message = one_line(excinfo)
    for word in words:
        assert word in message


@pytest.mark.slow  # a fresh interpreter: about 12 s
def test_nothing_is_written_to_mlflow(tmp_path):
    """The whole notebook flow in a fresh interpreter: MLflow is never imported, nothing lands in the folder."""
    script = textwrap.dedent("""
        import sys
        import numpy as np, torch
        from heimer_mlflow import FeatureMapDisplay, GradCamDisplay, GroupDifferenceDisplay
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(2, 1))
        volume = np.random.default_rng(0).normal(size=(12, 14, 12)).astype(np.float32)
        GradCamDisplay.from_model(model, volume).plot()
        FeatureMapDisplay.from_model(model, volume).plot()
        GroupDifferenceDisplay.from_arrays([volume, volume * 2], [volume + 1, volume]).plot()
        assert "mlflow" not in sys.modules, "mlflow was imported"
    """)
    repository = str(Path(__file__).resolve().parents[1])
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["PYTHONPATH"] = os.pathsep.join([repository, env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True, timeout=300)
    assert list(tmp_path.iterdir()) == []
