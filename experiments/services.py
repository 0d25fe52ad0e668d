#!/usr/bin/env python
"""Servers for a shared study, started on 127.0.0.1 in a temporary directory: a PostgreSQL server (the
Optuna storage and the MLflow backend database) and an ``mlflow server`` in front of it that also
stores artifacts. The scale-out test uses them, and so can you, to try the cluster set-up of
``docs/scale-out.md`` on one machine:

    python experiments/services.py up                 # PostgreSQL + MLflow server until Ctrl-C; prints the URLs
    python experiments/services.py init [--experiment NAME]   # the stores of $OPTUNA_STORAGE and $MLFLOW_TRACKING_URI

A tool beside the experiments, not part of the ``study`` package. In Python (with ``experiments/`` on
``sys.path``)::

    from services import postgres, mlflow_server, init_stores

    with postgres(databases=("optuna", "mlflow")) as pg, \\
            mlflow_server(pg.url("mlflow"), artifacts_dir="/tmp/artifacts") as server:
        init_stores(pg.url("optuna"), server.url, "unlearning-study")
        ...  # sweep.py --storage <pg.url("optuna")> --tracking-uri <server.url>, from any number of processes

Everything binds to 127.0.0.1 only. PostgreSQL comes from the operating system (Debian/Ubuntu:
``apt-get install postgresql``; ``make setup`` installs it); it refuses to run as root, so as root the
server runs as the ``postgres`` user that the package creates. Passwords are random, passed to the
MLflow server through its environment (not its command line) and never printed: ``up`` writes the
full URLs to ``<dir>/urls.env`` (mode 0600) as ``OPTUNA_STORAGE`` and ``MLFLOW_TRACKING_URI`` (the
variables ``sweep.py`` reads, so no password goes on a worker's command line) and prints them redacted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python experiments/services.py`: import `study` from the checkout
    sys.path.insert(0, str(ROOT))

from study.config import DEFAULT_EXPERIMENT  # noqa: E402
from study.credentials import redact  # noqa: E402

LOOPBACK = "127.0.0.1"


class ServiceError(RuntimeError):
    """A server could not be started (the message says why and where its log is)."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``postgres`` are: Debian's ``/usr/lib/postgresql/<newest>/bin``, else ``PATH``."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def install_postgres(timeout: float = 600) -> Path | None:
    """Install Debian's ``postgresql`` package (as root, where apt-get exists); the bin directory or None."""
    if postgres_bindir() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "install", "-y", "-q", "postgresql"],
                        ["sh", "-c", "apt-get update -q && apt-get install -y -q postgresql"]):
            try:
                subprocess.run(command, env=env, capture_output=True, timeout=timeout)
            except (OSError, subprocess.SubprocessError):
                pass
            if postgres_bindir() is not None:
                break
    return postgres_bindir()


@dataclasses.dataclass
class PostgresServer:
    """A running server: ``url(database)`` is the SQLAlchemy URL (with the password) to pass on."""

    host: str
    port: int
    user: str
    password: str
    directory: Path
    log: Path
    process: subprocess.Popen

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                                dbname=database, connect_timeout=5)

    def create_database(self, name: str) -> None:
        """``CREATE DATABASE name`` unless it exists."""
        connection = self.connect()
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()


@contextlib.contextmanager
def postgres(databases=("optuna", "mlflow"), *, port: int | None = None, user: str = "study",
             password: str | None = None, base_dir: str | Path | None = None, timeout: float = 60):
    """Start a throw-away PostgreSQL server on 127.0.0.1 (fresh data directory), create ``databases``,
    yield a ``PostgresServer``; stop it (fast shutdown) and delete the directory on exit.

    Raises ``ServiceError`` when PostgreSQL is not installed or does not start.
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise ServiceError("PostgreSQL is not installed (Debian/Ubuntu: apt-get install postgresql; make setup does this)")
    run_as = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            raise ServiceError("running as root, but there is no 'postgres' user to run the server as") from None
        run_as = "postgres"
    password = password or secrets.token_urlsafe(18)
    port = port or free_port()
    # Not inside the caller's (possibly 0700, root-owned) temporary directory: the server user must reach it.
    directory = Path(tempfile.mkdtemp(prefix="study-postgres-", dir=base_dir))
    data, sockets, log = directory / "data", directory / "sockets", directory / "postgres.log"
    sockets.mkdir()
    (directory / "pwfile").write_text(password + "\n")
    if run_as:
        for path in (directory, sockets, directory / "pwfile"):
            shutil.chown(path, run_as, run_as)
    process = None
    try:
        init = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={directory / 'pwfile'}", "--auth-local=trust",
             "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-instructions"],
            user=run_as, cwd=directory, capture_output=True, text=True, timeout=timeout)
        (directory / "pwfile").unlink()
        if init.returncode != 0:
            raise ServiceError(f"initdb failed: {(init.stderr or init.stdout).strip().splitlines()[-1:]}")
        with log.open("w") as handle:
            if run_as:
                shutil.chown(log, run_as, run_as)
            process = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(data), "-c", f"listen_addresses={LOOPBACK}", "-p", str(port),
                 "-c", f"unix_socket_directories={sockets}", "-c", "fsync=off", "-c", "max_connections=200"],
                user=run_as, cwd=directory, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        server = PostgresServer(LOOPBACK, port, user, password, directory, log, process)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise ServiceError(f"PostgreSQL exited with {process.returncode}; log {log}:\n{_tail(log)}")
            try:
                server.connect().close()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise ServiceError(f"PostgreSQL did not accept connections within {timeout:.0f} s; log {log}:\n{_tail(log)}") from None
                time.sleep(0.2)
        for name in databases:
            server.create_database(name)
        yield server
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # fast shutdown: roll back open transactions, then exit
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(directory, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# MLflow tracking server


@dataclasses.dataclass
class MlflowServer:
    url: str
    port: int
    log: Path
    process: subprocess.Popen


def _get(url: str, timeout: float = 5) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    with opener.open(url, timeout=timeout) as response:
        return response.status


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts_dir: str | Path, *, host: str = LOOPBACK, port: int | None = None,
                  workers: int = 1, log: str | Path | None = None, timeout: float = 240):
    """Start ``mlflow server`` on ``host:port`` (127.0.0.1 and a free port by default) backed by
    ``backend_store_uri`` (e.g. ``pg.url("mlflow")``), serving artifacts from ``artifacts_dir``
    (clients upload and download through the server: ``--serve-artifacts``); yield an ``MlflowServer``
    whose ``url`` is the tracking URI; stop the server and its workers on exit.

    The backend URI travels in the server's environment (``MLFLOW_BACKEND_STORE_URI``), so its password
    is not on a command line that ``ps`` shows. The first start on an empty database creates MLflow's
    tables (tens of seconds).
    """
    port = port or free_port(host)
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    log = Path(log) if log else Path(tempfile.mkdtemp(prefix="study-mlflow-")) / "mlflow-server.log"
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend_store_uri}
    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", str(workers),
               "--serve-artifacts", "--artifacts-destination", str(artifacts_dir.resolve())]
    with log.open("w") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise ServiceError(f"mlflow server exited with {process.returncode} (backend {redact(backend_store_uri)}); "
                                   f"log {log}:\n{_tail(log)}")
            try:
                if _get(f"{url}/health") == 200:
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"mlflow server did not answer on {url} within {timeout:.0f} s; log {log}:\n{_tail(log)}")
            time.sleep(0.5)
        yield MlflowServer(url, port, log, process)
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM to the server's own process group (it and the workers it forked), then SIGKILL."""
    if process.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------------------------------
# Stores


def init_stores(storage: str, tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT) -> None:
    """Create the Optuna tables and the MLflow experiment once, before several workers start (two
    workers creating them at the same moment can collide)."""
    from study.search import open_storage
    from study.trial.tracking import Tracker, schema_lock

    with schema_lock(storage, tracking_uri):
        open_storage(storage)
        Tracker(tracking_uri, experiment)


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/services.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start PostgreSQL and an MLflow server on 127.0.0.1 until Ctrl-C")
    up.add_argument("--dir", default=None, help="where the MLflow artifacts and urls.env go (default: a new temp dir)")
    up.add_argument("--port", type=int, default=5000, help="MLflow server port (default %(default)s)")
    up.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    init = sub.add_parser("init", help="create the Optuna tables and the MLflow experiment")
    init.add_argument("--storage", default=os.environ.get("OPTUNA_STORAGE"),
                      help="Optuna storage (default: $OPTUNA_STORAGE; pass passwords there, not here)")
    init.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                      help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    init.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    args = parser.parse_args(argv)
    from study.errors import interrupt_exit_code, interrupt_reason, sigterm_as_interrupt

    with sigterm_as_interrupt():  # SIGTERM (kill, systemd, Kubernetes) stops the servers as Ctrl-C does
        try:
            return _run(args)
        except KeyboardInterrupt as stop:  # before the servers were up: what had started was stopped
            print(f"{interrupt_reason(stop)}: stopped", file=sys.stderr)
            return interrupt_exit_code(stop)


def _run(args) -> int:
    from study.errors import StudyInputError, interrupt_reason

    try:
        if args.command == "init":
            if not args.storage or not args.tracking_uri:
                raise StudyInputError("init needs the stores: set OPTUNA_STORAGE and MLFLOW_TRACKING_URI "
                                      "(or pass --storage and --tracking-uri)")
            init_stores(args.storage, args.tracking_uri, args.experiment)
            print(f"ready: Optuna storage {redact(args.storage)}, MLflow {redact(args.tracking_uri)} experiment {args.experiment}")
            return 0
        directory = Path(args.dir or tempfile.mkdtemp(prefix="study-servers-"))
        directory.mkdir(parents=True, exist_ok=True)
        with postgres() as pg, mlflow_server(pg.url("mlflow"), directory / "artifacts", port=args.port,
                                             log=directory / "mlflow-server.log") as server:
            init_stores(pg.url("optuna"), server.url, args.experiment)
            urls = directory / "urls.env"
            urls.unlink(missing_ok=True)
            with os.fdopen(os.open(urls, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
                handle.write(f"export OPTUNA_STORAGE='{pg.url('optuna')}'\nexport MLFLOW_TRACKING_URI='{server.url}'\n")
            print(f"PostgreSQL   {redact(pg.url('optuna'))} (data in {pg.directory}, deleted on exit)")
            print(f"MLflow       {server.url} (artifacts in {directory / 'artifacts'})")
            print(f"full URLs    {urls} (mode 0600)")
            print(f"workers:     . {urls} && python experiments/sweep.py --study-name NAME --experiment {args.experiment}")
            print("Ctrl-C (or SIGTERM) stops both servers (the PostgreSQL data is deleted; the artifacts stay).", flush=True)
            try:
                while server.process.poll() is None and pg.process.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt as stop:
                print(f"{interrupt_reason(stop)}: stopping both servers", flush=True)
        return 0
    except (ServiceError, StudyInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_main())
