"""A bounded case gallery: the k most confident cases of each outcome (TP, TN, FP, FN)."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from heimer_mlflow.engine.stats import OUTCOMES


@dataclass
class GalleryCase:
    subject_id: str
    index: int  # row in the manifest
    label: int
    prob: float  # of the positive class
    outcome: str  # TP, TN, FP or FN
    confidence: float  # prob if predicted positive, else 1 - prob
    image: np.ndarray  # [C, D, H, W] float32, as the model saw it
    primary_cam: np.ndarray | None  # [D, H, W] float32, the raw primary map (normalise for display only); the
    # engine fills it when the pass ends, from layer_cams, so that only the kept cases are upsampled
    affine: np.ndarray  # [4, 4] float64
    # every method's raw map (engine.gradcam.CAM_METHODS), the primary one included: [d, h, w] float32
    # on the target layer's grid, and on the input grid once the engine fills ``primary_cam``
    layer_cams: dict[str, np.ndarray] = field(default_factory=dict)
    cams: dict[str, np.ndarray] = field(default_factory=dict)


def outcome_of(is_positive: bool, predicted_positive: bool) -> str:
    if predicted_positive:
        return "TP" if is_positive else "FP"
    return "FN" if is_positive else "TN"


class CaseGallery:
    """Keeps at most k cases per outcome, most confident first; the lower cohort index wins ties,
    so the kept cases do not depend on the order subjects arrive in (or on how they are sharded).

    A case is whatever ``make_case`` returns: the engine keeps GalleryCases, ``distributed``
    merges small stand-ins for them."""

    def __init__(self, k: int):
        self.k = k
        self._heaps: dict[str, list] = {outcome: [] for outcome in OUTCOMES}

    def offer(self, outcome: str, confidence: float, index: int, make_case: Callable[[], GalleryCase]) -> None:
        """Consider subject ``index`` (its cohort row); ``make_case`` (which copies its volumes)
        runs only if it is kept."""
        heap = self._heaps[outcome]
        rank = (confidence, -index)
        if len(heap) < self.k:
            heapq.heappush(heap, (*rank, make_case()))
        elif self.k and rank > heap[0][:2]:
            heapq.heapreplace(heap, (*rank, make_case()))

    def merge(self, other: CaseGallery) -> CaseGallery:
        """Add another shard's cases (of other subjects); returns self. Cases are ranked by the
        confidence and cohort index they were offered with, whatever they are."""
        for outcome, heap in other._heaps.items():
            for confidence, negative_index, case in heap:
                self.offer(outcome, confidence, -negative_index, lambda case=case: case)
        return self

    def cases(self) -> dict[str, list[GalleryCase]]:
        return {outcome: [case for *_, case in sorted(heap, reverse=True)] for outcome, heap in self._heaps.items()}
