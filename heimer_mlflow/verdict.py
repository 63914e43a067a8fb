"""The plausibility verdict: ``pass`` or ``review``, with the reason, from three checks of the
primary map against limits. Numbers in, the verdict out, torch-free: the evaluation decides with
``judge``, records the result with its limits and every check (``evaluation.json`` ``verdict``),
and the report shows what was recorded, so a re-render shows what was decided then.

The checks (on the means over the subjects the model calls AD, see ``Evaluation.summary``):

- ``outside_brain``: the map's share outside the brain may exceed by at most
  ``max_outside_brain_excess`` what a map spread evenly over the brain shows at the target
  layer's resolution (``cam_outside_brain_floor``: a coarse map cannot stop at the brain's edge);
  no share at all (no subject could be explained) fails it;
- ``region_gain``: with an atlas, some region must draw more of the map than
  ``min_region_gain`` times its share of the brain's volume; without one it is not assessed;
- ``sanity``: the maps of a randomised-weights copy of the model may correlate with the trained
  model's by at most ``max_sanity_spearman`` (Adebayo et al. 2018); not assessed when not run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .meta import CAM_NAMES

PASS, REVIEW = "pass", "review"


@dataclass(frozen=True)
class Limits:
    """The limits the checks hold the numbers to."""

    max_outside_brain_excess: float = 0.10  # share outside the brain above the resolution floor
    min_region_gain: float = 1.0  # some atlas region must draw more than this (1 = its volume share)
    max_sanity_spearman: float = 0.5  # maps of a randomised model should not look like the trained one's

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_LIMITS = Limits()  # what an evaluation applies today
# What every evaluation applied before evaluation.json recorded its limits (records without a
# schema_version): such a record is judged by these, never by whatever the defaults are now.
LIMITS_BEFORE_RECORDING = Limits(max_outside_brain_excess=0.10, min_region_gain=1.0, max_sanity_spearman=0.5)


@dataclass(frozen=True)
class Check:
    """One check as applied: the number measured, the limit it was held to, and whether it
    passed (None: not assessed, e.g. no atlas for the region gain)."""

    name: str  # outside_brain | region_gain | sanity
    value: float | None
    limit: float | None
    passed: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """The verdict as applied: the result, its reason, the map the checks used, the limits and
    each check's result."""

    result: str  # pass | review
    reason: str
    method: str  # the primary map: hirescam | gradcam
    limits: Limits
    checks: tuple[Check, ...]

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict:
        return {"result": self.result, "reason": self.reason, "method": self.method, "limits": self.limits.to_dict(),
                "checks": [c.to_dict() for c in self.checks]}  # fmt: skip


def outside_brain_limit(floor: float | None, limits: Limits | None = None) -> float:
    """The largest mean outside-brain share that passes: the resolution floor (0 if unknown) +
    the allowed excess."""
    limits = DEFAULT_LIMITS if limits is None else limits
    return (floor if _finite(floor) else 0.0) + limits.max_outside_brain_excess


def judge(summary: Mapping[str, float], region_names: Sequence[str], method: str = "hirescam",
          limits: Limits | None = None) -> Verdict:  # fmt: skip
    """The verdict on the primary map (``method``) from the plausibility numbers of
    ``Evaluation.summary`` (``cam_outside_brain_fraction``, ``cam_outside_brain_floor``,
    ``cam_roi_gain_<region>``, ``sanity_spearman_mean``), under ``limits`` (default: today's)."""
    limits = DEFAULT_LIMITS if limits is None else limits
    name = CAM_NAMES.get(method, method)
    reasons = []
    outside, floor = _number(summary.get("cam_outside_brain_fraction")), _number(summary.get("cam_outside_brain_floor"))
    excess = limits.max_outside_brain_excess
    limit = outside_brain_limit(floor, limits)
    if outside is None:
        reasons.append("no subject could be explained")
    elif outside > limit:
        allowance = f": {limit - excess:.0%} the layer's resolution allows + {excess:.0%}" if _finite(floor) else ""
        reasons.append(f"{outside:.0%} of the {name} lies outside the brain (limit {limit:.0%}{allowance}): "
                       "the model may use a shortcut")  # fmt: skip
    gains = {r: float(summary[f"cam_roi_gain_{r}"]) for r in region_names if f"cam_roi_gain_{r}" in summary}
    top_gain = max(gains.values()) if gains else None
    if top_gain is not None and top_gain <= limits.min_region_gain:
        reasons.append(f"no atlas region draws more of the {name} than its share of the brain "
                       f"(every gain <= {limits.min_region_gain:g})")  # fmt: skip
    sanity = _number(summary.get("sanity_spearman_mean"))
    if sanity is not None and sanity > limits.max_sanity_spearman:
        reasons.append(
            f"maps of a randomised-weights model correlate with the trained model's (Spearman {sanity:.2f} > "
            f"{limits.max_sanity_spearman}): the maps may not reflect what the model learned"
        )
    low_gain, high_sanity = limits.min_region_gain, limits.max_sanity_spearman
    checks = (
        Check("outside_brain", outside, limit, outside is not None and outside <= limit),
        Check("region_gain", top_gain, low_gain, None if top_gain is None else top_gain > low_gain),
        Check("sanity", sanity, high_sanity, None if sanity is None else sanity <= high_sanity),
    )
    if reasons:
        return Verdict(REVIEW, "; ".join(reasons), method, limits, checks)
    best = max(gains, key=gains.get) if gains else None
    where = f"; most attention in {best} (gain {gains[best]:.1f})" if best else ""
    return Verdict(PASS, f"{outside:.0%} of the {name} lies outside the brain{where}", method, limits, checks)


def plausibility_verdict(summary: Mapping[str, float], region_names: Sequence[str],
                         method: str = "hirescam") -> tuple[str, str]:  # fmt: skip
    """``(result, reason)`` of ``judge`` under today's limits."""
    verdict = judge(summary, region_names, method)
    return verdict.result, verdict.reason


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _number(value) -> float | None:
    """A plain float (JSON writes no numpy types), None for None."""
    return None if value is None else float(value)
