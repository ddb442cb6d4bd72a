"""A local team stack for trying team mode (`sweepflow stack`, `make team-stack`).

On one PostgreSQL server (SWEEPFLOW_PG_URL, default postgresql://postgres@127.0.0.1:5432):
three databases, for the Optuna study, the MLflow tracking server and the Prefect server.
Then `mlflow server` on its database with proxied artifacts (workers need no storage
credentials) and `prefect server start` on its database. Everything binds 127.0.0.1 unless a
host is given; beyond loopback they require credentials (sweepflow/credentials.py): MLflow's
basic-auth app with an admin user, Prefect's API auth string. The same services for a real
deployment: deploy/compose.yaml.
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

import httpx

from sweepflow.credentials import (
    MLFLOW_PASSWORD,
    MLFLOW_USER,
    PREFECT_AUTH,
    Credentials,
    require_for,
)
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
    credentials: Credentials | None = None

    def exports(self) -> list[str]:
        """What a worker's shell needs; the credentials by where they are, never by value."""
        lines = [f"export PREFECT_API_URL={self.prefect_api}",
                 f"export MLFLOW_TRACKING_URI={self.mlflow_url}"]
        creds = self.credentials
        if creds is not None and creds.file is not None:
            lines.append(f"set -a; . {creds.file}; set +a  # the credentials ({MLFLOW_USER}, "
                         f"{MLFLOW_PASSWORD}, {PREFECT_AUTH}); copy the file, mode 600")
        elif creds is not None:
            lines.append(f"export {MLFLOW_USER}=... {MLFLOW_PASSWORD}=... {PREFECT_AUTH}=... "
                         "# as in this shell (values not shown)")
        return lines

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


def mlflow_command(backend: str, artifacts: Path, host: str, port: int, auth: bool = False
                   ) -> list[str]:
    allowed = f"{host}:{port},{host},localhost:{port},127.0.0.1:{port}"
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
            "--artifacts-destination", artifacts.resolve().as_uri(), "--serve-artifacts",
            "--host", host, "--port", str(port), "--workers", str(MLFLOW_WORKERS),
            "--allowed-hosts", allowed, *(["--app-name", "basic-auth"] if auth else [])]


def mlflow_env(base: dict[str, str]) -> dict[str, str]:
    # The job runner serves GenAI features only; off, it saves processes.
    return {**base, **MLFLOW_POOL, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_auth_config(path: Path, database: str) -> Path:
    """MLflow's basic-auth config (MLFLOW_AUTH_CONFIG_PATH): its users in `database`; no
    secret in it (the admin's name and password come from the environment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[mlflow]\ndefault_permission = READ\n"
                    f"database_uri = {database}\n")
    return path


def check_credentials(stack: Stack) -> None:
    """Both servers refuse a request without the credentials and take one with them; the
    usual failure: MLflow's auth database keeps the admin password of its first start."""
    creds = stack.credentials
    assert creds is not None
    user, password = creds.values[MLFLOW_USER], creds.values[MLFLOW_PASSWORD]
    search = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    flows = f"{stack.prefect_api}/flows/filter"
    prefect_user, _, prefect_password = creds.values[PREFECT_AUTH].partition(":")
    checks = (("MLflow", lambda auth: httpx.get(search, auth=auth, timeout=30), (user, password),
               f"{MLFLOW_USER}/{MLFLOW_PASSWORD}: MLflow's auth database ({stack.mlflow_db}_auth)"
               f" keeps the password of user '{user}' from its first start; use that one or "
               "change it with MLflow's update-password API"),
              ("Prefect", lambda auth: httpx.post(flows, auth=auth, json={}, timeout=30),
               (prefect_user, prefect_password), PREFECT_AUTH))
    for name, call, auth, what in checks:
        if call(None).status_code != 401:
            raise StackError(f"{name} answered a request without credentials")
        if call(auth).status_code != 200:
            raise StackError(f"{name} refused the credentials of {creds.source}: {what}")


def prefect_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", host,
            "--port", str(port), "--analytics-off"]


def prefect_env(base: dict[str, str], db_url: str, home: Path) -> dict[str, str]:
    """Prefect's server settings; PREFECT_SERVER_API_AUTH_STRING, when `base` has it, makes
    its API ask every client for the auth string (its health check excepted)."""
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


def stack_databases(prefix: str, auth: bool) -> dict[str, str]:
    """The stack's databases by role (`mlflow_auth`: MLflow's users, with credentials)."""
    roles = ("optuna", "mlflow", "prefect", *(["mlflow_auth"] if auth else []))
    return {k: f"{prefix}_{k}" for k in roles}


@contextmanager
def started_stack(home: Path, prefix: str = "sweepflow", host: str = "127.0.0.1",
                  mlflow_port: int = 5000, prefect_port: int = 4200,
                  server: str | None = None, credentials: Credentials | None = None
                  ) -> Iterator[Stack]:
    """Databases `<prefix>_optuna`, `<prefix>_mlflow`, `<prefix>_prefect`; the MLflow and
    Prefect servers on them (state and logs under `home`), stopped on exit. With
    `credentials` (required beyond loopback) both servers ask every client for them."""
    require_for(host, credentials)
    server = server or pg_server_url()
    if urlsplit(server).password:
        raise StackError("SWEEPFLOW_PG_URL holds a password, which the stack would pass on in "
                         "URLs: drop it from the URL and export PGPASSWORD or PGPASSFILE")
    names = stack_databases(prefix, credentials is not None)
    ensure_databases(server, list(names.values()))
    stack = Stack(optuna_url=database_url(server, names["optuna"]),
                  mlflow_url=f"http://{host}:{mlflow_port}",
                  prefect_api=f"http://{host}:{prefect_port}/api",
                  mlflow_db=names["mlflow"], prefect_db=names["prefect"], logs=home / "logs",
                  credentials=credentials)
    env = {**os.environ, **(credentials.server_env() if credentials else {})}
    if credentials is not None:
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(mlflow_auth_config(
            home / "mlflow-auth.ini", database_url(server, names["mlflow_auth"])))
    with ExitStack() as services:
        services.enter_context(service(
            mlflow_command(database_url(server, names["mlflow"]), home / "artifacts", host,
                           mlflow_port, credentials is not None), mlflow_env(env),
            stack.logs / "mlflow.log", f"{stack.mlflow_url}/health"))
        services.enter_context(service(
            prefect_command(host, prefect_port),
            prefect_env(env, database_url(server, names["prefect"], "postgresql+asyncpg"),
                        home / "prefect"), stack.logs / "prefect.log",
            f"{stack.prefect_api}/health"))
        if credentials is not None:
            check_credentials(stack)
        yield stack
