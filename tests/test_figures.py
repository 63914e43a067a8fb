"""Figures: every plot renders from small hand-built inputs and shows them (read back from its
Axes: cell texts, curve points, the planes drawn), deterministically, orientation-correct."""

from __future__ import annotations

import dataclasses
import io
import re
import types
from unittest import mock

import matplotlib.image
import matplotlib.text
import numpy as np
import pytest
from matplotlib.figure import Figure

from heimer_mlflow import figures as F
from heimer_mlflow.engine.gallery import GalleryCase
from heimer_mlflow.engine.result import EngineResult, SanityResult
from heimer_mlflow.engine.stats import GroupMaps
from heimer_mlflow.figures.style import HEAT_CMAP
from heimer_mlflow.metrics import compute_metrics

from .helpers import REPO
from .helpers.figures import assert_views_cross_at_the_peak, drawn_planes, slices_at, slices_through_peak

SHAPE = (12, 14, 10)
RAS_AFFINE = np.array([[2.0, 0, 0, -12], [0, 2.0, 0, -14], [0, 0, 2.0, -10], [0, 0, 0, 1]])


def _png_pixels(fig, path):
    F.save_figure(fig, path, dpi=40)
    return matplotlib.image.imread(path)


def _assert_not_blank(fig, path):
    pixels = _png_pixels(fig if isinstance(fig, Figure) else fig.figure, path)
    assert pixels.ndim == 3 and pixels.var() > 0


def _volume(shape=SHAPE, seed=0):
    """An asymmetric test volume: a smooth blob off-centre plus noise (so orientation errors show)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    blob = np.exp(-sum((g - c) ** 2 for g, c in zip(grid, (3, 9, 6))) / 6.0)
    return (blob + 0.1 * rng.random(shape)).astype(np.float32)


@pytest.fixture(scope="module")
def report():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(15, int), np.ones(15, int)]
    score = np.clip(0.35 + 0.3 * y + 0.2 * rng.standard_normal(30), 0, 1)
    return compute_metrics(y, score, n_bootstrap=50)


@pytest.fixture(scope="module")
def engine_result():
    rng = np.random.default_rng(2)
    image, cam = _volume(), _volume(seed=3) ** 2
    n = 10
    labels = np.r_[np.zeros(5, int), np.ones(5, int)]

    def case(outcome, i):
        return GalleryCase(f"sub-{outcome}{i}", i, int(outcome in ("TP", "FN")), 0.8, outcome, 0.8, image[None],
                           cam * (i + 1), RAS_AFFINE)  # fmt: skip

    feat = rng.random((6, 3, 4, 3)).astype(np.float32)
    maps = {
        "input": GroupMaps({"CN": 5, "AD": 5}, {"CN": image[None], "AD": 0.9 * image[None]}, -0.1 * image[None],
                           rng.standard_normal((1, *SHAPE)).astype(np.float32)),
        "cam": GroupMaps({"CN": 5, "AD": 5}, {"CN": 0.5 * cam, "AD": cam}, 0.5 * cam, 3 * cam),
        "features/body.2": GroupMaps({"CN": 5, "AD": 5}, {"CN": feat, "AD": 1.2 * feat}, 0.2 * feat - 0.05, feat),
    }  # fmt: skip
    subjects = {
        "subject_id": np.array([f"s{i}" for i in range(n)], dtype=object), "label": labels,
        "prob": np.linspace(0.1, 0.9, n), "pred": (np.linspace(0.1, 0.9, n) >= 0.5).astype(int),
        "cam_outside_brain_fraction": rng.random(n) * 0.3, "cam_roi_gain_hippocampus": rng.random(n) * 3, "cam_roi_gain_ventricles": rng.random(n),
    }  # fmt: skip
    return EngineResult(
        subjects=subjects, maps=maps,
        feature_ranking={"body.2": {"channel": np.array([3, 1, 0, 2, 5, 4]), "mean_abs_t": np.linspace(3, 1, 6)}},
        gallery={"TP": [case("TP", 0), case("TP", 1)], "TN": [case("TN", 0)], "FP": [], "FN": [case("FN", 0)]},
        sanity=SanityResult(["s0", "s1", "s2"], np.array([0.1, -0.05, 0.2]), 0.0833),
        stats=types.SimpleNamespace(positive_index=1, class_names=["CN", "AD"]),
        target_layer="body.2", feature_layers=["body.2"], region_names=["hippocampus", "ventricles"],
    )  # fmt: skip


HISTORY = {
    "train_loss": [(0, 0.9), (1, 0.6), (2, 0.4)], "val_loss": [(0, 1.0), (1, 0.8), (2, 0.7)],
    "train_accuracy": [0.5, 0.7, 0.9], "val_accuracy": [0.5, 0.6, 0.7],
}  # fmt: skip


# -- every figure renders -------------------------------------------------------------------------


def test_performance_figures_show_the_reports_numbers(tmp_path, report):
    """Each performance figure draws what the report holds: the confusion matrix's cells are its
    counts and row shares, the ROC runs from (0, 0) to (1, 1) through the report's points, the
    histogram holds every subject in its class, calibration and decision curves are the report's."""
    y, score = np.r_[np.zeros(15, int), np.ones(15, int)], np.linspace(0, 1, 30)
    figures = F.plot_performance_from_report(report, y, score)
    assert set(figures) == {"roc", "confusion_matrix", "score_histogram", "calibration", "decision_curve"}

    cells = report.overall.confusion.to_dict()
    matrix = figures["confusion_matrix"].axes[0]
    counts = np.array([[cells["tn"], cells["fp"]], [cells["fn"], cells["tp"]]])
    shares = counts / counts.sum(axis=1, keepdims=True)
    assert [t.get_text() for t in matrix.texts] == [f"{n}\n{100 * share:.0f}%" for n, share in
                                                    zip(counts.ravel(), shares.ravel())]  # fmt: skip
    np.testing.assert_allclose(matrix.images[0].get_array(), shares)
    assert [t.get_text() for t in matrix.get_xticklabels()] == ["CN", "AD"]

    roc = figures["roc"].axes[0].lines[0].get_xydata()
    assert tuple(roc[0]) == (0.0, 0.0) and tuple(roc[-1]) == (1.0, 1.0)
    np.testing.assert_allclose(roc, np.c_[report.curves.roc.fpr, report.curves.roc.tpr])
    sens, spec = (report.overall.estimates[k].value for k in ("sensitivity", "specificity"))
    point = [line for line in figures["roc"].axes[0].lines if line.get_marker() == "o"][0]
    np.testing.assert_allclose(point.get_xydata()[0], (1 - spec, sens))

    histogram = figures["score_histogram"].axes[0]
    edges = np.linspace(0, 1, 21)
    heights = np.array([bar.get_height() for bar in histogram.patches]).reshape(2, 20)  # CN's bars, then AD's
    np.testing.assert_array_equal(heights[0], np.histogram(score[y == 0], edges)[0])
    np.testing.assert_array_equal(heights[1], np.histogram(score[y == 1], edges)[0])

    reliability = report.curves.reliability
    curve = figures["calibration"].axes[0].lines[1].get_xydata()
    np.testing.assert_allclose(curve, np.c_[reliability.mean_predicted, reliability.observed_fraction])
    assert sum(bar.get_height() for bar in figures["calibration"].axes[1].patches) == len(y)

    decision = report.curves.decision
    model, treat_all = figures["decision_curve"].axes[0].lines[:2]
    np.testing.assert_allclose(model.get_xydata(), np.c_[decision.thresholds, decision.net_benefit_model])
    np.testing.assert_allclose(treat_all.get_ydata(), decision.net_benefit_treat_all)

    history = F.plot_training_curves(HISTORY)
    loss, accuracy = history.axes
    assert sorted(tuple(line.get_ydata()) for line in loss.lines) == [(0.9, 0.6, 0.4), (1.0, 0.8, 0.7)]
    assert sorted(tuple(line.get_ydata()) for line in accuracy.lines) == [(0.5, 0.6, 0.7), (0.5, 0.7, 0.9)]
    for name, fig in {**figures, "history": history}.items():
        F.save_figure(fig, tmp_path / f"{name}.png", dpi=40)  # and each one saves


def test_brain_figures_render(tmp_path, engine_result):
    maps, feats = engine_result.maps, engine_result.maps["features/body.2"]
    order = engine_result.feature_ranking["body.2"]["channel"]
    drawn = {
        "overlay": F.plot_cam_overlay(_volume(), _volume(seed=4), RAS_AFFINE, title="one subject"),
        "gallery": F.plot_cam_gallery(engine_result.gallery["TP"], title="TP"),
        "group": F.plot_group_cam(maps["cam"].mean, maps["cam"].diff, RAS_AFFINE, background=_volume()),
        "group_no_background": F.plot_group_cam(maps["cam"].mean, maps["cam"].diff, RAS_AFFINE),
        "features": F.plot_feature_maps(feats.mean["AD"], feats.mean["CN"], feats.diff, order, affine=RAS_AFFINE,
                                        input_shape=SHAPE),  # fmt: skip
        "channels": F.plot_channel_difference_maps(feats.diff, order, affine=RAS_AFFINE, input_shape=SHAPE),
        "input": F.plot_input_difference(maps["input"].diff, maps["input"].t, RAS_AFFINE),
        "gain": F.plot_region_gain(["a", "b"], np.random.default_rng(0).random((8, 2)) * 2, labels=[0, 1] * 4),
        "sanity": F.plot_sanity([0.1, 0.3, -0.2], subject_ids=["x", "y", "z"]),
        "outside": F.plot_outside_brain([0.1, 0.2, 0.05, 0.6], labels=[0, 1, 0, 1]),
        "outside_unlabelled": F.plot_outside_brain([0.1, 0.2, 0.05, 0.6]),
    }
    for name, fig in drawn.items():
        _assert_not_blank(fig, tmp_path / f"{name}.png")


def test_an_overlay_shows_the_map_where_the_map_is(engine_result):
    """The overlay's map, in each view, is the subject's map cut through its peak (as a share of the
    maximum): its brightest drawn voxel is where the map's peak is, over the subject's anatomy."""
    image, cam = _volume(), _volume(seed=4)
    cam[2, 11, 7] = 5.0  # a unique peak, off-centre
    fig = F.plot_cam_overlay(image, cam, RAS_AFFINE, title="one subject")
    assert_views_cross_at_the_peak(fig.axes[0], cam, RAS_AFFINE, HEAT_CMAP)
    texts = _texts(fig)
    peak_mm = RAS_AFFINE @ [2, 11, 7, 1]
    for axis, value in zip("xyz", peak_mm):
        assert f"{axis} = {value:.0f} mm" in texts
    anatomy = drawn_planes(fig.axes[0], "gray")
    np.testing.assert_allclose(anatomy[0], image[:, :, 7].T)  # the axial view's anatomy: z through the peak
    case = engine_result.gallery["TP"][1]
    gallery = F.plot_cam_gallery([case], title="TP")
    assert_views_cross_at_the_peak(gallery.axes[0], case.primary_cam, case.affine, HEAT_CMAP)
    assert f"{case.subject_id}: TP" in _texts(gallery)


def test_group_maps_show_each_groups_mean_and_their_difference(engine_result):
    """The group CAM figure: the AD row is AD's mean map through its peak (a share of the highest
    group mean), and the CN row and the difference row are CN's mean and AD - CN on that same scale,
    cut through the same point."""
    maps = engine_result.maps["cam"]
    fig = F.plot_group_cam(maps.mean, maps.diff, RAS_AFFINE, background=_volume())
    rows = [ax for ax in fig.axes if len(ax.images) == 6]  # the views; colour bars hold one image each
    assert len(rows) == 3
    cn_row, ad_row, difference_row = rows
    assert_views_cross_at_the_peak(ad_row, maps.mean["AD"], RAS_AFFINE, HEAT_CMAP)
    peak, _ = slices_through_peak(maps.mean["AD"], RAS_AFFINE)
    high = float(np.nanmax(maps.mean["AD"]))  # AD's mean is the higher one here
    for row, volume, cmap in ((cn_row, maps.mean["CN"], HEAT_CMAP), (difference_row, maps.diff, "RdBu_r")):
        expected = slices_at(volume, RAS_AFFINE, peak)
        for name, plane in zip(("axial", "coronal", "sagittal"), drawn_planes(row, cmap)):
            shown = np.isfinite(plane)
            assert shown.any(), name
            np.testing.assert_allclose(plane[shown], expected[name][shown] / high, rtol=1e-5, err_msg=name)


def test_check_figures_show_the_values_given():
    """The outside-brain shares and the sanity check draw each subject's value, in its class."""
    shares, labels = np.array([0.1, 0.2, 0.05, 0.6, 0.62]), np.array([0, 1, 0, 1, 1])
    outside = F.plot_outside_brain(shares, labels=labels)
    heights = np.array([bar.get_height() for bar in outside.patches]).reshape(2, 20)  # CN's bars, then AD's
    edges = np.linspace(0, 1, 21)
    for row, label in enumerate((0, 1)):
        np.testing.assert_array_equal(heights[row], np.histogram(shares[labels == label], edges)[0])
    sanity = F.plot_sanity([0.1, 0.3, -0.2], subject_ids=["x", "y", "z"])
    assert [bar.get_height() for bar in sanity.patches] == pytest.approx([0.1, 0.3, -0.2])
    assert [t.get_text() for t in sanity.get_xticklabels()] == ["x", "y", "z"]
    assert "mean rank correlation 0.07 over 3 subjects" in sanity.get_title()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, report, engine_result):
    out = tmp_path_factory.mktemp("figures") / "out"
    return out, F.render_all(report, engine_result, HISTORY, out, dpi=40)


def test_render_all_writes_every_available_figure(rendered):
    out, paths = rendered
    expected = {
        "training_curves", "roc", "confusion_matrix", "score_histogram", "calibration", "decision_curve",
        "gallery_TP", "gallery_TN", "gallery_FN", "group_cam", "feature_maps", "feature_channel_differences",
        "input_difference", "cam_outside_brain", "region_gain", "sanity",
    }  # fmt: skip
    assert set(paths) == expected  # no FP case in the gallery: no FP figure
    for name, path in paths.items():
        assert path == out / f"{name}.png"
        assert matplotlib.image.imread(path).var() > 0


def test_subgroup_forest_plot(tmp_path):
    import pandas as pd

    rng = np.random.default_rng(4)
    y = np.r_[np.zeros(12, int), np.ones(12, int)]
    covariates = pd.DataFrame({"site": ["A", "B", "C"] * 8, "sex": ["F"] * 23 + [None]})
    report = compute_metrics(y, np.clip(0.3 + 0.4 * y + 0.2 * rng.standard_normal(24), 0, 1),
                             covariates=covariates, n_bootstrap=30)  # fmt: skip
    figures = F.plot_performance_from_report(report)
    assert "subgroups" in figures
    labels = [t.get_text() for t in figures["subgroups"].axes[0].get_yticklabels()]
    assert any(label.startswith("site: A") for label in labels) and any("missing" in label for label in labels)
    _assert_not_blank(figures["subgroups"], tmp_path / "subgroups.png")


def test_render_all_skips_a_failing_figure_unless_strict(tmp_path, report, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(F.performance, "plot_confusion_matrix", broken)
    paths = F.render_all(report, None, None, tmp_path / "lenient", strict=False, dpi=30)
    assert "confusion_matrix" not in paths and "roc" in paths
    with pytest.raises(RuntimeError, match="boom"):
        F.render_all(report, None, None, tmp_path / "strict")


def test_render_all_tolerates_missing_pieces(tmp_path, report):
    assert set(F.render_all(None, None, None, tmp_path / "a", dpi=30)) == {"training_curves"}
    assert "region_gain" not in F.render_all(report, None, {}, tmp_path / "b", dpi=30)


# -- deterministic bytes ----------------------------------------------------------------------------


@pytest.mark.slow
def test_two_renders_are_byte_identical(tmp_path, report, engine_result, rendered):
    _, first = rendered
    second = F.render_all(report, engine_result, HISTORY, tmp_path / "two", dpi=40)
    assert set(first) == set(second)
    for name in first:
        assert first[name].read_bytes() == second[name].read_bytes(), name


# -- text instead of failures -----------------------------------------------------------------------


def _build_figures(report=None, engine_result=None, history=None, **options):
    """Every figure the pieces allow, drawn: ``{name: Figure}`` from ``figure_plan``."""
    return {name: draw() for name, draw in F.figure_plan(report, engine_result, history, **options)}


def _texts(fig):
    return " ".join([t.get_text() for ax in fig.axes for t in ax.texts] + [t.get_text() for t in fig.texts])


@pytest.mark.parametrize("history", [None, {}, {"train_loss": [], "val_loss": []}, {"lr": [0.1, 0.01]}])
def test_empty_history_draws_a_no_history_message(tmp_path, history):
    fig = F.plot_training_curves(history)
    assert len(fig.axes) == 1 and "No training history" in _texts(fig)
    _assert_not_blank(fig, tmp_path / "empty.png")


def test_roc_not_computable_says_why(tmp_path):
    report = compute_metrics(np.ones(6, int), np.linspace(0.2, 0.9, 6), n_bootstrap=20)
    assert report.curves.roc is None
    figures = F.plot_performance_from_report(report)
    text = _texts(figures["roc"])
    assert "not computable" in text and "only one class" in text
    _assert_not_blank(figures["roc"], tmp_path / "roc.png")


def test_t_map_not_computable_says_why():
    t = np.full(SHAPE, np.nan, dtype=np.float32)
    fig = F.plot_input_difference(_volume(), t, RAS_AFFINE)
    assert "not computable" in _texts(fig)


def test_input_difference_cuts_through_the_head_not_a_marker_outside_it(tmp_path):
    """A site marker outside the head carries the largest t (as on the demo's multi-site cohort):
    the slices still cross at the largest |t| inside the head, over the anatomy, and the figure
    says where the larger one is. Without a background, the global peak as before."""
    head = np.zeros(SHAPE, np.float32)
    head[2:10, 2:11, 2:8] = 1.0  # the mean anatomy: a box, zero around it
    t = np.zeros(SHAPE, np.float32)
    t[4, 5, 4] = -3.0  # in the head (voxel -> world: 2 * i - 12 etc.)
    t[11, 13, 9] = 9.0  # the marker, outside it
    fig = F.plot_input_difference(0.1 * t, t, RAS_AFFINE, background=head)
    texts = _texts(fig)
    assert "largest |t| (9.0) is outside the head, at (10, 12, 8) mm" in texts
    for position in ("x = -4 mm", "y = -4 mm", "z = -2 mm"):
        assert position in texts
    _assert_not_blank(fig, tmp_path / "input_difference.png")
    plain = _texts(F.plot_input_difference(0.1 * t, t, RAS_AFFINE))
    assert "outside the head" not in plain and "x = 10 mm" in plain
    inside = t.copy()
    inside[11, 13, 9] = 0.0  # the largest |t| in the head: nothing to say
    assert "outside the head" not in _texts(F.plot_input_difference(0.1 * inside, inside, RAS_AFFINE, background=head))


def test_degenerate_maps_do_not_crash(tmp_path):
    zeros, nans = np.zeros(SHAPE, np.float32), np.full(SHAPE, np.nan, np.float32)
    views = F.ortho_slices(zeros, RAS_AFFINE, peak_of=0)  # no peak: cut through the centre
    assert views["axial"].position_mm == pytest.approx((RAS_AFFINE @ [5.5, 6.5, 4.5, 1])[2], abs=1.0)
    _assert_not_blank(F.plot_cam_overlay(_volume(), zeros, RAS_AFFINE), tmp_path / "flat_cam.png")
    fig = F.plot_group_cam({"AD": _volume()}, nans, RAS_AFFINE)
    assert "not computable" in _texts(fig)
    assert "not computable" in _texts(F.plot_input_difference(nans, nans, RAS_AFFINE))


def test_no_atlas_regions_says_so():
    assert "atlas" in _texts(F.plot_region_gain([], np.zeros((3, 0))).figure)


# -- orientation --------------------------------------------------------------------------------------


def _stored_as(volume, affine, codes):
    """The same anatomy stored in another voxel order: flip/permute the array and fix the affine."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform

    transform = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(codes))
    data = nib.orientations.apply_orientation(volume, transform)
    return data, affine @ inv_ornt_aff(transform, volume.shape)


@pytest.mark.parametrize("codes", [("L", "A", "S"), ("L", "P", "S"), ("P", "I", "R"), ("S", "L", "A")])
def test_overlay_slices_do_not_depend_on_voxel_order(codes):
    image, cam = _volume(), _volume(seed=5)
    cam[2, 11, 7] = 5.0  # a unique peak
    other_image, other_affine = _stored_as(image, RAS_AFFINE, codes)
    other_cam, _ = _stored_as(cam, RAS_AFFINE, codes)
    assert other_image.shape != image.shape or not np.array_equal(other_image, image)
    # the same world point: the affines agree about where each voxel is
    np.testing.assert_allclose(RAS_AFFINE @ [2, 11, 7, 1], other_affine @ [*np.argwhere(other_cam == 5.0)[0], 1])

    reference = F.ortho_slices([image, cam], RAS_AFFINE, peak_of=1)
    flipped = F.ortho_slices([other_image, other_cam], other_affine, peak_of=1)
    for name in F.VIEWS:
        a, b = reference[name], flipped[name]
        for plane_a, plane_b in zip(a.planes, b.planes):
            np.testing.assert_array_equal(plane_a, plane_b)
        np.testing.assert_allclose(a.extent, b.extent)
        assert a.position_mm == pytest.approx(b.position_mm)
        assert a.sides == b.sides
    # slices cross at the CAM peak, in world mm
    peak_mm = RAS_AFFINE @ [2, 11, 7, 1]
    assert reference["sagittal"].position_mm == pytest.approx(peak_mm[0])
    assert reference["coronal"].position_mm == pytest.approx(peak_mm[1])
    assert reference["axial"].position_mm == pytest.approx(peak_mm[2])


def test_neurological_convention_left_is_on_the_left():
    """A bright voxel in the subject's left hemisphere (x < 0) lands in the left half of the
    axial and coronal images; anterior (y > 0) lands in the upper half of the axial image."""
    volume = np.zeros(SHAPE, np.float32)
    volume[1, 12, 5] = 1.0  # x = -10 mm (left), y = +10 mm (anterior)
    las, las_affine = _stored_as(volume, RAS_AFFINE, ("L", "A", "S"))
    for data, affine in ((volume, RAS_AFFINE), (las, las_affine)):
        views = F.ortho_slices(data, affine, peak_of=0)
        axial, coronal = views["axial"], views["coronal"]
        row, col = np.argwhere(axial.planes[0] == 1.0)[0]
        assert col < axial.planes[0].shape[1] / 2 and row > axial.planes[0].shape[0] / 2
        assert axial.sides == ("L", "R", "P", "A") and coronal.sides == ("L", "R", "I", "S")
        assert axial.extent[0] < axial.extent[1]  # x increases to the right
        assert np.argwhere(coronal.planes[0] == 1.0)[0][1] < coronal.planes[0].shape[1] / 2


def test_center_mm_and_feature_affine():
    views = F.ortho_slices(_volume(), RAS_AFFINE, center_mm=(0.0, 2.0, -4.0))
    assert (views["sagittal"].position_mm, views["coronal"].position_mm, views["axial"].position_mm) == (0, 2, -4)
    coarse = F.feature_affine(RAS_AFFINE, SHAPE, (6, 7, 5))
    # the coarse grid spans the same field of view: first/last voxel edges coincide
    np.testing.assert_allclose(coarse @ [-0.5, -0.5, -0.5, 1], RAS_AFFINE @ [-0.5, -0.5, -0.5, 1])
    np.testing.assert_allclose(coarse @ [5.5, 6.5, 4.5, 1], RAS_AFFINE @ [11.5, 13.5, 9.5, 1])


# -- colour scales ------------------------------------------------------------------------------------


def _images(fig, cmap):
    return [image for ax in fig.axes for image in ax.images if image.get_cmap().name.startswith(cmap)]


def test_diverging_maps_use_symmetric_scales(engine_result):
    maps, feats = engine_result.maps, engine_result.maps["features/body.2"]
    order = engine_result.feature_ranking["body.2"]["channel"]
    figures = [
        F.plot_group_cam(maps["cam"].mean, maps["cam"].diff, RAS_AFFINE),
        F.plot_feature_maps(feats.mean["AD"], feats.mean["CN"], feats.diff, order),
        F.plot_channel_difference_maps(feats.diff, order),
        F.plot_input_difference(maps["input"].diff, maps["input"].t, RAS_AFFINE),
    ]
    for fig in figures:
        diverging = _images(fig, "RdBu_r")
        assert diverging
        for image in diverging:
            low, high = image.get_clim()
            assert high > 0 and low == -high
    # the input difference's scale is max |difference| exactly
    fig = figures[-1]
    limits = sorted({_images(fig, "RdBu_r")[i].get_clim()[1] for i in range(len(_images(fig, "RdBu_r")))})
    assert limits[0] == pytest.approx(float(np.abs(maps["input"].diff).max()), rel=1e-6)


def test_no_pyplot_state_is_left_behind(report):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    F.plot_performance_from_report(report)
    F.plot_training_curves(HISTORY)
    assert plt.get_fignums() == before


# -- the primary map's name ----------------------------------------------------------------------------


def _all_texts(fig) -> str:
    fig.draw_without_rendering()
    return " ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))


def test_titles_name_the_primary_map(report, engine_result):
    """Every title and colour-bar label that is about the primary map names the method the
    evaluation used: HiResCAM when it is the primary map, never Grad-CAM."""
    hires = dataclasses.replace(engine_result, cam_method="hirescam")
    figures = _build_figures(report, hires, HISTORY)
    about_the_map = ["gallery_TP", "gallery_TN", "gallery_FN", "group_cam", "cam_outside_brain", "region_gain",
                     "sanity"]  # fmt: skip
    for name in about_the_map:
        text = _all_texts(figures[name])
        assert "HiResCAM" in text and "Grad-CAM" not in text, (name, text[:300])
    gradcam = dataclasses.replace(engine_result, cam_method="gradcam")
    assert "Grad-CAM" in _all_texts(_build_figures(None, gradcam, None)["group_cam"])
    assert F.cam_name(None) == "Grad-CAM" and F.cam_name("hirescam") == "HiResCAM"


# -- printed text size -----------------------------------------------------------------------------------

CSS = REPO / "templates" / "report.css"


def _css_mm(value: str, reference_mm: float) -> float:
    number, unit = re.fullmatch(r"\s*([\d.]+)\s*(mm|cm|in|%)\s*", value).groups()
    return float(number) * {"mm": 1.0, "cm": 10.0, "in": 25.4, "%": reference_mm / 100}[unit]


def _text_width_mm(css: str) -> float:
    """The text width of the report's page: A4 (210 mm) less the @page left and right margins."""
    page = re.search(r"@page\s*\{([^}]*)", css).group(1)
    assert re.search(r"size:\s*A4", page)
    margins = re.search(r"margin:\s*([^;]+);", page).group(1).split()
    right, left = {1: (0, 0), 2: (1, 1), 3: (1, 1), 4: (1, 3)}[len(margins)]
    return 210.0 - _css_mm(margins[right], 210) - _css_mm(margins[left], 210)


def printed_width_in(size: str, fig: Figure, css: str) -> float:
    """How wide the report prints a figure of CSS class ``size`` (``figure.<size> img``: width,
    max-width, max-height as report.css gives them), in inches."""
    text_mm = _text_width_mm(css)
    rule = re.search(rf"figure\.{size} img\s*\{{([^}}]*)\}}", css)
    assert rule, f"report.css has no rule for figure.{size} img"
    props = dict((k.strip(), v.strip()) for k, v in (p.split(":", 1) for p in rule.group(1).split(";") if ":" in p))
    aspect = fig.get_figheight() / fig.get_figwidth()
    natural = fig.get_figwidth() * 25.4
    width = natural if props.get("width", "auto") == "auto" else _css_mm(props["width"], text_mm)
    width = min(width, _css_mm(props.get("max-width", "100%"), text_mm), text_mm)
    if "max-height" in props:
        width = min(width, _css_mm(props["max-height"], text_mm) / aspect)
    return width / 25.4


def _drawn_text_sizes(fig) -> list[tuple[float, str]]:
    """(font size in pt, text) of every text the figure actually draws (visible, non-empty, on
    axes that are shown)."""
    drawn = []
    original = matplotlib.text.Text.draw

    def draw(self, renderer):
        if self.get_visible() and self.get_text().strip():
            drawn.append((float(self.get_fontsize()), self.get_text()))
        return original(self, renderer)

    with mock.patch.object(matplotlib.text.Text, "draw", draw):
        fig.savefig(io.BytesIO(), format="png", dpi=20)
    return drawn


@pytest.mark.slow
def test_no_printed_text_is_smaller_than_6pt(report, engine_result):
    """Every figure the evaluation makes, at the width report.css prints it: its smallest text is
    at least 6 pt on paper (font size x printed width / figure width). Brain figures print at
    the full text width."""
    from heimer_mlflow.report import EXTRA_FIGURE_SIZE, FIGURES

    import pandas as pd

    css = CSS.read_text()
    y = np.r_[np.zeros(15, int), np.ones(15, int)]
    with_groups = compute_metrics(y, np.linspace(0.05, 0.95, 30), n_bootstrap=30,
                                  covariates=pd.DataFrame({"site": ["site-A", "site-B", "site-C"] * 10,
                                                           "age": ["<65", "65-74", "75-84", ">=85", "65-74"] * 6}))
    four = [dataclasses.replace(engine_result.gallery["TP"][0], subject_id=f"sub-TP{i}") for i in range(4)]
    tall = dataclasses.replace(engine_result, cam_method="hirescam", gallery={**engine_result.gallery, "TP": four})
    figures = _build_figures(with_groups, tall, HISTORY)  # a gallery of 4 cases: drawn narrower, to fit a page
    assert {"subgroups", "group_cam", "gallery_TP", "feature_maps", "feature_channel_differences",
            "input_difference"} <= set(figures)  # fmt: skip
    maps = engine_result.maps
    figures["champion_comparison"] = F.plot_champion_comparison(
        maps["cam"].mean["AD"], maps["cam"].mean["CN"], RAS_AFFINE, background=maps["input"].mean["CN"][0])
    failures = []
    for name, fig in figures.items():
        size = FIGURES[name][2] if name in FIGURES else EXTRA_FIGURE_SIZE
        scale = printed_width_in(size, fig, css) / fig.get_figwidth()
        smallest, text = min(_drawn_text_sizes(fig))
        if smallest * scale < F.MIN_PRINTED_FONT_PT - 1e-6:
            failures.append(f"{name} ({size}): {text!r} prints at {smallest * scale:.2f} pt")
    assert not failures, failures
    # brain figures print at the full text width, or, drawn narrower to fit a page (the 4-case
    # gallery; a grid of tall rows), at their own width: at scale 1 either way
    assert figures["gallery_TP"].get_figwidth() < F.BRAIN_FIGURE_WIDTH_IN
    for name in ("group_cam", "gallery_TP", "feature_maps", "feature_channel_differences", "input_difference"):
        assert FIGURES[name][2] == "brain"
        drawn = figures[name].get_figwidth()
        expected = _text_width_mm(css) / 25.4 if drawn >= F.BRAIN_FIGURE_WIDTH_IN - 1e-6 else drawn
        assert printed_width_in("brain", figures[name], css) == pytest.approx(expected, rel=1e-3), name


# -- feature-map differences sit on the anatomy --------------------------------------------------------


def test_feature_differences_are_drawn_over_the_anatomy(engine_result):
    feats, inputs = engine_result.maps["features/body.2"], engine_result.maps["input"]
    order = engine_result.feature_ranking["body.2"]["channel"]
    anatomy = inputs.mean["CN"][0]
    for fig in (F.plot_channel_difference_maps(feats.diff, order, affine=RAS_AFFINE, input_shape=SHAPE,
                                               background=anatomy),
                F.plot_feature_maps(feats.mean["AD"], feats.mean["CN"], feats.diff, order, affine=RAS_AFFINE,
                                    input_shape=SHAPE, background=anatomy)):  # fmt: skip
        for ax in fig.axes:
            diverging = [im for im in ax.images if im.get_cmap().name.startswith("RdBu_r")]
            if not diverging or ax.get_label() == "<colorbar>":
                continue
            grey = [im for im in ax.images if im.get_cmap().name == "gray"]
            assert grey, "a difference map without the anatomy under it"
            # the anatomy is drawn first (underneath), on the input's fine grid, over the same field of view
            assert ax.images.index(grey[0]) < ax.images.index(diverging[0])
            assert grey[0].get_array().shape[0] > diverging[0].get_array().shape[0]
            np.testing.assert_allclose(grey[0].get_extent(), diverging[0].get_extent(), atol=1e-6)
            # small differences are transparent, so the anatomy shows through
            assert np.ma.count_masked(diverging[0].get_array()) > 0
    # the slices of the plan's figures use the cohort's mean input as the anatomy
    plan = dict(F.figure_plan(None, engine_result, None))
    fig = plan["feature_channel_differences"]()
    assert any(im.get_cmap().name == "gray" for ax in fig.axes for im in ax.images)


def test_the_gallery_shows_every_case_the_engine_kept(report, engine_result):
    """The gallery figure shows as many cases per outcome as the engine kept and logged as volumes
    (--gallery-size, default 4), under a name that says what it is (gallery_TP: the primary map)."""
    four = [dataclasses.replace(engine_result.gallery["TP"][0], subject_id=f"sub-TP{i}") for i in range(4)]
    result = dataclasses.replace(engine_result, gallery={**engine_result.gallery, "TP": four}, cam_method="hirescam")
    figures = _build_figures(report, result, HISTORY)
    assert not any(name.startswith("gradcam_") for name in figures)
    text = _all_texts(figures["gallery_TP"])
    assert all(f"sub-TP{i}: TP" in text for i in range(4)), text[:500]
    assert "HiResCAM, most confident true positives" in text
    assert _all_texts(_build_figures(report, result, HISTORY, max_gallery_cases=2)["gallery_TP"]).count(": TP,") == 2
    # four rows fit one printed page: the figure is drawn narrower rather than taller than a page allows
    tall = figures["gallery_TP"]
    assert tall.get_figheight() <= F.MAX_FIGURE_HEIGHT_IN + 1e-6 and tall.get_figwidth() < F.BRAIN_FIGURE_WIDTH_IN


# -- what the feature-map figures show ---------------------------------------------------------------

FEATURE_GRID = (5, 7, 5)  # odd: the grid's centre is a voxel, (2, 3, 2)


def _feature_maps():
    """Group means and their difference on a coarse grid, three channels, each with one planted
    feature in the axial slice through the grid's centre (z index 2): channel 2 fires in AD at
    (1, 5), channel 0 in CN at (3, 1); nothing else stands out."""
    rng = np.random.default_rng(7)
    ad, cn = (0.1 * rng.random((3, *FEATURE_GRID)).astype(np.float32) for _ in range(2))
    ad[2, 1, 5, 2] = 4.0
    cn[0, 3, 1, 2] = 3.0
    return ad, cn, ad - cn


def _tiles(ax, cmap: str) -> list[np.ndarray]:
    return [np.ma.filled(np.ma.asarray(im.get_array(), dtype=float), np.nan)
            for im in ax.images if im.get_cmap().name.startswith(cmap)]  # fmt: skip


def test_feature_maps_show_each_channels_means_and_difference():
    """One column per listed channel, most separating first: the AD row is AD's mean of that
    channel in the axial slice through the grid's centre, the CN row CN's, the difference row
    AD - CN, signed; the means share one scale, the difference has its own symmetric one."""
    ad, cn, diff = _feature_maps()
    fig = F.plot_feature_maps(ad, cn, diff, [2, 0], affine=RAS_AFFINE, input_shape=SHAPE, n_channels=2)
    rows = [ax for ax in fig.axes if len(ax.images) == 2]  # the mosaics; the colour bars draw no image
    assert len(rows) == 3
    ad_row, cn_row, difference_row = rows
    for row, volume, cmap in ((ad_row, ad, "viridis"), (cn_row, cn, "viridis"), (difference_row, diff, "RdBu_r")):
        for channel, tile in zip([2, 0], _tiles(row, cmap)):
            np.testing.assert_allclose(tile, volume[channel][:, :, 2].T, rtol=1e-6)  # rows: y, columns: x
    ad_tile, cn_tile = _tiles(ad_row, "viridis")[0], _tiles(cn_row, "viridis")[1]
    assert np.unravel_index(np.argmax(ad_tile), ad_tile.shape) == (5, 1)  # channel 2 fires in AD at x=1, y=5
    assert np.unravel_index(np.argmax(cn_tile), cn_tile.shape) == (1, 3)  # channel 0 fires in CN at x=3, y=1
    first, second = _tiles(difference_row, "RdBu_r")
    assert first[5, 1] > 3.5 and second[1, 3] < -2.5  # red where AD is higher, blue where CN is
    means = {im.get_clim() for ax in (ad_row, cn_row) for im in ax.images}
    assert len(means) == 1 and means.pop()[1] == pytest.approx(4.0)
    (low, high), = {im.get_clim() for im in difference_row.images}
    shown = np.stack([diff[c][:, :, 2] for c in (2, 0)])
    assert low == -high and high == pytest.approx(float(np.abs(shown).max()))  # +-max |d| of the shown slices
    assert [t.get_text() for t in ad_row.texts if t.get_text().startswith("ch ")] == ["ch 2", "ch 0"]
    texts = " ".join(t.get_text() for t in fig.texts)
    z_mm = (F.feature_affine(RAS_AFFINE, SHAPE, FEATURE_GRID) @ [2, 3, 2, 1])[2]
    assert f"z = {z_mm:.0f} mm" in texts


def test_channel_differences_cross_at_each_channels_largest_difference():
    """One row per channel, in the ranking's order: AD - CN of that channel, signed, in three
    views through its largest |difference| (channel 0's is a trough: drawn blue, negative)."""
    ad, cn, diff = _feature_maps()
    fig = F.plot_channel_difference_maps(diff, [2, 0], affine=RAS_AFFINE, input_shape=SHAPE, n_channels=2)
    rows = [ax for ax in fig.axes if len(ax.images) == 3]
    assert len(rows) == 2
    grid_affine = F.feature_affine(RAS_AFFINE, SHAPE, FEATURE_GRID)
    for ax, channel in zip(rows, [2, 0]):
        assert_views_cross_at_the_peak(ax, diff[channel], grid_affine, "RdBu_r", signed=True)
    assert max(np.nanmax(p) for p in drawn_planes(rows[0], "RdBu_r")) > 3.5  # AD higher: positive
    assert min(np.nanmin(p) for p in drawn_planes(rows[1], "RdBu_r")) < -2.5  # CN higher: negative
    labels = _all_texts(fig)
    assert labels.index("channel 2 (rank 1") < labels.index("channel 0 (rank 2")
