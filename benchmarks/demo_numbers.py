"""Every number a demo (or any evaluation) left in an MLflow store, one line each, for a diff
between two checkouts (a check, not a timing: a refactoring that changes no behaviour leaves
this output unchanged).

For each version of the registered model (default ``heimer-demo``): the version's ``heimer.*``
tags, then the run metrics of its latest FINISHED evaluation run (every ``roc_auc*``, ``cf_*``,
``vs_champion_*``, ...), then the verdict and the comparison recorded in its ``evaluation.json``.
Run ids, artifact URIs, links and times differ between any two runs and are left out.

    python benchmarks/demo_numbers.py STORE [--model heimer-demo] [--digits 12]

STORE: a tracking URI or the path of an ``mlflow.db`` (what ``./dev.sh demo`` writes in its
working folder). To check that a change leaves the numbers as they were (README, "Checking that
a change keeps the numbers"):

    git worktree add ../before <commit before the change>
    (cd ../before && ./dev.sh demo --seed 0)        # writes ../before/mlflow.db
    ./dev.sh demo --seed 0                          # this checkout: ./mlflow.db
    ./dev.sh bench demo_numbers ../before/mlflow.db > before.txt
    ./dev.sh bench demo_numbers mlflow.db > after.txt
    diff before.txt after.txt                       # empty: the same numbers

On one machine the demo repeats itself exactly (training and evaluation are seeded); between
machines CPU training's floating-point sums differ, so compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402

# tags whose values name one run or one moment, different in every repetition of the same work
RUN_SPECIFIC_TAGS = {"heimer.evaluation_run_id", "heimer.report", "heimer.report_page"}
# keys of evaluation.json whose values are run ids, paths or times
RUN_SPECIFIC_KEYS = {"run_id", "champion_run_id", "timings", "seconds", "created", "source", "path", "artifact_uri",
                     "folder"}  # fmt: skip


def store_uri(store: str) -> str:
    return store if "://" in store else f"sqlite:///{Path(store).resolve()}"


def number(value, digits: int) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else json.dumps(value, sort_keys=True)


def flat(prefix: str, value, digits: int):
    """``prefix.key = value`` lines of a JSON value, run-specific keys left out."""
    if isinstance(value, dict):
        for key in sorted(value):
            if key not in RUN_SPECIFIC_KEYS:
                yield from flat(f"{prefix}.{key}", value[key], digits)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            yield from flat(f"{prefix}[{i}]", item, digits)
    else:
        yield f"{prefix} = {number(value, digits)}"


def latest_evaluation(client, name: str, version: str):
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.`heimer.model_name` = '{name}' and tags.`heimer.model_version` = '{version}' "
        "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="a tracking URI, or the path of an mlflow.db")
    parser.add_argument("--model", default="heimer-demo", help="the registered model (default heimer-demo)")
    parser.add_argument("--digits", type=int, default=12, help="significant digits of each number (default 12)")
    args = parser.parse_args(argv)
    client = mlflow.MlflowClient(tracking_uri=store_uri(args.store))
    found = sorted(int(v.version) for v in client.search_model_versions(f"name = '{args.model}'"))
    versions = [client.get_model_version(args.model, str(v)) for v in found]  # the search leaves out aliases
    if not versions:
        print(f"no versions of {args.model!r} in {args.store}", file=sys.stderr)
        return 2
    for version in versions:
        head = f"{args.model} v{version.version}"
        print(f"{head} aliases = {json.dumps(sorted(version.aliases))}")
        for key in sorted(k for k in version.tags if k.startswith("heimer.") and k not in RUN_SPECIFIC_TAGS):
            print(f"{head} tag {key} = {version.tags[key]}")
        run = latest_evaluation(client, args.model, version.version)
        if run is None:
            print(f"{head}: no finished evaluation run")
            continue
        for key in sorted(run.data.metrics):
            print(f"{head} metric {key} = {number(run.data.metrics[key], args.digits)}")
        with tempfile.TemporaryDirectory() as folder:
            record = json.loads(Path(client.download_artifacts(run.info.run_id, "evaluation.json", folder)).read_text())
        for part in ("verdict", "comparison", "counterfactual"):
            for line in flat(f"{head} record {part}", record.get(part), args.digits):
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
