"""The subject table (:class:`Cohort`), its labels and its problems: what every reader fills and
every check reports into."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import HeimerError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MAX_SHOWN_PROBLEMS = 50
# Columns of the subject table that identify a scan or carry its label: never covariates (which
# split the results into subgroups).
ID_COLUMNS = ("subject_id", "participant_id", "session_id", "path", "label", "label_name")
EXCLUDED_COLUMNS = ["subject_id", "path", "reason"]


def subject_stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


@dataclass
class Cohort:
    """The subject table: one row per scan, columns ``subject_id`` (unique per scan),
    ``participant_id`` (the person; ``subject_id`` unless the data says otherwise), ``session_id``
    (BIDS/CAPS and manifests that have it), ``path`` (absolute), ``label`` (class index),
    ``label_name`` and the covariates; ``source`` is what was read. ``excluded`` lists the scans
    left out and why (labels that are no model class, and with ``skip_bad`` unusable files)."""

    table: pd.DataFrame
    class_names: list[str]
    source: str
    covariates: list[str] = field(default_factory=list)
    excluded: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=EXCLUDED_COLUMNS))
    pending: list = field(default_factory=list)  # (subject_id, path, reason) not yet settled by validate()

    def __len__(self) -> int:
        return len(self.table)

    def participants(self, rows) -> np.ndarray | None:
        """The participant of each of these table rows, or None when the cohort does not say
        (each scan is then its own participant): the clusters every interval resamples."""
        if "participant_id" not in self.table.columns:
            return None
        return self.table["participant_id"].iloc[np.asarray(rows, dtype=int)].astype(str).to_numpy()


class CohortProblems(HeimerError):
    """Several subjects failed validation. ``problems`` is a list of (subject_id, path, reason)."""

    def __init__(self, problems, source: str):
        self.problems = problems
        shown = "; ".join(f"{sid}: {reason}" for sid, _, reason in problems[:MAX_SHOWN_PROBLEMS])
        more = len(problems) - MAX_SHOWN_PROBLEMS
        extra = f"; ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{len(problems)} subject(s) in {source} cannot be used: {shown}{extra} "
            "(fix them, or pass --skip-bad to leave them out and list them in the report)"
        )


def parse_label_map(value) -> dict[str, str]:
    """``"Dementia=AD,Control=CN"`` (or a dict) -> {source label: class name}; {} for none."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    pairs = value.items() if isinstance(value, dict) else (item.partition("=")[::2] for item in str(value).split(","))
    mapping: dict[str, str] = {}
    for source, target in pairs:
        source, target = str(source).strip(), str(target).strip()
        if not source or not target:
            raise HeimerError(f"--label-map {value!r}: write SOURCE=CLASS pairs separated by commas, "
                              'e.g. "Dementia=AD,Control=CN"')
        if mapping.get(source, target) != target:
            raise HeimerError(f"--label-map {value!r} maps {source!r} twice ({mapping[source]}, {target}); keep one")
        mapping[source] = target
    return mapping


def check_label_map(label_map: dict[str, str], class_names: list[str]) -> dict[str, str]:
    """The map with its targets spelled as the model's class names; one line for a target that
    is no class."""
    lowered = {c.lower(): c for c in class_names}
    for source, target in label_map.items():
        if target.lower() not in lowered:
            raise HeimerError(f"--label-map maps {source!r} to {target!r}, which is not a model class "
                              f"({', '.join(class_names)}); map each source label to one of them")
    return {source: lowered[target.lower()] for source, target in label_map.items()}


def missing(value) -> bool:
    """An empty cell: None, NaN or blank text."""
    return value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == ""


def label_index(value, class_names: list[str], label_map: dict[str, str] | None = None) -> int | None:
    """A class index from a source label (through ``label_map``, matched exactly, else ignoring
    case), a class name (case-insensitive) or an index; None when unknown."""
    if label_map and not missing(value):
        text = str(value).strip()
        folded = {k.lower(): v for k, v in label_map.items()}
        value = label_map.get(text, folded.get(text.lower(), value))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value) if 0 <= int(value) < len(class_names) else None
    text = str(value).strip()
    lowered = [c.lower() for c in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    try:
        number = float(text)
    except ValueError:
        return None
    if number.is_integer() and 0 <= int(number) < len(class_names):
        return int(number)
    return None


def settle_problems(cohort: Cohort, problems, skip_bad: bool) -> Cohort:
    """Stop with every problem in one message, or drop the subjects and record why."""
    if not problems:
        return cohort
    if not skip_bad:
        raise CohortProblems(problems, cohort.source)
    bad = pd.DataFrame(problems, columns=EXCLUDED_COLUMNS)
    cohort.excluded = pd.concat([cohort.excluded, bad], ignore_index=True)
    cohort.table = cohort.table[~cohort.table["subject_id"].isin(set(bad["subject_id"]))].reset_index(drop=True)
    return cohort
