"""Checking a cohort's files: each NIfTI header up front (cheap: no voxel data is read), the voxels
when a volume is loaded (non-finite or all-zero volumes, a corrupt gzip stream)."""

from __future__ import annotations

import gzip
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from ..errors import HeimerError, one_line
from ..meta import ModelMeta
from .table import Cohort, settle_problems

# A header claiming more voxels than this is refused before anything is allocated
# (a 1 mm whole-head scan is ~ 1.6e7 voxels; this allows 16x that).
MAX_VOXELS = 256 * 1024 * 1024


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
    cohort = settle_problems(cohort, problems, skip_bad)
    if len(cohort) == 0:
        raise HeimerError(f"no usable subjects in {cohort.source}")
    return cohort


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
