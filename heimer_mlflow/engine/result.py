"""What the engine returns (:class:`EngineResult`, with the sanity check's :class:`SanityResult`),
and the group maps made from the mergeable statistics, for one pass or merged shards alike."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from heimer_mlflow.engine.gallery import GalleryCase
from heimer_mlflow.engine.stats import GroupMaps, GroupStats, rank_channels
from heimer_mlflow.errors import HeimerError
from heimer_mlflow.meta import DEFAULT_CAM


@dataclass
class SanityResult:
    """Adebayo et al. (2018) model-randomisation test: low rank correlation = maps depend on weights."""

    subject_ids: list[str]
    spearman: np.ndarray  # per subject, trained vs randomised-weights primary map (target-layer resolution)
    mean: float
    indices: list[int] = field(default_factory=list)  # cohort rows of subject_ids

    @classmethod
    def of(cls, subject_ids: list[str], indices: list[int], values: list[float]) -> SanityResult | None:
        """The check over these subjects in cohort order; None when there are none."""
        if not values:
            return None
        order = np.argsort(np.asarray(indices), kind="stable")
        spearman_values = np.asarray(values, dtype=np.float64)[order]
        return cls([subject_ids[i] for i in order], spearman_values, float(np.nanmean(spearman_values)),
                   [int(indices[i]) for i in order])


@dataclass
class EngineResult:
    subjects: dict[str, np.ndarray]  # per-subject columns, one row per evaluated subject (see SUBJECT_COLUMNS)
    maps: dict[str, GroupMaps]  # "input", "cam", "features/<layer>": means per group, AD-CN diff, Welch t
    feature_ranking: dict[str, dict[str, np.ndarray]]  # layer -> channels, most separating first
    gallery: dict[str, list[GalleryCase]]  # TP/TN/FP/FN -> most confident first
    sanity: SanityResult | None
    stats: GroupStats  # the raw mergeable state (on CPU) the maps were computed from
    target_layer: str
    feature_layers: list[str]  # target layer first
    region_names: list[str]  # atlas regions, order of the cam_roi_gain_<name> columns
    excluded: list[dict] = field(default_factory=list)  # subject_id, index, reason (unreadable volumes)
    device: str = "cpu"
    amp: str | None = None
    threshold: float = 0.5
    chunk_size: int | None = None  # sub-batch size after out-of-memory halving; None = never halved
    timings: dict[str, float] = field(default_factory=dict)  # seconds, and subjects_per_s
    gallery_k: int = 4  # cases kept per outcome
    world_size: int = 1  # processes whose shards were merged into this result
    cam_method: str = DEFAULT_CAM  # the primary map (CAM_METHODS) behind the "cam" maps, cam_* shares, gallery, sanity
    # cohort row -> the primary map on the target layer's grid, for every subject called positive
    # (kept with keep_positive_maps, for the counterfactual pass; one small map each, e.g. 8 KB)
    positive_maps: dict[int, np.ndarray] = field(default_factory=dict)


SUBJECT_COLUMNS = ("subject_id", "index", "label", "prob", "pred", "loss", "cam_outside_brain_fraction",
                   "cam_outside_brain_floor", "gradcam_outside_brain_fraction", "hirescam_outside_brain_fraction",
                   "cam_method_agreement")
# cam_outside_brain_fraction, cam_outside_brain_floor and cam_roi_gain_<region> are the primary map's;
# <method>_outside_brain_fraction the same share for each method, whichever is primary.
# cam_outside_brain_floor: the outside share of a map spread evenly over the subject's brain,
# as the target layer's grid can draw it (each cell at its share of brain), upsampled the same way:
# what a perfectly brain-confined map shows at this resolution.


class EngineStopped(HeimerError):
    """The pass was stopped from outside (``should_stop``), e.g. because another rank failed."""


def maps_from_stats(stats: GroupStats, layers: list[str]) -> tuple[dict[str, GroupMaps], dict[str, dict]]:
    """Group maps ("input", "cam", "features/<layer>") and per-layer channel rankings of ``stats``,
    empty when no subject was evaluated: the same for one pass and for shards' merged states."""
    if not stats.quantities:
        return {}, {}
    input_grid = tuple(stats.state["input|sum"].shape[2:])  # [cells, channels, D, H, W]
    maps = {name: stats.compute(name, grid=input_grid) for name in ("input", "cam", *(f"features/{p}" for p in layers))}
    return maps, {layer: rank_channels(stats, layer) for layer in layers}
