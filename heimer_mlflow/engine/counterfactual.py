"""Counterfactual region tests: replace a region by what the controls have there, watch P(AD).

An attribution map says where a model looks; an intervention says what the score depends on.
After the one pass, ``run_counterfactuals`` re-scores a few subjects the model calls positive
(``choose_subjects``: up to N, spread over them by confidence, most confident first) with
regions of their input replaced by the **mean input of the negative class** (the CN controls'
mean, as the model sees it, after its intensity normalisation): an in-distribution replacement,
not zeros, so the model is not fed an impossible image. Per subject, one forward pass each for

- every atlas region in use, one at a time;
- everything outside the brain (the shortcut test);
- the primary map's most relevant voxels first (MoRF; anywhere in the volume) and its least
  relevant in-brain voxels first (LeRF), at ``STEPS`` (2, 5 and 10%) of the subject's brain volume;
- a size-matched random in-brain blob per step (the ball of that many brain voxels nearest a
  seeded random brain voxel, nested over the steps as the map's sets are): the control for the
  MoRF steps.

So ``len(regions) + 1 + 3 * len(STEPS)`` forward passes per subject (regions + 10), batched,
under ``torch.no_grad``, on the evaluation's device and autocast setting, and nothing else: the
score before the intervention is the one-pass probability. The drop is P(before) - P(after).
Forward passes go through ``_score``, the one place that calls the model. Plain numbers out
(``CounterfactualResult``); the statistics are :mod:`heimer_mlflow.interventions`'.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from heimer_mlflow.engine.gradcam import as_logits
from heimer_mlflow.engine.run import AMP_DTYPES
from heimer_mlflow.interrupts import raise_if_swallowed
from heimer_mlflow.interventions import ORDERS, OUTSIDE, STEPS, step_name  # STEPS: shares of the brain replaced


def intervention_names(regions: Iterable[str]) -> list[str]:
    """Every intervention of the pass, in the order it runs per subject."""
    return [*regions, OUTSIDE, *(step_name(o, s) for o in ORDERS for s in STEPS)]


def forward_passes(n_subjects: int, n_regions: int) -> int:
    """What the pass costs: N x (regions + 1 + 3 x steps) forward passes."""
    return n_subjects * (n_regions + 1 + len(ORDERS) * len(STEPS))


@dataclass
class CounterfactualResult:
    """Per subject (rows in the order scored, most confident first): P(positive) before, and after
    each intervention; ``drops`` = before - after."""

    subject_ids: list[str]
    indices: np.ndarray  # cohort rows
    prob_before: np.ndarray  # [N] float64
    prob_after: dict[str, np.ndarray]  # intervention name -> [N] float64
    region_names: list[str]
    replaced_voxels: dict[str, np.ndarray]  # intervention name -> [N] voxels replaced
    brain_voxels: np.ndarray  # [N] the brain the steps are shares of
    forward_passes: int = 0
    seconds: float = 0.0
    steps: tuple[float, ...] = STEPS
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def drops(self) -> dict[str, np.ndarray]:
        return {name: self.prob_before - after for name, after in self.prob_after.items()}


def choose_subjects(prob: np.ndarray, called_positive: np.ndarray, n: int, preferred=()) -> np.ndarray:
    """Rows of the subjects to re-score: among those called positive, sorted by P(positive),
    most confident first, ``n`` of them at evenly spaced ranks (all when there are fewer), so they
    span the subjects the model calls positive rather than only its surest calls. ``preferred``
    rows (e.g. the subjects the champion's evaluation re-scored, so the two can be paired) that are
    called positive come first, up to ``n``; the rest are spread over the others."""
    prob = np.asarray(prob, dtype=float)
    called = np.asarray(called_positive, dtype=bool)
    rows = np.flatnonzero(called)
    if n <= 0 or not len(rows):
        return rows[:0]
    ranked = rows[np.argsort(-prob[rows], kind="stable")]
    first = [r for r in ranked if r in set(int(p) for p in preferred)][:n]
    others = np.asarray([r for r in ranked if r not in set(first)], dtype=np.int64)
    wanted = n - len(first)
    if len(others) > wanted:
        others = others[np.unique(np.round(np.linspace(0, len(others) - 1, wanted)).astype(int))] if wanted else others[:0]
    chosen = np.concatenate([np.asarray(first, dtype=np.int64), others])
    return chosen[np.argsort(-prob[chosen], kind="stable")]


def positive_probability(logits: torch.Tensor, positive: int) -> torch.Tensor:
    """P(positive class) from [B, K] logits, as the engine reads them: one logit is the positive
    class's (sigmoid), else the softmax's column ``positive``."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, positive]


def _score(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, K] float32 logits of a batch, without a graph: the one place this pass calls the model
    (a model with a fixed batch size adapts here)."""
    with torch.no_grad():
        return as_logits(model(x), x.shape[0]).float()


def run_counterfactuals(
    model: nn.Module,
    subjects: Iterable[Mapping],
    *,
    layer_maps: Mapping[int, np.ndarray],
    prob_before: Mapping[int, float],
    replacement: np.ndarray,
    positive: int,
    regions: Mapping[str, np.ndarray] | None = None,
    brain_mask: np.ndarray | None = None,
    device: str | torch.device = "cpu",
    amp: str | None = None,
    batch_size: int = 4,
    seed: int = 0,
    score: Callable[[nn.Module, torch.Tensor], torch.Tensor] = _score,
) -> CounterfactualResult:
    """Re-score the subjects ``subjects`` yields (batches as ``CohortDataset`` items collated:
    ``image`` [B, C, D, H, W], ``brain_mask`` [B, D, H, W], ``index``, ``subject_id``) with every
    intervention (module docstring). ``layer_maps``: cohort row -> the primary map on the target
    layer's grid (upsampled here, trilinear, as the engine reports it); ``prob_before``: cohort row
    -> the one pass's P(positive); ``replacement`` [C, D, H, W]: the negative class's mean input;
    ``positive``: the positive class's index; ``regions``: name -> voxel mask on the input grid;
    ``brain_mask``: one brain for every subject, else each subject's own. ``seed`` and the
    subject's cohort row draw its random blob and tie-breaks, so they do not depend on batching."""
    device = torch.device(device)
    started = time.perf_counter()
    regions = dict(regions or {})
    region_masks = {name: torch.as_tensor(np.asarray(m) != 0, device=device) for name, m in regions.items()}
    region_voxels = {name: int(torch.count_nonzero(m)) for name, m in region_masks.items()}
    brain = None if brain_mask is None else _Brain.of(torch.as_tensor(np.asarray(brain_mask) != 0, device=device))
    autocast = (torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if amp is not None
                else contextlib.nullcontext())
    scoring = _Scoring(lambda inputs: positive_probability(score(model, inputs), positive), autocast,
                       torch.as_tensor(np.asarray(replacement, dtype=np.float32), device=device),
                       intervention_names(regions), batch_size)
    was_training = model.training
    model.eval()
    try:
        for batch in subjects:
            raise_if_swallowed()
            for i in range(len(batch["index"])):
                row = int(batch["index"][i])
                t0 = time.perf_counter()
                image = batch["image"][i].to(device)
                own = brain if brain is not None else _Brain.of(batch["brain_mask"][i].to(device).bool(),
                                                                with_coordinates=False)
                replaced = {**region_masks, OUTSIDE: own.outside}
                replaced.update(map_steps(layer_maps[row], own.mask, image.shape[1:], subject_generator(seed, row),
                                          own.coordinates, own.inside))
                counts = {**region_voxels, OUTSIDE: image[0].numel() - len(own.inside)}
                scoring.timings["masks_s"] += time.perf_counter() - t0
                scoring.add(str(batch["subject_id"][i]), row, float(prob_before[row]), len(own.inside), image,
                            replaced, counts)
        scoring.flush()
    finally:
        model.train(was_training)
    return scoring.result(list(regions), time.perf_counter() - started)


@dataclass
class _Brain:
    """A brain mask with what the interventions need from it: its flat voxel indices, the outside,
    and (for one brain shared by every subject, computed once) its voxels' coordinates."""

    mask: torch.Tensor
    inside: torch.Tensor
    outside: torch.Tensor
    coordinates: torch.Tensor | None = None

    @classmethod
    def of(cls, mask: torch.Tensor, with_coordinates: bool = True) -> _Brain:
        return cls(mask, mask.flatten().nonzero().flatten(), ~mask,
                   brain_coordinates(mask) if with_coordinates else None)


@dataclass
class _Scoring:
    """The interventions waiting to be scored, scored ``batch_size`` at a time with each replaced
    input written straight into the batch, and what each gave per subject."""

    probability: Callable[[torch.Tensor], torch.Tensor]  # inputs -> P(positive)
    autocast: contextlib.AbstractContextManager
    fill: torch.Tensor  # [C, D, H, W] the replacement
    names: list[str]
    batch_size: int
    # (subject's input, what to replace: a voxel mask or flat voxel indices, subject slot, intervention)
    pending: list[tuple[torch.Tensor, torch.Tensor, int, str]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    before: list[float] = field(default_factory=list)
    brains: list[int] = field(default_factory=list)
    after: dict[str, list[float]] = field(default_factory=dict)
    voxels: dict[str, list[int]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: {"masks_s": 0.0, "forward_s": 0.0})
    passes: int = 0

    def add(self, subject_id: str, row: int, before: float, brain_voxels: int, image: torch.Tensor,
            replaced: dict[str, torch.Tensor], counts: dict[str, int]) -> None:
        """One subject's interventions, scored as the batches fill."""
        slot = len(self.ids)
        self.ids.append(subject_id)
        self.rows.append(row)
        self.before.append(before)
        self.brains.append(brain_voxels)
        for name in self.names:
            self.after.setdefault(name, []).append(float("nan"))
            self.voxels.setdefault(name, []).append(counts[name] if name in counts else len(replaced[name]))
            self.pending.append((image, replaced[name], slot, name))
            if len(self.pending) >= self.batch_size:
                self.flush()

    def flush(self) -> None:
        """Score the pending interventions as one batch."""
        if not self.pending:
            return
        t0 = time.perf_counter()
        first = self.pending[0][0]
        inputs = torch.empty((len(self.pending), *first.shape), dtype=first.dtype, device=self.fill.device)
        flat_fill = self.fill.reshape(len(self.fill), -1)
        for j, (image, replaced, _, _) in enumerate(self.pending):
            if replaced.dtype == torch.bool:  # a voxel mask (a region, the outside of the brain)
                torch.where(replaced, self.fill, image, out=inputs[j])
            else:  # flat voxel indices (the map's and the random steps); index_copy_, not x[:, idx] = ...:
                # advanced-index assignment cost about a forward pass's tenth here
                inputs[j].copy_(image)
                inputs[j].view(len(image), -1).index_copy_(1, replaced, flat_fill.index_select(1, replaced))
        with self.autocast:
            prob = self.probability(inputs).cpu().numpy()
        for p, (_, _, slot, name) in zip(prob.astype(np.float64), self.pending):
            self.after[name][slot] = float(p)
        self.passes += len(self.pending)
        self.pending.clear()
        self.timings["forward_s"] += time.perf_counter() - t0

    def result(self, region_names: list[str], seconds: float) -> CounterfactualResult:
        return CounterfactualResult(
            subject_ids=self.ids, indices=np.asarray(self.rows, dtype=np.int64),
            prob_before=np.asarray(self.before, dtype=np.float64),
            prob_after={name: np.asarray(self.after.get(name, []), dtype=np.float64) for name in self.names},
            region_names=region_names,
            replaced_voxels={name: np.asarray(self.voxels.get(name, []), dtype=np.int64) for name in self.names},
            brain_voxels=np.asarray(self.brains, dtype=np.int64), forward_passes=self.passes, seconds=seconds,
            timings=self.timings,
        )


def map_steps(layer_map: np.ndarray, brain: torch.Tensor, grid: tuple[int, ...], generator: torch.Generator,
              coordinates: torch.Tensor | None = None, inside: torch.Tensor | None = None,
              ) -> dict[str, torch.Tensor]:
    """The flat voxel indices the MoRF, LeRF and random-blob steps of one subject replace. Ties
    (the zeros after the map's ReLU) are broken at random, never by voxel order. The blob is the
    ball of brain voxels nearest one random brain voxel, nested over the steps as MoRF's and LeRF's
    sets are. ``coordinates`` [n, 3] and ``inside`` [n] (flat): the brain voxels' indices, when known."""
    device = brain.device
    layer = torch.as_tensor(np.asarray(layer_map, dtype=np.float32), device=device)
    relevance = F.interpolate(layer[None, None], size=tuple(grid), mode="trilinear", align_corners=False).flatten()
    scale = float(relevance.max()) or 1.0  # the map is not negative (ReLU, then trilinear)
    jitter = torch.rand(relevance.numel(), generator=generator).to(device)
    key = relevance / scale + 1e-6 * jitter  # by relevance; equal values in random order
    inside = brain.flatten().nonzero().flatten() if inside is None else inside
    n_brain = len(inside)
    sizes = [max(1, round(share * n_brain)) for share in STEPS]
    out = {}
    most = torch.topk(key, min(max(sizes), key.numel())).indices  # most relevant first
    least = inside[torch.topk(-key[inside], min(max(sizes), n_brain)).indices] if n_brain else inside
    blob = inside
    if n_brain:
        if coordinates is None:
            coordinates = brain_coordinates(brain)
        centre = coordinates[int(torch.randint(n_brain, (1,), generator=generator))]
        blob = inside[torch.topk(-((coordinates - centre) ** 2).sum(1), min(max(sizes), n_brain)).indices]
    for share, size in zip(STEPS, sizes):
        out[step_name("morf", share)] = most[:size]
        out[step_name("lerf", share)] = least[:size]
        out[step_name("random", share)] = blob[:size]
    return out


def brain_coordinates(brain: torch.Tensor) -> torch.Tensor:
    """[n, 3] float32 voxel indices of the brain's voxels, in flat order."""
    return torch.stack(torch.unravel_index(brain.flatten().nonzero().flatten(), tuple(brain.shape)), dim=1).float()


def subject_generator(seed: int, row: int) -> torch.Generator:
    """The random source of one subject's blobs and tie-breaks: the seed and its cohort row."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, row]).generate_state(1)[0]))
