"""The torch side of a cohort: a Dataset of normalised volumes and the DataLoader that feeds the
device."""

from __future__ import annotations

import os

import numpy as np
import torch

from ..errors import one_line
from ..interrupts import quiet_worker
from ..meta import ModelMeta
from .files import load_volume
from .preprocessing import brain_mask, normalise_intensity
from .table import Cohort


class CohortDataset(torch.utils.data.Dataset):
    """One item per subject: ``image`` [1, D, H, W] float32 (intensity-normalised), ``label``,
    ``subject_id``, ``affine`` [4, 4] float64, ``brain_mask`` [D, H, W] bool, ``index`` (row in
    the cohort table), ``problem`` ("" when the voxels are fine; otherwise the reason and a
    zero image, so one bad file does not kill a DataLoader worker). With ``space_check`` (a
    named MNI-space atlas: :class:`heimer_mlflow.mni.SpaceCheck`) a scan not in MNI space is a
    problem too."""

    def __init__(self, cohort: Cohort, meta: ModelMeta, *, space_check=None):
        self.paths = cohort.table["path"].tolist()
        self.labels = cohort.table["label"].astype(int).tolist()
        self.subject_ids = cohort.table["subject_id"].astype(str).tolist()
        self.intensity = meta.intensity
        self.shape = tuple(meta.input_shape[1:]) if meta.input_shape is not None else None
        self.space_check = space_check

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        problem = ""
        try:
            data, affine = load_volume(self.paths[i])
            if self.shape is not None and data.shape != self.shape:
                raise ValueError(f"shape {data.shape} differs from the model input {self.shape}")
            if self.space_check is not None and (elsewhere := self.space_check.problem(data, affine)):
                raise ValueError(elsewhere)
            mask = brain_mask(data)
            image = normalise_intensity(data, self.intensity, mask)
        except (ValueError, OSError, EOFError) as e:
            problem = one_line(e, with_type=False)
            shape = self.shape or (1, 1, 1)
            image, mask, affine = np.zeros(shape, np.float32), np.zeros(shape, bool), np.eye(4)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image))[None],
            "label": self.labels[i],
            "subject_id": self.subject_ids[i],
            "affine": torch.from_numpy(np.asarray(affine, dtype=np.float64)),
            "brain_mask": torch.from_numpy(np.ascontiguousarray(mask)),
            "index": i,
            "problem": problem,
        }


def make_loader(dataset, *, batch_size: int = 4, workers: int | None = None, device: str = "cpu",
                shuffle: bool = False, seed: int = 0, processes_per_node: int = 1) -> torch.utils.data.DataLoader:
    """A DataLoader that keeps the device fed: worker processes decompress NIfTI files while
    the device computes, pinned memory and prefetch on CUDA. By default each of the
    ``processes_per_node`` evaluation processes on a host takes its share of the cores."""
    if workers is None:
        workers = min(4, max(0, (os.cpu_count() or 1) // max(1, processes_per_node) - 1))
    workers = min(workers, len(dataset))
    on_cuda = str(device).startswith("cuda")
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=on_cuda,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
        generator=generator,
        worker_init_fn=quiet_worker if workers > 0 else None,
    )
