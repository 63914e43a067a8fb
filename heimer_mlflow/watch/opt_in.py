"""Opt-in lives in the registry: a registered model with the tag ``heimer.data`` (anything
``--data`` accepts) wants each new version evaluated on that cohort, with the evaluate options
in ``heimer.options`` (a JSON object of :class:`~heimer_mlflow.options.EvaluationOptions`
fields, e.g. ``{"threshold": 0.4, "cam": "gradcam"}``). A version is waiting when it has no
``heimer.status`` tag yet (and, with ``--alias``, holds that alias)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from ..errors import HeimerError
from ..options import EvaluationOptions

DATA_TAG = "heimer.data"
OPTIONS_TAG = "heimer.options"
STATUS_TAG = "heimer.status"
ERROR_TAG = "heimer.error"
STATUSES = ("queued", "running", "done", "failed")
# Options the watcher decides: a watcher has no terminal to draw progress bars on
FIXED_OPTIONS = {"progress": False}
# Options only the watcher's own command line sets: whoever may tag a model must not be able to
# make the watcher's host unpickle (run) the code of the versions they register.
WATCHER_ONLY = ("allow_pickle",)


@dataclass(frozen=True)
class OptIn:
    """A registered model that asked for evaluations: its cohort and evaluate options."""

    name: str
    data: str
    options: dict

    def current(self, client) -> OptIn | None:
        """The model's opt-in as its tags say now (None: it opted out): a job evaluates on the
        cohort current when it starts, not the one it was queued with."""
        return opt_in_of(client.get_registered_model(self.name))


def read_options(name: str, text: str | None) -> dict:
    """``heimer.options`` as evaluate keyword arguments, checked like ``evaluate`` checks them;
    a one-line error naming the model and the fix otherwise."""
    if not text or not text.strip():
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise HeimerError(f"registered model {name!r}: its tag {OPTIONS_TAG} is not JSON ({e.msg} at character "
                          f"{e.pos}); write an object such as {{\"threshold\": 0.4}}") from None
    if not isinstance(options, dict):
        raise HeimerError(f"registered model {name!r}: its tag {OPTIONS_TAG} must be a JSON object such as "
                          f"{{\"threshold\": 0.4}}, not {type(options).__name__}")
    refused = sorted(set(options) & set(WATCHER_ONLY))
    if refused:
        raise HeimerError(f"registered model {name!r}: {OPTIONS_TAG} cannot set {refused[0]!r}; only the watcher's "
                          "command line can (heimer-mlflow watch --allow-pickle)")
    known = {f.name for f in dataclasses.fields(EvaluationOptions)} - set(WATCHER_ONLY)
    unknown = sorted(set(options) - known)
    if unknown:
        raise HeimerError(f"registered model {name!r}: {OPTIONS_TAG} has the unknown option {unknown[0]!r}; "
                          f"use evaluate's options: {', '.join(sorted(known - set(FIXED_OPTIONS)))}")
    try:
        EvaluationOptions(**{**options, **FIXED_OPTIONS}).check()
    except (HeimerError, TypeError, ValueError) as e:
        raise HeimerError(f"registered model {name!r}: {OPTIONS_TAG}: {e}") from None
    return options


def opt_in_of(model) -> OptIn | None:
    """The opt-in of a registered model (an MLflow RegisteredModel), None if it has none."""
    tags = model.tags or {}
    data = (tags.get(DATA_TAG) or "").strip()
    if not data:
        return None
    return OptIn(model.name, data, read_options(model.name, tags.get(OPTIONS_TAG)))


def opted_in(client, names: tuple[str, ...] = ()) -> list[OptIn]:
    """The opted-in models: the named ones (each must have opted in), else every registered model
    with ``heimer.data``. A model whose ``heimer.options`` is wrong raises with its name."""
    if names:
        found = []
        for name in names:
            try:
                model = client.get_registered_model(name)
            except Exception as e:  # noqa: BLE001 - the store says why in its message
                raise HeimerError(f"--model {name}: no such registered model in {_store(client)} "
                                  f"({type(e).__name__}); check the name") from None
            opt_in = opt_in_of(model)
            if opt_in is None:
                raise HeimerError(f"registered model {name!r} has no tag {DATA_TAG}: set it to its evaluation "
                                  f"cohort, e.g. MlflowClient().set_registered_model_tag({name!r}, "
                                  f"{DATA_TAG!r}, '/data/cohort/manifest.csv')")
            found.append(opt_in)
        return found
    found, token = [], None
    while True:
        page = client.search_registered_models(max_results=200, page_token=token)
        found += [o for o in map(opt_in_of, page) if o is not None]
        token = page.token
        if not token:
            return found


def _store(client) -> str:
    return getattr(client, "_registry_uri", None) or getattr(client, "tracking_uri", "the registry")


def versions(client, name: str) -> list:
    """Every version of a registered model."""
    found, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=200, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            return found
