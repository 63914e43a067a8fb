"""Cohorts as teams keep them, read into the subject table of :mod:`heimer_mlflow.cohort` (one row
per scan); :func:`heimer_mlflow.cohort.read_cohort` stays the one entry point.

- A BIDS dataset root (a folder with ``participants.tsv``): every
  ``sub-<P>/[ses-<S>/]anat/sub-<P>[_ses-<S>][_<entities>]_T1w.nii[.gz]`` is one scan. Only the
  ``sub-*`` folders are read, so ``derivatives/`` and ``sourcedata/`` never are. The label is the
  ``participants.tsv`` column ``label_column`` (default ``diagnosis``) or, per session, that of
  ``sub-<P>/sub-<P>_sessions.tsv`` when that file has the column; the other columns of
  ``participants.tsv`` are covariates.
- A ClinicaDL TSV (``participant_id``, ``session_id``, ``diagnosis``; other columns are covariates)
  over a CAPS folder: each row's scan is the output of Clinica's / ClinicaDL's ``t1-linear``,
  ``CAPS/subjects/sub-<P>/ses-<S>/t1_linear/sub-<P>_ses-<S>[_<entities>]_T1w_`` +
  ``space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz``: the cropped image (169x208x179,
  1 mm) that ClinicaDL trains on by default. Clinica's own query for it is
  ``t1_linear/sub-*_ses-*_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii*``.

A scan's ``subject_id`` is unique in the cohort (``sub-01_ses-M00``), its ``participant_id`` names
the person (``sub-01``) and ``session_id`` the visit. A scan whose label maps to no model class
(MCI, sMCI, pMCI, a missing diagnosis) is excluded with its reason, never silently: the run and the
report list it. A problem with a scan's file (none there, only the uncropped image) is a problem
like any other: it stops the run, or with --skip-bad it is listed the same way.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from .cohort.table import ID_COLUMNS, NIFTI_SUFFIXES, label_index, missing, subject_stem
from .errors import HeimerError, one_line

PARTICIPANTS = "participants.tsv"
LABEL_COLUMN = "diagnosis"  # BIDS and ClinicaDL's name for it
T1_LINEAR_CROPPED = "space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w"
T1_LINEAR_UNCROPPED = "space-MNI152NLin2009cSym_res-1x1x1_T1w"
CLINICADL_COLUMNS = ("participant_id", "session_id")
MAX_SHOWN = 5


# --------------------------------------------------------------------------- shared


def _prefixed(value, prefix: str) -> str:
    """``sub-01`` from ``01`` or ``sub-01`` (TSVs written by hand often drop the prefix)."""
    text = str(value).strip()
    return text if text.startswith(prefix) else prefix + text


def _read_tsv(path: Path, label_column: str) -> pd.DataFrame:
    """A BIDS/ClinicaDL table: tab-separated (comma-separated when named ``.csv``), ``n/a`` for a
    missing value, ids and labels as text."""
    try:
        frame = pd.read_csv(path, sep="," if path.suffix.lower() == ".csv" else "\t", na_values=["n/a"],
                            dtype={"participant_id": str, "session_id": str, label_column: str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise HeimerError(f"{path} is not a readable table ({one_line(e, with_type=False)}); "
                          "write it tab-separated with a header row") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _not_a_class(column: str, value, class_names: list[str]) -> str:
    """Why a scan is excluded for its label."""
    if missing(value):
        return f"{column} is missing"
    return f"{column} {str(value).strip()!r} is not a model class ({', '.join(class_names)}; see --label-map)"


def _table(rows: list[dict], covariates: list[str]) -> pd.DataFrame:
    columns = ["subject_id", "participant_id", "session_id", "path", "label", "label_name", *covariates]
    return pd.DataFrame(rows, columns=columns)


def require_one_class_per_participant(table: pd.DataFrame, source: str) -> None:
    """A person is AD or CN in one evaluation: scans of one participant in two classes would put
    the same brain on both sides of every comparison (and of the cluster bootstrap)."""
    if "participant_id" not in table.columns or not len(table):
        return
    classes = table.groupby("participant_id", sort=False)["label_name"].nunique()
    mixed = classes.index[classes > 1].tolist()
    if not mixed:
        return
    rows = table[table["participant_id"] == mixed[0]]
    sessions = rows["session_id"] if "session_id" in rows.columns else rows["subject_id"]
    scans = ", ".join(f"{sid if missing(ses) else ses}: {name}"
                      for sid, ses, name in zip(rows["subject_id"], sessions, rows["label_name"]))
    more = (f"; so do {len(mixed) - 1} more: {', '.join(map(str, mixed[1:1 + MAX_SHOWN]))}"
            f"{', ...' if len(mixed) > 1 + MAX_SHOWN else ''}") if len(mixed) > 1 else ""
    raise HeimerError(
        f"participant {mixed[0]} has scans in two classes ({scans}) in {source}{more}; a participant belongs "
        "to one class: list only the sessions of one class for it (e.g. its baseline session)"
    )


def exclusion_summary(excluded: pd.DataFrame, source: str) -> str:
    """One line: how many scans were left out and why, the commonest reasons first."""
    reasons = Counter(excluded["reason"].astype(str))
    shown = "; ".join(f"{reason} ({n})" for reason, n in reasons.most_common(MAX_SHOWN))
    more = f"; {len(reasons) - MAX_SHOWN} other reason(s)" if len(reasons) > MAX_SHOWN else ""
    return f"{len(excluded)} scan(s) of {source} left out: {shown}{more}"


def require_scans(table: pd.DataFrame, problems: list, excluded: list, source: str) -> None:
    """A cohort whose every scan was excluded for its label is a user error (the column or the map)."""
    if len(table) or problems or not excluded:
        return
    frame = pd.DataFrame(excluded, columns=["subject_id", "path", "reason"])
    raise HeimerError(f"no scan of {source} has a label that is a model class: {exclusion_summary(frame, source)}; "
                      "name the label column with --label-column or map the labels with --label-map")


# --------------------------------------------------------------------------- ClinicaDL TSV + CAPS


def is_clinicadl_tsv(data) -> bool:
    """A data frame with participant_id and session_id but no path, or any ``.tsv`` file."""
    if isinstance(data, pd.DataFrame):
        return set(CLINICADL_COLUMNS) <= set(data.columns) and "path" not in data.columns
    path = Path(data)
    return path.suffix.lower() == ".tsv" and path.is_file()


def read_clinicadl(data, caps, class_names: list[str], label_column: str, label_map: dict[str, str]):
    """(table, problems, excluded, source) of a ClinicaDL TSV (path or data frame) over ``caps``."""
    frame, source = _clinicadl_frame(data, caps, label_column)
    caps_dir = Path(caps)
    if not (caps_dir / "subjects").is_dir():
        raise HeimerError(f"--caps {caps} has no subjects/ folder; give the CAPS root that t1-linear wrote "
                          "(CAPS/subjects/sub-*/ses-*/t1_linear/)")
    absent = [c for c in (*CLINICADL_COLUMNS, label_column) if c not in frame.columns]
    if absent:
        raise HeimerError(
            f"ClinicaDL TSV {source} lacks the column(s) {', '.join(absent)} (has: "
            f"{', '.join(map(str, frame.columns)) or 'none'}); it needs participant_id, session_id and the label "
            f"column {label_column!r} (name another with --label-column)"
        )
    covariates = [c for c in frame.columns if c not in (*CLINICADL_COLUMNS, label_column, *ID_COLUMNS)]
    rows, problems, excluded = [], [], []
    for i, rec in enumerate(frame.to_dict("records")):
        if missing(rec["participant_id"]) or missing(rec["session_id"]):
            problems.append((f"row {i + 2}", "", "participant_id or session_id is empty"))
            continue
        pid, ses = _prefixed(rec["participant_id"], "sub-"), _prefixed(rec["session_id"], "ses-")
        sid = f"{pid}_{ses}"
        path, problem = t1_linear_image(caps_dir, pid, ses)
        label = label_index(rec[label_column], class_names, label_map)
        if label is None:
            excluded.append((sid, "" if problem else str(path), _not_a_class(label_column, rec[label_column], class_names)))
        elif problem:
            problems.append((sid, str(path), problem))
        else:
            rows.append({"subject_id": sid, "participant_id": pid, "session_id": ses, "path": str(path.resolve()),
                         "label": label, "label_name": class_names[label], **{c: rec[c] for c in covariates}})
    return _table(rows, covariates), problems, excluded, source


def _clinicadl_frame(data, caps, label_column: str) -> tuple[pd.DataFrame, str]:
    """The TSV's table and how to name it; one line for a TSV without --caps and the reverse."""
    if isinstance(data, pd.DataFrame):
        if caps is None:
            raise HeimerError("the data frame looks like a ClinicaDL TSV (participant_id, session_id, no path): "
                              "pass --caps DIR (caps=... in Python), the CAPS folder with its t1-linear images")
        return data, "the data frame"
    path = Path(data)
    if caps is None:
        if path.name == PARTICIPANTS:
            raise HeimerError(f"{path} is a BIDS participants table: pass the BIDS root {path.parent} as --data")
        raise HeimerError(f"{path} is a ClinicaDL-style TSV: pass --caps DIR, the CAPS folder whose "
                          "subjects/sub-*/ses-*/t1_linear/ holds its images")
    if not path.is_file():
        kind = "is a folder" if path.is_dir() else "does not exist"
        raise HeimerError(f"--caps {caps} goes with a ClinicaDL TSV in --data (participant_id, session_id, "
                          f"{label_column}); {data} {kind}")
    return _read_tsv(path, label_column), str(path)


def t1_linear_image(caps: Path, participant: str, session: str) -> tuple[Path, str | None]:
    """(the session's cropped t1-linear image, None), or (what was found or expected, why not)."""
    folder = caps / "subjects" / participant / session / "t1_linear"
    expected = folder / f"{participant}_{session}_T1w_{T1_LINEAR_CROPPED}.nii.gz"
    cropped = _t1_linear_files(folder, participant, session, T1_LINEAR_CROPPED)
    if len(cropped) == 1:
        return cropped[0], None
    if cropped:
        return cropped[0], (f"{len(cropped)} cropped t1-linear images in {folder} "
                            f"({', '.join(p.name for p in cropped)}); keep one per session")
    uncropped = _t1_linear_files(folder, participant, session, T1_LINEAR_UNCROPPED)
    if uncropped:
        return uncropped[0], (f"only the uncropped t1-linear image is there ({uncropped[0].name}); the cropped "
                              f"one ({expected.name}) is read: run t1-linear without --uncropped_image")
    return expected, f"no t1-linear image: {expected} not found (run t1-linear on this session)"


def _t1_linear_files(folder: Path, participant: str, session: str, suffix: str) -> list[Path]:
    """``sub-P_ses-S[_entities]_<suffix>.nii[.gz]`` in ``folder`` (Clinica keeps the source's
    entities, ``_T1w`` among them, between the session and ``space-``)."""
    if not folder.is_dir():
        return []
    prefix, found = f"{participant}_{session}_", []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.startswith(prefix) and path.name.endswith(NIFTI_SUFFIXES):
            middle = subject_stem(path)[len(prefix):]
            if middle == suffix or middle.endswith(f"_{suffix}"):
                found.append(path)
    return found


# --------------------------------------------------------------------------- BIDS


def read_bids(root: Path, class_names: list[str], label_column: str, label_map: dict[str, str]):
    """(table, problems, excluded) of the BIDS dataset at ``root``."""
    participants = _read_tsv(root / PARTICIPANTS, label_column)
    if "participant_id" not in participants.columns:
        raise HeimerError(f"{root / PARTICIPANTS} has no participant_id column (has: "
                          f"{', '.join(participants.columns) or 'none'}); BIDS lists participants as sub-<label>")
    listed = {_prefixed(rec["participant_id"], "sub-"): rec
              for rec in participants.to_dict("records") if not missing(rec["participant_id"])}
    covariates = [c for c in participants.columns if c not in ("participant_id", label_column, *ID_COLUMNS)]
    labelled = label_column in participants.columns
    rows, excluded, scanned = [], [], set()
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("sub-")):
        pid = folder.name
        by_session = _session_labels(folder, pid, label_column)
        labelled |= by_session is not None
        for session, path in _t1w_images(folder, pid):
            scanned.add(pid)
            sid = subject_stem(path)[: -len("_T1w")]
            value = (by_session or {}).get(session)  # a session's own label comes first
            if missing(value):
                if pid not in listed:
                    excluded.append((sid, str(path.resolve()), f"participant {pid} is not listed in {PARTICIPANTS}"))
                    continue
                value = listed[pid].get(label_column)
            label = label_index(value, class_names, label_map)
            if label is None:
                excluded.append((sid, str(path.resolve()), _not_a_class(label_column, value, class_names)))
                continue
            rows.append({"subject_id": sid, "participant_id": pid, "session_id": session, "path": str(path.resolve()),
                         "label": label, "label_name": class_names[label],
                         **{c: listed.get(pid, {}).get(c) for c in covariates}})
    if not labelled:
        raise HeimerError(f"{root / PARTICIPANTS} has no column {label_column!r} (has: "
                          f"{', '.join(participants.columns)}) and no sub-*/sub-*_sessions.tsv has one; "
                          "name the diagnosis column with --label-column")
    if not scanned:
        raise HeimerError(f"BIDS dataset {root} has no T1w image (sub-<P>/[ses-<S>/]anat/"
                          "sub-<P>[_ses-<S>][_<entities>]_T1w.nii[.gz]); is it the dataset's root?")
    for pid in sorted(set(listed) - scanned):
        excluded.append((pid, "", f"participant {pid} of {PARTICIPANTS} has no T1w image under {pid}/[ses-*/]anat/"))
    return _table(rows, covariates), [], excluded


def _t1w_images(folder: Path, participant: str) -> list[tuple[str, Path]]:
    """(session, path) of every ``*_T1w.nii[.gz]`` in the participant's ``anat/`` folders
    (``session`` is "" in a dataset without sessions)."""
    places = [("", folder / "anat")]
    places += [(s.name, s / "anat") for s in sorted(folder.iterdir()) if s.is_dir() and s.name.startswith("ses-")]
    found = []
    for session, anat in places:
        if not anat.is_dir():
            continue
        prefix = f"{participant}_{session}_" if session else f"{participant}_"
        found += [(session, path) for path in sorted(anat.iterdir())
                  if path.is_file() and path.name.startswith(prefix) and path.name.endswith(NIFTI_SUFFIXES)
                  and subject_stem(path).endswith("_T1w")]
    return found


def _session_labels(folder: Path, participant: str, label_column: str) -> dict[str, object] | None:
    """session -> label from ``sub-<P>_sessions.tsv``, or None when it has no such column."""
    path = folder / f"{participant}_sessions.tsv"
    if not path.is_file():
        return None
    frame = _read_tsv(path, label_column)
    if "session_id" not in frame.columns or label_column not in frame.columns:
        return None
    return {_prefixed(s, "ses-"): v for s, v in zip(frame["session_id"], frame[label_column]) if not missing(s)}
