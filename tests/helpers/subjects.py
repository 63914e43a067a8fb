"""Inputs for the engine without files: subjects in memory, shaped like the items of
heimer_mlflow.cohort.CohortDataset; a batch of four for GradCam3d; the layer-grid pull."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SHAPE = (1, 24, 28, 24)  # one subject of ``mixed_batch``


class InMemorySubjects(torch.utils.data.Dataset):
    """Subjects from tensors: a subclass sets ``images`` [N, 1, *grid] and ``labels`` [N] and
    says each subject's brain mask; ids are sub-00, sub-01, ...; ``problems`` holds the indices
    whose file would be unreadable."""

    affine = torch.eye(4, dtype=torch.float64)
    problems: frozenset = frozenset()

    def __len__(self):
        return len(self.images)

    def subject_id(self, i: int) -> str:
        return f"sub-{i:02d}"

    def brain_mask(self, i: int) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, i):
        return {
            "image": self.images[i], "label": int(self.labels[i]), "subject_id": self.subject_id(i),
            "affine": self.affine, "brain_mask": self.brain_mask(i), "index": i,
            "problem": "corrupt gzip" if i in self.problems else "",
        }  # fmt: skip


def mixed_batch(seed=1):
    """Four subjects of two 'classes' (shifted intensity) so targets and maps differ within the batch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((4, *SHAPE), generator=g)
    x[2:] += 1.0
    return x


def pulled(volume: torch.Tensor, layer_grid) -> torch.Tensor:
    """U^T volume on the layer grid (float64), U the trilinear upsampling from ``layer_grid`` to
    the volume's grid, by autograd through F.interpolate (independent of engine.upsampling)."""
    cells = torch.zeros((1, 1, *layer_grid), dtype=torch.float64, requires_grad=True)
    up = F.interpolate(cells, tuple(volume.shape), mode="trilinear", align_corners=False)
    (up[0, 0] * volume.double()).sum().backward()
    return cells.grad[0, 0]
