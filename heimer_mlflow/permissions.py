"""What an authenticated tracking server lets this principal do, asked before any compute.

Teams run MLflow behind its basic-auth app (``mlflow server --app-name basic-auth``), with
permissions per experiment and registered model. An evaluation needs to create a run in its
experiment (EDIT there) and to tag the model version once the run FINISHED (EDIT on the
registered model); attaching the metrics and the data set to the *logged model* (MLflow 3's
model-centred view) needs EDIT on the experiment that holds the logged model, usually the
training experiment. MLflow answers a missing permission with HTTP 403 at the first write, which
for the version's tags is after all the compute. So :func:`check` asks the server, for the
principal in ``MLFLOW_TRACKING_USERNAME``, what it may do on each of these (a principal may read
its own permissions), and

- stops with one line naming the resource, the permission it has and the one it needs, and how
  an admin grants it, when it cannot write the experiment or the version's tags;
- logs the metrics to the run without attaching them to the logged model, and says so, when only
  that is missing.

A server without the auth app (or without a username set) is not asked. A 403 that still comes
(a permission revoked during the run) is turned into the same kind of line by :func:`denied`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import mlflow
import requests
from mlflow.exceptions import MlflowException

from .errors import HeimerError

# Permission names (mlflow.server.auth.permissions) that may write a resource.
CAN_UPDATE = ("EDIT", "MANAGE")
GRANT = "grant_user_permission({user!r}, {kind!r}, {resource!r}, 'EDIT')"


def redacted(uri: str) -> str:
    """``uri`` without the user name and password a URL may carry (http://user:pass@host)."""
    parts = urlsplit(uri)
    if not parts.username and not parts.password:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


@dataclass
class Access:
    """What this evaluation may write, as far as the server said."""

    user: str | None = None  # the principal asked about; None: not an authenticated server (or no user set)
    link_model: bool = True  # attach metrics and the data set to the logged model
    note: str | None = None  # why not, when link_model is False


def principal() -> str | None:
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or None


def check(model, experiment: str | None) -> Access:
    """Ask the server what the principal may do (see the module docstring); ``experiment``: the
    evaluation run's experiment by name (None: the run exists already, e.g. under `mlflow run`)."""
    uri = mlflow.get_tracking_uri()
    user = principal()
    if user is None or not uri.startswith(("http://", "https://")):
        return Access()
    asker = _Asker(uri, user)
    if not asker.enabled:
        return Access()
    client = mlflow.MlflowClient()
    if experiment is not None:
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            asker.require("experiment", found.experiment_id, f"experiment {experiment!r}",
                          "create the evaluation's run in it", f"or choose an experiment you may write with --experiment")
    if model.name:
        asker.require("registered_model", model.name, f"registered model {model.name!r}",
                      "tag the evaluated version with its verdict once the run finished", "")
    access = Access(user=user)
    if model.model_id:
        try:
            logged = client.get_logged_model(model.model_id)
        except MlflowException:
            logged = None
        if logged is not None:
            permission = asker.permission("experiment", logged.experiment_id)
            if permission not in CAN_UPDATE:
                access.link_model = False
                access.note = (f"the metrics are logged to the run but not attached to the logged model {model.model_id}: "
                               f"user {user!r} has {permission} on its experiment {logged.experiment_id} (attaching needs EDIT)")
    return access


class _Asker:
    def __init__(self, uri: str, user: str):
        from mlflow.server.auth.client import AuthServiceClient

        self.uri, self.user = uri, user
        self.client = AuthServiceClient(uri)
        self.enabled = True
        try:
            self.client.get_user_permission(user, "experiment", "0")
        except MlflowException as e:
            if _without_auth_app(e):
                self.enabled = False
            elif http_status(e) == 401:
                raise HeimerError(f"the MLflow server {redacted(self.uri)} did not accept the credentials of user "
                                  f"{user!r} (HTTP 401); check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from None
        except Exception:  # noqa: BLE001 - an older server or another app: write and see
            self.enabled = False

    def permission(self, kind: str, resource: str) -> str:
        try:
            return str(self.client.get_user_permission(self.user, kind, resource).permission)
        except MlflowException:
            return "an unknown permission"

    def require(self, kind: str, resource: str, what: str, to: str, alternative: str) -> None:
        permission = self.permission(kind, resource)
        if permission in CAN_UPDATE:
            return
        grant = GRANT.format(user=self.user, kind=kind, resource=resource)
        raise HeimerError(
            f"user {self.user!r} has {permission} on {what} at {redacted(self.uri)}, and needs EDIT to {to}: "
            f"ask an MLflow admin to grant it (AuthServiceClient.{grant}){' ' + alternative if alternative else ''}; "
            "nothing was computed or written"
        )


def http_status(error: BaseException) -> int | None:
    """The HTTP status of a request to the tracking server that failed with ``error``, None when
    none is known. Read from the exception's fields: requests' response (an artifact up- or
    download), else the status MLflow's error code stands for (a ``RestException`` carries the
    server's code, another ``MlflowException`` the code MLflow gave the response's status). Only
    a status MLflow has no code for (405, say, which it files as INTERNAL_ERROR) is read from the
    message MLflow writes for it ("... failed with error code 405 != 200")."""
    if isinstance(error, requests.HTTPError):
        return error.response.status_code if error.response is not None else None
    if not isinstance(error, MlflowException):
        return None
    if error.error_code != "INTERNAL_ERROR":
        return error.get_http_status_code()
    quoted = re.search(r"failed with error code (\d{3})", str(error))
    return int(quoted.group(1)) if quoted else None


def _without_auth_app(error: MlflowException) -> bool:
    """Whether the permission endpoint is not there: a server without the auth app answers
    404 (ENDPOINT_NOT_FOUND) or 405. A 404 of the auth app itself (RESOURCE_DOES_NOT_EXIST: no
    permission recorded for that resource) is an answer."""
    return error.error_code == "ENDPOINT_NOT_FOUND" or http_status(error) == 405


# What a refused endpoint was for, in words.
_ENDPOINTS = {
    "runs/create": "creating the evaluation's run (EDIT on its experiment)",
    "experiments/create": "creating the experiment (ask an admin, or choose one with --experiment)",
    "runs/log-inputs": "logging the data set to the run and the logged model (EDIT on both experiments)",
    "runs/log-batch": "logging metrics to the run and the logged model (EDIT on both experiments)",
    "runs/set-tag": "tagging the run (EDIT on its experiment)",
    "runs/update": "ending the run (EDIT on its experiment)",
    "model-versions/set-tag": "tagging the model version (EDIT on the registered model)",
    "model-versions/update": "writing the version's description (EDIT on the registered model)",
    "mlflow-artifacts": "uploading the artifacts (EDIT on the experiment)",
}


def denied(error: BaseException) -> HeimerError | None:
    """A one-line HeimerError for an HTTP 401/403 from the tracking server (an MLflow API call,
    or an artifact up- or download, which MLflow makes with requests), None for anything else."""
    code = http_status(error)
    if code not in (401, 403):
        return None
    if isinstance(error, requests.HTTPError):
        path = urlsplit(error.response.url or "").path or "a request"
    else:  # the endpoint is in MLflow's message only
        endpoint = re.search(r"endpoint (\S+)", str(error))
        path = endpoint.group(1) if endpoint else "a request"
    what = next((words for key, words in _ENDPOINTS.items() if key in path), f"the request {path}")
    user = principal()
    who = f"user {user!r}" if user else "an anonymous client (set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"
    return HeimerError(f"the MLflow server {redacted(mlflow.get_tracking_uri())} refused {what} for {who} "
                       f"(HTTP {code}, {'permission denied' if code == 403 else 'not authenticated'} on {path}); "
                       "ask an MLflow admin for the permission")
