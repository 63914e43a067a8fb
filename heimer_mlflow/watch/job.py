"""Queueing a version and evaluating it: the Huey task, the claim, ``heimer.status``.

A version is queued once (the claim in :mod:`.queue`), shown as ``heimer.status=queued``; the
worker that takes the job opens the evaluation run, sets ``running`` and evaluates in a child
process (:mod:`.child`) while it refreshes the lease's heartbeat; then ``done`` (the evaluation
wrote its tags and the description summary) or ``failed`` with ``heimer.error``. A watcher that
shuts down stops its evaluations (their runs end KILLED) and puts the versions back in the queue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import one_line
from .opt_in import ERROR_TAG, FIXED_OPTIONS, STATUS_TAG, OptIn
from .queue import Claims, claim_key, lease

TASK_NAME = "heimer.evaluate_version"
HEARTBEAT_S = 5.0  # how often a worker refreshes the lease while it evaluates


def say(message: str) -> None:
    print(f"[heimer watch {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Jobs:
    """Evaluation jobs on one Huey queue: queue a version once, run a job, recover one."""

    def __init__(self, huey, *, stop: threading.Event | None = None, allow_pickle: bool = False,
                 job_timeout: float | None = None):
        self.huey = huey
        self.job_timeout = job_timeout  # seconds an evaluation may take (None: no limit)
        self.allow_pickle = allow_pickle  # this host's choice (--allow-pickle), never the model's tags
        self.claims = Claims(huey)
        self.stop = stop or threading.Event()
        self.task = huey.task(name=TASK_NAME, context=True)(self._run)

    # ------------------------------------------------------------------ queueing

    def queue(self, client, opt_in: OptIn, version: str, *, via: str) -> bool:
        """Queue ``version`` unless someone already did or it already has a status; True if this
        call queued it."""
        version = str(version)
        key = claim_key(opt_in.name, version)
        task = self.task.s(opt_in.name, version, opt_in.data, opt_in.options, key)
        if not self.claims.claim(key, lease("queued", task.id, 1)):
            return False
        # Re-read after claiming: a job that just ended wrote its status before releasing its claim.
        if (client.get_model_version(opt_in.name, version).tags or {}).get(STATUS_TAG):
            self.claims.release(key)
            return False
        self.enqueue(client, opt_in.name, version, task)
        say(f"{opt_in.name} v{version}: queued ({via})")
        return True

    def requeue(self, client, opt_in: OptIn, version: str, key: str, attempt: int, why: str) -> None:
        """Queue a version again under the claim this caller holds (recovery, shutdown)."""
        task = self.task.s(opt_in.name, str(version), opt_in.data, opt_in.options, key)
        self.claims.write(key, lease("queued", task.id, attempt))
        self.enqueue(client, opt_in.name, str(version), task)
        say(f"{opt_in.name} v{version}: queued again, attempt {attempt} ({why})")

    def enqueue(self, client, name: str, version: str, task) -> None:
        """Show the version as queued, then put its job on the queue (the caller holds the claim)."""
        client.set_model_version_tag(name, version, STATUS_TAG, "queued")
        self.huey.enqueue(task)

    # ------------------------------------------------------------------ running

    def _run(self, name: str, version: str, data: str, options: dict, key: str, task=None) -> str:
        """The Huey task: evaluate one version (see the module docstring)."""
        import mlflow

        held = self.claims.read(key)
        if held is None or held.get("task") != task.id:
            say(f"{name} v{version}: job {task.id} is no longer the version's job; skipped")
            return "skipped"
        client = mlflow.MlflowClient()
        attempt = int(held.get("attempt", 1))
        queued_with = data
        current = OptIn(name, data, options).current(client)
        if current is None:
            fail(client, name, version, "the model no longer opts in (no heimer.data tag): not evaluated")
            self.claims.release(key)
            return "failed"
        data, options = current.data, current.options  # as the tags say now, not when it was queued
        opts = {**options, **FIXED_OPTIONS, "allow_pickle": self.allow_pickle}
        run_id = _open_run(client, name, version, opts.get("experiment", "heimer-evaluations"))
        client.set_tag(run_id, "heimer.data", data)
        if queued_with != data:
            client.set_tag(run_id, "heimer.data_queued", queued_with)
            say(f"{name} v{version}: heimer.data changed while queued ({queued_with} -> {data}): evaluating on {data}")
        self.claims.write(key, lease("running", task.id, attempt, run_id=run_id))
        client.set_model_version_tag(name, version, STATUS_TAG, "running")
        _delete_tag(client, name, version, ERROR_TAG)
        say(f"{name} v{version}: evaluating on {data} (run {run_id}, attempt {attempt})")
        outcome = self._evaluate_in_child(name, version, data, opts, run_id, key, task.id, attempt)
        if outcome.get("terminated") and self.stop.is_set():  # this watcher is shutting down
            end_run(client, run_id, "KILLED", "the watcher shut down; the version is queued again")
            self.requeue(client, OptIn(name, data, options), version, key, attempt, "the watcher shut down")
            return "requeued"
        end_run(client, run_id, "FAILED", outcome.get("error"))  # only if the child could not end it
        if outcome.get("ok"):
            client.set_model_version_tag(name, version, STATUS_TAG, "done")
            gate = f", gate {outcome['gate']}" if outcome.get("gate") else ""
            say(f"{name} v{version}: done, verdict {outcome.get('verdict')}{gate} (run {run_id})")
        else:
            fail(client, name, version, outcome.get("error") or "the evaluation failed")
        self.claims.release(key)
        return "done" if outcome.get("ok") else "failed"

    def _evaluate_in_child(self, name, version, data, options, run_id, key, task_id, attempt) -> dict:
        with tempfile.TemporaryDirectory(prefix="heimer-watch-") as work:
            result = Path(work) / "result.json"
            spec = {"model_uri": f"models:/{name}/{version}", "data": data, "options": options,
                    "run_id": run_id, "result": str(result)}
            env = dict(os.environ, MLFLOW_TRACKING_URI=_tracking_uri(), PYTHONPATH=_python_path())
            for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
                env.pop(leaked, None)
            child = subprocess.Popen([sys.executable, "-m", "heimer_mlflow.watch.child", json.dumps(spec)],
                                     stdin=subprocess.PIPE, env=env)  # our end of stdin: see child.py
            stopped = timed_out = False
            deadline = time.monotonic() + self.job_timeout if self.job_timeout else None
            try:
                while child.poll() is None:
                    if self.stop.is_set() and not stopped:
                        child.terminate()  # the child ends its run KILLED (see child.py)
                        stopped = True
                    if deadline is not None and time.monotonic() > deadline and not timed_out:
                        child.kill()  # hung or too slow: no clean-up to wait for; the run is ended below
                        timed_out = True
                    try:
                        child.wait(timeout=HEARTBEAT_S)
                    except subprocess.TimeoutExpired:
                        pass
                    self.claims.write(key, lease("running", task_id, attempt, run_id=run_id))
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
                if child.stdin:
                    child.stdin.close()
            outcome = json.loads(result.read_text(encoding="utf-8")) if result.exists() else None
            if timed_out:
                return {"ok": False, "error": f"the evaluation took longer than --job-timeout {self.job_timeout:g} s: "
                                              "its process was killed"}
            if stopped and not (outcome or {}).get("ok"):
                return {"ok": False, "error": "stopped with the watcher", "terminated": True}
            if outcome is not None:
                return outcome
            return {"ok": False, "error": f"the evaluation process ended with exit code {child.returncode} "
                                          "before it could report (crashed or killed)"}


def fail(client, name: str, version: str, error: str) -> None:
    client.set_model_version_tag(name, version, STATUS_TAG, "failed")
    client.set_model_version_tag(name, version, ERROR_TAG, one_line(error, 500))
    say(f"{name} v{version}: failed: {one_line(error, 500)}")


def _python_path() -> str:
    """The child imports this very heimer_mlflow, whether installed or run from a checkout."""
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join([root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _open_run(client, name: str, version: str, experiment: str) -> str:
    """The evaluation's run, created before the child starts, so that the lease names it and a
    dead worker's run can be ended by whoever recovers the version."""
    from ..tracking import experiment_id as get_or_create

    experiment_id = get_or_create(client, experiment)  # another worker may create it at the same moment
    tags = {"heimer.watch": "true", "heimer.model_uri": f"models:/{name}/{version}", "heimer.model_name": name,
            "heimer.model_version": str(version)}  # the evaluation sets them again once it begins
    run = client.create_run(experiment_id, run_name=f"evaluate {name} v{version}", tags=tags)
    return run.info.run_id


def end_run(client, run_id: str | None, status: str, error: str | None) -> None:
    """End a run left RUNNING (its process died), with the reason; a no-op for an ended run."""
    if not run_id:
        return
    try:
        if client.get_run(run_id).info.status != "RUNNING":
            return
        client.set_tag(run_id, "heimer.status", status.lower())
        if error:
            client.set_tag(run_id, "heimer.error", one_line(error, 500))
        client.set_terminated(run_id, status)
    except Exception as e:  # noqa: BLE001 - a deleted run: nothing to end
        say(f"run {run_id} could not be ended as {status} ({one_line(e, 200)})")


def _delete_tag(client, name: str, version: str, key: str) -> None:
    try:
        client.delete_model_version_tag(name, version, key)
    except Exception:  # noqa: BLE001 - absent
        pass
