"""``heimer-mlflow``: the command line. A thin shell: every command parses its arguments and
calls one library function; user errors end in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings

from . import __version__
from .errors import HeimerError, one_line
from .gate import EXIT_GATE_FAILED, GateFailed
from .options import POSITIVE_FLOAT, POSITIVE_INT, add_arguments, boolean, chosen

DEFAULT_JOB_TIMEOUT_S = 4 * 3600.0  # watch --job-timeout: a 1 mm cohort of 256 scans takes about 2 h on a CPU

DESCRIPTION = """\
Evaluate and explain 3D CNNs that tell Alzheimer's disease (AD) from cognitively normal (CN)
subjects on brain MRI, with MLflow.

Start here:
  heimer-mlflow demo                 a registry review in miniature (./mlflow.db): heimer-demo
                                     v1 @champion vs v2 @challenger, both evaluated
  heimer-mlflow cohort OUT_DIR       write a synthetic AD/CN cohort with planted atrophy
  heimer-mlflow evaluate MODEL_URI --data COHORT
                                     metrics, Grad-CAM, maps and a PDF report, logged to MLflow
  heimer-mlflow report RUN_ID        re-render an evaluation run's report from its artifacts
  heimer-mlflow watch                evaluate each new version of the registered models that opted in

The tracking store is MLflow's default (sqlite:///mlflow.db in this folder); set
MLFLOW_TRACKING_URI to use another store or server.
"""


def _optional(text: str | None) -> str | None:
    """MLproject passes absent options as empty strings."""
    return text or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heimer-mlflow", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"heimer-mlflow {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_cohort, _add_demo, _add_evaluate, _add_report, _add_watch):
        add(commands)
    return parser


def _add_cohort(commands) -> None:
    cohort = commands.add_parser(
        "cohort",
        help="write a synthetic AD/CN cohort (NIfTI images, manifest.csv, ROI masks, atlas)",
        description="Write a synthetic AD/CN cohort built from the MNI152 template that ships with "
        "nilearn: AD subjects have shrunk hippocampi and enlarged lateral ventricles. Writes "
        "OUT_DIR/manifest.csv, OUT_DIR/images/*.nii.gz, per-subject ROI masks in OUT_DIR/masks/, "
        "an atlas (OUT_DIR/atlas/atlas.nii.gz + labels.csv) and ground truth (truth.csv).",
    )
    cohort.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (created if absent)")
    cohort.add_argument("--subjects", type=POSITIVE_INT, default=80, help="number of subjects (default 80)")
    cohort.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    cohort.add_argument("--voxel-size", type=float, default=2.0, help="isotropic voxel size in mm (default 2: 91x109x91)")
    cohort.add_argument("--ad-fraction", type=float, default=0.5, help="share of AD subjects (default 0.5)")
    cohort.add_argument("--sites", type=POSITIVE_INT, default=3, help="number of acquisition sites (default 3)")
    cohort.add_argument("--shortcut", action="store_true",
                        help="negative control: AD is marked by a bright patch outside the brain, not by atrophy")
    cohort.add_argument("--marker", type=float, default=None, metavar="SHARE",
                        help="mixed cohort: atrophy as usual, and the bright patch on this share of AD subjects "
                             "and 1 - SHARE of CN subjects, like a site that goes with the diagnosis (e.g. 0.9)")
    cohort.add_argument("--workers", type=POSITIVE_INT, default=None, help="processes (default: up to 2)")


def _add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="a registry review in miniature: champion vs a challenger that cheats, both evaluated",
        description="Write synthetic cohorts under --workdir, train the demo 3D CNN on clean data "
        "(train/val loss and accuracy per epoch go to its MLflow run), register it as heimer-demo "
        "with alias 'champion' and evaluate it on a held-out multi-site cohort where a site marker "
        "goes with the diagnosis; then train a challenger on data from those sites, register it "
        "with alias 'challenger', evaluate it on the same cohort, compared with the champion, and "
        "print the story in three lines.",
    )
    demo.add_argument("--subjects", type=POSITIVE_INT, default=120, help="training cohort size (default 120)")
    demo.add_argument("--eval-subjects", type=POSITIVE_INT, default=60, help="held-out cohort size (default 60)")
    demo.add_argument("--epochs", type=POSITIVE_INT, default=20, help="training epochs (default 20)")
    demo.add_argument("--voxel-size", type=float, default=2.0, help="voxel size in mm (default 2)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--workdir", default="heimer-demo", help="where the cohorts go (default ./heimer-demo)")
    demo.add_argument("--model-name", default="heimer-demo", help="registered model name (default heimer-demo)")
    demo.add_argument("--experiment", default="heimer-demo", help="MLflow experiment of the training run")
    demo.add_argument("--skip-evaluation", action="store_true", help="stop after registering the model")
    demo.add_argument("--skip-challenger", nargs="?", const=True, default=False, type=boolean, metavar="BOOL",
                      help="the one-version demo: no challenger trained where the site marker goes with the label")


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a registered model version on a cohort and log everything to MLflow",
        description="Evaluate MODEL_URI on the cohort in --data in one pass: probabilities, clinical "
        "metrics with confidence intervals, 3D Grad-CAM, group maps, feature maps and plausibility "
        "checks. Everything is logged to an MLflow run (the active one under `mlflow run`, else a new "
        "run in --experiment) and the model version gets heimer.* tags with the verdict.",
        epilog="example: heimer-mlflow evaluate models:/heimer-demo@champion --data heimer-demo/cohort-eval "
        "--atlas heimer-demo/cohort-eval/atlas/atlas.nii.gz --atlas-labels heimer-demo/cohort-eval/atlas/labels.csv",
    )
    evaluate.add_argument("model_uri", metavar="MODEL_URI",
                          help="models:/NAME/VERSION, models:/NAME@ALIAS, models:/m-ID or runs:/RUN_ID/PATH")
    evaluate.add_argument("--data", required=True,
                          help="the cohort: a CSV manifest (path,label[,subject_id,participant_id,covariates...]), "
                               "a folder ROOT/<class>/*.nii.gz, a BIDS root (participants.tsv; sub-*/[ses-*/]anat/"
                               "*_T1w.nii[.gz]) or a ClinicaDL TSV (participant_id,session_id,diagnosis) with --caps")
    add_arguments(evaluate)  # every option of evaluate(), declared once in heimer_mlflow.options
    evaluate.add_argument("--timeout", type=POSITIVE_FLOAT, default=None, metavar="SECONDS",
                          help="stop an evaluation that takes longer: its run ends FAILED with the reason, the "
                               "version is not tagged, exit code 124 (default: no limit)")


def _add_report(commands) -> None:
    report = commands.add_parser(
        "report",
        help="re-render the PDF/HTML report of an evaluation run from its logged artifacts",
        description="Rebuild the report of evaluation run RUN_ID from the artifacts it logged "
        "(evaluation.json, metrics.json, predictions.csv, figures/): no model and no data are "
        "needed, e.g. after a template change. The report is logged to that run again "
        "(report/<model>-v<version>.pdf and report/html/; with --lang ko beside them "
        "report/<model>-v<version>-ko.pdf and report/html-ko/) and written to --out if given; prints "
        "the PDF's path in --out, else its artifact URI (nothing is left in the temp folder).",
    )
    report.add_argument("run_id", metavar="RUN_ID", help="the evaluation run")
    report.add_argument("--out", default=None, help="also keep the rendered files in this folder")
    report.add_argument("--no-log", action="store_true", help="only write to --out; do not log to the run")
    report.add_argument("--lang", default=None, metavar="en|ko",
                        help="the report's language (default: the evaluation's): en, or ko (Korean, logged as "
                             "report/<model>-v<version>-ko.pdf beside the English one; needs fonts-nanum)")


def _add_watch(commands) -> None:
    watch = commands.add_parser(
        "watch",
        help="evaluate every new version of the registered models that opted in (poller, webhooks, queue)",
        description="Evaluate each new version of every registered model that opted in with the tag\n"
        "heimer.data (its evaluation cohort; optional heimer.options: JSON of evaluate's options, e.g.\n"
        "{\"threshold\": 0.4}). A poller finds versions without heimer.status; an optional receiver takes\n"
        "MLflow's webhooks (secret in HEIMER_WEBHOOK_SECRET); a Huey queue (a SQLite file here, or Redis\n"
        "for several hosts) feeds the workers, and each version is evaluated once. The version shows\n"
        "heimer.status = queued, running, done or failed (with heimer.error), then the evaluation's tags\n"
        "and a summary in its description.",
        epilog="examples: heimer-mlflow watch --once   (cron/CI: one sweep, exit 1 if an evaluation failed)\n"
        "  HEIMER_WEBHOOK_SECRET=... heimer-mlflow watch --webhook 0.0.0.0:8765 --queue redis://queue:6379/0\n"
        "  heimer-mlflow watch --no-poll --workers 1 --queue redis://queue:6379/0   (a GPU host)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    watch.add_argument("--model", action="append", default=[], dest="models", metavar="NAME",
                       help="watch only this registered model (repeatable; default: every model with heimer.data)")
    watch.add_argument("--alias", default=None, help="evaluate only versions that hold this alias, e.g. challenger")
    watch.add_argument("--poll-interval", type=float, default=30.0, metavar="S", help="seconds between sweeps (default 30)")
    watch.add_argument("--webhook", default=None, metavar="HOST:PORT",
                       help="also receive MLflow's webhooks on http://HOST:PORT/webhook")
    watch.add_argument("--queue", default=None, metavar="URL",
                       help="redis://HOST:PORT/DB to share a queue between hosts (default: ./heimer-watch.db, SQLite)")
    watch.add_argument("--workers", type=int, default=1,
                       help="evaluations at once in this watcher (default 1; 0: only queue, other hosts evaluate)")
    watch.add_argument("--no-poll", action="store_true", help="no sweeps: only the webhook and/or the workers")
    watch.add_argument("--job-timeout", type=float, default=DEFAULT_JOB_TIMEOUT_S, metavar="SECONDS",
                       help=f"end an evaluation that takes longer (its process killed, its run FAILED, the version "
                            f"failed) and go on with the next (default {DEFAULT_JOB_TIMEOUT_S:g}: 4 hours; 0: no limit)")
    watch.add_argument("--allow-pickle", action="store_true",
                       help="also evaluate pickled versions (loading one runs code from its file on this host); "
                            "default: pt2 versions only, a pickled one fails with heimer.error")
    watch.add_argument("--once", action="store_true",
                       help="one sweep, wait for the evaluations it queued, exit 1 if one failed")


def _run(args) -> None:
    progress = not args.quiet
    if args.command == "cohort":
        from .demo.synthetic import write_cohort

        manifest = write_cohort(
            args.out_dir, n_subjects=args.subjects, seed=args.seed, voxel_size=args.voxel_size,
            shortcut=args.shortcut, marker=args.marker, ad_fraction=args.ad_fraction, n_sites=args.sites,
            workers=args.workers, progress=progress,
        )
        print(manifest)
    elif args.command == "demo":
        from .demo import run_demo, story

        result = run_demo(
            subjects=args.subjects, eval_subjects=args.eval_subjects, epochs=args.epochs,
            voxel_size=args.voxel_size, seed=args.seed, workdir=args.workdir,
            model_name=args.model_name, experiment=args.experiment, evaluate_model=not args.skip_evaluation,
            challenger=not args.skip_challenger, progress=progress,
        )
        print(f"{result['model_name']} version {result['version']} (alias champion), training run {result['run_id']}")
        if result["evaluation"] is not None:
            print("\n".join(story(result)))
    elif args.command == "evaluate":
        from .evaluation import evaluate

        result = evaluate(args.model_uri, args.data, **{"progress": progress, **chosen(args)})
        if result is not None:  # None: a torchrun rank other than 0, which logs nothing
            print(f"run {result.run_id}: verdict {result.verdict}")
    elif args.command == "watch":
        from .watch import watch

        code = watch(models=tuple(args.models), alias=_optional(args.alias), poll_interval=args.poll_interval,
                     webhook=_optional(args.webhook), queue=_optional(args.queue), workers=args.workers,
                     poll=not args.no_poll, once=args.once, allow_pickle=args.allow_pickle,
                     job_timeout=args.job_timeout or None)
        if code:
            raise SystemExit(code)
    elif args.command == "report":
        from .report import report_for_run

        from .i18n import check_language, require_fonts

        if args.no_log and not args.out:
            raise HeimerError("--no-log needs --out DIR, or the rendered report would go nowhere")
        lang = _optional(args.lang)  # None: the evaluation's language
        if lang is not None:  # a wrong language or a missing font stops before anything is downloaded
            require_fonts(check_language(lang))
        with tempfile.TemporaryDirectory(prefix="heimer-report-out-") as scratch:  # without --out: logged, then gone
            files = report_for_run(args.run_id, out_dir=args.out or scratch, log=not args.no_log, lang=lang)
        print(files.pdf if args.out else files.artifact_uri)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # MLflow talks a lot at INFO level (table creation, experiment creation); the user wants
    # our progress and errors. MLflow reads this when it is first imported, below.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", module="mlflow")
    from .interrupts import EXIT_TIMED_OUT, Terminated, TimedOut, handled

    try:
        # Ctrl-C and SIGTERM end the evaluation run as KILLED; --timeout as FAILED with the reason
        with handled(timeout=getattr(args, "timeout", None)):
            _run(args)
    except GateFailed as e:  # the run FINISHED and is logged; the model must not be promoted
        print(f"run {e.evaluation.run_id}: verdict {e.evaluation.verdict}")
        for failure in e.failures:
            print(f"heimer-mlflow: gate failed: {failure}", file=sys.stderr)
        return EXIT_GATE_FAILED
    except HeimerError as e:
        print(f"heimer-mlflow: error: {e}", file=sys.stderr)
        return 2
    except TimedOut as e:
        print(f"heimer-mlflow: {e}; the evaluation run (if one was open) is marked FAILED", file=sys.stderr)
        return EXIT_TIMED_OUT
    except Terminated as e:
        print(f"heimer-mlflow: terminated by {e}; the evaluation run (if one was open) is marked KILLED",
              file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("heimer-mlflow: interrupted; the evaluation run (if one was open) is marked KILLED", file=sys.stderr)
        return 130
    except Exception as e:  # not a user error: one line here, the traceback on request
        from .permissions import denied

        if (refused := denied(e)) is not None:  # HTTP 401/403: a permission the user can ask for
            print(f"heimer-mlflow: error: {refused}", file=sys.stderr)
            return 2
        from .tracking import lost_server

        if (lost := lost_server(e)) is not None and not os.environ.get("HEIMER_DEBUG"):
            print(f"heimer-mlflow: error: {lost}", file=sys.stderr)
            return 1
        if os.environ.get("HEIMER_DEBUG"):
            raise
        print(f"heimer-mlflow: unexpected error: {one_line(e, 500)} (the evaluation run, if one was "
              "open, is marked FAILED; set HEIMER_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1
    return 0
