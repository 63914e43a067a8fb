"""Throughput of one engine pass sharded over processes (a benchmark, not a test).

One cohort on disk (.nii.gz, 2 mm: 91x109x91), the demo CNN, the engine as ``evaluate`` runs it
(atlas, sanity check, gallery), timed from a barrier after set-up to the merged result on rank 0
(pass + the failure check + merge), in 1 process and under ``torchrun --standalone`` with P
processes (gloo on CPU, NCCL on GPUs), each process limited to its share of the cores
(``torch.set_num_threads(cores // P)``, one DataLoader worker each by default). A third row, 1
process with only cores // P threads, separates the gain of sharding from that of fewer threads
per process (on busy cores OpenMP threads wait for each other). Prints the throughputs and their
ratios side by side; fastest of ``--repeats`` after a warm-up pass.

    python benchmarks/distributed.py [--subjects 48] [--processes 2] [--device cpu|cuda] [--cohort DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from heimer_mlflow import distributed
from heimer_mlflow.cohort import CohortDataset, make_loader, read_cohort
from heimer_mlflow.demo.nets import DemoCNN
from heimer_mlflow.demo.synthetic import grid_for, write_cohort
from heimer_mlflow.engine import run_engine
from heimer_mlflow.atlas import load_atlas
from heimer_mlflow.meta import ModelMeta


def worker(args) -> None:
    """One rank (or the only process): set up, then time ``repeats + 1`` passes; rank 0 reports."""
    ctx = distributed.from_env(args.device)
    processes = 1 if ctx is None else ctx.world_size
    torch.set_num_threads(max(1, args.cores // processes))
    shape, affine = grid_for(args.voxel_size)
    meta = ModelMeta(input_shape=[1, *shape], intensity="zscore", target_layer="features.4.0")
    cohort = read_cohort(args.cohort / "manifest.csv", meta.class_names)
    atlas = load_atlas(str(args.cohort / "atlas" / "atlas.nii.gz"), str(args.cohort / "atlas" / "labels.csv"),
                       shape, affine)  # fmt: skip
    dataset = CohortDataset(cohort, meta)
    if ctx is not None:
        dataset = torch.utils.data.Subset(dataset, distributed.shard(len(dataset), ctx))
    torch.manual_seed(0)
    model = DemoCNN(n_outputs=2, width=args.width).eval()
    device = "cpu" if args.device == "cpu" else (ctx.device if ctx is not None else args.device)
    runs = []
    try:
        for _ in range(args.repeats + 1):
            loader = make_loader(dataset, batch_size=args.batch_size, workers=args.workers, device=device)
            if ctx is not None:
                torch.distributed.barrier()
            started = time.perf_counter()
            with distributed.guard(ctx):
                result = run_engine(model, loader, meta, device=device, atlas=atlas, progress=False,
                                    should_stop=None if ctx is None else ctx.peer_failed)  # fmt: skip
            passed = time.perf_counter()
            merged = distributed.merge(result, ctx)
            ended = time.perf_counter()
            runs.append({"total_s": ended - started, "pass_s": passed - started, "merge_s": ended - passed,
                         "own_pass_s": result.timings["total_s"]})  # fmt: skip
        if ctx is None or ctx.is_main:
            best = min(runs[1:] or runs, key=lambda r: r["total_s"])
            report = {**best, "processes": processes, "threads": torch.get_num_threads(),
                      "subjects": len(merged.subjects["index"]), "device": device}  # fmt: skip
            args.out.write_text(json.dumps(report))
    finally:
        distributed.shutdown()


def launch(args, processes: int, cores: int) -> dict:
    out = args.scratch / f"result_{processes}_{cores}.json"
    command = [__file__, "--worker", "--cohort", str(args.cohort), "--out", str(out), "--device", args.device,
               "--cores", str(cores), "--repeats", str(args.repeats), "--batch-size", str(args.batch_size),
               "--workers", str(args.workers), "--width", str(args.width), "--voxel-size", str(args.voxel_size)]
    env = dict(os.environ)
    if processes > 1:
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes), *command]
    else:
        env.pop("WORLD_SIZE", None)
    subprocess.run([sys.executable, *command], check=True, env=env)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=48)
    parser.add_argument("--processes", type=int, default=2, help="processes of the sharded run")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, one GPU per process)")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)), help="cores shared by the processes")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers per process")
    parser.add_argument("--width", type=int, default=8, help="DemoCNN width")
    parser.add_argument("--voxel-size", type=float, default=2.0, help="mm; 2 gives the 91x109x91 MNI grid")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes after a warm-up; the fastest counts")
    parser.add_argument("--cohort", type=Path, default=None, help="reuse this folder's cohort (else a temporary one)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        args.scratch = Path(tmp)
        if args.cohort is None or not (args.cohort / "manifest.csv").exists():
            args.cohort = args.cohort or args.scratch / "cohort"
            started = time.perf_counter()
            write_cohort(args.cohort, n_subjects=args.subjects, voxel_size=args.voxel_size, progress=False)
            print(f"wrote the cohort in {time.perf_counter() - started:.0f} s: {args.cohort}", file=sys.stderr)
        shape = "x".join(map(str, grid_for(args.voxel_size)[0]))
        print(f"device {args.device}, N={args.subjects}, grid {shape}, batch {args.batch_size}, "
              f"{args.workers} loader worker(s) per process, {args.cores} cores shared, DemoCNN width {args.width}, "
              f"torch {torch.__version__}, fastest of {args.repeats} after a warm-up")  # fmt: skip
        share = max(1, args.cores // args.processes)
        one, many = launch(args, 1, args.cores), launch(args, args.processes, args.cores)
        one_share = launch(args, 1, share)
        print(f"{'processes':>10}{'threads':>9}{'seconds':>9}{'subjects/s':>12}{'pass s':>8}{'merge s':>9}")
        for r in (one, many, one_share):
            print(f"{r['processes']:>10}{r['threads']:>9}{r['total_s']:>9.2f}{r['subjects'] / r['total_s']:>12.1f}"
                  f"{r['pass_s']:>8.2f}{r['merge_s']:>9.3f}")  # fmt: skip
        p, fastest = many["processes"], many["total_s"]
        print(f"throughput {p} processes / 1 process ({one['threads']} threads) = {one['total_s'] / fastest:.2f}; "
              f"/ 1 process ({one_share['threads']} threads) = {one_share['total_s'] / fastest:.2f} (ideal {p})")


if __name__ == "__main__":
    main()
