"""The model contract: what the engine needs to know about a model, stored under
``metadata["heimer"]`` of the logged MLflow model (see docs/design.md, "The model contract"), and the
defaults every module shares: the class names, the primary map, the bootstrap's resamples, the
intervals' confidence level."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import HeimerError

INTENSITIES = ("zscore", "minmax", "none")
DEFAULT_CLASS_NAMES = ("CN", "AD")  # (negative, positive): the order of the model's outputs
DEFAULT_POSITIVE = DEFAULT_CLASS_NAMES[1]
# The two maps the engine draws from one gradient, by method name
CAM_NAMES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM"}
CAM_METHODS = tuple(CAM_NAMES)
DEFAULT_CAM = "hirescam"  # the primary map (README: why HiResCAM by default)
N_BOOTSTRAP = 2000  # bootstrap resamples behind every interval, wherever one is computed
CONFIDENCE = 0.95  # every interval is two-sided at this level
CONFIDENCE_PERCENT = f"{CONFIDENCE * 100:g}"  # the level as the text shows it: "95" in "95% CI"


def check_cam_method(name: str) -> str:
    """``name`` if it is one of ``CAM_METHODS``, else a HeimerError saying which are."""
    if name not in CAM_METHODS:
        raise HeimerError(f"unknown cam {name!r}: use {' or '.join(CAM_METHODS)}")
    return name


def split_names(names) -> list[str]:
    """Class names from a list or from text (``"CN,AD"``), stripped."""
    if isinstance(names, str):
        names = names.split(",")
    return [str(c).strip() for c in names]


def negative_class(class_names, positive: str) -> str:
    """The class that is not ``positive`` (the first other one): the one place it is worked out.
    Names that do not hold ``positive`` and another class (a damaged record) give the first name."""
    return next((c for c in class_names if c != positive), class_names[0])


@dataclass
class ModelMeta:
    class_names: list[str] = field(default_factory=lambda: list(DEFAULT_CLASS_NAMES))
    positive_class: str = DEFAULT_POSITIVE
    input_shape: list[int] | None = None  # [C, D, H, W]
    intensity: str = "none"
    target_layer: str | None = None  # module path; None = the last Conv3d
    inferred: list[str] = field(default_factory=list)  # keys that were not in the metadata
    given: list[str] = field(default_factory=list)  # keys the user gave (--class-names, ...), over the metadata

    @property
    def positive_index(self) -> int:
        return self.class_names.index(self.positive_class)

    @property
    def negative_class(self) -> str:
        return negative_class(self.class_names, self.positive_class)

    def to_metadata(self) -> dict:
        d = asdict(self)
        d.pop("inferred")
        d.pop("given")
        return d


def assumptions(meta: ModelMeta) -> list[str]:
    """What the evaluator had to assume because the model did not declare it, one line each
    (stderr and the report): the intensity normalisation, which changes every input."""
    if "intensity" in meta.inferred:
        return ["the model declares no intensity normalisation: volumes go in as stored (intensity none); "
                "give --intensity zscore or minmax if it was trained on normalised volumes"]
    return []
