"""Real MLflow tracking servers for tests: `mlflow server` on a free loopback port, with a
sqlite or a PostgreSQL backend store and artifacts served by the server (``mlflow-artifacts:``).

The PostgreSQL store is a throw-away cluster: ``initdb`` in a temp folder, started with
``pg_ctl`` on a free loopback port (its unix socket in that folder too), stopped and deleted at
teardown. PostgreSQL refuses to run as root: as root, its binaries run as the ``postgres`` user.

A missing binary skips the tests that need it, with the reason; with ``HEIMER_REQUIRE_SERVERS=1``
(CI) it fails them instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

REQUIRED = os.environ.get("HEIMER_REQUIRE_SERVERS") == "1"
SERVER_START_TIMEOUT_S = 90  # first start on PostgreSQL runs all of MLflow's migrations


def unavailable(reason: str):
    """Skip (locally) or fail (HEIMER_REQUIRE_SERVERS=1) a test whose server cannot be had."""
    if REQUIRED:
        pytest.fail(f"{reason} (HEIMER_REQUIRE_SERVERS=1: the server tests must run)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n_chars: int = 6000, start: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text[-n_chars:]


# --------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl: the PATH's, else Debian's newest
    /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb"), shutil.which("pg_ctl")
    if all(found):
        return Path(os.path.realpath(found[0])).parent
    def version(folder: str) -> list[int]:
        return [int(x) for x in Path(folder).parent.name.split(".") if x.isdigit()]

    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if os.access(Path(folder) / "initdb", os.X_OK) and os.access(Path(folder) / "pg_ctl", os.X_OK):
            return Path(folder)
    return None


class PostgresCluster:
    """A throw-away PostgreSQL cluster in a temp folder, on a free loopback port."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.as_user: list[str] = []
        # Not under pytest's tmp_path: its folders are private to the current user, and as root
        # the cluster belongs to `postgres`.
        self.root = Path(tempfile.mkdtemp(prefix="heimer-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port: int | None = None
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                self.cleanup()
                unavailable("running as root and there is no `postgres` user to run PostgreSQL as")
            runuser = shutil.which("runuser")
            if runuser is None:
                self.cleanup()
                unavailable("running as root and `runuser` is missing (needed to run PostgreSQL as `postgres`)")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.as_user = [runuser, "-u", "postgres", "--"]

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, stdin=subprocess.DEVNULL)

    def start(self) -> str:
        """initdb, start, create database `mlflow`; returns its SQLAlchemy URI."""
        done = self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                         "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        for attempt in range(3):  # the free port can be taken between picking and binding it
            self.port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=50")
            done = self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                             "-t", "60", "-o", options, "start")
            if done.returncode == 0:
                break
        else:
            raise RuntimeError(f"pg_ctl start failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}\n"
                               f"--- {self.log}:\n{tail(self.log)}")
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("CREATE DATABASE mlflow")
        finally:
            conn.close()
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            done = self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "30",
                             "stop")
            if done.returncode != 0 and (self.data / "postmaster.pid").exists():
                with contextlib.suppress(Exception):
                    os.kill(int((self.data / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
                    time.sleep(0.5)

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- mlflow server


class MlflowServer:
    """`mlflow server` in its own process group, on loopback; logs go to ``log``."""

    def __init__(self, backend_store_uri: str, artifacts: Path, log: Path, name: str, auth_config: Path | None = None):
        self.backend_store_uri = backend_store_uri
        self.auth_config = auth_config  # MLflow's basic-auth app (`--app-name basic-auth`) with this config
        self.artifacts = artifacts
        self.log = log
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = SERVER_START_TIMEOUT_S) -> None:
        """Start on ``self.port`` (the same port on a restart) and wait until /health answers."""
        assert self.proc is None, "already started"
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", PYTHONUNBUFFERED="1")
        for leaked in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            env.pop(leaked, None)
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--workers", "1", "--backend-store-uri", self.backend_store_uri,
               "--serve-artifacts", "--artifacts-destination", str(self.artifacts)]
        if self.auth_config is not None:
            cmd += ["--app-name", "basic-auth"]
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(self.auth_config)
            env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", "csrf-key-for-tests-only")  # the app needs a fixed one
        with open(self.log, "ab") as log:
            log.write(f"\n===== {time.strftime('%H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=self.artifacts.parent, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.stop()
                raise RuntimeError(f"mlflow server ({self.name}) exited with {code} while starting; "
                                   f"its log {self.log}:\n{tail(self.log)}")
            if self.healthy():
                return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server ({self.name}) did not answer {self.url}/health within {timeout:.0f} s; "
                           f"its log {self.log}:\n{tail(self.log)}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the whole process group (server and workers), SIGKILL what remains."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # workers that outlived their parent, or a hung server
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        with open(self.log, "ab") as log:
            log.write(f"===== {time.strftime('%H:%M:%S')} stopped (exit {self.proc.returncode})\n".encode())
        self.proc = None

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


BACKENDS = ("sqlite", "postgres")


ADMIN = ("admin", "admin-password-for-tests-only")


def auth_config(folder: Path) -> Path:
    """A basic-auth config: users in ``folder``, admin ``ADMIN``, everyone else READ by default."""
    try:
        import flask_wtf  # noqa: F401 - what mlflow[auth] adds; the app does not start without it
    except ImportError:
        unavailable("MLflow's basic-auth app needs mlflow[auth] (Flask-WTF; in the test extras: ./dev.sh setup)")
    path = folder / "basic_auth.ini"
    path.write_text("[mlflow]\ndefault_permission = READ\n"
                    f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
                    f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                    # each request checks a PBKDF2 hash unless cached: seconds apiece on two busy cores
                    "auth_cache_ttl_seconds = 300\n")
    return path


@contextlib.contextmanager
def as_user(username: str, password: str):
    """MLflow's own credential settings for this process (and the subprocesses it starts)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_USERNAME", username)
        patch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        yield


@contextlib.contextmanager
def tracking_server(backend: str, folder: Path, *, auth: bool = False):
    """A running server on ``backend`` with its state in ``folder`` (with ``auth``: MLflow's
    basic-auth app, admin ``ADMIN``); stopped (and its PostgreSQL cluster deleted) on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    artifacts = folder / "artifacts"
    artifacts.mkdir(exist_ok=True)
    cluster = None
    try:
        if backend == "sqlite":
            store = f"sqlite:///{folder / 'mlflow.db'}"
        elif backend == "postgres":
            bin_dir = postgres_bin_dir()
            if bin_dir is None:
                unavailable("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH "
                            "or in /usr/lib/postgresql/*/bin")
            try:
                import psycopg2  # noqa: F401
            except ImportError:
                unavailable("psycopg2 is not installed (it is in the test extras: ./dev.sh setup)")
            cluster = PostgresCluster(bin_dir)
            store = cluster.start()
        else:
            raise ValueError(backend)
        server = MlflowServer(store, artifacts, folder / "server.log", name=backend,
                              auth_config=auth_config(folder) if auth else None)
        server.postgres = cluster
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        if cluster is not None:
            cluster.stop()
            if cluster.log.exists():
                shutil.copy(cluster.log, folder / "postgres.log")
            cluster.cleanup()


@contextlib.contextmanager
def using(server):
    """This process's MLflow client on the server, then back to whatever it was."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server.url)
    try:
        yield mlflow.MlflowClient(server.url)
    finally:
        mlflow.set_tracking_uri(previous)
