"""`heimer-mlflow watch`: every new version of an opted-in registered model evaluates itself.

Fast cases (no tracking server): the webhook signature against MLflow's own signer, the
receiver's answers (forged, stale, replayed, MLflow's test event) on a real uvicorn port, the
description block's merge and its 5000-character limit, the opt-in tag's errors, one claim
per version on a real Huey SQLite queue, a dead worker's job requeued then failed, and the service
itself: one sweep of `watch(once=True)` on the session's sqlite store evaluates a version once.

Server cases (`mlflow server` on sqlite, webhooks allowed to loopback http): a registered version
ends `done` through a real webhook delivery, with verdict, report and description; forged and
replayed deliveries queue nothing and the same event four times gives one evaluation run; a
watcher killed during an evaluation and restarted leaves the version `done` (the version was
registered while no watcher ran); two workers on one Redis queue evaluate each version once
(without redis-server that case skips, and fails under HEIMER_REQUIRE_SERVERS=1).
"""

from __future__ import annotations

import dataclasses

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import pytest
import requests

from heimer_mlflow import summary
from heimer_mlflow.errors import HeimerError
from heimer_mlflow.watch import webhook as wh
from heimer_mlflow.watch.job import Jobs
from heimer_mlflow.watch.opt_in import OptIn, read_options
from heimer_mlflow.watch.queue import open_queue
from heimer_mlflow.watch.service import SeenOnce

from .helpers.servers import free_port, tail, tracking_server, unavailable, using
from .helpers.cohorts import good_rows, write_manifest
from .helpers.models import TinyCNN
from .helpers.tracking import new_version, register_tiny_model, subprocess_env

SECRET = "s3cret-for-tests"
# evaluate options that keep one evaluation to seconds on 2 cores
FAST_OPTIONS = json.dumps({"n_bootstrap": 50, "workers": 0, "save_cams": "none", "sanity_subjects": 2})
SERVER_ENV = {"MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https", "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
              "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "Ks0L6o4Qb3gJ3m1b3hE3mJx3tq2b5yC0W8cH1uVx9aE=",
              # the server caches the webhook list per event for 60 s by default: a webhook created
              # after an event was delivered would be seen a minute later
              "MLFLOW_WEBHOOK_CACHE_TTL": "1"}  # fmt: skip


# --------------------------------------------------------------------------- signature, receiver


def test_signature_is_mlflows_and_forgeries_fail():
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = json.dumps({"entity": "model_version", "action": "created", "data": {"name": "m", "version": "1"}})
    mlflows = _generate_hmac_signature(SECRET, "d-1", "1700000000", body)
    assert wh.signature(SECRET, "d-1", "1700000000", body.encode()) == mlflows
    assert wh.verify(SECRET, "d-1", "1700000000", body.encode(), mlflows)
    assert wh.verify(SECRET, "d-1", "1700000000", body.encode(), f"v1,AAAA {mlflows}")  # several signatures
    assert not wh.verify(SECRET, "d-1", "1700000000", body.encode() + b" ", mlflows)  # body changed
    assert not wh.verify(SECRET, "d-2", "1700000000", body.encode(), mlflows)  # another delivery id
    assert not wh.verify("other", "d-1", "1700000000", body.encode(), mlflows)


def signed_post(url: str, payload: dict, *, secret: str = SECRET, delivery_id: str | None = None,
                timestamp: int | None = None) -> requests.Response:
    """A delivery as MLflow sends it (body, headers, signature)."""
    body = json.dumps(payload)
    delivery_id = delivery_id or str(uuid.uuid4())
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    headers = {"Content-Type": "application/json", wh.DELIVERY_HEADER: delivery_id, wh.TIMESTAMP_HEADER: timestamp,
               wh.SIGNATURE_HEADER: wh.signature(secret, delivery_id, timestamp, body.encode())}  # fmt: skip
    return requests.post(url, data=body.encode(), headers=headers, timeout=10)


def created(name: str, version: str) -> dict:
    return {"entity": "model_version", "action": "created", "timestamp": "2026-01-01T00:00:00+00:00",
            "data": {"name": name, "version": version, "source": "models:/m-1", "run_id": None, "tags": {},
                     "description": None}}  # fmt: skip


def test_receiver_rejects_forged_stale_and_replayed_deliveries(tmp_path):
    """A real uvicorn receiver; the event handler records what would be queued."""
    events = []
    huey = open_queue(None, tmp_path)
    app = wh.make_app(SECRET, lambda *event: events.append(event) or "queued", SeenOnce(Jobs(huey).claims))
    receiver = wh.Receiver(app, f"127.0.0.1:{free_port()}")
    receiver.start()
    url = f"http://127.0.0.1:{receiver.port}/webhook"
    try:
        forged = signed_post(url, created("m", "1"), secret="not-the-secret")
        assert forged.status_code == 401 and events == []
        unsigned = requests.post(url, json=created("m", "1"), timeout=10)
        assert unsigned.status_code == 401 and events == []
        stale = signed_post(url, created("m", "1"), timestamp=int(time.time()) - 301)
        assert stale.status_code == 400 and "timestamp" in stale.json()["reason"] and events == []
        # how fast it answers is benchmarks/watch.py's (registration -> queued through the webhook)
        first = signed_post(url, created("m", "1"), delivery_id="delivery-1")
        assert first.status_code == 200 and first.json()["status"] == "queued"
        assert events == [("model_version", "created", created("m", "1")["data"])]
        replay = signed_post(url, created("m", "1"), delivery_id="delivery-1")
        assert replay.status_code == 200 and replay.json()["status"] == "ignored" and len(events) == 1
        # MLflow's "test webhook" sends the event's example payload
        from mlflow.webhooks.types import ModelVersionCreatedPayload

        test_event = {**created("x", "1"), "data": dict(ModelVersionCreatedPayload.example())}
        answered = signed_post(url, test_event)
        assert answered.status_code == 200 and "test event" in answered.json()["reason"] and len(events) == 1
    finally:
        receiver.stop()
    # a second receiver on the same queue (a restarted watcher) still knows the delivery id
    app = wh.make_app(SECRET, lambda *event: events.append(event) or "queued", SeenOnce(Jobs(open_queue(None, tmp_path)).claims))
    receiver = wh.Receiver(app, f"127.0.0.1:{free_port()}")
    receiver.start()
    try:
        again = signed_post(f"http://127.0.0.1:{receiver.port}/webhook", created("m", "1"), delivery_id="delivery-1")
        assert again.json()["status"] == "ignored" and len(events) == 1
    finally:
        receiver.stop()


# --------------------------------------------------------------------------- description block


def a_summary(reason: str = "the map stays inside the brain", **extra) -> summary.Summary:
    metrics = {"roc_auc": 0.81, "roc_auc_ci_lower": 0.7, "roc_auc_ci_upper": 0.9, "sensitivity": 0.75,
               "sensitivity_ci_lower": 0.5, "sensitivity_ci_upper": 0.9, "specificity": 0.8}
    return summary.Summary(verdict="pass", reason=reason, metrics=metrics, run_id="r" * 32, experiment_id="7",
                           report_uri=f"mlflow-artifacts:/7/{'r' * 32}/artifacts/report/m-v1.pdf",
                           report_path="report/m-v1.pdf", html_path="report/html/index.html", model_name="m",
                           **extra)  # fmt: skip


def test_description_block_opens_the_description_and_keeps_peoples_text():
    """The versions list previews a description's first line: ours is the verdict in words, never
    a marker; people's text follows, whole, and only our block is replaced."""
    people = "Trained on ADNI-3, site 2 held out.\n\nOwner: @maria"
    first, level = summary.merge(people, a_summary())
    assert level == 0 and first.endswith(people) and first.count(summary.START) == 1
    assert first.splitlines()[0] == "pass · AUC 0.81 [0.70, 0.90] · promote · heimer-mlflow"
    assert not first.startswith("<") and first.index(summary.START) > first.index("\n")
    assert "**Verdict: pass**" in first and "| AUC | 0.810 | 0.700 to 0.900 |" in first
    assert "| Specificity | 0.800 | n/a |" in first  # no interval logged: said, not invented
    assert "**Recommendation: promote.** The checks passed" in first
    edited = first + "\n\nReviewed on Monday."  # someone writes below our block
    second, _ = summary.merge(edited, a_summary("a new reason"))
    assert second.count(summary.START) == 1 and second.count(summary.END) == 1
    assert second.count(summary.HEADLINE_END) == 1
    assert "a new reason" in second and "the map stays inside the brain" not in second
    assert second.startswith("pass · AUC") and second.endswith(people + "\n\nReviewed on Monday.")
    assert summary.people_text(second) == people + "\n\nReviewed on Monday."
    assert summary.merge(None, a_summary())[0].startswith("pass · AUC")
    # a block of the earlier layout (after people's text, marker first) moves to the top
    old = people + "\n\n" + summary.START + "\n#### heimer-mlflow evaluation\nold\n" + summary.END
    moved, _ = summary.merge(old, a_summary())
    assert moved.startswith("pass · AUC") and moved.endswith(people) and "old" not in moved


def test_description_links_are_relative_to_the_mlflow_ui():
    champion = {"champion_version": "1", "roc_auc_diff": 0.07, "roc_auc_diff_ci_lower": 0.004,
                "roc_auc_diff_ci_upper": 0.14, "delong_p": 0.045, "n_shared": 60, "champion_verdict": "pass"}
    shortcut = dataclasses.replace(a_summary("62% of the HiResCAM lies outside the brain (limit 26%)"),
                                   verdict="review", champion=champion,
                                   viewers=(("HiResCAM, AD mean", "viewers/hirescam_AD_mean.html"),))
    block, _ = summary.merge("", shortcut)
    run = "r" * 32
    assert block.splitlines()[0] == ("review · AUC 0.81 [0.70, 0.90] · +0.07 vs champion v1 (p 0.045) · "
                                     "review before promoting · heimer-mlflow")
    assert f"[Evaluation run](#/experiments/7/runs/{run})" in block
    assert f"[PDF report](#/experiments/7/runs/{run}/artifacts/report/m-v1.pdf)" in block
    assert f"[HTML report](#/experiments/7/runs/{run}/artifacts/report/html/index.html)" in block
    assert f"[HiResCAM, AD mean](#/experiments/7/runs/{run}/artifacts/viewers/hirescam_AD_mean.html)" in block
    assert "[champion v1](#/models/m/versions/1)" in block
    assert "**Recommendation: review before promoting.** The checks found that 62% of the HiResCAM" in block
    assert "http" not in block  # nothing tied to the host that ran the evaluation


def test_description_stays_within_5000_characters_and_never_cuts_peoples_text():
    long_reason = "the model looks at the skull; " * 100
    people = "x" * 4000
    merged, level = summary.merge(people, a_summary(long_reason))
    assert len(merged) <= summary.DESCRIPTION_LIMIT and level >= 1 and merged.endswith(people)
    assert summary.END in merged and merged.startswith("pass · AUC")
    # people's text alone leaves no room: it stays whole, and our older block goes
    older, _ = summary.merge("y" * 100, a_summary())
    crowded = older.replace("y" * 100, "y" * 4990)
    merged, level = summary.merge(crowded, a_summary())
    assert level is None and merged == "y" * 4990 and summary.START not in merged


# --------------------------------------------------------------------------- opt-in, claims


def test_options_tag_errors_name_the_model_and_the_fix():
    assert read_options("m", '{"threshold": 0.4, "cam": "gradcam"}') == {"threshold": 0.4, "cam": "gradcam"}
    for text, words in [("{threshold: 0.4}", "not JSON"), ('["threshold"]', "JSON object"),
                        ('{"treshold": 0.4}', "unknown option 'treshold'"), ('{"threshold": 2}', "threshold=2"),
                        ('{"allow_pickle": true}', "cannot set 'allow_pickle'; only the watcher's command line")]:
        with pytest.raises(HeimerError) as caught:
            read_options("adni-cnn", text)
        message = str(caught.value)
        assert "'adni-cnn'" in message and words in message and "\n" not in message, message


def test_one_claim_per_version_across_queues_on_one_file(tracking, tmp_path):
    """Two watchers on one SQLite queue, each asked twice (poller and webhook): one job."""
    client = mlflow.MlflowClient()
    name = "watch-claims"
    client.create_registered_model(name)
    version = client.create_model_version(name, source=str(tmp_path), run_id=None).version
    opt_in = OptIn(name, str(tmp_path / "cohort"), {})
    one, two = Jobs(open_queue(None, tmp_path)), Jobs(open_queue(None, tmp_path))
    results = [one.queue(client, opt_in, version, via="poller"), two.queue(client, opt_in, version, via="webhook"),
               one.queue(client, opt_in, version, via="webhook"), two.queue(client, opt_in, version, via="poller")]
    assert results == [True, False, False, False]
    assert one.huey.pending_count() == 1
    assert client.get_model_version(name, version).tags["heimer.status"] == "queued"
    # other data for the same version is another claim, but the version's status already says queued
    assert not two.queue(client, OptIn(name, "/elsewhere", {}), version, via="poller")
    assert one.huey.pending_count() == 1


def test_dead_worker_on_another_host_is_requeued_then_failed(tracking, tmp_path):
    """A running job whose worker (on another host) stopped beating: its run ends FAILED and the
    version is queued again; after the last attempt it ends failed with the reason, not running."""
    from heimer_mlflow.watch.poller import Poller
    from heimer_mlflow.watch.queue import claim_key, lease

    client = mlflow.MlflowClient()
    name = "watch-dead-worker"
    client.create_registered_model(name)
    version = client.create_model_version(name, source=str(tmp_path), run_id=None).version
    opt_in = OptIn(name, str(tmp_path / "cohort"), {})
    jobs = Jobs(open_queue(None, tmp_path))
    poller = Poller(jobs, stale_after_s=60, max_attempts=2)
    key = claim_key(name, version)
    experiment = mlflow.set_experiment("watch-dead-worker").experiment_id
    for attempt, expected in ((1, "queued"), (2, "failed")):
        run_id = client.create_run(experiment).info.run_id
        stale = {**lease("running", f"task-{attempt}", attempt, run_id=run_id), "host": "gpu-host-7", "pid": 1,
                 "beat": time.time() - 61}  # fmt: skip
        jobs.claims.write(key, stale)
        client.set_model_version_tag(name, version, "heimer.status", "running")
        assert poller._dead({**stale, "beat": time.time()}, set()) is None  # still beating: left alone
        assert poller.recover(client, opt_in, version, "running", set()) is (expected == "queued")
        tags = client.get_model_version(name, version).tags
        assert tags["heimer.status"] == expected, tags
        run = client.get_run(run_id)
        assert run.info.status == "FAILED" and "no heartbeat" in run.data.tags["heimer.error"]
        if expected == "queued":
            assert jobs.claims.read(key)["attempt"] == 2 and jobs.huey.pending_count() == 1
            # a second watcher that read the dead lease a moment ago does not recover it again
            requeued = jobs.claims.read(key)
            jobs.claims.write(key, stale)
            assert not poller.recover(client, opt_in, version, "running", set())
            jobs.claims.write(key, requeued)
            assert jobs.huey.pending_count() == 1
    assert "gave up after 2 attempts" in tags["heimer.error"]
    assert jobs.claims.read(key) is None  # released: deleting heimer.status asks for a new evaluation


def test_one_sweep_evaluates_an_opted_in_version_once_and_marks_it_done(tracking, tmp_path, capsys):
    """The watch service in the fast subset: watch(once=True) with one worker on the session's
    sqlite store and a SQLite queue sweeps, queues the opted-in model's new version, evaluates it
    (8 small heads, in a child process as a deployed watcher does), sets heimer.status=done, and
    a second sweep finds nothing to do: one FINISHED evaluation run, named in the description."""
    from heimer_mlflow.watch.service import watch

    name = "watch-fast"
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    manifest = write_manifest(cohort, good_rows(cohort))
    client = mlflow.MlflowClient()
    client.create_registered_model(name, tags={"heimer.data": str(manifest), "heimer.options": FAST_OPTIONS})
    version = new_version(name, TinyCNN(), intensity="zscore")
    assert watch(models=(name,), once=True, workers=1, folder=tmp_path / "queue") == 0
    first = capsys.readouterr().err
    assert f"{name} v{version}: queued (poller)" in first and "sweep: 1 version(s) to wait for" in first, first
    tags = client.get_model_version(name, version).tags
    assert tags["heimer.status"] == "done", tags
    run = client.get_run(tags["heimer.evaluation_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["n_subjects"] == 8
    assert (run.data.tags["heimer.model_name"], run.data.tags["heimer.model_version"]) == (name, version)
    assert run.info.run_id in client.get_model_version(name, version).description
    assert watch(models=(name,), once=True, workers=1, folder=tmp_path / "queue") == 0
    assert "sweep: 0 version(s) to wait for" in capsys.readouterr().err
    assert [r.info.run_id for r in evaluation_runs(client, name, version)] == [run.info.run_id]


# --------------------------------------------------------------------------- real servers


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on sqlite that may deliver webhooks to loopback http (dev-only settings)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in SERVER_ENV.items():
            patch.setenv(key, value)
        with tracking_server("sqlite", tmp_path_factory.mktemp("watch-server")) as running:
            yield running


@pytest.fixture(scope="module")
def cohort(synthetic_cohort):
    return synthetic_cohort


def opted_in_model(server, name: str, cohort: Path) -> str:
    """Register ``name`` with its opt-in tags set before its first version; returns that version."""
    with using(server) as client:
        client.create_registered_model(name, tags={"heimer.data": str(cohort), "heimer.options": FAST_OPTIONS})
        return register_tiny_model(name)


class Watcher:
    """`heimer-mlflow watch ARGS` in a subprocess; its stderr in a file."""

    def __init__(self, server, folder: Path, label: str, *args, env: dict | None = None):
        self.err = folder / f"{label}.err"
        environment = {**subprocess_env(folder), "MLFLOW_TRACKING_URI": server.url, "HEIMER_WEBHOOK_SECRET": SECRET,
                       **(env or {})}  # fmt: skip
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "heimer_mlflow", "watch", *map(str, args)],
                                         cwd=folder, env=environment, stdout=err, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)  # fmt: skip

    def log(self) -> str:
        return tail(self.err, 6000)

    def finish(self, timeout: float = 300) -> str:
        """Wait for a `--once` watcher to exit (stopped after ``timeout``); its log."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.stop()
        return self.log()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_for(what: str, check, timeout: float, watcher: Watcher | None = None, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if watcher is not None and watcher.proc.poll() is not None:
            pytest.fail(f"the watcher exited ({watcher.proc.returncode}) before {what}:\n{watcher.log()}")
        time.sleep(interval)
    pytest.fail(f"not within {timeout:.0f} s: {what}" + (f"\n{watcher.log()}" if watcher else ""))


def status(client, name: str, version: str) -> str | None:
    return (client.get_model_version(name, version).tags or {}).get("heimer.status")


def evaluation_runs(client, name: str, version: str) -> list:
    experiment = client.get_experiment_by_name("heimer-evaluations")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id],
                              f"tags.`heimer.model_name` = '{name}' and tags.`heimer.model_version` = '{version}'")


@pytest.mark.server
@pytest.mark.slow
def test_webhook_delivery_evaluates_the_version_once(server, cohort, tmp_path):
    """MLflow delivers model_version.created to the watcher, which evaluates the version: `done`
    with verdict, report and description. Forged deliveries get 401 and queue nothing; the same
    event again (a replay with its delivery id, and 4 deliveries with new ids) gives no second run."""
    name = "watch-webhook"
    waiting = opted_in_model(server, name, cohort)  # registered before the webhook: no delivery for it
    port = free_port()
    watcher = Watcher(server, tmp_path, "watcher", "--webhook", f"127.0.0.1:{port}", "--no-poll")
    url = f"http://127.0.0.1:{port}/webhook"
    try:
        wait_for("the receiver answers", lambda: _answers(f"http://127.0.0.1:{port}/health"), 60, watcher)
        forged = signed_post(url, created(name, waiting), secret="guessed")
        assert forged.status_code == 401
        with using(server) as client:
            hook = client.create_webhook(name="heimer-watch", url=url, events=["model_version.created"], secret=SECRET)
            time.sleep(1.5)  # MLFLOW_WEBHOOK_CACHE_TTL
            tested = client.test_webhook(hook.webhook_id)
            assert tested.success, tested  # MLflow's test event: answered, ignored
            with using(server):
                version = register_tiny_model(name)
            wait_for(f"{name} v{version} done", lambda: status(client, name, version) in ("done", "failed"), 150, watcher)
            tags = client.get_model_version(name, version).tags
            assert tags["heimer.status"] == "done", (tags, watcher.log())
            assert tags["heimer.verdict"] in ("pass", "review") and tags["heimer.report"].endswith(f"{name}-v{version}.pdf")
            description = client.get_model_version(name, version).description
            assert summary.START in description and tags["heimer.evaluation_run_id"] in description
            assert description.startswith(tags["heimer.verdict"] + " · AUC ")  # what the versions list shows
            assert "(#/experiments/" in description and "/artifacts/report/" in description  # links relative to the UI
            # again and again: a replay, four deliveries of the same event; then a forged one
            first = signed_post(url, created(name, version), delivery_id="same-delivery")
            assert signed_post(url, created(name, version), delivery_id="same-delivery").json()["status"] == "ignored"
            answers = [signed_post(url, created(name, version)).json()["status"] for _ in range(4)]
            assert first.status_code == 200 and all(a.startswith("ignored: already done") for a in answers), answers
            assert signed_post(url, created(name, waiting), secret="guessed").status_code == 401
            time.sleep(2)
            assert len(evaluation_runs(client, name, version)) == 1
            assert status(client, name, waiting) is None  # only forged deliveries named it
            assert client.get_run(tags["heimer.evaluation_run_id"]).info.status == "FINISHED"
    finally:
        watcher.stop()
    assert "Traceback" not in watcher.log(), watcher.log()


@pytest.mark.server
@pytest.mark.slow
def test_alias_events_requeue_only_for_the_watched_alias_on_new_data(server, cohort, tmp_path):
    """A version evaluated before gets `@challenger` (MLflow delivers model_version_alias.created):
    the watcher (`--alias challenger`) leaves it alone while heimer.data is what it was evaluated
    on, ignores another alias, and evaluates it again once heimer.data changed."""
    name = "watch-alias"
    version = opted_in_model(server, name, cohort)
    first = Watcher(server, tmp_path, "first", "--once")
    log = first.finish()
    assert first.proc.returncode == 0, log
    port = free_port()
    watcher = Watcher(server, tmp_path, "alias", "--webhook", f"127.0.0.1:{port}", "--no-poll", "--alias", "challenger")
    url = f"http://127.0.0.1:{port}/webhook"
    moved = tmp_path / "cohort-moved"
    moved.symlink_to(cohort, target_is_directory=True)
    try:
        wait_for("the receiver answers", lambda: _answers(f"http://127.0.0.1:{port}/health"), 60, watcher)
        with using(server) as client:
            client.create_webhook(name="heimer-watch-alias", url=url, events=["model_version_alias.created"],
                                  secret=SECRET)  # fmt: skip
            time.sleep(1.5)  # MLFLOW_WEBHOOK_CACHE_TTL
            client.set_registered_model_alias(name, "staging", version)
            wait_for("the staging event", lambda: "ignored: only versions with the alias challenger" in watcher.log(),
                     60, watcher)  # fmt: skip
            client.set_registered_model_alias(name, "challenger", version)
            wait_for("the challenger event", lambda: f"ignored: already done on {cohort}" in watcher.log(), 60, watcher)
            assert len(evaluation_runs(client, name, version)) == 1
            client.set_registered_model_tag(name, "heimer.data", str(moved))
            client.delete_registered_model_alias(name, "challenger")
            client.set_registered_model_alias(name, "challenger", version)
            wait_for("the new evaluation", lambda: len(evaluation_runs(client, name, version)) == 2
                     and status(client, name, version) in ("done", "failed"), 200, watcher)  # fmt: skip
            assert status(client, name, version) == "done", watcher.log()
            runs = sorted(evaluation_runs(client, name, version), key=lambda r: r.info.start_time)
            assert [r.data.tags.get("heimer.data") for r in runs] == [str(cohort), str(moved)]
            assert all(r.info.status == "FINISHED" for r in runs)
            assert "heimer.data changed since its evaluation" in watcher.log()
    finally:
        watcher.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.server
@pytest.mark.slow
def test_killed_watcher_restarted_finishes_the_version(server, cohort, tmp_path):
    """A version registered while no watcher ran is picked up when one starts; that watcher is
    SIGKILLed during the evaluation; the next one (`--once`) ends the dead run and evaluates the
    version again: `done`, never left `running`."""
    name = "watch-restart"
    version = opted_in_model(server, name, cohort)
    first = Watcher(server, tmp_path, "first", "--poll-interval", "1")
    with using(server) as client:
        try:
            wait_for("the evaluation is running", lambda: status(client, name, version) == "running", 120, first)
            begun = lambda: any(r.data.tags.get("heimer.status") == "running" for r in evaluation_runs(client, name, version))  # noqa: E731
            wait_for("the evaluation began in its run", begun, 120, first)
            time.sleep(3)  # into the engine
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait()
        finally:
            first.stop()
        assert status(client, name, version) == "running"
        dead_run = evaluation_runs(client, name, version)[0].info.run_id
        second = Watcher(server, tmp_path, "second", "--once")
        log = second.finish()
        assert second.proc.returncode == 0, log
        assert "stopped" in log and "attempt 2" in log, log
        tags = client.get_model_version(name, version).tags
        assert tags["heimer.status"] == "done" and tags["heimer.evaluation_run_id"] != dead_run, (tags, log)
        runs = {r.info.run_id: r.info.status for r in evaluation_runs(client, name, version)}
        assert runs[dead_run] in ("KILLED", "FAILED") and list(runs.values()).count("FINISHED") == 1, runs


@pytest.mark.server
@pytest.mark.slow
def test_pickled_versions_are_evaluated_only_with_allow_pickle(server, cohort, tmp_path):
    """The watcher loads pt2 versions; a pickled one ends failed with the fix in heimer.error, and
    nothing of it is unpickled; a watcher started with --allow-pickle evaluates it."""
    from heimer_mlflow.demo.nets import DemoCNN
    from heimer_mlflow.watch.opt_in import ERROR_TAG, STATUS_TAG

    from .helpers.cohorts import SYNTHETIC_INPUT_SHAPE
    from .helpers.tracking import log_version

    name = "watch-pickle"
    with using(server) as client:
        client.create_registered_model(name, tags={"heimer.data": str(cohort), "heimer.options": FAST_OPTIONS})
        exported = register_tiny_model(name)
        pickled = log_version(name, DemoCNN(width=4).eval(), input_shape=SYNTHETIC_INPUT_SHAPE, intensity="zscore",
                              experiment="tiny-training", serialization_format="pickle")  # fmt: skip
        first = Watcher(server, tmp_path, "pt2-only", "--once")
        log = first.finish()
        assert first.proc.returncode == 1, log  # one evaluation failed
        assert "pt2 models" in log, log
        assert status(client, name, exported) == "done", log
        tags = client.get_model_version(name, pickled).tags
        assert tags[STATUS_TAG] == "failed" and "pickled model" in tags[ERROR_TAG], tags
        assert "--allow-pickle" in tags[ERROR_TAG] and "pt2" in tags[ERROR_TAG], tags
        assert "heimer.evaluation_run_id" not in tags
        refused = [r for r in evaluation_runs(client, name, pickled)]
        assert [r.info.status for r in refused] == ["FAILED"], refused
        client.delete_model_version_tag(name, pickled, STATUS_TAG)  # asks for a new evaluation
        second = Watcher(server, tmp_path, "allow-pickle", "--once", "--allow-pickle")
        log = second.finish()
        assert second.proc.returncode == 0, log
        tags = client.get_model_version(name, pickled).tags
        assert tags[STATUS_TAG] == "done" and tags.get("heimer.verdict"), tags
        run = client.get_run(tags["heimer.evaluation_run_id"])
        assert run.info.status == "FINISHED" and run.data.params["heimer.serialization"] == "pickle"


@pytest.mark.server
@pytest.mark.slow
def test_an_evaluation_past_the_job_timeout_fails_and_the_worker_goes_on(server, cohort, tmp_path):
    """--job-timeout 1 (no evaluation fits in a second): each version's child is killed, its run
    ends FAILED with the reason, the version failed; the worker takes the next version."""
    from heimer_mlflow.watch.opt_in import ERROR_TAG, STATUS_TAG

    name = "watch-timeout"
    first = opted_in_model(server, name, cohort)
    with using(server) as client:
        second = register_tiny_model(name)
        watcher = Watcher(server, tmp_path, "timeout", "--once", "--job-timeout", "1")
        log = watcher.finish()
        assert watcher.proc.returncode == 1, log
        for version in (first, second):
            tags = client.get_model_version(name, version).tags
            assert tags[STATUS_TAG] == "failed" and "--job-timeout 1 s" in tags[ERROR_TAG], (version, tags, log)
            runs = evaluation_runs(client, name, version)
            assert [r.info.status for r in runs] == ["FAILED"], runs
            assert "--job-timeout 1 s" in runs[0].data.tags["heimer.error"]


@pytest.mark.server
@pytest.mark.slow
def test_heimer_data_changed_while_queued_evaluates_once_on_the_new_data(server, cohort, tmp_path):
    """A version is queued; its model's heimer.data then changes (here to another path of the same
    cohort); the watcher that starts next evaluates it once, on the data current when the job
    started, and the run says which."""
    from heimer_mlflow.watch.poller import Poller

    name = "watch-data-changed"
    version = opted_in_model(server, name, cohort)
    moved = tmp_path / "cohort-moved"
    moved.symlink_to(cohort, target_is_directory=True)
    with using(server) as client:
        jobs = Jobs(open_queue(None, tmp_path))  # the queue file the watcher below uses
        assert (name, version) in Poller(jobs, (name,)).sweep(client)
        assert status(client, name, version) == "queued"
        client.set_registered_model_tag(name, "heimer.data", str(moved))
        watcher = Watcher(server, tmp_path, "data-changed", "--once", "--model", name)
        log = watcher.finish()
        assert watcher.proc.returncode == 0, log
        runs = evaluation_runs(client, name, version)
        assert [r.info.status for r in runs] == ["FINISHED"], (runs, log)
        assert runs[0].data.tags["heimer.data"] == str(moved)
        assert runs[0].data.tags["heimer.data_queued"] == str(cohort)
        assert status(client, name, version) == "done" and "changed while queued" in log, log


# --------------------------------------------------------------------------- Redis


@contextlib.contextmanager
def redis_server(folder: Path):
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server not found on PATH (Debian package redis-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        import redis

        connection = redis.Redis(port=port)
        wait_for("redis answers", lambda: _pings(connection), 20)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _pings(connection) -> bool:
    try:
        return bool(connection.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


@pytest.mark.server
@pytest.mark.slow
def test_two_workers_on_one_redis_queue_evaluate_each_version_once(server, cohort, tmp_path):
    """A small burst: two versions of each of two opted-in models registered back to back while two
    watchers share one Redis queue, each with one worker and a poller (every second), one also
    receiving MLflow's webhooks: each version evaluated exactly once, its own run in its
    description. (The 30-version burst is `benchmarks/watch.py --burst`.)"""
    names = ("watch-redis-a", "watch-redis-b")
    with redis_server(tmp_path) as queue:
        with using(server) as client:
            for name in names:
                client.create_registered_model(name, tags={"heimer.data": str(cohort), "heimer.options": FAST_OPTIONS})
        port = free_port()
        watchers = [Watcher(server, tmp_path, "host-a", "--workers", "1", "--poll-interval", "1", "--queue", queue,
                            "--webhook", f"127.0.0.1:{port}"),
                    Watcher(server, tmp_path, "host-b", "--workers", "1", "--poll-interval", "1", "--queue", queue)]
        try:
            wait_for("the receiver answers", lambda: _answers(f"http://127.0.0.1:{port}/health"), 60, watchers[0])
            with using(server) as client:
                hook = client.create_webhook(name="heimer-watch-redis", url=f"http://127.0.0.1:{port}/webhook",
                                             events=["model_version.created"], secret=SECRET)  # fmt: skip
                time.sleep(1.5)  # MLFLOW_WEBHOOK_CACHE_TTL
                versions = [(name, register_tiny_model(name, seed=seed)) for seed in (1, 2) for name in names]
                for name, version in versions:
                    wait_for(f"{name} v{version} done", lambda: status(client, name, version) in ("done", "failed"),
                             400, watchers[0])
                    assert status(client, name, version) == "done", "\n".join(w.log() for w in watchers)
                time.sleep(2)  # a duplicate would be opening its run by now
                for name, version in versions:
                    runs = evaluation_runs(client, name, version)
                    assert [r.info.status for r in runs] == ["FINISHED"], [(r.info.run_id, r.info.status) for r in runs]
                    assert runs[0].info.run_id in client.get_model_version(name, version).description
                client.delete_webhook(hook.webhook_id)
        finally:
            for watcher in watchers:
                watcher.stop()
        logs = [w.log() for w in watchers]
        assert sum(log.count(": evaluating on") for log in logs) == 4, "\n".join(logs)
        assert sum(log.count(": queued (") for log in logs) == 4, "\n".join(logs)  # by the webhook or a poller, once