"""``watch()``: poller, webhook receiver and workers around one queue (the command line's
``heimer-mlflow watch`` calls it)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from ..errors import HeimerError
from .job import Jobs, say
from .opt_in import STATUS_TAG, opt_in_of
from .poller import MAX_ATTEMPTS, STALE_AFTER_S, Poller
from .queue import PREFIX, describe, open_queue

DEFAULT_POLL_INTERVAL_S = 30.0


class SeenOnce:
    """Delivery ids, shared by every watcher on the queue (its storage)."""

    def __init__(self, claims):
        self.claims = claims

    def __call__(self, delivery_id: str) -> bool:
        return self.claims.once(f"{PREFIX}delivery:{delivery_id}")

    def forget(self, delivery_id: str) -> None:
        self.claims.forget(f"{PREFIX}delivery:{delivery_id}")


def _event_handler(jobs: Jobs, models: tuple[str, ...], alias: str | None):
    """``on_event`` for the receiver: queue the version the event names, read from the registry.
    With ``alias``, the alias being set on a version evaluated before evaluates it again only
    when the model's heimer.data changed since (a new cohort for the challenger to face)."""
    import mlflow

    def on_event(entity: str, action: str, data: dict) -> str:
        answer = decide(entity, action, data)
        if data.get("name"):
            say(f"webhook {entity}.{action} {data.get('name')} v{data.get('version')}: {answer}")
        return answer

    def decide(entity: str, action: str, data: dict) -> str:
        name, version = data.get("name"), data.get("version")
        if not name or version in (None, ""):
            return "ignored: no model name or version in the event"
        if models and name not in models:
            return f"ignored: {name} is not watched here"
        if alias is not None and (entity != "model_version_alias" or data.get("alias") != alias):
            return f"ignored: only versions with the alias {alias} are evaluated"
        client = mlflow.MlflowClient()
        try:
            opt_in = opt_in_of(client.get_registered_model(name))
        except HeimerError as e:
            say(f"webhook: {e}")
            return "ignored: the model's heimer.options tag is invalid"
        if opt_in is None:
            return f"ignored: {name} has no heimer.data tag"
        found = client.get_model_version(name, str(version))  # the registry's word, not the payload's
        status = (found.tags or {}).get(STATUS_TAG)
        if status in ("done", "failed") and alias is not None:
            evaluated_on = _evaluated_on(client, found)
            if evaluated_on == opt_in.data:
                return f"ignored: already {status} on {opt_in.data}"
            client.delete_model_version_tag(name, str(version), STATUS_TAG)  # asks for a new evaluation
            queued = jobs.queue(client, opt_in, str(version), via=f"webhook, @{alias} on new data")
            return f"queued: heimer.data changed since its evaluation ({evaluated_on} -> {opt_in.data})" if queued \
                else "ignored: already queued"
        if status:
            return f"ignored: already {status}"
        return "queued" if jobs.queue(client, opt_in, str(version), via="webhook") else "ignored: already queued"

    return on_event


def _evaluated_on(client, version) -> str | None:
    """The cohort (heimer.data) the version's last evaluation by a watcher used, None if unknown."""
    run_id = (version.tags or {}).get("heimer.evaluation_run_id")
    if not run_id:
        return None
    try:
        return client.get_run(run_id).data.tags.get("heimer.data")
    except Exception:  # noqa: BLE001 - a deleted run: unknown, so evaluate again
        return None


def watch(*, models: tuple[str, ...] = (), alias: str | None = None,
          poll_interval: float = DEFAULT_POLL_INTERVAL_S, webhook: str | None = None, queue: str | None = None,
          workers: int = 1, poll: bool = True, once: bool = False, folder: Path | None = None,
          stale_after_s: float = STALE_AFTER_S, max_attempts: int = MAX_ATTEMPTS, allow_pickle: bool = False,
          job_timeout: float | None = None) -> int:
    """Evaluate every new version of the opted-in registered models until stopped (SIGINT or
    SIGTERM); with ``once``, one sweep, then wait for the jobs it queued. Returns the exit
    code: 1 when ``once`` and one of its evaluations failed, else 0. Pickled versions fail with
    ``heimer.error`` naming the fix unless ``allow_pickle`` (loading them runs their code here).
    An evaluation longer than ``job_timeout`` seconds is ended: its run FAILED, the version failed."""
    import mlflow

    from ..permissions import redacted
    from ..tracking import check_reachable

    _check_options(poll_interval, workers, once, poll, job_timeout)
    check_reachable()
    client = mlflow.MlflowClient()
    stop = threading.Event()
    huey = open_queue(queue, folder)
    jobs = Jobs(huey, stop=stop, allow_pickle=allow_pickle, job_timeout=job_timeout)
    poller = Poller(jobs, tuple(models), alias, stale_after_s=stale_after_s, max_attempts=max_attempts)
    watched = poller.opted_in(client)  # a named model that has not opted in is an error now
    names = ", ".join(o.name for o in watched) or "none yet"
    say(f"queue {describe(huey)}; registry {redacted(mlflow.get_tracking_uri())}; opted-in models: {names}; "
        f"{'pt2 and pickled' if allow_pickle else 'pt2'} models")

    receiver = _start_receiver(webhook, jobs, tuple(models), alias) if webhook else None
    consumer = None
    if workers:
        consumer = huey.create_consumer(workers=workers, worker_type="thread", periodic=False,
                                        check_worker_health=False, initial_delay=0.2, max_delay=2.0)
        consumer.start()
    previous = {s: signal.signal(s, lambda signum, frame: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if once:
            return _once(client, poller, consumer is not None, stop)
        _until_stopped(client, poller if poll else None, poll_interval, stop)
        say("stopping: evaluations in progress end KILLED and their versions go back to the queue")
        return 0
    finally:
        stop.set()
        if consumer is not None:
            consumer.stop(graceful=True)
        if receiver is not None:
            receiver.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _check_options(poll_interval: float, workers: int, once: bool, poll: bool, job_timeout: float | None) -> None:
    """A HeimerError naming the option and the fix for a value ``watch`` cannot run with."""
    if poll_interval <= 0:
        raise HeimerError(f"--poll-interval {poll_interval}: give a positive number of seconds")
    if workers < 0:
        raise HeimerError(f"--workers {workers}: give 0 (only queue) or more")
    if once and not poll:
        raise HeimerError("--once runs one sweep of the poller: it cannot go with --no-poll")
    if job_timeout is not None and job_timeout <= 0:
        raise HeimerError(f"--job-timeout {job_timeout}: give a positive number of seconds (0 on the command line: no limit)")


def _start_receiver(webhook: str, jobs: Jobs, models: tuple[str, ...], alias: str | None):
    """The webhook receiver on ``webhook`` (host:port), started: each signed event queues its version."""
    from .webhook import Receiver, make_app, secret_from_env

    app = make_app(secret_from_env(), _event_handler(jobs, models, alias), SeenOnce(jobs.claims))
    receiver = Receiver(app, webhook)
    receiver.start()
    say(f"webhook receiver on http://{receiver.host}:{receiver.port}/webhook")
    return receiver


def _until_stopped(client, poller: Poller | None, poll_interval: float, stop: threading.Event) -> None:
    """Sweep the registry every ``poll_interval`` seconds (without a ``poller``: only wait) until
    ``stop`` is set. A failed sweep is said and tried again; a user error ends the service."""
    while not stop.is_set():
        if poller is not None:
            try:
                poller.sweep(client)
            except HeimerError:
                raise
            except Exception as e:  # noqa: BLE001 - the registry may be restarting: try next time
                say(f"the sweep failed ({type(e).__name__}: {e}); trying again in {poll_interval:g} s")
        stop.wait(poll_interval if poller is not None else 3600)


def _once(client, poller: Poller, consuming: bool, stop: threading.Event) -> int:
    """One sweep; wait until each version it queued, or found queued or running, is done or
    failed (when this watcher has workers); 1 if one failed."""
    queued = poller.sweep(client)
    say(f"sweep: {len(queued)} version(s) to wait for")
    if not consuming or not queued:
        return 0
    waiting, failed = set(queued), []
    while waiting and not stop.is_set():
        for name, version in sorted(waiting):
            status = (client.get_model_version(name, version).tags or {}).get(STATUS_TAG)
            if status in ("done", "failed"):
                waiting.discard((name, version))
                if status == "failed":
                    failed.append(f"{name} v{version}")
        stop.wait(1.0)
    if stop.is_set() and waiting:
        return 130
    if failed:
        say(f"{len(failed)} evaluation(s) failed: {', '.join(failed)} (see their heimer.error tags)")
        return 1
    return 0
