"""``evaluate``'s options, declared once.

Every option is one :class:`Option` line in :data:`OPTIONS`: its name (the keyword argument of
``evaluate()``, the key of the plug-in's ``evaluator_config`` and of watch's ``heimer.options``,
the parameter of MLproject's ``main``), its type, default, help and choices. From that list are
made: the :class:`EvaluationOptions` dataclass (the keyword arguments), the ``evaluate`` command's
arguments (:func:`add_arguments`, :func:`chosen`), MLproject's ``main`` entry point
(:func:`mlproject_main`, compared with the file by ``tests/test_options.py``) and the check of
``evaluator_config``'s keys (:func:`check_keys`). Adding an option is one line here (and
``MLproject`` regenerated: ``python -m heimer_mlflow.options``); the test says where the four
disagree.

This module imports nothing heavy: ``heimer-mlflow --help`` builds its parser from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import HeimerError
from .meta import CAM_METHODS, DEFAULT_CAM, INTENSITIES, N_BOOTSTRAP, check_cam_method, split_names

SAVE_CAMS = ("gallery", "all", "none")
AMP = ("bf16", "fp16")


class Number:
    """A number on the command line (and in MLproject, which passes text): an ``int`` or a
    ``float`` above ``minimum`` (``strict``) or at least it; ``kind=None`` keeps the number as
    written ("16", or "16.0" from MLproject) and any other text as it is, for the option's own
    check to say in one line what is wrong with it."""

    def __init__(self, kind: type | None, minimum: float | None = None, *, strict: bool = False, name: str = ""):
        self.kind, self.minimum, self.strict = kind, minimum, strict
        self.__name__ = name or getattr(kind, "__name__", "number")  # argparse's "invalid <name> value"

    def __call__(self, text: str):
        if self.kind is None:
            try:
                return float(text) if "." in text or "e" in text.lower() else int(text)
            except ValueError:
                return text
        value = self.kind(text)
        if self.minimum is not None and not (value > self.minimum if self.strict else value >= self.minimum):
            raise argparse.ArgumentTypeError(f"{text} is not a {self.__name__}")
        return value

    def __repr__(self) -> str:
        return self.__name__


POSITIVE_INT = Number(int, 1, name="positive integer")
POSITIVE_FLOAT = Number(float, 0, strict=True, name="positive number")
NUMBER_OR_TEXT = Number(None)


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def history_mapping(pairs) -> dict[str, str]:
    """``--history-metric CURVE=KEY`` (repeatable) as {curve: source-run metric key}."""
    mapping = {}
    for pair in pairs:
        curve, sep, key = pair.partition("=")
        if not sep or not key:
            raise HeimerError(f"--history-metric {pair!r}: write CURVE=KEY, e.g. train_loss=my_loss")
        mapping[curve] = key
    return mapping


@dataclass(frozen=True)
class Option:
    """One option of ``evaluate``. ``parse``: text (command line, MLproject) -> value;
    ``collect``: a repeatable option's values -> the keyword argument; ``help`` may name
    ``{default}``. ``not_in``: the interfaces that do not offer it (cli, mlproject), each with why;
    ``example``: a value to try it with (not needed with choices)."""

    name: str
    annotation: str
    default: Any
    help: str = ""
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] = ()
    flag: str = ""  # default: --name-with-dashes
    metavar: str | None = None
    collect: Callable[[list], Any] | None = None  # set for a repeatable option (--flag X --flag Y)
    not_in: dict[str, str] = field(default_factory=dict)
    example: str = ""  # a value other than the default, as typed (tests/test_options.py gives it to every interface)

    @property
    def sample(self) -> str:
        """``example``, else the first choice that is not the default."""
        return self.example or next((c for c in self.choices if c != self.default), "")

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def mlproject_type(self) -> str:
        return "float" if self.parse in (POSITIVE_INT, POSITIVE_FLOAT, NUMBER_OR_TEXT, float, int) else "string"

    @property
    def mlproject_default(self):
        """The default as MLproject writes it: absent values are empty text."""
        if self.default is None or self.default in ((), {}):
            return ""
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return self.default

    def make_default(self):
        return dataclasses.field(default_factory=type(self.default)) if isinstance(self.default, dict) else self.default


_NOT_ON_COMMAND_LINE = "the command line says it with -q (no progress bars)"
# The options, in the order of `heimer-mlflow evaluate --help`.
OPTIONS: tuple[Option, ...] = (  # fmt: skip - one option a line reads as a table
    Option("caps", "str | None", None, "CAPS folder of a ClinicaDL TSV in --data: reads each session's cropped t1-linear image, subjects/sub-P/ses-S/t1_linear/*_space-MNI152NLin2009cSym_desc-Crop_res-1x1x1_T1w.nii.gz", metavar="DIR", example="caps"),
    Option("label_column", "str | None", None, "column holding the label (default: diagnosis in BIDS participants.tsv/sessions.tsv and ClinicaDL TSVs, label in a manifest)", metavar="NAME", example="dx"),
    Option("label_map", "str | dict | None", None, "source label -> model class, e.g. \"Dementia=AD,Control=CN\" (default: class names, any case); BIDS/CAPS scans whose label is no class (MCI, ...) are left out and listed", metavar="MAP", example="Dementia=AD"),
    Option("class_names", "tuple[str, ...] | str | None", None, "the model's outputs in order, e.g. CN,AD: fills or overrides its metadata (for models logged without heimer_mlflow.log_model; default CN,AD)", metavar="NAMES", example="AD,CN"),
    Option("positive_class", "str | None", None, "the class the maps explain and the ROC scores (default: the metadata's, else AD)", metavar="NAME", example="CN"),
    Option("intensity", "str | None", None, "per-volume intensity normalisation the model was trained with (default: the metadata's, else none, said on stderr and in the report)", metavar="zscore|minmax|none", example="zscore"),
    Option("target_layer", "str | None", None, "Grad-CAM layer (default: the model's metadata, else the last Conv3d)", example="body.2"),
    Option("feature_layers", "tuple[str, ...]", (), "extra layer whose feature maps to average per group (repeatable)", flag="--feature-layer", metavar="LAYER", collect=tuple, example="body.0"),
    Option("batch_size", "int", 4, "subjects per batch (default {default})", POSITIVE_INT, example="3"),
    Option("device", "str", "auto", "auto (CUDA, then MPS, then CPU), cpu, cuda or cuda:INDEX", example="cpu"),
    Option("amp", "str | None", None, "autocast on CUDA (maps stay float32)", choices=AMP),
    Option("threshold", "float", 0.5, "probability threshold for AD (default {default})", float, example="0.4"),
    Option("atlas", "str | None", None, "regions for per-region CAM gains: a named MNI-space atlas (inputs must be in MNI space, which is checked; needs pip install \"heimer-mlflow[atlas]\") or a label NIfTI on the input grid with --atlas-labels", metavar="neuromorphometrics|desikan-killiany|NIFTI", example="a.nii"),
    Option("atlas_labels", "str | None", None, "CSV with columns index,name for --atlas NIFTI", example="l.csv"),
    Option("regions", "tuple[str, ...] | str | None", None, "comma-separated atlas regions (default for a named atlas: hippocampus, lateral_ventricle, amygdala, entorhinal, each left and right): these groups, one side (hippocampus_left) or exact atlas label names", metavar="LIST", example="hippocampus"),
    Option("brain_mask", "str | None", None, "brain mask on the input grid (nonzero = brain) for the CAM outside-brain share (default: with a named atlas the MNI152 template's brain, else each scan's non-background voxels)", metavar="NIFTI", example="m.nii"),
    Option("cam", "str", DEFAULT_CAM, "the primary map behind the verdict, group maps and gallery (both are computed; default {default}: faithful to the score whatever the head)", choices=CAM_METHODS),
    Option("lang", "str", "en", "language of the report, its figures and the version's description: en (default) or ko (Korean; needs the Debian package fonts-nanum)", metavar="en|ko", example="ko"),  # checked by i18n.check_language: one line, as for report --lang
    Option("require", "tuple[str, ...]", (), "promotion rule on a run metric, e.g. \"roc_auc_ci_lower>=0.75\" (repeatable; ';' separates several in one): a broken rule exits with code 3", metavar="RULE", collect=tuple, example="sensitivity>=0.8"),
    Option("require_verdict", "str | None", None, "promotion rule on the verdict: pass (a 'review' verdict exits with code 3)", metavar="VERDICT", example="pass"),
    Option("save_cams", "str", "gallery", "which subjects' CAM volumes to log (default {default})", choices=SAVE_CAMS),
    Option("gallery_k", "int", 4, "cases per outcome in the gallery (default {default})", int, flag="--gallery-size", example="2"),
    Option("counterfactual_subjects", "int", 16, "counterfactual region tests: re-score up to N subjects called AD (spread over them, most confident first) with each atlas region, the outside of the brain and the map's most/least relevant voxels replaced by the CN subjects' mean input; N x (regions + 10) forward passes (default {default}; 0: off)", NUMBER_OR_TEXT, metavar="N", example="5"),
    Option("skip_bad", "bool", False, "leave unusable subjects out (listed in the run) instead of stopping", boolean, metavar="BOOL", example="true"),
    Option("experiment", "str | None", None, "experiment of the new run (default heimer-evaluations); under `mlflow run` the run is the one it started: choose its experiment with mlflow run --experiment-name", not_in={"mlproject": "the run is the one `mlflow run` started: mlflow run --experiment-name chooses its experiment"}, example="e"),
    Option("n_bootstrap", "int", N_BOOTSTRAP, "bootstrap resamples for CIs (default {default})", POSITIVE_INT, flag="--bootstrap", example="50"),
    Option("workers", "int | None", None, "DataLoader worker processes (default: cores - 1, at most 4)", int, example="0"),
    Option("history_metrics", "dict[str, str]", {}, "which source-run metric is a training curve, e.g. train_loss=my_loss (repeatable)", flag="--history-metric", metavar="CURVE=KEY", collect=history_mapping, example="train_loss=l"),
    Option("seed", "int", 0, "seed of bootstraps and the sanity check (default {default})", int, example="3"),
    Option("sanity_subjects", "int", 8, "subjects of the sanity check (the map of a randomised copy of the model; default {default})", POSITIVE_INT, metavar="N", example="2"),
    Option("progress", "bool", True, "progress bars on stderr", boolean, not_in={"cli": _NOT_ON_COMMAND_LINE, "mlproject": "`mlflow run` shows them"}),
    # loading a pickled model runs code from its file: a person evaluating by hand chose the model;
    # `watch` sets False unless started with --allow-pickle
    Option("allow_pickle", "bool", True, "evaluate a pickled model (runs code from its file)", boolean, not_in={"cli": "whoever types the command chose the model (watch has --allow-pickle)", "mlproject": "as on the command line"}),
)
BY_NAME = {option.name: option for option in OPTIONS}


class _OptionChecks:
    """The checks of :class:`EvaluationOptions`: every interface's values pass through them."""

    def check(self) -> EvaluationOptions:
        from .cohort import parse_label_map  # the cohort's readers (pandas) load only for an evaluation
        from .i18n import check_language, require_fonts

        self.lang = check_language(self.lang)
        require_fonts(self.lang)  # Korean without its font stops here, before any compute
        check_cam_method(self.cam)
        if self.class_names is not None:
            self.class_names = tuple(split_names(self.class_names)) or None
        if self.intensity is not None and self.intensity not in INTENSITIES:
            raise HeimerError(f"intensity={self.intensity!r}: use one of {', '.join(INTENSITIES)}")
        number = self.counterfactual_subjects
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number != int(number) or number < 0:
            raise HeimerError(f"counterfactual_subjects={number!r}: give 0 (no counterfactual tests) or a positive "
                              "number of subjects to re-score, e.g. --counterfactual-subjects 16")
        self.counterfactual_subjects = int(number)
        if self.save_cams not in SAVE_CAMS:
            raise HeimerError(f"save_cams={self.save_cams!r}: use one of {', '.join(SAVE_CAMS)}")
        if self.amp is not None and self.amp not in AMP:
            raise HeimerError(f"amp={self.amp!r}: use one of {', '.join(AMP)} (or none)")
        if not 0.0 < self.threshold < 1.0:
            raise HeimerError(f"threshold={self.threshold}: give a probability strictly between 0 and 1")
        if self.batch_size < 1:
            raise HeimerError(f"batch_size={self.batch_size}: give a positive integer")
        self._check_atlas()
        self.require = tuple(self.require) if not isinstance(self.require, str) else (self.require,)
        self.label_map = parse_label_map(self.label_map)  # bad syntax is a user error before anything runs
        self.gate()  # a rule that cannot be read is a user error before anything runs
        self._check_history()
        return self

    def gate(self):
        from .gate import Gate

        return Gate.parse(self.require, self.require_verdict)

    def given_meta(self) -> dict:
        """The model-contract values given with the options (None = not given)."""
        return {"class_names": list(self.class_names) if self.class_names else None,
                "positive_class": self.positive_class, "intensity": self.intensity}

    def _check_history(self) -> None:
        from .registry import HISTORY_NAMES  # mlflow and torch: only once an evaluation is asked for

        unknown = set(self.history_metrics) - set(HISTORY_NAMES)
        if unknown:
            raise HeimerError(f"history metric {sorted(unknown)[0]!r} is not one of {', '.join(HISTORY_NAMES)}")

    def _check_atlas(self) -> None:
        from .atlas import NAMED_ATLASES, named_atlas

        if isinstance(self.regions, str):
            self.regions = tuple(r.strip() for r in self.regions.split(",") if r.strip()) or None
        elif self.regions is not None:
            self.regions = tuple(str(r).strip() for r in self.regions) or None
        if self.regions and self.atlas is None:
            raise HeimerError(f"--regions {','.join(self.regions)} needs an atlas: --atlas "
                              f"{'|'.join(NAMED_ATLASES)} (MNI-space inputs) or --atlas NIFTI --atlas-labels CSV")
        if named_atlas(self.atlas) is not None:
            if self.atlas_labels is not None:
                raise HeimerError(f"--atlas {self.atlas} brings its own labels: leave out --atlas-labels "
                                  f"{self.atlas_labels} (or give --atlas NIFTI for your own atlas)")
        elif (self.atlas is None) != (self.atlas_labels is None):
            raise HeimerError(f"an atlas needs --atlas {'|'.join(NAMED_ATLASES)} (MNI-space inputs), or both "
                              "--atlas NIFTI and --atlas-labels CSV (columns index,name)")


EvaluationOptions = dataclasses.make_dataclass(
    "EvaluationOptions",
    [(o.name, o.annotation, o.make_default()) for o in OPTIONS],
    bases=(_OptionChecks,),
    namespace={"__module__": __name__,
               "__doc__": "The keyword arguments of ``evaluate()``, made from :data:`OPTIONS`."},
)


def check_keys(options, where: str) -> None:
    """Unknown keys in ``options`` (``evaluator_config``, ``heimer.options``): one line naming the
    first and the known ones."""
    unknown = sorted(set(options) - set(BY_NAME))
    if unknown:
        raise HeimerError(f"{where} has the unknown option {unknown[0]!r}; use evaluate's options: "
                          f"{', '.join(sorted(BY_NAME))}")


# --------------------------------------------------------------------------- the command line


def _empty_is_absent(parse):
    """MLproject passes an absent option as empty text: absent (the default) here too."""

    def convert(text: str):
        return None if text == "" else parse(text)

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _one_of(choices: tuple[str, ...]):
    def one_of(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(choices)})")
        return text

    return one_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``evaluate`` command's options, from :data:`OPTIONS`. Every default is None (the
    option absent): :func:`chosen` passes only what was given, and the dataclass decides the rest."""
    for option in OPTIONS:
        if "cli" in option.not_in:
            continue
        kwargs: dict[str, Any] = {"dest": option.name, "default": None, "metavar": option.metavar,
                                  "type": _empty_is_absent(option.parse),
                                  "help": option.help.format(default=option.default)}
        if option.choices and option.default is not None:
            kwargs["choices"] = option.choices
            kwargs.pop("metavar")
        elif option.choices:  # an optional choice: MLproject's empty text must pass, so the type checks
            kwargs.update(metavar="|".join(option.choices), type=_empty_is_absent(_one_of(option.choices)))
        if option.collect is not None:
            kwargs["action"] = "append"
        elif option.parse is boolean:
            kwargs.update(nargs="?", const=True)
        parser.add_argument(option.cli_flag, **kwargs)


def chosen(args: argparse.Namespace) -> dict:
    """The options given on the command line, as ``evaluate`` keyword arguments."""
    given = {}
    for option in OPTIONS:
        value = getattr(args, option.name, None)
        if option.collect is not None and value is not None:
            value = [v for v in value if v is not None]
            value = option.collect(value) if value else None
        if value is not None:
            given[option.name] = value
    return given


# --------------------------------------------------------------------------- MLproject


def _command_parts() -> list[str]:
    offered = [o for o in OPTIONS if "mlproject" not in o.not_in]
    return ["python -m heimer_mlflow evaluate {model_uri} --data {data}",
            *(f"{o.cli_flag} {{{o.name}}}" for o in offered)]


def mlproject_main() -> dict:
    """MLproject's ``main`` entry point (parameters and command), as the file must have it."""
    parameters = {"model_uri": "string", "data": "path"}
    parameters.update({o.name: {"type": o.mlproject_type, "default": o.mlproject_default}
                       for o in OPTIONS if "mlproject" not in o.not_in})
    return {"parameters": parameters, "command": " ".join(_command_parts())}


def _yaml_value(value) -> str:
    if isinstance(value, str):
        return '""' if value == "" else (f'"{value}"' if value in ("true", "false") else value)
    return repr(value) if not isinstance(value, float) or math.isfinite(value) else str(value)


def mlproject_text() -> str:
    """``main`` as YAML lines, for pasting into MLproject (``python -m heimer_mlflow.options``)."""
    main = mlproject_main()
    lines = ["  main:", "    parameters:"]
    for name, spec in main["parameters"].items():
        if isinstance(spec, str):
            lines.append(f"      {name}: {spec}")
        else:
            lines.append(f"      {name}: {{type: {spec['type']}, default: {_yaml_value(spec['default'])}}}")
    line, folded = "", []
    for part in _command_parts():  # folded between options at about 100 characters; `>-` joins with spaces
        if line and len(line) + len(part) > 100:
            folded.append(line)
            line = ""
        line = f"{line} {part}" if line else part
    lines += ["    command: >-", *(f"      {part}" for part in [*folded, line])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(mlproject_text(), end="")
