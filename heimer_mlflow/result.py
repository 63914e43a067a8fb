"""What one evaluation produced (:class:`Evaluation`): the numbers, the arrays and the run they
were logged to. Its own module so that what reads it (figures, artifacts, tracking, the report)
need not import the orchestration in :mod:`heimer_mlflow.evaluation`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from .champion import Comparison
from .cohort import Cohort
from .engine.result import EngineResult
from .gate import GateResult
from .interventions import CounterfactualSummary
from .meta import CAM_NAMES
from .metrics import ClassificationReport
from .options import EvaluationOptions
from .record import AtlasRecord
from .registry import LoadedModel
from .verdict import Verdict


@dataclass
class Evaluation:
    """What one evaluation produced; ``run_id`` is the MLflow run it was logged to."""

    model: LoadedModel
    cohort: Cohort
    engine: EngineResult
    metrics: ClassificationReport
    history: dict[str, list[tuple[int, float]]]
    options: EvaluationOptions
    grid_affine: np.ndarray
    run_id: str | None = None
    evaluated_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> artifact URI (figures by name, report, ...)
    timings: dict[str, float] = field(default_factory=dict)
    gate: GateResult | None = None  # the promotion rules' outcome, when rules were given
    comparison: Comparison | None = None  # with the champion's evaluation on the same data, if any
    comparison_note: str = ""  # why there is no comparison although a champion exists (champion.Search.why)
    data_digest: str | None = None  # the evaluated data's content digest (champion.content_digest)
    # the verdict with its limits and each check's result: made once (evaluation._judge), after the
    # counterfactual tests it rests on; ``verdict`` and ``verdict_reason`` read it
    verdict_applied: Verdict | None = None
    atlas: AtlasRecord | None = None  # a named atlas: its source, licence and regions
    link_model: bool = True  # metrics and data set attached to the logged model (permissions.check)
    counterfactual: CounterfactualSummary | None = None  # the counterfactual region tests (interventions)
    counterfactual_result: object | None = None  # engine.counterfactual.CounterfactualResult: per-subject drops
    counterfactual_table: pd.DataFrame | None = None  # counterfactuals.csv

    @property
    def run_metrics(self) -> dict[str, float]:
        """Every number logged to the run as a metric (and returned by the evaluator plug-in)."""
        comparison = self.comparison.run_metrics() if self.comparison is not None else {}
        counterfactual = self.counterfactual.run_metrics() if self.counterfactual is not None else {}
        return {**self.metrics.to_flat_metrics(), **self.plausibility, **counterfactual, **comparison,
                "n_subjects": int(len(self.engine.subjects["prob"])), "n_excluded": int(len(self.cohort.excluded))}

    @property
    def verdict(self) -> str:
        """pass or review ("" before the evaluation is judged)."""
        return self.verdict_applied.result if self.verdict_applied is not None else ""

    @property
    def verdict_reason(self) -> str:
        return self.verdict_applied.reason if self.verdict_applied is not None else ""

    def not_computable(self) -> list[tuple[str, str]]:
        """(name, reason) of every figure without a value: the metrics' and the counterfactual tests'."""
        extra = self.counterfactual.not_computable() if self.counterfactual is not None else []
        return [*self.metrics.not_computable(), *extra]

    @property
    def plausibility(self) -> dict[str, float]:
        """The cohort-level plausibility numbers the verdict judges, logged as run metrics (and as
        ``evaluation.json``'s ``plausibility`` section, :class:`heimer_mlflow.record.Plausibility`).

        The map explains the positive class's score, so its checks look where the model looks
        when it calls a subject positive: the outside-brain shares, their floor, the region gains
        and the two maps' agreement are means over the subjects called positive (all subjects when
        it calls none; ``cam_n_subjects`` says over how many). For a subject called negative the
        positive score's map shows the little evidence there was, mostly noise at the edges, and
        would blur a model that looks at the brain into one that seems not to.
        """
        subjects = self.engine.subjects
        if not len(subjects.get("cam_outside_brain_fraction", [])):
            return {}
        called = subjects["pred"].astype(int) == self.model.meta.positive_index
        rows = called if called.any() else np.ones_like(called)
        out = {"cam_n_subjects": int(rows.sum())}
        columns = ["cam_outside_brain_fraction", "cam_outside_brain_floor", "cam_method_agreement",
                   *(f"{method}_outside_brain_fraction" for method in CAM_NAMES),
                   *(f"cam_roi_gain_{region}" for region in self.engine.region_names)]
        for column in (c for c in columns if c in subjects):
            values = np.asarray(subjects[column], dtype=float)[rows]
            if np.isfinite(values).any():
                out[column] = float(np.nanmean(values))
        if self.engine.sanity is not None and np.isfinite(self.engine.sanity.mean):
            out["sanity_spearman_mean"] = float(self.engine.sanity.mean)
        return out
