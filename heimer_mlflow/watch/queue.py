"""The queue between trigger (poller, webhook) and workers: Huey, with its SQLite storage in a
file under the working folder by default, or Redis (``--queue redis://HOST:PORT/DB``) so that
workers on several GPU hosts share one queue.

Each version is evaluated once per (model, version, data): whoever queues it first claims it
with ``storage.put_if_empty`` (atomic on SQLite and on Redis), so duplicate deliveries, the
poller and the webhook seeing the same version, and two watchers all end in one job. The
claim's value is the job's lease (JSON): its Huey task id, state (queued / running), attempt,
owner (host and pid), evaluation run and a heartbeat the worker refreshes while it evaluates. A
lease whose heartbeat went stale, or whose owner process is gone, is the sign of a dead worker
(:mod:`.poller` recovers it). The claim is released once the version's ``heimer.status`` says
done or failed; deleting that tag asks for a new evaluation."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from ..errors import HeimerError

DEFAULT_FILE = "heimer-watch.db"
QUEUE_NAME = "heimer-watch"
PREFIX = "heimer-watch:"


def open_queue(url: str | None, folder: Path | None = None):
    """The Huey instance for ``url``: None or a ``sqlite:///PATH`` / plain path is SqliteHuey
    (default ``./heimer-watch.db``), ``redis://`` or ``rediss://`` is RedisHuey."""
    from huey import RedisHuey, SqliteHuey

    if url and url.startswith(("redis://", "rediss://", "unix://")):
        try:
            import redis  # noqa: F401
        except ImportError:
            raise HeimerError(f"--queue {url} needs the Python package redis: pip install 'heimer-mlflow[watch]'") from None
        huey = RedisHuey(QUEUE_NAME, url=url, results=False)
        try:
            huey.storage.conn.ping()
        except Exception as e:  # noqa: BLE001 - refused, unknown host, auth
            raise HeimerError(f"--queue {url}: Redis cannot be reached ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); start it or fix the URL") from None
        return huey
    if url and "://" in url and not url.startswith("sqlite:///"):
        raise HeimerError(f"--queue {url}: give redis://HOST:PORT/DB, sqlite:///PATH or a file path")
    path = Path(url[len("sqlite:///"):] if url and url.startswith("sqlite:///") else (url or (folder or Path.cwd()) / DEFAULT_FILE))
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(QUEUE_NAME, filename=str(path), results=False)


def describe(huey) -> str:
    storage = huey.storage
    if hasattr(storage, "filename"):
        return f"sqlite {storage.filename}"
    kwargs = storage.conn.connection_pool.connection_kwargs
    return f"redis {kwargs.get('host', '')}:{kwargs.get('port', '')}/{kwargs.get('db', 0)}"


def claim_key(name: str, version: str) -> str:
    """One claim per version: whatever its cohort, a version has one job at a time (its job reads
    the cohort when it starts, so changing heimer.data while it waits cannot queue it twice)."""
    return f"{PREFIX}claim:{name}:{version}"


def owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def lease(state: str, task_id: str, attempt: int, **extra) -> dict:
    return {"state": state, "task": task_id, "attempt": attempt, "beat": time.time(), **owner(), **extra}


class Claims:
    """Claims and leases in the queue's own storage (shared by every watcher on the queue)."""

    def __init__(self, huey):
        self.storage = huey.storage

    def claim(self, key: str, value: dict) -> bool:
        """True for the one caller that gets ``key`` (atomic)."""
        return bool(self.storage.put_if_empty(key, json.dumps(value).encode()))

    def read(self, key: str) -> dict | None:
        from huey.constants import EmptyData

        raw = self.storage.peek_data(key)
        if raw is EmptyData or raw is None:
            return None
        return json.loads(raw)

    def write(self, key: str, value: dict) -> None:
        self.storage.put_data(key, json.dumps(value).encode())

    def release(self, key: str) -> None:
        self.storage.pop_data(key)

    def once(self, key: str) -> bool:
        """True the first time ``key`` is seen by any watcher on this queue (delivery ids, the
        recovery of one attempt)."""
        return bool(self.storage.put_if_empty(key, str(time.time()).encode()))

    def forget(self, key: str) -> None:
        self.storage.pop_data(key)


def pending_task_ids(huey) -> set[str]:
    """Ids of the jobs waiting in the queue (not yet taken by a worker)."""
    return {task.id for task in huey.pending()}
