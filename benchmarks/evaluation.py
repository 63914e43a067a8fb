"""What the counterfactual tests add to a whole evaluation (a benchmark, not a test).

Times ``heimer_mlflow.evaluate`` of the demo's champion on the demo's held-out cohort (60
subjects, 2 mm, its atlas) end to end (engine, metrics, counterfactual pass, figures, MLflow
logging, report), at the defaults (``counterfactual_subjects=16``) and with
``counterfactual_subjects=0``, alternating, fastest of ``--repeats`` each. Target: defaults / off
<= 2. It works on a copy of the demo's tracking store, so the demo's versions keep their tags.

    python benchmarks/evaluation.py --demo DIR [--repeats 2]

DIR is the folder ``heimer-mlflow demo`` ran in (it holds mlflow.db, mlruns/ and heimer-demo/).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="the folder the demo ran in")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model", default="models:/heimer-demo@champion")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="heimer-bench-eval-") as tmp:
        for part in ("mlflow.db", "mlruns", "heimer-demo"):
            source = args.demo / part
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, Path(tmp) / part)
        os.chdir(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        from heimer_mlflow.evaluation import evaluate

        cohort = Path("heimer-demo/cohort-eval")
        options = dict(atlas=str(cohort / "atlas/atlas.nii.gz"), atlas_labels=str(cohort / "atlas/labels.csv"),
                       experiment="bench-evaluation", progress=False)  # as the demo evaluates
        seconds = {16: [], 0: []}
        for _ in range(args.repeats):
            for n in (0, 16):
                start = time.perf_counter()
                result = evaluate(args.model, str(cohort / "manifest.csv"), counterfactual_subjects=n, **options)
                seconds[n].append(time.perf_counter() - start)
                cf = result.timings.get("counterfactual_s")
                print(f"counterfactual_subjects={n:>2}: {seconds[n][-1]:6.1f} s"
                      + (f" (counterfactual pass {cf:.1f} s, {result.counterfactual.forward_passes} forward passes)"
                         if cf else ""), flush=True)
        on, off = min(seconds[16]), min(seconds[0])
        print(f"whole evaluation, defaults / counterfactual tests off = {on:.1f} / {off:.1f} = {on / off:.2f} "
              "(target <= 2)")


if __name__ == "__main__":
    main()
