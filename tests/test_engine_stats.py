"""Streaming group statistics equal a direct numpy computation, and shards (statistics and
case galleries) merge exactly."""

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from heimer_mlflow.engine.gallery import CaseGallery
from heimer_mlflow.engine.stats import OUTCOMES, GroupStats, rank_channels

CLASSES = ["CN", "AD"]
POSITIVE = 1


def cohort(n=23, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    predicted = rng.random(n) < 0.3 + 0.4 * labels  # some of each outcome
    volumes = rng.normal(size=(n, 3, 4, 5)).astype(np.float32) * 2 + 5 + labels[:, None, None, None]
    channels = rng.normal(size=(n, 2, 3, 3, 3)).astype(np.float32)
    channels[:, 1] += 0.8 * labels[:, None, None, None]  # channel 1 separates the classes
    return labels, predicted, volumes, channels


def stream(labels, predicted, volumes, batch_size=4):
    stats = GroupStats(CLASSES, POSITIVE)
    for start in range(0, len(labels), batch_size):
        rows = slice(start, start + batch_size)
        cells = [stats.cell(k, p) for k, p in zip(labels[rows], predicted[rows])]
        stats.update(cells, volume=torch.from_numpy(volumes[rows]))
    return stats


def test_streaming_statistics_equal_numpy():
    labels, predicted, volumes, _ = cohort()
    maps = stream(labels, predicted, volumes).compute("volume")
    members = {
        "CN": labels == 0, "AD": labels == 1,
        "TP": (labels == 1) & predicted, "FN": (labels == 1) & ~predicted,
        "FP": (labels == 0) & predicted, "TN": (labels == 0) & ~predicted,
    }  # fmt: skip
    for group, rows in members.items():
        assert maps.count[group] == rows.sum() > 0
        np.testing.assert_allclose(maps.mean[group], volumes[rows].astype(np.float64).mean(0), rtol=1e-6)
    ad, cn = volumes[labels == 1].astype(np.float64), volumes[labels == 0].astype(np.float64)
    np.testing.assert_allclose(maps.diff, ad.mean(0) - cn.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps.t, scipy_stats.ttest_ind(ad, cn, equal_var=False).statistic, rtol=1e-5)


def test_two_shards_merged_equal_one_pass():
    labels, predicted, volumes, _ = cohort()
    one_pass = stream(labels, predicted, volumes).state_dict()
    first, second = stream(labels[:10], predicted[:10], volumes[:10]), stream(labels[10:], predicted[10:], volumes[10:])
    merged = first.merge(second).state_dict()
    assert merged.keys() == one_pass.keys()
    for key in one_pass:
        torch.testing.assert_close(merged[key], one_pass[key], rtol=1e-14, atol=1e-12)
    assert all(v.dtype == torch.float64 for v in merged.values()), "all-reducible with SUM"
    rebuilt = GroupStats.from_state(merged, CLASSES, POSITIVE).compute("volume")
    np.testing.assert_allclose(rebuilt.t, stream(labels, predicted, volumes).compute("volume").t, rtol=1e-9)


def test_empty_and_singleton_groups():
    labels = np.array([0, 0, 1])
    predicted = np.array([False, False, True])
    volumes = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    maps = stream(labels, predicted, volumes).compute("volume")
    assert maps.count["FP"] == 0 and "FP" not in maps.mean
    np.testing.assert_allclose(maps.diff, volumes[2] - volumes[:2].mean(0))
    assert np.isnan(maps.t).all(), "Welch t is undefined with one AD subject"


def test_rank_channels_puts_the_separating_channel_first():
    labels, predicted, _, channels = cohort(n=40)
    stats = GroupStats(CLASSES, POSITIVE)
    cells = [stats.cell(k, p) for k, p in zip(labels, predicted)]
    stats.update(cells, **{"features/conv": torch.from_numpy(channels),
                           "channel_means/conv": torch.from_numpy(channels.mean(axis=(2, 3, 4)))})  # fmt: skip
    ranking = rank_channels(stats, "conv")
    assert list(ranking["channel"]) == [1, 0]
    assert ranking["mean_abs_t"][0] > ranking["mean_abs_t"][1]
    assert ranking["channel_mean_t"][0] > 3


def test_merge_refuses_other_layouts():
    with pytest.raises(ValueError):
        GroupStats(CLASSES, 1).merge(GroupStats(CLASSES, 0))


def test_merge_refuses_other_shapes_and_changes_nothing():
    """Shards of another grid cannot be added (not even where the sum would broadcast silently);
    the refused merge leaves the state as it was."""
    labels, predicted, volumes, _ = cohort()
    mine = stream(labels, predicted, volumes)
    before = {key: value.clone() for key, value in mine.state.items()}
    for other_grid in (volumes[:, :1, :1, :1], volumes[:, :2]):  # [1, 1, 1] broadcasts into [3, 4, 5]
        other = stream(labels, predicted, np.ascontiguousarray(other_grid))
        with pytest.raises(ValueError, match="volume"):
            mine.merge(other)
        assert mine.state.keys() == before.keys()
        for key, value in before.items():
            torch.testing.assert_close(mine.state[key], value, rtol=0, atol=0)


def test_galleries_of_shards_merge_into_the_gallery_of_the_whole_cohort():
    """Whatever the kept cases are (the engine's GalleryCases, or stand-ins such as the (rank,
    index) pairs distributed merges), ranking uses the confidence and cohort index they were
    offered with; ties go to the lower index however the cohort was split."""
    rng = np.random.default_rng(3)
    confidence = np.round(rng.random(40), 1)  # many exact ties
    outcomes = rng.choice(OUTCOMES, 40)

    def gallery(indices, make):
        kept = CaseGallery(3)
        for i in indices:
            kept.offer(str(outcomes[i]), float(confidence[i]), int(i), lambda i=i: make(i))
        return kept

    whole = gallery(range(40), lambda i: ("whole", i)).cases()
    for shards in ([range(0, 40, 2), range(1, 40, 2)], [range(39, 20, -1), range(0, 21), []]):
        merged = CaseGallery(3)
        for rank, shard in enumerate(shards):
            merged.merge(gallery(shard, lambda i, rank=rank: (rank, i)))
        got = merged.cases()
        assert {o: [i for _, i in cases] for o, cases in got.items()} == \
               {o: [i for _, i in cases] for o, cases in whole.items()}  # fmt: skip
        assert all(i in shards[rank] for cases in got.values() for rank, i in cases)


def test_maps_kept_on_a_coarse_grid_equal_statistics_of_the_upsampled_maps():
    """Grad-CAMs stay on the layer grid (sum + neighbour products); reported on the input grid they
    equal sums over every trilinearly upsampled map, also after merging two shards."""
    import torch.nn.functional as F

    from heimer_mlflow.engine.upsampling import Trilinear

    rng = np.random.default_rng(1)
    labels, predicted, _, _ = cohort(n=23)
    coarse = np.maximum(rng.normal(size=(23, 3, 4, 5)), 0).astype(np.float32) + labels[:, None, None, None]
    grid = (11, 13, 17)  # uneven factors on purpose
    upsampled = F.interpolate(torch.from_numpy(coarse)[:, None], grid, mode="trilinear", align_corners=False)[:, 0]
    assert Trilinear(coarse.shape[1:], grid).coarse

    def kept(rows):
        stats = GroupStats(CLASSES, POSITIVE)
        for start in range(rows.start, rows.stop, 4):
            part = slice(start, min(start + 4, rows.stop))
            cells = [stats.cell(k, p) for k, p in zip(labels[part], predicted[part])]
            stats.update(cells, upsampled={"cam": torch.from_numpy(coarse[part])})
        return stats

    direct = stream(labels, predicted, upsampled.numpy()).compute("volume")
    one_pass = kept(slice(0, 23))
    assert "cam|sumsq" not in one_pass.state and one_pass.state["cam|neighbours"].shape == (4, 27, 3, 4, 5)
    merged = GroupStats.from_state(kept(slice(0, 9)).merge(kept(slice(9, 23))).state_dict(), CLASSES, POSITIVE)
    for stats in (one_pass, merged):
        maps = stats.compute("cam", grid=grid)
        for group in direct.mean:
            np.testing.assert_allclose(maps.mean[group], direct.mean[group], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(maps.diff, direct.diff, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(maps.t, direct.t, rtol=1e-4, atol=1e-5)
    ad, cn = upsampled.numpy()[labels == 1].astype(np.float64), upsampled.numpy()[labels == 0].astype(np.float64)
    np.testing.assert_allclose(one_pass.compute("cam", grid=grid).t, scipy_stats.ttest_ind(ad, cn, equal_var=False).statistic,
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="grid"):
        one_pass.compute("cam")


def test_trilinear_pull_and_square_sums_match_upsampling():
    import torch.nn.functional as F

    from heimer_mlflow.engine.upsampling import Trilinear, neighbour_products

    g = torch.Generator().manual_seed(0)
    for source, target in [((5, 6, 7), (13, 17, 11)), ((4, 4, 4), (4, 9, 3)), ((3, 4, 5), (3, 4, 5))]:
        maps = torch.rand((6, *source), generator=g, dtype=torch.float64)
        volumes = torch.rand((6, *target), generator=g)
        grid = Trilinear(source, target)
        up = F.interpolate(maps[:, None], target, mode="trilinear", align_corners=False)[:, 0]
        np.testing.assert_allclose(grid.up(maps), up, rtol=1e-12)
        pulled = (grid.pull(volumes).double() * maps).sum((1, 2, 3))
        np.testing.assert_allclose(pulled, (volumes.double() * up).sum((1, 2, 3)), rtol=1e-5)
        np.testing.assert_allclose((grid.cell_weights.double() * maps).sum((1, 2, 3)), up.sum((1, 2, 3)), rtol=1e-5)
        squares = grid.square_sums(neighbour_products(maps).sum(0))
        np.testing.assert_allclose(squares, (up * up).sum(0), rtol=1e-12)
