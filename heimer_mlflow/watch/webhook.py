"""The receiver for MLflow's webhooks: ``POST /webhook``, events ``model_version.created`` and
``model_version_alias.created``.

MLflow 3 signs each delivery: ``X-MLflow-Signature`` is ``v1,`` + base64(HMAC-SHA256(secret,
``"{X-MLflow-Delivery-Id}.{X-MLflow-Timestamp}.{raw body}"``)). MLflow ships no verifier and
does not check freshness, and it retries on 5xx and timeouts with the same delivery id. So
here: the signature is checked in constant time with the secret from ``HEIMER_WEBHOOK_SECRET``
(401 when it does not match), a timestamp more than 5 minutes away is refused (400), and a
delivery id seen before (by any watcher on the queue) is answered 200 and ignored. The handler
only queues (a few registry reads), so it answers well within MLflow's timeout; the version is
read from the registry, since the payload's ``run_id`` can be null. MLflow's test event (its
example payload, model ``example_model``) is answered 200 and ignored.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint's `Request` annotation at runtime.
import base64
import hashlib
import hmac
import json
import os
import threading
import time

from ..errors import HeimerError

SECRET_ENV = "HEIMER_WEBHOOK_SECRET"
MAX_AGE_S = 300
SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
EVENTS = {("model_version", "created"), ("model_version_alias", "created")}


def secret_from_env() -> str:
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        raise HeimerError(f"--webhook needs the webhook's secret in the environment variable {SECRET_ENV} "
                          "(the same secret given to MlflowClient().create_webhook(..., secret=...))")
    return secret


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's signature of a delivery (mlflow/webhooks/delivery.py)."""
    signed = f"{delivery_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, delivery_id: str, timestamp: str, body: bytes, given: str) -> bool:
    """True when ``given`` (one or more space-separated signatures) holds the right one,
    compared in constant time."""
    expected = signature(secret, delivery_id, timestamp, body).encode()
    return any(hmac.compare_digest(expected, candidate.encode()) for candidate in given.split())


def is_test_event(payload: dict) -> bool:
    """MLflow's "test webhook" sends the event's example payload (mlflow/webhooks/types.py)."""
    from mlflow.entities.webhook import WebhookEvent
    from mlflow.webhooks.types import get_example_payload_for_event

    try:
        event = WebhookEvent(payload.get("entity"), payload.get("action"))
        return payload.get("data") == dict(get_example_payload_for_event(event))
    except Exception:  # noqa: BLE001 - an event this MLflow does not know
        return False


def make_app(secret: str, on_event, seen_once):
    """The FastAPI app. ``on_event(entity, action, data) -> str`` queues (or says why not);
    ``seen_once(delivery_id) -> bool`` is True the first time an id is seen on the queue, and
    ``forget(delivery_id)`` is its attribute undoing that when handling failed (MLflow retries)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="heimer-mlflow watch", docs_url=None, redoc_url=None, openapi_url=None)

    def answer(code: int, status: str, reason: str = "") -> JSONResponse:
        return JSONResponse({"status": status, "reason": reason} if reason else {"status": status}, status_code=code)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/webhook")
    async def webhook(request: Request):
        body = await request.body()
        headers = request.headers
        delivery_id, timestamp = headers.get(DELIVERY_HEADER, ""), headers.get(TIMESTAMP_HEADER, "")
        given = headers.get(SIGNATURE_HEADER, "")
        if not (given and delivery_id and timestamp) or not verify(secret, delivery_id, timestamp, body, given):
            return answer(401, "rejected", "missing or invalid signature")
        try:
            age = abs(time.time() - int(timestamp))
        except ValueError:
            return answer(400, "rejected", "the timestamp is not a Unix time")
        if age > MAX_AGE_S:
            return answer(400, "rejected", f"the timestamp is {age:.0f} s away from now (at most {MAX_AGE_S})")
        try:
            payload = json.loads(body)
        except ValueError:
            return answer(400, "rejected", "the body is not JSON")
        if not await run_in_threadpool(seen_once, delivery_id):
            return answer(200, "ignored", "delivery already received")
        entity, action = payload.get("entity"), payload.get("action")
        if (entity, action) not in EVENTS:
            return answer(200, "ignored", f"event {entity}.{action} is not watched")
        if is_test_event(payload):
            return answer(200, "ignored", "MLflow's test event")
        try:
            outcome = await run_in_threadpool(on_event, entity, action, payload.get("data") or {})
        except Exception as e:  # noqa: BLE001 - the registry or queue failed: let MLflow retry
            await run_in_threadpool(seen_once.forget, delivery_id)
            return answer(503, "error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return answer(200, outcome)

    return app


class Receiver:
    """The app served by uvicorn in a background thread of the watcher."""

    def __init__(self, app, address: str):
        import uvicorn

        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit():
            raise HeimerError(f"--webhook {address}: give HOST:PORT, e.g. 0.0.0.0:8765")
        self.host, self.port = host or "0.0.0.0", int(port)
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", access_log=False,
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="heimer-webhook", daemon=True)

    def start(self, timeout: float = 15.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise HeimerError(f"--webhook {self.host}:{self.port}: cannot listen there (address in use, or "
                                  "not an address of this host); pick another port")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
