"""Which CAM shows what DemoCNN's heads decide from? Grad-CAM vs HiResCAM on planted ground truth
(a measurement, not a test; issue 13, "Evidence").

For each head (``max``, ``evidence``, ``avg``) and training seed, one DemoCNN is trained on the
4 mm synthetic clean cohort (planted atrophy) and one on the shortcut cohort (the label is a
bright patch outside the brain), exactly as ``tests/test_engine_synthetic.py`` trains them
(24 subjects, width 4, 30 epochs, AdamW lr 3e-3, dropout 0, BatchNorm statistics recomputed,
one thread). Each model is evaluated on its training cohort twice, with ``cam="gradcam"`` and
``cam="hirescam"`` (the region gains are computed for the primary map only). Reported per model,
over AD subjects: both maps' share outside the brain, both maps' planted-region gains (mean of
the four regions; per region with ``--regions``), the training accuracy, the accuracy on a
held-out cohort of the same kind (48 subjects, cohort seed + 1000: did the model learn the cohort's signal or
memorise 24 subjects?) and the mean Grad-CAM/HiResCAM agreement (Spearman inside the brain). A map is faithful for a head when the
shortcut model's outside share exceeds the clean model's by more than 0.1 for every seed and the
clean model's mean gain exceeds 1.3.

    python benchmarks/cam_evidence.py [--seeds 0 1 2 3] [--heads max evidence avg]
                                      [--cohort-seed 0] [--regions] [--json out.json]

Takes about 5 s per model on one CPU thread (24 models by default: about 2 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from heimer_mlflow.cohort import CohortDataset, read_cohort
from heimer_mlflow.demo import synthetic
from heimer_mlflow.engine import run_engine
from heimer_mlflow.meta import ModelMeta

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test helpers: fit_in_memory lives there
from tests.helpers.training import fit_in_memory  # noqa: E402

SUBJECTS, VOXEL_MM, EPOCHS, WIDTH, LR = 24, 4.0, 30, 4, 3e-3
HELDOUT_SUBJECTS = 48
METHODS = ("gradcam", "hirescam")
COHORTS = ("clean", "shortcut")


def load_cohort(folder: Path):
    meta = ModelMeta(class_names=["CN", "AD"], positive_class="AD", intensity="zscore")
    dataset = CohortDataset(read_cohort(folder, meta.class_names), meta)
    items = [dataset[i] for i in range(len(dataset))]
    labels = np.asarray(nib.load(folder / "atlas" / "atlas.nii.gz").dataobj).astype(int)
    return meta, items, (labels, synthetic.ATLAS_LABELS)


def train(items, meta, head: str, seed: int, epochs: int = EPOCHS):
    images = torch.stack([item["image"] for item in items])
    is_ad = torch.tensor([float(item["label"] == meta.positive_index) for item in items])
    return fit_in_memory(images, is_ad, head=head, width=WIDTH, epochs=epochs, learning_rate=LR, seed=seed)


def accuracy(model, items, meta) -> float:
    images = torch.stack([item["image"] for item in items])
    is_ad = torch.tensor([item["label"] == meta.positive_index for item in items])
    with torch.no_grad():
        return float(((model(images)[:, 0] > 0) == is_ad).float().mean())


def ad_mean(subjects, column) -> float:
    """Mean over AD subjects, NaN (e.g. a gain with no map inside any brain) left out; NaN if all are."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(subjects[column][subjects["label"] == 1]))


def measure(model, items, meta, atlas) -> dict:
    meta.target_layer = model.gradcam_layer
    loader = torch.utils.data.DataLoader(items, batch_size=8)
    row: dict = {}
    for method in METHODS:
        result = run_engine(model, loader, meta, device="cpu", atlas=atlas, progress=False, sanity_subjects=0,
                            cam=method)  # fmt: skip
        rows = result.subjects
        gains = {name: ad_mean(rows, f"cam_roi_gain_{name}") for name in result.region_names}
        row[f"{method}_gains"] = gains
        row[f"{method}_gain"] = float(np.mean(list(gains.values())))
        row[f"{method}_outside"] = ad_mean(rows, f"{method}_outside_brain_fraction")
        if method == METHODS[0]:
            row["train_acc"] = float((rows["pred"] == rows["label"]).mean())
            row["agreement"] = float(np.nanmean(rows["cam_method_agreement"]))
            row["agreement_ad"] = ad_mean(rows, "cam_method_agreement")
            row["outside_floor"] = ad_mean(rows, "cam_outside_brain_floor")
    return row


def summarize(rows: list[dict], heads, seeds) -> list[str]:
    by = {(r["head"], r["seed"], r["cohort"]): r for r in rows}
    lines = ["", "summary per head, over seeds (min..max): shortcut - clean outside share; clean mean gain;",
             "faithful = shortcut > clean + 0.1 for every seed and clean gain > 1.3 for every seed", "",
             f"{'head':9} {'method':9} {'shortcut-clean outside':>24} {'clean gain':>14} {'held-out acc c/s':>17} "
             f"{'faithful':>9}"]  # fmt: skip
    for head in heads:
        pairs = [(by[head, s, "clean"], by[head, s, "shortcut"]) for s in seeds if (head, s, "clean") in by
                 and (head, s, "shortcut") in by]  # fmt: skip
        if not pairs:
            continue
        for method in METHODS:
            diffs = [sc[f"{method}_outside"] - cl[f"{method}_outside"] for cl, sc in pairs]
            gains = [cl[f"{method}_gain"] for cl, _ in pairs]
            held = [cl["heldout_acc"] for cl, _ in pairs] + [sc["heldout_acc"] for _, sc in pairs]
            n = len(pairs)
            faithful = min(diffs) > 0.1 and min(gains) > 1.3
            lines.append(f"{head:9} {method:9} {min(diffs):>+11.2f}..{max(diffs):<+11.2f} "
                         f"{min(gains):>6.2f}..{max(gains):<6.2f} {min(held[:n]):>4.2f}-{max(held[:n]):.2f}/"
                         f"{min(held[n:]):.2f}-{max(held[n:]):.2f} "
                         f"{'yes' if faithful else 'no':>9}")  # fmt: skip
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="training seeds")
    parser.add_argument("--heads", nargs="+", default=["max", "evidence", "avg"], choices=["max", "evidence", "avg"])
    parser.add_argument("--cohort-seed", type=int, default=0, help="synthetic.write_cohort seed (fixed, as in the test)")
    parser.add_argument("--subjects", type=int, default=SUBJECTS, help="training cohort size (the test's: 24)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs (the test's: 30)")
    parser.add_argument("--cohorts", nargs="+", default=list(COHORTS), choices=COHORTS)
    parser.add_argument("--regions", action="store_true", help="also print the per-region gains")
    parser.add_argument("--json", type=Path, help="write every measured row here")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # multi-threaded conv gradients sum in varying order: training would not repeat
    started = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        cohorts, heldout = {}, {}
        for name in args.cohorts:
            for kept, seed, n in ((cohorts, args.cohort_seed, args.subjects),
                                  (heldout, args.cohort_seed + 1000, HELDOUT_SUBJECTS)):
                folder = Path(tmp) / f"{name}_{seed}"
                synthetic.write_cohort(folder, n_subjects=n, seed=seed, voxel_size=VOXEL_MM,
                                       shortcut=name == "shortcut", progress=False)  # fmt: skip
                kept[name] = load_cohort(folder)
        print(f"{args.subjects} subjects at {VOXEL_MM:g} mm, cohort seed {args.cohort_seed}, width {WIDTH}, "
              f"{args.epochs} epochs, lr {LR:g}; AD subjects' means", flush=True)  # fmt: skip
        header = (f"{'head':9} {'seed':>4} {'cohort':9} {'train acc':>9} {'held-out':>8} {'GC outside':>10} "
                  f"{'HR outside':>10} "
                  f"{'GC gain':>8} {'HR gain':>8} {'agreement':>9}")  # fmt: skip
        print(header, flush=True)
        for head in args.heads:
            for seed in args.seeds:
                for name in args.cohorts:
                    meta, items, atlas = cohorts[name]
                    model = train(items, meta, head, seed, args.epochs)
                    row = {"head": head, "seed": seed, "cohort": name, "cohort_seed": args.cohort_seed,
                           "heldout_acc": accuracy(model, heldout[name][1], meta),
                           **measure(model, items, meta, atlas)}  # fmt: skip
                    rows.append(row)
                    print(f"{head:9} {seed:>4} {name:9} {row['train_acc']:>9.2f} {row['heldout_acc']:>8.2f} "
                          f"{row['gradcam_outside']:>10.3f} "
                          f"{row['hirescam_outside']:>10.3f} {row['gradcam_gain']:>8.2f} {row['hirescam_gain']:>8.2f} "
                          f"{row['agreement']:>9.2f}", flush=True)  # fmt: skip
    print(f"(outside-share floor, a map spread evenly over the brain at the layer's resolution: "
          f"{np.mean([r['outside_floor'] for r in rows]):.3f})")
    print("\n".join(summarize(rows, args.heads, args.seeds)))
    if args.regions:
        regions = list(rows[0]["gradcam_gains"])
        print("\nper-region gains (AD subjects' mean), Grad-CAM / HiResCAM")
        print(f"{'head':9} {'seed':>4} {'cohort':9} " + " ".join(f"{r:>27}" for r in regions))
        for row in rows:
            cells = " ".join(f"{row['gradcam_gains'][r]:>13.2f} /{row['hirescam_gains'][r]:>12.2f}" for r in regions)
            print(f"{row['head']:9} {row['seed']:>4} {row['cohort']:9} {cells}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
