"""The poller: every few seconds (and at a watcher's start) it queues the versions of opted-in
models that have no ``heimer.status`` yet, and recovers the jobs whose worker died.

MLflow keeps no delivery queue (a webhook whose retries fail is gone), so this sweep is what
guarantees that no version is missed; the webhook only makes it faster. Recovery: a version
``queued`` whose job left the queue without starting, or ``running`` whose worker stopped
(its process is gone on this host, or its heartbeat is older than ``stale_after_s``), has its
evaluation run ended FAILED and is queued again, up to ``max_attempts`` in all; then it is
``failed`` with the reason in ``heimer.error``. A version is never left ``running`` forever."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from ..errors import HeimerError, one_line
from .job import Jobs, end_run, fail, say
from .opt_in import STATUS_TAG, OptIn, opt_in_of, opted_in, versions
from .queue import PREFIX, claim_key, lease, pending_task_ids

STALE_AFTER_S = 60.0  # a running job's heartbeat (every 5 s) older than this: its worker is gone
QUEUED_GRACE_S = 30.0  # a worker takes a job, then marks its lease running: time for that step
MAX_ATTEMPTS = 2
ONCE_KEYS_KEEP_S = 3600.0  # delivery ids and recovery marks are forgotten after an hour


@dataclass
class Poller:
    jobs: Jobs
    models: tuple[str, ...] = ()
    alias: str | None = None
    stale_after_s: float = STALE_AFTER_S
    max_attempts: int = MAX_ATTEMPTS
    reported: set = field(default_factory=set)  # models whose bad opt-in was already reported

    def opted_in(self, client) -> list[OptIn]:
        """The opted-in models; a model whose ``heimer.options`` is wrong is reported once and
        left out (the others still get their evaluations)."""
        if self.models:
            return opted_in(client, self.models)
        found, token = [], None
        while True:
            page = client.search_registered_models(max_results=200, page_token=token)
            for model in page:
                try:
                    opt_in = opt_in_of(model)
                except HeimerError as e:
                    if str(e) not in self.reported:
                        self.reported.add(str(e))
                        say(f"left out: {e}")
                    continue
                if opt_in is not None:
                    found.append(opt_in)
            token = page.token
            if not token:
                return found

    def sweep(self, client) -> list[tuple[str, str]]:
        """One pass: queue what waits, recover what died. Returns the (model, version) pairs
        this pass queued, and those it found queued or running (their jobs are on the queue)."""
        queued = []
        pending = None
        for opt_in in self.opted_in(client):
            wanted = self._alias_version(client, opt_in.name)
            for version in versions(client, opt_in.name):
                v = str(version.version)
                if wanted is not None and v != wanted:
                    continue
                status = (version.tags or {}).get(STATUS_TAG)
                if status is None:
                    if self.jobs.queue(client, opt_in, v, via="poller"):
                        queued.append((opt_in.name, v))
                elif status in ("queued", "running"):
                    if pending is None:
                        pending = pending_task_ids(self.jobs.huey)
                    self.recover(client, opt_in, v, status, pending)
                    queued.append((opt_in.name, v))
        self._forget_old_marks()
        return queued

    def _alias_version(self, client, name: str) -> str | None:
        """With --alias: the version holding it ("" when none does); None without --alias."""
        if self.alias is None:
            return None
        try:
            return str(client.get_model_version_by_alias(name, self.alias).version)
        except Exception:  # noqa: BLE001 - no version holds it
            return ""

    def recover(self, client, opt_in: OptIn, version: str, status: str, pending: set) -> bool:
        """Requeue (or fail) a version whose job died; True when it was queued again."""
        key = claim_key(opt_in.name, version)
        held = self.jobs.claims.read(key)
        if held is None:
            # The status says queued/running but no watcher holds the version: the queue's
            # storage was replaced. Queue it afresh.
            task = self.jobs.task.s(opt_in.name, version, opt_in.data, opt_in.options, key)
            if not self.jobs.claims.claim(key, lease("queued", task.id, 1)):
                return False
            self.jobs.enqueue(client, opt_in.name, version, task)
            say(f"{opt_in.name} v{version}: was {status} with no job in this queue; queued")
            return True
        why = self._dead(held, pending)
        if why is None:
            return False
        attempt = int(held.get("attempt", 1))
        if not self.jobs.claims.once(f"{PREFIX}recovered:{key}:{attempt}:{held.get('task')}"):
            return False  # another watcher is recovering it
        end_run(client, held.get("run_id"), "FAILED", why)
        if attempt < self.max_attempts:
            self.jobs.requeue(client, opt_in, version, key, attempt + 1, why)
            return True
        fail(client, opt_in.name, version, f"{why}; gave up after {attempt} attempts")
        self.jobs.claims.release(key)
        return False

    def _dead(self, held: dict, pending: set) -> str | None:
        """Why a lease's job is dead, or None while it may still be alive."""
        age = time.time() - float(held.get("beat", 0))
        if held.get("state") == "queued":
            if held.get("task") in pending or age < QUEUED_GRACE_S:
                return None
            return "its job left the queue without starting (the worker that took it stopped)"
        same_host = held.get("host") == socket.gethostname()
        if same_host and held.get("pid") != os.getpid() and not _alive(int(held.get("pid", 0))):
            return f"the watcher evaluating it (pid {held.get('pid')}) stopped"
        if age > self.stale_after_s:
            return f"its worker on {held.get('host')} sent no heartbeat for {age:.0f} s"
        return None

    def _forget_old_marks(self) -> None:
        """Delivery ids and recovery marks older than an hour (a replay that old is refused
        by its timestamp anyway)."""
        storage = self.jobs.huey.storage
        try:
            items = storage.result_items()
        except Exception as e:  # noqa: BLE001 - a storage without listing
            say(f"could not list the queue's storage to forget old delivery ids ({one_line(e, 200)})")
            return
        now = time.time()
        for key, value in items.items():
            key = key.decode() if isinstance(key, bytes) else str(key)
            if not key.startswith((f"{PREFIX}delivery:", f"{PREFIX}recovered:")):
                continue
            try:
                if now - float(value) > ONCE_KEYS_KEEP_S:
                    storage.pop_data(key)
            except (TypeError, ValueError):
                continue


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
