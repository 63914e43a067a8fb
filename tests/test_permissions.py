"""How a refused or missing request is recognised (heimer_mlflow.permissions), on the exceptions
MLflow and requests really raise: a loopback HTTP server answers each status the way a tracking
server (with or without the basic-auth app) or a proxy does, and MLflow's own client turns the
answer into its exception. No text is written by hand here: a change in how MLflow files a status
shows up as a failure."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow
import pytest
import requests
from mlflow.exceptions import MlflowException, RestException
from mlflow.server.auth.client import AuthServiceClient

from heimer_mlflow.errors import HeimerError
from heimer_mlflow.permissions import check, denied, http_status

# path -> (status, body, content type); a JSON body is what MLflow's handlers write, text what a
# proxy, Flask's own 404/405 or the auth app's refusals write.
ANSWERS = {
    "/json-403": (403, json.dumps({"error_code": "PERMISSION_DENIED", "message": "no"}), "application/json"),
    "/json-401": (401, json.dumps({"error_code": "UNAUTHENTICATED", "message": "who?"}), "application/json"),
    "/json-404": (404, json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "none"}), "application/json"),
    "/text-403": (403, "Permission denied", "text/plain"),
    "/text-401": (401, "You are not authenticated", "text/plain"),
    "/text-404": (404, "<html>Not Found</html>", "text/html"),
    "/text-405": (405, "<html>Method Not Allowed</html>", "text/html"),
}


class _Answer(BaseHTTPRequestHandler):
    def _answer(self):
        path = self.path.split("?")[0]
        # MLflow's clients prefix their endpoint (/api/2.0/mlflow/...): answer by the first part
        key = next((k for k in ANSWERS if path.startswith(k)), "/text-404")
        status, body, kind = ANSWERS[key]
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def answering():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def mlflow_error(base: str, key: str) -> MlflowException:
    """What MLflow's auth client raises when the server at ``base + key`` answers."""
    with pytest.raises(MlflowException) as raised:
        AuthServiceClient(base + key).get_user_permission("someone", "experiment", "0")
    return raised.value


@pytest.mark.parametrize("key, status, kind", [
    ("/json-403", 403, RestException), ("/json-401", 401, RestException), ("/json-404", 404, RestException),
    ("/text-403", 403, MlflowException), ("/text-401", 401, MlflowException), ("/text-404", 404, MlflowException),
    ("/text-405", 405, MlflowException),
])  # fmt: skip
def test_the_status_comes_from_mlflows_exception(answering, key, status, kind):
    error = mlflow_error(answering, key)
    assert type(error) is kind
    assert http_status(error) == status


def test_the_status_of_a_requests_error_is_its_responses(answering):
    response = requests.get(f"{answering}/text-403/mlflow-artifacts/artifacts/x.png", timeout=10)
    with pytest.raises(requests.HTTPError) as raised:
        response.raise_for_status()
    assert http_status(raised.value) == 403
    refused = denied(raised.value)
    assert refused is not None and "uploading the artifacts" in str(refused) and "HTTP 403" in str(refused)


def test_an_error_without_a_status_has_none():
    assert http_status(MlflowException("something broke")) is None
    assert http_status(ValueError("not a request")) is None
    assert denied(ValueError("not a request")) is None


@pytest.mark.parametrize("key", ["/json-403", "/text-403", "/json-401", "/text-401"])
def test_a_refusal_becomes_one_line(answering, key, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone")
    refused = denied(mlflow_error(answering, key))
    assert refused is not None and "\n" not in str(refused)
    assert f"HTTP {key[-3:]}" in str(refused) and "user 'someone'" in str(refused)


def test_an_answer_that_is_not_a_refusal_is_left_alone(answering):
    assert denied(mlflow_error(answering, "/json-404")) is None
    assert denied(mlflow_error(answering, "/text-405")) is None


class _Model:
    name, model_id = "a-model", None


def check_at(uri: str):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        return check(_Model(), experiment=None)
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.mark.parametrize("key", ["/text-404", "/text-405"])
def test_a_server_without_the_auth_app_is_not_asked(answering, key, monkeypatch):
    """Its permission endpoint is missing (404 page, 405): check gives up asking and lets the
    writes speak; had it taken the answer for the auth app's it would stop with a HeimerError."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone")
    access = check_at(answering + key)
    assert access.user is None and access.link_model


def test_the_auth_apps_own_not_found_is_an_answer(answering, monkeypatch):
    """The auth app answers 404 RESOURCE_DOES_NOT_EXIST when no permission is recorded: the app
    is there, so the model's permission is asked, and an unknown one stops the evaluation."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone")
    with pytest.raises(HeimerError, match="user 'someone' has an unknown permission on registered model 'a-model'"):
        check_at(answering + "/json-404")
