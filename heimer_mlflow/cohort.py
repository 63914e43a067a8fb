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
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from .errors import HeimerError, one_line
from .interrupts import quiet_worker
from .meta import ModelMeta

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# A header claiming more voxels than this is refused before anything is allocated
# (a 1 mm whole-head scan is ~ 1.6e7 voxels; this allows 16x that).
MAX_VOXELS = 256 * 1024 * 1024
MAX_SHOWN_PROBLEMS = 50
BORDER_NOISE_MADS = 6.0  # brain_mask: background noise reaches this many robust SDs above its median at most
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


def _label_index(value, class_names: list[str], label_map: dict[str, str] | None = None) -> int | None:
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
        label = _label_index(rec["label"], class_names, label_map)
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
                                                                  "label_name"])), problems  # fmt: skip


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
    from . import layouts

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
                                                          label_map)  # fmt: skip
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
    return _settle(cohort, problems, skip_bad)


def _settle(cohort: Cohort, problems, skip_bad: bool) -> Cohort:
    """Stop with every problem in one message, or drop the subjects and record why."""
    if not problems:
        return cohort
    if not skip_bad:
        raise CohortProblems(problems, cohort.source)
    bad = pd.DataFrame(problems, columns=EXCLUDED_COLUMNS)
    cohort.excluded = pd.concat([cohort.excluded, bad], ignore_index=True)
    cohort.table = cohort.table[~cohort.table["subject_id"].isin(set(bad["subject_id"]))].reset_index(drop=True)
    return cohort


def header_problem(path: str, expected_shape=None) -> str | None:
    """Why a NIfTI file cannot be used, judged from its header alone; None when it can."""
    p = Path(path)
    if not p.exists():
        return f"file not found: {path}"
    if not p.is_file():
        return f"not a file: {path}"
    try:
        img = nib.load(str(p))
    except Exception as e:  # nibabel raises many types for unreadable files
        return f"not a readable NIfTI file ({one_line(e, 500)})"
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        return f"not a NIfTI image (read as {type(img).__name__})"
    shape = tuple(int(s) for s in img.shape)
    if any(s <= 0 for s in shape) or int(np.prod(shape, dtype=np.float64)) > MAX_VOXELS:
        return f"header declares an implausible size {shape}"
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        return f"volume is {len(shape)}D with shape {shape}; a 3D volume is needed"
    if expected_shape is not None and tuple(expected_shape) != shape:
        return f"shape {shape} differs from the model input {tuple(expected_shape)}; resample the image to the model's grid"
    if not np.all(np.isfinite(img.affine)):
        return "affine has non-finite entries"
    return _truncation(p, img)


def _truncation(path: Path, img) -> str | None:
    """A file shorter than its header says, judged without decompressing in the common case:
    an uncompressed file by its size, a gzip file by its trailer (ISIZE, the uncompressed size
    mod 2**32); only a file whose trailer disagrees is streamed through to be sure (a
    multi-member gzip, e.g. from bgzip, has the last member's size there)."""
    header = img.header
    offset = int(getattr(img.dataobj, "offset", header.get_data_offset()))  # where the reader starts
    needed = offset + int(np.prod(img.shape, dtype=np.int64)) * header.get_data_dtype().itemsize
    if not path.name.endswith(".gz"):
        size = path.stat().st_size
        return f"file is truncated: {size} bytes, the header needs {needed}" if size < needed else None
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        trailer = int.from_bytes(f.read(4), "little")
    if trailer == needed % 2**32:
        return None
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as e:
        return f"compressed data is truncated or corrupt ({one_line(e, 500)})"
    return f"file is truncated: {total} bytes of image data, the header needs {needed}" if total < needed else None


def validate(cohort: Cohort, meta: ModelMeta, *, skip_bad: bool = False, progress: bool = False) -> Cohort:
    """Header-level validation of every subject against the model input; all problems are
    reported together (or, with ``skip_bad``, recorded in ``cohort.excluded``).

    When the run is going to stop anyway (problems found, no ``skip_bad``), the voxels of the
    other subjects are read too, so the one message lists every problem (NaN, all-zero, corrupt
    data) and the user fixes the cohort in one go."""
    expected = None
    if meta.input_shape is not None:
        if meta.input_shape[0] != 1:
            raise HeimerError(
                f"model input has {meta.input_shape[0]} channels; cohorts of 3D NIfTI volumes give 1"
            )
        expected = meta.input_shape[1:]
    problems, cohort.pending = list(cohort.pending), []
    fine = []
    for sid, path in zip(cohort.table["subject_id"], cohort.table["path"]):
        reason = header_problem(path, expected)
        if reason:
            problems.append((sid, path, reason))
        else:
            fine.append((sid, path))
    if problems and not skip_bad:
        problems += voxel_problems(fine, progress=progress)
    cohort = _settle(cohort, problems, skip_bad)
    if len(cohort) == 0:
        raise HeimerError(f"no usable subjects in {cohort.source}")
    return cohort


# --------------------------------------------------------------------------- voxels


def normalise_intensity(volume: np.ndarray, mode: str, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-volume intensity normalisation named by the model metadata.

    ``zscore``: mean and SD over the brain mask (all voxels when no mask), applied to every
    voxel, so what lies outside the brain keeps its contrast (a shortcut stays visible).
    ``minmax``: (x - min) / (max - min) over the whole volume. ``none``: unchanged.
    """
    x = volume.astype(np.float32, copy=False)
    if mode == "none":
        return x
    if mode == "zscore":
        inside = x[mask] if mask is not None and mask.any() else x
        sd = float(inside.std())
        return ((x - float(inside.mean())) / (sd if sd > 0 else 1.0)).astype(np.float32)
    if mode == "minmax":
        lo, hi = float(x.min()), float(x.max())
        return ((x - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)
    raise HeimerError(f"intensity {mode!r} is not supported; use zscore, minmax or none")


def brain_mask(volume: np.ndarray) -> np.ndarray:
    """Non-background voxels: those differing from the border's most common value by more than
    the border's own noise (the median deviation from that value plus ``BORDER_NOISE_MADS``
    robust SDs: robust to a border that cuts through the head, as a cropped scan's does; zero for
    a clean, zeroed background), largest connected component, holes filled. An artefact detached
    from the head stays outside. Without the noise floor a real scan's noisy background would all
    count as brain, and a map on the background would never look outside the brain."""
    border = np.concatenate([volume[[0, -1]].ravel(), volume[:, [0, -1]].ravel(), volume[..., [0, -1]].ravel()])
    values, counts = np.unique(border, return_counts=True)
    background = values[np.argmax(counts)]
    scale = max(float(np.abs(volume).max()), 1e-12)
    deviation = np.abs(border - background)
    typical = float(np.median(deviation))
    noise = typical + BORDER_NOISE_MADS * 1.4826 * float(np.median(np.abs(deviation - typical)))
    foreground = np.abs(volume - background) > max(1e-6 * scale, noise)
    labels, n = ndimage.label(foreground)
    if n == 0:
        return foreground
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


def _read_image(path: str):
    """The image of a NIfTI file. A gzip stream is read to its end, so its CRC-32 and length
    are checked: nibabel stops at the last voxel, before the trailer, and would read a corrupted
    stream that still inflates as if it were data."""
    if not str(path).endswith(".gz"):
        return nib.load(path)
    with gzip.open(path, "rb") as f:
        raw = f.read()
    sizeof_hdr = {int.from_bytes(raw[:4], order) for order in ("little", "big")}
    return (nib.Nifti2Image if 540 in sizeof_hdr else nib.Nifti1Image).from_bytes(raw)


def load_volume(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (float32, 3D) and affine of one NIfTI file; raises ValueError with the reason."""
    try:
        img = _read_image(path)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (gzip.BadGzipFile, zlib.error, EOFError) as e:
        raise ValueError(f"compressed data is truncated or corrupt ({one_line(e, 500)})") from None
    except Exception as e:  # a short uncompressed file, an unreadable data type, ...
        raise ValueError(f"voxel data cannot be read ({one_line(e, 500)})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{int((~np.isfinite(data)).sum())} voxels are NaN or infinite")
    if not np.any(data):
        raise ValueError("volume is all zeros")
    return data, img.affine.astype(np.float64)


def voxel_problems(subjects, *, progress: bool = False) -> list[tuple[str, str, str]]:
    """(subject_id, path, reason) for each (subject_id, path) whose voxels are unusable (threads:
    decompression releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    def check(item):
        try:
            load_volume(item[1])
        except (ValueError, OSError, EOFError) as e:
            return (item[0], item[1], one_line(e, with_type=False))
        return None

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        found = list(tqdm(pool.map(check, subjects), total=len(subjects), unit="subject", disable=not progress,
                          desc="checking every volume to list all problems"))
    return [f for f in found if f is not None]


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
