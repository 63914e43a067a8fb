"""A bounded case gallery: the k most confident cases of each outcome (TP, TN, FP, FN)."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
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
    cam: np.ndarray  # [D, H, W] float32, raw Grad-CAM (normalise for display only)
    affine: np.ndarray  # [4, 4] float64


def outcome_of(is_positive: bool, predicted_positive: bool) -> str:
    if predicted_positive:
        return "TP" if is_positive else "FP"
    return "FN" if is_positive else "TN"


class CaseGallery:
    """Keeps at most k cases per outcome, most confident first; earlier subjects win ties."""

    def __init__(self, k: int):
        self.k = k
        self._heaps: dict[str, list] = {outcome: [] for outcome in OUTCOMES}
        self._arrival = itertools.count()

    def offer(self, outcome: str, confidence: float, make_case: Callable[[], GalleryCase]) -> None:
        """Consider a subject; ``make_case`` (which copies its volumes) runs only if it is kept."""
        heap = self._heaps[outcome]
        rank = (confidence, -next(self._arrival))
        if len(heap) < self.k:
            heapq.heappush(heap, (*rank, make_case()))
        elif self.k and rank > heap[0][:2]:
            heapq.heapreplace(heap, (*rank, make_case()))

    def merge(self, other: CaseGallery) -> CaseGallery:
        """Add another shard's cases; returns self."""
        for outcome, heap in other._heaps.items():
            for confidence, _, case in heap:
                self.offer(outcome, confidence, lambda case=case: case)
        return self

    def cases(self) -> dict[str, list[GalleryCase]]:
        return {outcome: [case for *_, case in sorted(heap, reverse=True)] for outcome, heap in self._heaps.items()}
