"""The model contract, both sides: ``log_model`` for training code, ``load`` for the evaluator.

A model is a PyTorch module logged with the MLflow pytorch flavour, in either serialization:

- ``pt2`` (MLflow 3's default, and ``log_model``'s): a ``torch.export`` program. Loading it runs
  no code from the model file; it comes back as a graph, which :mod:`engine.exported` makes
  hookable (taps at module paths), eval-mode and batch-size aware.
- ``pickle``: the module object itself. Loading it runs code named in the file, so ``load``
  refuses it where the caller does not allow that (``watch`` without ``--allow-pickle``),
  before a byte of it is unpickled.

What the engine needs to know (class order, positive class, input shape, intensity
normalisation, Grad-CAM layer) lives under ``metadata["heimer"]``; what is absent is inferred,
and ``given`` values (``--class-names``, ``--positive-class``, ``--intensity``) fill or override it
(docs/design.md, "The model contract").
"""

from __future__ import annotations

import copy
import logging
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from .engine.exported import ExportedModel, is_exported
from .engine.gradcam import resolve_layer
from .errors import HeimerError, one_line
from .meta import DEFAULT_CLASS_NAMES, DEFAULT_POSITIVE, INTENSITIES, ModelMeta, split_names

METADATA_KEY = "heimer"
SERIALIZATIONS = ("pt2", "pickle")
# What loading each format can do, for the report's provenance.
LOADING_RUNS_CODE = {"pt2": False, "pickle": True}
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- training side


def default_target_layer(model: torch.nn.Module) -> str:
    """The last Conv3d, the contract's default Grad-CAM layer."""
    return resolve_layer(model, None)[0]


def validate_meta(meta: ModelMeta, model: torch.nn.Module | None = None) -> ModelMeta:
    """Check a ModelMeta for values a user could get wrong; return it unchanged."""
    if len(meta.class_names) != 2 or len(set(meta.class_names)) != 2:
        raise HeimerError(
            f"class_names={meta.class_names!r}: heimer-mlflow evaluates binary AD-vs-CN models; "
            "give two distinct names in output order, e.g. ['CN', 'AD']"
        )
    if meta.positive_class not in meta.class_names:
        raise HeimerError(
            f"positive_class={meta.positive_class!r} is not one of class_names={meta.class_names!r}: "
            "give the positive class (--positive-class NAME)"
        )
    if meta.intensity not in INTENSITIES:
        raise HeimerError(
            f"intensity={meta.intensity!r} is not supported; use one of {', '.join(INTENSITIES)}"
        )
    if meta.input_shape is not None and (
        len(meta.input_shape) != 4 or any(int(s) <= 0 for s in meta.input_shape)
    ):
        raise HeimerError(
            f"input_shape={meta.input_shape!r} must be [C, D, H, W] with positive sizes "
            "(one subject, without the batch axis)"
        )
    if model is not None and meta.target_layer is not None:
        resolve_layer(model, meta.target_layer)
    return meta


def tensor_signature(input_shape, n_outputs: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *map(int, input_shape)), "mri")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, n_outputs), "logits")]),
    )


def log_model(
    model: torch.nn.Module,
    name: str,
    *,
    class_names=DEFAULT_CLASS_NAMES,
    positive_class: str = DEFAULT_POSITIVE,
    input_shape,
    intensity: str = "none",
    target_layer: str | None = None,
    registered_model_name: str | None = None,
    **mlflow_kwargs,
):
    """Log a 3D CNN for heimer-mlflow: pytorch flavour, a TensorSpec signature and
    ``metadata["heimer"]`` with every key of the model contract. Returns MLflow's ``ModelInfo``.

    Serialization is ``pt2`` (``torch.export``, exported in eval mode with a dynamic batch
    dimension; loading it runs no code) unless the model does not export: then ``pickle``, with
    a warning saying why. ``serialization_format="pickle"`` forces pickle. ``mlflow_kwargs`` go
    to ``mlflow.pytorch.log_model`` (e.g. ``pip_requirements``, ``tags``).
    """
    serialization = mlflow_kwargs.pop("serialization_format", None) or "pt2"
    if serialization not in SERIALIZATIONS:
        raise HeimerError(f"serialization_format={serialization!r}: use 'pt2' (the default) or 'pickle'")
    meta = ModelMeta(
        class_names=list(class_names),
        positive_class=positive_class,
        input_shape=[int(s) for s in input_shape],
        intensity=intensity,
        target_layer=target_layer or default_target_layer(model),
    )
    validate_meta(meta, model)
    metadata = dict(mlflow_kwargs.pop("metadata", None) or {})
    metadata[METADATA_KEY] = meta.to_metadata()
    n_outputs = _probe_outputs(model, meta.input_shape)
    if n_outputs not in (1, len(meta.class_names)):
        raise HeimerError(
            f"model outputs {n_outputs} values per subject; heimer-mlflow needs one logit "
            f"(sigmoid) or one per class ({len(meta.class_names)}, softmax)"
        )
    signature = mlflow_kwargs.pop("signature", None) or tensor_signature(meta.input_shape, n_outputs)
    was_training = model.training
    model.eval()  # exported in eval mode: batch norm's running statistics, no dropout
    try:
        if serialization == "pt2":
            problem = _export_problem(model, meta.input_shape)
            if problem is None:
                # Two zero volumes: a batch of one would specialise the batch axis to 1. Given as a
                # tuple, MLflow exports from it without writing it into the model (tens of MB).
                example = (np.zeros((2, *meta.input_shape), dtype=np.float32),)
                return mlflow.pytorch.log_model(model, name=name, serialization_format="pt2", input_example=example,
                                                signature=signature, metadata=metadata,
                                                registered_model_name=registered_model_name, **mlflow_kwargs)
            warnings.warn(f"heimer_mlflow.log_model: the model does not export with torch.export ({problem}); "
                          "logged with serialization_format='pickle' instead", UserWarning, stacklevel=2)
        # MLflow warns on every pickle save; it was asked for, or the model cannot be exported.
        pytorch_logger = logging.getLogger("mlflow.pytorch")
        level = pytorch_logger.level
        pytorch_logger.setLevel(logging.ERROR)
        try:
            return mlflow.pytorch.log_model(model, name=name, serialization_format="pickle", signature=signature,
                                            metadata=metadata, registered_model_name=registered_model_name,
                                            **mlflow_kwargs)
        finally:
            pytorch_logger.setLevel(level)
    finally:
        model.train(was_training)


def _export_problem(model: torch.nn.Module, input_shape) -> str | None:
    """None when ``model`` exports with a dynamic batch axis, else why not (one line)."""
    param = next(model.parameters(), None)
    on_cpu = model if param is None or param.device.type == "cpu" else copy.deepcopy(model).cpu()
    try:
        torch.export.export(on_cpu, (torch.zeros(2, *input_shape),), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception as e:  # noqa: BLE001 - whatever torch.export raises, pickle still works
        return one_line(e, 300)
    return None


def _probe_outputs(model: torch.nn.Module, input_shape) -> int:
    """Number of outputs per subject, from one forward pass on a zero volume."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        x = torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu")
        with torch.no_grad():
            out = model(x)
    finally:
        model.train(was_training)
    return int(out.reshape(1, -1).shape[1])


# --------------------------------------------------------------------------- loading side


@dataclass
class LoadedModel:
    """A model ready for evaluation and where it came from."""

    uri: str
    module: torch.nn.Module
    meta: ModelMeta
    name: str | None  # registered model name (None for runs:/ or unregistered m- URIs)
    version: str | None
    aliases: list[str]
    source_run_id: str | None
    model_id: str | None  # MLflow 3 logged model id (m-...)
    description: str | None
    tags: dict
    serialization: str = "pickle"  # SERIALIZATIONS: what was loaded (pt2 loads without running code)
    notes: list[str] = field(default_factory=list)  # what loading changed or assumed, one line each


_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/]+))?/?$")


def _client():
    return mlflow.MlflowClient()


def _not_found(what: str, hint: str) -> HeimerError:
    from .permissions import redacted

    return HeimerError(f"{what} not found in the tracking store {redacted(mlflow.get_tracking_uri())}; {hint}")


def _registered_names(client) -> str:
    try:
        names = sorted(rm.name for rm in client.search_registered_models(max_results=50))
    except MlflowException:
        return "(could not list registered models)"
    return ", ".join(names[:20]) or "(no registered models)"


def resolve_version(uri: str):
    """Resolve a ``models:/`` or ``runs:/`` URI to (ModelVersion or None, model_id or None,
    source run id or None). Unknown names, versions and aliases end in a HeimerError."""
    client = _client()
    m = _MODELS_URI.match(uri)
    if uri.startswith("runs:/"):
        parts = uri[len("runs:/"):].strip("/").split("/", 1)
        try:
            client.get_run(parts[0])
        except MlflowException:
            raise _not_found(f"run {parts[0]!r} (from {uri})", "check the run id") from None
        return None, None, parts[0]
    if m is None:
        raise HeimerError(
            f"model URI {uri!r} is not understood; use models:/NAME/VERSION, models:/NAME@ALIAS, "
            "models:/m-<logged model id> or runs:/RUN_ID/PATH"
        )
    name, version, alias = m.group("name"), m.group("version"), m.group("alias")
    if version is None and alias is None and name.startswith("m-"):
        try:
            logged = mlflow.get_logged_model(name)
        except MlflowException:
            raise _not_found(f"logged model {name!r}", "check the id (models:/m-...)") from None
        # A logged model may also be a registered version: find it through its source run.
        versions = []
        if logged.source_run_id:
            versions = [
                v
                for v in client.search_model_versions(f"run_id = '{logged.source_run_id}'")
                if v.source == f"models:/{name}"
            ]
        # search results carry no aliases: fetch the version itself
        version = client.get_model_version(versions[0].name, versions[0].version) if versions else None
        return version, name, logged.source_run_id
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        raise _not_found(
            f"registered model {name!r}", f"registered models: {_registered_names(client)}"
        ) from None
    try:
        if alias is not None:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            if version is None or version.lower() == "latest":
                found = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"], max_results=1)
                if not found:
                    raise MlflowException("no versions")
                version = found[0].version
            mv = client.get_model_version(name, version)
    except MlflowException:
        known = client.search_model_versions(f"name = '{name}'")
        versions = ", ".join(sorted((str(v.version) for v in known), key=int)) or "none"
        aliases = sorted(registered.aliases or {}) or ["none"]
        what = f"alias {alias!r}" if alias is not None else f"version {version!r}"
        raise _not_found(
            f"{what} of registered model {name!r}",
            f"versions: {versions}; aliases: {', '.join(aliases)}",
        ) from None
    model_id = mv.source[len("models:/"):] if mv.source and mv.source.startswith("models:/m-") else None
    return mv, model_id, mv.run_id


META_KEYS = ("class_names", "positive_class", "input_shape", "intensity", "target_layer")
# What a user may give for a model whose metadata lacks it (or is wrong): --class-names, ...
GIVEN_KEYS = ("class_names", "positive_class", "intensity")


def read_meta(metadata: dict | None, model: torch.nn.Module, signature=None, given: dict | None = None) -> ModelMeta:
    """ModelMeta from ``metadata["heimer"]``, inferring what is absent (docs/design.md); ``given``
    (keys of GIVEN_KEYS, None = not given) fills and overrides it, and is recorded as given."""
    declared = dict((metadata or {}).get(METADATA_KEY) or {})
    unknown = set(declared) - set(META_KEYS)
    given = {k: v for k, v in (given or {}).items() if v is not None}
    if set(given) - set(GIVEN_KEYS):
        raise HeimerError(f"cannot give {sorted(set(given) - set(GIVEN_KEYS))[0]!r}: only {', '.join(GIVEN_KEYS)}")
    meta = ModelMeta()
    for key in META_KEYS:
        if key in given:
            setattr(meta, key, given[key])
            meta.given.append(key)
        elif declared.get(key) is not None:
            setattr(meta, key, declared[key])
        else:
            meta.inferred.append(key)
    if unknown:
        meta.inferred.append("ignored:" + ",".join(sorted(unknown)))
    meta.class_names = split_names(meta.class_names)
    meta.positive_class = str(meta.positive_class)
    if meta.input_shape is None and signature is not None and signature.inputs is not None:
        specs = signature.inputs.inputs
        if len(specs) == 1 and isinstance(specs[0], TensorSpec) and len(specs[0].shape) == 5:
            meta.input_shape = [int(s) for s in specs[0].shape[1:]]
    if meta.input_shape is None and isinstance(model, ExportedModel) and model.input_shape is not None:
        if None not in model.input_shape:  # the program's own shape, when every axis is fixed
            meta.input_shape = list(model.input_shape)
    if meta.input_shape is not None:
        meta.input_shape = [int(s) for s in meta.input_shape]
    if meta.target_layer is None:
        meta.target_layer = default_target_layer(model)
    return validate_meta(meta, model)


def serialization_of(model_dir: Path, flavor: dict) -> str | None:
    """``pt2`` or ``pickle`` for a downloaded pytorch-flavour model, from the files MLflow wrote
    (``data/model.pt2`` or ``data/model.pth``); None when neither is there."""
    data = model_dir / str(flavor.get("model_data") or "data")
    if (data / "model.pt2").is_file():
        return "pt2"
    if (data / "model.pth").is_file() or data.is_file():
        return "pickle"
    return None


def as_evaluable(module, uri: str, serialization: str, archive: bytes | None = None) -> tuple[torch.nn.Module, list[str]]:
    """The loaded object as a module the engine can use, in eval mode, and what was changed
    (an exported program made hookable, rewritten from training to eval mode). ``archive``: the
    .pt2 file's bytes, so that the program can be sent to torchrun's other processes."""
    notes = []
    if is_exported(module):
        module = ExportedModel(module, archive)
        if module.eval_rewrites:
            notes.append(f"the exported program was in training mode: {len(module.eval_rewrites)} operations set "
                         "to eval mode (batch norm uses running statistics, dropout off)")
        if module.batch_size == 1:
            notes.append("the exported program takes one subject at a time (its batch axis was fixed at export): "
                         "subjects run one by one; heimer_mlflow.log_model exports a dynamic batch axis")
        elif module.batch_size is not None:
            notes.append(f"the exported program takes batches of exactly {module.batch_size} (fixed at export): "
                         f"subjects run {module.batch_size} at a time, the last batch padded with empty volumes "
                         "whose outputs are dropped")
    elif isinstance(module, torch.fx.GraphModule):
        raise HeimerError(f"{uri} loaded as a graph with no module paths ({serialization}); log it with "
                          "heimer_mlflow.log_model or mlflow.pytorch.log_model")
    if not isinstance(module, torch.nn.Module):
        raise HeimerError(f"{uri} did not load as a torch.nn.Module (got {type(module).__name__})")
    module.eval()
    return module, notes


def pickle_refusal(uri: str) -> HeimerError:
    return HeimerError(
        f"{uri} is a pickled model: loading it would run code from the model file, and this watcher loads "
        "pt2 models only; log the version again as pt2 (heimer_mlflow.log_model does by default, or "
        "mlflow.pytorch.log_model(..., serialization_format='pt2')), or start the watcher with --allow-pickle"
    )


def load(uri: str, *, target_layer: str | None = None, map_location="cpu", allow_pickle: bool = True,
         given: dict | None = None) -> LoadedModel:
    """Resolve ``uri``, load the torch module in eval mode and read its metadata.

    A pt2 model loads as an exported program (engine.exported); a pickled one only with
    ``allow_pickle`` (checked on the downloaded files, before anything is unpickled).
    ``given``: class_names / positive_class / intensity for a model whose metadata lacks them.
    """
    mv, model_id, run_id = resolve_version(uri)
    load_uri = mv.source if mv is not None and mv.source else uri
    try:
        info = mlflow.models.get_model_info(load_uri)
    except MlflowException as e:
        raise HeimerError(f"cannot read the MLflow model at {uri}: {one_line(e, with_type=False)}") from None
    if "pytorch" not in info.flavors:
        raise HeimerError(
            f"{uri} has no pytorch flavour (flavours: {', '.join(info.flavors)}); log the model "
            "with heimer_mlflow.log_model or mlflow.pytorch.log_model"
        )
    with tempfile.TemporaryDirectory(prefix="heimer-model-") as work:
        try:
            local = Path(mlflow.artifacts.download_artifacts(load_uri, dst_path=work))
        except MlflowException as e:
            raise HeimerError(f"cannot download the model at {uri}: {one_line(e, with_type=False)}") from None
        serialization = serialization_of(local, info.flavors["pytorch"]) or "pickle"
        if serialization == "pickle" and not allow_pickle:
            raise pickle_refusal(uri)
        module = _load_module(str(local), uri, serialization, map_location)
        program = local / str(info.flavors["pytorch"].get("model_data") or "data") / "model.pt2"
        archive = program.read_bytes() if serialization == "pt2" else None
    module, notes = as_evaluable(module, uri, serialization, archive)
    meta = read_meta(info.metadata, module, info.signature, given)
    if target_layer is not None:
        resolve_layer(module, target_layer)
        meta.target_layer = target_layer
    return LoadedModel(
        uri=uri,
        module=module,
        meta=meta,
        name=mv.name if mv is not None else None,
        version=str(mv.version) if mv is not None else None,
        aliases=list(mv.aliases) if mv is not None else [],
        source_run_id=run_id or info.run_id,
        model_id=model_id or info.model_id,
        description=mv.description if mv is not None else None,
        tags=dict(mv.tags) if mv is not None else {},
        serialization=serialization,
        notes=notes,
    )


def _load_module(path: str, uri: str, serialization: str, map_location):
    """``mlflow.pytorch.load_model`` of a downloaded model, its failures as one line (torch.export
    logs a traceback of its own when a program does not load: the line below says it)."""
    export_logger = logging.getLogger("torch.export")
    level = export_logger.level
    export_logger.setLevel(logging.CRITICAL)
    try:
        return mlflow.pytorch.load_model(path, map_location=map_location)
    except MlflowException as e:
        raise HeimerError(f"cannot load the model at {uri}: {one_line(e, with_type=False)}") from None
    except (ImportError, AttributeError) as e:  # unpickling needs the model's class
        raise HeimerError(
            f"cannot load the model at {uri}: its class cannot be imported here ({one_line(e)}); install the "
            "package that defines it, or log the model with code_paths=[...] so MLflow ships its code"
        ) from None
    except Exception as e:  # a damaged or foreign artifact
        raise HeimerError(
            f"cannot load the model at {uri} ({serialization}: {one_line(e)}); log it again with "
            "heimer_mlflow.log_model"
        ) from None
    finally:
        export_logger.setLevel(level)


# --------------------------------------------------------------------------- the source run's training curves


HISTORY_NAMES = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
# Names training scripts commonly use, per curve; the first one the source run has wins.
HISTORY_ALIASES = {
    "train_loss": ("train_loss", "loss", "training_loss", "train/loss", "trn_loss"),
    "val_loss": ("val_loss", "validation_loss", "valid_loss", "val/loss", "eval_loss", "test_loss"),
    "train_accuracy": ("train_accuracy", "train_acc", "accuracy", "acc", "training_accuracy", "train/acc", "train/accuracy"),
    "val_accuracy": ("val_accuracy", "val_acc", "validation_accuracy", "valid_acc", "val/acc", "val/accuracy", "eval_accuracy", "test_accuracy"),
}


def training_history(run_id: str | None, mapping: dict[str, str] | None = None) -> dict[str, list[tuple[int, float]]]:
    """Train/validation loss and accuracy per step from the model's source run; curves the run
    does not have are absent (the figure then says so)."""
    if not run_id:
        return {}
    client = mlflow.MlflowClient()
    try:
        logged = client.get_run(run_id).data.metrics
    except Exception as e:  # the source run may be gone or on another server: no curves, not a failure
        warnings.warn(f"the training curves cannot be read from the source run {run_id} "
                      f"({type(e).__name__}); the report says they are missing", RuntimeWarning, stacklevel=2)
        return {}
    history = {}
    for curve in HISTORY_NAMES:
        candidates = (mapping or {}).get(curve)
        keys = (candidates,) if candidates else HISTORY_ALIASES[curve]
        key = next((k for k in keys if k in logged), None)
        if key is not None:
            points = client.get_metric_history(run_id, key)
            history[curve] = sorted((int(m.step), float(m.value)) for m in points)
    return history
