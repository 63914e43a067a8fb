"""`heimer-mlflow watch`: from a version's registration to ``heimer.status=queued`` (a benchmark,
not a test). Targets: through the webhook <= 2 s; through the poller <= the poll interval + 5 s.

    python benchmarks/watch.py [--versions 5] [--poll-interval 5]

A real `mlflow server` (sqlite, webhooks allowed to loopback http, as in tests/test_watch.py)
and two watchers that only queue (``--workers 0``): one with the webhook receiver and no
poller, one with the poller alone, each on its own registered model. Versions are registered
with ``MlflowClient.create_model_version`` (no training run), one at a time; the clock starts
when the registration returns and stops when the version's tag says ``queued``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test helpers' real `mlflow server`

SECRET = "benchmark-secret"
SOURCE = "s3://heimer-benchmark/model"  # never loaded: the watchers only queue (--workers 0)
SERVER_ENV = {"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
              "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "Ks0L6o4Qb3gJ3m1b3hE3mJx3tq2b5yC0W8cH1uVx9aE=",
              "MLFLOW_WEBHOOK_CACHE_TTL": "1"}  # fmt: skip


def watcher(url: str, folder: Path, label: str, *args: str) -> subprocess.Popen:
    env = dict(os.environ, MLFLOW_TRACKING_URI=url, HEIMER_WEBHOOK_SECRET=SECRET,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    log = open(folder / f"{label}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "heimer_mlflow", "watch", "--workers", "0", *args], cwd=folder,
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip


def ready(check, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start within {timeout:.0f} s")
        time.sleep(0.2)


def _answers(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def latency(client, name: str, source: str, timeout: float) -> float:
    """Seconds from registering a version of ``name`` to its ``heimer.status=queued``."""
    version = client.create_model_version(name, source=source).version
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if (client.get_model_version(name, version).tags or {}).get("heimer.status"):
            return time.monotonic() - started
        time.sleep(0.05)
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=5, help="versions registered per path (default 5)")
    parser.add_argument("--poll-interval", type=float, default=5.0, help="the poller's interval (default 5 s)")
    args = parser.parse_args()
    import mlflow
    import pytest

    from tests.helpers.servers import free_port, tracking_server

    with tempfile.TemporaryDirectory(prefix="heimer-bench-watch-") as tmp, pytest.MonkeyPatch.context() as patch:
        tmp = Path(tmp)
        for key, value in SERVER_ENV.items():
            patch.setenv(key, value)
        with tracking_server("sqlite", tmp / "server") as server:
            client = mlflow.MlflowClient(server.url)
            for name in ("bench-webhook", "bench-poller"):
                client.create_registered_model(name, tags={"heimer.data": str(tmp / "cohort")})
            port = free_port()
            hook = watcher(server.url, tmp, "webhook", "--model", "bench-webhook", "--webhook", f"127.0.0.1:{port}",
                           "--no-poll")  # fmt: skip
            poll = watcher(server.url, tmp, "poller", "--model", "bench-poller", "--poll-interval",
                           str(args.poll_interval))  # fmt: skip
            try:
                client.create_webhook(name="bench", url=f"http://127.0.0.1:{port}/webhook",
                                      events=["model_version.created"], secret=SECRET)  # fmt: skip
                ready(lambda: _answers(f"http://127.0.0.1:{port}/health"), "the webhook receiver")
                ready(lambda: "opted-in models" in (tmp / "poller.log").read_text(), "the poller")
                time.sleep(2)  # the server's webhook cache (MLFLOW_WEBHOOK_CACHE_TTL=1) has expired
                webhook_s = [latency(client, "bench-webhook", SOURCE, 30) for _ in range(args.versions)]
                poller_s = [latency(client, "bench-poller", SOURCE, args.poll_interval + 30)
                            for _ in range(args.versions)]
            finally:
                for proc in (hook, poll):
                    proc.terminate()
                    proc.wait(timeout=30)
            if max(webhook_s) > 2 or max(poller_s) > args.poll_interval + 5:  # a miss: say what the watchers saw
                for label in ("webhook", "poller"):
                    print(f"--- {label} watcher:\n{(tmp / f'{label}.log').read_text()[-3000:]}")
                print("--- server (webhook lines):", *[line for line in (tmp / 'server' / 'server.log').read_text().splitlines() if 'ebhook' in line][-20:], sep="\n")
    for label, values, target in (("webhook", webhook_s, 2.0), ("poller", poller_s, args.poll_interval + 5)):
        worst = max(values)
        print(f"{label:8s} registration -> queued: median {statistics.median(values):.2f} s, worst {worst:.2f} s "
              f"over {len(values)} versions {[round(v, 2) for v in values]} (target <= {target:g} s: {'met' if worst <= target else 'MISSED'})")


if __name__ == "__main__":
    main()
