"""The report stage for a demo-sized evaluation (a benchmark, not a test): every figure plus
the PDF, timed, and the PDF's size. Target: <= 8 s on a 2-core machine, PDF <= 5 MB.

    python benchmarks/report.py [--subjects 60] [--voxel-size 2]

The engine pass and the metrics are computed first and not timed: the report stage starts
from their results, as it does inside ``evaluate``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from heimer_mlflow.cohort import CohortDataset, make_loader, read_cohort
from heimer_mlflow.demo.nets import DemoCNN
from heimer_mlflow.demo.synthetic import grid_for, write_cohort
from heimer_mlflow.engine import run_engine
from heimer_mlflow.atlas import load_atlas
from heimer_mlflow.figures import render_all
from heimer_mlflow.meta import ModelMeta
from heimer_mlflow.metrics import compute_metrics
from heimer_mlflow.report import render_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", type=int, default=60)
    parser.add_argument("--voxel-size", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest = write_cohort(tmp / "cohort", n_subjects=args.subjects, voxel_size=args.voxel_size, progress=False)
        shape, affine = grid_for(args.voxel_size)
        meta = ModelMeta(input_shape=[1, *shape], intensity="zscore", target_layer="features.4.0")
        cohort = read_cohort(manifest, meta.class_names)
        torch.manual_seed(0)
        atlas = load_atlas(str(tmp / "cohort/atlas/atlas.nii.gz"), str(tmp / "cohort/atlas/labels.csv"), shape, affine)
        engine = run_engine(DemoCNN().eval(), make_loader(CohortDataset(cohort, meta), batch_size=4), meta,
                            device="cpu", atlas=atlas, progress=False)
        y = (engine.subjects["label"] == meta.positive_index).astype(int)
        report = compute_metrics(y, engine.subjects["prob"].astype(float), covariates=cohort.table[cohort.covariates])
        history = {"train_loss": [(e, 0.7 - 0.02 * e) for e in range(20)], "val_loss": [(e, 0.7 - 0.01 * e) for e in range(20)]}

        artifacts = tmp / "artifacts"
        artifacts.mkdir()
        (artifacts / "metrics.json").write_text(json.dumps(report.to_json_dict(), allow_nan=False))
        (artifacts / "evaluation.json").write_text(json.dumps({
            "model": {"name": "heimer-demo", "version": "1", "metadata": meta.to_metadata()},
            "cohort": {"source": str(manifest), "n_subjects": len(cohort), "n_excluded": 0, "covariates": cohort.covariates},
        }))
        cohort.table.assign(prob_AD=engine.subjects["prob"]).to_csv(artifacts / "predictions.csv", index=False)

        started = time.perf_counter()
        render_all(report, engine, history, artifacts / "figures", affine=affine)
        figures_s = time.perf_counter() - started
        files = render_report(artifacts, artifacts / "report")
        total_s = time.perf_counter() - started
        size_mb = files.pdf.stat().st_size / 1e6
    print(f"report stage, {args.subjects} subjects at {args.voxel_size} mm ({shape[0]}x{shape[1]}x{shape[2]}):")
    print(f"  figures   {figures_s:6.2f} s")
    print(f"  PDF+HTML  {total_s - figures_s:6.2f} s   ({files.pages} pages)")
    print(f"  total     {total_s:6.2f} s   target <= 8 s    total / target = {total_s / 8:.2f}")
    print(f"  PDF size  {size_mb:6.2f} MB  target <= 5 MB   size / target = {size_mb / 5:.2f}")


if __name__ == "__main__":
    main()
