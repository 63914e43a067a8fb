"""What the counterfactual pass's drops say, torch-free: means with intervals, curves, the largest
effect, and the paired comparison with the champion on the same subjects.

``engine.counterfactual`` measures, per subject, P(AD) before and after each intervention; here
those become the run metrics (exact names, each a mean over the re-scored subjects with a
bootstrap 95% interval clustered by participant when there are sessions):

- ``cf_drop_outside_brain``: everything outside the brain replaced (the shortcut test);
- ``cf_drop_<region>``: each atlas region replaced, one at a time;
- ``cf_drop_map_morf`` / ``cf_drop_map_lerf``: the primary map's most / least relevant voxels
  replaced, the mean over the 2, 5 and 10% steps; ``cf_drop_random``: a size-matched random
  in-brain blob, the same steps; ``cf_faithfulness`` = MoRF - LeRF (per subject, then the mean);
- ``cf_n_subjects``, ``cf_forward_passes``.

A figure that cannot be computed (the test turned off, no control subject, nobody called AD, no
atlas for the regions) is not computable with its reason, like every metric. The report and a
re-render read it back from ``evaluation.json`` (``CounterfactualSummary.from_dict``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .meta import DEFAULT_CLASS_NAMES, DEFAULT_POSITIVE, N_BOOTSTRAP
from .metrics import Estimate, holm, mean_estimates, paired_signed_rank

STEPS = (0.02, 0.05, 0.10)  # shares of the brain's volume replaced by the MoRF, LeRF and random steps
ORDERS = ("morf", "lerf", "random")
OUTSIDE = "outside_brain"
COMPUTED, NOT_COMPUTABLE, OFF = "computed", "not computable", "off"
SUMMARY_METRICS = ("cf_drop_outside_brain", "cf_drop_map_morf", "cf_drop_map_lerf", "cf_drop_random",
                   "cf_faithfulness")


def step_name(order: str, share: float) -> str:
    """``morf_2``, ``lerf_10``, ``random_5``: an order at a share of the brain (in percent)."""
    return f"{order}_{round(share * 100):d}"


def metric_names(region_names: Sequence[str]) -> list[str]:
    """Every cf_* estimate's name for these regions (the counts come beside them)."""
    return [SUMMARY_METRICS[0], *(f"cf_drop_{r}" for r in region_names), *SUMMARY_METRICS[1:]]


def replacement_text(negative: str) -> str:
    from .i18n import _

    return _("the mean input of the cohort's {negative} subjects, as the model sees it (after its intensity "
             "normalisation): an image the model could meet, not zeros").format(negative=negative)


@dataclass
class CounterfactualSummary:
    """The counterfactual tests of one evaluation, as recorded."""

    status: str  # computed | not computable | off
    reason: str | None  # why not computed (status other than computed)
    n_requested: int
    n_subjects: int
    forward_passes: int
    region_names: list[str]
    estimates: dict[str, float | Estimate] = field(default_factory=dict)  # cf_* name -> Estimate
    curves: dict[str, dict[str, list]] = field(default_factory=dict)  # order -> share, prob, lower, upper
    subject_ids: list[str] = field(default_factory=list)
    replacement: str = ""
    positive_class: str = DEFAULT_POSITIVE
    negative_class: str = DEFAULT_CLASS_NAMES[0]
    steps: list[float] = field(default_factory=lambda: list(STEPS))
    seconds: float | None = None
    region_reason: str | None = None  # why there are no region drops (no atlas)
    limits: dict[str, float] = field(default_factory=dict)
    vs_champion: list = field(default_factory=list)  # PairedDrop: this minus the champion, same subjects
    champion_version: str | None = None
    champion_note: str | None = None  # why there is no paired comparison although a champion was found

    @property
    def computed(self) -> bool:
        return self.status == COMPUTED

    def estimate(self, name: str) -> Estimate | None:
        value = self.estimates.get(name)
        return value if isinstance(value, Estimate) else None

    def value(self, name: str) -> float | None:
        e = self.estimate(name)
        return e.value if e is not None else None

    def run_metrics(self) -> dict[str, float]:
        """The cf_* run metrics: every computable estimate with its interval, and the counts."""
        out: dict[str, float] = {"cf_n_subjects": int(self.n_subjects), "cf_forward_passes": int(self.forward_passes)}
        for name, e in self.estimates.items():
            if isinstance(e, Estimate) and e.computable:
                out.update({k: v for k, v in e.flat(name).items() if not k.endswith("_se")})
        return {**out, **paired_metrics(self.vs_champion)}

    def not_computable(self) -> list[tuple[str, str]]:
        """(name, reason) of every cf_* figure without a value."""
        if not self.computed:
            return [(name, self.reason or "not computed") for name in metric_names(self.region_names)]
        out = [(name, e.reason) for name, e in self.estimates.items() if isinstance(e, Estimate) and not e.computable]
        if self.region_reason:
            out.append(("cf_drop_<region>", self.region_reason))
        return out

    def region_drops(self) -> dict[str, Estimate]:
        """Region -> its drop, computable ones only, largest first."""
        drops = {r: self.estimate(f"cf_drop_{r}") for r in self.region_names}
        drops = {r: e for r, e in drops.items() if e is not None and e.computable}
        return dict(sorted(drops.items(), key=lambda item: -item[1].value))

    def largest_region(self) -> tuple[str, Estimate] | None:
        drops = self.region_drops()
        return next(iter(drops.items()), None)

    def largest_effect(self) -> tuple[str, Estimate] | None:
        """(what was replaced, its drop) with the largest drop among outside the brain and regions."""
        candidates = {OUTSIDE: self.estimate("cf_drop_outside_brain"), **self.region_drops()}
        candidates = {k: e for k, e in candidates.items() if e is not None and e.computable}
        if not candidates:
            return None
        best = max(candidates, key=lambda k: candidates[k].value)
        return best, candidates[best]

    def to_dict(self) -> dict:
        return {
            "status": self.status, "reason": self.reason, "n_requested": self.n_requested,
            "n_subjects": self.n_subjects, "forward_passes": self.forward_passes, "region_names": self.region_names,
            "estimates": {k: e.to_dict() for k, e in self.estimates.items() if isinstance(e, Estimate)},
            "curves": self.curves, "subject_ids": self.subject_ids, "replacement": self.replacement,
            "positive_class": self.positive_class, "negative_class": self.negative_class, "steps": self.steps,
            "seconds": self.seconds, "region_reason": self.region_reason, "limits": self.limits,
            "vs_champion": [p.to_dict() for p in self.vs_champion], "champion_version": self.champion_version,
            "champion_note": self.champion_note,
        }

    @classmethod
    def from_dict(cls, data) -> CounterfactualSummary | None:
        """The recorded summary; None when the record has none (an evaluation from before it)."""
        if not isinstance(data, dict):
            return None

        def number(value, default=0):
            return value if isinstance(value, (int, float)) and not isinstance(value, bool) else default

        estimates = {str(k): Estimate.from_dict(v) for k, v in (data.get("estimates") or {}).items()}
        curves = data.get("curves") if isinstance(data.get("curves"), dict) else {}
        return cls(
            status=str(data.get("status") or NOT_COMPUTABLE), reason=data.get("reason"),
            n_requested=int(number(data.get("n_requested"))), n_subjects=int(number(data.get("n_subjects"))),
            forward_passes=int(number(data.get("forward_passes"))),
            region_names=[str(r) for r in data.get("region_names") or []],
            estimates={k: e for k, e in estimates.items() if e is not None}, curves=curves,
            subject_ids=[str(s) for s in data.get("subject_ids") or []], replacement=str(data.get("replacement") or ""),
            positive_class=str(data.get("positive_class") or DEFAULT_POSITIVE),
            negative_class=str(data.get("negative_class") or DEFAULT_CLASS_NAMES[0]),
            steps=[float(s) for s in data.get("steps") or STEPS], seconds=number(data.get("seconds"), None),
            region_reason=data.get("region_reason"), limits=dict(data.get("limits") or {}),
            vs_champion=[p for p in map(PairedDrop.from_dict, data.get("vs_champion") or []) if p is not None],
            champion_version=data.get("champion_version"), champion_note=data.get("champion_note"),
        )


def not_computed(status: str, reason: str, *, n_requested: int, region_names: Sequence[str], negative: str,
                 positive: str) -> CounterfactualSummary:
    """The summary of a pass that did not run (turned off, no control subject, nobody called positive)."""
    return CounterfactualSummary(status, reason, n_requested, 0, 0, list(region_names),
                                 replacement=replacement_text(negative), positive_class=positive,
                                 negative_class=negative)


def per_subject(result) -> dict[str, np.ndarray]:
    """Per subject: the drop of every intervention (``drop_<name>``) and the per-step means
    (``drop_map_morf``, ``drop_map_lerf``, ``drop_random``, ``faithfulness``)."""
    drops = {f"drop_{name}": values for name, values in result.drops.items()}
    for order, column in (("morf", "drop_map_morf"), ("lerf", "drop_map_lerf"), ("random", "drop_random")):
        drops[column] = np.mean([drops[f"drop_{step_name(order, s)}"] for s in STEPS], axis=0)
    drops["faithfulness"] = drops["drop_map_morf"] - drops["drop_map_lerf"]
    return drops


def summarise(result, *, n_requested: int, clusters=None, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0,
              negative: str = DEFAULT_CLASS_NAMES[0], positive: str = DEFAULT_POSITIVE,
              region_reason: str | None = None) -> CounterfactualSummary:
    """Means with bootstrap intervals and the deletion curves of an ``engine.counterfactual``
    result; ``clusters``: each re-scored subject's participant (None: each its own)."""
    columns = per_subject(result)
    names = {"cf_drop_outside_brain": f"drop_{OUTSIDE}", **{f"cf_drop_{r}": f"drop_{r}" for r in result.region_names},
             "cf_drop_map_morf": "drop_map_morf", "cf_drop_map_lerf": "drop_map_lerf", "cf_drop_random": "drop_random",
             "cf_faithfulness": "faithfulness"}
    curve_columns = [("before", result.prob_before)] + [
        (step_name(o, s), result.prob_after[step_name(o, s)]) for o in ORDERS for s in STEPS
    ]
    matrix = np.column_stack([columns[c] for c in names.values()] + [v for _, v in curve_columns])
    estimates = mean_estimates(matrix, n_bootstrap=n_bootstrap, seed=seed, clusters=clusters)
    drop_estimates = dict(zip(names, estimates[: len(names)]))
    at = dict(zip((k for k, _ in curve_columns), estimates[len(names):]))
    curves = {}
    for order in ORDERS:
        points = [at["before"], *(at[step_name(order, s)] for s in STEPS)]
        curves[order] = {"share": [0.0, *STEPS], "prob": [p.value for p in points],
                         "lower": [p.lower for p in points], "upper": [p.upper for p in points]}
    return CounterfactualSummary(
        COMPUTED, None, n_requested, len(result.subject_ids), int(result.forward_passes), list(result.region_names),
        estimates=drop_estimates, curves=curves, subject_ids=list(result.subject_ids),
        replacement=replacement_text(negative), positive_class=positive, negative_class=negative,
        seconds=float(result.seconds), region_reason=region_reason,
    )


def counterfactual_table(result, subjects: pd.DataFrame | None = None) -> pd.DataFrame:
    """counterfactuals.csv: one row per re-scored subject, most confident first: its ids (from
    ``subjects``, the cohort rows' id columns), P(positive) before, every drop, the per-step means
    and the voxels each intervention replaced."""
    table = pd.DataFrame({"subject_id": result.subject_ids, "prob_before": result.prob_before})
    if subjects is not None:
        for position, column in enumerate(subjects.columns, start=1):
            table.insert(position, column, subjects[column].to_numpy())
    for name, values in per_subject(result).items():
        table[name] = values
    table["brain_voxels"] = result.brain_voxels
    for name, values in result.replaced_voxels.items():
        table[f"voxels_{name}"] = values
    return table


# --------------------------------------------------------------------------------------------
# With the champion: paired differences on the same subjects
# --------------------------------------------------------------------------------------------


@dataclass
class PairedDrop:
    """This version's drop minus the champion's, on the subjects both re-scored."""

    name: str  # outside_brain or a region
    n_pairs: int
    this: float | None
    champion: float | None
    diff: Estimate
    p: float | None  # Wilcoxon signed-rank, two-sided
    p_holm: float | None  # regions: Holm-corrected over the regions; outside_brain: as p

    def to_dict(self) -> dict:
        return {"name": self.name, "n_pairs": self.n_pairs, "this": self.this, "champion": self.champion,
                "diff": self.diff.to_dict(), "p": self.p, "p_holm": self.p_holm}

    @classmethod
    def from_dict(cls, data) -> PairedDrop | None:
        if not isinstance(data, dict) or Estimate.from_dict(data.get("diff")) is None:
            return None

        def number(v):
            return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

        return cls(str(data.get("name")), int(number(data.get("n_pairs")) or 0), number(data.get("this")),
                   number(data.get("champion")), Estimate.from_dict(data.get("diff")), number(data.get("p")),
                   number(data.get("p_holm")))


def paired_drops(this: pd.DataFrame, champion: pd.DataFrame, regions: Sequence[str]) -> list[PairedDrop]:
    """Per-subject paired differences of the outside-brain drop and of each region's drop between
    this version's counterfactuals.csv and the champion's, on the subjects in both (by
    ``subject_id``; pairs averaged per participant when ``participant_id`` is there), with
    Wilcoxon's signed-rank test; the regions' p-values Holm-corrected over the regions."""
    merged = this.merge(champion, on="subject_id", suffixes=("", "_champion"))
    clusters = merged["participant_id"].to_numpy() if "participant_id" in merged.columns else None
    out = []
    for name in [OUTSIDE, *regions]:
        column = f"drop_{name}"
        if column not in merged.columns or f"{column}_champion" not in merged.columns:
            continue
        a, b = merged[column].to_numpy(float), merged[f"{column}_champion"].to_numpy(float)
        diff, p = paired_signed_rank(a, b, clusters=clusters)
        out.append(PairedDrop(name, int(len(merged)), _mean(a), _mean(b), diff, p, p))
    adjusted = holm({d.name: d.p for d in out if d.name != OUTSIDE})
    return [PairedDrop(d.name, d.n_pairs, d.this, d.champion, d.diff, d.p, adjusted.get(d.name, d.p))
            if d.name != OUTSIDE else d for d in out]


def paired_metrics(pairs: Sequence[PairedDrop]) -> dict[str, float]:
    """vs_champion_cf_drop_<name>_diff (and _ci_lower/_ci_upper) and _p (Holm-corrected for regions)."""
    out = {}
    for pair in pairs:
        if pair.diff.computable:
            out.update({f"vs_champion_cf_drop_{pair.name}_{k}": v for k, v in
                        (("diff", pair.diff.value), ("diff_ci_lower", pair.diff.lower),
                         ("diff_ci_upper", pair.diff.upper)) if v is not None})
        if pair.p_holm is not None:
            out[f"vs_champion_cf_drop_{pair.name}_p"] = pair.p_holm
    return out


def paired_sentence(pair: PairedDrop, *, this_label: str | None = None) -> str:
    """E.g. "the challenger depends on what lies outside the brain: drop 0.85 vs 0.02, p < 0.001"."""
    from .i18n import _

    this_label = _("this version") if this_label is None else this_label
    what = _("what lies outside the brain") if pair.name == OUTSIDE else pair.name.replace("_", " ")
    sentence = (_("{this} depends more on {what} than the champion: drop {drop} vs {champion} on {n} shared "
                  "subjects, {p}")
                if (pair.diff.value or 0) > 0 else
                _("{this} depends less on {what} than the champion: drop {drop} vs {champion} on {n} shared "
                  "subjects, {p}"))
    return sentence.format(this=this_label, what=what, drop=_fmt(pair.this), champion=_fmt(pair.champion),
                           n=pair.n_pairs, p=format_p(pair.p_holm))


def format_p(p: float | None) -> str:
    if p is None:
        from .i18n import _

        return _("p not computable")
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mean(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def drops_by_name(summary: CounterfactualSummary | None) -> Mapping[str, float]:
    """The computable cf_* values of a summary (for the verdict)."""
    if summary is None or not summary.computed:
        return {}
    return {k: e.value for k, e in summary.estimates.items() if isinstance(e, Estimate) and e.computable}
