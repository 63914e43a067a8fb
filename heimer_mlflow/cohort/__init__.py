"""Reading a cohort: manifest or class folders -> validated subject table -> torch Dataset.

The contract (docs/design.md, "The cohort contract"):

- a CSV manifest with ``path`` (relative to the CSV's folder, or absolute) and ``label`` (a class
  name or index), optional ``subject_id`` (default: the file stem); other columns are
  covariates;
- or a folder ``ROOT/<class name>/*.nii[.gz]``; a folder holding ``manifest.csv`` (what
  ``heimer-mlflow cohort`` writes) is read through that manifest;
- or a BIDS dataset root, or a ClinicaDL TSV over a CAPS folder (:mod:`heimer_mlflow.layouts`).

One row per scan: ``subject_id`` names the scan, ``participant_id`` the person it belongs to
(several sessions of one participant are one cluster in every interval). Labels are mapped to the
model's classes by ``label_map`` (source label -> class name), else by class name.

Every subject is validated up front from its NIfTI header (cheap: no voxel data is read) and all
problems are reported together. Problems only the voxels can show (non-finite or all-zero
volumes, a corrupt gzip stream) are found when the volume is loaded; the Dataset then returns
the subject with its ``problem`` set instead of raising, so the caller decides to stop or skip.

The package, by job: :mod:`.table` (the subject table, labels, problems), :mod:`.reading` (the
readers), :mod:`.files` (header and voxel checks, loading a volume), :mod:`.preprocessing`
(intensity normalisation, brain mask) and :mod:`.loader` (the torch Dataset and DataLoader).
"""

from .files import MAX_VOXELS, header_problem, load_volume, validate, voxel_problems
from .preprocessing import BORDER_NOISE_MADS, brain_mask, normalise_intensity
from .reading import read_cohort
from .table import (
    EXCLUDED_COLUMNS, ID_COLUMNS, MAX_SHOWN_PROBLEMS, NIFTI_SUFFIXES, Cohort, CohortProblems, check_label_map,
    label_index, missing, parse_label_map, settle_problems, subject_stem,
)

__all__ = [
    "BORDER_NOISE_MADS", "Cohort", "CohortDataset", "CohortProblems", "EXCLUDED_COLUMNS", "ID_COLUMNS",
    "MAX_SHOWN_PROBLEMS", "MAX_VOXELS", "NIFTI_SUFFIXES", "brain_mask", "check_label_map", "header_problem",
    "label_index", "load_volume", "make_loader", "missing", "normalise_intensity", "parse_label_map",
    "read_cohort", "settle_problems", "subject_stem", "validate", "voxel_problems",
]

_LOADER = ("CohortDataset", "make_loader")


def __getattr__(name):
    """``CohortDataset`` and ``make_loader`` load torch, so only when asked for: the figures read
    volumes and masks from this package without it."""
    if name in _LOADER:
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
