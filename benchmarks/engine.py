"""Throughput and memory of the evaluation engine (a benchmark, not a test).

One cohort on disk (.nii.gz), one model, one run of each, side by side:

- loader only: read, decompress, preprocess, collate, move to the device;
- floor: loader + forward + gradient of the positive score to the target activation;
- full engine: ``run_engine`` with its defaults (stats, gallery, CAM shares, sanity check);
- seed style: a separate inference pass for metrics, MONAI GradCAM per batch (full backward
  into the parameters), a separate feature-map pass that also sums the inputs (the seed's raw
  mean(AD - CN)); it computes less than the engine (no squares, outcome groups, shares, sanity);

then full / floor and seed / full, and the peak resident memory of the full engine for N=64 and
N=256 subjects, each in its own process. Targets: full / floor <= 1.15, seed / full >= 3,
peak(256) / peak(64) <= 1.10.

Then the counterfactual pass (``engine.counterfactual``) on the first ``--cf-subjects`` subjects
(default 16) with the cohort's 4 atlas regions: N x (4 + 10) forward passes of intervened inputs,
against the inference floor that does the same number of forward passes (batched, ``no_grad``,
the subjects read once, no masks, no replacement). Target: counterfactual / floor <= 1.1 per
forward pass. ``--counterfactual-only`` writes (or reuses) only those subjects and measures only
this, e.g. for the 1 mm preset on a CPU: ``--preset t1-linear --counterfactual-only --cf-subjects 2``.

    python benchmarks/engine.py [--subjects 256] [--width 32] [--device auto|cpu|cuda[:i]] [--amp bf16|fp16]

Defaults: 256 subjects at 2 mm and DemoCNN width 32 (32-64-128 channels, the scale of published
3D CNNs for AD/CN). The demo's width-8 model is a toy sized to train on two CPU cores: with it
every phase on a small CPU machine waits on NIfTI decompression (``--width 8`` shows that).

``--preset t1-linear`` measures inputs as Clinica's ``t1-linear`` pipeline writes them: the 1 mm
synthetic cohort cropped centrally to 169x208x179 (the affine follows the crop), MONAI's
``resnet18`` (33 M parameters; target layer: its last Conv3d), 16 subjects, batch 1, peak memory
at N=16 and N=64, and, before the timed phases, the loader over the same scans stored as
``.nii.gz``, as uncompressed ``.nii``, both again with scanner-like noise added (real scans are
noisy everywhere: they compress little and give the brain mask no clean border), and as a tensor
store (one ``.npy`` per scan after intensity normalisation, plus its brain mask, memory-mapped),
against the model's compute per scan. So that it fits a small CPU (about 30 s per scan for
resnet18 on two cores), the seed style is timed on 4 subjects and scaled to N, and the full
engine's time is that of the N=16 memory run (``--seed-subjects 16`` and
``--no-full-from-memory-run`` time them as the default run does). Any flag given explicitly
overrides the preset's value.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from heimer_mlflow.cohort import CohortDataset, make_loader, read_cohort
from heimer_mlflow.demo import synthetic
from heimer_mlflow.demo.nets import DemoCNN
from heimer_mlflow.engine import pick_device, resolve_layer, run_engine
from heimer_mlflow.engine.run import AMP_DTYPES
from heimer_mlflow.meta import ModelMeta

MEMORY_SIZES = (64, 256)
# Clinica t1-linear: MNI152NLin2009cSym at 1 mm, cropped to this grid.
T1_LINEAR_SHAPE = (169, 208, 179)
PRESETS = {
    "t1-linear": dict(voxel_size=1.0, crop=",".join(map(str, T1_LINEAR_SHAPE)), model="resnet18", subjects=16,
                      memory_sizes="16,64", batch_size=1, warmup_subjects=1, formats=True, seed_subjects=4,
                      full_from_memory_run=True),
}


def write_cohort(folder: Path, n: int, voxel_size: float, crop: tuple[int, int, int] | None = None) -> Path:
    manifest = Path(synthetic.write_cohort(folder, n_subjects=n, voxel_size=voxel_size, progress=False))
    return crop_cohort(manifest, crop) if crop else manifest


def crop_cohort(manifest: Path, shape: tuple[int, int, int]) -> Path:
    """Crop every image of ``manifest`` centrally to ``shape`` (as t1-linear crops MNI space), in
    place; nibabel's slicer moves the affine's origin with the crop, so world coordinates hold.
    Only the images: the benchmark reads neither the masks nor the atlas."""
    table = pd.read_csv(manifest, dtype={"subject_id": str})
    for path in table["path"]:
        image = nib.load(manifest.parent / path)
        if image.shape[:3] == tuple(shape):  # cropped by an earlier, interrupted run on this --cohort
            continue
        if any(want > have for want, have in zip(shape, image.shape)):
            raise SystemExit(f"cannot crop {image.shape} to {shape}: choose a smaller --voxel-size or --crop")
        start = [(have - want) // 2 for want, have in zip(shape, image.shape)]
        cropped = image.slicer[tuple(slice(a, a + n) for a, n in zip(start, shape))]
        out = nib.Nifti1Image(np.asarray(cropped.dataobj), cropped.affine, cropped.header)
        out.set_qform(cropped.affine, code=int(image.header["qform_code"]))
        out.set_sform(cropped.affine, code=int(image.header["sform_code"]))
        nib.save(out, manifest.parent / path)
    return manifest


def subset_manifest(manifest: Path, n: int) -> Path:
    path = manifest.with_name(f"manifest_{n}.csv")
    pd.read_csv(manifest, dtype={"subject_id": str}).head(n).to_csv(path, index=False)
    return path


def build_model(args) -> tuple[torch.nn.Module, str | None]:
    """The model and its target layer (None: the engine's default, the last Conv3d)."""
    torch.manual_seed(0)
    if args.model == "resnet18":
        from monai.networks.nets import resnet18

        return resnet18(spatial_dims=3, n_input_channels=1, num_classes=2), None
    return DemoCNN(n_outputs=2, width=args.width), "features.4.0"


def setup(manifest: Path, args):
    device = pick_device(args.device)
    cohort = read_cohort(manifest, ["CN", "AD"])
    shape = nib.load(cohort.table["path"][0]).shape[:3]
    model, target_layer = build_model(args)
    meta = ModelMeta(input_shape=[1, *shape], intensity="zscore", target_layer=target_layer)
    model = model.to(device).eval()
    return device, meta, model, loader_for(CohortDataset(cohort, meta), args, device)


def loader_for(dataset, args, device):
    return make_loader(dataset, batch_size=args.batch_size, workers=args.workers, device=str(device))


# --------------------------------------------------------------------------- storage formats


def uncompressed_copy(manifest: Path) -> Path:
    """The cohort with every ``.nii.gz`` gunzipped to ``.nii`` beside it (what ``gunzip -k`` does)."""
    table = pd.read_csv(manifest, dtype={"subject_id": str})
    for path in table["path"]:
        target = manifest.parent / path[: -len(".gz")]
        with gzip.open(manifest.parent / path, "rb") as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 22)
    table["path"] = table["path"].str[: -len(".gz")]
    table.to_csv(manifest.with_name(manifest.stem + "_nii.csv"), index=False)
    return manifest.with_name(manifest.stem + "_nii.csv")


class TensorStore(torch.utils.data.Dataset):
    """A cached tensor store: each scan as ``.npy`` after loading, brain mask and intensity
    normalisation (the loader's whole work), read memory-mapped. The items are those of the
    CohortDataset it was written from."""

    def __init__(self, folder: Path, source: CohortDataset):
        self.folder, self.labels, self.subject_ids = folder, source.labels, source.subject_ids
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(len(source)):
            item = source[i]
            np.save(folder / f"{i}_image.npy", item["image"].numpy())
            np.save(folder / f"{i}_mask.npy", item["brain_mask"].numpy())
            np.save(folder / f"{i}_affine.npy", item["affine"].numpy())

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        def read(part):  # copied out of the map: a batch is collated from writable arrays
            return torch.from_numpy(np.array(np.load(self.folder / f"{i}_{part}.npy", mmap_mode="r")))

        return {"image": read("image"), "label": self.labels[i], "subject_id": self.subject_ids[i],
                "affine": read("affine"), "brain_mask": read("mask"), "index": i, "problem": ""}  # fmt: skip


def with_scanner_noise(manifest: Path, relative_sd: float = 0.03) -> Path:
    """The cohort with magnitude noise in every voxel, |x + N(0, sd)| with sd 3% of the 90th
    percentile of the head, as a real scan has in its background. The synthetic images' constant
    background compresses about 3x and gives the brain mask a clean border; real scans do neither."""
    table = pd.read_csv(manifest, dtype={"subject_id": str})
    (manifest.parent / "noisy").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i, path in enumerate(table["path"]):
        image = nib.load(manifest.parent / path)
        data = np.asarray(image.dataobj, dtype=np.float32)
        sd = relative_sd * float(np.percentile(data[data != 0], 90))
        noisy = np.abs(data + rng.normal(0.0, sd, data.shape).astype(np.float32))
        table.loc[i, "path"] = f"noisy/{Path(path).name}"
        nib.save(nib.Nifti1Image(noisy, image.affine, image.header), manifest.parent / table.loc[i, "path"])
    table.to_csv(manifest.with_name(manifest.stem + "_noisy.csv"), index=False)
    return manifest.with_name(manifest.stem + "_noisy.csv")


def storage_formats(manifest: Path, meta: ModelMeta, args, device) -> dict[str, torch.utils.data.DataLoader]:
    """Loaders over the same scans as .nii.gz, .nii and a tensor store, and over .nii.gz and
    .nii with scanner noise added, all with the engine's loader settings."""
    started = time.perf_counter()
    noisy = with_scanner_noise(manifest)
    gz_set = CohortDataset(read_cohort(manifest, ["CN", "AD"]), meta)
    manifests = {".nii.gz": manifest, ".nii": uncompressed_copy(manifest), ".nii.gz, noisy": noisy,
                 ".nii, noisy": uncompressed_copy(noisy)}  # fmt: skip
    datasets = {name: CohortDataset(read_cohort(path, ["CN", "AD"]), meta) for name, path in manifests.items()}
    datasets["tensor store (.npy)"] = TensorStore(manifest.parent / "tensor_store", gz_set)
    print(f"wrote the copies and the tensor store in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return {name: loader_for(dataset, args, device) for name, dataset in datasets.items()}


def per_scan_seconds(dataset, n: int) -> float:
    """Seconds per scan of the loader's work in this process alone (no worker, nothing overlapped)."""
    start = time.perf_counter()
    for i in range(n):
        dataset[i]
    return (time.perf_counter() - start) / n


def autocast(device, amp):
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if amp else contextlib.nullcontext()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_only(model, loader, meta, device, amp):
    for batch in loader:
        batch["image"].to(device, non_blocking=True)
        batch["brain_mask"].to(device, non_blocking=True)


def floor(model, loader, meta, device, amp):
    """The least work that yields the same information: one forward, one gradient to the layer."""
    _, layer = resolve_layer(model, meta.target_layer)
    captured = {}
    handle = layer.register_forward_hook(lambda _m, _i, output: captured.update(activation=output))
    try:
        for batch in loader:
            x = batch["image"].to(device, non_blocking=True)
            with torch.enable_grad(), autocast(device, amp):
                logits = model(x)
                torch.autograd.grad(logits[:, meta.positive_index].float().sum(), captured["activation"])
            logits.detach().cpu()
    finally:
        handle.remove()


def full_engine(model, loader, meta, device, amp):
    return run_engine(model, loader, meta, device=str(device), amp=amp, progress=False)


def seed_style(model, loader, meta, device, amp):
    """Three passes as the seed scripts did: metrics, MONAI Grad-CAM, then feature maps and the
    raw input means. Only class means, as the seed drew them: the engine's t-maps, outcome groups,
    CAM shares and sanity check have no counterpart here."""
    from monai.visualize import GradCAM

    layer_path, layer = resolve_layer(model, meta.target_layer)
    with torch.no_grad(), autocast(device, amp):
        probs = [torch.softmax(model(b["image"].to(device)), 1)[:, meta.positive_index].cpu() for b in loader]
    gradcam = GradCAM(nn_module=model, target_layers=layer_path)
    cam_sums = {}
    for batch in loader:
        with autocast(device, amp):
            cams = gradcam(batch["image"].to(device), class_idx=meta.positive_index).detach().float().cpu().numpy()
        for label, cam in zip(batch["label"].tolist(), cams):
            cam_sums[label] = cam_sums.get(label, 0) + cam
    feature_sums, input_sums = {}, {}  # the feature-map pass also gives the raw mean(AD - CN)
    handle = layer.register_forward_hook(lambda _m, _i, output: feature_sums.update(last=output.float().cpu().numpy()))
    try:
        with torch.no_grad(), autocast(device, amp):
            for batch in loader:
                model(batch["image"].to(device))
                for label, activation, image in zip(batch["label"].tolist(), feature_sums["last"], batch["image"].numpy()):
                    feature_sums[label] = feature_sums.get(label, 0) + activation
                    input_sums[label] = input_sums.get(label, 0) + image
    finally:
        handle.remove()
    return probs, cam_sums, feature_sums, input_sums


def counterfactual_phases(manifest: Path, model, meta, args, device) -> None:
    """The counterfactual pass and its inference floor on the first ``--cf-subjects`` subjects,
    side by side (fastest of ``--repeats``), and their ratio per forward pass."""
    from heimer_mlflow.engine import GradCam3d
    from heimer_mlflow.engine.counterfactual import forward_passes, run_counterfactuals

    n = args.cf_subjects
    loader = subset_loader(manifest, n, meta, args, device)
    folder = manifest.parent
    labels = nib.load(folder / "atlas" / "atlas.nii.gz").get_fdata().astype(int)
    names = pd.read_csv(folder / "atlas" / "labels.csv")
    regions = {str(r["name"]): labels == int(r["index"]) for _, r in names.iterrows()}
    brain = np.asarray(nib.load(folder / "atlas" / "brain_mask.nii.gz").dataobj) > 0
    if tuple(labels.shape) != tuple(meta.input_shape[1:]):  # a cropped grid: the crop's centre
        regions, brain = {k: _centre_crop(v, meta.input_shape[1:]) for k, v in regions.items()}, _centre_crop(
            brain, meta.input_shape[1:])  # fmt: skip
    # untimed set-up: each subject's map on the target layer's grid, its score, the CN mean input
    gradcam, maps, prob, images, cn = GradCam3d(model, meta.target_layer), {}, {}, [], []
    for batch in loader:
        with autocast(device, args.amp):
            attribution = gradcam.attribute(batch["image"].to(device), meta.positive_index)
        for i, index in enumerate(batch["index"].tolist()):
            maps[index] = attribution.layer_maps["hirescam"][i].cpu().numpy()
            prob[index] = float(torch.softmax(attribution.logits[i], 0)[meta.positive_index])
            (cn if int(batch["label"][i]) != meta.positive_index else images).append(batch["image"][i])
    replacement = torch.stack(cn or images).mean(0).numpy()
    passes = forward_passes(n, len(regions))
    per_subject = passes // n

    def inference_floor(model, loader, meta, device, amp):
        """The same number of forward passes, batched, no_grad, each subject read once."""
        pending = []
        for batch in loader:
            for image in batch["image"]:
                pending += [image] * per_subject
            while len(pending) >= args.batch_size:
                with torch.no_grad(), autocast(device, amp):
                    model(torch.stack(pending[: args.batch_size]).to(device)).float().cpu()
                pending = pending[args.batch_size:]
        if pending:
            with torch.no_grad(), autocast(device, amp):
                model(torch.stack(pending).to(device)).float().cpu()

    def counterfactual(model, loader, meta, device, amp):
        run_counterfactuals(model, loader, layer_maps=maps, prob_before=prob, replacement=replacement,
                            positive=meta.positive_index, regions=regions, brain_mask=brain, device=device, amp=amp,
                            batch_size=args.batch_size)  # fmt: skip

    say(f"counterfactual pass: N={n} subjects x ({len(regions)} regions + 10) = {passes} forward passes, "
        f"batch {args.batch_size}")
    # The two phases take turns (floor, pass, floor, pass, ...) and each keeps its fastest: on a
    # shared machine a load that comes or goes mid-run then weighs on both alike.
    phases = {"inference floor (no_grad)": inference_floor, "counterfactual pass": counterfactual}
    times = {name: [] for name in phases}
    for _ in range(args.repeats):
        for name, phase in phases.items():
            times[name].append(timed(phase, model, loader, meta, device, args.amp))
    results = {name: (min(w for w, _ in runs), min(c for _, c in runs)) for name, runs in times.items()}
    for name, (wall, cpu) in results.items():
        say(f"{name:<28}{wall:>10.2f}{passes / wall:>12.2f}{cpu:>10.1f}   ({wall / passes:.3f} s per forward pass)")
    (floor_wall, floor_cpu), (cf_wall, cf_cpu) = results.values()
    say(f"counterfactual / inference floor = {cf_wall / floor_wall:.2f}, CPU time {cf_cpu / floor_cpu:.2f} "
        "(target <= 1.1 per forward pass)")


def _centre_crop(volume: np.ndarray, shape) -> np.ndarray:
    starts = [(a - b) // 2 for a, b in zip(volume.shape, shape)]
    return volume[tuple(slice(s, s + b) for s, b in zip(starts, shape))]


def timed(phase, *setup_args) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (all its threads; not the loader's workers).
    On a shared machine the wall time of one phase grows with the others' load; the CPU time of a
    compute-bound phase hardly does, so compare both."""
    device = setup_args[3]
    synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    phase(*setup_args)
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


def peak_memory_child(manifest: Path, args) -> dict:
    """Run the full engine once in this process and report its peak memory.

    Imports and set-up can peak higher than the run itself, so on Linux the high-water mark is
    reset just before the run (``/proc/self/clear_refs``) and read from VmHWM afterwards.
    """
    device, meta, model, loader = setup(manifest, args)
    if args.warmup_subjects:  # when its time is the full engine's, warm up as the in-process phases do
        full_engine(model, subset_loader(manifest, args.warmup_subjects, meta, args, device), meta, device, args.amp)
    peak = {"rss_before_run_mb": _status_mb("VmRSS")}
    reset = _reset_peak_rss()
    peak["run_s"], peak["run_cpu_s"] = timed(full_engine, model, loader, meta, device, args.amp)
    peak["peak_rss_mb"] = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="a bundle of the defaults below; flags given explicitly override it")  # fmt: skip
    parser.add_argument("--subjects", type=int, default=256,
                        help="subjects in the throughput runs (the sanity check's 8 subjects are a fixed cost)")  # fmt: skip
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the cohort loader's)")
    parser.add_argument("--voxel-size", type=float, default=2.0, help="mm; 2 gives the 91x109x91 MNI grid")
    parser.add_argument("--crop", default=None,
                        help="D,H,W: crop the cohort's images centrally to this grid "
                             "(t1-linear: 169,208,179 at 1 mm)")  # fmt: skip
    parser.add_argument("--model", choices=("democnn", "resnet18"), default="democnn",
                        help="democnn (--width) or MONAI's resnet18 (3D, 1 channel, 2 classes)")  # fmt: skip
    parser.add_argument("--width", type=int, default=32,
                        help="DemoCNN width: 32 gives 32-64-128 channels, the scale of published 3D CNNs for AD/CN; "
                             "the demo trains width 8, small enough to train on two CPU cores")  # fmt: skip
    parser.add_argument("--memory-sizes", default=",".join(map(str, MEMORY_SIZES)),
                        help="comma-separated N for the peak-memory runs; empty to skip")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="time each phase this many times, keep the fastest")
    parser.add_argument("--warmup-subjects", type=int, default=None,
                        help="subjects in the untimed warm-up pass of the full engine (default: all)")  # fmt: skip
    parser.add_argument("--formats", action=argparse.BooleanOptionalAction, default=False,
                        help="also time the loader over the same scans as .nii.gz and .nii (each also with noise added) "
                             "and as a tensor store")  # fmt: skip
    parser.add_argument("--formats-only", action="store_true",
                        help="time only the loader over the storage formats (no model): a quick re-check")  # fmt: skip
    parser.add_argument("--seed-subjects", type=int, default=None,
                        help="time the seed style on the first K subjects only and scale it to N (it has no "
                             "per-run cost: each of its passes is linear in N); default: all N")  # fmt: skip
    parser.add_argument("--full-from-memory-run", action=argparse.BooleanOptionalAction, default=False,
                        help="take the full engine's time from the peak-memory run at N (its own process, same "
                             "settings) instead of a second pass in this process; needs N in --memory-sizes")  # fmt: skip
    parser.add_argument("--cohort", type=Path, default=None, help="reuse this folder's cohort (else a temporary one)")
    parser.add_argument("--cf-subjects", type=int, default=16,
                        help="subjects of the counterfactual pass and its inference floor (default 16; 0: skip)")
    parser.add_argument("--counterfactual-only", action="store_true",
                        help="write (or reuse) only --cf-subjects subjects and time only the counterfactual pass")
    parser.add_argument("--peak-memory-of", type=Path, default=None, help=argparse.SUPPRESS)
    preset, _ = parser.parse_known_args(argv)
    if preset.preset:
        parser.set_defaults(**PRESETS[preset.preset])
    return parser.parse_args(argv)


def child_command(manifest: Path, args) -> list[str]:
    """This script, measuring the peak memory of one full-engine run with the same settings."""
    command = [sys.executable, __file__, "--peak-memory-of", str(manifest), "--device", args.device,
               "--batch-size", str(args.batch_size), "--width", str(args.width), "--model", args.model]  # fmt: skip
    command += ["--amp", args.amp] if args.amp else []
    command += ["--workers", str(args.workers)] if args.workers is not None else []
    if args.full_from_memory_run and args.warmup_subjects:  # its time is the full engine's: warm up alike
        command += ["--warmup-subjects", str(args.warmup_subjects)]
    return command


def say(text: str) -> None:
    print(text, flush=True)  # a long run shows each figure as it comes


def compare_formats(manifest: Path, meta, args, device) -> dict[str, float]:
    """Loader throughput over the same scans in three storage formats, side by side; returns
    each format's in-process seconds per scan."""
    loaders = storage_formats(manifest, meta, args, device)
    say(f"{'storage format':<24}{'loader s':>10}{'scans/s':>10}{'s/scan, 1 process':>20}")
    per_scan = {}
    for name, loader in loaders.items():
        seconds = min(timed(loader_only, None, loader, meta, device, args.amp)[0] for _ in range(args.repeats))
        per_scan[name] = per_scan_seconds(loader.dataset, min(len(loader.dataset), 4))
        say(f"{name:<24}{seconds:>10.2f}{len(loader.dataset) / seconds:>10.2f}{per_scan[name]:>20.3f}")
    return per_scan


def main():
    args = parse_args()
    if args.peak_memory_of is not None:
        print(json.dumps(peak_memory_child(args.peak_memory_of, args)))
        return

    memory_sizes = [int(n) for n in args.memory_sizes.split(",") if n]
    crop = tuple(int(n) for n in args.crop.split(",")) if args.crop else None
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.cohort or Path(tmp)
        manifest = folder / "manifest.csv"
        if args.counterfactual_only:
            args.subjects, memory_sizes = args.cf_subjects, []
        if not manifest.exists():
            started = time.perf_counter()
            # a cohort has at least one AD and one CN subject, so at least 2 even for --cf-subjects 1
            manifest = write_cohort(folder, max([2, args.subjects, *memory_sizes]), args.voxel_size, crop)
            print(f"wrote the cohort in {time.perf_counter() - started:.0f} s: {folder}", file=sys.stderr)
        elif crop:
            crop_cohort(manifest, crop)
        device, meta, model, loader = setup(subset_manifest(manifest, args.subjects), args)
        shape = "x".join(map(str, meta.input_shape[1:]))
        described = f"DemoCNN width {args.width}" if args.model == "democnn" else "MONAI resnet18"
        say(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
            f"amp {args.amp}, N={args.subjects}, grid {shape}, batch {args.batch_size}, "
            f"workers {loader.num_workers}, threads {torch.get_num_threads()}, {described}, torch {torch.__version__}")  # fmt: skip
        if args.counterfactual_only:
            counterfactual_phases(manifest, model, meta, args, device)
            return
        per_scan = {}
        if args.formats or args.formats_only:
            per_scan = compare_formats(subset_manifest(manifest, args.subjects), meta, args, device)
        if args.formats_only:
            return
        phases = {"loader only": loader_only, "floor (load+forward+grad)": floor, "full engine": full_engine,
                  "seed style": seed_style}  # fmt: skip
        if args.full_from_memory_run:
            if args.subjects not in memory_sizes:
                raise SystemExit("--full-from-memory-run needs --subjects among --memory-sizes")
            del phases["full engine"]
        # warm-up: file cache, allocator, kernels
        full_engine(model, subset_loader(manifest, args.warmup_subjects, meta, args, device) or loader, meta, device,
                    args.amp)  # fmt: skip
        seed_loader = subset_loader(manifest, args.seed_subjects, meta, args, device)
        say(f"{'phase':<28}{'seconds':>10}{'subjects/s':>12}{'CPU s':>10}")
        seconds, cpu = {}, {}
        for name, phase in phases.items():
            on, scale = (loader, 1)
            if name == "seed style" and seed_loader:
                on, scale = seed_loader, args.subjects / args.seed_subjects
            wall, cpu[name] = min(timed(phase, model, on, meta, device, args.amp) for _ in range(args.repeats))
            seconds[name], cpu[name] = scale * wall, scale * cpu[name]
            scaled = f"  (timed on {args.seed_subjects} subjects, x{scale:g})" if scale != 1 else ""
            say(f"{name:<28}{seconds[name]:>10.2f}{args.subjects / seconds[name]:>12.2f}{cpu[name]:>10.1f}{scaled}")
        if "full engine" in seconds:
            print_ratios(seconds, cpu, per_scan, args)
        if args.cf_subjects:
            counterfactual_phases(manifest, model, meta, args, device)

        peaks = {}
        for n in memory_sizes:
            result = subprocess.run(child_command(subset_manifest(manifest, n), args), check=True,
                                    capture_output=True, text=True)  # fmt: skip
            peaks[n] = json.loads(result.stdout)
            say(f"peak memory N={n}: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks[n].items()))
            if n == args.subjects and "full engine" not in seconds:
                seconds["full engine"], cpu["full engine"] = peaks[n]["run_s"], peaks[n]["run_cpu_s"]
                say(f"{'full engine (own process)':<28}{seconds['full engine']:>10.2f}"
                    f"{args.subjects / seconds['full engine']:>12.2f}{cpu['full engine']:>10.1f}")  # fmt: skip
                print_ratios(seconds, cpu, per_scan, args)
        if len(memory_sizes) == 2:
            small, large = (peaks[n]["peak_rss_mb"] for n in memory_sizes)
            say(f"peak RSS N={memory_sizes[1]} / N={memory_sizes[0]} = {large / small:.3f} (target <= 1.10)")


def subset_loader(manifest: Path, n: int | None, meta, args, device):
    """A loader over the first ``n`` subjects; None when ``n`` is None (use the whole loader)."""
    if n is None:
        return None
    return loader_for(CohortDataset(read_cohort(subset_manifest(manifest, n), ["CN", "AD"]), meta), args, device)


def print_ratios(seconds: dict[str, float], cpu: dict[str, float], per_scan: dict[str, float], args) -> None:
    full, floor_s = seconds["full engine"], seconds["floor (load+forward+grad)"]
    full_cpu, floor_cpu = cpu["full engine"], cpu["floor (load+forward+grad)"]
    say(f"full / floor = {full / floor_s:.2f}, CPU time {full_cpu / floor_cpu:.2f} (target <= 1.15)")
    say(f"seed / full  = {seconds['seed style'] / full:.2f}, CPU time {cpu['seed style'] / full_cpu:.2f} (target >= 3)")
    if per_scan:
        # On a small CPU the loader's worker takes cores from the model, so the loader's own
        # work per scan is what a faster format can save at most in the engine pass.
        pass_per_scan = floor_s / args.subjects
        shares = ", ".join(f"{name} {s:.3f} s ({s / pass_per_scan:.2%} of it)" for name, s in per_scan.items())
        say(f"floor per scan (load + forward + gradient) {pass_per_scan:.2f} s; loader work per scan in one process: "
            + shares)  # fmt: skip


if __name__ == "__main__":
    main()
