"""A local team stack for trying team mode (`sweepflow stack`, `make team-stack`).

On one PostgreSQL server (SWEEPFLOW_PG_URL, default postgresql://postgres@127.0.0.1:5432):
three databases, for the Optuna study, the MLflow tracking server and the Prefect server.
Then `mlflow server` on its database with proxied artifacts (workers need no storage
credentials) and `prefect server start` on its database. Everything binds 127.0.0.1 unless a
host is given. The same services for a real deployment: deploy/compose.yaml.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sweepflow.netutil import NotUp, wait_until_up
from sweepflow.usererrors import UserError

log = logging.getLogger(__name__)

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432"
# Connections each server may hold: MLflow (pool + overflow per store, tracking and registry,
# per server worker process) and Prefect (its API and services share one pool).
MLFLOW_POOL = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "2", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "2"}
MLFLOW_WORKERS = 2
PREFECT_POOL = {"PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "5",
                "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "5"}


class StackError(UserError):
    """A service of the stack cannot start; the message says which and why."""

    kind = "stack error"


@dataclass(frozen=True)
class Stack:
    optuna_url: str
    mlflow_url: str
    prefect_api: str
    mlflow_db: str
    prefect_db: str
    logs: Path

    def exports(self) -> list[str]:
        return [f"export PREFECT_API_URL={self.prefect_api}",
                f"export MLFLOW_TRACKING_URI={self.mlflow_url}"]

    def overrides(self, workers: int = 2) -> list[str]:
        return [f"sweep.storage={self.optuna_url}", f"tracking.uri={self.mlflow_url}",
                f"sweep.workers={workers}"]


def pg_server_url() -> str:
    return os.environ.get("SWEEPFLOW_PG_URL", DEFAULT_PG).rstrip("/")


def database_url(server: str, name: str, driver: str = "postgresql") -> str:
    parts = urlsplit(server)
    return urlunsplit((driver, parts.netloc, f"/{name}", parts.query, ""))


def ensure_databases(server: str, names: list[str]) -> None:
    """CREATE DATABASE for each name that does not exist yet."""
    import psycopg2

    try:
        conn = psycopg2.connect(database_url(server, "postgres"), connect_timeout=10)
    except psycopg2.OperationalError as err:
        raise StackError(f"no PostgreSQL at {server} (SWEEPFLOW_PG_URL): "
                         f"{str(err).strip()}") from None
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def drop_databases(server: str, names: list[str]) -> None:
    """DROP DATABASE for each name (its open connections ended first)."""
    import psycopg2

    conn = psycopg2.connect(database_url(server, "postgres"), connect_timeout=10)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
                cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        conn.close()


def mlflow_command(backend: str, artifacts: Path, host: str, port: int) -> list[str]:
    allowed = f"{host}:{port},{host},localhost:{port},127.0.0.1:{port}"
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
            "--artifacts-destination", artifacts.resolve().as_uri(), "--serve-artifacts",
            "--host", host, "--port", str(port), "--workers", str(MLFLOW_WORKERS),
            "--allowed-hosts", allowed]


def mlflow_env(base: dict[str, str]) -> dict[str, str]:
    # The job runner serves GenAI features only; off, it saves processes.
    return {**base, **MLFLOW_POOL, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def prefect_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", host,
            "--port", str(port), "--analytics-off"]


def prefect_env(base: dict[str, str], db_url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k != "PREFECT_API_URL"}
    return {**env, **PREFECT_POOL, "PREFECT_HOME": str(home),
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": db_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true"}


def _wait_until_up(url: str, proc: subprocess.Popen, logfile: Path, timeout: float) -> None:
    try:
        wait_until_up(url, timeout, proc, interval=1)
    except NotUp as err:
        tail = logfile.read_text(errors="replace").splitlines()[-15:]
        raise StackError(f"{proc.args[3]}: {err}; log {logfile}:\n" + "\n".join(tail)) from None


@contextmanager
def service(cmd: list[str], env: dict[str, str], logfile: Path, health: str,
            timeout: float = 180) -> Iterator[subprocess.Popen]:
    """Start a server in its own process group, wait for its health URL, stop it on exit."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        _wait_until_up(health, proc, logfile, timeout)
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGINT, then SIGTERM, then SIGKILL to the process group, until it has exited."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def started_stack(home: Path, prefix: str = "sweepflow", host: str = "127.0.0.1",
                  mlflow_port: int = 5000, prefect_port: int = 4200,
                  server: str | None = None) -> Iterator[Stack]:
    """Databases `<prefix>_optuna`, `<prefix>_mlflow`, `<prefix>_prefect`; the MLflow and
    Prefect servers on them (state and logs under `home`), stopped on exit."""
    server = server or pg_server_url()
    names = {k: f"{prefix}_{k}" for k in ("optuna", "mlflow", "prefect")}
    ensure_databases(server, list(names.values()))
    stack = Stack(optuna_url=database_url(server, names["optuna"]),
                  mlflow_url=f"http://{host}:{mlflow_port}",
                  prefect_api=f"http://{host}:{prefect_port}/api",
                  mlflow_db=names["mlflow"], prefect_db=names["prefect"], logs=home / "logs")
    env = dict(os.environ)
    with ExitStack() as services:
        services.enter_context(service(
            mlflow_command(database_url(server, names["mlflow"]), home / "artifacts", host,
                           mlflow_port), mlflow_env(env), stack.logs / "mlflow.log",
            f"{stack.mlflow_url}/health"))
        services.enter_context(service(
            prefect_command(host, prefect_port),
            prefect_env(env, database_url(server, names["prefect"], "postgresql+asyncpg"),
                        home / "prefect"), stack.logs / "prefect.log",
            f"{stack.prefect_api}/health"))
        yield stack
