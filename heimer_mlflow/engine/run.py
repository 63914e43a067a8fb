"""The evaluation run: one forward and one gradient per batch, everything else streamed.

``run_engine`` walks a DataLoader once. Per chunk of a batch it gets, from a single forward and a
single ``autograd.grad`` to the target activation: positive-class probability, prediction, loss,
Grad-CAM and HiResCAM on the target layer's grid and the feature-layer activations. The primary
map (``cam``: either method) feeds the CAM shares (outside the brain, per atlas region), the
mergeable group statistics, the bounded case gallery and, on the first subjects of the cohort,
the randomised-weights sanity check; both maps feed per-subject outside-brain shares and their
agreement. The CAM is reported on the input grid (trilinear), but its shares and group
statistics are computed on the layer grid with the same results (``engine.upsampling``); only
the gallery's cases and saved CAMs are upsampled one by one.
Memory does not grow with the number of subjects except for the per-subject rows of scalars.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from heimer_mlflow.engine.agreement import method_agreement, randomised_copy, spearman
from heimer_mlflow.engine.gallery import CaseGallery, GalleryCase, outcome_of
from heimer_mlflow.engine.gradcam import GradCam3d, as_logits
from heimer_mlflow.engine.result import SUBJECT_COLUMNS, EngineResult, EngineStopped, SanityResult, maps_from_stats
from heimer_mlflow.engine.stats import GroupStats
from heimer_mlflow.engine.upsampling import Trilinear
from heimer_mlflow.errors import HeimerError, one_line
from heimer_mlflow.interrupts import raise_if_swallowed
from heimer_mlflow.meta import DEFAULT_CAM, ModelMeta, check_cam_method

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# (subject_id, method (CAM_METHODS) -> raw map [D, H, W] float32, affine [4, 4])
SaveCam = Callable[[str, dict[str, np.ndarray], np.ndarray], None]


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` prefers CUDA, then MPS, then CPU; ``cpu``, ``cuda``, ``cuda:i`` are taken as given."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise HeimerError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:INDEX") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (chosen.index or 0) >= count:
            raise HeimerError(f"device {device!r} is not available ({count} CUDA devices): use --device auto or cpu")
    elif chosen.type == "mps" and not torch.backends.mps.is_available():
        raise HeimerError(f"device {device!r} is not available: use --device auto or cpu")
    return chosen


def run_engine(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    meta: ModelMeta,
    *,
    device: str = "auto",
    feature_layers: tuple[str, ...] = (),
    atlas: tuple[np.ndarray, dict[int, str]] | None = None,
    brain_mask: np.ndarray | None = None,
    gallery_k: int = 4,
    sanity_subjects: int = 8,
    save_cams: SaveCam | None = None,
    amp: str | None = None,
    threshold: float = 0.5,
    progress: bool = True,
    seed: int = 0,
    stop_on_problem: bool = False,
    should_stop: Callable[[], bool] | None = None,
    cam: str = DEFAULT_CAM,
    keep_positive_maps: bool = False,
) -> EngineResult:
    """Evaluate ``model`` on every batch of ``loader`` in one pass; see the module docstring.

    The model is moved to the device and put in eval mode (its train/eval mode is restored).
    ``brain_mask`` (nonzero = brain, on the input grid) is the brain for every subject's
    outside-brain share; without it, each subject's ``brain_mask`` from the loader (its
    non-background voxels). ``cam`` (``gradcam`` or ``hirescam``) is the primary map: the one behind
    the "cam" group maps, the CAM shares, the gallery's ``primary_cam`` and the sanity check. ``save_cams``
    is called once per subject with both raw maps (by method) and its affine. ``amp`` runs the
    forward under autocast in bf16 or fp16; maps and statistics stay float32/float64. With
    ``stop_on_problem``, the first unreadable volume ends the compute; the rest of the loader is
    still read, so ``excluded`` lists every unusable subject for one message. ``seed``
    draws the randomised weights of the sanity check, which runs on the subjects whose cohort
    ``index`` is below ``sanity_subjects`` (the same ones however the cohort is sharded).
    ``should_stop`` is asked before each batch; when it says True the pass ends with
    :class:`EngineStopped` (``heimer_mlflow.distributed`` uses it to stop when another rank failed).
    ``keep_positive_maps`` keeps the primary map on the target layer's grid of every subject called
    positive (``positive_maps``), for the counterfactual pass (``engine.counterfactual``).
    """
    if amp not in (None, *AMP_DTYPES):
        raise HeimerError(f"unknown amp {amp!r}: use bf16, fp16 or leave it unset")
    check_cam_method(cam)
    chosen = pick_device(device)
    run = _Run(model.to(chosen), meta, chosen, feature_layers, atlas, gallery_k, sanity_subjects, save_cams,
               amp, threshold, seed, cam)
    if brain_mask is not None:
        run.given_brain = torch.as_tensor(np.asarray(brain_mask) != 0, device=chosen)
    run.stop_on_problem = stop_on_problem
    run.positive_maps = {} if keep_positive_maps else None
    was_training = model.training
    model.eval()
    try:
        return run.over(loader, progress, should_stop)
    finally:
        model.train(was_training)


@dataclass
class _Chunk:
    """What the compute step produces for a chunk; committing it has no failure modes worth retrying."""

    images: torch.Tensor
    affines: torch.Tensor  # CPU
    layer_maps: dict[str, torch.Tensor]  # method -> [b, d, h, w] raw map on the target layer's grid
    primary: str  # the method of layer_cam
    activations: dict[str, torch.Tensor]
    # [b] per subject column, by name: every engine column (SUBJECT_COLUMNS, cam_roi_gain_<region>)
    # with its final dtype (subject_id object, index, label and pred int64, the rest float64)
    subjects: dict[str, np.ndarray]
    sanity: dict[int, float]  # row in the chunk -> Spearman, for the sanity-check subjects

    @property
    def layer_cam(self) -> torch.Tensor:
        """[b, d, h, w]: the primary map on the target layer's grid."""
        return self.layer_maps[self.primary]


class _Run:
    def __init__(self, model, meta, device, feature_layers, atlas, gallery_k, sanity_subjects, save_cams, amp,
                 threshold, seed, cam_method=DEFAULT_CAM):
        self.model, self.meta, self.device, self.cam_method = model, meta, device, cam_method
        self.gradcam = GradCam3d(model, meta.target_layer, tuple(feature_layers))
        self.layers = [self.gradcam.layer_path, *(p for p in feature_layers if p != self.gradcam.layer_path)]
        self.region_names, self.region_slots, self.region_voxels = _prepare_atlas(atlas, device)
        self.upsampling: Trilinear | None = None  # target layer grid -> input grid, made on the first batch
        self.region_weights: torch.Tensor | None = None  # [regions, cells]: the atlas pulled to the layer grid
        self.given_brain: torch.Tensor | None = None  # [D, H, W] bool, one brain mask for every subject
        self.outside_weights: torch.Tensor | None = None  # [d, h, w]: outside the given brain, pulled back
        self.atlas_shape = None if atlas is None else tuple(np.shape(atlas[0]))
        # float64 sums on the device, except on MPS, which has no float64
        self.stats = GroupStats(meta.class_names, meta.positive_index, "cpu" if device.type == "mps" else device)
        self.gallery = CaseGallery(gallery_k)
        self.sanity_subjects, self.seed = sanity_subjects, seed
        self.sanity_ids: list[str] = []
        self.sanity_indices: list[int] = []
        self.sanity_values: list[float] = []
        self.sanity_left = sanity_subjects  # sanity subjects still to come; at 0 the randomised copy is freed
        self.random_gradcam: GradCam3d | None = None
        self.gallery_k = gallery_k
        self.save_cams, self.amp, self.threshold = save_cams, amp, threshold
        self.target_column: int | None = None  # output column of the positive class, known after a probe
        self.chunk_size: int | None = None
        # per subject column, by name: one array per committed chunk
        self.rows: dict[str, list[np.ndarray]] = {name: [] for name in SUBJECT_COLUMNS}
        self.rows.update({f"cam_roi_gain_{name}": [] for name in self.region_names})
        self.excluded: list[dict] = []
        self.stop_on_problem = False
        self.positive_maps: dict[int, np.ndarray] | None = None  # kept only when asked for

    # -- the loop -------------------------------------------------------------------------------

    def over(self, loader, progress: bool, should_stop: Callable[[], bool] | None = None) -> EngineResult:
        total = len(loader.dataset) if hasattr(loader.dataset, "__len__") else None
        self.sanity_left = _sanity_quota(loader.dataset, self.sanity_subjects)
        bar = tqdm(total=total, unit="subject", desc="evaluating", file=sys.stderr, disable=not progress)
        timings = {"loader_wait_s": 0.0, "compute_s": 0.0}
        started = waiting = time.perf_counter()
        with bar:
            for batch in loader:
                timings["loader_wait_s"] += time.perf_counter() - waiting
                raise_if_swallowed()  # a Ctrl-C dropped while the loader started its workers stops here
                if should_stop is not None and should_stop():
                    raise EngineStopped("the evaluation was stopped before the end of the cohort")
                computing = time.perf_counter()
                batch = self._drop_unreadable(batch, bar)
                if self.excluded and self.stop_on_problem:
                    # The run will stop: skip the compute, only look for the other unusable volumes
                    # so the user gets all of them in one message.
                    if batch is not None:
                        bar.update(len(batch["subject_id"]))
                    batch = None
                self._batch(batch, bar)
                timings["compute_s"] += time.perf_counter() - computing
                waiting = time.perf_counter()
        timings["total_s"] = time.perf_counter() - started
        n = sum(len(part) for part in self.rows["subject_id"])
        timings["subjects_per_s"] = n / timings["total_s"] if timings["total_s"] > 0 else float("nan")
        return self._result(timings)

    def _drop_unreadable(self, batch: dict, bar) -> dict | None:
        """The batch without subjects whose volume could not be read; those are listed in ``excluded``."""
        problems = batch.get("problem")
        if problems is None or not any(problems):
            return batch
        for sid, index, problem in zip(batch["subject_id"], batch["index"].tolist(), problems):
            if problem:
                self.excluded.append({"subject_id": sid, "index": index, "reason": problem})
                self.sanity_left -= index < self.sanity_subjects
                # stopping: the one error line lists them all; skipping: say so as it happens
                log.log(logging.INFO if self.stop_on_problem else logging.WARNING, "leaving out subject %s: %s", sid, problem)
                bar.update(1)
        keep = [i for i, problem in enumerate(problems) if not problem]
        if not keep:
            return None
        return {key: [v[i] for i in keep] if isinstance(v, list) else v[keep] for key, v in batch.items()}

    def _batch(self, batch: dict | None, bar) -> None:
        if batch is None:
            return
        images = batch["image"].to(self.device, non_blocking=True)
        masks = batch["brain_mask"].to(self.device, non_blocking=True)
        if self.target_column is None:
            self.target_column = self._probe(images[:1])
            if self.atlas_shape is not None and self.atlas_shape != tuple(images.shape[2:]):
                raise HeimerError(
                    f"the atlas grid {list(self.atlas_shape)} differs from the images' {list(images.shape[2:])}: "
                    "resample the atlas label image onto the input grid"
                )
            if self.given_brain is not None and tuple(self.given_brain.shape) != tuple(images.shape[2:]):
                raise HeimerError(
                    f"the brain mask grid {list(self.given_brain.shape)} differs from the images' "
                    f"{list(images.shape[2:])}: resample the brain mask onto the input grid"
                )
        start, size = 0, len(images)
        while start < size:
            stop = min(start + (self.chunk_size or size), size)
            try:
                chunk = self._compute(images[start:stop], masks[start:stop], batch, slice(start, stop))
            except torch.OutOfMemoryError:
                if stop - start == 1:
                    raise
                self.chunk_size = (stop - start) // 2
                message = f"out of memory on {self.device}: processing batches in chunks of {self.chunk_size}"
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                log.warning(message)
                _release_cached_memory(self.device)
                continue
            self._commit(chunk)
            bar.update(stop - start)
            start = stop

    # -- compute: everything that allocates on the device, so an out-of-memory retry is clean -----

    def _probe(self, image: torch.Tensor) -> int:
        """The output column to explain: the logit (one output) or the positive class's logit."""
        try:
            with torch.no_grad(), self._autocast():
                output = self.model(image)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:  # e.g. the input does not fit the model
            raise HeimerError(
                f"the model fails on an input of shape {list(image.shape)} ({one_line(e, 300)}); "
                "check the model's input_shape and intensity metadata against the cohort"
            ) from None
        width = as_logits(output, 1).shape[1]
        n_classes = len(self.meta.class_names)
        if width == 1 and n_classes == 2:
            return 0
        if width == n_classes:
            return self.meta.positive_index
        raise HeimerError(
            f"model outputs {width} logits for classes {self.meta.class_names}: it must output 1 (two classes, "
            f"sigmoid) or {n_classes} (one per class, softmax); fix the model head or class_names"
        )

    def _compute(self, images, masks, batch, rows: slice) -> _Chunk:
        labels = batch["label"][rows]
        with self._autocast():
            attribution = self.gradcam.attribute(images, self.target_column)
        logits, layer_maps = attribution.logits, attribution.layer_maps
        labels_here = labels.to(self.device, non_blocking=True)
        positive = self.meta.positive_index
        if logits.shape[1] == 1:
            prob = torch.sigmoid(logits[:, 0])
            loss = F.binary_cross_entropy_with_logits(logits[:, 0], (labels_here == positive).float(), reduction="none")
            negative = torch.full_like(labels_here, 1 - positive)  # one logit: exactly two classes
        else:
            prob = torch.softmax(logits, dim=1)[:, positive]
            loss = F.cross_entropy(logits, labels_here, reduction="none")
            negative = logits.index_fill(1, torch.tensor([positive], device=logits.device), -torch.inf).argmax(1)
        pred = torch.where(prob >= self.threshold, positive, negative)
        upsampling = self._upsampling(tuple(layer_maps["gradcam"].shape[1:]), tuple(images.shape[2:]))
        # outside the brain pulled back to the layer grid: [d, h, w] for the given brain, else per subject
        outside_weights = self.outside_weights if self.given_brain is not None else upsampling.pull((~masks).float())
        subjects = {
            "subject_id": np.asarray(batch["subject_id"][rows], dtype=object),
            "index": batch["index"][rows].numpy().astype(np.int64),
            "label": labels.numpy().astype(np.int64),
            "pred": pred.cpu().numpy().astype(np.int64),
            **_float64_columns({"prob": prob, "loss": loss, **self._cam_shares(layer_maps, masks, outside_weights)}),
            "cam_method_agreement": method_agreement(layer_maps, upsampling.cell_weights, outside_weights),
        }
        sanity = self._sanity(images, layer_maps[self.cam_method], batch["index"][rows])
        return _Chunk(
            images=images, affines=batch["affine"][rows], layer_maps=layer_maps, primary=self.cam_method,
            activations=attribution.activations, subjects=subjects, sanity=sanity,
        )

    def _cam_shares(self, layer_maps, masks, outside_weights) -> dict[str, torch.Tensor]:
        """Per subject: each map's share outside the brain and, for the primary map, that share's
        resolution floor and the region gains, all on the input grid but computed on the layer grid
        (see engine.upsampling): the sum of the upsampled map inside a voxel set is the map times
        the set pulled back."""
        layer_cam = layer_maps[self.cam_method]
        cells = self.upsampling.cell_weights
        totals = {method: (m * cells).sum(dim=(1, 2, 3)) for method, m in layer_maps.items()}
        outsides = {method: (m * outside_weights).sum(dim=(1, 2, 3)) for method, m in layer_maps.items()}
        shares = {f"{method}_outside_brain_fraction": outsides[method] / totals[method] for method in layer_maps}
        cam_total, cam_outside = totals[self.cam_method], outsides[self.cam_method]
        # the floor: a map spread evenly over the brain, each cell at its share of brain, upsampled
        inside_weights = cells - outside_weights  # the brain pulled back
        even = torch.where(cells > 0, inside_weights / cells, 0.0)
        floor = (even * outside_weights).flatten(-3).sum(-1) / inside_weights.flatten(-3).sum(-1)
        shares["cam_outside_brain_fraction"] = shares[f"{self.cam_method}_outside_brain_fraction"]
        shares["cam_outside_brain_floor"] = floor.expand(len(layer_cam))
        if self.region_names:
            # gain = the region's share of the CAM inside the brain / its share of the brain's
            # volume: 1 for a map spread evenly over the brain; undefined with no CAM inside
            brain = self.given_brain if self.given_brain is not None else masks
            brain_voxels = brain.flatten(-3).sum(-1).float().expand(len(layer_cam))[:, None]
            cam_inside = (cam_total - cam_outside)[:, None]
            cam_share = layer_cam.flatten(1) @ self.region_weights.T / cam_inside
            gains = torch.where(cam_inside > 0, cam_share * brain_voxels / self.region_voxels, torch.nan)
            shares.update({f"cam_roi_gain_{name}": gain for name, gain in zip(self.region_names, gains.T)})
        return shares

    def _upsampling(self, layer_grid: tuple[int, ...], input_grid: tuple[int, ...]) -> Trilinear:
        """The layer -> input grid upsampling (and the atlas regions and the given brain mask on the
        layer grid), made once."""
        if self.upsampling is None or (self.upsampling.source, self.upsampling.target) != (layer_grid, input_grid):
            self.upsampling = Trilinear(layer_grid, input_grid, self.device)
            if self.given_brain is not None:
                self.outside_weights = self.upsampling.pull((~self.given_brain).float()[None])[0]
            if self.region_names:
                self.region_weights = torch.cat([  # eight regions at a time: one float volume each
                    self.upsampling.pull(torch.stack([(self.region_slots == r).float() for r in part])).flatten(1)
                    for part in _groups_of(range(len(self.region_names)), 8)
                ])
        return self.upsampling

    def _sanity(self, images, layer_cam, indices: torch.Tensor) -> dict[int, float]:
        """Rank correlation of trained and randomised-weights maps at the target layer's resolution
        (upsampling is the same fixed interpolation for both, and ranking input-size maps is costly),
        for the chunk's subjects whose cohort index is below ``sanity_subjects``."""
        chosen = (indices < self.sanity_subjects).nonzero().flatten().tolist()
        if not chosen:
            return {}
        if self.random_gradcam is None:  # the same weights whenever (and on whichever rank) it is made
            self.random_gradcam = GradCam3d(randomised_copy(self.model, self.seed), self.gradcam.layer_path)
        rows = torch.as_tensor(chosen, device=images.device)
        with self._autocast():
            random_cam = self.random_gradcam.attribute(images[rows], self.target_column).layer_maps[self.cam_method]
        return {i: spearman(layer_cam[i], b) for i, b in zip(chosen, random_cam)}

    # -- commit: updates the run's state ---------------------------------------------------------

    def _commit(self, chunk: _Chunk) -> None:
        subjects = chunk.subjects
        if subjects.keys() != self.rows.keys():  # a column added in one place only would misalign the table
            raise RuntimeError(f"the engine computed columns {sorted(subjects)} but keeps {sorted(self.rows)}")
        positive = self.meta.positive_index
        predicted_positive = subjects["pred"] == positive
        cells = [self.stats.cell(k, p) for k, p in zip(subjects["label"], predicted_positive)]
        values, upsampled = {"input": chunk.images}, {}
        if self.upsampling.coarse:  # kept on the layer grid, reported on the input grid (see GroupStats)
            upsampled["cam"] = chunk.layer_cam
        else:
            values["cam"] = self.upsampling.up(chunk.layer_cam)
        for layer in self.layers:
            activation = chunk.activations[layer]
            values[f"features/{layer}"] = activation
            values[f"channel_means/{layer}"] = activation.mean(dim=(2, 3, 4))
        self.stats.update(cells, upsampled=upsampled, **values)

        for i, value in chunk.sanity.items():
            self.sanity_ids.append(subjects["subject_id"][i])
            self.sanity_indices.append(int(subjects["index"][i]))
            self.sanity_values.append(value)
        self.sanity_left -= len(chunk.sanity)
        if self.sanity_left <= 0:
            self.random_gradcam = None  # done: free the randomised copy
        for name, column in subjects.items():
            self.rows[name].append(column)
        if self.positive_maps is not None:
            for i in np.flatnonzero(predicted_positive):
                self.positive_maps[int(subjects["index"][i])] = _own_numpy(chunk.layer_cam[i])
        saved_cams = {}
        if self.save_cams is not None:
            saved_cams = {method: self.upsampling.up(layer_map) for method, layer_map in chunk.layer_maps.items()}
        for i, sid in enumerate(subjects["subject_id"]):
            outcome = outcome_of(bool(subjects["label"][i] == positive), bool(predicted_positive[i]))
            prob = subjects["prob"][i]
            confidence = prob if predicted_positive[i] else 1.0 - prob
            self.gallery.offer(outcome, confidence, int(subjects["index"][i]),
                               functools.partial(_case, chunk, i, outcome, confidence))
            if self.save_cams is not None:
                self.save_cams(sid, {method: _own_numpy(maps[i]) for method, maps in saved_cams.items()},
                               _own_numpy(chunk.affines[i]))

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp])

    def _gallery_cases(self) -> dict[str, list[GalleryCase]]:
        """The kept cases, their maps upsampled now: only the winners are ever brought to the input grid."""
        cases = self.gallery.cases()
        for case in (case for kept in cases.values() for case in kept if case.primary_cam is None):
            methods = list(case.layer_cams)
            upsampled = self.upsampling.up(torch.from_numpy(np.stack([case.layer_cams[m] for m in methods]))).numpy()
            case.cams = dict(zip(methods, upsampled))
            case.primary_cam = case.cams[self.cam_method]
        return cases

    def _result(self, timings: dict[str, float]) -> EngineResult:
        # no subject at all: empty float64 columns (object for subject_id), as every caller expects
        subjects = {name: np.concatenate(parts) if parts else np.asarray([]) for name, parts in self.rows.items()}
        subjects["subject_id"] = subjects["subject_id"].astype(object)
        stats = GroupStats.from_state({k: v.cpu() for k, v in self.stats.state.items()},
                                      self.meta.class_names, self.meta.positive_index)
        maps, ranking = maps_from_stats(stats, self.layers)
        sanity = SanityResult.of(self.sanity_ids, self.sanity_indices, self.sanity_values)
        return EngineResult(
            subjects=subjects, maps=maps,
            feature_ranking=ranking,
            gallery=self._gallery_cases(), sanity=sanity, stats=stats, target_layer=self.gradcam.layer_path,
            feature_layers=list(self.layers), region_names=list(self.region_names), excluded=self.excluded,
            device=str(self.device), amp=self.amp, threshold=self.threshold, chunk_size=self.chunk_size,
            timings=timings, gallery_k=self.gallery_k, cam_method=self.cam_method,
            positive_maps=self.positive_maps or {},
        )


def _prepare_atlas(atlas, device):
    """Region names, each voxel's region slot (the last slot = no named region) on the atlas grid,
    each region's voxel count."""
    if atlas is None:
        return [], None, None
    labels, names = atlas
    labels = np.asarray(labels)
    slot_of_label = {label: slot for slot, label in enumerate(sorted(names))}
    slots = np.full(labels.shape, len(slot_of_label), dtype=np.int64)
    for label, slot in slot_of_label.items():
        slots[labels == label] = slot
    counts = np.bincount(slots.ravel(), minlength=len(slot_of_label) + 1)[:-1]
    missing = [names[label] for label, slot in slot_of_label.items() if counts[slot] == 0]
    if missing:
        raise HeimerError(f"atlas regions {missing} have no voxels: fix the atlas label table or the label image")
    voxels = torch.as_tensor(counts, dtype=torch.float32, device=device)
    return [names[label] for label in sorted(names)], torch.as_tensor(slots, device=device), voxels


def _groups_of(items, size: int):
    items = list(items)
    return [items[i : i + size] for i in range(0, len(items), size)]


def _sanity_quota(dataset, n: int) -> int:
    """How many sanity-check subjects (cohort index < n) ``dataset`` holds: a Subset of the cohort
    (one rank's shard) holds those of its indices; a wrong count costs only memory or a re-copy."""
    if isinstance(dataset, torch.utils.data.Subset):
        return sum(1 for i in dataset.indices if i < n)
    return min(n, len(dataset)) if hasattr(dataset, "__len__") else n


def _case(chunk: _Chunk, i: int, outcome: str, confidence: float) -> GalleryCase:
    subjects = chunk.subjects
    layer_cams = {method: _own_numpy(layer_map[i]) for method, layer_map in chunk.layer_maps.items()}
    return GalleryCase(
        subject_id=subjects["subject_id"][i], index=int(subjects["index"][i]), label=int(subjects["label"][i]),
        prob=subjects["prob"][i], outcome=outcome, confidence=confidence, image=_own_numpy(chunk.images[i]),
        primary_cam=None, affine=_own_numpy(chunk.affines[i]), layer_cams=layer_cams,
    )


def _float64_columns(columns: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Same-length per-subject tensors as float64 numpy columns, by name, in one device-to-host copy."""
    stacked = torch.stack(list(columns.values())).cpu().numpy().astype(np.float64)
    return {name: stacked[row] for row, name in enumerate(columns)}


def _own_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy copy that does not keep the whole batch's storage alive."""
    return tensor.detach().cpu().numpy().copy()


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
