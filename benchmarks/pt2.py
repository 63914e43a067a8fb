"""The engine on a pt2 model against the same weights pickled (a benchmark, not a test).

One synthetic cohort at 2 mm, read once into memory (so the loader's decompression, the same for
every variant, does not blur the model's cost); one DemoCNN (width 32 by default) logged to a
throw-away MLflow store three ways and loaded back with ``heimer_mlflow.load_model``:

- pickle: the module itself;
- pt2, dynamic batch: ``heimer_mlflow.log_model``'s default (exported from two zero volumes);
- pt2, static batch 1: ``mlflow.pytorch.log_model``'s default (exported from a one-subject
  input example: the batch axis is fixed at 1, so the engine runs one subject at a time).

``run_engine`` with its defaults (batch 4) on each, in rounds, each round in a new order; the
median wall and CPU seconds per variant (on a shared machine the wall time follows the others'
load; the CPU seconds of this process much less), and the ratios pt2 / pickle (target <= 1.2)
and static-1 / pickle.

    python benchmarks/pt2.py [--subjects 32] [--width 32] [--rounds 3] [--device auto|cpu|cuda[:i]]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch

from heimer_mlflow import registry
from heimer_mlflow.cohort import CohortDataset, read_cohort
from heimer_mlflow.demo import synthetic
from heimer_mlflow.demo.nets import DemoCNN
from heimer_mlflow.engine import pick_device, run_engine
from heimer_mlflow.meta import ModelMeta


class InMemory(torch.utils.data.Dataset):
    """The cohort's items, read and preprocessed once."""

    def __init__(self, dataset):
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def log_variants(model, input_shape) -> dict[str, str]:
    """Model URIs of ``model`` logged as pickle, as pt2 (dynamic batch) and as MLflow's default pt2."""
    uris = {}
    with mlflow.start_run():
        for name, fmt in (("pickle", "pickle"), ("pt2", "pt2")):
            info = registry.log_model(model, name, input_shape=input_shape, intensity="zscore",
                                      target_layer="features.4.0", pip_requirements=["torch"],
                                      serialization_format=fmt)  # fmt: skip
            uris[name] = info.model_uri
        info = mlflow.pytorch.log_model(model.eval(), name="mlflow-default", pip_requirements=["torch"],
                                        input_example=np.zeros((1, *input_shape), np.float32))  # fmt: skip
        uris["pt2, static batch 1"] = info.model_uri
    return uris


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory(prefix="heimer-bench-pt2-") as work:
        work = Path(work)
        os.chdir(work)
        mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
        manifest = synthetic.write_cohort(work / "cohort", n_subjects=args.subjects, voxel_size=2.0, progress=False)
        cohort = read_cohort(manifest, ["CN", "AD"])
        shape = [1, *CohortDataset(cohort, ModelMeta(intensity="zscore"))[0]["image"].shape[1:]]
        meta = ModelMeta(input_shape=shape, intensity="zscore", target_layer="features.4.0")
        data = InMemory(CohortDataset(cohort, meta))
        torch.manual_seed(0)
        uris = log_variants(DemoCNN(n_outputs=2, width=args.width).eval(), shape)
        models = {name: registry.load(uri, map_location=device).module.to(device) for name, uri in uris.items()}
        print(f"{args.subjects} subjects at 2 mm {shape[1:]}, DemoCNN width {args.width}, batch {args.batch_size}, "
              f"{device}, {torch.get_num_threads()} threads", file=sys.stderr)  # fmt: skip
        seconds: dict[str, list[float]] = {name: [] for name in models}
        cpu: dict[str, list[float]] = {name: [] for name in models}
        probabilities = {}
        for round_ in range(args.rounds):
            order = list(models)[round_ % len(models):] + list(models)[: round_ % len(models)]
            for name in order:
                loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size)
                started, cpu_started = time.perf_counter(), time.process_time()
                result = run_engine(models[name], loader, meta, device=str(device), progress=False)
                seconds[name].append(time.perf_counter() - started)
                cpu[name].append(time.process_time() - cpu_started)
                probabilities[name] = result.subjects["prob"]
        median = {name: statistics.median(values) for name, values in seconds.items()}
        median_cpu = {name: statistics.median(values) for name, values in cpu.items()}
        for name, value in median.items():
            spread = ", ".join(f"{v:.1f}" for v in seconds[name])
            print(f"{name:>22}: {value:6.1f} s wall median ({spread}), {median_cpu[name]:6.1f} s CPU; "
                  f"max |P(AD) - pickle's| {np.abs(probabilities[name] - probabilities['pickle']).max():.1e}")
        for label, name in (("pt2 / pickle", "pt2"), ("pt2 static batch 1 / pickle", "pt2, static batch 1")):
            print(f"{label} = {median[name] / median['pickle']:.2f} wall, {median_cpu[name] / median_cpu['pickle']:.2f} CPU")
        print("targets: pt2 / pickle <= 1.2; a static batch of 1 is what MLflow's default input example gives "
              "(heimer_mlflow.log_model exports a dynamic batch axis)")


if __name__ == "__main__":
    main()
