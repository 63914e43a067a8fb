"""`heimer-mlflow watch`: from a version's registration to ``heimer.status=queued`` (a benchmark,
not a test). Targets: through the webhook <= 2 s; through the poller <= the poll interval + 5 s.

    python benchmarks/watch.py [--versions 5] [--poll-interval 5]
    python benchmarks/watch.py --burst [--models 3] [--versions 10]    (needs redis-server)

``--burst``: a training sweep's burst. ``--models`` opted-in models, each with one logged tiny
DemoCNN, get ``--versions`` versions each, registered as fast as the server takes them (30 within
a few seconds by default), while two watchers share one Redis queue, each with one worker, both
polling (every 5 s) and one also receiving webhooks. Reported: registration -> queued (median,
p95, worst), the watchers' peak resident memory (each watcher process; every evaluation runs in a
child process of its own), the time until every version is done; and checked: exactly one
FINISHED evaluation run per version, each version ``done`` with its own run in its description.

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


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MB; NaN once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def burst(args) -> None:
    import mlflow
    import pytest
    import torch

    from heimer_mlflow import registry
    from heimer_mlflow.demo.nets import DemoCNN
    from heimer_mlflow.demo.synthetic import write_cohort
    from tests.helpers.servers import free_port, tracking_server
    from tests.test_watch import redis_server

    options = '{"n_bootstrap": 50, "workers": 0, "save_cams": "none", "sanity_subjects": 2}'
    with tempfile.TemporaryDirectory(prefix="heimer-bench-burst-") as tmp, pytest.MonkeyPatch.context() as patch:
        tmp = Path(tmp)
        for key, value in SERVER_ENV.items():
            patch.setenv(key, value)
        cohort = write_cohort(tmp / "cohort", n_subjects=12, seed=3, voxel_size=4.0, progress=False).parent
        with tracking_server("sqlite", tmp / "server") as server, redis_server(tmp) as queue:
            mlflow.set_tracking_uri(server.url)
            client = mlflow.MlflowClient(server.url)
            names = [f"burst-{i}" for i in range(args.models)]
            sources = {}
            for i, name in enumerate(names):
                client.create_registered_model(name, tags={"heimer.data": str(cohort), "heimer.options": options})
                torch.manual_seed(i)
                with mlflow.start_run():
                    sources[name] = registry.log_model(DemoCNN(width=4).eval(), "model", input_shape=[1, 46, 55, 46],
                                                       intensity="zscore", pip_requirements=["torch"])
            port = free_port()
            watchers = [watcher(server.url, tmp, "burst-a", "--workers", "1", "--queue", queue, "--poll-interval", "5",
                                "--webhook", f"127.0.0.1:{port}"),
                        watcher(server.url, tmp, "burst-b", "--workers", "1", "--queue", queue, "--poll-interval", "5")]
            try:
                client.create_webhook(name="burst", url=f"http://127.0.0.1:{port}/webhook",
                                      events=["model_version.created"], secret=SECRET)  # fmt: skip
                ready(lambda: _answers(f"http://127.0.0.1:{port}/health"), "the webhook receiver")
                ready(lambda: all("opted-in models" in (tmp / f"burst-{x}.log").read_text() for x in "ab"), "the watchers")
                time.sleep(2)  # the server's webhook cache (MLFLOW_WEBHOOK_CACHE_TTL=1) has expired
                registered, started = {}, time.monotonic()
                for _ in range(args.versions):
                    for name in names:
                        info = sources[name]
                        version = client.create_model_version(name, source=info.model_uri, run_id=info.run_id,
                                                              model_id=info.model_id).version
                        registered[(name, str(version))] = time.monotonic()
                spread = time.monotonic() - started
                queued, done = {}, {}
                deadline = time.monotonic() + args.timeout
                while len(done) < len(registered) and time.monotonic() < deadline:
                    for key in registered:
                        if key in done:
                            continue
                        state = (client.get_model_version(*key).tags or {}).get("heimer.status")
                        if state and key not in queued:
                            queued[key] = time.monotonic() - registered[key]
                        if state in ("done", "failed"):
                            done[key] = state
                    time.sleep(0.2)
                all_done_s = time.monotonic() - started
                peaks = [peak_rss_mb(w.pid) for w in watchers]
            finally:
                for proc in watchers:
                    proc.terminate()
                    proc.wait(timeout=120)
            experiment = client.get_experiment_by_name("heimer-evaluations")
            runs = client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []
            per_version = {}
            for run in runs:
                key = (run.data.tags.get("heimer.model_name"), run.data.tags.get("heimer.model_version"))
                per_version.setdefault(key, []).append(run.info.status)
            wrong = {k: v for k, v in per_version.items() if v != ["FINISHED"]}
            not_done = [k for k in registered if done.get(k) != "done"]
            bad_blocks = [k for k in registered if client.get_model_version(*k).tags.get("heimer.evaluation_run_id", "-")
                          not in (client.get_model_version(*k).description or "")]
    latencies = sorted(queued.values())
    p95 = latencies[min(len(latencies) - 1, int(round(0.95 * (len(latencies) - 1))))] if latencies else float("inf")
    print(f"burst: {len(registered)} versions of {args.models} models registered in {spread:.1f} s; "
          f"2 watchers, 1 worker each, one Redis queue, webhook + poller (5 s)")
    print(f"registration -> queued: median {statistics.median(latencies):.2f} s, p95 {p95:.2f} s, worst {latencies[-1]:.2f} s")
    print(f"all done after {all_done_s:.0f} s; watchers' peak RSS {', '.join(f'{p:.0f} MB' for p in peaks)}")
    print(f"evaluation runs: {len(runs)} for {len(registered)} versions; versions not done: {not_done or 'none'}; "
          f"versions with other than one FINISHED run: {wrong or 'none'}; description blocks without their run: "
          f"{bad_blocks or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=int, default=None, help="versions registered per path, or per model with "
                                                                    "--burst (default 5; 10 with --burst)")
    parser.add_argument("--poll-interval", type=float, default=5.0, help="the poller's interval (default 5 s)")
    parser.add_argument("--burst", action="store_true", help="the burst benchmark (see above)")
    parser.add_argument("--models", type=int, default=3, help="opted-in models in the burst (default 3)")
    parser.add_argument("--timeout", type=float, default=3600, help="give the burst up after this many seconds")
    args = parser.parse_args()
    if args.burst:
        args.versions = args.versions or 10
        return burst(args)
    args.versions = args.versions or 5
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
