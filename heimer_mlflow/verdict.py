"""The plausibility verdict: ``pass`` or ``review``, with the reason, from three checks of the
primary map against limits. Numbers in, the verdict out, torch-free: the evaluation decides with
``judge``, records the result with its limits and every check (``evaluation.json`` ``verdict``),
and the report shows what was recorded, so a re-render shows what was decided then.

The checks (on the means over the subjects the model calls AD, see ``Evaluation.plausibility``):

- ``outside_brain``: the map's share outside the brain may exceed by at most
  ``max_outside_brain_excess`` what a map spread evenly over the brain shows at the target
  layer's resolution (``cam_outside_brain_floor``: a coarse map cannot stop at the brain's edge);
  no share at all (no subject could be explained) fails it;
- ``region_gain``: with an atlas, some region must draw more of the map than
  ``min_region_gain`` times its share of the brain's volume; without one it is not assessed;
- ``sanity``: the maps of a randomised-weights copy of the model may correlate with the trained
  model's by at most ``max_sanity_spearman`` (Adebayo et al. 2018); not assessed when not run.

Two more rest on what changes the score (the counterfactual tests, :mod:`heimer_mlflow.interventions`;
assessed in evaluations since schema_version 2, not assessed when the tests did not run):

- ``shortcut_confirmed``: replacing everything outside the brain by the controls' mean input
  may drop the mean P(AD) by less than ``max_cf_drop_outside_brain``; a larger drop means the
  score depends on what lies outside the brain;
- ``map_faithful``: replacing the map's most relevant voxels (MoRF) must drop P(AD) by more than
  ``min_cf_morf_over_random`` beyond a size-matched random blob in the brain; else the map does
  not point at what the score uses.

The region check gains a causal line in the reason: the region whose replacement drops P(AD) most.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from .i18n import _
from .meta import CAM_NAMES, CONFIDENCE_PERCENT
from .scalars import finite_float

PASS, REVIEW = "pass", "review"
CAUSAL_WORDING_MIN_DROP = 0.05  # words only, not a limit: below it the causal line says no region moves the score much


@dataclass(frozen=True)
class Limits:
    """The limits the checks hold the numbers to."""

    max_outside_brain_excess: float = 0.10  # share outside the brain above the resolution floor
    min_region_gain: float = 1.0  # some atlas region must draw more than this (1 = its volume share)
    max_sanity_spearman: float = 0.5  # maps of a randomised model should not look like the trained one's
    # counterfactual tests (schema_version 2; None: not applied, as in records from before)
    max_cf_drop_outside_brain: float | None = 0.20  # P(AD) drop when the outside of the brain is replaced
    min_cf_morf_over_random: float | None = 0.02  # MoRF drop must exceed a random blob's by more than this

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


DEFAULT_LIMITS = Limits()  # what an evaluation applies today
# What every evaluation applied before evaluation.json recorded its limits (records without a
# schema_version): such a record is judged by these, never by whatever the defaults are now.
LIMITS_BEFORE_RECORDING = Limits(max_outside_brain_excess=0.10, min_region_gain=1.0, max_sanity_spearman=0.5,
                                 max_cf_drop_outside_brain=None, min_cf_morf_over_random=None)


@dataclass(frozen=True)
class Check:
    """One check as applied: the number measured, the limit it was held to, and whether it
    passed (None: not assessed, e.g. no atlas for the region gain)."""

    name: str  # outside_brain | region_gain | sanity | shortcut_confirmed | map_faithful
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
                "checks": [c.to_dict() for c in self.checks]}


def outside_brain_limit(floor: float | None, limits: Limits | None = None) -> float:
    """The largest mean outside-brain share that passes: the resolution floor (0 if unknown) +
    the allowed excess."""
    limits = DEFAULT_LIMITS if limits is None else limits
    return (finite_float(floor) or 0.0) + limits.max_outside_brain_excess


def judge(plausibility: Mapping[str, float], region_names: Sequence[str], method: str = "hirescam",
          limits: Limits | None = None, counterfactual=None) -> Verdict:
    """The verdict on the primary map (``method``) from the plausibility numbers of
    ``Evaluation.plausibility`` (``cam_outside_brain_fraction``, ``cam_outside_brain_floor``,
    ``cam_roi_gain_<region>``, ``sanity_spearman_mean``), under ``limits`` (default: today's).
    With ``counterfactual`` (an ``interventions.CounterfactualSummary``, computed or not) the
    counterfactual checks join; without it (a record from before them) they are left out."""
    limits = DEFAULT_LIMITS if limits is None else limits
    name = CAM_NAMES.get(method, method)
    reasons = []
    outside = finite_float(plausibility.get("cam_outside_brain_fraction"))
    floor = finite_float(plausibility.get("cam_outside_brain_floor"))
    excess = limits.max_outside_brain_excess
    limit = outside_brain_limit(floor, limits)
    if outside is None:
        reasons.append(_("no subject could be explained"))
    elif outside > limit:
        if finite_float(floor) is not None:
            reasons.append(_("{share} of the {map} lies outside the brain (limit {limit}: {floor} the layer's "
                             "resolution "
                             "allows + {excess}): the model may use a shortcut").format(
                share=f"{outside:.0%}", map=name, limit=f"{limit:.0%}", floor=f"{limit - excess:.0%}",
                excess=f"{excess:.0%}"))
        else:
            reasons.append(_("{share} of the {map} lies outside the brain (limit {limit}): the model may use a "
                             "shortcut").format(share=f"{outside:.0%}", map=name, limit=f"{limit:.0%}"))
    gains = {r: float(plausibility[f"cam_roi_gain_{r}"]) for r in region_names if f"cam_roi_gain_{r}" in plausibility}
    top_gain = max(gains.values()) if gains else None
    if top_gain is not None and top_gain <= limits.min_region_gain:
        reasons.append(_("no atlas region draws more of the {map} than its share of the brain (every gain <= {limit})")
                       .format(map=name, limit=f"{limits.min_region_gain:g}"))
    sanity = finite_float(plausibility.get("sanity_spearman_mean"))
    if sanity is not None and sanity > limits.max_sanity_spearman:
        reasons.append(_("maps of a randomised-weights model correlate with the trained model's (Spearman {rho} > "
                         "{limit}): the maps may not reflect what the model learned").format(
            rho=f"{sanity:.2f}", limit=limits.max_sanity_spearman))
    low_gain, high_sanity = limits.min_region_gain, limits.max_sanity_spearman
    checks = (
        Check("outside_brain", outside, limit, outside is not None and outside <= limit),
        Check("region_gain", top_gain, low_gain, None if top_gain is None else top_gain > low_gain),
        Check("sanity", sanity, high_sanity, None if sanity is None else sanity <= high_sanity),
    )
    causal = ""
    if counterfactual is not None:
        cf_checks, cf_reasons, causal = _counterfactual_checks(counterfactual, name, limits)
        checks += cf_checks
        reasons = cf_reasons + reasons  # what changes the score first: it is the stronger evidence
    if reasons:
        return Verdict(REVIEW, "; ".join(reasons) + causal, method, limits, checks)
    best = max(gains, key=gains.get) if gains else None
    where = "; " + _("most attention in {region} (gain {gain})").format(
        region=best, gain=f"{gains[best]:.1f}") if best else ""
    said = _("{share} of the {map} lies outside the brain").format(share=f"{outside:.0%}", map=name)
    return Verdict(PASS, f"{said}{where}{causal}", method, limits, checks)


def _counterfactual_checks(cf, name: str, limits: Limits) -> tuple[tuple[Check, ...], list[str], str]:
    """(the two checks, the reasons for review, the causal line) of the counterfactual tests."""
    high_outside, margin = limits.max_cf_drop_outside_brain, limits.min_cf_morf_over_random
    outside = cf.estimate("cf_drop_outside_brain") if cf.computed else None
    morf, random = (cf.value("cf_drop_map_morf"), cf.value("cf_drop_random")) if cf.computed else (None, None)
    excess = None if morf is None or random is None else morf - random
    checks = (
        Check("shortcut_confirmed", None if outside is None else outside.value, high_outside,
              None if outside is None or high_outside is None else outside.value < high_outside),
        Check("map_faithful", excess, margin, None if excess is None or margin is None else excess > margin),
    )
    reasons = []
    before = _first(cf.curves.get("morf", {}).get("prob")) if cf.computed else None
    if checks[0].passed is False:
        after = (" " + _("from {before} to {after}").format(
            before=f"{before:.2f}", after=f"{before - outside.value:.2f}")
                 if before is not None else "")
        reasons.append(_("replacing what lies outside the brain with the {negative} subjects' average lowers the mean "
                         "P({positive}){after} (drop {drop}{interval} over {n} subjects called {positive}; limit {limit}): "
                         "the model uses a shortcut").format(
            negative=cf.negative_class, positive=cf.positive_class, after=after, drop=f"{outside.value:.2f}",
            interval=_interval(outside), n=cf.n_subjects, limit=f"{high_outside:.2f}"))
    if checks[1].passed is False:
        reasons.append(_("replacing the {map}'s most relevant voxels drops P({positive}) by {morf}, no more than a "
                         "random "
                         "blob of the same size in the brain ({random}; needs {margin} more): the {map} does not point "
                         "at what the score uses").format(map=name, positive=cf.positive_class, morf=f"{morf:.2f}",
                                                          random=f"{random:.2f}", margin=f"{margin:.2f}"))
    largest = cf.largest_region() if cf.computed else None
    causal = ""
    if largest is not None:
        region, drop = largest
        causal = "; " + (_("replacing {region} drops P({positive}) most of the regions ({drop}{interval})")
                         if drop.value >= CAUSAL_WORDING_MIN_DROP else
                         _("replacing any one atlas region changes P({positive}) little (largest drop: {region}, "
                           "{drop}{interval})")).format(region=region, positive=cf.positive_class,
                                                        drop=f"{drop.value:.2f}", interval=_interval(drop))
    return checks, reasons, causal


def _interval(e) -> str:
    if e.lower is None or e.upper is None:
        return ""
    return ", " + _("{level}% CI {lower} to {upper}").format(level=CONFIDENCE_PERCENT, lower=f"{e.lower:.2f}",
                                                            upper=f"{e.upper:.2f}")


def _first(values):
    return values[0] if values and values[0] is not None else None


def plausibility_verdict(plausibility: Mapping[str, float], region_names: Sequence[str],
                         method: str = "hirescam") -> tuple[str, str]:
    """``(result, reason)`` of ``judge`` under today's limits."""
    verdict = judge(plausibility, region_names, method)
    return verdict.result, verdict.reason
