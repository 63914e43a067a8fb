"""``heimer-mlflow``: the command line. A thin shell: every command parses its arguments and
calls one library function; user errors end in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings

from . import __version__
from .errors import HeimerError

DESCRIPTION = """\
Evaluate and explain 3D CNNs that tell Alzheimer's disease (AD) from cognitively normal (CN)
subjects on brain MRI, with MLflow.

Start here:
  heimer-mlflow demo                 synthetic cohort -> train a small 3D CNN -> register it
                                     as heimer-demo@champion in ./mlflow.db
  heimer-mlflow cohort OUT_DIR       write a synthetic AD/CN cohort with planted atrophy

The tracking store is MLflow's default (sqlite:///mlflow.db in this folder); set
MLFLOW_TRACKING_URI to use another store or server.
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heimer-mlflow", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"heimer-mlflow {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    cohort = commands.add_parser(
        "cohort",
        help="write a synthetic AD/CN cohort (NIfTI images, manifest.csv, ROI masks, atlas)",
        description="Write a synthetic AD/CN cohort built from the MNI152 template that ships with "
        "nilearn: AD subjects have shrunk hippocampi and enlarged lateral ventricles. Writes "
        "OUT_DIR/manifest.csv, OUT_DIR/images/*.nii.gz, per-subject ROI masks in OUT_DIR/masks/, "
        "an atlas (OUT_DIR/atlas/atlas.nii.gz + labels.csv) and ground truth (truth.csv).",
    )
    cohort.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (created if absent)")
    cohort.add_argument("--subjects", type=_positive_int, default=80, help="number of subjects (default 80)")
    cohort.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    cohort.add_argument("--voxel-size", type=float, default=2.0, help="isotropic voxel size in mm (default 2: 91x109x91)")
    cohort.add_argument("--ad-fraction", type=float, default=0.5, help="share of AD subjects (default 0.5)")
    cohort.add_argument("--sites", type=_positive_int, default=3, help="number of acquisition sites (default 3)")
    cohort.add_argument("--shortcut", action="store_true",
                        help="negative control: AD is marked by a bright patch outside the brain, not by atrophy")
    cohort.add_argument("--workers", type=_positive_int, default=None, help="processes (default: up to 2)")

    demo = commands.add_parser(
        "demo",
        help="cohort -> train a small 3D CNN -> register heimer-demo@champion",
        description="Write a synthetic training cohort and a held-out evaluation cohort under "
        "--workdir, train the demo 3D CNN on CPU (train/val loss and accuracy per epoch go to its "
        "MLflow run), log it with heimer_mlflow.log_model and register it as heimer-demo with "
        "alias 'champion'.",
    )
    demo.add_argument("--subjects", type=_positive_int, default=120, help="training cohort size (default 120)")
    demo.add_argument("--eval-subjects", type=_positive_int, default=60, help="held-out cohort size (default 60)")
    demo.add_argument("--epochs", type=_positive_int, default=12, help="training epochs (default 12)")
    demo.add_argument("--voxel-size", type=float, default=2.0, help="voxel size in mm (default 2)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--workdir", default="heimer-demo", help="where the cohorts go (default ./heimer-demo)")
    demo.add_argument("--model-name", default="heimer-demo", help="registered model name (default heimer-demo)")
    demo.add_argument("--experiment", default="heimer-demo", help="MLflow experiment of the training run")
    return parser


def _run(args) -> None:
    progress = not args.quiet
    if args.command == "cohort":
        from .synthetic import write_cohort

        manifest = write_cohort(
            args.out_dir, n_subjects=args.subjects, seed=args.seed, voxel_size=args.voxel_size,
            shortcut=args.shortcut, ad_fraction=args.ad_fraction, n_sites=args.sites,
            workers=args.workers, progress=progress,
        )
        print(manifest)
    elif args.command == "demo":
        from .demo import run_demo

        result = run_demo(
            subjects=args.subjects, eval_subjects=args.eval_subjects, epochs=args.epochs,
            voxel_size=args.voxel_size, seed=args.seed, workdir=args.workdir,
            model_name=args.model_name, experiment=args.experiment, progress=progress,
        )
        print(f"{result['model_name']} version {result['version']} (alias champion), training run {result['run_id']}")


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    # MLflow and torch talk a lot at INFO/WARNING level; the user wants our progress and errors.
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")
    try:
        _run(args)
    except HeimerError as e:
        print(f"heimer-mlflow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("heimer-mlflow: interrupted", file=sys.stderr)
        return 130
    return 0
