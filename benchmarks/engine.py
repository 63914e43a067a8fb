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

    python benchmarks/engine.py [--subjects 256] [--width 32] [--device auto|cpu|cuda[:i]] [--amp bf16|fp16]

Defaults: 256 subjects at 2 mm and DemoCNN width 32 (32-64-128 channels, the scale of published
3D CNNs for AD/CN). The demo's width-8 model is a toy sized to train on two CPU cores: with it
every phase on a small CPU machine waits on NIfTI decompression (``--width 8`` shows that).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import pandas as pd
import torch

from heimer_mlflow.cohort import CohortDataset, make_loader, read_cohort
from heimer_mlflow.demo import synthetic
from heimer_mlflow.demo.nets import DemoCNN
from heimer_mlflow.engine import pick_device, resolve_layer, run_engine
from heimer_mlflow.engine.run import AMP_DTYPES
from heimer_mlflow.meta import ModelMeta

MEMORY_SIZES = (64, 256)


def write_cohort(folder: Path, n: int, voxel_size: float) -> Path:
    return Path(synthetic.write_cohort(folder, n_subjects=n, voxel_size=voxel_size, progress=False))


def subset_manifest(manifest: Path, n: int) -> Path:
    path = manifest.with_name(f"manifest_{n}.csv")
    pd.read_csv(manifest, dtype={"subject_id": str}).head(n).to_csv(path, index=False)
    return path


def setup(manifest: Path, args):
    device = pick_device(args.device)
    cohort = read_cohort(manifest, ["CN", "AD"])
    shape = nib.load(cohort.table["path"][0]).shape[:3]
    meta = ModelMeta(input_shape=[1, *shape], intensity="zscore", target_layer="features.4.0")
    torch.manual_seed(0)
    model = DemoCNN(n_outputs=2, width=args.width).to(device).eval()
    loader = make_loader(CohortDataset(cohort, meta), batch_size=args.batch_size, workers=args.workers,
                         device=str(device))  # fmt: skip
    return device, meta, model, loader


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


def timed(phase, *setup_args):
    device = setup_args[3]
    synchronize(device)
    start = time.perf_counter()
    phase(*setup_args)
    synchronize(device)
    return time.perf_counter() - start


def peak_memory_child(manifest: Path, args) -> dict:
    """Run the full engine once in this process and report its peak memory.

    Imports and set-up can peak higher than the run itself, so on Linux the high-water mark is
    reset just before the run (``/proc/self/clear_refs``) and read from VmHWM afterwards.
    """
    device, meta, model, loader = setup(manifest, args)
    peak = {"rss_before_run_mb": _status_mb("VmRSS")}
    reset = _reset_peak_rss()
    full_engine(model, loader, meta, device, args.amp)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=256,
                        help="subjects in the throughput runs (the sanity check's 8 subjects are a fixed cost)")  # fmt: skip
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the cohort loader's)")
    parser.add_argument("--voxel-size", type=float, default=2.0, help="mm; 2 gives the 91x109x91 MNI grid")
    parser.add_argument("--width", type=int, default=32,
                        help="DemoCNN width: 32 gives 32-64-128 channels, the scale of published 3D CNNs for AD/CN; "
                             "the demo trains width 8, small enough to train on two CPU cores")  # fmt: skip
    parser.add_argument("--memory-sizes", default=",".join(map(str, MEMORY_SIZES)),
                        help="comma-separated N for the peak-memory runs; empty to skip")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="time each phase this many times, keep the fastest")
    parser.add_argument("--cohort", type=Path, default=None, help="reuse this folder's cohort (else a temporary one)")
    parser.add_argument("--peak-memory-of", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.peak_memory_of is not None:
        print(json.dumps(peak_memory_child(args.peak_memory_of, args)))
        return

    memory_sizes = [int(n) for n in args.memory_sizes.split(",") if n]
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.cohort or Path(tmp)
        manifest = folder / "manifest.csv"
        if not manifest.exists():
            started = time.perf_counter()
            manifest = write_cohort(folder, max([args.subjects, *memory_sizes]), args.voxel_size)
            print(f"wrote the cohort in {time.perf_counter() - started:.0f} s: {folder}", file=sys.stderr)
        device, meta, model, loader = setup(subset_manifest(manifest, args.subjects), args)
        shape = "x".join(map(str, meta.input_shape[1:]))
        print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
              f"amp {args.amp}, N={args.subjects}, grid {shape}, batch {args.batch_size}, "
              f"workers {loader.num_workers}, DemoCNN width {args.width}, torch {torch.__version__}")  # fmt: skip
        phases = {"loader only": loader_only, "floor (load+forward+grad)": floor, "full engine": full_engine,
                  "seed style": seed_style}  # fmt: skip
        full_engine(model, loader, meta, device, args.amp)  # warm-up: file cache, allocator, kernels
        seconds = {name: min(timed(phase, model, loader, meta, device, args.amp) for _ in range(args.repeats))
                   for name, phase in phases.items()}  # fmt: skip
        print(f"{'phase':<28}{'seconds':>10}{'subjects/s':>12}")
        for name, s in seconds.items():
            print(f"{name:<28}{s:>10.2f}{args.subjects / s:>12.1f}")
        full, floor_s = seconds["full engine"], seconds["floor (load+forward+grad)"]
        print(f"full / floor = {full / floor_s:.2f} (target <= 1.15)")
        print(f"seed / full  = {seconds['seed style'] / full:.2f} (target >= 3)")

        peaks = {}
        for n in memory_sizes:
            command = [sys.executable, __file__, "--peak-memory-of", str(subset_manifest(manifest, n)),
                       "--device", args.device, "--batch-size", str(args.batch_size), "--width", str(args.width)]
            command += ["--amp", args.amp] if args.amp else []
            command += ["--workers", str(args.workers)] if args.workers is not None else []
            peaks[n] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
            print(f"peak memory N={n}: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks[n].items()))
        if len(memory_sizes) == 2:
            small, large = (peaks[n]["peak_rss_mb"] for n in memory_sizes)
            print(f"peak RSS N={memory_sizes[1]} / N={memory_sizes[0]} = {large / small:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
