"""Reading a cohort's table, without voxels: a CSV manifest or DataFrame, class folders, and (through
:mod:`heimer_mlflow.layouts`) a BIDS root or a ClinicaDL TSV over a CAPS folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import layouts
from ..errors import HeimerError, one_line
from .table import (
    EXCLUDED_COLUMNS, ID_COLUMNS, NIFTI_SUFFIXES, Cohort, check_label_map, label_index, missing, parse_label_map,
    settle_problems, subject_stem,
)


def _from_manifest(frame: pd.DataFrame, base: Path, source: str, class_names, label_map=None,
                   label_column: str | None = None) -> tuple[pd.DataFrame, list]:
    if label_column and label_column != "label":
        if label_column not in frame.columns:
            raise HeimerError(f"manifest {source} has no column {label_column!r} (--label-column); it has: "
                              f"{', '.join(map(str, frame.columns)) or 'none'}")
        frame = frame.drop(columns=["label"], errors="ignore").rename(columns={label_column: "label"})
    absent = [c for c in ("path", "label") if c not in frame.columns]
    if absent:
        hint = ("; it looks like a ClinicaDL TSV: pass --caps DIR (the CAPS folder with its t1-linear images)"
                if {"participant_id", "session_id"} <= set(frame.columns) else "")
        raise HeimerError(
            f"manifest {source} lacks the column(s) {', '.join(absent)} (has: "
            f"{', '.join(map(str, frame.columns)) or 'none'}); it needs path,label and optionally subject_id{hint}"
        )
    if len(frame) == 0:
        raise HeimerError(f"manifest {source} lists no subjects; add rows with path,label")
    problems = []
    rows = []
    for i, rec in enumerate(frame.to_dict("records")):
        raw_path = rec["path"]
        if raw_path is None or (isinstance(raw_path, float) and np.isnan(raw_path)) or str(raw_path).strip() == "":
            problems.append((f"row {i + 2}", "", "empty path"))
            continue
        path = Path(str(raw_path).strip())
        path = path if path.is_absolute() else base / path
        sid = rec.get("subject_id")
        sid = subject_stem(path) if sid is None or (isinstance(sid, float) and np.isnan(sid)) else str(sid)
        label = label_index(rec["label"], class_names, label_map)
        if label is None:
            via = " or map it with --label-map" if not label_map else " or add it to --label-map"
            problems.append(
                (sid, str(path), f"unknown label {rec['label']!r} (use one of {', '.join(class_names)} or "
                                 f"0..{len(class_names) - 1}{via})")
            )
            continue
        participant = rec.get("participant_id")
        row = {k: v for k, v in rec.items() if k not in ("path", "label", "subject_id", "participant_id")}
        row.update(subject_id=sid, participant_id=sid if missing(participant) else str(participant).strip(),
                   path=str(path.resolve()), label=label, label_name=class_names[label])
        rows.append(row)
    # without rows the table keeps its columns, so leaving every subject out (--skip-bad) still works
    return (pd.DataFrame(rows) if rows else pd.DataFrame(columns=["subject_id", "participant_id", "path", "label",
                                                                  "label_name"])), problems


def _from_folders(root: Path, class_names) -> tuple[pd.DataFrame, list]:
    rows = []
    lowered = {c.lower(): i for i, c in enumerate(class_names)}
    found = sorted(p for p in root.iterdir() if p.is_dir())
    unknown = [p.name for p in found if p.name.lower() not in lowered]
    for sub in found:
        if sub.name.lower() not in lowered:
            continue
        label = lowered[sub.name.lower()]
        for path in sorted(sub.iterdir()):
            if path.name.endswith(NIFTI_SUFFIXES):
                sid = subject_stem(path)
                rows.append(dict(subject_id=sid, participant_id=sid, path=str(path.resolve()), label=label,
                                 label_name=class_names[label]))
    if not rows:
        extra = f" (found folders: {', '.join(unknown)})" if unknown else ""
        raise HeimerError(
            f"{root} has neither manifest.csv nor NIfTI files in class folders "
            f"{'/'.join(class_names)}{extra}; use ROOT/<class>/*.nii.gz or a CSV manifest with path,label"
        )
    return pd.DataFrame(rows), []


def read_cohort(data, class_names, *, skip_bad: bool = False, settle: bool = True, caps=None,
                label_column: str | None = None, label_map=None) -> Cohort:
    """Read a manifest (CSV path or DataFrame), class folders, a BIDS root or a ClinicaDL TSV
    with ``caps`` into a Cohort, without reading voxels. Problems are collected for every
    subject and settled here (stop, or leave out with ``skip_bad``), or, with ``settle=False``,
    kept in ``pending`` for :func:`validate` to report together with its own.

    ``label_column``: the label's column (default ``label`` in a manifest, ``diagnosis`` in a
    BIDS ``participants.tsv`` / ``sessions.tsv`` or a ClinicaDL TSV). ``label_map``: source label
    -> class name (``"Dementia=AD,Control=CN"`` or a dict). Scans of a BIDS or CAPS cohort whose
    label is no model class (MCI, missing, ...) go to ``excluded`` with the reason; in a manifest
    such a label is a problem, as any other."""
    class_names = list(class_names)
    label_map = check_label_map(parse_label_map(label_map), class_names)
    excluded: list = []
    if caps is not None or layouts.is_clinicadl_tsv(data):
        found = layouts.read_clinicadl(data, caps, class_names, label_column or layouts.LABEL_COLUMN, label_map)
        table, problems, excluded, source = found
    elif isinstance(data, pd.DataFrame):
        source = "the data frame"
        table, problems = _from_manifest(data, Path.cwd(), source, class_names, label_map, label_column)
    else:
        path = Path(data)
        if not path.exists():
            raise HeimerError(f"data {str(data)!r} does not exist; pass a CSV manifest or a folder (ROOT/<class>/*.nii.gz "
                              "or a BIDS root), or a ClinicaDL TSV with --caps")
        if path.is_dir() and (path / "manifest.csv").is_file():
            path = path / "manifest.csv"
        source = str(path)
        if path.is_dir() and (path / layouts.PARTICIPANTS).is_file():
            table, problems, excluded = layouts.read_bids(path, class_names, label_column or layouts.LABEL_COLUMN,
                                                          label_map)
        elif path.is_dir():
            table, problems = _from_folders(path, class_names)
        else:
            try:
                frame = pd.read_csv(path, dtype={"subject_id": str, "participant_id": str, "session_id": str})
                if "subject_id" in frame.columns:  # ids such as "NA" or "nan" are ids, not missing values
                    frame["subject_id"] = pd.read_csv(path, usecols=["subject_id"], dtype=str, keep_default_na=False,
                                                      na_values=[""])["subject_id"]
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
                raise HeimerError(f"manifest {path} is not a readable CSV ({one_line(e, with_type=False)})") from None
            table, problems = _from_manifest(frame, path.parent, source, class_names, label_map, label_column)
    if len(table):
        dupes = table["subject_id"][table["subject_id"].duplicated(keep=False)]
        for sid in sorted(set(dupes)):
            problems.append((sid, "", f"subject_id {sid!r} appears {int((dupes == sid).sum())} times; ids must be unique"))
        table = table[~table["subject_id"].isin(set(dupes))].reset_index(drop=True)
        layouts.require_one_class_per_participant(table, source)
    layouts.require_scans(table, problems, excluded, source)
    covariates = [c for c in table.columns if c not in ID_COLUMNS]
    cohort = Cohort(table=table, class_names=class_names, source=source, covariates=covariates,
                    excluded=pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS))
    if not settle:
        cohort.pending = problems
        return cohort
    return settle_problems(cohort, problems, skip_bad)
