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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value
def _number_or_text(text: str):
    """A number as given ("16", "16.0" from MLproject), else the text: the option's own check says
    in one line what is wrong with it."""
    try:
        return float(text) if "." in text or "e" in text.lower() else int(text)
    except ValueError:
        return text


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _optional(text: str | None) -> str | None:
    """MLproject passes absent options as empty strings."""
    return text or None


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
    cohort.add_argument("--marker", type=float, default=None, metavar="SHARE",
                        help="mixed cohort: atrophy as usual, and the bright patch on this share of AD subjects "
                             "and 1 - SHARE of CN subjects, like a site that goes with the diagnosis (e.g. 0.9)")
    cohort.add_argument("--workers", type=_positive_int, default=None, help="processes (default: up to 2)")

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
    demo.add_argument("--subjects", type=_positive_int, default=120, help="training cohort size (default 120)")
    demo.add_argument("--eval-subjects", type=_positive_int, default=60, help="held-out cohort size (default 60)")
    demo.add_argument("--epochs", type=_positive_int, default=20, help="training epochs (default 20)")
    demo.add_argument("--voxel-size", type=float, default=2.0, help="voxel size in mm (default 2)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--workdir", default="heimer-demo", help="where the cohorts go (default ./heimer-demo)")
    demo.add_argument("--model-name", default="heimer-demo", help="registered model name (default heimer-demo)")
    demo.add_argument("--experiment", default="heimer-demo", help="MLflow experiment of the training run")
    demo.add_argument("--skip-evaluation", action="store_true", help="stop after registering the model")
    demo.add_argument("--skip-challenger", nargs="?", const=True, default=False, type=_boolean, metavar="BOOL",
                      help="the one-version demo: no challenger trained where the site marker goes with the label")
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
    evaluate.add_argument("--caps", default=None, metavar="DIR",
                          help="CAPS folder of a ClinicaDL TSV in --data: reads each session's cropped t1-linear "
                               "image, subjects/sub-P/ses-S/t1_linear/*_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz")
    evaluate.add_argument("--label-column", default=None, metavar="NAME",
                          help="column holding the label (default: diagnosis in BIDS participants.tsv/sessions.tsv "
                               "and ClinicaDL TSVs, label in a manifest)")
    evaluate.add_argument("--label-map", default=None, metavar="MAP",
                          help="source label -> model class, e.g. \"Dementia=AD,Control=CN\" (default: class names, any "
                               "case); BIDS/CAPS scans whose label is no class (MCI, ...) are left out and listed")
    evaluate.add_argument("--class-names", default=None, metavar="NAMES",
                          help="the model's outputs in order, e.g. CN,AD: fills or overrides its metadata "
                               "(for models logged without heimer_mlflow.log_model; default CN,AD)")
    evaluate.add_argument("--positive-class", default=None, metavar="NAME",
                          help="the class the maps explain and the ROC scores (default: the metadata's, else AD)")
    evaluate.add_argument("--intensity", default=None, metavar="zscore|minmax|none",
                          help="per-volume intensity normalisation the model was trained with (default: the "
                               "metadata's, else none, said on stderr and in the report)")
    evaluate.add_argument("--target-layer", default=None, help="Grad-CAM layer (default: the model's metadata, else the last Conv3d)")
    evaluate.add_argument("--feature-layer", action="append", default=[], dest="feature_layers", metavar="LAYER",
                          help="extra layer whose feature maps to average per group (repeatable)")
    evaluate.add_argument("--batch-size", type=_positive_int, default=4, help="subjects per batch (default 4)")
    evaluate.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or cuda:INDEX")
    evaluate.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast on CUDA (maps stay float32)")
    evaluate.add_argument("--threshold", type=float, default=0.5, help="probability threshold for AD (default 0.5)")
    evaluate.add_argument("--atlas", default=None, metavar="neuromorphometrics|desikan-killiany|NIFTI",
                          help="regions for per-region CAM gains: a named MNI-space atlas (inputs must be in MNI "
                               "space, which is checked; needs pip install \"heimer-mlflow[atlas]\") or a label "
                               "NIfTI on the input grid with --atlas-labels")  # fmt: skip
    evaluate.add_argument("--atlas-labels", default=None, help="CSV with columns index,name for --atlas NIFTI")
    evaluate.add_argument("--regions", default=None, metavar="LIST",
                          help="comma-separated atlas regions (default for a named atlas: hippocampus, "
                               "lateral_ventricle, amygdala, entorhinal, each left and right): these groups, one side "
                               "(hippocampus_left) or exact atlas label names")  # fmt: skip
    evaluate.add_argument("--brain-mask", default=None, metavar="NIFTI",
                          help="brain mask on the input grid (nonzero = brain) for the CAM outside-brain share "
                               "(default: with a named atlas the MNI152 template's brain, else each scan's "
                               "non-background voxels)")  # fmt: skip
    evaluate.add_argument("--cam", choices=["gradcam", "hirescam"], default="hirescam",
                          help="the primary map behind the verdict, group maps and gallery (both are computed; "
                               "default hirescam: faithful to the score whatever the head)")  # fmt: skip
    evaluate.add_argument("--lang", default="en", metavar="en|ko",
                          help="language of the report, its figures and the version's description: en (default) "
                               "or ko (Korean; needs the Debian package fonts-nanum)")  # fmt: skip
    evaluate.add_argument("--require", action="append", default=[], metavar="RULE",
                          help="promotion rule on a run metric, e.g. \"roc_auc_ci_lower>=0.75\" (repeatable; "
                               "';' separates several in one): a broken rule exits with code 3")  # fmt: skip
    evaluate.add_argument("--require-verdict", default=None, metavar="VERDICT",
                          help="promotion rule on the verdict: pass (a 'review' verdict exits with code 3)")
    evaluate.add_argument("--save-cams", choices=["gallery", "all", "none"], default="gallery",
                          help="which subjects' CAM volumes to log (default gallery)")
    evaluate.add_argument("--gallery-size", type=int, default=4, dest="gallery_k", help="cases per outcome in the gallery (default 4)")
    evaluate.add_argument("--counterfactual-subjects", type=_number_or_text, default=16, metavar="N",
                          help="counterfactual region tests: re-score up to N subjects called AD (spread over them, "
                               "most confident first) with each atlas region, the outside of the brain and the "
                               "map's most/least relevant voxels replaced by the CN subjects' mean input; "
                               "N x (regions + 10) forward passes (default 16; 0: off)")  # fmt: skip
    evaluate.add_argument("--skip-bad", nargs="?", const=True, default=False, type=_boolean, metavar="BOOL",
                          help="leave unusable subjects out (listed in the run) instead of stopping")
    evaluate.add_argument("--experiment", default=None,
                          help="experiment of the new run (default heimer-evaluations); under `mlflow run` the run "
                               "is the one it started: choose its experiment with mlflow run --experiment-name")
    evaluate.add_argument("--bootstrap", type=_positive_int, default=2000, dest="n_bootstrap", help="bootstrap resamples for CIs (default 2000)")
    evaluate.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (default: cores - 1, at most 4)")
    evaluate.add_argument("--history-metric", action="append", default=[], metavar="CURVE=KEY",
                          help="which source-run metric is a training curve, e.g. train_loss=my_loss (repeatable)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of bootstraps and the sanity check (default 0)")
    evaluate.add_argument("--timeout", type=_positive_float, default=None, metavar="SECONDS",
                          help="stop an evaluation that takes longer: its run ends FAILED with the reason, the "
                               "version is not tagged, exit code 124 (default: no limit)")
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
    _add_watch(commands)
    return parser


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


def _history_mapping(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        curve, sep, key = pair.partition("=")
        if not sep or not key:
            raise HeimerError(f"--history-metric {pair!r}: write CURVE=KEY, e.g. train_loss=my_loss")
        mapping[curve] = key
    return mapping


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

        result = evaluate(
            args.model_uri, args.data, target_layer=_optional(args.target_layer), feature_layers=tuple(args.feature_layers),
            batch_size=args.batch_size, device=args.device, amp=args.amp, threshold=args.threshold,
            atlas=_optional(args.atlas), atlas_labels=_optional(args.atlas_labels), regions=_optional(args.regions),
            brain_mask=_optional(args.brain_mask),
            save_cams=args.save_cams, gallery_k=args.gallery_k, counterfactual_subjects=args.counterfactual_subjects,
            skip_bad=args.skip_bad, experiment=_optional(args.experiment), n_bootstrap=args.n_bootstrap,
            workers=args.workers, history_metrics=_history_mapping(args.history_metric), seed=args.seed,
            progress=progress, cam=args.cam, require=tuple(args.require), require_verdict=_optional(args.require_verdict),
            caps=_optional(args.caps), label_column=_optional(args.label_column), label_map=_optional(args.label_map),
            class_names=_optional(args.class_names), positive_class=_optional(args.positive_class),
            intensity=_optional(args.intensity), lang=_optional(args.lang) or "en",
        )
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
    args = _build_parser().parse_args(argv)
    # MLflow talks a lot at INFO level (table creation, experiment creation); the user wants
    # our progress and errors. MLflow reads this when it is first imported, below.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    warnings.filterwarnings("ignore", module="mlflow")
    # torch's pytree deprecation notice, raised inside torch when a pt2 program is copied: nothing to act on
    warnings.filterwarnings("ignore", message=r".*treespec.*", category=FutureWarning)
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
        if os.environ.get("HEIMER_DEBUG"):
            raise
        print(f"heimer-mlflow: unexpected error: {one_line(e, 500)} (the evaluation run, if one was "
              "open, is marked FAILED; set HEIMER_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 1
    return 0
