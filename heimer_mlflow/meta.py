"""The model contract: what the engine needs to know about a model, stored under
``metadata["heimer"]`` of the logged MLflow model (see docs/design.md, "The model contract")."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

INTENSITIES = ("zscore", "minmax", "none")
DEFAULT_CLASS_NAMES = ("CN", "AD")
DEFAULT_POSITIVE = "AD"
# The two maps the engine draws from one gradient, by method name (engine.gradcam.CAM_METHODS)
CAM_NAMES = {"gradcam": "Grad-CAM", "hirescam": "HiResCAM"}


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
